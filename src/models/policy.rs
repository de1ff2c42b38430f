//! The scheduling policy, as a pure function of the current state: which
//! waiting batch gets its model's dispatch turn, which model to load next,
//! which idle model to unload. `manager.rs` applies the decisions.
//!
//! - Batches of one model take turns, one dispatching at a time; the next
//!   batch's turn starts as soon as the previous one has dispatched its last
//!   line (or yielded), so the backend stays full across turn boundaries.
//! - Fairness between tenants: turns go round-robin across projects (the
//!   project whose last turn on the model is oldest goes next), FIFO within
//!   a project, urgent batches (near `expires_at`) first whatever their
//!   project. A turn is one batch, cut at `turn_quantum_secs` when a batch
//!   that would go first waits (another project's, or an urgent one): the
//!   holder yields and queues again, so one huge batch, or one project's
//!   fifty, cannot hold the model for hours while another project waits.
//! - A managed model is stopped only when no batch runs on it (never inside a
//!   batch). Work for a model that cannot be placed waits.
//! - Collation: while the loaded model has batches of its own, it keeps
//!   taking them, which saves swaps, until a batch of another model has
//!   waited `max_swap_delay` or comes within `urgency_margin` of its
//!   deadline (the starvation guard). Then the loaded model drains: it takes
//!   no new batches, finishes the ones it runs, and makes way.
//! - Replicas: a model may run on several devices at once (`devices`, up to
//!   `replicas`). A model with work grows into every free place it may use,
//!   and takes the places of models without work (their idle replicas are
//!   unloaded). Between two models with work, places are shared: one that
//!   holds two or more replicas more than another gives one up, and a model
//!   that has none takes one once its wait is pressing. A replica given up
//!   drains first: it takes no new lines, and is unloaded only once its last
//!   line in flight is done. A replica whose start failed is not started
//!   again for `RETRY_FAILED_REPLICA` while the model runs elsewhere.

use std::time::Duration;

use crate::config::SchedulerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    Unloaded,
    Starting,
    Loaded,
    /// vLLM sleep mode: the process lives, its weights are off the GPU.
    Sleeping,
    Stopping,
    /// The process died while loaded.
    Crashed,
}

impl Phase {
    /// Whether the model holds its device (GPU memory).
    pub fn occupies(self) -> bool {
        matches!(self, Phase::Starting | Phase::Loaded | Phase::Stopping)
    }
}

/// One place a managed model's server may run (a device, or a replica
/// without one).
#[derive(Debug, Clone)]
pub struct ReplicaView {
    pub phase: Phase,
    pub device: Option<String>,
    /// Lines in flight on it now.
    pub in_flight: usize,
    /// It is making way: no new lines; unloaded once `in_flight` is 0.
    pub draining: bool,
    /// Its last start failed a moment ago; not started again yet.
    pub cooling_down: bool,
}

impl ReplicaView {
    /// Serving lines: loaded and not draining.
    fn serving(&self) -> bool {
        self.phase == Phase::Loaded && !self.draining
    }
}

#[derive(Debug, Clone)]
pub struct ModelView {
    pub name: String,
    /// Started and stopped by batchd (`command` or `engine`); other models
    /// are always ready and take no slot.
    pub managed: bool,
    /// Its places, in configuration order (one for most models).
    pub replicas: Vec<ReplicaView>,
    /// How many of them may run at once.
    pub max_replicas: usize,
    /// Batches holding a lease (dispatching or with lines in flight).
    pub running: usize,
    /// A batch holds the dispatch turn.
    pub dispatching: bool,
    /// The batch holding the dispatch turn, when one does.
    pub turn: Option<TurnView>,
    /// Time since the model last had a batch running.
    pub idle_for: Duration,
}

/// The batch holding a model's dispatch turn.
#[derive(Debug, Clone)]
pub struct TurnView {
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// This turn's number (see `WaitView::project_last_turn`).
    pub seq: u64,
    pub held_for: Duration,
}

#[derive(Debug, Clone)]
pub struct WaitView {
    pub batch_id: String,
    pub model: String,
    pub project: String,
    /// The number of the latest turn the batch's project got on this model
    /// (turns are numbered from 1 in the order they are granted; 0: none
    /// yet). The smallest goes first: that is the round-robin.
    pub project_last_turn: u64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub waited: Duration,
}

impl ModelView {
    /// Whether any of its places holds a device (or the shared GPU).
    fn occupies(&self) -> bool {
        self.managed && self.replicas.iter().any(|r| r.phase.occupies())
    }

    fn occupying(&self) -> usize {
        self.replicas.iter().filter(|r| r.phase.occupies()).count()
    }

