//! How many requests a studio really runs at once, learned from its answers.
//!
//! Users guess `max_concurrent_requests`; nobody knows how many generations
//! LM Studio, Ollama or MLX really run in parallel on each Mac. A studio
//! given more than it runs queues the rest inside, where no other studio
//! can take them, and it shows: a queued request's first token waits for a
//! whole answer to end. So each studio gets an adaptive limit (in the
//! spirit of TCP's and Netflix's concurrency limiters, with the signal an
//! LLM server gives):
//! - a first token that came much later than the studio's unloaded time to
//!   first token (allowing for the prompt's own prefill) was queued: the
//!   limit drops to the number in flight when that request was sent, minus
//!   one;
//! - while the limit is what holds requests back and first tokens come on
//!   time, it rises by one now and then (a probe); a failed probe makes the
//!   next one wait twice as long, so the limit does not oscillate;
//! - the declared number is a ceiling (`"auto"`: [`AUTO_CEILING`]);
//! - a number is not trusted blindly: like TCP's slow start, a studio is
//!   given at most twice the most requests it has been seen to start on
//!   time, so an over-committed guess costs a couple of queued requests,
//!   not a burst of them (first tokens come fast, so a studio that does
//!   run its declared number gets there within a few first tokens).
//!
//! A studio slowed by something else (another app, heat) queues sooner, so
//! it is given less work, and more again when probes succeed.
//!
//! What was learned outlives the balancer (the store keeps it per studio
//! and model): a restarted balancer starts a known studio where it was
//! last seen to run ([`Limit::recall`]), and the same signals re-learn it
//! only if it now answers differently.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::studio::AUTO_CEILING;

/// A first token later than this many times the unloaded one (plus the
/// slack) was queued: waiting for a slot costs a whole answer, far more
/// than batching a prompt in with running generations does.
const QUEUED_FACTOR: f64 = 2.0;
const QUEUED_SLACK: Duration = Duration::from_millis(50);

/// ... and later than this share of the studio's usual answer on top of the
/// unloaded time: a request queued behind a running answer waits for (part
/// of) that answer, while a busy machine's jitter is far shorter.
const QUEUED_ANSWER_SHARE: f64 = 0.5;

/// Recent unloaded first-token times kept to find the baseline.
const BASELINE_WINDOW: usize = 32;

/// Good samples at the limit before the first probe upward, and the most
/// a failed probe can stretch that to.
const PROBE_AFTER_MIN: u32 = 3;
const PROBE_AFTER_MAX: u32 = 256;

#[derive(Debug)]
struct Learning {
    ceiling: u32,
    /// Recent first-token times with the prompt's prefill taken out.
    baseline: VecDeque<Duration>,
    /// Good samples at the limit since the last change.
    good_at_limit: u32,
    /// Good samples at the limit needed before the next probe.
    probe_after: u32,
    /// The limit was just raised: the next samples tell whether it holds.
    probing: bool,
}

/// One studio's learned limit.
#[derive(Debug)]
pub struct Limit {
    current: AtomicU32,
    /// The most requests in flight at which one got its first token on time.
    confirmed: AtomicU32,
    learning: Mutex<Learning>,
}

/// What one first token said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Raised(u32),
    Lowered(u32),
}

impl Limit {
    /// Up to the declared number (never more), or up to [`AUTO_CEILING`]
    /// for `"auto"`; slow start and queueing find the real number below it.
    pub fn new(declared: Option<u32>) -> Limit {
        let ceiling = declared.unwrap_or(AUTO_CEILING).max(1);
        let start = ceiling;
        Limit {
            current: AtomicU32::new(start),
            confirmed: AtomicU32::new(0),
            learning: Mutex::new(Learning {
                ceiling,
                baseline: VecDeque::with_capacity(BASELINE_WINDOW),
                good_at_limit: 0,
                probe_after: PROBE_AFTER_MIN,
                probing: false,
            }),
        }
    }

    /// Start from what this studio was last seen to run: `slots` learned
    /// (under the ceiling), of which `confirmed` got first tokens on time.
    /// Slow start then begins from there, not from one.
    pub fn recall(&self, slots: u32, confirmed: u32) {
        let ceiling = self.learning.lock().expect("limit lock").ceiling;
        let slots = slots.clamp(1, ceiling);
        self.current.store(slots, Ordering::Relaxed);
        self.confirmed
            .store(confirmed.min(slots), Ordering::Relaxed);
    }

