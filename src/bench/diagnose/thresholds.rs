//! The diagnosis's thresholds, in one place. Each says why it has its
//! value.

/// Figures from fewer requests than this are not compared: one request
/// is an anecdote, two already show whether a value repeats.
pub(super) const MIN_REQUESTS: u64 = 2;
/// A studio whose failed attempts reach this share is flaky: healthy
/// studios fail none, and 2% is one request in fifty, more than a single
/// unlucky cut in a short run.
pub(super) const FLAKY_RATE: f64 = 0.02;
/// ...and at least this many, so one lost request in a tiny run is not a
/// verdict.
pub(super) const FLAKY_MIN_FAILURES: u64 = 2;
/// From this failure share on, the flaky studio costs the pool more than
/// it adds (retries, ejections, cut answers): critical.
pub(super) const FLAKY_CRITICAL_RATE: f64 = 0.10;
/// A studio is slow when one answer alone takes this many times the
/// median of the others (outside-the-studio time removed). Identical
/// hardware measures within 10-20%; a different chip or model size shows
/// as 2x and more.
pub(super) const SLOW_FACTOR: f64 = 1.8;
/// Without probes (older runs), a studio that served less than this
/// fraction of its share of the pool's slots at the top level is slow.
pub(super) const SLOW_SHARE_RATIO: f64 = 0.5;
/// Time outside the studio (network, HTTP, unreported queueing) counts as
/// network-bound from this share of the time to first token: above a
/// quarter, the wire, not the model, decides how fast answers start.
pub(super) const NETWORK_SHARE: f64 = 0.25;
/// ...and from this many milliseconds: a request and its answer cross
/// the network at least twice, so the checklist's 10 ms RTT limit shows
/// as 20 ms outside the studio (a wired LAN costs 1-5 ms).
pub(super) const NETWORK_MIN_MS: f64 = 20.0;
/// A studio given N >= 2 slots serializes when N requests at once give
/// less than this many times the throughput of one: parallel slots give
/// 1.5x and more even on busy hardware, a one-at-a-time server 1.0x.
pub(super) const SERIAL_MAX_GAIN: f64 = 1.4;
/// ...while its time to first token grows by at least this factor (the
/// others queue behind the one running: N slots make the median request
/// wait for about N/2 others).
pub(super) const SERIAL_TTFT_GROWTH: f64 = 1.8;
/// The knee of the sweep: the lowest level from which no higher one gains
/// more than this share of its extra concurrency in throughput (doubling
/// the concurrency buys less than 25% more). Below saturation doubling
/// it doubles throughput; a loaded client or noise costs 10-20%.
pub(super) const KNEE_GAIN: f64 = 0.25;
/// Past the knee, the pool is saturated when the time to first token has
/// grown by this factor: queueing, not work.
pub(super) const SATURATED_TTFT_GROWTH: f64 = 1.5;
/// Levels at least this many times the knee's concurrency count as past
/// it (levels just above it are within the noise of the knee).
pub(super) const SATURATED_PAST: f64 = 1.5;
/// Running at this many times the knee's concurrency or more is most of
/// the latency spent queueing: a warning rather than a note.
pub(super) const SATURATED_FAR: f64 = 2.0;
/// A first answer is cold when it took this many times the steady time
/// to first token...
pub(super) const COLD_FACTOR: f64 = 3.0;
/// ...and at least this much longer: model loads take seconds (5-60 s
/// from disk), while a cold prompt cache or a first connection costs
/// milliseconds.
pub(super) const COLD_MIN_EXCESS_MS: f64 = 1000.0;
/// Little's law: a level whose requests in flight (throughput x latency)
/// fall below this share of the concurrency asked was held back by the
/// client. Tail effects of a short run cost ~5%.
pub(super) const CLIENT_LITTLE_MIN: f64 = 0.8;
/// Requests Baton saw in flight below this share of what the client had
/// on the wire at the same moments: the client machine held them
/// (sampling ten times a second is coarse, hence the margin).
pub(super) const CLIENT_BATON_MIN: f64 = 0.6;
/// Little's law is only read when at most this share failed (fast
/// failures shorten the mean latency and fake a shortfall).
pub(super) const CLIENT_MAX_FAILED: f64 = 0.05;
/// Baton's own process (the client and the in-process balancer) using
/// this share of the machine's CPU while something was measured makes the
/// client the suspect: with every core busy it delays every socket event,
/// so its client-side timings (time outside the studio, Baton's overhead)
/// are not trusted, and a shortfall of throughput is put on the client.
/// (The machine's overall CPU is not used: other programs' load takes
/// only their share of the cores, and measured figures hold up under it.)
pub(super) const CLIENT_CPU_BUSY: f64 = 90.0;
/// ...a shortfall below this share of what the studios alone promise at
/// that concurrency (short runs measure within 10-15% of it).
pub(super) const CLIENT_CPU_SHORTFALL: f64 = 0.8;
/// A level that spent this share of its time draining (the client had
/// nothing left to send, fewer than the concurrency in flight) ran short
/// of requests: with equal answers, 48 requests at concurrency 32 drain
/// for half the level, while ten rounds of them drain for a tenth.
pub(super) const SHORT_RAMP_SHARE: f64 = 0.25;
/// A level gets this many rounds of its concurrency in requests in the
/// remedy: then the drain is about a tenth of it.
pub(super) const SHORT_ROUNDS: u64 = 10;
/// Baton's own added latency matters from this many milliseconds per
/// request at concurrency 1 (in process on the same machine it adds 1-3
/// ms; a slow host or a debug build adds tens)...
pub(super) const OVERHEAD_MIN_MS: f64 = 25.0;
/// ...and this share of the request's time.
pub(super) const OVERHEAD_MIN_SHARE: f64 = 0.05;
/// Baton samples its in-flight count ten times a second; fewer samples
/// than this say nothing.
pub(super) const MIN_BATON_SAMPLES: u64 = 5;
