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

use std::time::Duration;

use crate::config::SchedulerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
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

#[derive(Debug, Clone)]
pub struct ModelView {
    pub name: String,
    /// Started and stopped by batchd (`command` or `engine`); other models
    /// are always ready and take no slot.
    pub managed: bool,
    pub phase: Phase,
    pub device: Option<String>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Give this batch its model's dispatch turn.
    Grant(String),
    /// The batch holding this model's turn used its quantum and a batch that
    /// goes first waits: it should stop dispatching and queue again.
    Yield(String),
    /// Load the model (start it, or wake it from sleep).
    Load(String),
    /// Unload the model (stop it, or put it to sleep).
    Unload(String),
    /// A crashed model with work: restart it.
    Restart(String),
    /// A crashed model without work: forget the dead process.
    Forget(String),
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

/// Whether `m` could be loaded next to the `occupied` models.
fn fits(m: &ModelView, occupied: &[&ModelView], cfg: &SchedulerConfig) -> bool {
    occupied.len() < cfg.max_loaded_models && !occupied.iter().any(|o| o.device.is_some() && o.device == m.device)
}

/// The occupying models that stand in `m`'s way: those on its device, or if
/// the count is the problem, the least busy one.
fn blockers<'a>(m: &ModelView, occupied: &[&'a ModelView], cfg: &SchedulerConfig) -> Vec<&'a ModelView> {
    let mut out: Vec<&ModelView> = occupied
        .iter()
        .copied()
        .filter(|o| o.device.is_some() && o.device == m.device)
        .collect();
    if occupied.len() - out.len() >= cfg.max_loaded_models {
        let mut others: Vec<&ModelView> = occupied
            .iter()
            .copied()
            .filter(|o| !out.iter().any(|b| b.name == o.name))
            .collect();
        others.sort_by_key(|o| (o.running, std::cmp::Reverse(o.idle_for)));
        out.extend(others.first().copied());
    }
    out
}

