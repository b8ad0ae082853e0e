//! The SQLite store: benchmark runs (with their config, levels, per-worker
//! stats and preflight summary), preflight reports, batch jobs with their
//! tasks, and what the balancer learned of each studio. One file in the platform data dir, WAL mode, versioned
//! schema migrations. All SQL of the project lives here, behind typed
//! methods.

use std::path::{Path, PathBuf};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

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
    // 3: what the balancer learned of each studio, so a restart does not
    // slow-start it again.
    "CREATE TABLE studio_memory (
         address TEXT NOT NULL,
         model TEXT NOT NULL,
         updated_at INTEGER NOT NULL,
         slots INTEGER NOT NULL,
         confirmed INTEGER NOT NULL,
         ttft_ms REAL NOT NULL,
         tokens_per_second REAL NOT NULL,
         latency_ms REAL NOT NULL,
         prefill_per_second REAL NOT NULL,
         concurrent_http INTEGER NOT NULL,
         PRIMARY KEY (address, model)
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

/// Where a batch task stands. Stored as `pending`, `done`, `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Done,
    Failed,
}

impl TaskStatus {
    /// The word stored in the database (and written to `results.jsonl`).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Done => "done",
            TaskStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for TaskStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for TaskStatus {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        match v.as_str()? {
            "pending" => Ok(TaskStatus::Pending),
            "done" => Ok(TaskStatus::Done),
            "failed" => Ok(TaskStatus::Failed),
            other => Err(FromSqlError::Other(
                format!("unknown batch task status `{other}`").into(),
            )),
        }
    }
}

/// A batch job: what `baton batch` was asked to do, as it was first asked.
#[derive(Clone, Debug, Serialize)]
pub struct BatchJob {
    pub id: i64,
    pub created_at: i64,
    pub input_dir: PathBuf,
    pub out_dir: PathBuf,
    pub preset: String,
    /// The settings saved with the job (model, limits, prompts file), so a
    /// resumed job keeps them; `null` if they cannot be read.
    pub params: Value,
}

/// A task to add to a job: one (document version, part, prompt).
#[derive(Clone, Debug)]
pub struct NewTask {
    pub document: String,
    pub doc_hash: String,
    /// 0-based.
    pub part: i64,
    pub prompt_id: String,
}

/// A task of a batch job, as stored.
#[derive(Clone, Debug, Serialize)]
pub struct BatchTask {
    pub id: i64,
    pub document: String,
    pub doc_hash: String,
    /// 0-based.
    pub part: i64,
    pub prompt_id: String,
    pub status: TaskStatus,
    pub attempts: i64,
    pub error: Option<String>,
    pub worker: Option<String>,
    pub tokens: Option<i64>,
    pub latency_ms: Option<f64>,
    /// The answer's file, once done.
    pub result_path: Option<PathBuf>,
}

/// One batch job with its task counts, for the dashboard.
///
/// Counts cover the current version of each document: the version whose
/// tasks were added last (a changed document gets new tasks; those of its
/// earlier versions are left out, as `baton batch` leaves them out).
#[derive(Clone, Debug, Serialize)]
pub struct BatchJobSummary {
    pub id: i64,
    pub created_at: i64,
    pub input_dir: String,
    pub out_dir: String,
    pub preset: String,
    pub tasks: u64,
    pub done: u64,
    pub failed: u64,
    pub pending: u64,
}

/// A failed task of a batch job (current document versions only, like
/// [`BatchJobSummary`]).
#[derive(Clone, Debug, Serialize)]
pub struct FailedTask {
    pub id: i64,
    pub document: String,
    /// 1-based, as in `results.jsonl` and the Markdown outputs.
    pub part: i64,
    /// The prompt's id in its preset.
    pub prompt: String,
    pub attempts: i64,
    pub error: Option<String>,
}

