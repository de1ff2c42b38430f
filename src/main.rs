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
    /// Manage API keys (works while the server runs: same database).
    Keys {
        /// Configuration file whose data_dir holds the database.
        #[arg(long, short, env = "BATCHD_CONFIG", global = true)]
        config: Option<PathBuf>,
        /// The data directory, instead of a configuration file.
        #[arg(long, global = true, conflicts_with = "config")]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Run the embedded CPU inference engine on a GGUF model (an
    /// OpenAI-compatible server; `batchd serve` starts it by itself).
    #[cfg(feature = "engine")]
    Engine(batchd::engine::EngineArgs),
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key for a project and print it, with its secret (shown once), as JSON.
    Create {
        #[arg(long)]
        project: String,
        #[arg(long, default_value = "")]
        name: String,
        /// May use the admin API (/admin/keys).
        #[arg(long)]
        admin: bool,
    },
    /// List keys (never their secrets) as JSON lines.
    List {
        #[arg(long)]
        project: Option<String>,
    },
    /// Revoke a key by id (`key_...`); requests with it get 401 at once.
    Revoke { key_id: String },
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
        Command::Keys {
            config,
            data_dir,
            action,
        } => keys(config, data_dir, action).await,
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
    raise_open_files_limit();
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

/// Every connection is a file descriptor, and the usual soft limit (1024) is
/// far below the hard one; raise it as Go's runtime does, so
/// `server.max_connections` fits.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "could not raise the open-files limit");
    }
}

async fn keys(config: Option<PathBuf>, data_dir: Option<PathBuf>, action: KeysAction) -> anyhow::Result<()> {
    let mut config = match config {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if let Some(dir) = data_dir {
        config.server.data_dir = dir;
    }
    std::fs::create_dir_all(&config.server.data_dir)?;
    // The configured store (`[store] url`), so keys reach the database the
    // server reads. The CLI never serves requests, so `require_keys` does not
    // matter here.
    let store = batchd::app::open_store(&config).await?;
    let keys = batchd::auth::KeyService::new(store, false);
    let out = |v: serde_json::Value| println!("{v}");
    match action {
        KeysAction::Create { project, name, admin } => {
            out(serde_json::to_value(keys.create(&project, &name, admin).await?)?)
        }
        KeysAction::List { project } => {
            for key in keys.list(project.as_deref()).await? {
                out(serde_json::to_value(key)?);
            }
        }
        KeysAction::Revoke { key_id } => {
            out(serde_json::to_value(keys.revoke(&key_id).await?)?);
            if keys.active_count().await? == 0 {
                eprintln!(
                    "warning: no active API key remains; the API answers 401 to every request \
                     until you create one (`batchd keys create`)"
                );
            }
        }
    }
    Ok(())
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
