//! Tenants share fairly: batches of different projects on one model take
//! turns (round-robin, FIFO within a project), a long turn is cut into time
//! slices when another project waits, and per-project limits on active
//! batches (429 `rate_limit_exceeded`) and enqueued lines (the batch fails
//! with `token_limit_exceeded`, as OpenAI's enqueued token limit) hold.
//! All through the HTTP API with one API key per project.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, chat_line, create_key};
use serde_json::{Value, json};

/// A project's API key, and the calls it makes.
struct Tenant<'a> {
    h: &'a Harness,
    key: String,
}

impl<'a> Tenant<'a> {
    fn new(h: &'a Harness, project: &str) -> Self {
        let key = create_key(h, project, false)["secret"].as_str().unwrap().to_owned();
        Self { h, key }
    }

    /// Uploads `n` chat lines (prompt `prompt`) as a batch input file.
    async fn upload(&self, n: usize, prompt: &str) -> String {
        let text: String = (0..n)
            .map(|i| format!("{}\n", chat_line(&format!("r{i}"), "fake-model", prompt)))
            .collect();
        common::upload_at(&self.h.http, &self.h.base, Some(&self.key), text).await
    }

    /// Uploads `n` chat lines (prompt `prompt`) and asks for a batch on them.
    async fn try_create(&self, n: usize, prompt: &str) -> (u16, Value) {
        let file = self.upload(n, prompt).await;
        self.create_on(&file).await
    }

