//! The capacity in words and tables: the one sentence the terminal, the
//! dashboard and the report lead with, then the search and the what-ifs.

use std::fmt::Write;

use super::predict;
use crate::bench::report::{Capacity, LimitedBy, Slo, StudioCapacity};

/// `2000` -> "2 s", `1500` -> "1.5 s", `250` -> "250 ms".
pub fn duration_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        let s = format!("{:.2}", ms / 1000.0);
        format!("{} s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{ms:.0} ms")
    }
}

fn number(x: f64) -> String {
    let s = format!("{x:.1}");
    s.trim_end_matches(".0").to_string()
}

/// "first tokens under 2 s (p95) and 20 tok/s each".
pub fn service_level(slo: &Slo) -> String {
    let mut parts = Vec::new();
    if let Some(ms) = slo.ttft_p95_ms {
        parts.push(format!("first tokens under {} (p95)", duration_ms(ms)));
    }
    if let Some(t) = slo.tokens_per_s {
        parts.push(format!("{} tok/s each", number(t)));
    }
    if parts.is_empty() {
        "no more than 1% of requests failing".to_string()
    } else {
        parts.join(" and ")
    }
}

fn agents(n: usize) -> String {
    if n == 1 {
        "1 agent".into()
    } else {
        format!("{n} agents")
    }
}

/// The sentence that answers the user's question: "This pool serves 11
/// agents at once with first tokens under 2 s (p95) and 20 tok/s each;
/// limited by time to first token".
pub fn sentence(c: &Capacity) -> String {
    let level = service_level(&c.slo);
    match (c.max_concurrency, c.limited_by) {
        (0, l) => format!(
            "This pool cannot serve even 1 agent with {level}; limited by {}",
            l.unwrap_or(LimitedBy::Errors).words()
        ),
        (n, Some(LimitedBy::SearchCeiling)) => format!(
            "This pool serves at least {} at once with {level}; nothing missed it up to the search's ceiling",
            agents(n)
        ),
        (n, l) => format!(
            "This pool serves {} at once with {level}; limited by {}",
            agents(n),
            l.map(LimitedBy::words).unwrap_or("nothing measured")
        ),
    }
}

