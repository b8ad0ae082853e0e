//! The SQLite store: benchmark runs (with their config, levels, per-worker
//! stats and preflight summary) and preflight reports. One file in the
//! platform data dir, WAL mode, versioned schema migrations.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::bench::report::BenchResult;
use crate::preflight::Report;

/// Schema migrations, applied in order; `user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: runs and preflights.
    "CREATE TABLE runs (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         created_at INTEGER NOT NULL,
         label TEXT,
         mode TEXT NOT NULL,
         target TEXT NOT NULL,
         workers INTEGER NOT NULL,
         best_rps REAL NOT NULL,
         interrupted INTEGER NOT NULL,
         result_json TEXT NOT NULL
     );
     CREATE TABLE preflights (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         created_at INTEGER NOT NULL,
         status TEXT NOT NULL,
         report_json TEXT NOT NULL
     );",
    // 2: batch jobs and their tasks.
    "CREATE TABLE batch_jobs (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         created_at INTEGER NOT NULL,
         input_dir TEXT NOT NULL,
         out_dir TEXT NOT NULL,
         preset TEXT NOT NULL,
         params_json TEXT NOT NULL,
         UNIQUE (input_dir, out_dir, preset)
     );
     CREATE TABLE batch_tasks (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         job_id INTEGER NOT NULL REFERENCES batch_jobs(id),
         document TEXT NOT NULL,
         doc_hash TEXT NOT NULL,
         part INTEGER NOT NULL,
         prompt_id TEXT NOT NULL,
         status TEXT NOT NULL,
         attempts INTEGER NOT NULL DEFAULT 0,
         error TEXT,
         worker TEXT,
         tokens INTEGER,
         latency_ms REAL,
         result_path TEXT,
         UNIQUE (job_id, document, doc_hash, part, prompt_id)
     );",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database {path}: {source}\n  fix: check the file's permissions; move it aside to start a fresh history"
    )]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("run {0} is not in the store; `baton runs` lists them")]
    NoSuchRun(i64),
    #[error("run {id} in the store cannot be read: {source}")]
    Corrupt { id: i64, source: serde_json::Error },
    #[error("no home directory to keep the store in")]
    NoHome,
}

/// One line of `baton runs`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunSummary {
    pub id: i64,
    pub created_at: i64,
    pub label: Option<String>,
    pub mode: String,
    pub target: String,
    pub workers: i64,
    pub best_rps: f64,
    pub interrupted: bool,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// The default database location.
pub fn default_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("dev", "Baton", "baton")
        .map(|d| d.data_dir().join("baton.sqlite3"))
}

impl Store {
    /// Open the default store (created on first use).
    pub fn open_default() -> Result<Store, StoreError> {
        Store::open(&default_path().ok_or(StoreError::NoHome)?)
    }

    /// Open (or create) a store and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        // WAL: readers (the dashboard) never block the writer (a benchmark).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction().map_err(err)?;
            tx.execute_batch(m).map_err(err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    pub fn schema_version(&self) -> i64 {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap_or(0)
    }

    /// Keep a run; returns its id.
    pub fn save_run(&self, r: &BenchResult, label: Option<&str>) -> Result<i64, StoreError> {
        let json = serde_json::to_string(r).expect("serializable result");
        let best = r
            .concurrency_benchmark
            .iter()
            .map(|l| l.requests_per_second)
            .chain(
                r.worker_scaling_benchmark
                    .iter()
                    .map(|l| l.requests_per_second),
            )
            .fold(0.0, f64::max);
        let workers = r
            .config
            .get("workers")
            .and_then(|w| w.as_array())
            .map(|a| a.len())
            .unwrap_or(0);
        self.conn
            .execute(
                "INSERT INTO runs (created_at, label, mode, target, workers, best_rps, interrupted, result_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![r.started_at as i64, label, r.mode, r.target, workers as i64, best, r.interrupted, json],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn list_runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT id, created_at, label, mode, target, workers, best_rps, interrupted FROM runs ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(RunSummary {
                    id: r.get(0)?,
                    created_at: r.get(1)?,
                    label: r.get(2)?,
                    mode: r.get(3)?,
                    target: r.get(4)?,
                    workers: r.get(5)?,
                    best_rps: r.get(6)?,
                    interrupted: r.get(7)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    pub fn get_run(&self, id: i64) -> Result<BenchResult, StoreError> {
        let json: Option<String> = self
            .conn
            .query_row("SELECT result_json FROM runs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let json = json.ok_or(StoreError::NoSuchRun(id))?;
        serde_json::from_str(&json).map_err(|source| StoreError::Corrupt { id, source })
    }

    pub fn save_preflight(&self, r: &Report) -> Result<i64, StoreError> {
        let json = serde_json::to_string(r).expect("serializable report");
        self.conn
            .execute(
                "INSERT INTO preflights (created_at, status, report_json) VALUES (?1, ?2, ?3)",
                params![
                    r.started_at as i64,
                    format!("{:?}", r.status).to_lowercase(),
                    json
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The connection, for modules that keep their own tables here (batch).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn last_preflight(&self) -> Result<Option<Report>, StoreError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT report_json FROM preflights ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }
}
