//! Talking to model servers. Every backend speaks the OpenAI-compatible HTTP
//! protocol (vLLM, SGLang, llama.cpp's server, TGI, Ollama, ...), so one client
//! serves them all. A model is a pool of one or more servers (`urls`, or
//! managed replicas), each with its own adaptive concurrency limit and
//! health.

pub mod backend;
pub mod limiter;
pub mod pool;

use std::collections::HashMap;
use std::sync::Arc;

pub use backend::{Backend, BackendSnapshot, BackendState, Outcome};
pub use pool::{BackendPool, PoolSlot};

use crate::config::{ExecutionConfig, ModelConfig};

/// The configured models, by the name request bodies use.
#[derive(Clone)]
pub struct ModelRegistry {
    models: Arc<HashMap<String, Arc<BackendPool>>>,
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
            let pool = Arc::new(BackendPool::new(model, http.clone(), execution));
            if model.min_concurrency < model.max_concurrency {
                pool.spawn_queue_watches(std::time::Duration::from_secs(1));
            }
            map.insert(model.name.clone(), pool);
            order.push(model.name.clone());
        }
        Ok(Self {
            models: Arc::new(map),
            order: Arc::new(order),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<BackendPool>> {
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
