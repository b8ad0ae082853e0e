//! A studio's state, and the one place it changes.
//!
//! Every change of state goes through [`apply`] (called only by
//! `Pool::transition`, which then lets the scheduler look at its queue
//! again, as its invariant needs). It runs under the studio's health lock,
//! so two changes of one studio never interleave, and a change the current
//! state no longer allows (an ejection racing a reload's removal) is
//! refused instead of undoing the other one. Each change goes out as a
//! typed [`Transition`] on a broadcast channel, in the order it happened:
//! the engine forwards every one (a quick ready -> ejected -> ready is two
//! events, not none) to the dashboard, the notifications and the tray.
//!
//! *When* a studio changes state is the health policy's (`health`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, watch};

use super::worker::WorkerEntry;

/// First wait before a half-open probe; doubles on each failed probe.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Transitions a slow subscriber may fall behind by before it is told it
/// lagged (and reloads the whole state). States change a few times a
/// second at most, even in an outage.
const TRANSITIONS_KEPT: usize = 256;

/// Where a worker stands with the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum State {
    /// Configured, not yet probed. Requests for it wait.
    Starting = 0,
    /// Takes traffic.
    Ready = 1,
    /// Circuit open: no traffic until a half-open probe passes.
    Ejected = 2,
    /// Half-open: one probe in flight decides readmission.
    Probing = 3,
    /// Finishes what it has, takes nothing new (asked by the user).
    Draining = 4,
    /// Removed by a reload: finishes what it has, then goes away.
    Removed = 5,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Starting,
        State::Ready,
        State::Ejected,
        State::Probing,
        State::Draining,
        State::Removed,
    ];

    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Starting,
            1 => State::Ready,
            2 => State::Ejected,
            3 => State::Probing,
            4 => State::Draining,
            _ => State::Removed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Ejected => "ejected",
            State::Probing => "probing",
            State::Draining => "draining",
            State::Removed => "removed",
        }
    }

    /// Still one of the pool's studios (not removed by a reload).
    pub fn is_live(self) -> bool {
        self != State::Removed
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a worker was ejected or a request failed on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The connect failed: nothing listens, or the host is unreachable.
    Connect,
    /// No answer in time (connect, first byte, probe or mid-stream).
    Timeout,
    /// The studio answered with a 5xx status.
    #[serde(rename = "status_5xx")]
    Status5xx,
    /// An answer was cut: the body broke, or ended without a finish.
    Stream,
    /// The probe got an answer that was not a model list.
    Probe,
}

impl Failure {
    pub const ALL: [Failure; 5] = [
        Failure::Connect,
        Failure::Timeout,
        Failure::Status5xx,
        Failure::Stream,
        Failure::Probe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Status5xx => "status_5xx",
            Failure::Stream => "stream",
            Failure::Probe => "probe",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of a studio's state, as subscribers follow it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// The studio's id (as in the workers file).
    pub id: String,
    pub from: State,
    pub to: State,
    /// Why it is out (while ejected or probing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Failure>,
    /// The last error seen from it (cleared when it is readmitted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What moves a studio from one state to another.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Change<'a> {
    /// Out of rotation until a half-open probe passes. `dead` also moves
    /// the requests waiting for its first byte elsewhere at once.
    Eject {
        reason: Failure,
        detail: &'a str,
        dead: bool,
    },
    /// The half-open probe starts (ejected -> probing).
    Probe,
    /// Into rotation: the first probe passed, or the half-open one did.
    Admit,
    /// The user drains it (`true`) or puts it back (`false`).
    Drain(bool),
    /// A reload removed it: it finishes what it has, then goes away.
    Remove,
}

impl Change<'_> {
    /// The state this change leads to from `from`, if it allows one.
    fn target(self, from: State) -> Option<State> {
        use State::*;
        match (self, from) {
            (Change::Eject { .. }, Ready | Starting | Probing | Draining) => Some(Ejected),
            (Change::Probe, Ejected) => Some(Probing),
            (Change::Admit, Starting | Probing | Ejected) => Some(Ready),
            (Change::Drain(true), Ready) => Some(Draining),
            (Change::Drain(false), Draining) => Some(Ready),
            (Change::Remove, s) if s != Removed => Some(Removed),
            _ => None,
        }
    }
}

