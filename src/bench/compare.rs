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

/// A run against the baseline in the user's words: "6% slower",
/// "1.6x faster".
pub fn status(speedup: f64) -> String {
    if speedup < 0.995 {
        format!("{:.0}% slower", 100.0 * (1.0 - speedup))
    } else if speedup < 1.005 {
        "same".into()
    } else if speedup < 1.5 {
        format!("{:.0}% faster", 100.0 * (speedup - 1.0))
    } else {
        format!("{speedup:.1}x faster")
    }
}

/// The table as text, with the user's column names: each later run's
/// **Speedup** over the first and its **Status**.
pub fn render(c: &Comparison) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // One run against the baseline needs no name in its headers.
    let named = |what: &str, name: &str| {
        if c.runs.len() == 2 {
            what.to_string()
        } else {
            format!("{what} ({})", short(name))
        }
    };
    let later: Vec<(String, String)> = c
        .runs
        .iter()
        .skip(1)
        .map(|n| (named("Speedup", n), named("Status", n)))
        .collect();
    let widths: Vec<(usize, usize)> = later
        .iter()
        .map(|(s, t)| (s.len().max(8), t.len().max(12)))
        .collect();
    let heads: Vec<String> = c
        .runs
        .iter()
        .zip(&c.workers)
        .map(|(name, w)| format!("{} ({w}w) req/s", short(name)))
        .collect();
    let _ = writeln!(out, "PERFORMANCE COMPARISON");
    let width = 12
        + heads.iter().map(|h| h.len() + 2).sum::<usize>()
        + widths.iter().map(|(s, t)| s + t + 4).sum::<usize>();
    let _ = writeln!(out, "{}", "=".repeat(width));
    // Rows are built whole so the last column's padding can go.
    let mut line = format!("{:<12}", "Concurrency");
    for h in &heads {
        let _ = write!(line, "  {h}");
    }
    for ((s, t), (ws, wt)) in later.iter().zip(&widths) {
        let _ = write!(line, "  {s:>ws$}  {t:<wt$}");
    }
    let _ = writeln!(out, "{}", line.trim_end());
    let _ = writeln!(out, "{}", "-".repeat(width));
    for r in &c.rows {
        let mut line = format!("{:<12}", r.concurrency);
        for (v, h) in r.requests_per_second.iter().zip(&heads) {
            let v = v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
            let _ = write!(line, "  {v:>w$}", w = h.len());
        }
        for (s, (ws, wt)) in r.speedup.iter().skip(1).zip(&widths) {
            let (speed, word) = match s {
                Some(v) => (format!("{v:.2}x"), status(*v)),
                None => ("-".into(), "-".into()),
            };
            let _ = write!(line, "  {speed:>ws$}  {word:<wt$}");
        }
        let _ = writeln!(out, "{}", line.trim_end());
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

#[cfg(test)]
mod tests {
    use super::status;

    #[test]
    fn a_run_against_the_baseline_reads_in_the_users_words() {
        assert_eq!(status(0.94), "6% slower");
        assert_eq!(status(1.0), "same");
        assert_eq!(status(1.12), "12% faster");
        assert_eq!(status(1.6), "1.6x faster");
    }
}
