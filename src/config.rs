//! Configuration: one TOML file, every option documented in `config.example.toml`.
//!
//! Every section and key is optional; `Config::default()` is what `batchd serve`
//! runs with when no file is given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub execution: ExecutionConfig,
    pub scheduler: SchedulerConfig,
    pub models: Vec<ModelConfig>,
    /// Webhook endpoints, per project.
    pub webhooks: Vec<WebhookConfig>,
    pub webhook_delivery: WebhookDeliveryConfig,
    /// Where file bytes live (default: `<data_dir>/blobs`).
    pub storage: StorageConfig,
    /// Where metadata lives (default: SQLite at `<data_dir>/batchd.db`).
    pub store: StoreConfig,
}

/// `[store]`: the metadata database. Unset: SQLite at `<data_dir>/batchd.db`.
/// `url = "postgres://user:password@host:5432/db"` (or `postgresql://`, any
/// form sqlx accepts, `?host=/run/postgresql` for a unix socket): PostgreSQL,
/// migrated at start. TLS to PostgreSQL is not supported yet.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub url: Option<String>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log line.
        f.debug_struct("StoreConfig")
            .field("url", &self.url.as_deref().map(redact_password))
            .finish()
    }
}

impl StoreConfig {
    /// The PostgreSQL URL, `None` for SQLite; an error for any other scheme.
    pub fn postgres_url(&self) -> anyhow::Result<Option<&str>> {
        let Some(url) = &self.url else { return Ok(None) };
        anyhow::ensure!(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "store.url {:?} must start with postgres:// or postgresql:// (leave it unset for SQLite in the data directory)",
            redact_password(url)
        );
        Ok(Some(url))
    }
}

/// `url` with the password of its user info, and any `password=` query
/// parameter, replaced by `<redacted>`.
fn redact_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:<redacted>@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=<redacted>"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    if scheme.is_empty() {
        format!("{authority}{tail}")
    } else {
        format!("{scheme}://{authority}{tail}")
    }
}

/// `[storage]`: the object store that holds file bytes (uploads, result
/// files). Unset: the local directory `<data_dir>/blobs`. `url = "s3://bucket/prefix"`:
/// any S3-compatible store, through `object_store`'s S3 client. Credentials
/// come from here or, when not given, from the standard `AWS_*` environment
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`, `AWS_ENDPOINT_URL`...).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub url: Option<String>,
    /// The S3 endpoint, e.g. `http://127.0.0.1:9000` for a server on this
    /// machine (an `http://` endpoint allows plain HTTP). Unset: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// A failing S3 request is retried (with backoff) for at most this long
    /// before the API call that needed it fails with a 500.
    pub retry_timeout_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            retry_timeout_secs: 30,
        }
    }
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("StorageConfig")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("retry_timeout_secs", &self.retry_timeout_secs)
            .finish()
    }
}

impl StorageConfig {
    /// `(bucket, prefix)` of an `s3://` url; `None` for local storage.
    pub fn s3_location(&self) -> anyhow::Result<Option<(String, String)>> {
        let Some(url) = &self.url else { return Ok(None) };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| anyhow::anyhow!("storage.url {url:?} must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(!bucket.is_empty(), "storage.url {url:?} names no bucket");
        Ok(Some((bucket.to_owned(), prefix.trim_matches('/').to_owned())))
    }
}

/// Where a project's batch events (`batch.completed`, `batch.failed`,
/// `batch.cancelled`, `batch.expired`) are POSTed, signed as OpenAI does
/// (Standard Webhooks).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The project (API key tenant); `default` while no keys exist.
    pub project: String,
    pub url: String,
    /// `whsec_` + base64, as OpenAI issues them (the SDKs verify with it).
    pub secret: String,
}

