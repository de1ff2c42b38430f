//! Managed replicas on devices: two models that may each run on four fake
//! GPUs (`devices = ["0", "1", "2", "3"]`, one `batchd-fake-backend` process
//! per replica, `{device}` filled into its command and environment). The
//! scheduler gives all four devices to the model with work, shares them
//! two and two once the other model's batch has waited, hands them all to
//! that one when the first is done, never puts two models on one device,
//! and never stops a replica with lines in flight: every request a replica
//! process received was answered before it stopped, and no line was sent
//! twice.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use batchd::config::ModelConfig;
use common::{Harness, chat_line};
use serde_json::{Value, json};

const DEVICES: [&str; 4] = ["0", "1", "2", "3"];

fn replica_model(name: &str, timelines: &std::path::Path) -> ModelConfig {
    let fake = env!("CARGO_BIN_EXE_batchd-fake-backend");
    // Each process appends its requests and responses to the timeline of
    // its model and device; the device comes in through the environment,
    // as CUDA_VISIBLE_DEVICES would.
    let command = format!(
        "test \"$FAKE_GPU\" = {{device}} && exec {fake} --listen 127.0.0.1:{{port}} --gpu-slots 4 --ms-per-token 5 \
         --timeline {}/{name}-{{device}}.log",
        timelines.display()
    );
    let mut m = ModelConfig::command(name, &command);
    m.devices = DEVICES.iter().map(|d| d.to_string()).collect();
    m.env.insert("FAKE_GPU".into(), "{device}".into());
    m.min_concurrency = 4;
    m.max_concurrency = 4;
    m.start_timeout_secs = 20;
    m.stop_grace_secs = 2;
    m
}

fn lines(prefix: &str, model: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut line = chat_line(&format!("{prefix}{i}"), model, &format!("q{i}"));
            line["body"]["max_tokens"] = json!(10);
            line
        })
        .collect()
}

/// Per model, the devices of its replicas that hold their device now
/// (starting, serving or draining).
async fn placement(h: &Harness) -> HashMap<String, Vec<String>> {
    let (_, list) = h.get("/models").await;
    let mut out = HashMap::new();
    for m in list["data"].as_array().unwrap() {
        let held: Vec<String> = m["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| ["starting", "healthy", "draining"].contains(&b["state"].as_str().unwrap()))
            .map(|b| b["device"].as_str().unwrap().to_owned())
            .collect();
        out.insert(m["id"].as_str().unwrap().to_owned(), held);
    }
    out
}

fn serving(h: &HashMap<String, Vec<String>>, model: &str) -> usize {
    h.get(model).map_or(0, Vec::len)
}

/// `request` and `response` events in one replica timeline file.
fn timeline_counts(path: &std::path::Path) -> (usize, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let count = |event: &str| text.lines().filter(|l| l.starts_with(event)).count();
    (count("request "), count("response "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_share_four_devices_and_no_replica_stops_with_lines_in_flight() {
    let timelines = tempfile::tempdir().unwrap();
    let h = Harness::start_with(|c| {
        c.models = vec![
            replica_model("model-a", timelines.path()),
            replica_model("model-b", timelines.path()),
        ];
        c.scheduler.max_loaded_models = 2;
        // b's batch is pressing one second after it arrives.
        c.scheduler.max_swap_delay_secs = 1;
        c.scheduler.idle_unload_secs = 0;
        c.limits.max_batch_lines = 10_000;
    })
    .await;
    const A_LINES: usize = 2400;
    const B_LINES: usize = 2400;

    let file_a = h.upload_lines(&lines("a-", "model-a", A_LINES)).await;
    let a = h.create_batch(&file_a, "/v1/chat/completions").await;
    let a_id = a["id"].as_str().unwrap().to_owned();

    // Alone with work, model-a takes every device.
    let mut seen: Vec<HashMap<String, Vec<String>>> = vec![];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = placement(&h).await;
        let done = serving(&now, "model-a") == 4;
        seen.push(now);
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "model-a never got four replicas: {:?} {:?}",
            h.get("/models").await.1["data"][0]["state"],
            h.get(&format!("/batches/{a_id}")).await.1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let file_b = h.upload_lines(&lines("b-", "model-b", B_LINES)).await;
    let b = h.create_batch(&file_b, "/v1/chat/completions").await;
    let b_id = b["id"].as_str().unwrap().to_owned();

    // Sample the placement until both batches are done.
    let (mut shared, mut b_alone_on_four) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let now = placement(&h).await;
        let (on_a, on_b) = (serving(&now, "model-a"), serving(&now, "model-b"));
        let (_, a_state) = h.get(&format!("/batches/{a_id}")).await;
        let (_, b_state) = h.get(&format!("/batches/{b_id}")).await;
        let a_running = a_state["status"] == "in_progress";
        if a_running && on_a == 2 && on_b == 2 {
            shared = true;
        }
        if !a_running && on_b == 4 {
            b_alone_on_four = true;
        }
        seen.push(now);
        if a_state["status"] == "completed" && b_state["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "batches did not finish: {a_state} {b_state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // No device ever held two models.
    for sample in &seen {
        let a: HashSet<&String> = sample["model-a"].iter().collect();
        assert!(
            sample["model-b"].iter().all(|d| !a.contains(d)),
            "two models on one device: {sample:?}"
        );
        assert!(a.len() + sample["model-b"].len() <= 4, "{sample:?}");
    }
    assert!(
        shared,
        "the devices were never shared two and two while both models had work"
    );
    assert!(
        b_alone_on_four,
        "model-b did not take all four devices once model-a was done"
    );

    for (id, prefix, n) in [(&a_id, "a-", A_LINES), (&b_id, "b-", B_LINES)] {
        let done = h.wait_terminal(id).await;
        assert_eq!(done["request_counts"]["completed"], n, "{done}");
        assert_eq!(done["request_counts"]["failed"], 0, "{done}");
        let output = h.lines_of(&done["output_file_id"]).await;
        let ids: HashSet<&str> = output.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
        assert_eq!(output.len(), n);
        assert_eq!(ids.len(), n);
        assert!(ids.iter().all(|id| id.starts_with(prefix)));
    }

    // Every request a replica received was answered before it stopped, and
    // no line was sent twice: a replica stopped with lines in flight would
    // leave requests without a response and lines sent again elsewhere.
    let mut requests = 0;
    let mut devices_used: HashMap<&str, usize> = HashMap::new();
    for model in ["model-a", "model-b"] {
        for device in DEVICES {
            let (sent, answered) = timeline_counts(&timelines.path().join(format!("{model}-{device}.log")));
            assert_eq!(
                sent, answered,
                "{model} on device {device}: {sent} requests, {answered} answers"
            );
            requests += sent;
            if sent > 0 {
                *devices_used.entry(model).or_default() += 1;
            }
        }
    }
    assert_eq!(requests, A_LINES + B_LINES, "a line was sent more than once");
    assert_eq!(devices_used["model-a"], 4, "{devices_used:?}");
    assert_eq!(devices_used["model-b"], 4, "{devices_used:?}");

    // Swaps are counted per replica start.
    let (_, list) = h.get("/models").await;
    for m in list["data"].as_array().unwrap() {
        assert!(m["loads"].as_u64().unwrap() >= 4, "{m}");
        assert_eq!(m["backends"].as_array().unwrap().len(), 4, "{m}");
    }
}
