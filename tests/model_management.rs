//! Managed model servers, as real processes: two models served by the embedded
//! engine (two tiny GGUF files) with room for one at a time, swapped between
//! batches; a model server killed mid-batch and restarted; and starts that
//! fail in each way, which fail their batches with the reason.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use batchd::config::ModelConfig;
use batchd::testing::tiny_gguf::{self, TinyModel};
use common::{Harness, chat_line};
use serde_json::{Value, json};

fn engine_model(name: &str, gguf: std::path::PathBuf) -> ModelConfig {
    let mut model = ModelConfig::engine(name, gguf);
    model.engine_parallel = 4;
    model.engine_ctx_per_seq = 256;
    model.engine_threads = Some(1);
    model.max_concurrency = 4;
    model
}

async fn two_engine_models(dir: &std::path::Path) -> Harness {
    let (a, b) = (dir.join("a.gguf"), dir.join("b.gguf"));
    tiny_gguf::write(&a, &TinyModel::default()).unwrap();
    tiny_gguf::write(&b, &TinyModel::default()).unwrap();
    Harness::start_with(|c| {
        c.server.engine_exe = Some(env!("CARGO_BIN_EXE_batchd").into());
        c.models = vec![engine_model("model-a", a), engine_model("model-b", b)];
        c.scheduler.max_loaded_models = 1;
        // Longer than the test: batches of the loaded model are collated.
        c.scheduler.max_swap_delay_secs = 600;
    })
    .await
}

fn lines(prefix: &str, model: &str, n: usize, max_tokens: u32) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut line = chat_line(&format!("{prefix}{i}"), model, &format!("count to {i}"));
            line["body"]["max_tokens"] = json!(max_tokens);
            line
        })
        .collect()
}

async fn model_status(h: &Harness, name: &str) -> Value {
    let (_, list) = h.get("/models").await;
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == name)
        .cloned()
        .unwrap()
}