/// The HMAC key a webhook `secret` stands for: the base64 after `whsec_`, or
/// the secret's UTF-8 bytes if the prefix is absent (as the SDKs do). Here
/// rather than in `webhooks`, so that checking a configuration needs nothing
/// that depends on the configuration.
pub fn webhook_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .filter(|k| !k.is_empty()),
        None => (!secret.is_empty()).then(|| secret.as_bytes().to_vec()),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookDeliveryConfig {
    /// Deliver to loopback, private and link-local addresses. Off by default,
    /// so a project's webhook URL cannot reach into the server's network.
    pub allow_private_addresses: bool,
    /// First retry delay; it doubles up to an hour between attempts.
    pub retry_initial_secs: f64,
    /// Events not delivered within this many hours are given up (OpenAI: 72).
    pub max_age_hours: u64,
    pub timeout_secs: u64,
    /// Delivered and given-up events are deleted from the outbox this many
    /// hours after they finished (0: at the next cleanup, hourly and at start).
    pub retention_hours: u64,
}

impl Default for WebhookDeliveryConfig {
    fn default() -> Self {
        Self {
            allow_private_addresses: false,
            retry_initial_secs: 5.0,
            max_age_hours: 72,
            timeout_secs: 10,
            retention_hours: 168,
        }
    }
}

/// How managed model servers (`command` or `engine` models) share the
/// machine, and the order batches run in.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Managed models that may be loaded at once (default 1: one GPU).
    /// Loading another first unloads an idle one.
    pub max_loaded_models: usize,
    /// A loaded model with no work is stopped after this many seconds (0: never).
    pub idle_unload_secs: u64,
    /// While batches of another model wait for a slot, the loaded model keeps
    /// taking new batches of its own for at most this long (collating work by
    /// model saves swaps), then finishes what it runs and makes way.
    pub max_swap_delay_secs: u64,
    /// A waiting batch this close to its `expires_at` is urgent: the loaded
    /// model takes no new batches until the urgent batch's model has run.
    pub urgency_margin_secs: u64,
    /// Restarts of a crashed model server while it has work, before its
    /// remaining lines fail.
    pub max_restarts: u32,
    /// A batch holding its model's dispatch turn yields it after this many
    /// seconds when a batch that goes first waits (another project's, whose
    /// turn it is in the round-robin, or an urgent one), and queues again.
    /// Bounds how long one project holds a model while another waits.
    pub turn_quantum_secs: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_loaded_models: 1,
            idle_unload_secs: 600,
            max_swap_delay_secs: 300,
            urgency_margin_secs: 3600,
            max_restarts: 3,
            turn_quantum_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP API listens on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Holds the SQLite database (`batchd.db`) and stored file bytes (`files/`).
    pub data_dir: PathBuf,
    /// The executable that runs `engine` models (`<exe> engine --model ...`).
    /// Default: this batchd binary.
    pub engine_exe: Option<PathBuf>,
    /// Serve without API keys on a non-loopback address. Off by default:
    /// until a key exists (`batchd keys create`), anyone who can connect can
    /// use the API.
    pub allow_unauthenticated: bool,
    /// Require an API key on every `/v1` request even before the first key
    /// exists (every request is a 401 until `batchd keys create`). Keys are
    /// required anyway once one was ever created, revoked or not.
    pub require_keys: bool,
    /// Serve `/metrics` without a key while keys are required. Off by
    /// default: the page spans every project (batch counts, model names,
    /// queue depths), so scraping it then takes an admin key.
    pub metrics_public: bool,
    /// A client must send a request's head (and finish a TLS handshake)
    /// within this many seconds, or it is disconnected (slowloris).
    pub header_read_timeout_secs: u64,
    /// A connection with no request in flight and no bytes moving for this
    /// many seconds is closed.
    pub idle_timeout_secs: u64,
    /// A request body (an upload) that sends nothing for this many seconds
    /// fails the request.
    pub request_body_timeout_secs: u64,
    /// Most connections open at once; further clients wait in the accept
    /// backlog until one closes.
    pub max_connections: usize,
    /// PEM certificate chain: with `tls_key`, the API is served over HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            engine_exe: None,
            allow_unauthenticated: false,
            require_keys: false,
            metrics_public: false,
            header_read_timeout_secs: 30,
            idle_timeout_secs: 120,
            request_body_timeout_secs: 300,
            max_connections: 1024,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The embedded engine's request body limit. It must hold any line batchd
