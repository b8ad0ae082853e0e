//! `baton bench --mode capacity`: the most agents (requests at once) the
//! pool serves within a service level (time to first token at p95, tokens
//! per second per answer, and no more than 1% failures), found by search;
//! each studio's own capacity alone under the same level; and from those,
//! what the pool would serve without a studio or with one more like it.
//!
//! - `chart`: the search drawn (in `crate::chart`'s list)
//! - `drive`: the studios alone, then the pool, within a bench run
//! - `search`: double, then bisect (and the fixed sweep it is measured
//!   against in `benches/capacity.rs`)
//! - `point`: one concurrency, measured and judged
//! - `predict`: the what-ifs from the studios alone
//! - `render`: the sentence and the tables
//! - `record`: the capacity on record for the pool now (the headroom gauge)

pub mod chart;
pub mod drive;
pub mod point;
pub mod predict;
pub mod record;
pub mod render;
pub mod search;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::load::Progress;
use super::report::{Capacity, Slo, StudioCapacity};
use super::run::Observer;
pub use point::{Length, Target};
pub use render::{render, sentence};
pub use search::{Searched, search, sweep};

/// The service level when none is given: first tokens within 2 s for 95
/// of 100 requests (an agent's user notices a longer wait), and 20 tokens
/// a second per answer (faster than anyone reads).
pub const DEFAULT_SLO: Slo = Slo {
    ttft_p95_ms: Some(2000.0),
    tokens_per_s: Some(20.0),
};

/// The search stops doubling here: this many agents per declared slot
/// (a level that allows that much queueing is not much of a level).
pub const AGENTS_PER_SLOT_CEILING: usize = 8;

/// The highest concurrency worth trying for `slots` declared slots.
pub fn ceiling(slots: u32) -> usize {
    (slots.max(1) as usize * AGENTS_PER_SLOT_CEILING).clamp(8, 4096)
}

/// A random start for the points' prompt seeds: two runs never send the
/// same prompts, so neither finds the other's answers cached.
pub fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// "meets: TTFT p95 210 ms, 100.0 tok/s per answer, 8.21 req/s".
pub fn summary(p: &crate::bench::report::CapacityPoint) -> String {
    format!(
        "{}: TTFT p95 {:.0} ms, {:.1} tok/s per answer, {:.2} req/s ({} answers{})",
        if p.meets {
            "meets".to_string()
        } else {
            format!("misses {}", render::misses(p))
        },
        p.ttft_p95_ms,
        p.tokens_per_s_p50,
        p.rps,
        p.requests,
        if p.failed > 0 {
            format!(", {} failed", p.failed)
        } else {
            String::new()
        }
    )
}

/// Search the pool (through `target`) with progress; warnings for points
/// too short for their p95.
pub async fn measure_pool(
    target: &Target,
    length: Length,
    slo: &Slo,
    ceiling: usize,
    obs: &Arc<dyn Observer>,
    cancel: &CancellationToken,
) -> (Searched, Vec<String>) {
    let client = super::load::client();
    let base = seed();
    let mut warnings = Vec::new();
    let mut n = 0u64;
    let searched = search(ceiling, |c| {
        n += 1;
        let (client, target, slo, obs, seed) = (&client, target, *slo, obs.clone(), base ^ n);
        async move {
            let label = format!("capacity: concurrency {c}");
            obs.level_started(&label, length.requests(c), length.duration);
            let o = obs.clone();
            let progress: Progress = Arc::new(move |ok, failed| o.progress(ok, failed));
            let p = tokio::select! {
                p = point::measure(client, target, length, &slo, c, seed, Some(progress)) => p,
                _ = cancel.cancelled() => return None,
            };
            obs.level_finished(&label, &summary(&p));
            Some(p)
        }
    })
    .await;
    warnings.extend(
        searched
            .points
            .iter()
            .filter_map(|p| point::too_few(p, "the pool")),
    );
    (searched, warnings)
}

/// One studio's capacity alone from its search.
pub fn studio(id: &str, slots: u32, s: Searched) -> StudioCapacity {
    StudioCapacity {
        id: id.to_string(),
        slots,
        max_concurrency: s.max_concurrency,
        goodput_rps: s.at_capacity().map(|p| p.goodput_rps).unwrap_or(0.0),
        limited_by: s.limited_by,
        error: s.cancelled.then(|| "the search was cut short".to_string()),
        points: s.points,
    }
}

/// The capacity as the results file keeps it.
pub fn assemble(
    slo: Slo,
    pool: Searched,
    per_studio: Vec<StudioCapacity>,
    mut warnings: Vec<String>,
) -> Capacity {
    let at = pool.at_capacity().cloned().unwrap_or_default();
    if pool.cancelled {
        warnings.push(
            "the search was interrupted: the capacity is a lower bound (the last point that met the level)"
                .into(),
        );
    }
    Capacity {
        slo,
        max_concurrency: pool.max_concurrency,
        goodput_rps: at.goodput_rps,
        tokens_per_s: at.output_tokens_per_s,
        limited_by: pool.limited_by,
        what_if: predict::what_if(&per_studio),
        predicted: predict::prediction(&per_studio, pool.max_concurrency),
        least_per_slot: predict::least_per_slot(&per_studio),
        checked: None,
        points: pool.points,
        per_studio,
        warnings,
    }
}
