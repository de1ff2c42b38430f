use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use batchd::app::Server;
use batchd::config::Config;

#[derive(Parser)]
#[command(
    name = "batchd",
    version,
    about = "A self-hosted, OpenAI-compatible Batch API server"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "BATCHD_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server and batch workers.
    Serve {
        /// Configuration file (see config.example.toml). Without one, batchd
        /// listens on 127.0.0.1:8080 with ./data as its data directory.
        #[arg(long, short, env = "BATCHD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the embedded CPU inference engine on a GGUF model (an
    /// OpenAI-compatible server; `batchd serve` starts it by itself).
    #[cfg(feature = "engine")]
    Engine(batchd::engine::EngineArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("BATCHD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.command {
        Command::Serve { config } => serve(config).await,
        #[cfg(feature = "engine")]
        Command::Engine(args) => batchd::engine::run(args).await,
    }
}

async fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if config.models.is_empty() {
        tracing::warn!("no [[models]] configured: batches will fail validation with model_not_found");
    }
    let server = Server::start(config).await?;
    // One machine-readable line on stdout, for scripts and tests that start
    // batchd on port 0.
    println!("batchd listening on {}", server.url());
    std::io::stdout().flush()?;
    let stopper = server.stopper();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight lines");
        stopper.cancel();
    });
    server.wait().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
