//! One worker as the balancer sees it: its configuration, its connections,
//! its health, its live counters and what routing has learned of its speed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;

use super::answer::Api;
use super::state::{Failure, Health, State};
use super::upstream::Upstream;
use crate::config::Worker;
use crate::store::StudioMemory;

/// Latency figures learned from traffic, as exponentially weighted averages.
#[derive(Clone, Copy, Debug, Default)]
pub struct Learned {
    /// End-to-end request time in ms; 0 until the first success.
    pub latency_ms: f64,
    /// From sending the request to the studio to its first byte.
    pub ttft_ms: f64,
    pub tokens_per_second: f64,
    /// Prompt tokens processed per second (from prompts the studio could
    /// not have cached); 0 until seen.
    pub prefill_per_second: f64,
}

impl Learned {
    /// Expected time to complete a request of `tokens` output tokens:
    /// TTFT plus generation at the learned rate, else the plain latency
    /// average; `None` while nothing is known.
    pub fn expected_ms(&self, tokens: f64) -> Option<f64> {
        if self.ttft_ms > 0.0 && self.tokens_per_second > 0.0 {
            Some(self.ttft_ms + tokens / self.tokens_per_second * 1000.0)
        } else if self.latency_ms > 0.0 {
            Some(self.latency_ms)
        } else {
            None
        }
    }
}

pub(crate) const EWMA_ALPHA: f64 = 0.2;

pub(crate) fn ewma(old: f64, sample: f64) -> f64 {
    if old == 0.0 {
        sample
    } else {
        old + EWMA_ALPHA * (sample - old)
    }
}

/// Per-worker counters (monotonic).
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub successes: AtomicU64,
    pub client_errors: AtomicU64,
    pub cancelled: AtomicU64,
    pub failures: [AtomicU64; 5],
    pub ejections: [AtomicU64; 5],
    pub tokens: AtomicU64,
    /// Connect timeouts forgiven because the studio's other answers flowed.
    pub congestion: AtomicU64,
}

impl Counters {
    pub fn failure(&self, f: Failure) -> u64 {
        self.failures[f.index()].load(Ordering::Relaxed)
    }
    pub fn ejections(&self, f: Failure) -> u64 {
        self.ejections[f.index()].load(Ordering::Relaxed)
    }
}

/// One worker: configuration plus live state.
pub struct WorkerEntry {
    pub cfg: Worker,
    /// The id, shared cheaply (cache affinity remembers studios by it).
    pub(crate) cfg_id: std::sync::Arc<str>,
    /// `Bearer <key>` for the worker's own API key, from the keychain or
    /// environment; marked sensitive so it never shows in debug output.
    pub auth_header: Option<HeaderValue>,
    pub base_url: String,
    pub(crate) upstream: Upstream,
    pub(crate) health: Health,
    /// How many it really runs at once, learned (under the declared ceiling).
    pub(crate) limit: super::limit::Limit,
    /// Slots in use; only changed under the scheduler lock.
    pub(crate) in_flight: AtomicU64,
    pub counters: Counters,
    learned: Mutex<Learned>,
    /// Models the worker's last model-list probe gave, plus the configured one.
    models: Mutex<Vec<String>>,
    /// APIs the studio answered as missing (bit per [`Api`]): learned, so
    /// it is not asked again.
    lacks: AtomicU32,
    /// APIs the studio answered.
    serves_api: AtomicU32,
    /// When each claimed slot is expected to free (from what routing knew
    /// of the studio's speed when it was claimed).
    slot_ends: Mutex<Vec<Instant>>,
    /// It answers HTTP while generating: known from its kind, or seen.
    concurrent_http: AtomicBool,
    /// When the latest response head from it arrived (health clock, ms).
    last_head_ms: AtomicU64,
    /// Its models, loaded or not, and their load times.
    pub(crate) inventory: super::inventory::Inventory,
}

/// A response head that came this long before another answer's last byte
/// proves the two overlapped (a one-at-a-time server sends the next head
/// only after the previous answer ended; this margin absorbs the order in
/// which Baton's tasks read two sockets).
const OVERLAP_PROOF: Duration = Duration::from_millis(100);

/// What a studio has shown about one API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// It answered requests of this API.
    Yes,
    /// It answered that it has no such endpoint.
    No,
}

