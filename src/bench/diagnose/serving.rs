//! How a studio runs what it is given: one request at a time despite its
//! slots (serialized), or a first answer that paid for loading the model
//! (cold).

use std::collections::BTreeSet;

use super::facts::{Run, figures, fmt_s};
use super::thresholds::*;
use crate::bench::report::{Cause, Finding, ProbeRun, Severity, WorkerEvidence};

/// The setting that makes a studio of this kind run requests in parallel.
pub(super) fn parallel_setting(kind: &str, slots: u32) -> String {
    match kind {
        "lm_studio" => format!(
            "raise LM Studio's parallel requests (\"Max Concurrent Predictions\" in the model's load settings) to {slots} and reload the model"
        ),
        "ollama" => format!(
            "start Ollama with OLLAMA_NUM_PARALLEL={slots} (e.g. `launchctl setenv OLLAMA_NUM_PARALLEL {slots}`, then restart Ollama)"
        ),
        "llama_cpp" => format!(
            "start llama-server with `-np {slots}` (and `-c` large enough for {slots} contexts)"
        ),
        "vllm" => format!("raise vLLM's `--max-num-seqs` to at least {slots}"),
        "mlx" => "use an mlx_lm version that batches requests (older ones serve one at a time)"
            .to_string(),
        _ => "let the server run requests in parallel".to_string(),
    }
}

/// Studios that accept several requests but run one at a time.
pub(super) fn serialized<'a>(
    run: &'a Run,
    dead: &BTreeSet<&str>,
    out: &mut Vec<Finding>,
) -> BTreeSet<&'a str> {
    let mut found = BTreeSet::new();
    for s in &run.studios {
        if dead.contains(s.id.as_str()) || s.slots < 2 {
            continue;
        }
        let (Some(one), Some(full)) = (s.single(), s.full()) else {
            continue;
        };
        if one.requests_per_second <= 0.0 {
            continue;
        }
        let gain = full.requests_per_second / one.requests_per_second;
        let ttft = |r: &ProbeRun| {
            r.detail
                .ttft_ms
                .as_ref()
                .map(|t| t.p50)
                .unwrap_or(r.detail.latency_ms.p50)
        };
        let (t1, tn) = (ttft(one), ttft(full));
        if !(gain < SERIAL_MAX_GAIN && t1 > 0.0 && tn >= SERIAL_TTFT_GROWTH * t1) {
            continue;
        }
        let real = gain.round().max(1.0) as u32;
        // Baton's own learned limit agrees when it has seen enough
        // answers; it is what the balancer already does about it.
        let learned = run
            .balancer(&s.id)
            .learned_slots
            .filter(|&l| l > 0 && l < u64::from(s.slots));
        let learned_note = learned
            .map(|l| {
                format!(" Baton learned the same from its answers and gives it {l} at a time.")
            })
            .unwrap_or_default();
        let mut figs = vec![
            ("declared_slots", f64::from(s.slots)),
            ("effective_parallel", f64::from(real)),
            ("throughput_gain", gain),
            ("ttft_one_ms", t1),
            ("ttft_full_ms", tn),
        ];
        if let Some(l) = learned {
            figs.push(("baton_slots", l as f64));
        }
        out.push(Finding {
            cause: Cause::Serialized,
            worker: Some(s.id.clone()),
            severity: Severity::Warning,
            evidence: format!(
                "given {} slots it runs about {real} at a time: alone, {} requests at once gave {:.2} req/s against {:.2} req/s for one ({gain:.1}x), while the time to first token grew from {} to {} (the others wait inside it)",
                s.slots,
                full.concurrency,
                full.requests_per_second,
                one.requests_per_second,
                fmt_s(t1),
                fmt_s(tn)
            ) + &learned_note,
            remedy: format!(
                "{}; or set its max_concurrent_requests to {real} (or \"auto\") so Baton queues the rest where a free studio can take them",
                parallel_setting(&s.kind, s.slots)
            ),
            figures: figures(&figs),
        });
        found.insert(s.id.as_str());
    }
    found
}