/// accepts, so `limits.max_line_bytes` may not exceed it when a model uses
/// the engine.
pub const ENGINE_MAX_REQUEST_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted `POST /v1/files` upload; larger ones get 413.
    pub max_upload_bytes: u64,
    /// Largest input file a batch accepts (OpenAI: 200 MB).
    pub max_batch_input_bytes: u64,
    /// Most request lines a batch accepts (OpenAI: 50,000).
    pub max_batch_lines: u64,
    /// Longest single JSONL line; bounds the memory one line can take.
    pub max_line_bytes: u64,
    /// At most this many per-line problems are reported in a failed batch's `errors`.
    pub max_reported_errors: usize,
    /// Shortest `expires_after[seconds]` / `output_expires_after.seconds`
    /// accepted. OpenAI's is 3600; lower values exist for tests.
    pub min_expires_after_secs: i64,
    /// An Uploads API upload not completed within this many seconds expires
    /// and its parts are deleted (OpenAI: one hour; lower values for tests).
    pub upload_ttl_secs: i64,
    /// Batches a project may have active (validating, in progress,
    /// finalizing or cancelling) at once; a create beyond it gets HTTP 429
    /// `rate_limit_exceeded`.
    pub max_active_batches_per_project: u64,
    /// Lines a project may have enqueued (not yet run, over its in-progress
    /// batches); a batch that would exceed it fails validation with
    /// `token_limit_exceeded`, like OpenAI's enqueued token limit.
    pub max_enqueued_lines_per_project: u64,
    /// Largest model server response read for one line; a larger one ends
    /// that line in the error file as `response_too_large` (not retried).
    pub max_response_bytes: u64,
    /// Most bytes of results waiting for the result writer's commit. Lines
    /// finishing beyond it wait, which slows dispatch (one result larger than
    /// this still passes, alone). At most 4 GiB.
    pub max_writer_queue_bytes: u64,
    /// Most parts one Uploads API upload takes (parts have no minimum size).
    pub max_upload_parts: u64,
    /// Uploads (`POST /v1/files`, upload parts) streaming at once; more get
    /// 429 `rate_limit_exceeded`. Each one buffers several MB on its way to storage.
    pub max_concurrent_uploads: usize,
    /// Batches validated at once (each streams its whole input file, holding
    /// one line in memory); the rest wait without holding the file open.
    /// 0 means one per CPU.
    pub max_concurrent_validations: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 512 * 1024 * 1024,
            max_batch_input_bytes: 200 * 1000 * 1000,
            max_batch_lines: 50_000,
            max_line_bytes: 16 * 1024 * 1024,
            max_reported_errors: 1000,
            min_expires_after_secs: 3600,
            upload_ttl_secs: 3600,
            max_active_batches_per_project: 100,
            max_enqueued_lines_per_project: 1_000_000,
            max_response_bytes: 64 * 1024 * 1024,
            max_writer_queue_bytes: 256 * 1024 * 1024,
            max_upload_parts: 10_000,
            max_concurrent_uploads: 64,
            max_concurrent_validations: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutionConfig {
    /// Attempts per line for transient failures (connect errors, timeouts, 429, 5xx).
    pub max_attempts: u32,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    /// Time limit for one backend request.
    pub request_timeout_secs: u64,
    /// How often the scheduler looks for work it was not told about (safety net).
    pub poll_interval_ms: u64,
    /// `completion_window` values batches may ask for. OpenAI accepts only
    /// "24h"; others ("1h", "7d", "90s": a number and s, m, h or d) are a
    /// documented extension.
    pub allowed_completion_windows: Vec<String>,
    /// How often expired files are deleted.
    pub file_sweep_interval_ms: u64,
    /// On SIGTERM, how long in-flight lines may take to finish before the
    /// server exits anyway (those lines are sent again after a restart).
    pub shutdown_grace_secs: u64,
    /// On SIGTERM, the server exits after at most this many seconds, even if
    /// a download or a result commit has not finished by then.
    pub shutdown_deadline_secs: u64,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            retry_initial_backoff_ms: 500,
            retry_max_backoff_ms: 30_000,
            request_timeout_secs: 600,
            poll_interval_ms: 1000,
            allowed_completion_windows: vec!["24h".into()],
            file_sweep_interval_ms: 60_000,
            shutdown_grace_secs: 30,
            shutdown_deadline_secs: 60,
        }
    }
}

