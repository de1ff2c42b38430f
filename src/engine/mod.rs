//! The embedded CPU engine: llama.cpp (through `llama-cpp-2`) behind an
//! OpenAI-compatible HTTP server, run by `batchd engine` as its own process so
//! that a native crash can never take the control plane down.

pub mod chat_template;
pub mod core;
pub mod metrics;
pub mod requests;
pub mod server;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use tokio::sync::mpsc;

use chat_template::ChatTemplate;
use core::EngineShape;
use metrics::EngineMetrics;
use server::EngineState;

#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// GGUF model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Name the model is served under (the `model` of requests).
    #[arg(long)]
    pub name: Option<String>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Sequences generated at once (continuous batching slots).
    #[arg(long, default_value_t = 8)]
    pub parallel: u32,
    /// Context per sequence: prompt plus completion of one request.
    #[arg(long, default_value_t = 2048)]
    pub ctx_per_seq: u32,
    /// Most tokens in one decode step.
    #[arg(long, default_value_t = 512)]
    pub batch_tokens: u32,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<i32>,
}

/// Loads the model and serves it until the process is stopped.
pub async fn run(args: EngineArgs) -> anyhow::Result<()> {
    let mut backend = LlamaBackend::init()?;
    if std::env::var_os("BATCHD_ENGINE_LLAMA_LOGS").is_none() {
        backend.void_logs();
    }
    let backend = Arc::new(backend);
    let path = args.model.clone();
    anyhow::ensure!(path.is_file(), "model file {} does not exist", path.display());
    let load_backend = backend.clone();
    let model = tokio::task::spawn_blocking(move || {
        LlamaModel::load_from_file(&load_backend, &path, &LlamaModelParams::default())
    })
    .await??;
    let model = Arc::new(model);
    let name = args.name.clone().unwrap_or_else(|| {
        args.model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let vocab = model.vocab();
    let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
    let template = ChatTemplate::new(
        model.meta_val_str("tokenizer.chat_template").ok(),
        &model.meta_val_str("general.architecture").unwrap_or_default(),
        piece(vocab.bos()),
        piece(vocab.eos()),
    )?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as i32)
            .unwrap_or(2)
    });
    let shape = EngineShape {
        parallel: args.parallel.max(1),
        ctx_per_seq: args.ctx_per_seq.max(16),
        batch_tokens: args.batch_tokens.max(args.parallel).max(16),
        threads,
    };
    let metrics = Arc::new(EngineMetrics::default());
    let (jobs, rx) = mpsc::channel(1024);
    let engine = {
        let (model, shape, metrics, backend) = (model.clone(), shape.clone(), metrics.clone(), backend.clone());
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || core::run(&backend, model, shape, rx, metrics))?
    };
    tracing::info!(model = %name, template = template.source, parallel = shape.parallel, ctx_per_seq = shape.ctx_per_seq, threads, "engine loaded");
    let state = EngineState {
        model,
        name,
        jobs,
        template: Arc::new(template),
        metrics,
        shape,
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("batchd engine listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let serve = axum::serve(listener, server::router(state));
    // If the engine thread ever stops, the process must stop too: a server
    // that answers /health but can no longer generate would hide the failure
    // from batchd, which watches the process.
    let engine_ended = tokio::task::spawn_blocking(move || engine.join());
    tokio::select! {
        r = serve => r?,
        _ = tokio::signal::ctrl_c() => {},
        ended = engine_ended => {
            let why = match ended {
                Ok(Ok(Ok(()))) => "the engine thread stopped".to_owned(),
                Ok(Ok(Err(e))) => format!("the engine failed: {e}"),
                _ => "the engine thread panicked".to_owned(),
            };
            anyhow::bail!(why);
        }
    }
    Ok(())
}