pub(super) fn cold_remedy(kind: &str) -> &'static str {
    match kind {
        "lm_studio" => {
            "load the model before use (`lms load MODEL`, or once in the app) and raise or turn off its JIT auto-unload (\"Auto unload if idle\", 60 min by default)"
        }
        "ollama" => {
            "keep the model loaded: OLLAMA_KEEP_ALIVE=-1 (or `keep_alive: -1` in requests; the default unloads after 5 min idle), and preload it with `ollama run MODEL \"\"`"
        }
        "llama_cpp" => {
            "llama-server loads at start, so this was the page cache: start it with `--mlock` to keep the weights in memory"
        }
        "mlx" => "mlx_lm.server loads on first use: send one request after starting it",
        "vllm" => "vLLM loads at start: warm it with one request after a restart",
        _ => {
            "warm the model with one request after the server starts, and keep it from unloading when idle"
        }
    }
}

/// A first answer that paid for loading the model.
pub(super) fn cold_models(run: &Run, dead: &BTreeSet<&str>, out: &mut Vec<Finding>) {
    for s in &run.studios {
        if dead.contains(s.id.as_str()) {
            continue;
        }
        // The steady time to first token: the probe's, else the earliest
        // level where it served enough.
        let steady_level = run
            .levels
            .iter()
            .filter_map(|(_, e)| e.and_then(|e| e.workers.get(&s.id)))
            .find(|w| w.ok > MIN_REQUESTS);
        let steady_of = |w: &WorkerEvidence| {
            w.ttft_ms
                .as_ref()
                .map(|t| t.p50)
                .unwrap_or(w.latency_ms.p50)
        };
        let steady = s
            .single()
            .map(|r| steady_of(&r.detail))
            .or(steady_level.map(steady_of));
        let Some(steady) = steady.filter(|v| *v > 0.0) else {
            continue;
        };
        // Candidates for its first answer, earliest first.
        let mut firsts: Vec<(String, f64)> = Vec::new();
        if let Some(t) = s
            .facts
            .and_then(|f| f.preflight.as_ref())
            .and_then(|p| p.first_token_ms)
        {
            firsts.push(("preflight's first request".into(), t));
        }
        let mut load_ms = None;
        if let Some(f) = s.probe.and_then(|p| p.first.as_ref()) {
            if let Some(t) = f.first_ttft_ms.or(f.first_latency_ms) {
                firsts.push(("the probe's first request".into(), t));
            }
            load_ms = f.server.as_ref().and_then(|t| t.load_ms);
        }
        if s.probe.is_none()
            && let Some(w) = steady_level
            && let Some(t) = w.first_ttft_ms
        {
            firsts.push(("its first request of the sweep".into(), t));
        }
        let Some((which, first)) = firsts.into_iter().max_by(|a, b| a.1.total_cmp(&b.1)) else {
            continue;
        };
        let excess = first - steady;
        let by_timing = excess >= COLD_MIN_EXCESS_MS && first >= COLD_FACTOR * steady;
        let by_report = load_ms.is_some_and(|l| l >= COLD_MIN_EXCESS_MS);
        if !(by_timing || by_report) {
            continue;
        }
        let unloaded = s.probe.and_then(|p| p.model_loaded_before) == Some(false);
        out.push(Finding {
            cause: Cause::ColdModel,
            worker: Some(s.id.clone()),
            severity: Severity::Warning,
            evidence: format!(
                "{which} waited {} for its first token against {} steady: a model load of about {}{}{}. It was kept out of the figures (the sweep ran warm), but real traffic pays it after every unload",
                fmt_s(first),
                fmt_s(steady),
                fmt_s(load_ms.unwrap_or(excess)),
                if by_report {
                    " (the studio reported the load)"
                } else {
                    ""
                },
                if unloaded {
                    "; the studio listed the model as not loaded before the run"
                } else {
                    ""
                }
            ),
            // Baton sends a request where its model is loaded: a model warm
            // on more studios is a cold load fewer.
            remedy: format!(
                "{}; or load it on more studios (the dashboard's Models view, \"Warm up the pool\"), since Baton routes each request to a studio that has its model loaded",
                cold_remedy(&s.kind)
            ),
            figures: figures(&[
                ("first_ms", first),
                ("steady_ttft_ms", steady),
                ("load_ms", load_ms.unwrap_or(excess)),
            ]),
        });
    }
}
