//! `baton report`: one run as a single HTML file to send to someone, with
//! everything inline (styles and SVG charts) and a content policy that
//! forbids the page any request, so it reads the same offline, from a mail
//! attachment or a file share.

use std::fmt::Write;

use serde_json::Value;

use super::capacity::render as words;
use super::report::{BenchResult, Capacity, LimitedBy};

/// The page forbids itself every fetch: no script, font, image or style
/// from anywhere (inline styles and `data:` images only).
const POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

const STYLE: &str = "body{font:15px/1.45 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;\
color:#1d1d1f;max-width:1100px;margin:24px auto;padding:0 20px}\
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd;\
padding-bottom:4px}.meta{color:#555}.answer{font-size:18px;background:#eef6ee;border-left:4px solid \
#2e7d32;padding:10px 14px}table{border-collapse:collapse;margin:8px 0}th,td{padding:3px 10px;\
text-align:right;border-bottom:1px solid #eee}th:first-child,td:first-child{text-align:left}\
th{background:#f5f5f7}.miss{color:#b71c1c}pre{background:#f5f5f7;padding:10px;overflow-x:auto;\
font-size:13px}figure{margin:16px 0}figure svg{max-width:100%;height:auto}.warn{color:#8a5a00}";

/// Text as HTML.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A table: header cells, then rows of cells already escaped.
fn table(o: &mut String, head: &[&str], rows: &[Vec<String>]) {
    o.push_str("<table><tr>");
    for h in head {
        let _ = write!(o, "<th>{}</th>", escape(h));
    }
    o.push_str("</tr>");
    for r in rows {
        o.push_str("<tr>");
        for c in r {
            let _ = write!(o, "<td>{c}</td>");
        }
        o.push_str("</tr>");
    }
    o.push_str("</table>");
}

/// The whole report of run `name`.
pub fn render(name: &str, r: &BenchResult) -> anyhow::Result<String> {
    let charts = crate::chart::render_all(&[(name.to_string(), r)])?;
    let mut o = String::new();
    let title = format!("Baton benchmark: {name}");
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{POLICY}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>",
        t = escape(&title)
    );
    let _ = write!(
        o,
        "<p class=\"meta\">{} &middot; mode {} &middot; {} &middot; started {} &middot; Baton {} \
         &middot; measured from {} {} ({} CPUs){}</p>",
        escape(&r.settings.model),
        escape(&r.mode),
        escape(r.url.as_deref().unwrap_or(&r.target)),
        escape(&started(r.started_at)),
        escape(&r.baton_version),
        escape(&r.host.os),
        escape(&r.host.arch),
        r.host.cpus,
        if r.interrupted {
            " &middot; <b>interrupted</b>: only the finished part is shown"
        } else {
            ""
        }
    );
    if let Some(c) = &r.capacity {
        capacity(&mut o, c);
    }
    pool(&mut o, r);
    levels(&mut o, r);
    if !charts.is_empty() {
        o.push_str("<h2>Charts</h2>");
        for c in &charts {
            let _ = write!(
                o,
                "<figure aria-label=\"{}\">{}</figure>",
                escape(&c.title),
                c.svg
            );
        }
    }
    // Without a sweep there is nothing for the verdict to judge but
    // findings about the studios (a capacity run's).
    let swept = !r.concurrency_benchmark.is_empty() || !r.worker_scaling_benchmark.is_empty();
    if let Some(d) = &r.diagnosis
        && (swept || !d.findings.is_empty())
    {
        let _ = write!(
            o,
            "<h2>Diagnosis: {}</h2><p>{}</p><pre>{}</pre>",
            escape(&d.verdict),
            escape(&d.headline),
            escape(super::diagnose::render(d).trim())
        );
    }
    o.push_str("</body></html>\n");
    Ok(o)
}

/// "2026-12-06 04:50 UTC".
fn started(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    let iso = crate::sim::rfc3339(t);
    format!("{} {} UTC", &iso[..10], &iso[11..16])
}