    /// Serving replicas (loaded, not draining).
    fn serving(&self) -> usize {
        self.replicas.iter().filter(|r| r.serving()).count()
    }

    /// Lines can be dispatched to it.
    fn ready(&self) -> bool {
        !self.managed || self.serving() > 0
    }

    /// No replica running, starting, stopping or crashed: it needs a first
    /// place before it can run anything.
    fn absent(&self) -> bool {
        self.managed
            && self
                .replicas
                .iter()
                .all(|r| matches!(r.phase, Phase::Unloaded | Phase::Sleeping))
    }
}

/// A model's place (its replica number).
pub type Place = usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Give this batch its model's dispatch turn.
    Grant(String),
    /// The batch holding this model's turn used its quantum and a batch that
    /// goes first waits: it should stop dispatching and queue again.
    Yield(String),
    /// Load the model's replica (start it, or wake it from sleep).
    Load(String, Place),
    /// Unload the model's replica (stop it, or put it to sleep).
    Unload(String, Place),
    /// Stop sending lines to the replica; it is unloaded once they are done.
    Drain(String, Place),
    /// A crashed replica of a model with work: restart it.
    Restart(String, Place),
    /// A crashed replica of a model without work: forget the dead process.
    Forget(String, Place),
}

fn is_urgent(expires_at: Option<i64>, now: i64, cfg: &SchedulerConfig) -> bool {
    expires_at.is_some_and(|at| at - now <= cfg.urgency_margin_secs as i64)
}

/// `(not urgent, deadline if urgent)`: urgent ones first, earliest deadline first.
fn urgency(expires_at: Option<i64>, now: i64, cfg: &SchedulerConfig) -> (bool, i64) {
    let urgent = is_urgent(expires_at, now, cfg);
    (!urgent, if urgent { expires_at.unwrap_or(i64::MAX) } else { 0 })
}

/// Across models (which model to load next, which must drain): urgent
/// first (earliest deadline), then oldest.
fn priority(w: &WaitView, now: i64, cfg: &SchedulerConfig) -> (bool, i64, i64) {
    let (not_urgent, deadline) = urgency(w.expires_at, now, cfg);
    (not_urgent, deadline, w.created_at)
}

/// Within one model (who gets its next turn): urgent first, then the
/// project whose last turn is oldest, then the oldest batch of that project.
fn fair_order(
    expires_at: Option<i64>,
    project_last_turn: u64,
    created_at: i64,
    now: i64,
    cfg: &SchedulerConfig,
) -> (bool, i64, u64, i64) {
    let (not_urgent, deadline) = urgency(expires_at, now, cfg);
    (not_urgent, deadline, project_last_turn, created_at)
}

fn fair_key(w: &WaitView, now: i64, cfg: &SchedulerConfig) -> (bool, i64, u64, i64) {
    fair_order(w.expires_at, w.project_last_turn, w.created_at, now, cfg)
}

/// Whether the turn holder should yield: it used its quantum, and a waiting
/// batch of its model would come before it if it queued again now (its
/// project's last turn being this one). Batches of its own project that are
/// younger never cut its turn, so a lone tenant's batches run whole.
fn should_yield(m: &ModelView, queue: &[&WaitView], now: i64, cfg: &SchedulerConfig) -> bool {
    let Some(turn) = &m.turn else { return false };
    if turn.held_for < Duration::from_secs(cfg.turn_quantum_secs) {
        return false;
    }
    let holder = fair_order(turn.expires_at, turn.seq, turn.created_at, now, cfg);
    queue
        .iter()
        .any(|w| w.model == m.name && fair_key(w, now, cfg) < holder)
}

fn pressing(w: &WaitView, now: i64, cfg: &SchedulerConfig) -> bool {
    is_urgent(w.expires_at, now, cfg) || w.waited >= Duration::from_secs(cfg.max_swap_delay_secs)
}

/// How long a replica whose start failed waits before it is started again,
/// while its model runs on other replicas (without that, every reconcile
/// tick would start it again).
pub const RETRY_FAILED_REPLICA: Duration = Duration::from_secs(30);

/// Which devices and how many model slots are taken, including what this
/// plan has already decided to load.
struct Occupancy<'a> {
    devices: Vec<&'a str>,
    models: Vec<&'a str>,
}

impl<'a> Occupancy<'a> {
    fn of(models: &'a [ModelView]) -> Self {
        let mut devices = vec![];
        let mut loaded = vec![];
        for m in models.iter().filter(|m| m.occupies()) {
            loaded.push(m.name.as_str());
            devices.extend(
                m.replicas
                    .iter()
                    .filter(|r| r.phase.occupies())
                    .filter_map(|r| r.device.as_deref()),
            );
        }
        Self {
            devices,
            models: loaded,
        }
    }

