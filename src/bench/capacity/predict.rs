//! What each studio is worth: the pool's capacity predicted from each
//! studio's capacity alone, under the same service level.
//!
//! The model is the sum. Baton gives a studio no more requests than it
//! runs and keeps the rest in one queue, so the pool serves its slots at
//! once like its studios do alone; beyond them a request waits for the
//! first slot to free, and both the pool's rate of freed slots and the
//! agents each studio adds within the level are sums over the studios
//! (closed loop, Little's law: agents = rate x (answer + allowed wait)).
//! It holds while Baton spreads the load over every studio, which it does
//! unless a studio is so slow that waiting for a faster one is quicker
//! (the hold-back): such a studio adds less in the pool than alone, and
//! the prediction errs high by its part.

use crate::bench::report::{Change, Prediction, StudioCapacity, WhatIf};

/// The sum of the studios' capacities alone: (agents, goodput/s).
pub fn sum(studios: &[&StudioCapacity]) -> (usize, f64) {
    (
        studios.iter().map(|s| s.max_concurrency).sum(),
        studios.iter().map(|s| s.goodput_rps).sum(),
    )
}

/// The pool without each studio, then with one more like each. Empty when
/// a studio could not be measured (the sums would leave it out).
pub fn what_if(studios: &[StudioCapacity]) -> Vec<WhatIf> {
    if studios.is_empty() || studios.iter().any(|s| s.error.is_some()) {
        return Vec::new();
    }
    let all: Vec<&StudioCapacity> = studios.iter().collect();
    let (agents, goodput) = sum(&all);
    let without = studios.iter().map(|s| WhatIf {
        change: Change::Without(s.id.clone()),
        max_concurrency: agents - s.max_concurrency,
        goodput_rps: (goodput - s.goodput_rps).max(0.0),
    });
    let plus = studios.iter().map(|s| WhatIf {
        change: Change::PlusOneLike(s.id.clone()),
        max_concurrency: agents + s.max_concurrency,
        goodput_rps: goodput + s.goodput_rps,
    });
    without.chain(plus).collect()
}

/// The prediction for the whole pool against the measured capacity.
pub fn prediction(studios: &[StudioCapacity], measured: usize) -> Option<Prediction> {
    if studios.is_empty() || studios.iter().any(|s| s.error.is_some()) {
        return None;
    }
    let all: Vec<&StudioCapacity> = studios.iter().collect();
    let (agents, goodput) = sum(&all);
    Some(Prediction {
        max_concurrency: agents,
        goodput_rps: goodput,
        error_pct: if agents == 0 {
            if measured == 0 { 0.0 } else { 100.0 }
        } else {
            (measured as f64 - agents as f64) / agents as f64 * 100.0
        },
    })
}

/// Agents a studio adds per declared slot.
pub fn per_slot(s: &StudioCapacity) -> f64 {
    s.max_concurrency as f64 / f64::from(s.slots.max(1))
}

/// The studio that adds least per declared slot: the fewest agents per
/// slot, or, where every studio serves about as many agents per slot (a
/// first-token limit counts slots, not speed), the least goodput per slot.
/// None when every studio adds about as much (within 5%) by both, or a
/// studio could not be measured.
pub fn least_per_slot(studios: &[StudioCapacity]) -> Option<String> {
    if studios.len() < 2 || studios.iter().any(|s| s.error.is_some()) {
        return None;
    }
    let goodput_per_slot = |s: &StudioCapacity| s.goodput_rps / f64::from(s.slots.max(1));
    let spread = |f: &dyn Fn(&StudioCapacity) -> f64| {
        let best = studios.iter().map(f).fold(0.0, f64::max);
        let worst = studios.iter().map(f).fold(f64::INFINITY, f64::min);
        worst < best * 0.95
    };
    let least = |f: &dyn Fn(&StudioCapacity) -> f64| {
        studios
            .iter()
            .min_by(|a, b| f(a).total_cmp(&f(b)))
            .map(|s| s.id.clone())
    };
    if spread(&per_slot) {
        least(&|s| per_slot(s) + goodput_per_slot(s) * 1e-9)
    } else if spread(&goodput_per_slot) {
        least(&goodput_per_slot)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn studio(id: &str, slots: u32, agents: usize, goodput: f64) -> StudioCapacity {
        StudioCapacity {
            id: id.into(),
            slots,
            max_concurrency: agents,
            goodput_rps: goodput,
            ..StudioCapacity::default()
        }
    }

    #[test]
    fn dropping_or_adding_a_studio_takes_or_adds_what_it_serves_alone() {
        let s = vec![
            studio("mac-1", 4, 4, 10.0),
            studio("mac-2", 4, 4, 10.0),
            studio("mac-3", 4, 2, 3.0),
        ];
        let w = what_if(&s);
        let find = |c: Change| w.iter().find(|x| x.change == c).unwrap().clone();
        let without = find(Change::Without("mac-3".into()));
        assert_eq!((without.max_concurrency, without.goodput_rps), (8, 20.0));
        let plus = find(Change::PlusOneLike("mac-1".into()));
        assert_eq!((plus.max_concurrency, plus.goodput_rps), (14, 33.0));
        assert_eq!(w.len(), 6);
        assert_eq!(least_per_slot(&s).as_deref(), Some("mac-3"));
        let even = vec![studio("a", 4, 4, 2.0), studio("b", 2, 2, 1.0)];
        assert_eq!(least_per_slot(&even), None, "each adds as much per slot");
        let slower = vec![studio("a", 4, 4, 2.0), studio("b", 2, 2, 0.5)];
        assert_eq!(
            least_per_slot(&slower).as_deref(),
            Some("b"),
            "as many agents per slot, less goodput"
        );
        let p = prediction(&s, 11).unwrap();
        assert_eq!(p.max_concurrency, 10);
        assert!((p.error_pct - 10.0).abs() < 1e-9);
    }

    #[test]
    fn a_studio_that_could_not_be_measured_leaves_no_prediction() {
        let mut s = vec![studio("a", 2, 2, 1.0), studio("b", 2, 2, 1.0)];
        s[1].error = Some("connection refused".into());
        assert!(what_if(&s).is_empty());
        assert!(prediction(&s, 2).is_none());
        assert!(least_per_slot(&s).is_none());
    }
}
