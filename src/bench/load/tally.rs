//! What a run adds up as it goes, apart from how it runs: each client's
//! own tallies (HDR histograms, so memory stays flat for any run length;
//! per-studio counts), merged at the end, and the evidence the diagnosis
//! reads (per-studio aggregates, a bounded sample of requests).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::ms;
use super::request::{Failed, Outcome};
use crate::bench::report::{LevelEvidence, RequestSample, Stat, TimeSplit, WorkerEvidence};

/// One client's tallies (clients never share one, so never contend on a
/// lock); merged when the run ends.
pub(super) struct Tally {
    pub(super) latency: Histogram<u64>,
    pub(super) ttft: Histogram<u64>,
    pub(super) tpot: Histogram<u64>,
    pub(super) per_worker: BTreeMap<String, u64>,
    pub(super) per_worker_failed: BTreeMap<String, u64>,
    pub(super) errors: Vec<String>,
    pub(super) approximate: bool,
    pub(super) window_ok: f64,
    pub(super) evidence: RunEvidence,
    /// Request-seconds this client had in flight...
    pub(super) busy_s: f64,
    /// ...and of those, after the run stopped sending (the drain).
    pub(super) drained_s: f64,
    /// (sent, ended) of its last request, seconds after the start.
    last: Option<(f64, f64)>,
}

pub(super) fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            latency: histogram(),
            ttft: histogram(),
            tpot: histogram(),
            per_worker: BTreeMap::new(),
            per_worker_failed: BTreeMap::new(),
            errors: Vec::new(),
            approximate: false,
            window_ok: 0.0,
            evidence: RunEvidence::default(),
            busy_s: 0.0,
            drained_s: 0.0,
            last: None,
        }
    }

    /// A request sent `sent_s` after the start took `took_s`.
    pub(super) fn sent(&mut self, sent_s: f64, took_s: f64) {
        self.busy_s += took_s;
        self.last = Some((sent_s, sent_s + took_s));
    }

    /// This client stopped; the run stopped sending at `idle_s` (when the
    /// first client found nothing left to send). No request starts after
    /// that, so only this client's last one can have run past it.
    pub(super) fn stopped(&mut self, idle_s: f64) {
        if let Some((sent, ended)) = self.last {
            self.drained_s += (ended - sent.max(idle_s)).max(0.0);
        }
    }

    pub(super) fn merge(&mut self, o: Tally) {
        let _ = self.latency.add(&o.latency);
        let _ = self.ttft.add(&o.ttft);
        let _ = self.tpot.add(&o.tpot);
        for (k, v) in o.per_worker {
            *self.per_worker.entry(k).or_default() += v;
        }
        for (k, v) in o.per_worker_failed {
            *self.per_worker_failed.entry(k).or_default() += v;
        }
        for e in o.errors {
            if self.errors.len() < 10 {
                self.errors.push(e);
            }
        }
        self.approximate |= o.approximate;
        self.window_ok += o.window_ok;
        self.evidence.merge(o.evidence);
        self.busy_s += o.busy_s;
        self.drained_s += o.drained_s;
    }

    /// Book a successful answer that took `latency`, `in_window` of it
    /// inside the steady-state window. `named`: the studio a probe is
    /// about, whatever the answer says.
    pub(super) fn answered(
        &mut self,
        o: Outcome,
        latency: Duration,
        in_window: f64,
        named: Option<&str>,
    ) {
        let _ = self.latency.record(latency.as_micros().max(1) as u64);
        if let Some(t) = o.ttft {
            let _ = self.ttft.record(t.as_micros().max(1) as u64);
            if o.tokens > 1 {
                let per = (latency.saturating_sub(t)).as_micros() as u64 / (o.tokens - 1);
                let _ = self.tpot.record(per.max(1));
            }
        }
        self.approximate |= o.approximate;
        self.window_ok += in_window;
        let worker = named.map(str::to_string).unwrap_or(o.worker);
        match self.per_worker.get_mut(&worker) {
            Some(n) => *n += 1,
            None => {
                self.per_worker.insert(worker, 1);
            }
        }
    }

    /// Book a failed request (the first ten messages are kept).
    pub(super) fn failed(&mut self, f: Failed, named: Option<&str>) {
        if let Some(w) = named.map(str::to_string).or(f.worker) {
            *self.per_worker_failed.entry(w).or_default() += 1;
        }
        if self.errors.len() < 10 {
            self.errors.push(f.message);
        }
    }
}

/// How many single requests a run keeps as examples: the first few and
/// the slowest few.
const SAMPLE_FIRST: usize = 8;
const SAMPLE_SLOWEST: usize = 8;

/// A running mean.
#[derive(Clone, Copy, Debug, Default)]
struct Mean {
    sum: f64,
    n: u64,
}