    /// Whether `m` may be loaded as far as `max_loaded_models` goes.
    fn model_slot_for(&self, m: &ModelView, cfg: &SchedulerConfig) -> bool {
        self.models.contains(&m.name.as_str()) || self.models.len() < cfg.max_loaded_models
    }

    /// `m`'s places that could start now: not running, not cooling down
    /// after a failed start, their device free.
    fn free_places(&self, m: &ModelView) -> Vec<Place> {
        m.replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.phase, Phase::Unloaded | Phase::Sleeping) && !r.cooling_down)
            .filter(|(_, r)| r.device.as_deref().is_none_or(|d| !self.devices.contains(&d)))
            .map(|(i, _)| i)
            .collect()
    }

    fn claim(&mut self, m: &'a ModelView, place: Place) {
        if !self.models.contains(&m.name.as_str()) {
            self.models.push(&m.name);
        }
        if let Some(device) = m.replicas[place].device.as_deref() {
            self.devices.push(device);
        }
    }
}

/// The other models' replicas that sit on `m`'s devices: `(model, place)`.
fn holders_of<'a>(m: &ModelView, models: &'a [ModelView]) -> Vec<(&'a ModelView, Place)> {
    let mine: Vec<&str> = m.replicas.iter().filter_map(|r| r.device.as_deref()).collect();
    let mut out = vec![];
    for other in models.iter().filter(|o| o.managed && o.name != m.name) {
        for (i, r) in other.replicas.iter().enumerate() {
            if r.phase.occupies() && r.device.as_deref().is_some_and(|d| mine.contains(&d)) {
                out.push((other, i));
            }
        }
    }
    out
}

/// The least busy loaded model: the one to unload when the count of loaded
/// models (not a device) is what stands in the way.
fn least_busy<'a>(m: &ModelView, models: &'a [ModelView]) -> Option<&'a ModelView> {
    models
        .iter()
        .filter(|o| o.occupies() && o.name != m.name)
        .min_by_key(|o| (o.running, std::cmp::Reverse(o.idle_for)))
}

