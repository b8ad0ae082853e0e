//! vLLM's request histograms, fed from the sim's own traffic and served in
//! Prometheus text at `/metrics` (kind vllm).

use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// vLLM's buckets for request latencies (queue, prefill, decode, e2e).
const LATENCY: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// vLLM's buckets for time to first token.
const TTFT: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

struct Histogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the last one is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Histogram {
        Histogram {
            name,
            help,
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, d: Duration) {
        let v = d.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, model: &str) {
        let n = self.name;
        let _ = writeln!(out, "# HELP {n} {}", self.help);
        let _ = writeln!(out, "# TYPE {n} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            let le = self
                .bounds
                .get(i)
                .map(|b| format!("{b:?}"))
                .unwrap_or_else(|| "+Inf".to_string());
            let _ = writeln!(
                out,
                "{n}_bucket{{le=\"{le}\",model_name=\"{model}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "{n}_sum{{model_name=\"{model}\"}} {}", self.sum);
        let _ = writeln!(out, "{n}_count{{model_name=\"{model}\"}} {}", self.count);
    }
}

/// Phases of one finished request.
pub(super) struct Phases {
    pub(super) queue: Duration,
    pub(super) prefill: Duration,
    pub(super) decode: Duration,
    pub(super) e2e: Duration,
}

pub(super) struct Histograms {
    inner: Mutex<[Histogram; 5]>,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            inner: Mutex::new([
                Histogram::new(
                    "vllm:request_queue_time_seconds",
                    "Histogram of time spent in WAITING phase for request.",
                    LATENCY,
                ),
                Histogram::new(
                    "vllm:request_prefill_time_seconds",
                    "Histogram of time spent in PREFILL phase for request.",
                    LATENCY,
                ),
                Histogram::new(
                    "vllm:request_decode_time_seconds",
                    "Histogram of time spent in DECODE phase for request.",
                    LATENCY,
                ),
                Histogram::new(
                    "vllm:e2e_request_latency_seconds",
                    "Histogram of e2e request latency in seconds.",
                    LATENCY,
                ),
                Histogram::new(
                    "vllm:time_to_first_token_seconds",
                    "Histogram of time to first token in seconds.",
                    TTFT,
                ),
            ]),
        }
    }
}

impl Histograms {
    /// A request's first token (observed when it happens, as vLLM does).
    pub(super) fn first_token(&self, ttft: Duration) {
        self.inner.lock().expect("metrics lock")[4].observe(ttft);
    }

    /// A finished request.
    pub(super) fn finished(&self, p: &Phases) {
        let mut h = self.inner.lock().expect("metrics lock");
        h[0].observe(p.queue);
        h[1].observe(p.prefill);
        h[2].observe(p.decode);
        h[3].observe(p.e2e);
    }

    /// The whole `/metrics` page: the running/waiting gauges, then the
    /// histograms.
    pub(super) fn render(&self, model: &str, running: u64, waiting: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
             # TYPE vllm:num_requests_running gauge\n\
             vllm:num_requests_running{{model_name=\"{model}\"}} {running}\n\
             # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
             # TYPE vllm:num_requests_waiting gauge\n\
             vllm:num_requests_waiting{{model_name=\"{model}\"}} {waiting}"
        );
        for h in self.inner.lock().expect("metrics lock").iter() {
            h.render(&mut out, model);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_with_sum_and_count() {
        let h = Histograms::default();
        h.finished(&Phases {
            queue: Duration::from_millis(400),
            prefill: Duration::from_millis(100),
            decode: Duration::from_secs(3),
            e2e: Duration::from_secs(4),
        });
        h.first_token(Duration::from_millis(500));
        let text = h.render("m", 1, 2);
        assert!(text.contains("vllm:num_requests_waiting{model_name=\"m\"} 2"));
        assert!(
            text.contains("vllm:request_queue_time_seconds_bucket{le=\"0.3\",model_name=\"m\"} 0")
        );
        assert!(
            text.contains("vllm:request_queue_time_seconds_bucket{le=\"0.5\",model_name=\"m\"} 1")
        );
        assert!(
            text.contains("vllm:request_queue_time_seconds_bucket{le=\"+Inf\",model_name=\"m\"} 1")
        );
        assert!(
            text.contains("vllm:request_decode_time_seconds_bucket{le=\"2.5\",model_name=\"m\"} 0")
        );
        assert!(text.contains("vllm:e2e_request_latency_seconds_sum{model_name=\"m\"} 4"));
        assert!(
            text.contains("vllm:time_to_first_token_seconds_bucket{le=\"0.5\",model_name=\"m\"} 1")
        );
        assert!(text.contains("vllm:time_to_first_token_seconds_count{model_name=\"m\"} 1"));
    }
}