    async fn create_on(&self, file: &str) -> (u16, Value) {
        let response = self
            .h
            .http
            .post(self.h.url("/batches"))
            .bearer_auth(&self.key)
            .json(&json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn create(&self, n: usize, prompt: &str) -> String {
        let (status, batch) = self.try_create(n, prompt).await;
        assert_eq!(status, 200, "{batch}");
        batch["id"].as_str().unwrap().to_owned()
    }

    async fn batch(&self, id: &str) -> Value {
        let response = self
            .h
            .http
            .get(self.h.url(&format!("/batches/{id}")))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    async fn wait_for(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let batch = self.batch(id).await;
            if done(&batch) {
                return batch;
            }
            assert!(
                Instant::now() < deadline,
                "batch did not reach the expected state: {batch}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A file's content as parsed JSONL lines.
    async fn lines_of(&self, file_id: &Value) -> Vec<Value> {
        let text = self
            .h
            .http
            .get(self.h.url(&format!("/files/{}/content", file_id.as_str().unwrap())))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    async fn wait_terminal(&self, id: &str) -> Value {
        self.wait_for(id, |b| {
            matches!(
                b["status"].as_str(),
                Some("completed" | "failed" | "expired" | "cancelled")
            )
        })
        .await
    }
}

/// One line at a time on the model, so the order of turns is the order of work.
async fn one_slot_server(turn_quantum_secs: u64) -> Harness {
    Harness::start_with(|c| {
        for model in &mut c.models {
            model.max_concurrency = 1;
            model.min_concurrency = 1;
        }
        c.scheduler.turn_quantum_secs = turn_quantum_secs;
    })
    .await
}

#[tokio::test]
async fn a_second_project_gets_a_turn_before_the_first_projects_queue_is_done() {
    // A quantum longer than the test: every turn is a whole batch.
    let h = one_slot_server(3600).await;
    let a = Tenant::new(&h, "project-a");
    let b = Tenant::new(&h, "project-b");
    let mut queue = vec![];
    for _ in 0..10 {
        queue.push(a.create(3, "[delay_ms=200] a").await);
    }
    // B comes last, behind all ten of A's batches.
    let b_batch = b.create(3, "b").await;
    let done = b.wait_terminal(&b_batch).await;
    assert_eq!(done["status"], "completed", "{done}");
    let mut a_unfinished = 0;
    for id in &queue {
        if a.batch(id).await["status"] != "completed" {
            a_unfinished += 1;
        }
    }
    // Round-robin: B's batch ran after (at most) A's first two batches, not after all ten.
    assert!(
        a_unfinished >= 5,
        "only {a_unfinished} of A's batches were unfinished when B's completed"
    );
    for id in &queue {
        assert_eq!(a.wait_terminal(id).await["status"], "completed");
    }
}

#[tokio::test]
async fn one_huge_batch_yields_its_turn_to_another_project_after_its_quantum() {
    // Quantum 0: a turn ends after its first line whenever another project waits.
    let h = one_slot_server(0).await;
    let a = Tenant::new(&h, "project-a");
    let b = Tenant::new(&h, "project-b");
    let huge = a.create(40, "[delay_ms=100] a").await;
    // A's batch holds the turn and is running its lines.
    a.wait_for(&huge, |b| b["request_counts"]["completed"].as_i64() >= Some(1))
        .await;
    let small = b.create(2, "b").await;
    let done = b.wait_terminal(&small).await;
    assert_eq!(done["status"], "completed", "{done}");
    let during = a.batch(&huge).await;
    assert_eq!(
        during["status"], "in_progress",
        "A's batch finished before B's: {during}"
    );
    // Yielding loses nothing and repeats nothing: every line once.
    let huge = a.wait_terminal(&huge).await;
    assert_eq!(huge["status"], "completed", "{huge}");
    assert_eq!(
        huge["request_counts"],
        json!({"total": 40, "completed": 40, "failed": 0})
    );
    let output = a.lines_of(&huge["output_file_id"]).await;
    let mut ids: Vec<String> = output
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
}

#[tokio::test]
async fn active_batches_per_project_are_limited_with_429_rate_limit_exceeded() {
    let h = Harness::start_with(|c| c.limits.max_active_batches_per_project = 2).await;
    let a = Tenant::new(&h, "project-a");
    let b = Tenant::new(&h, "project-b");
    let first = a.create(1, "[delay_ms=3000] a").await;
    a.create(1, "[delay_ms=3000] a").await;

    let (status, body) = a.try_create(1, "a").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("Limit: 2"),
        "{body}"
    );
    // The limit is per project: B is not affected by A's batches.
    b.create(1, "b").await;
    // Once one of A's batches is done, A may create again.
    assert_eq!(a.wait_terminal(&first).await["status"], "completed");
    a.create(1, "a").await;
}

#[tokio::test]
async fn enqueued_lines_per_project_are_limited_and_the_batch_fails_with_token_limit_exceeded() {
    let h = Harness::start_with(|c| c.limits.max_enqueued_lines_per_project = 5).await;
    let a = Tenant::new(&h, "project-a");
    let b = Tenant::new(&h, "project-b");
    let running = a.create(4, "[delay_ms=5000] a").await;
    a.wait_for(&running, |b| b["status"] == "in_progress").await;

    // 4 enqueued + 2 > 5: created, then failed in validation, as OpenAI does.
    let over = a.create(2, "a").await;
    let over = a.wait_terminal(&over).await;
    assert_eq!(over["status"], "failed", "{over}");
    let errors = over["errors"]["data"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{over}");
    assert_eq!(errors[0]["code"], "token_limit_exceeded");
    assert_eq!(errors[0]["line"], Value::Null);
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("Limit: 5 enqueued lines"),
        "{over}"
    );
    assert_eq!(over["request_counts"], json!({"total": 0, "completed": 0, "failed": 0}));

    // 4 + 1 fits exactly.
    let fits = a.create(1, "a").await;
    assert_eq!(a.wait_terminal(&fits).await["status"], "completed");
    // Per project: B's queue is empty, but a batch bigger than the limit never fits.
    let small = b.create(2, "b").await;
    assert_eq!(b.wait_terminal(&small).await["status"], "completed");
    let too_big = b.create(6, "b").await;
    let too_big = b.wait_terminal(&too_big).await;
    assert_eq!(
        too_big["errors"]["data"][0]["code"], "token_limit_exceeded",
        "{too_big}"
    );
}

#[tokio::test]
async fn concurrent_creates_never_overshoot_the_active_batch_limit() {
    let h = Harness::start_with(|c| c.limits.max_active_batches_per_project = 3).await;
    let a = Tenant::new(&h, "project-a");
    let mut files = vec![];
    for _ in 0..8 {
        files.push(a.upload(1, "[delay_ms=3000] a").await);
    }
    // Eight creates at once: exactly three get through.
    let answers = futures::future::join_all(files.iter().map(|f| a.create_on(f))).await;
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5, "{statuses:?}");
}

#[tokio::test]
async fn validations_ending_together_never_overshoot_the_enqueued_line_limit() {
    let h = Harness::start_with(|c| c.limits.max_enqueued_lines_per_project = 5).await;
    let a = Tenant::new(&h, "project-a");
    let mut files = vec![];
    for _ in 0..3 {
        files.push(a.upload(2, "[delay_ms=3000] a").await);
    }
    // Three batches of 2 lines validated together against 5 lines: two start, one fails.
    let answers = futures::future::join_all(files.iter().map(|f| a.create_on(f))).await;
    let mut ends = vec![];
    for (status, batch) in &answers {
        assert_eq!(*status, 200, "{batch}");
        let id = batch["id"].as_str().unwrap();
        ends.push(a.wait_for(id, |b| b["status"] != "validating").await["status"].clone());
    }
    assert_eq!(ends.iter().filter(|s| **s == "in_progress").count(), 2, "{ends:?}");
    assert_eq!(ends.iter().filter(|s| **s == "failed").count(), 1, "{ends:?}");
}
