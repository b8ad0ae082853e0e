//! The verdict block printed after the tables.

use std::fmt::Write;

use super::facts::{fmt_s, pct};
use crate::bench::report::Diagnosis;

/// The verdict block printed after the tables.
pub fn render(d: &Diagnosis) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nDiagnosis: {}", d.verdict);
    let _ = writeln!(out, "  {}", d.headline);
    if !d.waterfall.is_empty() {
        let parts: Vec<String> = d
            .waterfall
            .iter()
            .map(|w| {
                format!(
                    "{} {:.2} req/s ({})",
                    w.label,
                    w.requests_per_second,
                    pct(w.share)
                )
            })
            .collect();
        let _ = writeln!(out, "  missing: {}", parts.join("; "));
    }
    if let Some(t) = &d.time_split {
        let mut parts = Vec::new();
        if let Some(v) = t.baton_queue_ms.filter(|v| *v >= 1.0) {
            parts.push(format!("Baton queue {}", fmt_s(v)));
        }
        for (name, v) in [
            ("outside the studio's timings", t.outside_ms),
            ("studio queue", t.queue_ms),
            ("model load", t.load_ms),
            ("prefill", t.prefill_ms),
            ("decode", t.decode_ms),
        ] {
            if let Some(v) = v {
                parts.push(format!("{name} {}", fmt_s(v)));
            }
        }
        let _ = writeln!(
            out,
            "  time per request at concurrency {}: {}{} ({})",
            t.concurrency,
            // A pool's split always has it (the diagnosis sets it).
            fmt_s(t.total_ms.unwrap_or_default()),
            t.ttft_ms
                .map(|v| format!(", first token {}", fmt_s(v)))
                .unwrap_or_default(),
            match &t.source {
                Some(s) if !parts.is_empty() => format!("{}; from {s}", parts.join(", ")),
                _ if !parts.is_empty() => format!("{}; client-side only", parts.join(", ")),
                _ => "client-side only: the studios do not report their timings".to_string(),
            }
        );
    }
    for f in &d.findings {
        let _ = writeln!(
            out,
            "  {:<8} {}{}: {}",
            f.severity.as_str().to_uppercase(),
            f.cause.as_str(),
            f.worker
                .as_ref()
                .map(|w| format!(" [{w}]"))
                .unwrap_or_default(),
            f.evidence
        );
        let _ = writeln!(out, "           fix: {}", f.remedy);
    }
    out
}