pub fn plan(models: &[ModelView], waiting: &[WaitView], now: i64, cfg: &SchedulerConfig) -> Vec<Action> {
    let mut actions = vec![];
    let mut queue: Vec<&WaitView> = waiting.iter().collect();
    queue.sort_by_key(|w| priority(w, now, cfg));
    let model = |name: &str| models.iter().find(|m| m.name == name);
    let occupied: Vec<&ModelView> = models.iter().filter(|m| m.managed && m.phase.occupies()).collect();

    // Crashed models: restart when they have work, otherwise forget them.
    for m in models.iter().filter(|m| m.phase == Phase::Crashed) {
        let has_work = m.running > 0 || queue.iter().any(|w| w.model == m.name);
        actions.push(if has_work {
            Action::Restart(m.name.clone())
        } else {
            Action::Forget(m.name.clone())
        });
    }

    // The first managed model that waits for a slot it cannot get: if its
    // wait is pressing, the models in its way drain.
    let mut draining: Vec<String> = vec![];
    let mut next_load: Option<&ModelView> = None;
    for (position, w) in queue.iter().enumerate() {
        let Some(m) = model(&w.model) else { continue };
        if !m.managed
            || matches!(
                m.phase,
                Phase::Loaded | Phase::Starting | Phase::Crashed | Phase::Stopping
            )
        {
            continue;
        }
        if next_load.is_some_and(|n| n.name == m.name) {
            continue;
        }
        if next_load.is_none() {
            next_load = Some(m);
            if !fits(m, &occupied, cfg) && pressing(w, now, cfg) {
                // A blocker that has a batch queued ahead of this one runs it
                // first (FIFO needs no swap for that); it drains only once
                // this batch is the oldest thing it stands in front of.
                let ahead = |b: &ModelView| queue[..position].iter().any(|q| q.model == b.name);
                draining = blockers(m, &occupied, cfg)
                    .iter()
                    .filter(|b| !ahead(b))
                    .map(|b| b.name.clone())
                    .collect();
            }
        }
    }

    // Dispatch turns: for every ready model that is not draining and has no
    // batch dispatching, its waiting batch that comes first in fair order.
    let mut granted: Vec<&str> = vec![];
    for w in &queue {
        let Some(m) = model(&w.model) else { continue };
        let ready = !m.managed || m.phase == Phase::Loaded;
        if ready && !m.dispatching && !draining.contains(&m.name) && !granted.contains(&m.name.as_str()) {
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

    // Loading the next model: unload idle models in its way, then load it.
    if let Some(m) = next_load {
        let is_idle = |b: &ModelView| {
            b.phase == Phase::Loaded
                && b.running == 0
                && !granted.contains(&b.name.as_str())
                && (draining.contains(&b.name) || !queue.iter().any(|w| w.model == b.name))
        };
        if fits(m, &occupied, cfg) {
            actions.push(Action::Load(m.name.clone()));
        } else {
            let in_way = blockers(m, &occupied, cfg);
            if !in_way.is_empty() && in_way.iter().all(|b| is_idle(b)) {
                for b in in_way {
                    actions.push(Action::Unload(b.name.clone()));
                }
            }
        }
    }

    // Idle models unload after `idle_unload_secs`.
    if cfg.idle_unload_secs > 0 {
        for m in models {
            if m.managed
                && m.phase == Phase::Loaded
                && m.running == 0
                && m.idle_for >= Duration::from_secs(cfg.idle_unload_secs)
                && !queue.iter().any(|w| w.model == m.name)
                && !actions.contains(&Action::Unload(m.name.clone()))
            {
                actions.push(Action::Unload(m.name.clone()));
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SchedulerConfig {
        SchedulerConfig {
            max_loaded_models: 1,
            idle_unload_secs: 0,
            max_swap_delay_secs: 60,
            urgency_margin_secs: 600,
            max_restarts: 3,
            turn_quantum_secs: 60,
        }
    }

    fn model(name: &str, phase: Phase, running: usize) -> ModelView {
        ModelView {
            name: name.into(),
            managed: true,
            phase,
            device: None,
            running,
            dispatching: running > 0,
            turn: None,
            idle_for: Duration::ZERO,
        }
    }

    fn wait(id: &str, model: &str, created_at: i64, waited_secs: u64) -> WaitView {
        WaitView {
            batch_id: id.into(),
            model: model.into(),
            project: "p".into(),
            project_last_turn: 0,
            created_at,
            expires_at: Some(created_at + 86_400),
            waited: Duration::from_secs(waited_secs),
        }
    }

    #[test]
    fn an_unloaded_model_with_work_is_loaded_when_the_slot_is_free() {
        let models = [model("a", Phase::Unloaded, 0)];
        let actions = plan(&models, &[wait("b1", "a", 10, 0)], 100, &cfg());
        assert_eq!(actions, vec![Action::Load("a".into())]);
    }

    #[test]
    fn the_loaded_model_keeps_taking_its_own_batches_until_another_waited_long_enough() {
        let models = [model("a", Phase::Loaded, 0), model("b", Phase::Unloaded, 0)];
        // b waited 10 s (< 60): collation, a takes its next batch even though b's is older.
        let waiting = [wait("b1", "b", 5, 10), wait("a2", "a", 20, 1)];
        assert_eq!(plan(&models, &waiting, 100, &cfg()), vec![Action::Grant("a2".into())]);
        // b waited 61 s: a drains, and being idle, is unloaded to make way.
        let waiting = [wait("b1", "b", 5, 61), wait("a2", "a", 20, 1)];
        assert_eq!(plan(&models, &waiting, 100, &cfg()), vec![Action::Unload("a".into())]);
    }

    #[test]
    fn with_no_swap_delay_the_queue_is_fifo_and_does_not_ping_pong() {
        let mut config = cfg();
        config.max_swap_delay_secs = 0;
        let models = [model("a", Phase::Loaded, 0), model("b", Phase::Unloaded, 0)];
        // a's batch is first in line: a runs it rather than swapping away.
        let waiting = [wait("a1", "a", 1, 0), wait("b1", "b", 2, 0), wait("a2", "a", 3, 0)];
        assert_eq!(plan(&models, &waiting, 100, &config), vec![Action::Grant("a1".into())]);
        // With a1 gone, b1 is first: a drains instead of taking a2.
        let waiting = [wait("b1", "b", 2, 0), wait("a2", "a", 3, 0)];
        assert_eq!(plan(&models, &waiting, 100, &config), vec![Action::Unload("a".into())]);
    }

    #[test]
    fn a_model_with_a_batch_running_is_never_unloaded() {
        let models = [model("a", Phase::Loaded, 1), model("b", Phase::Unloaded, 0)];
        let waiting = [wait("b1", "b", 5, 1000), wait("a2", "a", 20, 1)];
        // a drains (no grant for a2) but is not unloaded while b1... waits.
        assert_eq!(plan(&models, &waiting, 100, &cfg()), vec![]);
    }

    #[test]
    fn an_urgent_batch_jumps_the_queue() {
        let models = [model("a", Phase::Loaded, 0), model("b", Phase::Unloaded, 0)];
        let mut urgent = wait("b1", "b", 50, 0);
        urgent.expires_at = Some(150);
        let waiting = [wait("a1", "a", 10, 0), urgent];
        assert_eq!(plan(&models, &waiting, 100, &cfg()), vec![Action::Unload("a".into())]);
    }

    #[test]
    fn batches_of_one_model_take_turns_in_fifo_order() {
        let mut a = model("a", Phase::Loaded, 0);
        let waiting = [wait("late", "a", 30, 0), wait("early", "a", 10, 0)];
        assert_eq!(
            plan(&[a.clone()], &waiting, 100, &cfg()),
            vec![Action::Grant("early".into())]
        );
        a.dispatching = true;
        a.running = 1;
        assert_eq!(plan(&[a], &waiting, 100, &cfg()), vec![]);
    }

    #[test]
    fn models_on_different_devices_load_side_by_side() {
        let mut config = cfg();
        config.max_loaded_models = 2;
        let mut a = model("a", Phase::Loaded, 1);
        a.device = Some("gpu0".into());
        let mut b = model("b", Phase::Unloaded, 0);
        b.device = Some("gpu1".into());
        let mut c = model("c", Phase::Unloaded, 0);
        c.device = Some("gpu0".into());
        let waiting = [wait("b1", "b", 10, 0)];
        assert_eq!(
            plan(&[a.clone(), b.clone()], &waiting, 100, &config),
            vec![Action::Load("b".into())]
        );
        // c shares a's device: it waits while a runs.
        let waiting = [wait("c1", "c", 10, 0)];
        assert_eq!(plan(&[a, c], &waiting, 100, &config), vec![]);
    }

    #[test]
    fn unmanaged_models_are_always_ready_and_take_no_slot() {
        let mut remote = model("r", Phase::Unloaded, 0);
        remote.managed = false;
        let models = [model("a", Phase::Loaded, 1), remote];
        let waiting = [wait("r1", "r", 10, 0)];
        assert_eq!(plan(&models, &waiting, 100, &cfg()), vec![Action::Grant("r1".into())]);
    }

    #[test]
    fn crashed_models_restart_only_with_work_and_idle_ones_unload() {
        let mut config = cfg();
        config.idle_unload_secs = 30;
        let mut idle = model("i", Phase::Loaded, 0);
        idle.idle_for = Duration::from_secs(31);
        let models = [model("c", Phase::Crashed, 1), model("d", Phase::Crashed, 0), idle];
        assert_eq!(
            plan(&models, &[], 100, &config),
            vec![
                Action::Restart("c".into()),
                Action::Forget("d".into()),
                Action::Unload("i".into())
            ]
        );
    }

    /// A waiting batch of `project`, whose last turn on the model was `last_turn`.
    fn wait_of(id: &str, project: &str, last_turn: u64, created_at: i64) -> WaitView {
        WaitView {
            project: project.into(),
            project_last_turn: last_turn,
            ..wait(id, "a", created_at, 0)
        }
    }

    /// Model `a`, loaded, with a batch created at `created_at` holding turn
    /// number `seq` for `held_secs`.
    fn holding(created_at: i64, seq: u64, held_secs: u64) -> ModelView {
        let mut a = model("a", Phase::Loaded, 1);
        a.turn = Some(TurnView {
            created_at,
            expires_at: Some(created_at + 86_400),
            seq,
            held_for: Duration::from_secs(held_secs),
        });
        a
    }

    /// Runs model `a` the way the manager does, every turn to the batch's
    /// end: grants the planned batch, numbers the turn, and removes the batch
    /// from the queue. Returns the projects in the order they got turns.
    fn turn_order(mut queue: Vec<WaitView>) -> Vec<String> {
        let mut order = vec![];
        let mut last_turn: std::collections::HashMap<String, u64> = Default::default();
        for seq in 1.. {
            for w in &mut queue {
                w.project_last_turn = last_turn.get(&w.project).copied().unwrap_or(0);
            }
            let actions = plan(&[model("a", Phase::Loaded, 0)], &queue, 100, &cfg());
            let Some(Action::Grant(id)) = actions.first() else {
                break;
            };
            let i = queue.iter().position(|w| &w.batch_id == id).unwrap();
            let granted = queue.remove(i);
            last_turn.insert(granted.project.clone(), seq);
            order.push(granted.project);
        }
        order
    }

    #[test]
    fn projects_take_turns_round_robin_and_a_big_queue_does_not_hold_the_model() {
        // p1 queued five batches before p2 and p3 queued theirs.
        let mut queue: Vec<WaitView> = (0..5).map(|i| wait_of(&format!("p1-{i}"), "p1", 0, i)).collect();
        queue.push(wait_of("p2-0", "p2", 0, 10));
        queue.push(wait_of("p2-1", "p2", 0, 11));
        queue.push(wait_of("p3-0", "p3", 0, 12));
        assert_eq!(turn_order(queue), ["p1", "p2", "p3", "p1", "p2", "p1", "p1", "p1"]);
    }

    #[test]
    fn within_a_project_batches_keep_their_fifo_order() {
        let queue = vec![wait_of("late", "p1", 3, 30), wait_of("early", "p1", 3, 10)];
        let models = [model("a", Phase::Loaded, 0)];
        assert_eq!(plan(&models, &queue, 100, &cfg()), vec![Action::Grant("early".into())]);
    }

    #[test]
    fn the_project_whose_last_turn_is_oldest_goes_next_even_with_younger_batches() {
        // p1 just had turn 7; p2 last had turn 4, its batch is the youngest.
        let queue = vec![wait_of("p1-old", "p1", 7, 1), wait_of("p2-new", "p2", 4, 50)];
        let models = [model("a", Phase::Loaded, 0)];
        assert_eq!(plan(&models, &queue, 100, &cfg()), vec![Action::Grant("p2-new".into())]);
    }

    #[test]
    fn an_urgent_batch_gets_the_next_turn_whatever_its_project() {
        // p1 just had its turn, but its batch is near expiry: it goes before p2.
        let mut urgent = wait_of("p1-urgent", "p1", 9, 1);
        urgent.expires_at = Some(150);
        let queue = vec![wait_of("p2", "p2", 0, 5), urgent];
        let models = [model("a", Phase::Loaded, 0)];
        assert_eq!(
            plan(&models, &queue, 100, &cfg()),
            vec![Action::Grant("p1-urgent".into())]
        );
    }

    #[test]
    fn a_turn_past_its_quantum_yields_when_another_project_waits() {
        // The holder (turn 3) has dispatched for 61 s (quantum 60); p2 waits.
        let queue = [wait_of("p2", "p2", 1, 50)];
        assert_eq!(
            plan(&[holding(10, 3, 61)], &queue, 100, &cfg()),
            vec![Action::Yield("a".into())]
        );
    }

    #[test]
    fn a_turn_is_not_cut_before_its_quantum() {
        let queue = [wait_of("p2", "p2", 1, 50)];
        assert_eq!(plan(&[holding(10, 3, 59)], &queue, 100, &cfg()), vec![]);
    }

    #[test]
    fn a_turn_is_not_cut_for_younger_batches_of_its_own_project() {
        // Same project (its last turn is this one, 3): a lone tenant's batch runs whole.
        let queue = [wait_of("mine-later", "p1", 3, 50)];
        assert_eq!(plan(&[holding(10, 3, 10_000)], &queue, 100, &cfg()), vec![]);
    }

    #[test]
    fn an_urgent_turn_is_not_cut_for_a_batch_that_is_not_urgent() {
        let mut a = holding(10, 3, 10_000);
        a.turn.as_mut().unwrap().expires_at = Some(150);
        let queue = [wait_of("p2", "p2", 1, 50)];
        assert_eq!(plan(&[a], &queue, 100, &cfg()), vec![]);
    }

    #[test]
    fn a_turn_past_its_quantum_yields_to_an_urgent_batch_of_its_own_project() {
        let mut urgent = wait_of("mine-urgent", "p1", 3, 50);
        urgent.expires_at = Some(150);
        assert_eq!(
            plan(&[holding(10, 3, 61)], &[urgent], 100, &cfg()),
            vec![Action::Yield("a".into())]
        );
    }

    #[test]
    fn a_yielded_batch_queues_behind_the_project_it_yielded_to() {
        // After yielding, the holder (p1, turn 3) waits next to p2 (turn 1):
        // p2 gets the turn, so a yield never hands the turn straight back.
        let queue = [wait_of("p1-yielded", "p1", 3, 10), wait_of("p2", "p2", 1, 50)];
        let models = [model("a", Phase::Loaded, 0)];
        assert_eq!(plan(&models, &queue, 100, &cfg()), vec![Action::Grant("p2".into())]);
    }
}
