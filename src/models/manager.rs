//! The model manager: owns the managed model servers and the queue of batches
//! waiting for their model's dispatch turn. One reconcile loop asks
//! `policy::plan` what to do and does it; starts, stops and wakes run as
//! their own tasks, so a 5-minute model load never blocks a grant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::policy::{Action, ModelView, Phase, TurnView, WaitView, plan};
use super::process::{LaunchSpec, ServerProcess};
use crate::backends::ModelRegistry;
use crate::config::{ModelConfig, SchedulerConfig};

/// How long `recover` waits for a model server whose connections broke to
/// show that it exited.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// What a batch says about itself when it asks for a turn.
pub struct TurnRequest {
    pub batch_id: String,
    /// Turns rotate across projects (round-robin), FIFO within one.
    pub project_id: String,
    pub model: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// A model's state as `/v1/models` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelStatus {
    /// `external` (a fixed `url`), `unloaded`, `loading`, `loaded` (batches
    /// running), `idle` (loaded, nothing running), `unloading`, `sleeping`.
    pub state: &'static str,
    /// Batches running on it now.
    pub running_batches: usize,
    /// Times it was loaded (started or woken) since batchd started.
    pub loads: u64,
    /// Why its last start failed, if it did. Every tenant sees it (and failed
    /// batches copy it), so it is a general reason, never the server's output
    /// (`ServerProcess::start` logs that for the operator).
    pub last_error: Option<String>,
    /// The model server's process id while it runs.
    pub pid: Option<u32>,
}

#[derive(Clone)]
pub struct ModelManager {
    inner: Arc<Inner>,
}

struct Spec {
    launch: Option<LaunchSpec>,
    device: Option<String>,
    sleep_mode: bool,
}

struct Inner {
    cfg: SchedulerConfig,
    specs: HashMap<String, Spec>,
    registry: ModelRegistry,
    http: reqwest::Client,
    state: Mutex<State>,
    /// Wakes the reconcile loop (keeps one permit, so no wake-up is lost).
    wake_loop: Notify,
    /// Wakes everyone waiting for a model's state to change.
    changed: Notify,
    stop: CancellationToken,
    /// Per managed model: lines in flight hold it shared; a line that was in
    /// flight when the server crashed is sent again holding it exclusively.
    line_gates: HashMap<String, Arc<tokio::sync::RwLock<()>>>,
}

#[derive(Default)]
struct State {
    models: HashMap<String, Slot>,
    waiting: Vec<Waiter>,
    /// Numbers the turns granted, on all models (see `Slot::last_turn_of`).
    turns_granted: u64,
}

struct Slot {
    phase: Phase,
    process: Option<ServerProcess>,
    running: usize,
    dispatching: bool,
    /// The batch holding the dispatch turn (set with `dispatching`).
    turn: Option<Turn>,
    /// Per project, the number of its latest turn on this model: the
    /// round-robin's memory. One entry per project that ever used the model.
    last_turn_of: HashMap<String, u64>,
    idle_since: Instant,
    /// Bumped at every successful load; tells a restart from the old process.
    generation: u64,
    /// Crash restarts while busy; reset when the model goes idle.
    restarts: u32,
    /// Failed starts so far, and the last one's reason.
    failures: u64,
    last_error: Option<String>,
    loads: u64,
}

struct Turn {
    created_at: i64,
    expires_at: Option<i64>,
    seq: u64,
    since: Instant,
    /// The policy asked the holder to yield (its quantum is over and a batch
    /// that goes first waits).
    yield_requested: bool,
}

struct Waiter {
    request: TurnRequest,
    since: Instant,
    reply: oneshot::Sender<Result<Lease, String>>,
}

/// A batch's right to use its model. While any lease on a model lives, the
/// model is not stopped. The dispatch turn (one batch per model at a time)
/// ends with `end_turn`, or when the lease is dropped.
pub struct Lease {
    inner: Arc<Inner>,
    model: String,
    has_turn: bool,
    failures_at_grant: u64,
}

