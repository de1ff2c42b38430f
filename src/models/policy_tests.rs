//! Unit tests of `policy::plan`.

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
        replicas: vec![replica(phase, None)],
        max_replicas: 1,
        running,
        dispatching: running > 0,
        turn: None,
        idle_for: Duration::ZERO,
    }
}

fn replica(phase: Phase, device: Option<&str>) -> ReplicaView {
    ReplicaView {
        phase,
        device: device.map(str::to_owned),
        in_flight: 0,
        draining: false,
        cooling_down: false,
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
    assert_eq!(actions, vec![Action::Load("a".into(), 0)]);
}

#[test]
fn the_loaded_model_keeps_taking_its_own_batches_until_another_waited_long_enough() {
    let models = [model("a", Phase::Loaded, 0), model("b", Phase::Unloaded, 0)];
    // b waited 10 s (< 60): collation, a takes its next batch even though b's is older.
    let waiting = [wait("b1", "b", 5, 10), wait("a2", "a", 20, 1)];
    assert_eq!(plan(&models, &waiting, 100, &cfg()), vec![Action::Grant("a2".into())]);
    // b waited 61 s: a drains, and being idle, is unloaded to make way.
    let waiting = [wait("b1", "b", 5, 61), wait("a2", "a", 20, 1)];
    assert_eq!(
        plan(&models, &waiting, 100, &cfg()),
        vec![Action::Unload("a".into(), 0)]
    );
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
    assert_eq!(
        plan(&models, &waiting, 100, &config),
        vec![Action::Unload("a".into(), 0)]
    );
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
    assert_eq!(
        plan(&models, &waiting, 100, &cfg()),
        vec![Action::Unload("a".into(), 0)]
    );
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
    a.replicas[0].device = Some("gpu0".into());
    let mut b = model("b", Phase::Unloaded, 0);
    b.replicas[0].device = Some("gpu1".into());
    let mut c = model("c", Phase::Unloaded, 0);
    c.replicas[0].device = Some("gpu0".into());
    let waiting = [wait("b1", "b", 10, 0)];
    assert_eq!(
        plan(&[a.clone(), b.clone()], &waiting, 100, &config),
        vec![Action::Load("b".into(), 0)]
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
            Action::Restart("c".into(), 0),
            Action::Forget("d".into(), 0),
            Action::Unload("i".into(), 0)
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

/// A model that may run on `devices`, with the replica on each in `phases`.
fn fleet(name: &str, devices: &[&str], phases: &[Phase], running: usize) -> ModelView {
    ModelView {
        replicas: devices.iter().zip(phases).map(|(d, p)| replica(*p, Some(d))).collect(),
        max_replicas: devices.len(),
        ..model(name, Phase::Unloaded, running)
    }
}

const GPUS: [&str; 4] = ["0", "1", "2", "3"];
use Phase::{Loaded as L, Unloaded as U};

fn two_models_cfg() -> SchedulerConfig {
    let mut config = cfg();
    config.max_loaded_models = 2;
    config
}

#[test]
fn a_model_alone_with_work_takes_every_free_device() {
    let a = fleet("a", &GPUS, &[U, U, U, U], 0);
    let actions = plan(&[a], &[wait("a1", "a", 10, 0)], 100, &two_models_cfg());
    let loads: Vec<_> = (0..4).map(|i| Action::Load("a".into(), i)).collect();
    assert_eq!(actions, loads);

    let a = fleet("a", &GPUS, &[L, U, U, L], 1);
    assert_eq!(
        plan(&[a], &[], 100, &two_models_cfg()),
        vec![Action::Load("a".into(), 1), Action::Load("a".into(), 2)]
    );
}

#[test]
fn a_pressing_model_gets_one_replica_drained_from_a_busy_model_at_a_time() {
    let a = fleet("a", &GPUS, &[L, L, L, L], 1);
    let b = fleet("b", &GPUS, &[U, U, U, U], 0);
    let waiting = [wait("b1", "b", 10, 0)];
    // Not pressing yet: a keeps its devices.
    assert_eq!(plan(&[a.clone(), b.clone()], &waiting, 100, &two_models_cfg()), vec![]);
    let waiting = [wait("b1", "b", 10, 3600)];
    let actions = plan(&[a.clone(), b.clone()], &waiting, 100, &two_models_cfg());
    assert_eq!(
        actions
            .iter()
            .filter(|x| matches!(x, Action::Drain(m, _) if m == "a"))
            .count(),
        1,
        "{actions:?}"
    );
    assert!(
        !actions
            .iter()
            .any(|x| matches!(x, Action::Unload(..) | Action::Load(..))),
        "{actions:?}"
    );

    // While one replica drains, no second one is drained.
    let mut a = a;
    a.replicas[3].draining = true;
    a.replicas[3].in_flight = 2;
    let actions = plan(&[a, b], &waiting, 100, &two_models_cfg());
    assert!(
        !actions
            .iter()
            .any(|x| matches!(x, Action::Drain(..) | Action::Unload(..))),
        "{actions:?}"
    );
}

#[test]
fn a_drained_replica_is_unloaded_only_once_nothing_is_in_flight() {
    let mut a = fleet("a", &GPUS, &[L, L, L, L], 1);
    a.replicas[2].draining = true;
    a.replicas[2].in_flight = 1;
    let b = fleet("b", &GPUS, &[U, U, U, U], 0);
    let waiting = [wait("b1", "b", 10, 3600)];
    let actions = plan(&[a.clone(), b.clone()], &waiting, 100, &two_models_cfg());
    assert!(!actions.iter().any(|x| matches!(x, Action::Unload(..))), "{actions:?}");
    a.replicas[2].in_flight = 0;
    let actions = plan(&[a, b], &waiting, 100, &two_models_cfg());
    assert!(actions.contains(&Action::Unload("a".into(), 2)), "{actions:?}");
}

#[test]
fn a_place_given_up_goes_to_the_model_with_fewer_replicas() {
    // a drained device 0 for b (a: 1, 2, 3; b: 3): b takes it, not a.
    let a = fleet("a", &GPUS, &[U, L, L, U], 1);
    let b = fleet("b", &GPUS, &[U, U, U, L], 1);
    let actions = plan(&[a.clone(), b.clone()], &[], 100, &two_models_cfg());
    assert_eq!(actions, vec![Action::Load("b".into(), 0)], "{actions:?}");
    // Whatever order the models come in.
    let actions = plan(&[b, a], &[], 100, &two_models_cfg());
    assert_eq!(actions, vec![Action::Load("b".into(), 0)], "{actions:?}");
}

#[test]
fn busy_models_share_devices_evenly() {
    // a holds three, b one: a gives one up. Two and two is stable.
    let a = fleet("a", &GPUS, &[L, L, L, U], 1);
    let b = fleet("b", &GPUS, &[U, U, U, L], 1);
    let actions = plan(&[a, b], &[], 100, &two_models_cfg());
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(matches!(&actions[0], Action::Drain(m, _) if m == "a"), "{actions:?}");

    let a = fleet("a", &GPUS, &[L, L, U, U], 1);
    let b = fleet("b", &GPUS, &[U, U, L, L], 1);
    assert_eq!(plan(&[a, b], &[], 100, &two_models_cfg()), vec![]);
}

#[test]
fn a_busy_model_takes_the_devices_of_an_idle_one() {
    let a = fleet("a", &GPUS, &[U, U, L, L], 0);
    let b = fleet("b", &GPUS, &[L, L, U, U], 1);
    let actions = plan(&[a, b], &[], 100, &two_models_cfg());
    assert_eq!(
        actions,
        vec![Action::Unload("a".into(), 2), Action::Unload("a".into(), 3)]
    );
}

#[test]
fn a_free_device_is_never_given_to_two_models() {
    // Both busy with one replica each, device 2 and 3 free: each gets one,
    // and no device appears in two loads.
    let a = fleet("a", &GPUS, &[L, U, U, U], 1);
    let b = fleet("b", &GPUS, &[U, L, U, U], 1);
    let actions = plan(&[a, b], &[], 100, &two_models_cfg());
    let places: Vec<usize> = actions
        .iter()
        .map(|x| match x {
            Action::Load(_, p) => *p,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let mut unique = places.clone();
    unique.dedup();
    assert_eq!(places, unique, "{actions:?}");
    assert!(places.iter().all(|p| *p >= 2), "{actions:?}");
}

#[test]
fn a_replica_whose_start_failed_is_not_retried_while_it_cools_down() {
    let mut a = fleet("a", &GPUS[..2], &[L, U], 1);
    a.replicas[1].cooling_down = true;
    assert_eq!(plan(&[a.clone()], &[], 100, &cfg()), vec![]);
    a.replicas[1].cooling_down = false;
    assert_eq!(plan(&[a], &[], 100, &cfg()), vec![Action::Load("a".into(), 1)]);
}
