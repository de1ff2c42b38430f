//! Wiring: builds the store, file storage, backends, batch supervisor and HTTP
//! router from a `Config`, and runs them until shutdown. Used by `batchd serve`
//! and by the integration tests, which start the whole server on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::FusedFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::backends::ModelRegistry;
use crate::batch::result_writer::ResultWriter;
use crate::batch::supervisor::Supervisor;
use crate::batch::{BatchService, Runtime};
use crate::config::{Config, DEFAULT_MODEL_FILE, DEFAULT_MODEL_NAME, ModelConfig};
use crate::files::{self, FileService};
use crate::models::ModelManager;
use crate::server::listener::{self, Limits};
use crate::server::lock::DataDirLock;
use crate::server::tasks::BackgroundTasks;
use crate::store::Store;
use crate::store::postgres::{PgStore, ServerLock};
use crate::store::sqlite::SqliteStore;

/// A started server.
pub struct Server {
    pub addr: SocketAddr,
    tls: bool,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Opens the data directory and starts serving on `config.server.listen`.
    pub async fn start(mut config: Config) -> anyhow::Result<Server> {
        let data_dir = config.server.data_dir.clone();
        std::fs::create_dir_all(&data_dir)?;
        // Before anything touches the database: a second server on the same
        // data directory would run every batch twice.
        let lock = DataDirLock::acquire(&data_dir)?;
        // The same for a shared PostgreSQL database.
        let db_lock = match config.store.postgres_url()? {
            Some(url) => Some(ServerLock::acquire(url).await?),
            None => None,
        };
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => Some(crate::server::tls::acceptor(cert, key)?),
            _ => None,
        };
        warn_if_too_few_file_descriptors(config.server.max_connections);
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
            manager,
            store,
            mut tasks,
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
        tasks.adopt("file sweeper", sweeper);
        tasks.adopt("webhook dispatcher", webhooks);
        let limits = Limits {
            max_connections: config.server.max_connections,
            header_read_timeout: Duration::from_secs(config.server.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(config.server.idle_timeout_secs),
            request_body_timeout: Duration::from_secs(config.server.request_body_timeout_secs),
        };
        let is_tls = tls.is_some();
        let http = listener::serve(listener, tls, api::router(state), limits, stop.clone());
        let running = Running {
            stop: stop.clone(),
            tasks,
            supervisor,
            writer,
            manager,
            deadline: Duration::from_secs(config.execution.shutdown_deadline_secs),
            _lock: lock,
            _db_lock: db_lock,
        };
        let done = tokio::spawn(running.run(http));
        tracing::info!(%addr, tls = is_tls, "batchd listening");
        Ok(Server {
            addr,
            tls: is_tls,
            stop,
            done,
        })
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
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

/// What a started server owns until it has stopped.
struct Running {
    stop: CancellationToken,
    tasks: BackgroundTasks,
    supervisor: Arc<Supervisor>,
    writer: ResultWriter,
    manager: ModelManager,
    deadline: Duration,
    /// Released last, once nothing of this server touches the data directory.
    _lock: DataDirLock,
    _db_lock: Option<ServerLock>,
}

impl Running {
    /// Serves until stopped or until a background task dies, then shuts down:
    /// dispatch stops at once while HTTP drains, queued results are committed,
    /// engines are stopped; all of it within the shutdown deadline.
    async fn run(mut self, http: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let mut http = Box::pin(http.fuse());
        let failure = tokio::select! {
            // A stop ends the sweeper, the dispatcher and the listener too:
            // seen first, so their ends are not taken for failures.
            biased;
            _ = self.stop.cancelled() => None,
            (task, how) = self.tasks.next_exit() => {
                tracing::error!(task, how, "a background task ended while the server runs; shutting down");
                Some(anyhow::anyhow!("background task '{task}' {how}"))
            }
            _ = &mut http => Some(anyhow::anyhow!("the HTTP listener stopped")),
        };
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + self.deadline;
        // Workers stop dispatching now, not after the last download: a slow
        // client must not keep lines flowing to the backend.
        let drained = tokio::time::timeout_at(deadline, async {
            tokio::join!(
                async {
                    if !http.is_terminated() {
                        (&mut http).await;
                    }
                },
                self.supervisor.shutdown(),
            )
        })
        .await;
        // Past the deadline this closes whatever connections are still open.
        drop(http);
        if drained.is_err() {
            tracing::warn!(
                deadline_secs = self.deadline.as_secs(),
                "shutdown deadline reached: closing open connections; unfinished lines are sent again after restart"
            );
        }
        if tokio::time::timeout_at(deadline, self.writer.flush()).await.is_err() {
            tracing::warn!(
                "shutdown deadline reached before every result was stored; those lines are sent again after restart"
            );
        }
        drop(self.writer);
        self.manager.shutdown().await;
        self.tasks.shutdown().await;
        failure.map_or(Ok(()), Err)
    }
}

/// Each open connection costs a file descriptor; past the process's limit,
/// SQLite and blob reads fail along with `accept`.
fn warn_if_too_few_file_descriptors(max_connections: usize) {
    const RESERVED: u64 = 256;
    if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        && soft < max_connections as u64 + RESERVED
    {
        tracing::warn!(
            open_files_limit = soft,
            max_connections,
            "server.max_connections is close to the open-files limit (ulimit -n); lower it or raise the limit"
        );
    }
}

/// Everything but the listener and the engine processes: the store, file
/// storage, backends, the batch supervisor (already running) and the router's
/// state. The fuzz targets drive `api::router(core.state)` in-process.
pub struct Core {
    pub state: AppState,
    pub supervisor: Arc<Supervisor>,
    pub writer: ResultWriter,
    pub manager: ModelManager,
    pub store: Arc<dyn Store>,
    /// The result writer, the supervisor's scan loop and the model reconcile
    /// loop (dropping it aborts them).
    pub tasks: BackgroundTasks,
}

/// The store `[store]` names: PostgreSQL at its url, or SQLite in the data
/// directory (which must exist). `batchd keys` writes through it too, so
/// keys reach the database the server reads.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match config.store.postgres_url()? {
        Some(url) => Arc::new(PgStore::connect(url).await?),
        None => Arc::new(SqliteStore::open(&config.server.data_dir.join("batchd.db")).await?),
    })
}

