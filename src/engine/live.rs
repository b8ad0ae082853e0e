//! Live figures of the running balancer: rates over the last second, pushed
//! on the bus only when they change, and a one-minute history for
//! sparklines.
//!
//! Only while someone looks: each view that shows them (an event stream of
//! the control API: the dashboard, the app's popover) holds a
//! [`LiveViewer`], and with none the figures are neither sampled nor kept,
//! so an idle engine nobody watches does not wake up for them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::balancer::{Failure, SlotsBasis, Snapshot, State};

/// How often the figures are looked at (and at most how often they are pushed).
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// Samples kept for sparklines: one a second for a minute.
const HISTORY: usize = 60;

/// The pool right now.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PoolNow {
    pub tokens_per_second: f64,
    pub requests_per_second: f64,
    pub in_flight: u64,
    pub queue_depth: usize,
    pub ready: usize,
    pub total: usize,
}

/// One studio right now.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WorkerNow {
    pub id: String,
    pub state: State,
    /// Requests it is given at once now (learned).
    pub slots: u64,
    /// Whether `slots` is measured yet.
    pub slots_basis: SlotsBasis,
    /// The declared `max_concurrent_requests` (`None`: "auto").
    pub slots_declared: Option<u32>,
    pub in_flight: u64,
    pub tokens_per_second: f64,
    pub ttft_ms: f64,
    pub share: f64,
    pub requests: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for: Option<Failure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_rtt_ms: Option<f64>,
}

/// `stats` events and `GET /api/stats/history` samples.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LiveStats {
    /// Milliseconds since the engine started.
    pub at_ms: u64,
    pub pool: PoolNow,
    pub workers: Vec<WorkerNow>,
}

impl LiveStats {
    /// Equal apart from the time stamp.
    fn same_figures(&self, other: &LiveStats) -> bool {
        self.pool == other.pool && self.workers == other.workers
    }
}

/// Counters a little over a second ago, to turn totals into rates over a
/// window that slides with every look (a window that jumps once a second
/// makes rates flicker between zero and double).
#[derive(Default)]
struct Last {
    /// (when, tokens per worker, requests), oldest first.
    window: VecDeque<(Instant, BTreeMap<String, u64>, u64)>,
    pushed: Option<LiveStats>,
    sampled_at: Option<Instant>,
}

/// How far back rates look.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Turns balancer snapshots into live figures and keeps their history.
pub(crate) struct Live {
    epoch: Instant,
    last: Mutex<Last>,
    history: Mutex<VecDeque<LiveStats>>,
    /// How many views show the figures now.
    viewers: watch::Sender<usize>,
}

/// A view that shows live figures is open; dropping it closes it.
pub struct LiveViewer(watch::Sender<usize>);

impl Drop for LiveViewer {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Live {
    pub fn new() -> Live {
        Live {
            epoch: Instant::now(),
            last: Mutex::new(Last::default()),
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            viewers: watch::Sender::new(0),
        }
    }

    /// Count a view that shows the figures, until the guard is dropped.
    pub fn view(&self) -> LiveViewer {
        self.viewers.send_modify(|n| *n += 1);
        LiveViewer(self.viewers.clone())
    }

    /// Changes of the number of views.
    pub fn viewers(&self) -> watch::Receiver<usize> {
        self.viewers.subscribe()
    }

    /// A first view opened after none: rates start over, the next figures
    /// are pushed whatever they are, and history older than its minute
    /// (from before the pause) goes.
    pub fn resume(&self) {
        self.reset();
        let now = self.epoch.elapsed().as_millis() as u64;
        let minute = (HISTORY as u64) * 1000;
        self.history
            .lock()
            .expect("history lock")
            .retain(|s| now.saturating_sub(s.at_ms) < minute);
    }

    /// Figures from a snapshot; `Some` when they differ from the last ones
    /// pushed (the caller publishes them).
    pub fn observe(&self, snap: &Snapshot) -> Option<LiveStats> {
        let tokens: BTreeMap<String, u64> = snap
            .workers
            .iter()
            .map(|w| (w.id.clone(), w.tokens))
            .collect();
        let now = Instant::now();
        let mut last = self.last.lock().expect("live lock");
        let requests: u64 = snap.workers.iter().map(|w| w.successes).sum();
        last.window.push_back((now, tokens.clone(), requests));
        while last.window.len() > 2 && now.duration_since(last.window[1].0) >= RATE_WINDOW {
            last.window.pop_front();
        }
        let (then, then_tokens, then_requests) = last.window.front().cloned().expect("just pushed");
        let dt = now.duration_since(then).as_secs_f64();
        let rate = |now_v: u64, then: Option<u64>| match then {
            Some(t) if dt > 0.0 => now_v.saturating_sub(t) as f64 / dt,
            _ => 0.0,
        };
        let mut pool_tps = 0.0;
        let workers: Vec<WorkerNow> = snap
            .workers
            .iter()
            .filter(|w| w.state.is_live())
            .map(|w| {
                let t = tokens.get(&w.id).copied().unwrap_or(0);
                let tps = round1(rate(t, then_tokens.get(&w.id).copied()));
                pool_tps += tps;
                WorkerNow {
                    id: w.id.clone(),
                    state: w.state,
                    slots: w.slots,
                    slots_basis: w.slots_basis,
                    slots_declared: w.slots_declared,
                    in_flight: w.in_flight,
                    tokens_per_second: tps,
                    ttft_ms: round1(w.ewma_ttft_ms),
                    share: (w.share * 1000.0).round() / 1000.0,
                    requests: w.requests,
                    ejected_for: w.ejected_for,
                    last_error: w.last_error.clone(),
                    probe_rtt_ms: w.probe_rtt_ms.map(round1),
                }
            })
            .collect();
        let stats = LiveStats {
            at_ms: self.epoch.elapsed().as_millis() as u64,
            pool: PoolNow {
                tokens_per_second: round1(pool_tps),
                requests_per_second: round1(rate(requests, Some(then_requests))),
                in_flight: workers.iter().map(|w| w.in_flight).sum(),
                queue_depth: snap.queue_depth,
                ready: workers.iter().filter(|w| w.state == State::Ready).count(),
                total: workers.len(),
            },
            workers,
        };
        if last
            .sampled_at
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            last.sampled_at = Some(now);
            let mut h = self.history.lock().expect("history lock");
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(stats.clone());
        }
        let changed = last.pushed.as_ref().is_none_or(|p| !p.same_figures(&stats));
        if changed {
            last.pushed = Some(stats.clone());
            Some(stats)
        } else {
            None
        }
    }

    /// The last pushed figures.
    pub fn current(&self) -> Option<LiveStats> {
        self.last.lock().expect("live lock").pushed.clone()
    }

    pub fn history(&self) -> Vec<LiveStats> {
        self.history
            .lock()
            .expect("history lock")
            .iter()
            .cloned()
            .collect()
    }

    /// The balancer stopped: rates start over.
    pub fn reset(&self) {
        *self.last.lock().expect("live lock") = Last::default();
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
