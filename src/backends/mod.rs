//! Talking to model servers. Every backend speaks the OpenAI-compatible HTTP
//! protocol (vLLM, SGLang, llama.cpp's server, TGI, Ollama, ...), so one client
//! serves them all; admission control (how many requests may be in flight) is
//! per model.

pub mod client;
pub mod limiter;
pub mod usage;

use std::collections::HashMap;
use std::sync::Arc;

pub use client::{Backend, Outcome};

use crate::config::{ExecutionConfig, ModelConfig};

/// The configured models, by the name request bodies use.
#[derive(Clone)]
pub struct ModelRegistry {
    models: Arc<HashMap<String, Arc<Backend>>>,
    order: Arc<Vec<String>>,
}

impl ModelRegistry {
    pub fn new(models: &[ModelConfig], execution: &ExecutionConfig) -> anyhow::Result<Self> {
        crate::http_client::check_roots()?;
        let http = crate::http_client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(execution.request_timeout_secs))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()?;
        let mut map = HashMap::new();
        let mut order = vec![];
        for model in models {
            let backend = Arc::new(Backend::new(model, http.clone(), execution));
            if model.min_concurrency < model.max_concurrency {
                backend.spawn_queue_watch(std::time::Duration::from_secs(1));
            }
            map.insert(model.name.clone(), backend);
            order.push(model.name.clone());
        }
        Ok(Self {
            models: Arc::new(map),
            order: Arc::new(order),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Backend>> {
        self.models.get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.models.contains_key(name)
    }

    /// Model names in configuration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }
}
