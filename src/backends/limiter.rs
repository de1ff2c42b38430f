//! Adaptive concurrency: how many requests one backend gets at once, between
//! the model's `min_concurrency` and `max_concurrency`.
//!
//! AIMD, as TCP does it: slow start (one more slot per success, so the limit
//! doubles every round trip) until the first sign of overload, then one more
//! slot per round trip, and a multiplicative cut (x0.75, at most once a
//! second) on overload. Overload is a 429 or 503, a request that got no
//! answer, or, for servers with vLLM's `/metrics`, more requests waiting in
//! the server's queue than `queue_target`: a few waiting keep its batch full
//! at every step, more only add latency. The limit only grows while it is
//! actually used, so an idle backend does not collect slots.
//!
//! Slots are a tokio semaphore sized at the maximum; a lower limit is the
//! maximum minus slots the limiter holds back. One model's backends share a
//! `Notify` that every freed or added slot wakes, so a pool waiting for any
//! of its backends to have room (`pool::BackendPool::acquire`) hears of it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Requests waiting in the server's own queue that still count as healthy.
pub const QUEUE_TARGET: u64 = 4;
const DECREASE: f64 = 0.75;
const COOLDOWN: Duration = Duration::from_secs(1);

pub struct Limiter {
    semaphore: Arc<Semaphore>,
    state: Mutex<State>,
    min: usize,
    max: usize,
    /// Woken whenever a slot is freed or added.
    room: Arc<Notify>,
}

struct State {
    limit: f64,
    /// Slots to take out of circulation as requests finish (limit went down).
    debt: usize,
    /// Slots currently held back (limit below max).
    held: usize,
    in_flight: usize,
    slow_start: bool,
    last_cut: Option<Instant>,
    /// The server's queue is longer than `QUEUE_TARGET` (from its metrics).
    queue_full: bool,
}

/// One request slot; dropping it frees the slot.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    limiter: Arc<Limiter>,
}

/// What became of one request, for the limiter.
pub enum Signal {
    Success,
    Overload,
    /// Neither (a client error, say).
    Neutral,
}

impl Limiter {
    pub fn new(min: usize, max: usize) -> Arc<Self> {
        Self::with_room(min, max, Arc::default())
    }

    /// A limiter that wakes `room` whenever a slot comes free.
    pub fn with_room(min: usize, max: usize, room: Arc<Notify>) -> Arc<Self> {
        let min = min.clamp(1, max);
        let start = min.max(8).min(max);
        Arc::new(Self {
            semaphore: Arc::new(Semaphore::new(start)),
            state: Mutex::new(State {
                limit: start as f64,
                debt: 0,
                held: max - start,
                in_flight: 0,
                slow_start: true,
                last_cut: None,
                queue_full: false,
            }),
            min,
            max,
            room,
        })
    }

