//! `baton compare`: the user's single-vs-multiple speedup table, for any
//! number of runs, with a verdict per run.

use serde::Serialize;

use super::report::BenchResult;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    pub concurrency: usize,
    /// Requests/s per run (`None` where a run lacks this level).
    pub requests_per_second: Vec<Option<f64>>,
    /// Each run against the first (the first is always 1.0).
    pub speedup: Vec<Option<f64>>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Comparison {
    pub runs: Vec<String>,
    pub workers: Vec<usize>,
    pub rows: Vec<Row>,
    pub verdicts: Vec<String>,
}

fn workers_of(r: &BenchResult) -> usize {
    r.config
        .get("workers")
        .and_then(|w| w.as_array())
        .map(|a| a.len())
        .unwrap_or(1)
        .max(1)
}

fn best(r: &BenchResult) -> f64 {
    r.concurrency_benchmark
        .iter()
        .map(|l| l.requests_per_second)
        .fold(0.0, f64::max)
}

/// Compare runs level by level against the first.
pub fn compare(runs: &[(String, BenchResult)]) -> Comparison {
    let mut levels: Vec<usize> = runs
        .iter()
        .flat_map(|(_, r)| r.concurrency_benchmark.iter().map(|l| l.concurrency))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let rps = |r: &BenchResult, c: usize| {
        r.concurrency_benchmark
            .iter()
            .find(|l| l.concurrency == c)
            .map(|l| l.requests_per_second)
    };
    let rows = levels
        .iter()
        .map(|&c| {
            let values: Vec<Option<f64>> = runs.iter().map(|(_, r)| rps(r, c)).collect();
            let base = values[0];
            Row {
                concurrency: c,
                speedup: values
                    .iter()
                    .map(|v| match (base, v) {
                        (Some(b), Some(v)) if b > 0.0 => Some(v / b),
                        _ => None,
                    })
                    .collect(),
                requests_per_second: values,
            }
        })
        .collect();
    let (first_name, first) = &runs[0];
    let verdicts = runs
        .iter()
        .skip(1)
        .map(|(name, r)| {
            let (b0, b) = (best(first), best(r));
            if b0 <= 0.0 || b <= 0.0 {
                return format!("{name}: no successful requests to compare");
            }
            let speedup = b / b0;
            let (w0, w) = (workers_of(first), workers_of(r));
            let workers_ratio = w as f64 / w0 as f64;
            if speedup < 0.98 {
                format!(
                    "{name}: {speedup:.2}x, slower than {first_name}: see `baton preflight` (an unreachable or slow studio costs more than it adds)"
                )
            } else if w != w0 {
                format!(
                    "{name}: {speedup:.2}x with {w} workers vs {w0}: {:.0}% efficient",
                    100.0 * speedup / workers_ratio
                )
            } else {
                format!("{name}: {speedup:.2}x {first_name} with the same number of workers ({w})")
            }
        })
        .collect();
    Comparison {
        runs: runs.iter().map(|(n, _)| n.clone()).collect(),
        workers: runs.iter().map(|(_, r)| workers_of(r)).collect(),
        rows,
        verdicts,
    }
}

/// The table as text.
pub fn render(c: &Comparison) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "PERFORMANCE COMPARISON");
    let width = 14 + c.runs.len() * 18 + (c.runs.len() - 1) * 10;
    let _ = writeln!(out, "{}", "=".repeat(width));
    let _ = write!(out, "{:<12}", "Concurrency");
    for (name, w) in c.runs.iter().zip(&c.workers) {
        let _ = write!(out, "  {:>16}", format!("{} ({w}w) req/s", short(name)));
    }
    for name in c.runs.iter().skip(1) {
        let _ = write!(out, "  {:>8}", format!("x {}", short(name)));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", "-".repeat(width));
    for r in &c.rows {
        let _ = write!(out, "{:<12}", r.concurrency);
        for v in &r.requests_per_second {
            let _ = write!(
                out,
                "  {:>16}",
                v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
            );
        }
        for s in r.speedup.iter().skip(1) {
            let _ = write!(
                out,
                "  {:>8}",
                s.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into())
            );
        }
        let _ = writeln!(out);
    }
    for v in &c.verdicts {
        let _ = writeln!(out, "\n{v}");
    }
    out
}

fn short(name: &str) -> String {
    let base = std::path::Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name);
    base.chars().take(10).collect()
}
