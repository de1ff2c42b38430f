//! Wiring: builds the store, file storage, backends, batch supervisor and HTTP
//! router from a `Config`, and runs them until shutdown. Used by `batchd serve`
//! and by the integration tests, which start the whole server on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::backends::ModelRegistry;
use crate::batch::result_writer::ResultWriter;
use crate::batch::supervisor::Supervisor;
use crate::batch::{BatchService, Runtime};
use crate::config::{Config, DEFAULT_MODEL_FILE, DEFAULT_MODEL_NAME, ModelConfig};
use crate::files::{self, Blobs, FileService};
use crate::models::ModelManager;
use crate::store::Store;
use crate::store::sqlite::SqliteStore;

/// A started server.
pub struct Server {
    pub addr: SocketAddr,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Opens the data directory and starts serving on `config.server.listen`.
    pub async fn start(mut config: Config) -> anyhow::Result<Server> {
        let data_dir = config.server.data_dir.clone();
        std::fs::create_dir_all(&data_dir)?;
        if config.models.is_empty() {
            let default_model = data_dir.join(DEFAULT_MODEL_FILE);
            if default_model.is_file() {
                tracing::info!(model = DEFAULT_MODEL_NAME, path = %default_model.display(), "no [[models]] configured; serving the default model");
                config
                    .models
                    .push(ModelConfig::engine(DEFAULT_MODEL_NAME, default_model));
            } else {
                tracing::warn!(path = %default_model.display(), "no [[models]] configured and no default model installed (scripts/setup-model.sh installs it)");
            }
        }
        let Core {
            state,
            supervisor,
            writer,
            writer_task,
            manager,
            store,
        } = Core::open(&config).await?;
        if !config.server.listen.ip().is_loopback()
            && !config.server.allow_unauthenticated
            && !state.keys.required().await?
        {
            supervisor.shutdown().await;
            manager.shutdown().await;
            anyhow::bail!(
                "refusing to listen on {} without API keys: anyone who can connect could use the API. \
                 Create a key first (`batchd keys create --project NAME`), listen on loopback, \
                 or set server.allow_unauthenticated = true",
                config.server.listen
            );
        }
        let listener = TcpListener::bind(config.server.listen).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shutdown_signal = stop.clone();
        let sweeper = files::sweeper::spawn(
            state.files.clone(),
            state.uploads.clone(),
            Duration::from_millis(config.execution.file_sweep_interval_ms),
            stop.clone(),
        );
        let webhooks = crate::webhooks::dispatcher::spawn(
            store,
            config.webhooks.clone(),
            config.webhook_delivery.clone(),
            stop.clone(),
        );
        let done = tokio::spawn(async move {
            axum::serve(listener, api::router(state))
                .with_graceful_shutdown(async move { shutdown_signal.cancelled().await })
                .await?;
            // Order matters: no new requests, then workers finish their in-flight
            // lines, then every queued result is committed.
            let _ = sweeper.await;
            let _ = webhooks.await;
            supervisor.shutdown().await;
            writer.flush().await;
            drop(writer);
            writer_task.abort();
            manager.shutdown().await;
            Ok(())
        });
        tracing::info!(%addr, "batchd listening");
        Ok(Server { addr, stop, done })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops gracefully and waits until everything is persisted.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.done.await?
    }

    /// Waits until the server stops (after `shutdown` or a fatal error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await?
    }

    /// A handle that triggers a graceful stop from elsewhere (signal handlers).
    /// (Engines started for `engine = ...` models are stopped last.)
    pub fn stopper(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// Everything but the listener and the engine processes: the store, file
/// storage, backends, the batch supervisor (already running) and the router's
/// state. The fuzz targets drive `api::router(core.state)` in-process.
pub struct Core {
    pub state: AppState,
    pub supervisor: Arc<Supervisor>,
    pub writer: ResultWriter,
    pub writer_task: tokio::task::JoinHandle<()>,
    pub manager: ModelManager,
    pub store: Arc<dyn Store>,
}

impl Core {
    pub async fn open(config: &Config) -> anyhow::Result<Core> {
        let data_dir = &config.server.data_dir;
        std::fs::create_dir_all(data_dir)?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data_dir.join("batchd.db")).await?);
        let blobs = Blobs::local(&data_dir.join("blobs"))?;
        let models = ModelRegistry::new(&config.models, &config.execution)?;
        for name in models.names() {
            if let Some(backend) = models.get(name) {
                backend.set_max_response_bytes(config.limits.max_response_bytes);
            }
        }
        let engine_exe = match &config.server.engine_exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe()?,
        };
        let manager = ModelManager::new(
            &config.models,
            config.scheduler.clone(),
            models.clone(),
            &engine_exe,
            &data_dir.join("logs"),
        );
        let (writer, writer_task) = ResultWriter::spawn(store.clone(), config.limits.max_writer_queue_bytes);
        let runtime = Runtime {
            store: store.clone(),
            blobs: blobs.clone(),
            models: models.clone(),
            manager: manager.clone(),
            limits: config.limits.clone(),
            writer: writer.clone(),
            shutdown_grace: Duration::from_secs(config.execution.shutdown_grace_secs),
        };
        let supervisor = Supervisor::start(runtime, Duration::from_millis(config.execution.poll_interval_ms));
        let state = AppState {
            files: FileService::new(store.clone(), blobs.clone(), config.limits.max_upload_bytes),
            batches: BatchService::new(store.clone(), supervisor.clone())
                .with_max_active_batches_per_project(config.limits.max_active_batches_per_project),
            models,
            manager: manager.clone(),
            keys: crate::auth::KeyService::new(store.clone(), config.server.require_keys),
            uploads: crate::files::uploads::UploadService::new(
                store.clone(),
                blobs.clone(),
                FileService::new(store.clone(), blobs.clone(), config.limits.max_upload_bytes),
                config.limits.upload_ttl_secs,
                config.limits.max_upload_parts,
            ),
            max_upload_bytes: config.limits.max_upload_bytes,
            completion_windows: config.execution.allowed_completion_windows.clone(),
            min_expires_after_secs: config.limits.min_expires_after_secs,
            metrics_public: config.server.metrics_public,
        };
        Ok(Core {
            state,
            supervisor,
            writer,
            writer_task,
            manager,
            store,
        })
    }
}
