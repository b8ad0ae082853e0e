//! The search itself, apart from how a point is measured: double the
//! concurrency until a point misses the service level, then bisect between
//! the last that met it and the first that did not. A pool whose latency
//! only grows with load needs about 2 log2(capacity) points, where a fixed
//! sweep of the same resolution needs one per concurrency.

use std::future::Future;

use crate::bench::report::{CapacityPoint, LimitedBy};

/// What a search found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Searched {
    /// In the order measured.
    pub points: Vec<CapacityPoint>,
    /// The largest concurrency that met the level (0: not even one).
    pub max_concurrency: usize,
    /// The first limit missed at the smallest concurrency that missed;
    /// `SearchCeiling` when none did up to the ceiling.
    pub limited_by: Option<LimitedBy>,
    /// Stopped before the end (cancelled): the figures are a lower bound.
    pub cancelled: bool,
}

impl Searched {
    /// The point measured at the capacity, if any.
    pub fn at_capacity(&self) -> Option<&CapacityPoint> {
        self.points
            .iter()
            .find(|p| p.concurrency == self.max_concurrency && p.meets)
    }
}

/// Search up to `ceiling` agents; `measure(c)` measures concurrency `c`
/// (`None`: cancelled). Each concurrency is measured once.
pub async fn search<F, Fut>(ceiling: usize, mut measure: F) -> Searched
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Option<CapacityPoint>>,
{
    let ceiling = ceiling.max(1);
    let mut out = Searched::default();
    // `lo` met the level, `hi` did not (None: nothing missed yet).
    let (mut lo, mut hi) = (0usize, None::<usize>);
    let mut c = 1usize;
    loop {
        let Some(p) = measure(c).await else {
            out.cancelled = true;
            break;
        };
        let met = p.meets;
        let miss = p.misses.first().copied();
        out.points.push(p);
        if met {
            lo = c;
        } else {
            hi = Some(c);
            out.limited_by = miss;
        }
        c = match hi {
            // Doubling: up to the ceiling, which is tried itself last.
            None if c >= ceiling => {
                out.limited_by = Some(LimitedBy::SearchCeiling);
                break;
            }
            None => (c * 2).min(ceiling),
            // Bisecting: the gap is one, or nothing met at 1.
            Some(h) if h - lo <= 1 => break,
            Some(h) => lo + (h - lo) / 2,
        };
    }
    out.max_concurrency = lo;
    out
}

/// Every concurrency from 1 to `to`, as a fixed sweep of the same
/// resolution would measure them (the benchmark's reference): the capacity
/// is the last one before the first miss.
pub async fn sweep<F, Fut>(to: usize, mut measure: F) -> Searched
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Option<CapacityPoint>>,
{
    let mut out = Searched::default();
    for c in 1..=to.max(1) {
        let Some(p) = measure(c).await else {
            out.cancelled = true;
            break;
        };
        if p.meets && out.limited_by.is_none() {
            out.max_concurrency = c;
        } else if !p.meets && out.limited_by.is_none() {
            out.limited_by = p.misses.first().copied();
        }
        out.points.push(p);
    }
    if out.limited_by.is_none() && !out.cancelled {
        out.limited_by = Some(LimitedBy::SearchCeiling);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool that meets the level up to `capacity` agents and then misses
    /// its time to first token.
    fn pool(capacity: usize) -> impl FnMut(usize) -> std::future::Ready<Option<CapacityPoint>> {
        move |c| {
            let meets = c <= capacity;
            std::future::ready(Some(CapacityPoint {
                concurrency: c,
                meets,
                misses: if meets {
                    vec![]
                } else {
                    vec![LimitedBy::TtftP95]
                },
                ..CapacityPoint::default()
            }))
        }
    }

    fn concurrencies(s: &Searched) -> Vec<usize> {
        s.points.iter().map(|p| p.concurrency).collect()
    }

    #[tokio::test]
    async fn the_search_doubles_then_bisects_to_the_exact_capacity() {
        let s = search(1024, pool(11)).await;
        assert_eq!(s.max_concurrency, 11);
        assert_eq!(s.limited_by, Some(LimitedBy::TtftP95));
        assert_eq!(concurrencies(&s), vec![1, 2, 4, 8, 16, 12, 10, 11]);
        assert_eq!(s.at_capacity().unwrap().concurrency, 11);
        for capacity in [1, 2, 3, 7, 8, 9, 100, 255, 256, 257] {
            let s = search(4096, pool(capacity)).await;
            assert_eq!(s.max_concurrency, capacity, "{:?}", concurrencies(&s));
            // About two points per power of two, never more than one per value.
            let log = (capacity as f64).log2().ceil() as usize;
            assert!(s.points.len() <= 2 * log + 2, "{:?}", concurrencies(&s));
            let mut seen = concurrencies(&s);
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), s.points.len(), "a point measured twice");
        }
    }

    #[tokio::test]
    async fn a_pool_that_cannot_serve_one_agent_has_capacity_zero() {
        let s = search(64, pool(0)).await;
        assert_eq!((s.max_concurrency, concurrencies(&s)), (0, vec![1]));
        assert_eq!(s.limited_by, Some(LimitedBy::TtftP95));
        assert!(s.at_capacity().is_none());
    }

    #[tokio::test]
    async fn a_pool_that_never_misses_stops_at_the_ceiling_and_says_so() {
        let s = search(20, pool(1000)).await;
        assert_eq!(s.max_concurrency, 20);
        assert_eq!(concurrencies(&s), vec![1, 2, 4, 8, 16, 20]);
        assert_eq!(s.limited_by, Some(LimitedBy::SearchCeiling));
    }

    #[tokio::test]
    async fn a_cancelled_search_keeps_what_it_measured() {
        let mut inner = pool(11);
        let s = search(64, |c| {
            let p = inner(c);
            async move { if c > 8 { None } else { p.await } }
        })
        .await;
        assert!(s.cancelled);
        assert_eq!(
            (s.max_concurrency, concurrencies(&s)),
            (8, vec![1, 2, 4, 8])
        );
    }

    #[tokio::test]
    async fn a_fixed_sweep_of_the_same_resolution_finds_the_same_capacity_in_more_points() {
        let searched = search(64, pool(11)).await;
        let swept = sweep(16, pool(11)).await;
        assert_eq!(swept.max_concurrency, searched.max_concurrency);
        assert_eq!(swept.limited_by, Some(LimitedBy::TtftP95));
        assert_eq!(swept.points.len(), 16);
        assert!(searched.points.len() < swept.points.len());
    }
}