impl Mean {
    fn add(&mut self, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.sum += v;
            self.n += 1;
        }
    }
    fn merge(&mut self, o: Mean) {
        self.sum += o.sum;
        self.n += o.n;
    }
    fn get(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// Sums of a studio's own timings.
#[derive(Clone, Debug, Default)]
struct SplitAcc {
    source: Option<String>,
    n: u64,
    queue: Mean,
    load: Mean,
    prefill: Mean,
    decode: Mean,
    ttft: Mean,
    total: Mean,
    outside: Mean,
    tps: Mean,
}

impl SplitAcc {
    fn add(&mut self, t: &TimeSplit, latency_ms: f64) {
        if let Some(s) = &t.source {
            self.source.get_or_insert_with(|| s.clone());
        }
        self.n += 1;
        self.queue.add(t.queue_ms);
        self.load.add(t.load_ms);
        self.prefill.add(t.prefill_ms);
        self.decode.add(t.decode_ms);
        self.ttft.add(t.ttft_ms);
        self.total.add(t.total_ms);
        self.outside
            .add(t.total_ms.map(|total| (latency_ms - total).max(0.0)));
        self.tps.add(t.tokens_per_second);
    }

    fn merge(&mut self, o: SplitAcc) {
        if self.source.is_none() {
            self.source = o.source;
        }
        self.n += o.n;
        self.queue.merge(o.queue);
        self.load.merge(o.load);
        self.prefill.merge(o.prefill);
        self.decode.merge(o.decode);
        self.ttft.merge(o.ttft);
        self.total.merge(o.total);
        self.outside.merge(o.outside);
        self.tps.merge(o.tps);
    }

    fn split(&self) -> Option<TimeSplit> {
        Some(TimeSplit {
            source: Some(self.source.clone()?),
            requests: Some(self.n),
            queue_ms: self.queue.get(),
            load_ms: self.load.get(),
            prefill_ms: self.prefill.get(),
            decode_ms: self.decode.get(),
            ttft_ms: self.ttft.get(),
            total_ms: self.total.get(),
            outside_ms: self.outside.get(),
            tokens_per_second: self.tps.get(),
            ..TimeSplit::default()
        })
    }
}

/// One studio's part of a run, as it goes.
#[derive(Debug)]
pub struct WorkerAcc {
    ok: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    failed_s: f64,
    tokens: u64,
    ttft: Histogram<u64>,
    latency: Histogram<u64>,
    decode_tps: Mean,
    /// (sent, TTFT ms, latency ms) of its first answer.
    first: Option<(f64, Option<f64>, f64)>,
    last_end_s: f64,
    busy_s: f64,
    server: SplitAcc,
}

impl Default for WorkerAcc {
    fn default() -> Self {
        WorkerAcc {
            ok: 0,
            failed: 0,
            errors: BTreeMap::new(),
            failed_s: 0.0,
            tokens: 0,
            ttft: histogram(),
            latency: histogram(),
            decode_tps: Mean::default(),
            first: None,
            last_end_s: 0.0,
            busy_s: 0.0,
            server: SplitAcc::default(),
        }
    }
}

fn stat(h: &Histogram<u64>) -> Stat {
    if h.is_empty() {
        return Stat::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Stat {
        count: h.len(),
        mean: h.mean() / 1000.0,
        p50: ms(h.value_at_quantile(0.5)),
        p95: ms(h.value_at_quantile(0.95)),
        max: ms(h.max()),
    }
}

impl WorkerAcc {
    fn merge(&mut self, o: WorkerAcc) {
        self.ok += o.ok;
        self.failed += o.failed;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.failed_s += o.failed_s;
        self.tokens += o.tokens;
        let _ = self.ttft.add(&o.ttft);
        let _ = self.latency.add(&o.latency);
        self.decode_tps.merge(o.decode_tps);
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        self.last_end_s = self.last_end_s.max(o.last_end_s);
        self.busy_s += o.busy_s;
        self.server.merge(o.server);
    }

    /// The serializable summary.
    pub fn evidence(&self) -> WorkerEvidence {
        WorkerEvidence {
            ok: self.ok,
            failed: self.failed,
            errors: self.errors.clone(),
            failed_s: self.failed_s,
            tokens: self.tokens,
            ttft_ms: (!self.ttft.is_empty()).then(|| stat(&self.ttft)),
            latency_ms: stat(&self.latency),
            decode_tps: self.decode_tps.get(),
            first_ttft_ms: self.first.and_then(|f| f.1),
            first_latency_ms: self.first.map(|f| f.2),
            last_end_s: self.last_end_s,
            busy_s: self.busy_s,
            server: self.server.split(),
        }
    }
}

/// What a run gathers for the diagnosis: per-studio aggregates (memory
/// stays flat however long the run) and a bounded sample of requests.
#[derive(Debug, Default)]
pub struct RunEvidence {
    pub workers: BTreeMap<String, WorkerAcc>,
    first: Vec<RequestSample>,
    slowest: Vec<RequestSample>,
    /// Request-seconds in flight (all requests, failed ones included).
    pub busy_s: f64,
    wait: Mean,
    /// How long the run took, seconds.
    pub elapsed_s: f64,
}

impl RunEvidence {
    /// The evidence of a run that took `elapsed_s` seconds.
    pub(super) fn ended(self, elapsed_s: f64) -> RunEvidence {
        RunEvidence { elapsed_s, ..self }
    }

    pub(super) fn waited(&mut self, d: Duration) {
        self.wait.add(Some(ms(d)));
    }

    /// Book one request (sent `sent_s` after the start, lasting `took`).
    pub(super) fn record(
        &mut self,
        r: &Result<Outcome, Failed>,
        named: Option<&str>,
        sent_s: f64,
        took: Duration,
    ) {
        let total_ms = ms(took);
        let end_s = sent_s + took.as_secs_f64();
        self.busy_s += took.as_secs_f64();
        let sample = match r {
            Ok(o) => {
                let worker = named.unwrap_or(&o.worker).to_string();
                let w = self.workers.entry(worker.clone()).or_default();
                w.ok += 1;
                w.tokens += o.tokens;
                w.busy_s += took.as_secs_f64();
                w.last_end_s = w.last_end_s.max(end_s);
                let _ = w.latency.record((took.as_micros() as u64).max(1));
                // Whole answers: the first token came when the studio's
                // generation started.
                let ttft_ms = o.ttft.map(ms).or_else(|| {
                    o.server
                        .as_ref()
                        .and_then(|t| t.decode_ms)
                        .map(|d| (total_ms - d).max(0.0))
                });
                if let Some(t) = ttft_ms {
                    let _ = w.ttft.record(((t * 1000.0) as u64).max(1));
                }
                let decode = match (o.ttft, o.last_token) {
                    (Some(a), Some(b)) if o.tokens > 1 && b > a => {
                        Some((o.tokens - 1) as f64 / (b - a).as_secs_f64())
                    }
                    _ => o.server.as_ref().and_then(|t| t.tokens_per_second),
                };
                w.decode_tps.add(decode);
                if w.first.is_none_or(|f| sent_s < f.0) {
                    w.first = Some((sent_s, ttft_ms, total_ms));
                }
                if let Some(t) = &o.server {
                    w.server.add(t, total_ms);
                }
                RequestSample {
                    worker,
                    sent_s,
                    headers_ms: Some(ms(o.headers)),
                    first_token_ms: o.ttft.map(ms),
                    last_token_ms: o.last_token.map(ms),
                    total_ms,
                    tokens: o.tokens,
                    error: None,
                    server: o.server.clone(),
                }
            }
            Err(f) => {
                let worker = named
                    .map(str::to_string)
                    .or_else(|| f.worker.clone())
                    .unwrap_or_else(|| "-".into());
                let w = self.workers.entry(worker.clone()).or_default();
                w.failed += 1;
                w.failed_s += took.as_secs_f64();
                w.busy_s += took.as_secs_f64();
                *w.errors.entry(f.class.to_string()).or_default() += 1;
                RequestSample {
                    worker,
                    sent_s,
                    headers_ms: f.headers.map(ms),
                    total_ms,
                    error: Some(f.class.to_string()),
                    ..RequestSample::default()
                }
            }
        };
        self.keep(sample);
    }

    fn keep(&mut self, s: RequestSample) {
        if self.first.len() < SAMPLE_FIRST {
            self.first.push(s);
        } else {
            self.keep_slow(s);
        }
    }

    fn keep_slow(&mut self, s: RequestSample) {
        if self.slowest.len() < SAMPLE_SLOWEST {
            self.slowest.push(s);
        } else if let Some((i, min)) = self
            .slowest
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_ms.total_cmp(&b.1.total_ms))
            && s.total_ms > min.total_ms
        {
            self.slowest[i] = s;
        }
    }

    /// Add another client's (or repeat's) evidence.
    pub fn merge(&mut self, o: RunEvidence) {
        for (k, v) in o.workers {
            self.workers.entry(k).or_default().merge(v);
        }
        // The earliest requests stay the first; the rest compete as slow.
        let mut all_first: Vec<RequestSample> = self.first.drain(..).chain(o.first).collect();
        all_first.sort_by(|a, b| a.sent_s.total_cmp(&b.sent_s));
        let rest = all_first.split_off(all_first.len().min(SAMPLE_FIRST));
        self.first = all_first;
        for s in rest.into_iter().chain(o.slowest) {
            self.keep_slow(s);
        }
        self.busy_s += o.busy_s;
        self.wait.merge(o.wait);
        self.elapsed_s = self.elapsed_s.max(o.elapsed_s);
    }

    /// The level's evidence from the client's side (Baton's part is added
    /// by the caller). Several runs (repeats) are merged beforehand.
    pub fn level(&self, concurrency: usize, runs: usize) -> LevelEvidence {
        let elapsed = self.elapsed_s.max(1e-9);
        let mut samples: Vec<RequestSample> =
            self.first.iter().chain(&self.slowest).cloned().collect();
        samples.sort_by(|a, b| a.sent_s.total_cmp(&b.sent_s));
        LevelEvidence {
            concurrency,
            elapsed_s: self.elapsed_s * runs as f64,
            in_flight_avg: self.busy_s / (elapsed * runs.max(1) as f64),
            client_wait_ms: self.wait.get().unwrap_or(0.0),
            baton: None,
            workers: self
                .workers
                .iter()
                .map(|(k, v)| (k.clone(), v.evidence()))
                .collect(),
            balancer: BTreeMap::new(),
            samples,
        }
    }
}
