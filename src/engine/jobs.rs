//! Long-running work (preflight, discover, bench, batch) as jobs: each runs
//! in its own task, reports through the event bus, can be cancelled, and
//! keeps its last progress and result for whoever asks later.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::events::{Bus, Event};
use crate::batch::Summary;
use crate::bench::report::BenchResult;
use crate::discover::{Discovery, Found};
use crate::error_code::ErrorCode;
use crate::preflight::{Check, Report};

pub type JobId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Preflight,
    Discover,
    Bench,
    Batch,
    /// Loading or unloading a model on studios.
    Models,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Preflight => "preflight",
            JobKind::Discover => "discover",
            JobKind::Bench => "bench",
            JobKind::Batch => "batch",
            JobKind::Models => "model load",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Finished,
    Failed,
    Cancelled,
}

/// An error as the UI and the CLI show it: what, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// What the UI does about it (a link to a setting, a retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
}

impl JobError {
    /// Split an error whose text carries `\n  fix: ...` (Baton's errors do).
    pub fn from_text(text: &str) -> JobError {
        let (message, fix) = match text.split_once("\n  fix: ") {
            Some((m, f)) => (m.trim().to_string(), Some(f.trim().to_string())),
            None => (text.trim().to_string(), None),
        };
        JobError {
            message,
            fix,
            code: None,
        }
    }
}

/// What a finished job produced.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum JobResult {
    Preflight(Report),
    Discover(Discovery),
    Bench {
        run_id: Option<i64>,
        result: Box<BenchResult>,
    },
    Batch(Summary),
    Models(super::models::ModelOutcome),
}

/// One step of a job, as events carry it.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobUpdate {
    Started,
    Progress {
        done: u64,
        total: Option<u64>,
        ok: u64,
        failed: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    /// A benchmark level began (for progress bars).
    LevelStarted {
        label: String,
        planned: Option<u64>,
        duration_s: Option<f64>,
    },
    /// A benchmark level finished.
    Level {
        label: String,
        summary: String,
    },
    Note {
        line: String,
    },
    /// One preflight check finished.
    Check {
        worker: String,
        host: String,
        check: Check,
    },
    /// Discovery found a server.
    Found {
        server: Found,
    },
    Finished {
        result: Box<JobResult>,
    },
    Failed {
        error: JobError,
    },
    Cancelled,
}

/// A job as `GET /api/jobs` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub status: JobStatus,
    /// Unix time in seconds.
    pub started_at: u64,
    /// The last progress update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobUpdate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

struct Entry {
    job: Job,
    cancel: CancellationToken,
    abort: CancellationToken,
    done: watch::Sender<bool>,
}

/// Jobs of this engine, running and finished (the last 100 are kept).
pub(crate) struct Jobs {
    next: Mutex<(JobId, BTreeMap<JobId, Entry>)>,
}

const KEEP: usize = 100;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Jobs {
    pub fn new() -> Jobs {
        Jobs {
            next: Mutex::new((0, BTreeMap::new())),
        }
    }

    /// A running job of this kind, if any.
    pub fn running(&self, kind: JobKind) -> Option<JobId> {
        let g = self.next.lock().expect("jobs lock");
        g.1.values()
            .find(|e| e.job.kind == kind && e.job.status == JobStatus::Running)
            .map(|e| e.job.id)
    }

    pub fn list(&self) -> Vec<Job> {
        let g = self.next.lock().expect("jobs lock");
        g.1.values().rev().map(|e| e.job.clone()).collect()
    }

    pub fn get(&self, id: JobId) -> Option<Job> {
        self.next
            .lock()
            .expect("jobs lock")
            .1
            .get(&id)
            .map(|e| e.job.clone())
    }

    /// Ask a job to stop; asking again aborts what it still runs.
    pub fn cancel(&self, id: JobId) -> bool {
        match self.next.lock().expect("jobs lock").1.get(&id) {
            Some(e) => {
                if e.cancel.is_cancelled() {
                    e.abort.cancel();
                }
                e.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Wait until a job ends; `None` for an unknown job.
    pub async fn wait(&self, id: JobId) -> Option<Job> {
        let mut rx = {
            let g = self.next.lock().expect("jobs lock");
            g.1.get(&id)?.done.subscribe()
        };
        let _ = rx.wait_for(|d| *d).await;
        self.get(id)
    }

    /// Register a new job and announce it.
    pub fn start(self: &Arc<Self>, bus: &Arc<Bus>, kind: JobKind) -> Reporter {
        let cancel = CancellationToken::new();
        let abort = CancellationToken::new();
        let id = {
            let mut g = self.next.lock().expect("jobs lock");
            g.0 += 1;
            let id = g.0;
            g.1.insert(
                id,
                Entry {
                    job: Job {
                        id,
                        kind,
                        status: JobStatus::Running,
                        started_at: now(),
                        progress: None,
                        result: None,
                        error: None,
                    },
                    cancel: cancel.clone(),
                    abort: abort.clone(),
                    done: watch::channel(false).0,
                },
            );
            while g.1.len() > KEEP {
                let oldest = *g.1.keys().next().expect("not empty");
                g.1.remove(&oldest);
            }
            id
        };
        let r = Reporter {
            id,
            kind,
            jobs: self.clone(),
            bus: bus.clone(),
            cancel,
            abort,
        };
        r.send(JobUpdate::Started);
        r
    }
}

/// A job's handle on the bus: everything it reports goes through here.
#[derive(Clone)]
pub struct Reporter {
    pub id: JobId,
    pub kind: JobKind,
    jobs: Arc<Jobs>,
    bus: Arc<Bus>,
    /// Stop taking new work.
    pub cancel: CancellationToken,
    /// Drop the work in progress too (a second cancel).
    pub abort: CancellationToken,
}

impl Reporter {
    /// Publish an update; keep progress and outcomes on the job record.
    pub fn send(&self, update: JobUpdate) {
        let status = {
            let mut g = self.jobs.next.lock().expect("jobs lock");
            let Some(e) = g.1.get_mut(&self.id) else {
                return;
            };
            match &update {
                JobUpdate::Progress { .. } | JobUpdate::LevelStarted { .. } => {
                    e.job.progress = Some(update.clone());
                }
                JobUpdate::Finished { result } => {
                    e.job.status = JobStatus::Finished;
                    e.job.result = Some((**result).clone());
                }
                JobUpdate::Failed { error } => {
                    e.job.status = JobStatus::Failed;
                    e.job.error = Some(error.clone());
                }
                JobUpdate::Cancelled => e.job.status = JobStatus::Cancelled,
                _ => {}
            }
            e.job.status
        };
        self.bus.publish(Event::Job {
            id: self.id,
            kind: self.kind,
            status,
            update,
        });
        if status != JobStatus::Running {
            let g = self.jobs.next.lock().expect("jobs lock");
            if let Some(e) = g.1.get(&self.id) {
                e.done.send_replace(true);
            }
        }
    }

    pub fn note(&self, line: impl Into<String>) {
        self.send(JobUpdate::Note { line: line.into() });
    }

    pub fn finish(&self, result: JobResult) {
        self.send(JobUpdate::Finished {
            result: Box::new(result),
        });
    }

    pub fn fail(&self, error: JobError) {
        self.send(JobUpdate::Failed { error });
    }
}

/// Progress updates at most this often (a sweep of thousands of probes
/// must not flood the bus).
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_millis(100);