    /// Waits for a slot; slots are granted in arrival order.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        let permit = self.semaphore.clone().acquire_owned().await.expect("never closed");
        self.lock().in_flight += 1;
        Slot {
            permit: Some(permit),
            limiter: self.clone(),
        }
    }

    /// A slot if one is free now.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        self.lock().in_flight += 1;
        Some(Slot {
            permit: Some(permit),
            limiter: self.clone(),
        })
    }

    pub fn limit(&self) -> usize {
        self.lock().limit as usize
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Slots free now (the limit minus those in use).
    pub fn free(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Feeds the outcome of one request.
    pub fn record(&self, signal: Signal) {
        let mut s = self.lock();
        match signal {
            Signal::Success => {
                if s.queue_full || (s.in_flight as f64) < s.limit - 1.0 {
                    return;
                }
                let step = if s.slow_start { 1.0 } else { 1.0 / s.limit };
                let target = (s.limit + step).min(self.max as f64);
                self.set_limit(&mut s, target);
            }
            Signal::Overload => self.cut(&mut s),
            Signal::Neutral => {}
        }
    }

    /// The server reports `waiting` requests in its own queue.
    pub fn record_queue(&self, waiting: u64) {
        let mut s = self.lock();
        s.queue_full = waiting > QUEUE_TARGET;
        if s.queue_full {
            self.cut(&mut s);
        }
    }

    fn cut(&self, s: &mut State) {
        s.slow_start = false;
        if s.last_cut.is_some_and(|at| at.elapsed() < COOLDOWN) {
            return;
        }
        s.last_cut = Some(Instant::now());
        let target = (s.limit * DECREASE).max(self.min as f64);
        self.set_limit(s, target);
    }

    /// Moves the limit; the number of slots in circulation follows its floor.
    fn set_limit(&self, s: &mut State, limit: f64) {
        let old = s.limit as usize;
        s.limit = limit;
        let new = limit as usize;
        if new > old {
            let mut grow = new - old;
            let repaid = grow.min(s.debt);
            s.debt -= repaid;
            grow -= repaid;
            s.held -= grow;
            self.semaphore.add_permits(grow);
            if grow > 0 {
                self.room.notify_waiters();
            }
        } else if new < old {
            let mut shrink = old - new;
            // Take idle slots out now; the rest as requests finish.
            while shrink > 0 {
                match self.semaphore.try_acquire() {
                    Ok(permit) => {
                        permit.forget();
                        s.held += 1;
                        shrink -= 1;
                    }
                    Err(_) => break,
                }
            }
            s.debt += shrink;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("limiter lock")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let freed = {
            let mut s = self.limiter.lock();
            s.in_flight -= 1;
            if s.debt > 0 {
                s.debt -= 1;
                s.held += 1;
                if let Some(permit) = self.permit.take() {
                    permit.forget();
                }
                false
            } else {
                true
            }
        };
        // The permit goes back before waiters are woken, so the one that
        // retries finds it.
        drop(self.permit.take());
        if freed {
            self.limiter.room.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grows_in_slow_start_while_used_and_shrinks_on_overload() {
        let limiter = Limiter::new(2, 64);
        assert_eq!(limiter.limit(), 8);
        // Unused capacity does not grow the limit.
        limiter.record(Signal::Success);
        assert_eq!(limiter.limit(), 8);
        let mut slots: Vec<Slot> = futures::future::join_all((0..8).map(|_| limiter.acquire())).await;
        for _ in 0..8 {
            limiter.record(Signal::Success);
            // The new slot is taken at once, as by a batch with lines waiting.
            slots.push(limiter.acquire().await);
        }
        assert_eq!(limiter.limit(), 16, "slow start: +1 per success while full");
        limiter.record(Signal::Overload);
        assert_eq!(limiter.limit(), 12);
        limiter.record(Signal::Overload);
        assert_eq!(limiter.limit(), 12, "one cut per cooldown");
        drop(slots);
        // 12 slots circulate: a 13th request waits.
        let held: Vec<Slot> = futures::future::join_all((0..12).map(|_| limiter.acquire())).await;
        let extra = tokio::time::timeout(Duration::from_millis(50), limiter.acquire()).await;
        assert!(extra.is_err(), "more slots than the limit");
        drop(held);
    }

    #[tokio::test]
    async fn a_long_server_queue_stops_growth_and_the_limit_respects_the_minimum() {
        let limiter = Limiter::new(6, 10);
        assert_eq!(limiter.limit(), 8);
        limiter.record_queue(100);
        assert_eq!(limiter.limit(), 6, "never below min_concurrency");
        let _slots: Vec<Slot> = futures::future::join_all((0..6).map(|_| limiter.acquire())).await;
        limiter.record(Signal::Success);
        assert_eq!(limiter.limit(), 6, "no growth while the server queue is long");
        limiter.record_queue(0);
        limiter.record(Signal::Success);
        assert!(limiter.limit() >= 6);
    }
}
