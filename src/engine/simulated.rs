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

/// The demo pool: two bigger studios and a smaller one, so balancing shows.
pub fn demo_studio(i: usize) -> crate::sim::SimConfig {
    let (slots, tps) = if i % 3 == 2 { (2, 20.0) } else { (4, 40.0) };
    crate::sim::SimConfig {
        slots,
        tokens_per_second: tps,
        ttft: Duration::from_millis(200),
        seed: i as u64 + 1,
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