    /// What to remember: the learned limit and the confirmed level.
    pub fn remembered(&self) -> (u32, u32) {
        (self.learned(), self.confirmed.load(Ordering::Relaxed))
    }

    /// The limit: what the studio is given at once now.
    pub fn current(&self) -> u32 {
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        self.learned().min(confirmed.saturating_mul(2).max(1))
    }

    /// Whether the limit is a measurement: the studio has started that
    /// many requests on time, or queued beyond it. Until then slow start
    /// caps it, and it says nothing yet of what the studio runs.
    pub fn measured(&self) -> bool {
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        confirmed > 0 && confirmed.saturating_mul(2) >= self.learned()
    }

    /// The learned limit, before slow start.
    fn learned(&self) -> u32 {
        self.current.load(Ordering::Relaxed)
    }

    /// A first token arrived `ttft` after sending; `prefill` is what the
    /// prompt itself should take there; `level` is how many requests the
    /// studio had (this one included) when it was sent; `answer` is how
    /// long its answers usually take, when known.
    pub fn on_first_token(
        &self,
        ttft: Duration,
        prefill: Duration,
        level: u32,
        answer: Option<Duration>,
    ) -> Change {
        let mut l = self.learning.lock().expect("limit lock");
        let own = ttft.saturating_sub(prefill);
        let base = l.baseline.iter().min().copied();
        if l.baseline.len() == BASELINE_WINDOW {
            l.baseline.pop_front();
        }
        l.baseline.push_back(own);
        let before = self.current();
        let queued = base.is_some_and(|b| {
            own > b.mul_f64(QUEUED_FACTOR) + QUEUED_SLACK
                && answer.is_none_or(|a| own > b + a.mul_f64(QUEUED_ANSWER_SHARE))
        });
        if !queued && level > self.confirmed.load(Ordering::Relaxed) {
            self.confirmed.store(level, Ordering::Relaxed);
        }
        let Some(_) = base else {
            return raised(before, self.current());
        };
        let limit = self.learned();
        if queued {
            // The studio runs fewer than `level` at once.
            let fits = level.saturating_sub(1).max(1);
            if fits < limit {
                if l.probing {
                    l.probe_after = (l.probe_after * 2).min(PROBE_AFTER_MAX);
                }
                l.probing = false;
                l.good_at_limit = 0;
                self.current.store(fits, Ordering::Relaxed);
                self.confirmed.fetch_min(fits, Ordering::Relaxed);
                return Change::Lowered(fits);
            }
            return Change::None;
        }
        if level < limit {
            return raised(before, self.current());
        }
        l.good_at_limit += 1;
        if l.probing && l.good_at_limit >= limit {
            // The last raise held.
            l.probing = false;
            l.probe_after = (l.probe_after / 2).max(PROBE_AFTER_MIN);
        }
        if l.good_at_limit >= l.probe_after && limit < l.ceiling {
            l.good_at_limit = 0;
            l.probing = true;
            self.current.store(limit + 1, Ordering::Relaxed);
        }
        raised(before, self.current())
    }
}