fn capacity(o: &mut String, c: &Capacity) {
    let _ = write!(
        o,
        "<h2>Capacity</h2><p class=\"answer\">{}.</p>",
        escape(&words::sentence(c))
    );
    let mut points = c.points.clone();
    points.sort_by_key(|p| p.concurrency);
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                p.concurrency.to_string(),
                if p.meets {
                    "yes".into()
                } else {
                    format!(
                        "<span class=\"miss\">no: {}</span>",
                        escape(&words::misses(p))
                    )
                },
                format!("{:.0}", p.ttft_p95_ms),
                format!("{:.1}", p.tokens_per_s_p50),
                format!("{:.2}", p.rps),
                format!("{:.2}", p.goodput_rps),
                p.requests.to_string(),
            ]
        })
        .collect();
    let _ = write!(
        o,
        "<p>The search, under {}:</p>",
        escape(&words::service_level(&c.slo))
    );
    table(
        o,
        &[
            "agents",
            "meets",
            "TTFT p95 (ms)",
            "tok/s per answer (p50)",
            "req/s",
            "goodput/s",
            "answers",
        ],
        &rows,
    );
    if !c.per_studio.is_empty() {
        o.push_str("<p>Each studio alone, under the same level:</p>");
        let rows: Vec<Vec<String>> = c
            .per_studio
            .iter()
            .map(|s| match &s.error {
                Some(e) => vec![
                    escape(&s.id),
                    s.slots.to_string(),
                    format!("not measured: {}", escape(e)),
                    String::new(),
                    String::new(),
                ],
                None => vec![
                    escape(&s.id),
                    s.slots.to_string(),
                    s.max_concurrency.to_string(),
                    format!("{:.2}", s.goodput_rps),
                    escape(s.limited_by.map(LimitedBy::words).unwrap_or("-")),
                ],
            })
            .collect();
        table(
            o,
            &["studio", "slots", "agents", "goodput/s", "limited by"],
            &rows,
        );
    }
    if let Some(p) = &c.predicted {
        o.push_str("<p>Predicted from the studios alone, against what was measured:</p>");
        let mut rows = vec![vec![
            "this pool".into(),
            p.max_concurrency.to_string(),
            format!("{:.2}", p.goodput_rps),
            format!("{} ({:+.0}%)", c.max_concurrency, p.error_pct),
        ]];
        rows.extend(c.what_if.iter().map(|w| {
            vec![
                escape(&w.change.to_string()),
                w.max_concurrency.to_string(),
                format!("{:.2}", w.goodput_rps),
                "-".into(),
            ]
        }));
        table(
            o,
            &["pool", "agents (predicted)", "goodput/s", "measured"],
            &rows,
        );
    }
    for line in [words::least_line(c), words::checked_line(c)]
        .into_iter()
        .flatten()
    {
        let _ = write!(o, "<p>{}</p>", escape(&line));
    }
    for w in &c.warnings {
        let _ = write!(o, "<p class=\"warn\">warning: {}</p>", escape(w));
    }
}

fn pool(o: &mut String, r: &BenchResult) {
    o.push_str("<h2>Pool</h2>");
    let workers = r.config["workers"].as_array().cloned().unwrap_or_default();
    if workers.is_empty() {
        let _ = write!(
            o,
            "<p>{}</p>",
            escape(r.url.as_deref().unwrap_or("no studios recorded"))
        );
    } else {
        let field = |w: &Value, k: &str| match &w[k] {
            Value::Null => String::new(),
            Value::String(s) => escape(s),
            v => escape(&v.to_string()),
        };
        let rows: Vec<Vec<String>> = workers
            .iter()
            .map(|w| {
                vec![
                    field(w, "id"),
                    format!("{}:{}", field(w, "host"), field(w, "port")),
                    field(w, "type"),
                    field(w, "model"),
                    field(w, "max_concurrent_requests"),
                ]
            })
            .collect();
        table(o, &["studio", "address", "server", "model", "slots"], &rows);
    }
    o.push_str("<h2>Preflight</h2>");
    match &r.preflight {
        None => o.push_str("<p>Not recorded.</p>"),
        Some(p) if p.skipped => o.push_str("<p>Skipped (<code>--skip-preflight</code>).</p>"),
        Some(p) => {
            let _ = write!(o, "<p>Status: <b>{}</b>", escape(&p.status));
            if !p.failed_workers.is_empty() {
                let _ = write!(o, "; failed: {}", escape(&p.failed_workers.join(", ")));
            }
            if !p.excluded_workers.is_empty() {
                let _ = write!(
                    o,
                    "; excluded from the run: {}",
                    escape(&p.excluded_workers.join(", "))
                );
            }
            o.push_str(".</p>");
        }
    }
}

fn levels(o: &mut String, r: &BenchResult) {
    if !r.concurrency_benchmark.is_empty() {
        o.push_str("<h2>Concurrency</h2>");
        let rows: Vec<Vec<String>> = r
            .concurrency_benchmark
            .iter()
            .map(|l| {
                vec![
                    l.concurrency.to_string(),
                    format!("{:.2}", l.requests_per_second),
                    format!("{:.1}", l.output_tokens_per_second),
                    format!("{:.1}%", l.success_rate),
                    format!("{:.3}", l.p50_response_time),
                    format!("{:.3}", l.p95_response_time),
                    format!("{:.3}", l.ttft_p95),
                ]
            })
            .collect();
        table(
            o,
            &[
                "concurrency",
                "req/s",
                "tokens/s",
                "success",
                "p50 (s)",
                "p95 (s)",
                "TTFT p95 (s)",
            ],
            &rows,
        );
    }
    if !r.worker_scaling_benchmark.is_empty() {
        o.push_str("<h2>Worker scaling</h2>");
        let rows: Vec<Vec<String>> = r
            .worker_scaling_benchmark
            .iter()
            .map(|s| {
                vec![
                    s.workers.to_string(),
                    s.concurrency.to_string(),
                    format!("{:.2}", s.requests_per_second),
                    format!("{:.2}x", s.speedup),
                    format!("{:.0}%", s.scaling_efficiency * 100.0),
                ]
            })
            .collect();
        table(
            o,
            &["workers", "concurrency", "req/s", "speedup", "efficiency"],
            &rows,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_a_run_cannot_become_markup() {
        assert_eq!(
            escape("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(started(0), "1970-01-01 00:00 UTC");
    }
}