impl ModelManager {
    pub fn new(
        models: &[ModelConfig],
        cfg: SchedulerConfig,
        registry: ModelRegistry,
        engine_exe: &std::path::Path,
        log_dir: &std::path::Path,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let mut specs = HashMap::new();
        let mut slots = HashMap::new();
        for m in models {
            specs.insert(
                m.name.clone(),
                Spec {
                    launch: super::launch::launch_spec(m, engine_exe, log_dir),
                    device: m.device.clone(),
                    sleep_mode: m.sleep_mode,
                },
            );
            slots.insert(
                m.name.clone(),
                Slot {
                    phase: if m.is_managed() { Phase::Unloaded } else { Phase::Loaded },
                    process: None,
                    running: 0,
                    dispatching: false,
                    turn: None,
                    last_turn_of: HashMap::new(),
                    idle_since: Instant::now(),
                    generation: 0,
                    restarts: 0,
                    failures: 0,
                    last_error: None,
                    loads: 0,
                },
            );
        }
        let inner = Arc::new(Inner {
            cfg,
            specs,
            registry,
            http: crate::http_client::builder()
                .build()
                .expect("a client with batchd's TLS settings builds"),
            state: Mutex::new(State {
                models: slots,
                waiting: vec![],
                turns_granted: 0,
            }),
            wake_loop: Notify::new(),
            changed: Notify::new(),
            stop: CancellationToken::new(),
            line_gates: models
                .iter()
                .filter(|m| m.is_managed())
                .map(|m| (m.name.clone(), Arc::default()))
                .collect(),
        });
        // The handle goes to the server's task owner, which stops the server
        // if the loop ever ends while it runs.
        let reconcile = tokio::spawn(reconcile_loop(inner.clone()));
        (Self { inner }, reconcile)
    }

    /// Waits for the batch's turn on its model: the model is loaded (started
    /// if needed) and no older batch of it is still dispatching. Fails with
    /// the reason if the model cannot be started.
    pub async fn turn(&self, request: TurnRequest) -> Result<Lease, String> {
        let (reply, answer) = oneshot::channel();
        self.inner.lock().waiting.push(Waiter {
            request,
            since: Instant::now(),
            reply,
        });
        self.inner.bump();
        answer.await.unwrap_or_else(|_| Err("batchd is shutting down".into()))
    }

    /// The model's current process generation (see `recover`).
    pub fn generation(&self, model: &str) -> u64 {
        self.inner.lock().models.get(model).map_or(0, |s| s.generation)
    }

