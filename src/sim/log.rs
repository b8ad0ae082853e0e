//! The request log: every request a simulated studio received, so a test or
//! a diagnosis can see what arrived when, and what it met.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Entries kept; older ones are dropped first.
const CAPACITY: usize = 10_000;

/// One request, from arrival to the end of its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Increasing from 1 in arrival order; survives clearing.
    pub id: u64,
    pub method: String,
    pub path: String,
    /// Milliseconds since the studio started.
    pub arrived_ms: u64,
    /// When the last byte of the answer was written (or the answer was
    /// abandoned); `None` while it is still being answered.
    pub ended_ms: Option<u64>,
    /// Generations holding a slot (prefilling or streaming) when it arrived.
    pub generating_at_arrival: u64,
    /// A generation cut short by a later request (interrupt mode).
    pub interrupted: bool,
    /// `None` until the answer's status line is decided.
    pub status: Option<u16>,
}

pub(super) struct RequestLog {
    started: Instant,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    entries: VecDeque<LogEntry>,
}

impl Inner {
    /// Entries are in id order without gaps, so the position is arithmetic.
    fn get(&mut self, id: u64) -> Option<&mut LogEntry> {
        let first = self.entries.front()?.id;
        let i = usize::try_from(id.checked_sub(first)?).ok()?;
        self.entries.get_mut(i)
    }
}

impl RequestLog {
    pub(super) fn new() -> RequestLog {
        RequestLog {
            started: Instant::now(),
            inner: Mutex::new(Inner {
                next_id: 1,
                entries: VecDeque::new(),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(super) fn arrive(&self, method: &str, path: &str, generating: u64) -> u64 {
        let arrived_ms = self.now_ms();
        let mut g = self.inner.lock().expect("log lock");
        let id = g.next_id;
        g.next_id += 1;
        if g.entries.len() == CAPACITY {
            g.entries.pop_front();
        }
        g.entries.push_back(LogEntry {
            id,
            method: method.to_string(),
            path: path.to_string(),
            arrived_ms,
            ended_ms: None,
            generating_at_arrival: generating,
            interrupted: false,
            status: None,
        });
        id
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut LogEntry)) {
        if let Some(e) = self.inner.lock().expect("log lock").get(id) {
            f(e);
        }
    }

    pub(super) fn status(&self, id: u64, status: u16) {
        self.update(id, |e| e.status = Some(status));
    }

    pub(super) fn end(&self, id: u64) {
        let now = self.now_ms();
        self.update(id, |e| e.ended_ms = Some(now));
    }

    pub(super) fn interrupted(&self, id: u64) {
        self.update(id, |e| e.interrupted = true);
    }

    pub(super) fn entries(&self) -> Vec<LogEntry> {
        let g = self.inner.lock().expect("log lock");
        g.entries.iter().cloned().collect()
    }

    pub(super) fn clear(&self) {
        self.inner.lock().expect("log lock").entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_entries_and_finds_them_by_id() {
        let log = RequestLog::new();
        for _ in 0..CAPACITY + 5 {
            log.arrive("GET", "/v1/models", 0);
        }
        let e = log.entries();
        assert_eq!(e.len(), CAPACITY);
        assert_eq!(e[0].id, 6);
        log.status(CAPACITY as u64 + 5, 200);
        log.status(3, 200); // dropped already: ignored
        assert_eq!(log.entries().last().unwrap().status, Some(200));
        log.clear();
        assert!(log.entries().is_empty());
        assert_eq!(log.arrive("GET", "/", 0), CAPACITY as u64 + 6);
        log.end(CAPACITY as u64 + 6);
        assert!(log.entries()[0].ended_ms.is_some());
    }
}
