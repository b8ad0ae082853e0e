//! The engine's one stream of typed events, and the bus that carries it.
//!
//! Every subscriber (the CLI's progress bars, the control API's SSE, the
//! menu-bar tray) reads the same events; each has a sequence number so a
//! client that reconnects can resume where it left off.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::broadcast;

use super::jobs::{JobId, JobKind, JobStatus, JobUpdate};
use super::live::LiveStats;
use super::{BalancerStatus, WorkerView};
use crate::balancer::{Failure, State};

/// Events kept for clients that reconnect.
const REPLAY: usize = 1024;

/// Something the engine tells whoever shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The balancer started, stopped, or moved.
    Balancer(BalancerStatus),
    /// Live figures, sent only when they changed.
    Stats(LiveStats),
    /// A studio changed state.
    WorkerState {
        id: String,
        state: State,
        previous: State,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<Failure>,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The workers changed (edited, added, removed, reloaded).
    Config { workers: Vec<WorkerView> },
    /// A job's progress or result.
    Job {
        id: JobId,
        kind: JobKind,
        status: JobStatus,
        update: JobUpdate,
    },
    /// The client missed events: reload the whole state.
    Resync {},
}

impl Event {
    /// The SSE event name (the `type` tag).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Balancer(_) => "balancer",
            Event::Stats(_) => "stats",
            Event::WorkerState { .. } => "worker_state",
            Event::Config { .. } => "config",
            Event::Job { .. } => "job",
            Event::Resync {} => "resync",
        }
    }
}

/// An event with its sequence number.
#[derive(Clone, Debug)]
pub struct Numbered {
    pub seq: u64,
    pub event: Event,
}

/// Publishes events to every subscriber and keeps the last ones.
pub(crate) struct Bus {
    tx: broadcast::Sender<Numbered>,
    recent: Mutex<(u64, VecDeque<Numbered>)>,
}

impl Bus {
    pub fn new() -> Bus {
        Bus {
            tx: broadcast::channel(REPLAY).0,
            recent: Mutex::new((0, VecDeque::with_capacity(REPLAY))),
        }
    }

    pub fn publish(&self, event: Event) {
        // Numbered and sent under one lock, so subscribers see sequence order.
        let mut r = self.recent.lock().expect("bus lock");
        r.0 += 1;
        let n = Numbered { seq: r.0, event };
        if r.1.len() == REPLAY {
            r.1.pop_front();
        }
        r.1.push_back(n.clone());
        let _ = self.tx.send(n);
    }

    /// Subscribe; with `after`, also get the kept events after that number
    /// (or `None` when some of them are gone: the caller must resync).
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (broadcast::Receiver<Numbered>, Option<Vec<Numbered>>) {
        let r = self.recent.lock().expect("bus lock");
        let rx = self.tx.subscribe();
        let replay = match after {
            None => Some(Vec::new()),
            Some(a) if a >= r.0 => Some(Vec::new()),
            Some(a) => {
                let oldest = r.1.front().map_or(r.0 + 1, |n| n.seq);
                if a + 1 < oldest {
                    None
                } else {
                    Some(r.1.iter().filter(|n| n.seq > a).cloned().collect())
                }
            }
        };
        (rx, replay)
    }

    /// The newest sequence number.
    pub fn last_seq(&self) -> u64 {
        self.recent.lock().expect("bus lock").0
    }
}