    /// Called when a request to `model` got no answer at all. If the model's
    /// server died, waits for the restart and returns `Ok` (send again);
    /// `Err` if the server is alive (the failure is the request's own), not
    /// managed, or could not be brought back.
    pub async fn recover(&self, model: &str, generation_seen: u64) -> Result<(), String> {
        let managed = self.inner.specs.get(model).is_some_and(|s| s.launch.is_some());
        if !managed {
            return Err("not a managed model".into());
        }
        let failures_before = self.inner.lock().models[model].failures;
        // A server that just died may not have been reaped yet when its
        // connections break: it gets a moment to show its exit.
        let mut exit_grace_used = false;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let exit_to_await = {
                let mut state = self.inner.lock();
                let slot = state.models.get_mut(model).expect("known model");
                if slot.failures > failures_before {
                    return Err(slot.last_error.clone().unwrap_or_default());
                }
                match slot.phase {
                    Phase::Loaded if slot.generation > generation_seen => return Ok(()),
                    Phase::Loaded if slot.process.as_ref().is_some_and(ServerProcess::is_running) => {
                        match slot.process.as_ref() {
                            Some(process) if !exit_grace_used => Some(process.exit_watch()),
                            _ => return Err("the model server is running".into()),
                        }
                    }
                    Phase::Loaded => {
                        tracing::warn!(model, "model server died with work in flight; restarting it");
                        slot.phase = Phase::Crashed;
                        drop(state);
                        self.inner.bump();
                        None
                    }
                    // With batches holding leases, a model is unloaded only
                    // by a failed start (perhaps before this line's send
                    // ended): waiting would never end.
                    Phase::Unloaded | Phase::Sleeping => {
                        return Err(slot
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "the model is not loaded".into()));
                    }
                    _ => None,
                }
            };
            if let Some(mut exited) = exit_to_await {
                exit_grace_used = true;
                let _ = tokio::time::timeout(EXIT_GRACE, exited.wait_for(Option::is_some)).await;
                continue;
            }
            tokio::select! {
                _ = changed => {},
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                _ = self.inner.stop.cancelled() => return Err("batchd is shutting down".into()),
            }
        }
    }

    /// The gate a line of a managed `model` passes while in flight (shared),
    /// or alone (exclusive) after it was in flight when the server crashed:
    /// if the server then dies again, the line is the cause. `None` for a
    /// model batchd does not run.
    pub fn line_gate(&self, model: &str) -> Option<Arc<tokio::sync::RwLock<()>>> {
        self.inner.line_gates.get(model).cloned()
    }

    /// Waits until `model`'s server is up (loaded, its process running) and
    /// returns its generation; `None` if it failed or batchd is stopping. A
    /// line sent alone to find out whether it crashes the server must not be
    /// blamed for a server that was still down when it was sent.
    pub async fn until_up(&self, model: &str) -> Option<u64> {
        let failures_before = self.inner.lock().models.get(model)?.failures;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = self.inner.lock();
                let slot = state.models.get(model)?;
                if slot.failures > failures_before {
                    return None;
                }
                match slot.phase {
                    Phase::Loaded if slot.process.as_ref().is_some_and(ServerProcess::is_running) => {
                        return Some(slot.generation);
                    }
                    Phase::Unloaded | Phase::Sleeping => return None,
                    _ => {}
                }
            }
            tokio::select! {
                _ = changed => {},
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                _ = self.inner.stop.cancelled() => return None,
            }
        }
    }

    /// The last `crashes` restarts of `model` were caused by one line (which
    /// is now failed and never sent again): they do not count towards
    /// `max_restarts`, so a tenant's poison lines cannot use them up and fail
    /// every batch on the model.
    pub fn forgive_crashes(&self, model: &str, crashes: u32) {
        if let Some(slot) = self.inner.lock().models.get_mut(model) {
            slot.restarts = slot.restarts.saturating_sub(crashes);
        }
    }

    /// Batches waiting for a turn on `model`.
    pub fn waiting(&self, model: &str) -> usize {
        self.inner
            .lock()
            .waiting
            .iter()
            .filter(|w| w.request.model == model)
            .count()
    }

    pub fn status(&self, model: &str) -> Option<ModelStatus> {
        let managed = self.inner.specs.get(model)?.launch.is_some();
        let state = self.inner.lock();
        let slot = state.models.get(model)?;
        let label = match slot.phase {
            _ if !managed => "external",
            Phase::Unloaded | Phase::Crashed => "unloaded",
            Phase::Starting => "loading",
            Phase::Loaded if slot.running > 0 => "loaded",
            Phase::Loaded => "idle",
            Phase::Stopping => "unloading",
            Phase::Sleeping => "sleeping",
        };
        Some(ModelStatus {
            state: label,
            running_batches: slot.running,
            loads: slot.loads,
            last_error: slot.last_error.clone(),
            pid: slot.process.as_ref().filter(|p| p.is_running()).map(ServerProcess::pid),
        })
    }

    /// Stops every model server (after the batch workers have stopped).
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        let processes: Vec<ServerProcess> = {
            let mut state = self.inner.lock();
            state.waiting.clear();
            state.models.values_mut().filter_map(|s| s.process.take()).collect()
        };
        futures::future::join_all(processes.into_iter().map(ServerProcess::stop)).await;
    }
}