pub fn plan(models: &[ModelView], waiting: &[WaitView], now: i64, cfg: &SchedulerConfig) -> Vec<Action> {
    let mut actions = vec![];
    let mut queue: Vec<&WaitView> = waiting.iter().collect();
    queue.sort_by_key(|w| priority(w, now, cfg));
    let model = |name: &str| models.iter().find(|m| m.name == name);
    let queued = |name: &str| queue.iter().any(|w| w.model == name);
    let has_work = |m: &ModelView| m.running > 0 || queued(&m.name);

    // Crashed replicas: restart when the model has work, otherwise forget them.
    for m in models {
        for (i, _) in m.replicas.iter().enumerate().filter(|(_, r)| r.phase == Phase::Crashed) {
            actions.push(if has_work(m) {
                Action::Restart(m.name.clone(), i)
            } else {
                Action::Forget(m.name.clone(), i)
            });
        }
    }

    let mut occupancy = Occupancy::of(models);
    let placeable =
        |m: &ModelView, occupancy: &Occupancy| occupancy.model_slot_for(m, cfg) && !occupancy.free_places(m).is_empty();

    // The first model in the queue that has no replica at all: if its wait
    // is pressing and it cannot be placed, what stands in its way makes room.
    // A model with one replica in the way drains (takes no new batches); one
    // with several gives up the replica on the waiting model's device.
    let mut draining: Vec<String> = vec![];
    let mut next_load: Option<&ModelView> = None;
    for (position, w) in queue.iter().enumerate() {
        let Some(m) = model(&w.model).filter(|m| m.absent()) else {
            continue;
        };
        next_load = Some(m);
        if !placeable(m, &occupancy) && pressing(w, now, cfg) {
            // A blocker that has a batch queued ahead of this one runs it
            // first (FIFO needs no swap for that); it makes room only once
            // this batch is the oldest thing it stands in front of.
            let ahead = |b: &ModelView| queue[..position].iter().any(|q| q.model == b.name);
            if !occupancy.model_slot_for(m, cfg) {
                draining.extend(least_busy(m, models).filter(|b| !ahead(b)).map(|b| b.name.clone()));
            } else {
                let holders = holders_of(m, models);
                if let Some((b, place)) = holders
                    .iter()
                    .filter(|(b, _)| !ahead(b) && has_work(b))
                    .max_by_key(|(b, _)| b.serving())
                {
                    if b.serving() >= 2 {
                        if !b.replicas.iter().any(|r| r.draining) && b.replicas[*place].serving() {
                            actions.push(Action::Drain(b.name.clone(), *place));
                        }
                    } else {
                        draining.push(b.name.clone());
                    }
                }
            }
        }
        break;
    }

    // Dispatch turns: for every ready model that is not draining and has no
    // batch dispatching, its waiting batch that comes first in fair order.
    let mut granted: Vec<&str> = vec![];
    for w in &queue {
        let Some(m) = model(&w.model) else { continue };
        if m.ready() && !m.dispatching && !draining.contains(&m.name) && !granted.contains(&m.name.as_str()) {
            granted.push(&m.name);
            let next = queue
                .iter()
                .filter(|o| o.model == m.name)
                .min_by_key(|o| fair_key(o, now, cfg))
                .unwrap_or(w);
            actions.push(Action::Grant(next.batch_id.clone()));
        }
    }

    // Time slices: a turn held past its quantum yields to a batch that goes first.
    for m in models {
        if should_yield(m, &queue, now, cfg) {
            actions.push(Action::Yield(m.name.clone()));
        }
    }

    // A model with no work (or draining for another) whose replicas are all
    // loaded and idle can make way at once.
    let is_idle = |b: &ModelView| {
        b.running == 0
            && b.replicas
                .iter()
                .all(|r| !r.phase.occupies() || r.phase == Phase::Loaded)
            && !granted.contains(&b.name.as_str())
            && (draining.contains(&b.name) || !queued(&b.name))
    };

    // Loading the next model: into its free places, or unload idle models
    // in its way first.
    if let Some(m) = next_load {
        if placeable(m, &occupancy) {
            for place in occupancy.free_places(m).into_iter().take(m.max_replicas) {
                actions.push(Action::Load(m.name.clone(), place));
                occupancy.claim(m, place);
            }
        } else if !occupancy.model_slot_for(m, cfg) {
            if let Some(b) = least_busy(m, models).filter(|b| is_idle(b)) {
                for (i, _) in b.replicas.iter().enumerate().filter(|(_, r)| r.phase == Phase::Loaded) {
                    actions.push(Action::Unload(b.name.clone(), i));
                }
            }
        } else {
            for (b, place) in holders_of(m, models)
                .into_iter()
                .filter(|(b, place)| is_idle(b) && b.replicas[*place].phase == Phase::Loaded)
                .take(m.max_replicas)
            {
                actions.push(Action::Unload(b.name.clone(), place));
            }
        }
    }

    // Models running with work grow into free places, take the places of
    // idle models, and share places with other busy models. The one with
    // the fewest replicas goes first: a place another model gave up is for
    // the model it was given up for, not the one that just drained it.
    let mut growing: Vec<&ModelView> = models
        .iter()
        .filter(|m| m.occupies() && has_work(m) && !draining.contains(&m.name))
        .collect();
    growing.sort_by_key(|m| (m.occupying(), m.name.as_str()));
    for m in growing {
        let mut want = m.max_replicas.saturating_sub(m.occupying());
        for place in occupancy.free_places(m).into_iter().take(want) {
            actions.push(Action::Load(m.name.clone(), place));
            occupancy.claim(m, place);
            want -= 1;
        }
        if want == 0 {
            continue;
        }
        let holders = holders_of(m, models);
        for (b, place) in holders
            .iter()
            .filter(|(b, place)| is_idle(b) && b.replicas[*place].phase == Phase::Loaded)
            .take(want)
        {
            actions.push(Action::Unload(b.name.clone(), *place));
        }
        // Two or more replicas more than this model: the other gives one up.
        if let Some((b, place)) = holders.iter().find(|(b, place)| {
            has_work(b)
                && b.serving() >= m.occupying() + 2
                && b.replicas[*place].serving()
                && !b.replicas.iter().any(|r| r.draining)
        }) {
            actions.push(Action::Drain(b.name.clone(), *place));
        }
    }

    // A drained replica with nothing left in flight is unloaded.
    for m in models {
        for (i, r) in m.replicas.iter().enumerate() {
            if r.draining && r.phase == Phase::Loaded && r.in_flight == 0 {
                actions.push(Action::Unload(m.name.clone(), i));
            }
        }
    }

    // Idle models unload after `idle_unload_secs`.
    if cfg.idle_unload_secs > 0 {
        for m in models {
            if m.managed
                && m.running == 0
                && m.idle_for >= Duration::from_secs(cfg.idle_unload_secs)
                && !queued(&m.name)
            {
                for (i, r) in m.replicas.iter().enumerate() {
                    if r.phase == Phase::Loaded {
                        actions.push(Action::Unload(m.name.clone(), i));
                    }
                }
            }
        }
    }
    let mut seen = vec![];
    actions.retain(|a| {
        let new = !seen.contains(a);
        if new {
            seen.push(a.clone());
        }
        new
    });
    actions
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
