//! The scheduling policy, as a pure function of the current state: which
//! waiting batch gets its model's dispatch turn, which model to load next,
//! which idle model to unload. `manager.rs` applies the decisions.
//!
//! - Batches of one model take turns in FIFO order (urgent ones first); the
//!   next batch's turn starts as soon as the previous one has dispatched its
//!   last line, so the backend stays full across batch boundaries.
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
    /// Time since the model last had a batch running.
    pub idle_for: Duration,
}

#[derive(Debug, Clone)]
pub struct WaitView {
    pub batch_id: String,
    pub model: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub waited: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Give this batch its model's dispatch turn.
    Grant(String),
    /// Load the model (start it, or wake it from sleep).
    Load(String),
    /// Unload the model (stop it, or put it to sleep).
    Unload(String),
    /// A crashed model with work: restart it.
    Restart(String),
    /// A crashed model without work: forget the dead process.
    Forget(String),
}

fn is_urgent(w: &WaitView, now: i64, cfg: &SchedulerConfig) -> bool {
    w.expires_at
        .is_some_and(|at| at - now <= cfg.urgency_margin_secs as i64)
}

/// Urgent first (earliest deadline), then oldest.
fn priority(w: &WaitView, now: i64, cfg: &SchedulerConfig) -> (bool, i64, i64) {
    let urgent = is_urgent(w, now, cfg);
    (
        !urgent,
        if urgent { w.expires_at.unwrap_or(i64::MAX) } else { 0 },
        w.created_at,
    )
}

fn pressing(w: &WaitView, now: i64, cfg: &SchedulerConfig) -> bool {
    is_urgent(w, now, cfg) || w.waited >= Duration::from_secs(cfg.max_swap_delay_secs)
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

    // Dispatch turns: the first waiting batch of every ready model that is
    // not draining and has no batch dispatching.
    let mut granted: Vec<&str> = vec![];
    for w in &queue {
        let Some(m) = model(&w.model) else { continue };
        let ready = !m.managed || m.phase == Phase::Loaded;
        if ready && !m.dispatching && !draining.contains(&m.name) && !granted.contains(&m.name.as_str()) {
            granted.push(&m.name);
            actions.push(Action::Grant(w.batch_id.clone()));
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
            idle_for: Duration::ZERO,
        }
    }

    fn wait(id: &str, model: &str, created_at: i64, waited_secs: u64) -> WaitView {
        WaitView {
            batch_id: id.into(),
            model: model.into(),
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
}