impl Lease {
    /// The batch has dispatched its last line: the next batch of the model
    /// may start dispatching while this one's lines finish.
    pub fn end_turn(&mut self) {
        if std::mem::take(&mut self.has_turn) {
            if let Some(slot) = self.inner.lock().models.get_mut(&self.model) {
                slot.dispatching = false;
                slot.turn = None;
            }
            self.inner.bump();
        }
    }

    /// Whether the batch should stop dispatching now and queue for a new
    /// turn: its time slice is over and a batch that goes first waits
    /// (another project's, or an urgent one).
    pub fn should_yield(&self) -> bool {
        self.has_turn
            && self
                .inner
                .lock()
                .models
                .get(&self.model)
                .and_then(|slot| slot.turn.as_ref())
                .is_some_and(|turn| turn.yield_requested)
    }

    /// Set if the model failed (could not be restarted) since this lease began.
    pub fn failure(&self) -> Option<String> {
        let state = self.inner.lock();
        let slot = state.models.get(&self.model)?;
        (slot.failures > self.failures_at_grant).then(|| slot.last_error.clone().unwrap_or_default())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut state = self.inner.lock();
            if let Some(slot) = state.models.get_mut(&self.model) {
                if self.has_turn {
                    slot.dispatching = false;
                    slot.turn = None;
                }
                slot.running -= 1;
                if slot.running == 0 {
                    slot.idle_since = Instant::now();
                    slot.restarts = 0;
                }
            }
        }
        self.inner.bump();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("model manager lock")
    }

    fn bump(&self) {
        self.wake_loop.notify_one();
        self.changed.notify_waiters();
    }
}

async fn reconcile_loop(inner: Arc<Inner>) {
    loop {
        let actions = {
            let mut state = inner.lock();
            state.waiting.retain(|w| !w.reply.is_closed());
            let now = Instant::now();
            let models: Vec<ModelView> = state
                .models
                .iter()
                .map(|(name, slot)| {
                    let spec = &inner.specs[name];
                    ModelView {
                        name: name.clone(),
                        managed: spec.launch.is_some(),
                        phase: slot.phase,
                        device: spec.device.clone(),
                        running: slot.running,
                        dispatching: slot.dispatching,
                        turn: slot.turn.as_ref().map(|t| TurnView {
                            created_at: t.created_at,
                            expires_at: t.expires_at,
                            seq: t.seq,
                            held_for: now - t.since,
                        }),
                        idle_for: if slot.running > 0 {
                            Duration::ZERO
                        } else {
                            now - slot.idle_since
                        },
                    }
                })
                .collect();
            let waiting: Vec<WaitView> = state
                .waiting
                .iter()
                .map(|w| WaitView {
                    batch_id: w.request.batch_id.clone(),
                    model: w.request.model.clone(),
                    project: w.request.project_id.clone(),
                    project_last_turn: state
                        .models
                        .get(&w.request.model)
                        .and_then(|slot| slot.last_turn_of.get(&w.request.project_id))
                        .copied()
                        .unwrap_or(0),
                    created_at: w.request.created_at,
                    expires_at: w.request.expires_at,
                    waited: now - w.since,
                })
                .collect();
            plan(&models, &waiting, crate::ids::now(), &inner.cfg)
        };
        for action in actions {
            apply(&inner, action);
        }
        tokio::select! {
            _ = inner.wake_loop.notified() => {},
            _ = tokio::time::sleep(Duration::from_millis(500)) => {},
            _ = inner.stop.cancelled() => return,
        }
    }
}

