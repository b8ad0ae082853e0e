//! The capacity search's charts, defined once for the files, the API and
//! the report: time to first token (p95) and each answer's tokens per
//! second against concurrency, with the service level's line and the
//! capacity found.

use crate::bench::report::BenchResult;
use crate::chart::{Chart, LineChart, Series};

/// The capacity search: time to first token (p95) and each answer's
/// tokens per second against concurrency, with the service level's line
/// and the capacity found.
pub(crate) fn charts(runs: &[(String, &BenchResult)]) -> Vec<(Chart, String)> {
    let with: Vec<(&String, &crate::bench::report::Capacity)> = runs
        .iter()
        .filter_map(|(n, r)| r.capacity.as_ref().map(|c| (n, c)))
        .filter(|(_, c)| !c.points.is_empty())
        .collect();
    let Some((_, first)) = with.first() else {
        return Vec::new();
    };
    let x_max = with
        .iter()
        .flat_map(|(_, c)| c.points.iter().map(|p| p.concurrency))
        .max()
        .unwrap_or(1) as f64;
    let many = with.len() > 1;
    let chart = |name: &str,
                 title: &str,
                 y_label: &str,
                 limit: Option<f64>,
                 limit_name: String,
                 y: &dyn Fn(&crate::bench::report::CapacityPoint) -> f64| {
        let mut series: Vec<Series> = with
            .iter()
            .map(|(run, c)| {
                let mut points = c.points.clone();
                points.sort_by_key(|p| p.concurrency);
                Series {
                    name: if many {
                        (*run).clone()
                    } else {
                        "measured".into()
                    },
                    labels: points
                        .iter()
                        .map(|p| if p.meets { "" } else { "miss" }.to_string())
                        .collect(),
                    points: points
                        .iter()
                        .map(|p| (p.concurrency as f64, y(p)))
                        .collect(),
                    dashed: false,
                }
            })
            .collect();
        if let Some(l) = limit {
            series.push(Series {
                name: limit_name,
                points: vec![(1.0, l), (x_max, l)],
                dashed: true,
                labels: vec![],
            });
        }
        let top = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max);
        if !many {
            let n = first.max_concurrency as f64;
            series.push(Series {
                name: match first.max_concurrency {
                    1 => "capacity: 1 agent".to_string(),
                    n => format!("capacity: {n} agents"),
                },
                points: vec![(n, 0.0), (n, top)],
                dashed: true,
                labels: vec![],
            });
        }
        (
            Chart::Lines(LineChart {
                title: title.into(),
                x_label: "agents (concurrent requests)".into(),
                x_integer: true,
                y_label: y_label.into(),
                series,
            }),
            name.to_string(),
        )
    };
    vec![
        chart(
            "capacity_ttft",
            "Capacity search: time to first token (p95)",
            "first token, p95 (ms)",
            first.slo.ttft_p95_ms,
            "service level".into(),
            &|p| p.ttft_p95_ms,
        ),
        chart(
            "capacity_tps",
            "Capacity search: tokens per second per answer (median)",
            "tokens/s per answer",
            first.slo.tokens_per_s,
            "service level".into(),
            &|p| p.tokens_per_s_p50,
        ),
    ]
}
