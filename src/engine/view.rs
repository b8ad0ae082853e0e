//! What the UI is shown of the engine: the balancer, each studio with its
//! live state, where the workers come from, and all of it at once.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

use super::jobs::Job;
use super::live::LiveStats;
use crate::balancer::{State, WorkerStats};
use crate::preflight::Report;
use crate::studio::StudioKind;

/// The balancer as the UI shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BalancerStatus {
    pub running: bool,
    /// `http://addr/v1` while running.
    pub url: Option<String>,
    pub listen: SocketAddr,
    /// Listening on something other than loopback.
    pub lan_exposed: bool,
    pub api_key_set: bool,
    /// Why the last start failed.
    pub error: Option<String>,
}

/// A studio's status in the UI: its balancer state, or why it has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Starting,
    Ready,
    Ejected,
    Probing,
    Draining,
    Removed,
    /// `enabled: false` in the file.
    Disabled,
    /// The balancer is not running.
    Stopped,
}

impl From<State> for WorkerStatus {
    fn from(s: State) -> Self {
        match s {
            State::Starting => WorkerStatus::Starting,
            State::Ready => WorkerStatus::Ready,
            State::Ejected => WorkerStatus::Ejected,
            State::Probing => WorkerStatus::Probing,
            State::Draining => WorkerStatus::Draining,
            State::Removed => WorkerStatus::Removed,
        }
    }
}

/// A worker as in the file plus its live state. Its key is never included.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerView {
    pub id: String,
    pub host: String,
    pub port: u16,
    #[serde(rename = "type")]
    pub kind: StudioKind,
    pub model: String,
    pub max_concurrent_requests: crate::config::Slots,
    pub enabled: bool,
    pub weight: f64,
    pub members: Vec<String>,
    pub has_api_key: bool,
    pub status: WorkerStatus,
    pub live: Option<WorkerStats>,
}

/// Where the workers come from.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigInfo {
    /// The workers file (also when it does not exist yet).
    pub path: Option<PathBuf>,
    /// Built-in simulated studios are serving.
    pub simulated: bool,
    /// No workers file and nothing chosen yet.
    pub first_run: bool,
}

/// Everything the dashboard shows, at once (`GET /api/state`).
#[derive(Clone, Debug, Serialize)]
pub struct EngineState {
    pub version: String,
    pub balancer: BalancerStatus,
    pub config: ConfigInfo,
    pub workers: Vec<WorkerView>,
    pub stats: Option<LiveStats>,
    pub last_preflight: Option<Report>,
    pub jobs: Vec<Job>,
}
