//! The built-in simulated pool: what stands in for studios when there is
//! no workers file (or with `--simulate N`), so everything can be tried at
//! once.

use std::path::PathBuf;
use std::time::Duration;

use super::{EngineError, Pool, Source};

/// The built-in simulated pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimProfile {
    /// Two bigger studios and a smaller one, so balancing shows (serve,
    /// dashboard).
    Mixed,
    /// Identical studios, so a scaling sweep shows clean 1x/2x/3x (bench).
    Uniform,
}

/// Models of the demo pool besides the default one (loaded everywhere, so
/// balancing shows): one loaded on two studios, one on a single studio,
/// and one every studio has on disk but none in memory.
pub const DEMO_MODELS: [&str; 3] = ["qwen3-14b", "llama-3.1-8b", "gemma-3-12b"];

/// The demo pool: two bigger studios and a smaller one, so balancing shows,
/// with a mix of loaded and cold models for the Models view.
pub fn demo_studio(i: usize) -> crate::sim::SimConfig {
    let (slots, tps) = if i % 3 == 2 { (2, 20.0) } else { (4, 40.0) };
    let default = crate::sim::DEFAULT_MODEL;
    let [two, one, cold] = DEMO_MODELS;
    let loaded = match i % 3 {
        0 => vec![default, two],
        1 => vec![default, one],
        _ => vec![default, two],
    };
    let models = [default, two, one, cold];
    crate::sim::SimConfig {
        slots,
        tokens_per_second: tps,
        ttft: Duration::from_millis(200),
        seed: i as u64 + 1,
        models: models.iter().map(|m| m.to_string()).collect(),
        loaded: Some(loaded.iter().map(|m| m.to_string()).collect()),
        // What a load of a mid-size model from an SSD takes.
        model_load_ms: DEMO_MODELS.iter().map(|m| (m.to_string(), 6_000)).collect(),
        ..crate::sim::SimConfig::default()
    }
}

/// Identical studios, so the scaling sweep shows clean 1x/2x/3x.
pub fn uniform_studio(i: usize) -> crate::sim::SimConfig {
    crate::sim::SimConfig {
        slots: 4,
        tokens_per_second: 80.0,
        ttft: Duration::from_millis(100),
        seed: i as u64 + 1,
        ..crate::sim::SimConfig::default()
    }
}

pub(super) async fn simulated_pool(
    n: usize,
    path: Option<PathBuf>,
    profile: SimProfile,
) -> Result<Pool, EngineError> {
    let studio = match profile {
        SimProfile::Mixed => demo_studio,
        SimProfile::Uniform => uniform_studio,
    };
    let (config, sims) = crate::sim::start_pool((0..n).map(studio).collect())
        .await
        .map_err(|e| EngineError::Other(format!("cannot start simulated studios: {e}")))?;
    Ok(Pool {
        config,
        source: Source::Simulated { path },
        sims,
    })
}