/// A model batches may name in `body.model`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The value request bodies put in `"model"`.
    pub name: String,
    /// Base URL of an already-running OpenAI-compatible server, ending in `/v1`.
    #[serde(default)]
    pub url: Option<String>,
    /// Several already-running servers of this model (one vLLM per GPU, say),
    /// each ending in `/v1`: every batch's lines are spread over all of them.
    /// Instead of `url`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// A GGUF file served by the embedded engine, which batchd starts,
    /// health-checks and stops itself. Exactly one of `url`, `engine` and
    /// `command`.
    #[serde(default)]
    pub engine: Option<PathBuf>,
    /// A shell command that serves this model on `127.0.0.1:{port}` (batchd
    /// fills in a free port), e.g. `vllm serve ... --port {port}`. batchd
    /// starts it when work needs it and stops it to make room or when idle.
    #[serde(default)]
    pub command: Option<String>,
    /// Managed models: environment variables added for `command`.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Managed models: polled until it answers 2xx before the model counts as loaded.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Managed models: seconds a start may take (weights loading, compilation).
    #[serde(default = "default_start_timeout")]
    pub start_timeout_secs: u64,
    /// Managed models: signal sent to the process group to stop it.
    #[serde(default = "default_stop_signal")]
    pub stop_signal: String,
    /// Managed models: a command run instead of sending `stop_signal`.
    #[serde(default)]
    pub stop_command: Option<String>,
    /// Managed models: seconds between the stop signal and SIGKILL.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_secs: u64,
    /// Managed models with the same device are never loaded at once. The
    /// same as `devices = [device]`.
    #[serde(default)]
    pub device: Option<String>,
    /// Managed models: the devices (GPUs) a replica of this model may run
    /// on, one replica per device at a time; `{device}` in `command` and in
    /// `env` values is replaced by the replica's device (for example
    /// `CUDA_VISIBLE_DEVICES = "{device}"`). The scheduler decides how many
    /// of them the model gets, up to `replicas`.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Managed models: the most servers of this model run at once (default:
    /// one per entry of `devices`, or 1). Without `devices`, replicas share
    /// the machine (no device exclusivity), like engine processes on CPU.
    #[serde(default)]
    pub replicas: Option<usize>,
    /// vLLM sleep mode (`--enable-sleep-mode`): make way for another model by
    /// `POST /sleep` and come back by `POST /wake_up` instead of a cold restart.
    #[serde(default)]
    pub sleep_mode: bool,
    /// Engine only: sequences generated at once (continuous batching slots).
    #[serde(default = "default_engine_parallel")]
    pub engine_parallel: u32,
    /// Engine only: context per sequence (prompt + completion of one request).
    #[serde(default = "default_engine_ctx")]
    pub engine_ctx_per_seq: u32,
    /// Engine only: CPU threads (default: all cores).
    #[serde(default)]
    pub engine_threads: Option<u32>,
    /// Bearer token sent to the backend, if it needs one.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Most requests in flight to each backend (each `urls` entry or
    /// replica) at once, over all batches. The actual limit adapts between
    /// `min_concurrency` and this bound, for each backend on its own.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// The adaptive concurrency limit never goes below this.
    #[serde(default = "default_min_concurrency")]
    pub min_concurrency: usize,
}

fn default_min_concurrency() -> usize {
    1
}

