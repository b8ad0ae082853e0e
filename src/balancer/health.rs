//! A studio's health: its state, why it left rotation, and the one policy
//! that decides when it leaves and comes back.
//!
//! Real traffic first, and busy is never dead. A studio whose answers are
//! making progress (bytes arriving) is alive, whatever a probe says. A
//! studio with requests in flight gets no HTTP request of Baton's own:
//! single-threaded servers answer them only between generations (and
//! llama-cpp-python ends its generation for them), any Mac under full load
//! answers them slowly, and a long prompt keeps every server silent for
//! tens of seconds before its first token. So:
//! - an idle studio is probed over HTTP every `probe_interval_ms`, holding
//!   one of its slots so no request lands on it mid-probe;
//! - a busy studio that has gone quiet is judged from below HTTP
//!   ([`super::liveness`]): its connections' TCP state, else a bare TCP
//!   connect. Only that, a refused or unreachable connect, or a connect
//!   timeout with nothing heard from the studio, makes it *dead*: it leaves
//!   rotation and the requests waiting on it move elsewhere at once (the
//!   seed-000 black hole goes in about a second, busy or not);
//! - every other reason to leave rotation (a first token later than the
//!   first-token timeout, 5xx answers in a row, answers cut in a row, a
//!   failed probe) stops new traffic but lets requests already waiting on
//!   a live connection wait on: ejecting never kills a request whose studio
//!   is only slow;
//! - a failure on a reused connection is a stale connection, not a sick
//!   studio (the upstream pool retries it fresh and nothing is counted).
//!
//! Ejection opens the circuit; the studio comes back only through a
//! half-open probe (model list and a one-token completion) after an
//! exponential backoff, sent when the studio is idle (or known to answer
//! HTTP while it generates).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::liveness::Peer;
use super::upstream::SendError;
use super::worker::WorkerEntry;
use crate::studio::{ConnectFailure, health_path};

/// First wait before a half-open probe; doubles on each failed probe.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Consecutive 5xx answers after which a studio is ejected: one can be a
/// bad request the studio chokes on, two in a row is the studio.
const EJECT_AFTER_5XX: u32 = 2;

/// Consecutive cut answers (no complete one in between) that eject a
/// studio. One cut answer is that answer's problem (a client of a
/// single-threaded server interrupted it, say); three in a row is the
/// studio's.
const EJECT_AFTER_CUTS: u32 = 3;

/// Shortest time without a byte from a busy studio that counts as stalled.
/// Tokens arrive every few tens of ms (a 70B model on a Mac: ~100 ms); a
/// studio that sends nothing for most of a second while it has answers to
/// give is worth a look.
const MIN_STALL: Duration = Duration::from_millis(750);

/// A stall is also judged against the studio's own time to first token:
/// three times its usual wait is not a long prompt any more.
const STALL_TTFT_FACTOR: f64 = 3.0;

/// How often a busy studio that has gone quiet is looked at below HTTP
/// (reading its connections' TCP state costs a system call).
const QUIET_CHECK: Duration = Duration::from_millis(250);

/// How often an idle studio's model list is refreshed when its kind has a
/// cheaper health endpoint than the model list.
const MODELS_REFRESH: Duration = Duration::from_secs(30);

/// Where a worker stands with the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum State {
    /// Configured, not yet probed. Requests for it wait.
    Starting = 0,
    /// Takes traffic.
    Ready = 1,
    /// Circuit open: no traffic until a half-open probe passes.
    Ejected = 2,
    /// Half-open: one probe in flight decides readmission.
    Probing = 3,
    /// Finishes what it has, takes nothing new (asked by the user).
    Draining = 4,
    /// Removed by a reload: finishes what it has, then goes away.
    Removed = 5,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Starting,
        State::Ready,
        State::Ejected,
        State::Probing,
        State::Draining,
        State::Removed,
    ];

    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Starting,
            1 => State::Ready,
            2 => State::Ejected,
            3 => State::Probing,
            4 => State::Draining,
            _ => State::Removed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Ejected => "ejected",
            State::Probing => "probing",
            State::Draining => "draining",
            State::Removed => "removed",
        }
    }

    /// Still one of the pool's studios (not removed by a reload).
    pub fn is_live(self) -> bool {
        self != State::Removed
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a worker was ejected or a request failed on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The connect failed: nothing listens, or the host is unreachable.
    Connect,
    /// No answer in time (connect, first byte, probe or mid-stream).
    Timeout,
    /// The studio answered with a 5xx status.
    #[serde(rename = "status_5xx")]
    Status5xx,
    /// An answer was cut: the body broke, or ended without a finish.
    Stream,
    /// The probe got an answer that was not a model list.
    Probe,
}