impl WorkerEntry {
    pub fn new(cfg: Worker, auth: Option<String>) -> WorkerEntry {
        let auth_header = auth.and_then(|k| {
            let mut v = HeaderValue::from_str(&format!("Bearer {k}")).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        WorkerEntry {
            auth_header,
            base_url: cfg.base_url(),
            upstream: Upstream::new(&cfg.host, cfg.port),
            health: Health::new(),
            limit: super::limit::Limit::new(cfg.max_concurrent_requests.declared()),
            in_flight: AtomicU64::new(0),
            counters: Counters::default(),
            learned: Mutex::new(Learned::default()),
            models: Mutex::new(vec![cfg.model.clone()]),
            lacks: AtomicU32::new(0),
            serves_api: AtomicU32::new(0),
            slot_ends: Mutex::new(Vec::new()),
            concurrent_http: AtomicBool::new(cfg.kind.serves_http_concurrently()),
            last_head_ms: AtomicU64::new(0),
            inventory: Default::default(),
            cfg_id: std::sync::Arc::from(cfg.id.as_str()),
            cfg,
        }
    }

    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    pub fn state(&self) -> State {
        self.health.state()
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests it may have at once now: the learned limit.
    pub fn slots(&self) -> u64 {
        u64::from(self.limit.current())
    }

    /// Take one slot for a request of about `tokens` output tokens; returns
    /// when it is expected to free and how many requests the studio has
    /// with this one. Only the scheduler calls this, under its lock.
    pub(crate) fn claim(&self, tokens: f64) -> (Instant, u32) {
        let expected = self.learned().expected_ms(tokens).unwrap_or(0.0);
        let end = Instant::now() + Duration::from_secs_f64(expected.max(0.0) / 1000.0);
        let level = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.slot_ends.lock().expect("ends lock").push(end);
        (end, u32::try_from(level).unwrap_or(u32::MAX))
    }

    /// Give back a slot claimed with `end`; returns the slots still in use.
    pub(crate) fn unclaim(&self, end: Instant) -> u64 {
        {
            let mut ends = self.slot_ends.lock().expect("ends lock");
            if let Some(i) = ends.iter().position(|e| *e == end) {
                ends.swap_remove(i);
            }
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed) - 1
    }

    /// How long until its first slot is expected to free (zero when one is
    /// free or overdue); `None` when nothing is in flight.
    pub fn soonest_free(&self) -> Option<Duration> {
        let now = Instant::now();
        self.slot_ends
            .lock()
            .expect("ends lock")
            .iter()
            .map(|e| e.saturating_duration_since(now))
            .min()
    }

    pub fn has_free_slot(&self) -> bool {
        self.in_flight() < self.slots()
    }

    pub fn learned(&self) -> Learned {
        *self.learned.lock().expect("learned lock")
    }

    pub(crate) fn forget_speed(&self) {
        *self.learned.lock().expect("learned lock") = Learned::default();
    }

    /// The first of `names` this worker serves, preferring its configured
    /// model (the name to send it).
    pub fn serves_any<'a>(&self, names: &'a [String]) -> Option<&'a str> {
        if let Some(n) = names.iter().find(|n| **n == self.cfg.model) {
            return Some(n);
        }
        let models = self.models.lock().expect("models lock");
        names
            .iter()
            .find(|n| models.iter().any(|m| m == *n))
            .map(String::as_str)
    }

    /// Not known to lack this API (unknown counts as capable: try it).
    pub fn capable(&self, api: Api) -> bool {
        self.lacks.load(Ordering::Relaxed) & api.bit() == 0
    }

    pub(crate) fn learn_capability(&self, api: Api, has: bool) {
        if has {
            self.serves_api.fetch_or(api.bit(), Ordering::Relaxed);
            self.lacks.fetch_and(!api.bit(), Ordering::Relaxed);
        } else {
            self.lacks.fetch_or(api.bit(), Ordering::Relaxed);
        }
    }

    /// What it has shown, per endpoint path.
    pub fn capabilities(&self) -> std::collections::BTreeMap<String, Capability> {
        let (no, yes) = (
            self.lacks.load(Ordering::Relaxed),
            self.serves_api.load(Ordering::Relaxed),
        );
        Api::ALL
            .iter()
            .filter_map(|(api, path)| {
                let c = if no & api.bit() != 0 {
                    Capability::No
                } else if yes & api.bit() != 0 {
                    Capability::Yes
                } else {
                    return None;
                };
                Some((path.to_string(), c))
            })
            .collect()
    }

    /// Record a prompt's processing rate: `tokens` not cached there, done
    /// in `ttft`.
    pub fn learn_prefill(&self, tokens: u32, ttft: Duration) {
        // Short prompts say more about latency than about prefill speed.
        if tokens < 256 || ttft.is_zero() {
            return;
        }
        let mut l = self.learned.lock().expect("learned lock");
        l.prefill_per_second = ewma(l.prefill_per_second, f64::from(tokens) / ttft.as_secs_f64());
    }

    pub fn models(&self) -> Vec<String> {
        self.models.lock().expect("models lock").clone()
    }

    /// Replace the model list (the configured model always stays).
    pub(crate) fn set_models(&self, mut models: Vec<String>) {
        if !models.contains(&self.cfg.model) {
            models.push(self.cfg.model.clone());
        }
        *self.models.lock().expect("models lock") = models;
    }

    /// Record the time from sending a request to its first byte, as soon
    /// as it is known: routing learns a new studio's speed within its
    /// first answer.
    pub fn learn_ttft(&self, ttft: Duration) {
        let mut l = self.learned.lock().expect("learned lock");
        l.ttft_ms = ewma(l.ttft_ms, ttft.as_secs_f64() * 1000.0);
    }

    /// Record a streaming rate measured part-way through an answer.
    pub fn learn_rate(&self, tokens_per_second: f64) {
        if tokens_per_second.is_finite() && tokens_per_second > 0.0 {
            let mut l = self.learned.lock().expect("learned lock");
            l.tokens_per_second = ewma(l.tokens_per_second, tokens_per_second);
        }
    }

    /// Record a finished request's figures: its whole time and, for a
    /// streamed answer, the generation that followed the first byte.
    pub fn learn(&self, latency: Duration, generation: Option<Duration>, tokens: u64) {
        let mut l = self.learned.lock().expect("learned lock");
        l.latency_ms = ewma(l.latency_ms, latency.as_secs_f64() * 1000.0);
        if let Some(g) = generation {
            let gen_s = g.as_secs_f64();
            if tokens > 1 && gen_s > 0.0 {
                l.tokens_per_second = ewma(l.tokens_per_second, (tokens - 1) as f64 / gen_s);
            }
        }
    }

    /// Whether Baton may send it a request of its own (a probe, a model
    /// list) while it has requests in flight.
    pub fn serves_http_concurrently(&self) -> bool {
        self.concurrent_http.load(Ordering::Relaxed)
    }

    /// A response head arrived from it; returns when (for [`Self::note_streamed`]).
    pub(crate) fn note_head(&self) -> u64 {
        let now = self.health.now_ms();
        self.last_head_ms.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// A streamed answer whose head came at `own_head_ms` just completed:
    /// if another answer's head arrived while it was still streaming, the
    /// studio serves HTTP while generating.
    pub(crate) fn note_streamed(&self, own_head_ms: u64) {
        if self.serves_http_concurrently() {
            return;
        }
        let other = self.last_head_ms.load(Ordering::Relaxed);
        let proof = OVERLAP_PROOF.as_millis() as u64;
        if other > own_head_ms && other + proof < self.health.now_ms() {
            self.concurrent_http.store(true, Ordering::Relaxed);
            tracing::info!(
                worker = self.id(),
                "studio answers requests while it generates: probes and model lists may reach it while busy"
            );
        }
    }

    /// Where it is remembered: its address and the model it serves.
    pub(crate) fn memory_key(&self) -> (String, String) {
        (
            format!("{}:{}", self.cfg.host, self.cfg.port),
            self.cfg.model.clone(),
        )
    }

    /// What to remember of it, once it has answered anything.
    pub(crate) fn memory(&self) -> Option<StudioMemory> {
        let l = self.learned();
        let (slots, confirmed) = self.limit.remembered();
        if confirmed == 0 || l.ttft_ms == 0.0 {
            return None;
        }
        let (address, model) = self.memory_key();
        Some(StudioMemory {
            address,
            model,
            slots,
            confirmed,
            ttft_ms: l.ttft_ms,
            tokens_per_second: l.tokens_per_second,
            latency_ms: l.latency_ms,
            prefill_per_second: l.prefill_per_second,
            concurrent_http: self.serves_http_concurrently(),
        })
    }

    /// Start from what it was last seen to run and how fast (traffic
    /// corrects all of it as answers come).
    pub(crate) fn recall(&self, m: &StudioMemory) {
        self.limit.recall(m.slots, m.confirmed);
        *self.learned.lock().expect("learned lock") = Learned {
            latency_ms: m.latency_ms,
            ttft_ms: m.ttft_ms,
            tokens_per_second: m.tokens_per_second,
            prefill_per_second: m.prefill_per_second,
        };
        if m.concurrent_http {
            self.concurrent_http.store(true, Ordering::Relaxed);
        }
    }

    pub fn count_failure(&self, f: Failure) {
        self.counters.failures[f.index()].fetch_add(1, Ordering::Relaxed);
    }
}