fn assert_all_succeeded(batch: &Value, output: &[Value], n: usize) {
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        batch["request_counts"],
        json!({"total": n, "completed": n, "failed": 0}),
        "{batch}"
    );
    let ids: HashSet<&str> = output.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_share_one_slot_and_swap_only_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    let h = two_engine_models(dir.path()).await;
    for name in ["model-a", "model-b"] {
        let m = model_status(&h, name).await;
        assert_eq!(m["state"], "unloaded", "nothing starts before work needs it: {m}");
    }
    // Interleaved: a1, b1, a2, b2, all queued at once.
    let mut ids = vec![];
    for (prefix, model) in [
        ("a1-", "model-a"),
        ("b1-", "model-b"),
        ("a2-", "model-a"),
        ("b2-", "model-b"),
    ] {
        let file = h.upload_lines(&lines(prefix, model, 12, 8)).await;
        let batch = h.create_batch(&file, "/v1/chat/completions").await;
        ids.push(batch["id"].as_str().unwrap().to_owned());
    }
    let mut both_loaded = false;
    let mut finished = vec![];
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while finished.len() < ids.len() {
        let (a, b) = (model_status(&h, "model-a").await, model_status(&h, "model-b").await);
        let occupying = |m: &Value| matches!(m["state"].as_str(), Some("loading" | "loaded" | "idle" | "unloading"));
        both_loaded |= occupying(&a) && occupying(&b);
        finished = Vec::new();
        for id in &ids {
            let (_, b) = h.get(&format!("/batches/{id}")).await;
            if b["status"] == "completed" || b["status"] == "failed" {
                finished.push(b);
            }
        }
        assert!(std::time::Instant::now() < deadline, "batches did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !both_loaded,
        "two models were loaded at once with max_loaded_models = 1"
    );
    for batch in &finished {
        // A model stopped with lines in flight would fail or repeat them.
        let output = h.lines_of(&batch["output_file_id"]).await;
        assert_all_succeeded(batch, &output, 12);
        assert!(batch["error_file_id"].is_null());
    }
    let loads = model_status(&h, "model-a").await["loads"].as_u64().unwrap()
        + model_status(&h, "model-b").await["loads"].as_u64().unwrap();
    // Collation: the two batches of each model run back to back, so one swap
    // (a, then b) is the minimum; FIFO without collation would need four loads.
    eprintln!("model loads for 4 interleaved batches of 2 models: {loads}");
    assert_eq!(loads, 2, "batches of the loaded model should run before swapping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_model_server_is_restarted_and_its_lines_complete() {
    let dir = tempfile::tempdir().unwrap();
    let h = two_engine_models(dir.path()).await;
    let file = h.upload_lines(&lines("k", "model-a", 40, 24)).await;
    let batch = h.create_batch(&file, "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap();
    h.wait_for(id, |b| b["request_counts"]["completed"].as_u64().unwrap_or(0) >= 4)
        .await;
    let before = model_status(&h, "model-a").await;
    let pid = before["pid"].as_u64().expect("a running model has a pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let done = h.wait_terminal(id).await;
    let output = h.lines_of(&done["output_file_id"]).await;
    assert_all_succeeded(&done, &output, 40);
    let after = model_status(&h, "model-a").await;
    assert_eq!(
        after["loads"].as_u64().unwrap(),
        before["loads"].as_u64().unwrap() + 1,
        "{after}"
    );
    assert_ne!(after["pid"], before["pid"]);
}

#[tokio::test]
async fn starts_that_fail_end_their_batches_with_the_reason() {
    let cases = [
        ("no-such-binary", "/nonexistent/serve-model --port {port}", "exited"),
        (
            "exits-at-once",
            "echo 'CUDA out of memory' >&2; exit 3 # {port}",
            // Tenants get the reason, not the server's output (tests/model_logs.rs).
            "exited",
        ),
        ("never-healthy", "exec sleep 600 # {port}", "did not answer"),
    ];
    let h = Harness::start_with(|c| {
        c.models = cases
            .iter()
            .map(|(name, command, _)| {
                let mut m = ModelConfig::command(name, command);
                m.start_timeout_secs = 2;
                m.stop_grace_secs = 1;
                m
            })
            .collect();
        c.scheduler.max_loaded_models = 3;
    })
    .await;
    for (name, _, reason) in cases {
        let file = h.upload_lines(&lines("f", name, 3, 4)).await;
        let batch = h.create_batch(&file, "/v1/chat/completions").await;
        let done = h.wait_terminal(batch["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "failed", "{done}");
        let error = &done["errors"]["data"][0];
        assert_eq!(error["code"], "model_unavailable", "{done}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(reason), "{name}: {message}");
        // Every line is accounted for in the error file.
        let errors = h.lines_of(&done["error_file_id"]).await;
        assert_eq!(errors.len(), 3, "{done}");
        assert!(errors.iter().all(|l| l["error"]["code"] == "model_unavailable"));
        assert_eq!(done["request_counts"], json!({"total": 3, "completed": 0, "failed": 3}));
        let status = model_status(&h, name).await;
        assert_eq!(status["state"], "unloaded");
        assert!(status["last_error"].as_str().unwrap().contains(reason), "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_mode_swaps_without_a_cold_restart() {
    let fake = env!("CARGO_BIN_EXE_batchd-fake-backend");
    let h = Harness::start_with(|c| {
        c.models = ["sleepy-a", "sleepy-b"]
            .iter()
            .map(|name| {
                let mut m = ModelConfig::command(name, &format!("exec {fake} --listen 127.0.0.1:{{port}}"));
                m.sleep_mode = true;
                m.device = Some("gpu0".into());
                m
            })
            .collect();
        c.scheduler.max_loaded_models = 2;
    })
    .await;
    let run = |prefix: &'static str, model: &'static str| {
        let h = &h;
        async move {
            let file = h.upload_lines(&lines(prefix, model, 5, 4)).await;
            let batch = h.create_batch(&file, "/v1/chat/completions").await;
            let done = h.wait_terminal(batch["id"].as_str().unwrap()).await;
            let output = h.lines_of(&done["output_file_id"]).await;
            assert_all_succeeded(&done, &output, 5);
        }
    };
    run("a1-", "sleepy-a").await;
    let a = model_status(&h, "sleepy-a").await;
    assert_eq!(a["state"], "idle", "{a}");
    // b shares a's device: a is put to sleep, not stopped.
    run("b1-", "sleepy-b").await;
    let asleep = model_status(&h, "sleepy-a").await;
    assert_eq!(asleep["state"], "sleeping", "{asleep}");
    assert_eq!(asleep["pid"], a["pid"], "the sleeping server keeps running");
    run("a2-", "sleepy-a").await;
    let awake = model_status(&h, "sleepy-a").await;
    assert_eq!(awake["pid"], a["pid"], "woken, not restarted: {awake}");
    assert_eq!(awake["loads"], 2);
    assert_eq!(model_status(&h, "sleepy-b").await["state"], "sleeping");
}
