//! A model server's output stays with the operator: when a managed model
//! fails to start, tenants get a general reason (`/v1/models` and the failed
//! batch), never lines of the server's log, which may hold other tenants'
//! prompts. Each start writes a fresh log and keeps the previous one as `.1`.

mod common;

use batchd::config::ModelConfig;
use common::{Harness, chat_line};
use serde_json::Value;

const SECRET: &str = "tenant-b prompt: my password is hunter2-sk-LEAK-4242";

#[tokio::test]
async fn a_failed_start_tells_tenants_why_without_the_model_servers_output() {
    let h = Harness::start_with(|c| {
        let mut leaky = ModelConfig::command(
            "leaky",
            &format!("echo '{SECRET}'; echo 'CUDA out of memory' >&2; exit 3 # {{port}}"),
        );
        leaky.start_timeout_secs = 30;
        c.models.push(leaky);
    })
    .await;
    for round in 0..2 {
        let input = h.upload_lines(&[chat_line(&format!("l{round}"), "leaky", "hi")]).await;
        let batch = h.create_batch(&input, "/v1/chat/completions").await;
        let done = h.wait_terminal(batch["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "failed", "{done}");
        let error = &done["errors"]["data"][0];
        assert_eq!(error["code"], "model_unavailable", "{done}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("exited"), "the reason is still given: {message}");
        let everything = format!("{done} {}", h.content(done["error_file_id"].as_str().unwrap()).await);
        assert!(
            !everything.contains("hunter2"),
            "the server's output reached a tenant: {everything}"
        );
        assert!(
            !everything.contains("CUDA"),
            "the server's output reached a tenant: {everything}"
        );

        let (_, models) = h.get("/models").await;
        let leaky: &Value = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "leaky")
            .unwrap();
        let last_error = leaky["last_error"].as_str().unwrap();
        assert!(last_error.contains("exited"), "{leaky}");
        assert!(!models.to_string().contains("hunter2"), "{models}");
        assert!(!models.to_string().contains("CUDA"), "{models}");
    }
    // The operator keeps the output: this start's log, and the one before.
    let logs = h.dir.path().join("data/logs");
    for log in ["leaky.log", "leaky.log.1"] {
        let text = std::fs::read_to_string(logs.join(log)).unwrap();
        assert_eq!(text.matches(SECRET).count(), 1, "{log}: {text}");
    }
}