/// The details behind the state, under one small lock (which every change
/// of state also holds).
#[derive(Debug, Default)]
pub(crate) struct Detail {
    pub last_reason: Option<Failure>,
    pub last_error: Option<String>,
    pub backoff: Duration,
    pub retry_at: Option<Instant>,
    pub probe_rtt_ms: Option<f64>,
    pub consecutive_5xx: u32,
    pub consecutive_cuts: u32,
    pub models_at: Option<Instant>,
    /// When a bare TCP connect last checked a busy, quiet studio.
    pub connect_checked_at: Option<Instant>,
}

/// One worker's health: its state (read without a lock by the scheduler,
/// written only by [`apply`]) and what the health policy goes by.
pub(crate) struct Health {
    state: AtomicU8,
    /// When a byte last arrived from the studio or a request was last sent
    /// to it, in ms since `epoch`: what "making progress" is judged by.
    last_progress_ms: AtomicU64,
    epoch: Instant,
    pub detail: Mutex<Detail>,
    /// Bumped when the studio is found dead (not merely ejected), so
    /// requests waiting for a first byte here move on at once.
    pub dead: watch::Sender<u64>,
    /// Wakes the prober early (an answer was cut: look now).
    pub check_now: Notify,
}

impl Health {
    pub fn new() -> Health {
        let (dead, _) = watch::channel(0);
        Health {
            state: AtomicU8::new(State::Starting as u8),
            last_progress_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            detail: Mutex::new(Detail::default()),
            dead,
            check_now: Notify::new(),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Something came from (or went to) the studio just now.
    pub fn progress(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_progress_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Milliseconds since this studio's entry was made (its own clock).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Time since the last progress.
    pub fn since_progress(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_progress_ms.load(Ordering::Relaxed)))
    }

    pub fn last_error(&self) -> Option<String> {
        self.detail.lock().expect("health lock").last_error.clone()
    }

    /// The studio is found dead: wake the requests waiting on it.
    fn found_dead(&self) {
        self.dead.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

/// Where state changes are announced: a counter for those that only need
/// to look again (waiting for readiness), and every transition for those
/// that show them.
pub(crate) struct Signal {
    changes: watch::Sender<u64>,
    transitions: broadcast::Sender<Transition>,
}

impl Signal {
    pub fn new() -> Signal {
        Signal {
            changes: watch::channel(0).0,
            transitions: broadcast::channel(TRANSITIONS_KEPT).0,
        }
    }

    /// A receiver that changes whenever a studio's state changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Every transition from now on.
    pub fn transitions(&self) -> broadcast::Receiver<Transition> {
        self.transitions.subscribe()
    }
}

/// Change `w`'s state as `change` says, if its current state allows it;
/// returns the transition made. Only `Pool::transition` calls this.
pub(crate) fn apply(w: &WorkerEntry, change: Change<'_>, signal: &Signal) -> Option<Transition> {
    let h = &w.health;
    let mut d = h.detail.lock().expect("health lock");
    let from = h.state();
    let Some(to) = change.target(from) else {
        drop(d);
        if let Change::Eject { dead: true, .. } = change
            && from == State::Ejected
        {
            // Out already, and now known dead: free its waiters.
            h.found_dead();
        }
        return None;
    };
    match change {
        Change::Eject { reason, detail, .. } => {
            // A failed half-open probe doubles the wait; a fresh ejection starts small.
            d.backoff = if from == State::Probing {
                (d.backoff * 2).clamp(BACKOFF_START, BACKOFF_MAX)
            } else {
                BACKOFF_START
            };
            d.retry_at = Some(Instant::now() + d.backoff);
            d.last_reason = Some(reason);
            d.last_error = Some(detail.to_string());
            d.consecutive_5xx = 0;
            d.consecutive_cuts = 0;
        }
        Change::Admit => {
            d.retry_at = None;
            d.backoff = Duration::ZERO;
            d.last_error = None;
            if from != State::Starting {
                // What it learned before the outage may be stale: start
                // fresh (before it is seen ready, so nothing routes on it).
                w.forget_speed();
            }
        }
        Change::Probe | Change::Drain(_) | Change::Remove => {}
    }
    h.state.store(to as u8, Ordering::Release);
    let t = Transition {
        id: w.id().to_string(),
        from,
        to,
        reason: matches!(to, State::Ejected | State::Probing)
            .then_some(d.last_reason)
            .flatten(),
        detail: d.last_error.clone(),
    };
    // Sent under the lock, so one studio's transitions go out in order.
    let _ = signal.transitions.send(t.clone());
    signal.changes.send_modify(|n| *n = n.wrapping_add(1));
    drop(d);
    match change {
        Change::Eject {
            reason,
            detail,
            dead,
        } => {
            w.upstream.clear();
            // A failed half-open probe continues the same outage: not a new ejection.
            if from != State::Probing {
                w.counters.ejections[reason.index()].fetch_add(1, Ordering::Relaxed);
            }
            if dead {
                h.found_dead();
            }
            if from == State::Probing {
                tracing::debug!(worker = w.id(), "half-open probe failed: {detail}");
            } else {
                tracing::warn!(
                    worker = w.id(),
                    reason = reason.as_str(),
                    dead,
                    "worker ejected: {detail}"
                );
            }
        }
        Change::Admit if from == State::Starting => {
            tracing::debug!(worker = w.id(), url = %w.base_url, "worker ready");
        }
        Change::Admit => tracing::info!(worker = w.id(), "worker readmitted"),
        Change::Probe | Change::Drain(_) | Change::Remove => {}
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::balancer::pool::{Pool, QueueSettings};
    use crate::config::{Slots, Strategy, Worker};
    use crate::studio::StudioKind;

    fn pool_with_one() -> (Arc<Pool>, Arc<WorkerEntry>) {
        let pool = Pool::new(QueueSettings {
            limit: 10,
            timeout: Duration::from_secs(1),
            strategy: Strategy::LeastTime,
            prefer_loaded: true,
        });
        let w = Arc::new(WorkerEntry::new(
            Worker {
                id: "s1".into(),
                host: "127.0.0.1".into(),
                port: 1,
                kind: StudioKind::Openai,
                model: "m".into(),
                max_concurrent_requests: Slots::Max(1),
                enabled: true,
                weight: 1.0,
                api_key: None,
                members: vec![],
            },
            None,
        ));
        pool.add(w.clone());
        (pool, w)
    }

    fn eject(dead: bool) -> Change<'static> {
        Change::Eject {
            reason: Failure::Connect,
            detail: "connection refused",
            dead,
        }
    }

    #[test]
    fn every_change_is_announced_in_order_even_a_quick_one_and_back() {
        let (pool, w) = pool_with_one();
        let mut rx = pool.signal().transitions();
        pool.transition(&w, Change::Admit);
        pool.transition(&w, eject(false));
        pool.transition(&w, Change::Probe);
        pool.transition(&w, Change::Admit);
        let seen: Vec<Transition> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        let steps: Vec<(State, State)> = seen.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            steps,
            [
                (State::Starting, State::Ready),
                (State::Ready, State::Ejected),
                (State::Ejected, State::Probing),
                (State::Probing, State::Ready),
            ]
        );
        // Out: why, and what was seen; back in: nothing held against it.
        assert_eq!(seen[1].reason, Some(Failure::Connect));
        assert_eq!(seen[1].detail.as_deref(), Some("connection refused"));
        assert_eq!(seen[2].reason, Some(Failure::Connect));
        assert_eq!((seen[3].reason, seen[3].detail.clone()), (None, None));
        assert!(seen.iter().all(|t| t.id == "s1"));
    }

    #[test]
    fn a_change_the_state_no_longer_allows_is_refused_and_not_announced() {
        let (pool, w) = pool_with_one();
        pool.transition(&w, Change::Admit);
        pool.transition(&w, Change::Remove);
        let mut rx = pool.signal().transitions();
        // A request that failed on it a moment ago does not bring it back.
        assert_eq!(pool.transition(&w, eject(true)), None);
        assert_eq!(pool.transition(&w, Change::Admit), None);
        assert_eq!(pool.transition(&w, Change::Drain(false)), None);
        assert_eq!(w.state(), State::Removed);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_studio_found_dead_while_out_frees_its_waiters_without_a_new_transition() {
        let (pool, w) = pool_with_one();
        pool.transition(&w, Change::Admit);
        let dead = w.health.dead.subscribe();
        pool.transition(&w, eject(false));
        assert!(!dead.has_changed().unwrap(), "slow is not dead");
        let mut rx = pool.signal().transitions();
        assert_eq!(pool.transition(&w, eject(true)), None);
        assert!(dead.has_changed().unwrap());
        assert!(rx.try_recv().is_err());
        assert_eq!(w.counters.ejections(Failure::Connect), 1);
    }
}