fn apply(inner: &Arc<Inner>, action: Action) {
    match action {
        Action::Grant(batch_id) => {
            let mut state = inner.lock();
            let Some(i) = state.waiting.iter().position(|w| w.request.batch_id == batch_id) else {
                return;
            };
            let waiter = state.waiting.remove(i);
            state.turns_granted += 1;
            let seq = state.turns_granted;
            let slot = state.models.get_mut(&waiter.request.model).expect("known model");
            slot.running += 1;
            slot.dispatching = true;
            slot.turn = Some(Turn {
                created_at: waiter.request.created_at,
                expires_at: waiter.request.expires_at,
                seq,
                since: Instant::now(),
                yield_requested: false,
            });
            slot.last_turn_of.insert(waiter.request.project_id.clone(), seq);
            let lease = Lease {
                inner: inner.clone(),
                model: waiter.request.model.clone(),
                has_turn: true,
                failures_at_grant: slot.failures,
            };
            drop(state);
            // A batch that stopped waiting drops the lease here, which releases it.
            let _ = waiter.reply.send(Ok(lease));
        }
        Action::Yield(model) => {
            let mut state = inner.lock();
            if let Some(turn) = state.models.get_mut(&model).and_then(|slot| slot.turn.as_mut())
                && !std::mem::replace(&mut turn.yield_requested, true)
            {
                tracing::debug!(
                    model,
                    "turn quantum over and another batch goes first; asking the holder to yield"
                );
            }
        }
        Action::Load(model) => {
            let mut state = inner.lock();
            let slot = state.models.get_mut(&model).expect("known model");
            let sleeping = slot.phase == Phase::Sleeping;
            slot.phase = Phase::Starting;
            let process = slot.process.take();
            drop(state);
            let inner = inner.clone();
            tokio::spawn(async move {
                match (sleeping, process) {
                    (true, Some(process)) => wake(&inner, &model, process).await,
                    (_, process) => {
                        if let Some(old) = process {
                            old.stop().await;
                        }
                        start(&inner, &model).await
                    }
                }
            });
        }
        Action::Restart(model) => {
            let mut state = inner.lock();
            let slot = state.models.get_mut(&model).expect("known model");
            if slot.restarts >= inner.cfg.max_restarts {
                let message = format!("the model server crashed {} times in a row", slot.restarts + 1);
                fail(inner, &mut state, &model, message);
                return;
            }
            slot.restarts += 1;
            slot.phase = Phase::Starting;
            let dead = slot.process.take();
            drop(state);
            let inner = inner.clone();
            tokio::spawn(async move {
                if let Some(dead) = dead {
                    dead.stop().await;
                }
                start(&inner, &model).await
            });
        }
        Action::Forget(model) => {
            let mut state = inner.lock();
            let slot = state.models.get_mut(&model).expect("known model");
            slot.phase = Phase::Unloaded;
            let dead = slot.process.take();
            drop(state);
            tracing::warn!(model, "idle model server exited");
            if let Some(dead) = dead {
                tokio::spawn(dead.stop());
            }
        }
        Action::Unload(model) => {
            let mut state = inner.lock();
            let slot = state.models.get_mut(&model).expect("known model");
            if slot.running != 0 {
                // The policy never asks for this. Refusing beats a panic here,
                // which would poison the state mutex and break every lease.
                tracing::error!(
                    model,
                    running = slot.running,
                    "not unloading a model with batches running on it"
                );
                return;
            }
            slot.phase = Phase::Stopping;
            let process = slot.process.take();
            drop(state);
            let inner = inner.clone();
            tokio::spawn(async move { unload(&inner, &model, process).await });
        }
    }
}

async fn start(inner: &Arc<Inner>, model: &str) {
    let spec = inner.specs[model].launch.as_ref().expect("managed model");
    tracing::info!(model, "starting model server");
    let started = Instant::now();
    let outcome = tokio::select! {
        outcome = ServerProcess::start(spec, &inner.http) => outcome,
        _ = inner.stop.cancelled() => Err("batchd is shutting down".into()),
    };
    match outcome {
        Ok(process) => {
            tracing::info!(model, secs = started.elapsed().as_secs_f64(), url = %process.root_url, "model server ready");
            loaded(inner, model, process);
        }
        Err(message) => {
            tracing::error!(model, error = %message, "model server failed to start");
            let mut state = inner.lock();
            fail(inner, &mut state, model, message);
        }
    }
}

