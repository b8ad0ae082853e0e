//! The capacity on record for the pool as it is now: the newest finished
//! capacity run through Baton over exactly the studios enabled now (the
//! same ids, models and declared slots; not their addresses, which change
//! with DHCP or a simulated studio's new port). The live headroom gauge
//! reads requests in flight against it.

use serde::Serialize;
use serde_json::Value;

use super::render::sentence;
use crate::bench::report::{Capacity, Checked, Slo};
use crate::config::Config;
use crate::store::{Store, StoreError};

/// A capacity result that applies to the pool now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    pub run_id: i64,
    /// Unix seconds.
    pub measured_at: i64,
    /// The most agents the pool served at once within `slo`.
    pub max_concurrency: usize,
    pub slo: Slo,
    /// "This pool serves 11 agents at once with ...".
    pub sentence: String,
}

/// A pool's identity from its workers-file entries.
pub fn key(workers: &[Value]) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    };
    let mut parts: Vec<String> = workers
        .iter()
        .filter(|w| w["enabled"].as_bool() != Some(false))
        .map(|w| {
            format!(
                "{}/{}/{}",
                text(&w["id"]),
                text(&w["model"]),
                text(&w["max_concurrent_requests"])
            )
        })
        .collect();
    parts.sort();
    parts.join(",")
}

/// The newest capacity result for `config`'s enabled studios, if any.
pub fn on_record(store: &Store, config: &Config) -> Result<Option<Record>, StoreError> {
    let now: Vec<Value> = config.enabled_workers().map(|w| w.to_json()).collect();
    if now.is_empty() {
        return Ok(None);
    }
    let want = key(&now);
    newest_over(store, &want, |id, created_at, c| {
        Some(Record {
            run_id: id,
            measured_at: created_at,
            max_concurrency: c.max_concurrency,
            slo: c.slo,
            sentence: sentence(c),
        })
    })
}

/// The newest finished capacity run through the balancer over the pool
/// `want` (see [`key`]) for which `take` returns something.
fn newest_over<T>(
    store: &Store,
    want: &str,
    mut take: impl FnMut(i64, i64, &Capacity) -> Option<T>,
) -> Result<Option<T>, StoreError> {
    let mut runs = store.list_runs()?;
    runs.retain(|r| r.mode == "capacity" && r.target == "balancer" && !r.interrupted);
    for summary in runs.iter().rev() {
        let run = store.get_run(summary.id)?;
        let Some(c) = &run.capacity else { continue };
        let workers = run.config["workers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if key(&workers) != want {
            continue;
        }
        if let Some(found) = take(summary.id, summary.created_at, c) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The newest prediction for `measured` (a run over `subset` of `full`'s
/// enabled studios): the sum of what those studios served alone in the
/// newest capacity run over the whole pool, every studio measured.
pub fn check(
    store: &Store,
    full: &Config,
    subset: &[String],
    measured: &Capacity,
) -> Result<Option<Checked>, StoreError> {
    let all: Vec<Value> = full.enabled_workers().map(|w| w.to_json()).collect();
    let want = key(&all);
    newest_over(store, &want, |id, _, c| {
        // Only a run that measured every studio alone predicts a subset.
        let whole =
            c.per_studio.len() == all.len() && c.per_studio.iter().all(|s| s.error.is_none());
        if !whole {
            return None;
        }
        let predicted: usize = c
            .per_studio
            .iter()
            .filter(|s| subset.contains(&s.id))
            .map(|s| s.max_concurrency)
            .sum();
        Some(Checked {
            run_id: id,
            studios: subset.to_vec(),
            predicted,
            measured: measured.max_concurrency,
            error_pct: if predicted == 0 {
                0.0
            } else {
                (measured.max_concurrency as f64 - predicted as f64) / predicted as f64 * 100.0
            },
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pool_is_its_studios_models_and_slots_not_their_addresses_or_order() {
        let a =
            json!({"id": "mac-1", "host": "10.0.0.2", "model": "m", "max_concurrent_requests": 4});
        let b =
            json!({"id": "mac-2", "host": "10.0.0.3", "model": "m", "max_concurrent_requests": 2});
        let moved =
            json!({"id": "mac-1", "host": "10.0.0.9", "model": "m", "max_concurrent_requests": 4});
        assert_eq!(key(&[a.clone(), b.clone()]), key(&[b.clone(), moved]));
        let more_slots = json!({"id": "mac-2", "model": "m", "max_concurrent_requests": 3});
        assert_ne!(key(&[a.clone(), b.clone()]), key(&[a.clone(), more_slots]));
        let off =
            json!({"id": "mac-2", "model": "m", "max_concurrent_requests": 2, "enabled": false});
        assert_eq!(key(&[a.clone(), off]), key(&[a]));
    }
}