fn default_health_path() -> String {
    "/health".into()
}

fn default_start_timeout() -> u64 {
    600
}

fn default_stop_signal() -> String {
    "SIGTERM".into()
}

/// The signal `stop_signal` names, with or without the `SIG` prefix, in any
/// case. Here rather than in `models`, so that checking a configuration needs
/// nothing that depends on the configuration.
pub fn parse_signal(name: &str) -> Option<nix::sys::signal::Signal> {
    let name = name.trim().to_ascii_uppercase();
    let full = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    full.parse().ok()
}

fn default_stop_grace() -> u64 {
    30
}

fn default_max_concurrency() -> usize {
    64
}

fn default_engine_parallel() -> u32 {
    8
}

fn default_engine_ctx() -> u32 {
    2048
}

/// The model `batchd serve` runs when no `[[models]]` is configured: Gemma 3
/// 270M (Q4_K_M), installed into the data directory by `scripts/setup-model.sh`.
pub const DEFAULT_MODEL_NAME: &str = "gemma-3-270m";
pub const DEFAULT_MODEL_FILE: &str = "models/gemma-3-270m-q4_k_m.gguf";

impl ModelConfig {
    /// A model served by the embedded engine from `gguf`.
    pub fn engine(name: &str, gguf: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            url: None,
            urls: vec![],
            engine: Some(gguf),
            command: None,
            env: Default::default(),
            health_path: default_health_path(),
            start_timeout_secs: default_start_timeout(),
            stop_signal: default_stop_signal(),
            stop_command: None,
            stop_grace_secs: default_stop_grace(),
            device: None,
            devices: vec![],
            replicas: None,
            sleep_mode: false,
            engine_parallel: default_engine_parallel(),
            engine_ctx_per_seq: default_engine_ctx(),
            engine_threads: None,
            api_key: None,
            max_concurrency: default_max_concurrency(),
            min_concurrency: default_min_concurrency(),
        }
    }

    /// A model served by `command` (with `{port}` in it), started on demand.
    pub fn command(name: &str, command: &str) -> Self {
        Self {
            engine: None,
            command: Some(command.to_owned()),
            ..Self::engine(name, PathBuf::new())
        }
    }

    /// Whether batchd runs this model's server itself.
    pub fn is_managed(&self) -> bool {
        self.engine.is_some() || self.command.is_some()
    }

    /// The base URLs of an external model's servers (`url` or `urls`), in
    /// configuration order; empty for a managed model.
    pub fn backend_urls(&self) -> Vec<String> {
        self.url.iter().chain(&self.urls).cloned().collect()
    }

    /// A managed model's replica places: one per device it may use (`devices`,
    /// or `device`), or `replicas` places without a device. Empty for an
    /// external model.
    pub fn replica_devices(&self) -> Vec<Option<String>> {
        if !self.is_managed() {
            return vec![];
        }
        match (&self.device, self.devices.is_empty()) {
            (_, false) => self.devices.iter().cloned().map(Some).collect(),
            (Some(device), true) => vec![Some(device.clone())],
            (None, true) => vec![None; self.replicas.unwrap_or(1).max(1)],
        }
    }

    /// The most replicas of a managed model that run at once.
    pub fn max_replicas(&self) -> usize {
        let places = self.replica_devices().len();
        self.replicas.unwrap_or(places).min(places)
    }

    /// A model served by an already-running server at `url`.
    pub fn remote(name: &str, url: &str) -> Self {
        Self {
            url: Some(url.to_owned()),
            engine: None,
            ..Self::engine(name, PathBuf::new())
        }
    }

    /// A model served by several already-running servers.
    pub fn fleet(name: &str, urls: &[String]) -> Self {
        Self {
            urls: urls.to_vec(),
            engine: None,
            ..Self::engine(name, PathBuf::new())
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Config = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        self.store.postgres_url()?;
        let mut seen = std::collections::HashSet::new();
        for model in &self.models {
            anyhow::ensure!(!model.name.is_empty(), "a [[models]] entry has an empty name");
            anyhow::ensure!(
                seen.insert(model.name.as_str()),
                "model {:?} is configured twice",
                model.name
            );
            let remote = model.url.is_some() || !model.urls.is_empty();
            match (remote, &model.engine, &model.command) {
                (true, None, None) => {
                    anyhow::ensure!(
                        model.url.is_none() || model.urls.is_empty(),
                        "model {:?}: give `url` for one server or `urls` for several, not both",
                        model.name
                    );
                    let urls = model.backend_urls();
                    for url in &urls {
                        anyhow::ensure!(
                            url.starts_with("http://") || url.starts_with("https://"),
                            "model {:?}: url {url:?} must start with http:// or https://",
                            model.name
                        );
                    }
                    let distinct: std::collections::HashSet<_> = urls.iter().map(|u| u.trim_end_matches('/')).collect();
                    anyhow::ensure!(
                        distinct.len() == urls.len(),
                        "model {:?}: a url is listed twice in `urls`",
                        model.name
                    );
                    anyhow::ensure!(
                        model.devices.is_empty() && model.replicas.is_none(),
                        "model {:?}: `devices` and `replicas` are for models batchd starts (`engine` or `command`)",
                        model.name
                    );
                }
                (false, None, None) => anyhow::bail!(
                    "model {:?}: give one of `url`, `urls`, `engine` and `command`",
                    model.name
                ),
                (false, Some(_), None) => {}
                (false, None, Some(command)) => anyhow::ensure!(
                    command.contains("{port}"),
                    "model {:?}: command must contain {{port}}, where batchd puts the port to serve on",
                    model.name
                ),
                _ => anyhow::bail!(
                    "model {:?}: give exactly one of `url` (or `urls`), `engine` and `command`",
                    model.name
                ),
            }
            self.check_replicas(model)?;
            anyhow::ensure!(
                model.min_concurrency >= 1 && model.min_concurrency <= model.max_concurrency,
                "model {:?}: need 1 <= min_concurrency <= max_concurrency",
                model.name
            );
            anyhow::ensure!(
                parse_signal(&model.stop_signal).is_some(),
                "model {:?}: unknown stop_signal {:?}",
                model.name,
                model.stop_signal
            );
            anyhow::ensure!(
                model.health_path.starts_with('/'),
                "model {:?}: health_path must start with /",
                model.name
            );
        }
        anyhow::ensure!(
            self.models.iter().all(|m| m.engine.is_none()) || self.limits.max_line_bytes <= ENGINE_MAX_REQUEST_BYTES,
            "limits.max_line_bytes may be at most {ENGINE_MAX_REQUEST_BYTES} (the embedded engine's request limit) when a model uses `engine`"
        );
        for hook in &self.webhooks {
            anyhow::ensure!(
                hook.url.starts_with("http://") || hook.url.starts_with("https://"),
                "webhook for project {:?}: url must start with http:// or https://",
                hook.project
            );
            anyhow::ensure!(
                webhook_key(&hook.secret).is_some(),
                "webhook for project {:?}: secret must be whsec_ followed by base64",
                hook.project
            );
        }
        anyhow::ensure!(
            self.scheduler.max_loaded_models > 0,
            "scheduler.max_loaded_models must be at least 1"
        );
        anyhow::ensure!(
            self.execution.max_attempts > 0,
            "execution.max_attempts must be at least 1"
        );
        anyhow::ensure!(
            self.limits.max_active_batches_per_project > 0,
            "limits.max_active_batches_per_project must be at least 1"
        );
        anyhow::ensure!(
            self.limits.max_response_bytes > 0,
            "limits.max_response_bytes must be at least 1"
        );
        anyhow::ensure!(
            (1..=u64::from(u32::MAX)).contains(&self.limits.max_writer_queue_bytes),
            "limits.max_writer_queue_bytes must be between 1 and 4294967295"
        );
        anyhow::ensure!(
            (1..=i64::MAX as u64).contains(&self.limits.max_upload_parts),
            "limits.max_upload_parts must be at least 1"
        );
        self.check_server_limits()?;
        self.storage.s3_location()?;
        for window in &self.execution.allowed_completion_windows {
            anyhow::ensure!(
                window_seconds(window).is_some(),
                "execution.allowed_completion_windows: {window:?} is not a number followed by s, m, h or d"
            );
        }
        Ok(())
    }
}