impl Core {
    pub async fn open(config: &Config) -> anyhow::Result<Core> {
        let data_dir = &config.server.data_dir;
        std::fs::create_dir_all(data_dir)?;
        let store = open_store(config).await?;
        // Before any batch can end: terminal transitions write outbox rows
        // only for the projects recorded here.
        let webhook_projects: Vec<String> = config.webhooks.iter().map(|h| h.project.clone()).collect();
        store.set_webhook_projects(&webhook_projects).await?;
        let blobs = files::storage::open(&config.storage, data_dir)?;
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
        let mut tasks = BackgroundTasks::default();
        let (manager, reconcile) = ModelManager::new(
            &config.models,
            config.scheduler.clone(),
            models.clone(),
            &engine_exe,
            &data_dir.join("logs"),
        );
        tasks.adopt("model reconcile loop", reconcile);
        let (writer, writer_task) = ResultWriter::spawn(store.clone(), config.limits.max_writer_queue_bytes);
        tasks.adopt("result writer", writer_task);
        let runtime = Runtime {
            store: store.clone(),
            blobs: blobs.clone(),
            models: models.clone(),
            manager: manager.clone(),
            limits: config.limits.clone(),
            writer: writer.clone(),
            shutdown_grace: Duration::from_secs(config.execution.shutdown_grace_secs),
        };
        let (supervisor, scan_loop) =
            Supervisor::start(runtime, Duration::from_millis(config.execution.poll_interval_ms));
        tasks.adopt("batch supervisor", scan_loop);
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
            upload_slots: Arc::new(tokio::sync::Semaphore::new(config.limits.max_concurrent_uploads)),
        };
        Ok(Core {
            state,
            supervisor,
            writer,
            manager,
            store,
            tasks,
        })
    }
}