impl Failure {
    pub const ALL: [Failure; 5] = [
        Failure::Connect,
        Failure::Timeout,
        Failure::Status5xx,
        Failure::Stream,
        Failure::Probe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Status5xx => "status_5xx",
            Failure::Stream => "stream",
            Failure::Probe => "probe",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The details behind the state, under one small lock.
#[derive(Debug, Default)]
pub(crate) struct Detail {
    pub last_reason: Option<Failure>,
    pub last_error: Option<String>,
    pub backoff: Duration,
    pub retry_at: Option<Instant>,
    pub probe_rtt_ms: Option<f64>,
    pub consecutive_5xx: u32,
    pub consecutive_cuts: u32,
    pub models_at: Option<Instant>,
    /// When a bare TCP connect last checked a busy, quiet studio.
    pub connect_checked_at: Option<Instant>,
}

/// One worker's health.
pub(crate) struct Health {
    state: AtomicU8,
    /// When a byte last arrived from the studio or a request was last sent
    /// to it, in ms since `epoch`: what "making progress" is judged by.
    last_progress_ms: AtomicU64,
    epoch: Instant,
    pub detail: Mutex<Detail>,
    /// Bumped when the studio is found dead (not merely ejected), so
    /// requests waiting for a first byte here move on at once.
    pub dead: watch::Sender<u64>,
    /// Wakes the prober early (an answer was cut: look now).
    pub check_now: Notify,
}

impl Health {
    pub fn new() -> Health {
        let (dead, _) = watch::channel(0);
        Health {
            state: AtomicU8::new(State::Starting as u8),
            last_progress_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            detail: Mutex::new(Detail::default()),
            dead,
            check_now: Notify::new(),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Something came from (or went to) the studio just now.
    pub fn progress(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_progress_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Milliseconds since this studio's entry was made (its own clock).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Time since the last progress.
    pub fn since_progress(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_progress_ms.load(Ordering::Relaxed)))
    }

    pub fn last_error(&self) -> Option<String> {
        self.detail.lock().expect("health lock").last_error.clone()
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

/// How long a busy studio may send nothing before it counts as stalled.
pub(crate) fn stall_window(w: &WorkerEntry) -> Duration {
    let ttft = w.learned().ttft_ms;
    MIN_STALL.max(Duration::from_secs_f64(ttft * STALL_TTFT_FACTOR / 1000.0))
}

/// The studio has requests in flight and bytes are flowing: it is alive.
pub(crate) fn making_progress(w: &WorkerEntry) -> bool {
    w.in_flight() > 0 && w.health.since_progress() < stall_window(w)
}

/// What the request path should do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The studio is in trouble: try another one.
    TryAnother,
    /// The studio is busy, not sick (its other answers flow): try again,
    /// it may be this one or another.
    Congested,
    /// The studio does not offer this API: ask another, count nothing.
    Lacks,
}

/// Something came from the studio lately: its answers flow, or the
/// kernel heard from it on one of its connections.
fn heard_from(w: &WorkerEntry) -> bool {
    making_progress(w) || w.upstream.peers().iter().any(|t| t.peer() == Peer::Heard)
}

/// The request could not get a response head from the studio.
pub(crate) fn on_send_error(s: &Shared, w: &WorkerEntry, e: &SendError) -> Verdict {
    match e {
        SendError::Connect(kind, detail) => {
            w.count_failure(Failure::Connect);
            // Refused or unreachable is decisive: nothing is listening.
            let decisive = matches!(
                kind,
                ConnectFailure::Refused
                    | ConnectFailure::NoRoute
                    | ConnectFailure::NetworkUnreachable
                    | ConnectFailure::NotPermitted
                    | ConnectFailure::LocalNetworkDenied
            );
            if decisive || !heard_from(w) {
                eject_dead(
                    s,
                    w,
                    Failure::Connect,
                    &format!("connect {}: {detail}", kind.describe()),
                );
            }
            Verdict::TryAnother
        }
        SendError::ConnectTimeout(t) => {
            if heard_from(w) {
                // Its other answers flow, or its kernel answers: a full
                // backlog or our own burst of connects, not a dead host.
                w.counters.congestion.fetch_add(1, Ordering::Relaxed);
                return Verdict::Congested;
            }
            w.count_failure(Failure::Timeout);
            eject_dead(
                s,
                w,
                Failure::Timeout,
                &format!("connect timed out after {t:?}"),
            );
            Verdict::TryAnother
        }
        SendError::Request(detail) => {
            // A fresh connection accepted the request and closed without
            // a response: count it, let the prober judge the studio.
            w.count_failure(Failure::Stream);
            note_cut(s, w, detail);
            Verdict::TryAnother
        }
    }
}

/// No first byte within the first-token timeout: the studio is too slow
/// (or wedged) for new traffic. Other requests waiting on it keep their
/// own first-token timeouts.
pub(crate) fn on_first_byte_timeout(s: &Shared, w: &WorkerEntry, detail: &str) {
    w.count_failure(Failure::Timeout);
    eject(s, w, Failure::Timeout, detail);
}

/// A 5xx answer; two in a row eject.
pub(crate) fn on_status_5xx(s: &Shared, w: &WorkerEntry, status: StatusCode) {
    w.count_failure(Failure::Status5xx);
    let n = {
        let mut d = w.health.detail.lock().expect("health lock");
        d.consecutive_5xx += 1;
        d.consecutive_5xx
    };
    if n >= EJECT_AFTER_5XX {
        eject(
            s,
            w,
            Failure::Status5xx,
            &format!("{n} consecutive answers {status}"),
        );
    }
}

/// An answer completed (or a non-5xx status arrived): the streaks end.
pub(crate) fn on_good_answer(w: &WorkerEntry) {
    let mut d = w.health.detail.lock().expect("health lock");
    d.consecutive_5xx = 0;
    d.consecutive_cuts = 0;
}

/// The first byte arrived with a non-5xx status.
pub(crate) fn on_first_byte(w: &WorkerEntry) {
    w.health.detail.lock().expect("health lock").consecutive_5xx = 0;
}

/// An answer was cut after the client got bytes (body broke, ended
/// without a finish, or stalled past the idle timeout).
pub(crate) fn on_cut_answer(s: &Shared, w: &WorkerEntry, reason: Failure, detail: &str) {
    w.count_failure(reason);
    note_cut(s, w, detail);
}

fn note_cut(s: &Shared, w: &WorkerEntry, detail: &str) {
    let n = {
        let mut d = w.health.detail.lock().expect("health lock");
        d.consecutive_cuts += 1;
        d.last_error = Some(detail.to_string());
        d.consecutive_cuts
    };
    if n >= EJECT_AFTER_CUTS {
        eject(
            s,
            w,
            Failure::Stream,
            &format!("{n} answers in a row cut: {detail}"),
        );
    } else {
        // Let the prober look now rather than at its next tick.
        w.health.check_now.notify_one();
    }
}

/// Take a worker out of rotation now: no new traffic until a half-open
/// probe passes. Requests already waiting on it keep waiting on their live
/// connections (up to the first-token timeout).
pub(crate) fn eject(s: &Shared, w: &WorkerEntry, reason: Failure, detail: &str) {
    take_out(s, w, reason, detail, false);
}

/// The studio is dead (found so below HTTP, or nothing listens): out of
/// rotation, and requests waiting for its first byte move on at once.
pub(crate) fn eject_dead(s: &Shared, w: &WorkerEntry, reason: Failure, detail: &str) {
    take_out(s, w, reason, detail, true);
}

fn take_out(s: &Shared, w: &WorkerEntry, reason: Failure, detail: &str, dead: bool) {
    let state = w.state();
    if !matches!(
        state,
        State::Ready | State::Starting | State::Probing | State::Draining
    ) {
        if dead && state == State::Ejected {
            // Out already, and now known dead: free its waiters.
            w.health.dead.send_modify(|n| *n += 1);
        }
        return;
    }
    {
        let mut d = w.health.detail.lock().expect("health lock");
        // A failed half-open probe doubles the wait; a fresh ejection starts small.
        d.backoff = if state == State::Probing {
            (d.backoff * 2).clamp(BACKOFF_START, BACKOFF_MAX)
        } else {
            BACKOFF_START
        };
        d.retry_at = Some(Instant::now() + d.backoff);
        d.last_reason = Some(reason);
        d.last_error = Some(detail.to_string());
        d.consecutive_5xx = 0;
        d.consecutive_cuts = 0;
    }
    w.health.set_state(State::Ejected);
    w.upstream.clear();
    // A failed half-open probe continues the same outage: not a new ejection.
    if state != State::Probing {
        w.counters.ejections[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
    if dead {
        w.health.dead.send_modify(|n| *n += 1);
    }
    // Waiters held back for it, or only it could serve, are looked at again.
    s.pool.dispatch();
    s.changed();
    if state == State::Probing {
        tracing::debug!(worker = w.id(), "half-open probe failed: {detail}");
    } else {
        tracing::warn!(
            worker = w.id(),
            reason = reason.as_str(),
            dead,
            "worker ejected: {detail}"
        );
    }
}

/// Put a worker (back) into rotation.
fn admit(shared: &Shared, w: &WorkerEntry, models: Option<Vec<String>>, rtt: Duration) {
    let was = w.state();
    {
        let mut d = w.health.detail.lock().expect("health lock");
        d.probe_rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
        d.retry_at = None;
        if was != State::Ready {
            d.backoff = Duration::ZERO;
            d.last_error = None;
        }
        if models.is_some() {
            d.models_at = Some(Instant::now());
        }
    }
    if let Some(m) = models {
        w.set_models(m);
    }
    if matches!(was, State::Probing | State::Ejected) {
        // What it learned before the outage may be stale: start fresh.
        w.forget_speed();
    }
    if matches!(was, State::Starting | State::Probing | State::Ejected) {
        w.health.set_state(State::Ready);
        match was {
            State::Starting => tracing::debug!(worker = w.id(), url = %w.base_url, "worker ready"),
            _ => tracing::info!(worker = w.id(), "worker readmitted"),
        }
        shared.pool.dispatch();
        shared.changed();
    }
}

/// Probe loop for one worker; ends when the worker is removed or `stop` fires.
pub(super) async fn run(shared: Arc<Shared>, w: Arc<WorkerEntry>, stop: CancellationToken) {
    loop {
        match w.state() {
            State::Removed => return,
            State::Starting => {
                // First contact: the model list tells what it serves, and
                // empty requests tell which other APIs it speaks.
                match probe(&shared, &w, Probe::Models).await {
                    Ok((models, rtt)) => {
                        discover_apis(&shared, &w).await;
                        admit(&shared, &w, models, rtt)
                    }
                    Err((reason, detail)) => {
                        w.count_failure(Failure::Probe);
                        eject(&shared, &w, reason, &detail);
                        continue;
                    }
                }
            }
            State::Ejected | State::Probing => {
                let retry_at = w.health.detail.lock().expect("health lock").retry_at;
                let wait = retry_at
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                if w.state() != State::Ejected {
                    continue;
                }
                if shared.pool.busy_at(&w) > 0 && !w.serves_http_concurrently() {
                    // Requests still inside a one-at-a-time server: the
                    // probe would wait behind them (or end one). Later.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(shared.settings().probe_interval) => {}
                    }
                    continue;
                }
                w.health.set_state(State::Probing);
                // Half-open: the model list and one real token must both
                // work, so a studio that lists models but fails generations
                // stays out.
                match probe(&shared, &w, Probe::Readmit).await {
                    Ok((models, rtt)) => admit(&shared, &w, models, rtt),
                    Err((reason, detail)) => {
                        eject(&shared, &w, reason, &detail);
                    }
                }
                continue;
            }
            State::Ready | State::Draining => {
                check_serving(&shared, &w).await;
            }
        }
        // A busy studio is looked at again the moment its answers would
        // count as quiet, and then often (below HTTP, that is cheap): a
        // studio that dies while serving is dropped in about a second.
        let mut interval = shared.settings().probe_interval;
        if making_progress(&w) {
            let left = stall_window(&w).saturating_sub(w.health.since_progress());
            interval = interval.min(left + Duration::from_millis(20));
        } else if w.in_flight() > 0 {
            interval = interval.min(QUIET_CHECK);
        }
        let mut dead = w.health.dead.subscribe();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = w.health.check_now.notified() => {}
            // Found dead by live traffic: start the backoff now.
            _ = dead.changed() => {}
        }
    }
}

/// One look at a worker in rotation: leave a serving one alone, probe an
/// idle one over HTTP while holding a slot, and judge a busy one that has
/// gone quiet from below HTTP.
async fn check_serving(shared: &Arc<Shared>, w: &Arc<WorkerEntry>) {
    if making_progress(w) {
        return;
    }
    if w.in_flight() > 0 {
        check_quiet(shared, w).await;
        return;
    }
    let kind = if w
        .health
        .detail
        .lock()
        .expect("health lock")
        .models_at
        .is_none_or(|t| t.elapsed() > MODELS_REFRESH)
    {
        Probe::Models
    } else {
        Probe::Alive
    };
    // Idle: hold one of its slots, so no request reaches a single-threaded
    // studio while the probe is inside it.
    let Some(slot) = shared.pool.try_claim_idle(w) else {
        // A request took it a moment ago: it is serving, not idle.
        return;
    };
    let result = probe(shared, w, kind).await;
    drop(slot);
    match result {
        Ok((models, rtt)) => admit(shared, w, models, rtt),
        Err((reason, detail)) => {
            w.count_failure(Failure::Probe);
            // Nothing waits on an idle studio; a dead one is marked so.
            if matches!(reason, Failure::Connect | Failure::Timeout) {
                eject_dead(shared, w, reason, &detail);
            } else {
                eject(shared, w, reason, &detail);
            }
        }
    }
}

/// A studio with requests in flight has sent nothing for a while: a long
/// prefill, or a dead host? Asked below HTTP only (see [`super::liveness`]).
async fn check_quiet(shared: &Shared, w: &WorkerEntry) {
    let mut heard = false;
    for t in w.upstream.peers() {
        match t.peer() {
            Peer::Gone(why) => {
                w.count_failure(Failure::Timeout);
                eject_dead(shared, w, Failure::Timeout, &format!("TCP: {why}"));
                return;
            }
            Peer::Heard => heard = true,
            Peer::Unknown => {}
        }
    }
    if heard {
        return;
    }
    // Nothing to go by on its connections: a bare connect, at most once
    // per probe interval.
    let settings = shared.settings();
    {
        let mut d = w.health.detail.lock().expect("health lock");
        if d.connect_checked_at
            .is_some_and(|t| t.elapsed() < settings.probe_interval)
        {
            return;
        }
        d.connect_checked_at = Some(Instant::now());
    }
    let (reason, detail) = match w.upstream.connect_check(settings.connect_timeout).await {
        Ok(()) => return,
        Err(SendError::Connect(kind, detail)) => (
            Failure::Connect,
            format!("connect {}: {detail}", kind.describe()),
        ),
        Err(SendError::ConnectTimeout(t)) => {
            (Failure::Timeout, format!("connect timed out after {t:?}"))
        }
        Err(SendError::Request(detail)) => (Failure::Connect, detail),
    };
    // Its answers may have started flowing while we waited.
    if reason == Failure::Timeout && making_progress(w) {
        return;
    }
    w.count_failure(reason);
    eject_dead(shared, w, reason, &detail);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// The kind's cheapest health endpoint.
    Alive,
    /// The model list (validated), to learn what it serves.
    Models,
    /// The model list and a one-token completion: readmission.
    Readmit,
}

type ProbeResult = Result<(Option<Vec<String>>, Duration), (Failure, String)>;

async fn probe(shared: &Shared, w: &WorkerEntry, what: Probe) -> ProbeResult {
    let timeout = shared.settings().probe_timeout;
    let path = match what {
        Probe::Alive => health_path(w.cfg.kind),
        Probe::Models | Probe::Readmit => "/v1/models",
    };
    let t0 = Instant::now();
    let (status, body) = fetch(shared, w, Method::GET, path, Bytes::new(), timeout).await?;
    let rtt = t0.elapsed();
    if !status.is_success() {
        return Err((Failure::Probe, format!("GET {path} answered {status}")));
    }
    let models = if path == "/v1/models" {
        Some(crate::studio::parse_openai_models(&body).ok_or_else(|| {
            (
                Failure::Probe,
                "GET /v1/models did not return a model list (is this an OpenAI-compatible server?)"
                    .to_string(),
            )
        })?)
    } else {
        None
    };
    if what == Probe::Readmit {
        let body = serde_json::json!({
            "model": w.cfg.model, "max_tokens": 1, "stream": false,
            "messages": [{"role": "user", "content": "ping"}],
        });
        // A cold model may need to load: allow more than the list probe.
        let limit = timeout.max(Duration::from_secs(1)) * 5;
        let (status, _) = fetch(
            shared,
            w,
            Method::POST,
            "/v1/chat/completions",
            Bytes::from(body.to_string()),
            limit,
        )
        .await?;
        if status.is_server_error() {
            return Err((
                Failure::Status5xx,
                format!("completion probe answered {status}"),
            ));
        }
        // 2xx, or a 4xx that proves the server is alive and answering.
    }
    Ok((models, rtt))
}

/// Which other APIs the studio speaks: an empty request to an endpoint it
/// has gets a 4xx (or 5xx) about the request; one it lacks gets "not
/// found". Learned before any client asks, so a studio without Anthropic's
/// API never sees a Claude Code request.
async fn discover_apis(shared: &Shared, w: &WorkerEntry) {
    use super::answer::Api;
    const ASK: [(&str, &[Api]); 2] = [
        ("/v1/messages", &[Api::Messages]),
        (
            "/api/chat",
            &[
                Api::OllamaChat,
                Api::OllamaGenerate,
                Api::OllamaEmbed,
                Api::OllamaEmbeddings,
                Api::OllamaShow,
            ],
        ),
    ];
    let timeout = shared.settings().probe_timeout;
    for (path, apis) in ASK {
        if let Ok((status, body)) = fetch(
            shared,
            w,
            Method::POST,
            path,
            Bytes::from_static(b"{}"),
            timeout,
        )
        .await
        {
            let has = !super::answer::lacks_api(status, &body);
            for api in apis {
                w.learn_capability(*api, has);
            }
        }
    }
}

/// One small request over the studio's connection pool, whole body read,
/// within `limit` (probes, and the catalogs that ask every studio).
pub(crate) async fn fetch(
    shared: &Shared,
    w: &WorkerEntry,
    method: Method,
    path: &str,
    body: Bytes,
    limit: Duration,
) -> Result<(StatusCode, Bytes), (Failure, String)> {
    let settings = shared.settings();
    let make = || {
        let mut b = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, w.upstream.authority())
            .header(header::VIA, &shared.via);
        if !body.is_empty() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(a) = &w.auth_header {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Full::new(body.clone()))
            .expect("valid probe request")
    };
    let work = async {
        let (resp, conn) = w
            .upstream
            .send(make, settings.connect_timeout)
            .await
            .map_err(|e| match e {
                SendError::Connect(..) => (Failure::Connect, format!("{path} probe: {e}")),
                SendError::ConnectTimeout(_) => (Failure::Timeout, format!("{path} probe: {e}")),
                SendError::Request(d) => (Failure::Probe, format!("{path} probe failed: {d}")),
            })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| (Failure::Probe, format!("{path} probe body broke: {e}")))?
            .to_bytes();
        w.upstream.put_back(conn, false);
        Ok((status, bytes))
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err((
            Failure::Timeout,
            format!("{method} {path} probe timed out after {limit:?}"),
        )),
    }
}