impl Config {
    /// `devices` and `replicas` of a managed model.
    fn check_replicas(&self, model: &ModelConfig) -> anyhow::Result<()> {
        anyhow::ensure!(
            model.device.is_none() || model.devices.is_empty(),
            "model {:?}: give `device` or `devices`, not both",
            model.name
        );
        let distinct: std::collections::HashSet<_> = model.devices.iter().collect();
        anyhow::ensure!(
            distinct.len() == model.devices.len(),
            "model {:?}: a device is listed twice in `devices`",
            model.name
        );
        anyhow::ensure!(
            model.replicas != Some(0),
            "model {:?}: replicas must be at least 1",
            model.name
        );
        let places = model.devices.len().max(usize::from(model.device.is_some()));
        if let (Some(replicas), true) = (model.replicas, places > 0) {
            anyhow::ensure!(
                replicas <= places,
                "model {:?}: replicas = {replicas} but only {places} device(s) to run them on",
                model.name
            );
        }
        Ok(())
    }

    /// The listener's limits and the shutdown deadline: a zero would make
    /// every connection time out, or the server refuse all work.
    fn check_server_limits(&self) -> anyhow::Result<()> {
        let server = &self.server;
        for (name, value) in [
            ("server.header_read_timeout_secs", server.header_read_timeout_secs),
            ("server.idle_timeout_secs", server.idle_timeout_secs),
            ("server.request_body_timeout_secs", server.request_body_timeout_secs),
            ("server.max_connections", server.max_connections as u64),
            (
                "limits.max_concurrent_uploads",
                self.limits.max_concurrent_uploads as u64,
            ),
            (
                "execution.shutdown_deadline_secs",
                self.execution.shutdown_deadline_secs,
            ),
        ] {
            anyhow::ensure!(value > 0, "{name} must be at least 1");
        }
        anyhow::ensure!(
            server.tls_cert.is_some() == server.tls_key.is_some(),
            "server.tls_cert and server.tls_key go together: give both or neither"
        );
        anyhow::ensure!(
            self.execution.shutdown_deadline_secs >= self.execution.shutdown_grace_secs,
            "execution.shutdown_deadline_secs must be at least execution.shutdown_grace_secs"
        );
        Ok(())
    }
}