async fn wake(inner: &Arc<Inner>, model: &str, process: ServerProcess) {
    match process.wake(&inner.http).await {
        Ok(()) => loaded(inner, model, process),
        Err(message) => {
            tracing::warn!(model, error = %message, "waking from sleep failed; restarting");
            process.stop().await;
            start(inner, model).await;
        }
    }
}

async fn unload(inner: &Arc<Inner>, model: &str, process: Option<ServerProcess>) {
    let Some(process) = process else {
        set_phase(inner, model, Phase::Unloaded, None);
        return;
    };
    if inner.specs[model].sleep_mode {
        match process.sleep(&inner.http).await {
            Ok(()) => {
                tracing::info!(model, "model server put to sleep");
                set_phase(inner, model, Phase::Sleeping, Some(process));
                return;
            }
            Err(message) => tracing::warn!(model, error = %message, "sleep failed; stopping instead"),
        }
    }
    process.stop().await;
    tracing::info!(model, "model server stopped");
    set_phase(inner, model, Phase::Unloaded, None);
}

fn set_phase(inner: &Arc<Inner>, model: &str, phase: Phase, process: Option<ServerProcess>) {
    {
        let mut state = inner.lock();
        let slot = state.models.get_mut(model).expect("known model");
        slot.phase = phase;
        slot.process = process;
    }
    inner.bump();
}

/// The model is up: point its backend at the process and watch for a crash.
fn loaded(inner: &Arc<Inner>, model: &str, process: ServerProcess) {
    if let Some(backend) = inner.registry.get(model) {
        backend.set_base_url(&format!("{}/v1", process.root_url));
    }
    let mut exited = process.exit_watch();
    let generation = {
        let mut state = inner.lock();
        let slot = state.models.get_mut(model).expect("known model");
        slot.generation += 1;
        slot.loads += 1;
        slot.phase = Phase::Loaded;
        slot.process = Some(process);
        slot.last_error = None;
        slot.idle_since = Instant::now();
        slot.generation
    };
    inner.bump();
    let (inner, model) = (inner.clone(), model.to_owned());
    tokio::spawn(async move {
        if exited.wait_for(Option::is_some).await.is_err() {
            return;
        }
        let mut state = inner.lock();
        let slot = state.models.get_mut(&model).expect("known model");
        if slot.generation == generation && slot.phase == Phase::Loaded {
            tracing::warn!(model, "model server exited unexpectedly");
            slot.phase = Phase::Crashed;
            drop(state);
            inner.bump();
        }
    });
}

/// A start failed (or crashes ran out): the model is unloaded, and every
/// batch waiting for it is told why.
fn fail(inner: &Arc<Inner>, state: &mut MutexGuard<'_, State>, model: &str, message: String) {
    let slot = state.models.get_mut(model).expect("known model");
    slot.phase = Phase::Unloaded;
    slot.failures += 1;
    slot.last_error = Some(message.clone());
    let dead = slot.process.take();
    let (failed, kept): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut state.waiting)
        .into_iter()
        .partition(|w| w.request.model == model);
    state.waiting = kept;
    for waiter in failed {
        let _ = waiter.reply.send(Err(message.clone()));
    }
    if let Some(dead) = dead {
        tokio::spawn(dead.stop());
    }
    inner.bump();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unload_while_batches_run_is_refused_and_leaves_the_state_usable() {
        let models = vec![ModelConfig::command("m", "serve --port {port}")];
        let registry = ModelRegistry::new(&models, &Default::default()).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let (manager, reconcile) = ModelManager::new(
            &models,
            SchedulerConfig::default(),
            registry,
            std::path::Path::new("batchd"),
            logs.path(),
        );
        reconcile.abort();
        manager.inner.lock().models.get_mut("m").unwrap().running = 1;
        apply(&manager.inner, Action::Unload("m".into()));
        // Before: an assert fired under the state mutex and poisoned it.
        let status = manager.status("m").expect("state still readable");
        assert_eq!(status.running_batches, 1);
        assert_eq!(status.state, "unloaded");
    }
}
