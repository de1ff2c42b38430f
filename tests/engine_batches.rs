//! Batches run on the embedded engine, started and stopped by batchd itself
//! from an `engine = "model.gguf"` entry: the real-engine path behind every
//! fake-backend test.

mod common;

use batchd::config::ModelConfig;
use batchd::testing::tiny_gguf::{self, TinyModel};
use common::{Harness, chat_line};
use serde_json::{Value, json};

async fn harness_with_tiny_engine() -> (Harness, tempfile::TempDir) {
    let models = tempfile::tempdir().unwrap();
    let gguf = models.path().join("tiny.gguf");
    tiny_gguf::write(&gguf, &TinyModel::default()).unwrap();
    let h = Harness::start_with(|c| {
        c.server.engine_exe = Some(env!("CARGO_BIN_EXE_batchd").into());
        let mut model = ModelConfig::engine("tiny", gguf.clone());
        model.engine_parallel = 4;
        model.engine_ctx_per_seq = 256;
        model.engine_threads = Some(2);
        model.max_concurrency = 8;
        c.models = vec![model];
    })
    .await;
    (h, models)
}

#[tokio::test]
async fn chat_and_embeddings_batches_run_on_the_engine() {
    let (h, _models) = harness_with_tiny_engine().await;
    let mut lines: Vec<Value> = (0..10)
        .map(|i| chat_line(&format!("c{i}"), "tiny", &format!("say hello {i}")))
        .collect();
    for line in &mut lines {
        line["body"]["max_tokens"] = json!(6);
    }
    let file_id = h.upload_lines(&lines).await;
    let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
    let batch = h.wait_terminal(batch["id"].as_str().unwrap()).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 10, "completed": 10, "failed": 0})
    );
    let output = h.lines_of(&batch["output_file_id"]).await;
    let mut completion_tokens = 0;
    for line in &output {
        let body = &line["response"]["body"];
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "tiny");
        assert!(body["choices"][0]["message"]["content"].is_string());
        completion_tokens += body["usage"]["completion_tokens"].as_i64().unwrap();
    }
    assert_eq!(batch["usage"]["output_tokens"], completion_tokens);
    assert!(batch["usage"]["input_tokens"].as_i64().unwrap() > 10 * 5);

    let embed: Vec<Value> = (0..4)
        .map(|i| {
            json!({"custom_id": format!("e{i}"), "method": "POST", "url": "/v1/embeddings",
                        "body": {"model": "tiny", "input": format!("the one {i}")}})
        })
        .collect();
    let file_id = h.upload_lines(&embed).await;
    let batch = h.create_batch(&file_id, "/v1/embeddings").await;
    let batch = h.wait_terminal(batch["id"].as_str().unwrap()).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let output = h.lines_of(&batch["output_file_id"]).await;
    assert_eq!(output.len(), 4);
    for line in &output {
        let vector = line["response"]["body"]["data"][0]["embedding"].as_array().unwrap();
        assert_eq!(vector.len(), TinyModel::default().n_embd as usize);
    }
    assert_eq!(batch["usage"]["output_tokens"], 0);
}

#[tokio::test]
async fn engine_errors_land_in_the_error_file() {
    let (h, _models) = harness_with_tiny_engine().await;
    let mut too_long = chat_line("long", "tiny", &"the ".repeat(400));
    too_long["body"]["max_tokens"] = json!(4);
    let mut fine = chat_line("ok", "tiny", "hello");
    fine["body"]["max_tokens"] = json!(4);
    let file_id = h.upload_lines(&[too_long, fine]).await;
    let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
    let batch = h.wait_terminal(batch["id"].as_str().unwrap()).await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": 2, "completed": 1, "failed": 1})
    );
    let errors = h.lines_of(&batch["error_file_id"]).await;
    assert_eq!(errors[0]["custom_id"], "long");
    assert_eq!(errors[0]["response"]["status_code"], 400);
    assert_eq!(
        errors[0]["response"]["body"]["error"]["code"],
        "context_length_exceeded"
    );
}

/// The fleet path on the real engine: one model on two `batchd engine`
/// replicas (no devices: they share the CPU), every line once, both
/// replicas serving part of the batch.
#[tokio::test]
async fn one_model_on_two_engine_replicas_spreads_its_batch() {
    let models = tempfile::tempdir().unwrap();
    let gguf = models.path().join("tiny.gguf");
    tiny_gguf::write(&gguf, &TinyModel::default()).unwrap();
    let h = Harness::start_with(|c| {
        c.server.engine_exe = Some(env!("CARGO_BIN_EXE_batchd").into());
        let mut model = ModelConfig::engine("tiny", gguf.clone());
        model.engine_parallel = 2;
        model.engine_ctx_per_seq = 256;
        model.engine_threads = Some(1);
        model.min_concurrency = 2;
        model.max_concurrency = 2;
        model.replicas = Some(2);
        c.models = vec![model];
    })
    .await;
    let lines: Vec<Value> = (0..40)
        .map(|i| {
            let mut line = chat_line(&format!("r{i}"), "tiny", &format!("count to {i}"));
            line["body"]["max_tokens"] = json!(8);
            line
        })
        .collect();
    let file_id = h.upload_lines(&lines).await;
    let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
    let batch = h.wait_terminal(batch["id"].as_str().unwrap()).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let output = h.lines_of(&batch["output_file_id"]).await;
    let ids: std::collections::HashSet<&str> = output.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    assert_eq!((output.len(), ids.len()), (40, 40));

    let (_, list) = h.get("/models").await;
    let backends = list["data"][0]["backends"].as_array().unwrap().clone();
    assert_eq!(backends.len(), 2, "{list}");
    let served: Vec<u64> = backends.iter().map(|b| b["lines_served"].as_u64().unwrap()).collect();
    assert_eq!(served.iter().sum::<u64>(), 40, "{list}");
    assert!(served.iter().all(|n| *n > 0), "both replicas serve: {served:?}");
}