/// The limits missed at a point, in words ("-" when it meets).
pub fn misses(p: &crate::bench::report::CapacityPoint) -> String {
    if p.meets {
        return "-".into();
    }
    p.misses
        .iter()
        .map(|m| match m {
            LimitedBy::TtftP95 => "TTFT",
            LimitedBy::TokensPerS => "tok/s",
            LimitedBy::Errors => "errors",
            LimitedBy::SearchCeiling => "ceiling",
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole capacity for the terminal: the sentence, the search's points
/// (by concurrency), each studio alone, the what-ifs.
pub fn render(c: &Capacity) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "\n{}.", sentence(c));
    let _ = writeln!(o, "\nCapacity search ({})", service_level(&c.slo));
    let _ = writeln!(
        o,
        "  {:>11} {:>6} {:>12} {:>10} {:>8} {:>10} {:>8}  missed",
        "concurrency", "meets", "TTFT p95 ms", "tok/s p50", "req/s", "goodput/s", "answers",
    );
    let mut points = c.points.clone();
    points.sort_by_key(|p| p.concurrency);
    for p in &points {
        let _ = writeln!(
            o,
            "  {:>11} {:>6} {:>12.0} {:>10.1} {:>8.2} {:>10.2} {:>8}  {}",
            p.concurrency,
            if p.meets { "yes" } else { "no" },
            p.ttft_p95_ms,
            p.tokens_per_s_p50,
            p.rps,
            p.goodput_rps,
            p.requests,
            misses(p)
        );
    }
    if !c.per_studio.is_empty() {
        studios(&mut o, &c.per_studio);
    }
    if let Some(p) = &c.predicted {
        let _ = writeln!(o, "\nPredicted from the studios alone");
        let _ = writeln!(
            o,
            "  {:<28} {:>10} {:>10.2} goodput/s   measured {} ({:+.0}%)",
            "this pool",
            agents(p.max_concurrency),
            p.goodput_rps,
            c.max_concurrency,
            p.error_pct
        );
        for w in &c.what_if {
            let _ = writeln!(
                o,
                "  {:<28} {:>10} {:>10.2} goodput/s",
                w.change.to_string(),
                agents(w.max_concurrency),
                w.goodput_rps
            );
        }
    }
    if let Some(line) = least_line(c) {
        let _ = writeln!(o, "{line}");
    }
    if let Some(line) = checked_line(c) {
        let _ = writeln!(o, "{line}");
    }
    for w in &c.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    o
}

fn studios(o: &mut String, per_studio: &[StudioCapacity]) {
    let _ = writeln!(o, "\nEach studio alone (the same service level)");
    let _ = writeln!(
        o,
        "  {:<20} {:>5} {:>7} {:>11} {:>10}  limited by",
        "studio", "slots", "agents", "agents/slot", "goodput/s"
    );
    for s in per_studio {
        match &s.error {
            Some(e) => {
                let _ = writeln!(o, "  {:<20} not measured: {e}", s.id);
            }
            None => {
                let _ = writeln!(
                    o,
                    "  {:<20} {:>5} {:>7} {:>11.2} {:>10.2}  {}",
                    s.id,
                    s.slots,
                    s.max_concurrency,
                    predict::per_slot(s),
                    s.goodput_rps,
                    s.limited_by.map(LimitedBy::words).unwrap_or("-")
                );
            }
        }
    }
}

/// "mac-3 adds least per slot: 0.50 agents and 0.40 good answers/s per
/// slot (mac-1: 1.00 and 1.20)."
pub fn least_line(c: &Capacity) -> Option<String> {
    let id = c.least_per_slot.as_ref()?;
    let least = c.per_studio.iter().find(|s| &s.id == id)?;
    let goodput = |s: &StudioCapacity| s.goodput_rps / f64::from(s.slots.max(1));
    let best = c.per_studio.iter().max_by(|a, b| {
        predict::per_slot(a)
            .total_cmp(&predict::per_slot(b))
            .then(goodput(a).total_cmp(&goodput(b)))
    })?;
    Some(format!(
        "{id} adds least per slot: {:.2} agents and {:.2} good answers/s per slot ({}: {:.2} and {:.2}).",
        predict::per_slot(least),
        goodput(least),
        best.id,
        predict::per_slot(best),
        goodput(best)
    ))
}

/// "Run 3 predicted 12 agents for mac-1, mac-3 (each alone, summed):
/// measured 13 (+8%)."
pub fn checked_line(c: &Capacity) -> Option<String> {
    let k = c.checked.as_ref()?;
    Some(format!(
        "Run {} predicted {} for {} (each alone, summed): measured {} ({:+.0}%).",
        k.run_id,
        agents(k.predicted),
        k.studios.join(", "),
        k.measured,
        k.error_pct
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentence_says_how_many_agents_under_which_level_and_what_limits() {
        let c = Capacity {
            slo: Slo {
                ttft_p95_ms: Some(2000.0),
                tokens_per_s: Some(20.0),
            },
            max_concurrency: 11,
            limited_by: Some(LimitedBy::TtftP95),
            ..Capacity::default()
        };
        assert_eq!(
            sentence(&c),
            "This pool serves 11 agents at once with first tokens under 2 s (p95) and 20 tok/s each; limited by time to first token"
        );
        let none = Capacity {
            max_concurrency: 0,
            limited_by: Some(LimitedBy::TokensPerS),
            slo: Slo {
                ttft_p95_ms: Some(1500.0),
                tokens_per_s: None,
            },
            ..Capacity::default()
        };
        assert_eq!(
            sentence(&none),
            "This pool cannot serve even 1 agent with first tokens under 1.5 s (p95); limited by tokens per second per answer"
        );
        assert_eq!(duration_ms(250.0), "250 ms");
        assert_eq!(duration_ms(2250.0), "2.25 s");
    }
}
