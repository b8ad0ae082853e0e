//! Why the engine could not do something: what, and how to fix it, as the
//! CLI prints it and as the API and the UI show it (with a code to act on).

use std::path::PathBuf;

use super::jobs::{JobError, JobId};
use crate::balancer;
use crate::config::ConfigError;
use crate::error_code::ErrorCode;

/// Why the engine could not do something: what, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Balancer(#[from] balancer::Error),
    #[error("no worker `{0}`\n  fix: check the id in the workers list")]
    UnknownWorker(String),
    #[error("no job {0}")]
    UnknownJob(JobId),
    #[error("a {0} is already running (job {1})\n  fix: wait for it, or cancel it first")]
    Busy(&'static str, JobId),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Secret(#[from] crate::secrets::SecretError),
    #[error(
        "the workers file {} already exists{}; simulated studios are for a first run and never replace it\n  fix: add or edit studios in the Studios view; to try simulated studios, run `baton dashboard --simulate 3`, which leaves the file alone",
        path.display(),
        match workers { Some(n) => format!(" with {n} studio(s)"), None => String::new() }
    )]
    FileExists {
        path: PathBuf,
        /// How many studios it holds, when it loads.
        workers: Option<usize>,
    },
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    /// The error as the API and the UI show it.
    pub fn to_job_error(&self) -> JobError {
        let mut e = match self {
            EngineError::Config(c) => JobError {
                message: format!("{}: {}", c.json_path, c.problem)
                    .trim_start_matches(": ")
                    .to_string(),
                fix: Some(c.fix.clone()),
                code: None,
            },
            other => JobError::from_text(&other.to_string()),
        };
        e.code = match self {
            EngineError::Balancer(
                balancer::Error::NeedsApiKey(_) | balancer::Error::AnyOriginNeedsApiKey,
            ) => Some(ErrorCode::NeedsApiKey),
            EngineError::Secret(crate::secrets::SecretError::Denied(_)) => {
                Some(ErrorCode::KeychainDenied)
            }
            EngineError::FileExists { .. } => Some(ErrorCode::WorkersFileExists),
            _ => None,
        };
        e
    }

    /// The JSON path of the offending field, for validation errors.
    pub fn field(&self) -> Option<&str> {
        match self {
            EngineError::Config(c) if !c.json_path.is_empty() => Some(&c.json_path),
            _ => None,
        }
    }
}
