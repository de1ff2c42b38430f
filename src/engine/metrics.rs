//! The engine's Prometheus metrics, named as vLLM names them so that batchd
//! (and any dashboard built for vLLM) reads them the same way.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct EngineMetrics {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub steps: AtomicU64,
}

impl EngineMetrics {
    /// Prometheus text exposition format.
    pub fn render(&self, model: &str) -> String {
        let label = format!("{{model_name=\"{}\"}}", model.replace(['"', '\\', '\n'], "_"));
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        format!(
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
             # TYPE vllm:num_requests_running gauge\n\
             vllm:num_requests_running{label} {}\n\
             # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
             # TYPE vllm:num_requests_waiting gauge\n\
             vllm:num_requests_waiting{label} {}\n\
             # HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n\
             # TYPE vllm:prompt_tokens_total counter\n\
             vllm:prompt_tokens_total{label} {}\n\
             # HELP vllm:generation_tokens_total Number of generation tokens processed.\n\
             # TYPE vllm:generation_tokens_total counter\n\
             vllm:generation_tokens_total{label} {}\n",
            get(&self.running),
            get(&self.waiting),
            get(&self.prompt_tokens),
            get(&self.generated_tokens),
        )
    }
}