fn raised(before: u32, now: u32) -> Change {
    if now > before {
        Change::Raised(now)
    } else {
        Change::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const ANSWER: Duration = Duration::from_millis(1600);

    /// A studio that really runs `real` at once: the first token of a
    /// request sent at `level` waits for a slot beyond `real`.
    fn ttft(real: u32, level: u32) -> Duration {
        if level <= real {
            BASE
        } else {
            BASE + ANSWER * (level - real)
        }
    }

    /// Drive a limit with a closed loop that always fills it.
    fn settle(limit: &Limit, real: u32, samples: usize) -> Vec<u32> {
        let mut seen = Vec::new();
        for _ in 0..samples {
            let l = limit.current();
            for level in 1..=l {
                limit.on_first_token(ttft(real, level), Duration::ZERO, level, Some(ANSWER));
            }
            seen.push(limit.current());
        }
        seen
    }

    #[test]
    fn slow_start_is_not_a_measurement_until_the_studio_has_answered_at_it() {
        // Declared 4: given 1 before any answer, but nothing is known yet.
        let limit = Limit::new(Some(4));
        assert_eq!((limit.current(), limit.measured()), (1, false));
        settle(&limit, 4, 1);
        assert_eq!((limit.current(), limit.measured()), (2, false));
        settle(&limit, 4, 1);
        assert_eq!((limit.current(), limit.measured()), (4, true));
        // One that runs a single request: queueing measures it.
        let serial = Limit::new(Some(4));
        settle(&serial, 1, 10);
        assert_eq!((serial.current(), serial.measured()), (1, true));
    }

    #[test]
    fn an_overestimated_studio_is_brought_down_to_what_it_runs() {
        for guess in [4, 16] {
            let limit = Limit::new(Some(guess));
            let seen = settle(&limit, 2, 200);
            let tail = &seen[150..];
            let at_two = tail.iter().filter(|l| **l == 2).count();
            assert!(
                at_two as f64 >= tail.len() as f64 * 0.9,
                "guess {guess}: {tail:?}"
            );
            assert!(tail.iter().all(|l| *l <= 3), "guess {guess}: {tail:?}");
        }
    }

    #[test]
    fn auto_finds_what_the_studio_runs_and_no_more_than_the_ceiling() {
        let limit = Limit::new(None);
        let seen = settle(&limit, 6, 120);
        assert_eq!(seen[0], 2, "slow start");
        assert!(seen[60..].iter().all(|l| (5..=7).contains(l)), "{seen:?}");
        let exact = Limit::new(Some(4));
        let seen = settle(&exact, 8, 50);
        assert!(
            seen.iter().all(|l| *l <= 4),
            "a declared number is a ceiling"
        );
        assert_eq!(*seen.last().unwrap(), 4);
    }

    #[test]
    fn exact_slots_are_reached_within_a_few_first_tokens_and_stay() {
        let limit = Limit::new(Some(4));
        let seen = settle(&limit, 4, 100);
        assert_eq!(&seen[..3], &[2, 4, 4], "slow start doubles per round");
        assert!(seen[2..].iter().all(|l| *l == 4));
    }

    #[test]
    fn an_over_committed_guess_sends_only_a_few_requests_to_queue() {
        let limit = Limit::new(Some(16));
        let mut queued = 0;
        for _ in 0..5 {
            let l = limit.current();
            for level in 1..=l {
                if level > 2 {
                    queued += 1;
                }
                limit.on_first_token(ttft(2, level), Duration::ZERO, level, Some(ANSWER));
            }
        }
        assert!(queued <= 3, "{queued} requests queued inside the studio");
        assert_eq!(limit.current(), 2);
    }

    #[test]
    fn a_studio_that_slows_down_gets_less_and_then_more_again() {
        let limit = Limit::new(Some(8));
        settle(&limit, 8, 20);
        assert_eq!(limit.current(), 8);
        // Throttled: it now runs 3 at once.
        let slow = settle(&limit, 3, 40);
        assert!(slow[10..].iter().all(|l| *l <= 4), "{slow:?}");
        // Recovered: probes find the room again.
        let back = settle(&limit, 8, 400);
        assert!(back[350..].iter().all(|l| *l >= 7), "{:?}", &back[350..]);
    }

    #[test]
    fn a_recalled_limit_starts_where_it_was_and_is_relearned_when_the_studio_runs_fewer() {
        let learned = Limit::new(None);
        settle(&learned, 6, 80);
        let (slots, confirmed) = learned.remembered();
        assert!((5..=7).contains(&slots), "{slots}");
        let again = Limit::new(None);
        again.recall(slots, confirmed);
        assert_eq!(again.current(), slots, "no slow start for a known studio");
        // It now runs only 2 at once: the first queued first tokens say so.
        let seen = settle(&again, 2, 20);
        assert!(seen[5..].iter().all(|l| *l <= 3), "{seen:?}");
        // A remembered figure above a (new, lower) declared ceiling is cut to it.
        let capped = Limit::new(Some(4));
        capped.recall(slots, confirmed);
        assert_eq!(capped.current(), 4);
    }

    #[test]
    fn a_busy_machines_jitter_is_not_mistaken_for_queueing() {
        let limit = Limit::new(Some(2));
        settle(&limit, 2, 3);
        // Three times the unloaded time, but far less than half an answer.
        let c = limit.on_first_token(BASE * 3, Duration::ZERO, 2, Some(ANSWER));
        assert_eq!(c, Change::None);
        assert_eq!(limit.current(), 2);
    }

    #[test]
    fn long_prompts_are_not_mistaken_for_queueing() {
        let limit = Limit::new(Some(4));
        settle(&limit, 4, 3);
        // Three seconds to first token, of which the prompt explains all.
        let c = limit.on_first_token(
            BASE + Duration::from_secs(3),
            Duration::from_secs(3),
            4,
            Some(ANSWER),
        );
        assert_eq!(c, Change::None);
        assert_eq!(limit.current(), 4);
    }
}