/// What the balancer last knew of one studio (`host:port`) serving one
/// model: its learned limit and speed.
#[derive(Clone, Debug, PartialEq)]
pub struct StudioMemory {
    pub address: String,
    pub model: String,
    /// The learned limit (requests at once).
    pub slots: u32,
    /// The most requests in flight at which one got its first token on time.
    pub confirmed: u32,
    pub ttft_ms: f64,
    pub tokens_per_second: f64,
    pub latency_ms: f64,
    pub prefill_per_second: f64,
    /// It was seen answering HTTP while generating.
    pub concurrent_http: bool,
}

/// Holds for a task `t` of the current version of its document: the
/// version whose tasks were added last.
const CURRENT_VERSION: &str = "t.doc_hash = (SELECT l.doc_hash FROM batch_tasks l
                     WHERE l.job_id = t.job_id AND l.document = t.document
                     ORDER BY l.id DESC LIMIT 1)";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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

    /// Forget a run.
    pub fn delete_run(&self, id: i64) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM runs WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::NoSuchRun(id));
        }
        Ok(())
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

    // ---- Batch jobs ----

    /// The job for this input folder, output folder and preset, created
    /// (with `params` as its saved settings) if there is none yet. An
    /// existing job keeps the settings it was created with.
    pub fn batch_job_find_or_create(
        &self,
        input: &Path,
        out: &Path,
        preset: &str,
        params: &Value,
    ) -> Result<i64, StoreError> {
        let (i, o) = (input.display().to_string(), out.display().to_string());
        let e = |e| self.err(e);
        let tx = self.conn.unchecked_transaction().map_err(e)?;
        let existing: Option<i64> = tx
            .query_row(
                "SELECT id FROM batch_jobs WHERE input_dir = ?1 AND out_dir = ?2 AND preset = ?3",
                params![i, o, preset],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;
        let id = match existing {
            Some(id) => id,
            None => {
                tx.execute(
                    "INSERT INTO batch_jobs (created_at, input_dir, out_dir, preset, params_json) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![now(), i, o, preset, params.to_string()],
                )
                .map_err(e)?;
                tx.last_insert_rowid()
            }
        };
        tx.commit().map_err(e)?;
        Ok(id)
    }

    /// A job and its saved settings; `None` if there is no such job.
    pub fn batch_job(&self, id: i64) -> Result<Option<BatchJob>, StoreError> {
        self.conn
            .query_row(
                "SELECT id, created_at, input_dir, out_dir, preset, params_json FROM batch_jobs WHERE id = ?1",
                [id],
                |r| {
                    Ok(BatchJob {
                        id: r.get(0)?,
                        created_at: r.get(1)?,
                        input_dir: PathBuf::from(r.get::<_, String>(2)?),
                        out_dir: PathBuf::from(r.get::<_, String>(3)?),
                        preset: r.get(4)?,
                        params: serde_json::from_str(&r.get::<_, String>(5)?)
                            .unwrap_or(Value::Null),
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Add tasks to a job as pending, all in one transaction; tasks it
    /// already has (same document version, part and prompt) are left as
    /// they are.
    pub fn batch_add_tasks(&self, job: i64, tasks: &[NewTask]) -> Result<(), StoreError> {
        let e = |e| self.err(e);
        let tx = self.conn.unchecked_transaction().map_err(e)?;
        {
            let mut st = tx
                .prepare(
                    "INSERT OR IGNORE INTO batch_tasks (job_id, document, doc_hash, part, prompt_id, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(e)?;
            for t in tasks {
                st.execute(params![
                    job,
                    t.document,
                    t.doc_hash,
                    t.part,
                    t.prompt_id,
                    TaskStatus::Pending
                ])
                .map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    /// Put a job's failed tasks back to pending, with no attempts and no
    /// error.
    pub fn batch_reset_failed(&self, job: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE batch_tasks SET status = ?2, attempts = 0, error = NULL WHERE job_id = ?1 AND status = ?3",
                params![job, TaskStatus::Pending, TaskStatus::Failed],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Every task of a job, every document version, in the order they were
    /// added.
    pub fn batch_tasks(&self, job: i64) -> Result<Vec<BatchTask>, StoreError> {
        let e = |e| self.err(e);
        let mut st = self
            .conn
            .prepare(
                "SELECT id, document, doc_hash, part, prompt_id, status, attempts, error, worker, tokens, latency_ms, result_path
                 FROM batch_tasks WHERE job_id = ?1 ORDER BY id",
            )
            .map_err(e)?;
        st.query_map([job], |r| {
            Ok(BatchTask {
                id: r.get(0)?,
                document: r.get(1)?,
                doc_hash: r.get(2)?,
                part: r.get(3)?,
                prompt_id: r.get(4)?,
                status: r.get(5)?,
                attempts: r.get(6)?,
                error: r.get(7)?,
                worker: r.get(8)?,
                tokens: r.get(9)?,
                latency_ms: r.get(10)?,
                result_path: r.get::<_, Option<String>>(11)?.map(PathBuf::from),
            })
        })
        .map_err(e)?
        .collect::<Result<_, _>>()
        .map_err(e)
    }

    /// A task is done: its answer is in `result_path`. `attempts` (made
    /// this time) are added to the task's count; any earlier error is
    /// cleared.
    pub fn batch_task_done(
        &self,
        id: i64,
        attempts: u32,
        worker: &str,
        tokens: u64,
        latency_ms: f64,
        result_path: &Path,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE batch_tasks SET status = ?2, attempts = attempts + ?3, worker = ?4, tokens = ?5, latency_ms = ?6, result_path = ?7, error = NULL WHERE id = ?1",
                params![
                    id,
                    TaskStatus::Done,
                    attempts,
                    worker,
                    tokens as i64,
                    latency_ms,
                    result_path.display().to_string()
                ],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// A task failed with `error` after `attempts` more attempts.
    pub fn batch_task_failed(&self, id: i64, attempts: u32, error: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE batch_tasks SET status = ?2, attempts = attempts + ?3, error = ?4 WHERE id = ?1",
                params![id, TaskStatus::Failed, attempts, error],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Every batch job with its task counts, newest first.
    pub fn list_batch_jobs(&self) -> Result<Vec<BatchJobSummary>, StoreError> {
        self.batch_job_summaries(None)
    }

    /// One batch job with its task counts; `None` if there is no such job.
    pub fn batch_job_summary(&self, job: i64) -> Result<Option<BatchJobSummary>, StoreError> {
        Ok(self.batch_job_summaries(Some(job))?.into_iter().next())
    }

    /// The summaries of one job or of all, newest first.
    fn batch_job_summaries(&self, job: Option<i64>) -> Result<Vec<BatchJobSummary>, StoreError> {
        let e = |e| self.err(e);
        let (done, failed, pending) = (
            TaskStatus::Done.as_str(),
            TaskStatus::Failed.as_str(),
            TaskStatus::Pending.as_str(),
        );
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT j.id, j.created_at, j.input_dir, j.out_dir, j.preset, COUNT(t.id),
                        COALESCE(SUM(t.status = '{done}'), 0),
                        COALESCE(SUM(t.status = '{failed}'), 0),
                        COALESCE(SUM(t.status = '{pending}'), 0)
                 FROM batch_jobs j
                 LEFT JOIN batch_tasks t ON t.job_id = j.id AND {CURRENT_VERSION}
                 WHERE ?1 IS NULL OR j.id = ?1
                 GROUP BY j.id
                 ORDER BY j.id DESC"
            ))
            .map_err(e)?;
        st.query_map([job], |r| {
            Ok(BatchJobSummary {
                id: r.get(0)?,
                created_at: r.get(1)?,
                input_dir: r.get(2)?,
                out_dir: r.get(3)?,
                preset: r.get(4)?,
                tasks: r.get::<_, i64>(5)? as u64,
                done: r.get::<_, i64>(6)? as u64,
                failed: r.get::<_, i64>(7)? as u64,
                pending: r.get::<_, i64>(8)? as u64,
            })
        })
        .map_err(e)?
        .collect::<Result<_, _>>()
        .map_err(e)
    }

    /// The failed tasks of a job (current document versions), in the order
    /// they were added; empty for an unknown job.
    pub fn batch_failed_tasks(&self, job: i64) -> Result<Vec<FailedTask>, StoreError> {
        let e = |e| self.err(e);
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT t.id, t.document, t.part, t.prompt_id, t.attempts, t.error
                 FROM batch_tasks t
                 WHERE t.job_id = ?1 AND t.status = ?2 AND {CURRENT_VERSION}
                 ORDER BY t.id"
            ))
            .map_err(e)?;
        st.query_map(params![job, TaskStatus::Failed], |r| {
            Ok(FailedTask {
                id: r.get(0)?,
                document: r.get(1)?,
                part: r.get::<_, i64>(2)? + 1,
                prompt: r.get(3)?,
                attempts: r.get(4)?,
                error: r.get(5)?,
            })
        })
        .map_err(e)?
        .collect::<Result<_, _>>()
        .map_err(e)
    }
}

impl Store {
    /// Every studio the balancer remembers.
    pub fn studio_memories(&self) -> Result<Vec<StudioMemory>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT address, model, slots, confirmed, ttft_ms, tokens_per_second,
                        latency_ms, prefill_per_second, concurrent_http
                 FROM studio_memory",
            )
            .map_err(|e| self.err(e))?;
        st.query_map([], |r| {
            Ok(StudioMemory {
                address: r.get(0)?,
                model: r.get(1)?,
                slots: r.get(2)?,
                confirmed: r.get(3)?,
                ttft_ms: r.get(4)?,
                tokens_per_second: r.get(5)?,
                latency_ms: r.get(6)?,
                prefill_per_second: r.get(7)?,
                concurrent_http: r.get(8)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.err(e))
    }

    /// Keep what the balancer knows now of these studios (replacing what
    /// it knew before), in one transaction.
    pub fn remember_studios(&self, studios: &[StudioMemory]) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO studio_memory (address, model, updated_at, slots,
                         confirmed, ttft_ms, tokens_per_second, latency_ms, prefill_per_second,
                         concurrent_http)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(|e| self.err(e))?;
            for m in studios {
                st.execute(params![
                    m.address,
                    m.model,
                    now(),
                    m.slots,
                    m.confirmed,
                    m.ttft_ms,
                    m.tokens_per_second,
                    m.latency_ms,
                    m.prefill_per_second,
                    m.concurrent_http,
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_studio_is_remembered_by_address_and_model_and_the_latest_figures_win() {
        let (_d, s) = store();
        let m = StudioMemory {
            address: "10.0.0.2:1234".into(),
            model: "qwen".into(),
            slots: 4,
            confirmed: 4,
            ttft_ms: 110.0,
            tokens_per_second: 40.0,
            latency_ms: 1700.0,
            prefill_per_second: 0.0,
            concurrent_http: true,
        };
        let other = StudioMemory {
            model: "llama".into(),
            slots: 2,
            confirmed: 1,
            concurrent_http: false,
            ..m.clone()
        };
        s.remember_studios(&[m.clone(), other.clone()]).unwrap();
        let later = StudioMemory {
            slots: 3,
            ttft_ms: 150.0,
            ..m.clone()
        };
        s.remember_studios(std::slice::from_ref(&later)).unwrap();
        let mut all = s.studio_memories().unwrap();
        all.sort_by(|a, b| a.model.cmp(&b.model));
        assert_eq!(all, vec![other, later]);
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        (dir, s)
    }

    fn task(document: &str, hash: &str, part: i64, prompt: &str) -> NewTask {
        NewTask {
            document: document.into(),
            doc_hash: hash.into(),
            part,
            prompt_id: prompt.into(),
        }
    }

    fn run_json(started_at: u64) -> BenchResult {
        serde_json::from_value(json!({
            "baton_version": "0.1.0", "started_at": started_at, "finished_at": started_at + 60,
            "interrupted": false, "mode": "concurrency", "target": "balancer",
            "settings": {"model": "m", "max_tokens": 8, "warmup_requests": 1, "repeat": 1,
                         "concurrency_levels": [1], "worker_counts": [], "prompts": 1},
            "config": {"workers": [{"id": "a"}]},
            "host": {"os": "linux", "arch": "x86_64", "cpus": 2, "memory_gb": 24.0},
            "concurrency_benchmark": [], "worker_scaling_benchmark": []
        }))
        .unwrap()
    }

    /// A job with two documents x two prompts; returns the job and its tasks, as added.
    fn job_with_tasks(s: &Store, input: &str) -> (i64, Vec<BatchTask>) {
        let job = s
            .batch_job_find_or_create(
                Path::new(input),
                Path::new("/out"),
                "research",
                &json!({"model": "m"}),
            )
            .unwrap();
        s.batch_add_tasks(
            job,
            &[
                task("a.txt", "h1", 0, "summary"),
                task("a.txt", "h1", 0, "methods"),
                task("b.txt", "h2", 0, "summary"),
                task("b.txt", "h2", 0, "methods"),
            ],
        )
        .unwrap();
        (job, s.batch_tasks(job).unwrap())
    }

    #[test]
    fn a_deleted_run_is_gone_and_deleting_it_again_says_there_is_no_such_run() {
        let (_d, s) = store();
        let keep = s.save_run(&run_json(1_700_000_000), Some("keep")).unwrap();
        let gone = s.save_run(&run_json(1_700_000_100), Some("gone")).unwrap();
        s.delete_run(gone).unwrap();
        let ids: Vec<i64> = s.list_runs().unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![keep]);
        assert!(matches!(s.get_run(gone), Err(StoreError::NoSuchRun(i)) if i == gone));
        assert!(matches!(s.delete_run(gone), Err(StoreError::NoSuchRun(i)) if i == gone));
    }

    #[test]
    fn a_job_is_found_again_by_its_folders_and_preset_and_keeps_its_first_settings() {
        let (_d, s) = store();
        let (input, out) = (Path::new("/in"), Path::new("/out"));
        let first = s
            .batch_job_find_or_create(input, out, "research", &json!({"model": "first"}))
            .unwrap();
        let again = s
            .batch_job_find_or_create(input, out, "research", &json!({"model": "second"}))
            .unwrap();
        let other = s
            .batch_job_find_or_create(input, out, "legal", &json!({"model": "m"}))
            .unwrap();
        assert_eq!(first, again);
        assert_ne!(first, other);
        let job = s.batch_job(first).unwrap().unwrap();
        assert_eq!(
            (job.id, job.input_dir.as_path(), job.out_dir.as_path()),
            (first, input, out)
        );
        assert_eq!(job.preset, "research");
        assert_eq!(job.params, json!({"model": "first"}));
        assert!(s.batch_job(other + 1).unwrap().is_none());
    }

    #[test]
    fn adding_the_same_tasks_twice_keeps_one_of_each_and_their_progress() {
        let (_d, s) = store();
        let (job, tasks) = job_with_tasks(&s, "/in");
        assert_eq!(tasks.len(), 4);
        assert!(tasks.iter().all(|t| t.status == TaskStatus::Pending));
        s.batch_task_done(tasks[0].id, 1, "studio-1", 7, 12.5, Path::new("/out/1.md"))
            .unwrap();
        s.batch_add_tasks(job, &[task("a.txt", "h1", 0, "summary")])
            .unwrap();
        let again = s.batch_tasks(job).unwrap();
        assert_eq!(again.len(), 4);
        assert_eq!(again[0].status, TaskStatus::Done);
    }

    #[test]
    fn done_and_failed_tasks_record_their_outcome_and_add_up_attempts() {
        let (_d, s) = store();
        let (job, tasks) = job_with_tasks(&s, "/in");
        s.batch_task_failed(tasks[0].id, 3, "HTTP 500").unwrap();
        s.batch_task_done(
            tasks[0].id,
            2,
            "studio-2",
            42,
            310.0,
            Path::new("/out/1.md"),
        )
        .unwrap();
        s.batch_task_failed(tasks[1].id, 3, "timed out").unwrap();
        let t = s.batch_tasks(job).unwrap();
        assert_eq!(t[0].status, TaskStatus::Done);
        assert_eq!(t[0].attempts, 5);
        assert_eq!(t[0].error, None);
        assert_eq!(t[0].worker.as_deref(), Some("studio-2"));
        assert_eq!((t[0].tokens, t[0].latency_ms), (Some(42), Some(310.0)));
        assert_eq!(t[0].result_path.as_deref(), Some(Path::new("/out/1.md")));
        assert_eq!(t[1].status, TaskStatus::Failed);
        assert_eq!(
            (t[1].attempts, t[1].error.as_deref()),
            (3, Some("timed out"))
        );
        assert_eq!(t[2].status, TaskStatus::Pending);
    }

    #[test]
    fn resetting_failed_tasks_makes_them_pending_with_no_attempts_and_leaves_done_ones() {
        let (_d, s) = store();
        let (job, tasks) = job_with_tasks(&s, "/in");
        s.batch_task_failed(tasks[0].id, 3, "HTTP 500").unwrap();
        s.batch_task_done(tasks[1].id, 1, "studio-1", 1, 1.0, Path::new("/o"))
            .unwrap();
        s.batch_reset_failed(job).unwrap();
        let t = s.batch_tasks(job).unwrap();
        assert_eq!(
            (t[0].status, t[0].attempts, t[0].error.clone()),
            (TaskStatus::Pending, 0, None)
        );
        assert_eq!((t[1].status, t[1].attempts), (TaskStatus::Done, 1));
    }

    #[test]
    fn task_status_is_stored_as_the_words_older_databases_hold() {
        let (_d, s) = store();
        let (job, tasks) = job_with_tasks(&s, "/in");
        s.batch_task_done(tasks[0].id, 1, "w", 1, 1.0, Path::new("/o"))
            .unwrap();
        s.batch_task_failed(tasks[1].id, 1, "e").unwrap();
        let words: Vec<String> = s
            .conn
            .prepare("SELECT status FROM batch_tasks WHERE job_id = ?1 ORDER BY id")
            .unwrap()
            .query_map([job], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(words, ["done", "failed", "pending", "pending"]);
        // Rows written the old way read back as the enum.
        s.conn
            .execute(
                "INSERT INTO batch_tasks (job_id, document, doc_hash, part, prompt_id, status) VALUES (?1, 'c.txt', 'h3', 0, 'summary', 'failed')",
                [job],
            )
            .unwrap();
        assert_eq!(
            s.batch_tasks(job).unwrap().last().unwrap().status,
            TaskStatus::Failed
        );
        assert_eq!(
            serde_json::to_value(TaskStatus::Pending).unwrap(),
            "pending"
        );
    }

    #[test]
    fn batch_jobs_are_listed_newest_first_with_their_task_counts() {
        let (_d, s) = store();
        assert!(s.list_batch_jobs().unwrap().is_empty());
        let (old, tasks) = job_with_tasks(&s, "/old");
        s.batch_task_done(tasks[0].id, 1, "w", 1, 1.0, Path::new("/o"))
            .unwrap();
        s.batch_task_done(tasks[1].id, 1, "w", 1, 1.0, Path::new("/o"))
            .unwrap();
        s.batch_task_failed(tasks[2].id, 3, "HTTP 500").unwrap();
        let empty = s
            .batch_job_find_or_create(Path::new("/new"), Path::new("/out"), "legal", &json!({}))
            .unwrap();
        let jobs = s.list_batch_jobs().unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].id, empty);
        assert_eq!(
            (jobs[0].tasks, jobs[0].done, jobs[0].failed, jobs[0].pending),
            (0, 0, 0, 0)
        );
        assert_eq!(
            (jobs[0].preset.as_str(), jobs[0].input_dir.as_str()),
            ("legal", "/new")
        );
        assert_eq!(jobs[1].id, old);
        assert_eq!(
            (jobs[1].tasks, jobs[1].done, jobs[1].failed, jobs[1].pending),
            (4, 2, 1, 1)
        );
        assert_eq!(
            (jobs[1].input_dir.as_str(), jobs[1].out_dir.as_str()),
            ("/old", "/out")
        );
        assert!(jobs[1].created_at > 1_700_000_000);
    }

    #[test]
    fn a_job_summary_counts_only_the_current_version_of_each_document() {
        let (_d, s) = store();
        let (job, tasks) = job_with_tasks(&s, "/in");
        for t in &tasks {
            s.batch_task_done(t.id, 1, "w", 1, 1.0, Path::new("/o"))
                .unwrap();
        }
        // b.txt changed: two new pending tasks; its old ones no longer count.
        s.batch_add_tasks(
            job,
            &[
                task("a.txt", "h1", 0, "summary"),
                task("a.txt", "h1", 0, "methods"),
                task("b.txt", "h2-new", 0, "summary"),
                task("b.txt", "h2-new", 0, "methods"),
            ],
        )
        .unwrap();
        let j = s.batch_job_summary(job).unwrap().unwrap();
        assert_eq!((j.id, j.preset.as_str()), (job, "research"));
        assert_eq!((j.tasks, j.done, j.failed, j.pending), (4, 2, 0, 2));
        assert_eq!(s.batch_tasks(job).unwrap().len(), 6);
    }

    #[test]
    fn a_job_summary_of_an_unknown_job_is_none() {
        let (_d, s) = store();
        let (job, _) = job_with_tasks(&s, "/in");
        assert!(s.batch_job_summary(job + 1).unwrap().is_none());
    }

    #[test]
    fn failed_tasks_are_listed_with_their_error_attempts_and_one_based_part() {
        let (_d, s) = store();
        let (job, tasks) = job_with_tasks(&s, "/in");
        s.batch_add_tasks(job, &[task("a.txt", "h1", 1, "summary")])
            .unwrap();
        let split = s.batch_tasks(job).unwrap().last().unwrap().id;
        s.batch_task_failed(tasks[3].id, 3, "HTTP 500").unwrap();
        s.batch_task_failed(split, 2, "timed out").unwrap();
        s.batch_task_done(tasks[0].id, 1, "w", 1, 1.0, Path::new("/o"))
            .unwrap();
        let failed = s.batch_failed_tasks(job).unwrap();
        assert_eq!(failed.len(), 2);
        assert_eq!(
            (failed[0].id, failed[0].document.as_str(), failed[0].part),
            (tasks[3].id, "b.txt", 1)
        );
        assert_eq!(
            (
                failed[0].prompt.as_str(),
                failed[0].attempts,
                failed[0].error.as_deref()
            ),
            ("methods", 3, Some("HTTP 500"))
        );
        assert_eq!(
            (failed[1].id, failed[1].document.as_str(), failed[1].part),
            (split, "a.txt", 2)
        );
        assert_eq!(
            s.batch_job_summary(job).unwrap().unwrap().failed,
            failed.len() as u64
        );
        assert!(s.batch_failed_tasks(job + 1).unwrap().is_empty());
    }
}