/// Seconds in a completion window such as "24h", "90m", "7d" or "30s".
pub fn window_seconds(window: &str) -> Option<i64> {
    let unit = match window.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let n: i64 = window[..window.len() - 1].parse().ok().filter(|n| *n > 0)?;
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_url_is_postgres_or_unset_and_its_password_never_shows() {
        let sqlite = Config::parse("").unwrap();
        assert_eq!(sqlite.store.postgres_url().unwrap(), None);
        let pg = Config::parse("[store]\nurl = \"postgres://batchd:s3cret@db:5432/batchd?password=s3cret\"\n").unwrap();
        assert!(pg.store.postgres_url().unwrap().is_some());
        let shown = format!("{:?}", pg.store);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("postgres://batchd:<redacted>@db:5432/batchd?password=<redacted>"),
            "{shown}"
        );
        assert!(Config::parse("[store]\nurl = \"postgresql:///batchd?host=/run/postgresql\"\n").is_ok());
        let mysql = Config::parse("[store]\nurl = \"mysql://u:s3cret@db/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(mysql.contains("postgres://") && !mysql.contains("s3cret"), "{mysql}");
        assert!(
            Config::parse("[store]\npath = \"x\"\n").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn example_config_parses() {
        let config = Config::parse(include_str!("../config.example.toml")).unwrap();
        assert_eq!(config.scheduler.max_loaded_models, 1);
        let managed = Config::parse(
            "[[models]]\nname = \"m\"\ncommand = \"serve --port {port}\"\nsleep_mode = true\ndevice = \"gpu0\"\n",
        )
        .unwrap();
        assert!(managed.models[0].is_managed());
        assert!(Config::parse("[[models]]\nname = \"m\"\ncommand = \"serve --port 8000\"\n").is_err());
        assert!(
            Config::parse("[[models]]\nname = \"m\"\ncommand = \"x {port}\"\nstop_signal = \"SIGNOPE\"\n").is_err()
        );
    }

    #[test]
    fn s3_storage_urls_name_a_bucket_and_a_prefix_and_secrets_stay_out_of_debug() {
        let config = Config::parse(
            "[storage]\nurl = \"s3://batchd-files/prod/eu/\"\nendpoint = \"http://127.0.0.1:9000\"\nsecret_access_key = \"hunter2\"\n",
        )
        .unwrap();
        assert_eq!(
            config.storage.s3_location().unwrap(),
            Some(("batchd-files".to_owned(), "prod/eu".to_owned()))
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(Config::default().storage.s3_location().unwrap(), None);
        assert!(Config::parse("[storage]\nurl = \"gs://bucket\"\n").is_err());
        assert!(Config::parse("[storage]\nurl = \"s3:///prefix\"\n").is_err());
    }

    #[test]
    fn fleets_and_replicas_parse_and_bad_ones_are_refused() {
        let fleet = Config::parse("[[models]]\nname='m'\nurls=['http://a/v1','http://b/v1']\n").unwrap();
        assert_eq!(fleet.models[0].backend_urls().len(), 2);
        let managed =
            Config::parse("[[models]]\nname='m'\ncommand='x {port}'\ndevices=['0','1','2']\nreplicas=2\n").unwrap();
        assert_eq!(managed.models[0].replica_devices().len(), 3);
        assert_eq!(managed.models[0].max_replicas(), 2);
        let cpu = Config::parse("[[models]]\nname='m'\ncommand='x {port}'\nreplicas=3\n").unwrap();
        assert_eq!(cpu.models[0].replica_devices(), vec![None, None, None]);
        for bad in [
            "urls=['http://a/v1']\nurl='http://b/v1'",
            "urls=['http://a/v1','http://a/v1/']",
            "urls=['ftp://a']",
            "urls=['http://a/v1']\nreplicas=2",
            "command='x {port}'\ndevices=['0','0']",
            "command='x {port}'\ndevices=['0']\nreplicas=2",
            "command='x {port}'\nreplicas=0",
            "command='x {port}'\ndevice='0'\ndevices=['1']",
            "urls=[]",
        ] {
            assert!(
                Config::parse(&format!("[[models]]\nname='m'\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn completion_windows_parse() {
        assert_eq!(window_seconds("24h"), Some(86_400));
        assert_eq!(window_seconds("7d"), Some(7 * 86_400));
        assert_eq!(window_seconds("90s"), Some(90));
        for bad in ["", "h", "0h", "-1h", "1w", "1.5h", "99999999999999999d"] {
            assert_eq!(window_seconds(bad), None, "{bad}");
        }
        assert!(Config::parse("[execution]\nallowed_completion_windows = [\"1w\"]").is_err());
    }

    #[test]
    fn empty_config_uses_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.server.listen.port(), 8080);
        assert_eq!(config.limits.max_batch_lines, 50_000);
        assert!(config.models.is_empty());
    }

    #[test]
    fn unknown_keys_and_duplicate_models_are_rejected() {
        assert!(Config::parse("[server]\nlisten_on = \"x\"").is_err());
        let dup = "[[models]]\nname='a'\nurl='http://x/v1'\n[[models]]\nname='a'\nurl='http://y/v1'";
        assert!(Config::parse(dup).is_err());
    }
}
