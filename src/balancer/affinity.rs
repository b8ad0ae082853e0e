//! Which studio holds which conversation's prompt cache.
//!
//! llama.cpp, LM Studio and Ollama keep the last prompt's cache per slot, so
//! a conversation's next turn is fast only on the studio that served the
//! turn before. Baton remembers, per hashed prompt prefix, the studio that
//! processed it; the next turn's prompt starts with the previous one, so the
//! longest remembered prefix names the studio that holds the most of it.
//!
//! Memory is bounded: two generations of a hash map. New entries go into the
//! young one; when it is full it becomes the old one and the previous old
//! one is dropped. A lookup that hits the old generation moves the entry to
//! the young one, so conversations in use survive and idle ones age out.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};

/// Entries per generation: with two generations, at most twice this many
/// prefixes are remembered (tens of bytes each).
pub(crate) const GENERATION: usize = 64 * 1024;

/// Prompts are hashed in blocks of this many characters when they are plain
/// text (completions); chat prompts are hashed message by message.
const TEXT_BLOCK: usize = 1024;

/// Rough characters per token, to turn a prefix's length into tokens.
const CHARS_PER_TOKEN: usize = 4;

/// A prompt as a chain of prefix hashes: `hashes[i]` covers the prompt up
/// to and including block `i`; `tokens[i]` estimates that prefix's length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Prefixes {
    pub hashes: Vec<u64>,
    pub tokens: Vec<u32>,
}

impl Prefixes {
    /// Chain-hash the parts of a prompt (messages, or text blocks) in order.
    pub fn of_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Prefixes {
        let mut h = FNV_OFFSET;
        let mut chars = 0usize;
        let mut out = Prefixes::default();
        for p in parts {
            h = fnv(h, p);
            // A separator, so ["ab","c"] and ["a","bc"] differ.
            h = fnv(h, &[0xff]);
            chars += p.len();
            out.hashes.push(h);
            out.tokens
                .push(u32::try_from(chars / CHARS_PER_TOKEN).unwrap_or(u32::MAX));
        }
        out
    }

    /// A plain-text prompt, in blocks.
    pub fn of_text(text: &str) -> Prefixes {
        Prefixes::of_parts(text.as_bytes().chunks(TEXT_BLOCK))
    }

    pub fn total_tokens(&self) -> u32 {
        self.tokens.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: fast, and stable across runs (unlike the std hasher's seed).
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Keys are already hashes: use them as they are.
#[derive(Clone, Copy, Default)]
struct Identity;

impl BuildHasher for Identity {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Gen = HashMap<u64, Arc<str>, Identity>;

/// The remembered prefixes.
pub(crate) struct Affinity {
    gens: Mutex<(Gen, Gen)>,
    capacity: usize,
}

/// Where a prompt's longest remembered prefix was processed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub worker: Arc<str>,
    /// Estimated tokens of the prompt that studio has cached.
    pub tokens: u32,
}

impl Affinity {
    pub fn new() -> Affinity {
        Affinity::with_capacity(GENERATION)
    }

    pub fn with_capacity(capacity: usize) -> Affinity {
        Affinity {
            gens: Mutex::new((Gen::default(), Gen::default())),
            capacity: capacity.max(1),
        }
    }

    /// The studio holding the longest remembered prefix of this prompt.
    pub fn lookup(&self, p: &Prefixes) -> Option<Hit> {
        let mut g = self.gens.lock().expect("affinity lock");
        for i in (0..p.hashes.len()).rev() {
            let h = p.hashes[i];
            let found = match g.0.get(&h) {
                Some(w) => Some(w.clone()),
                None => g.1.remove(&h).inspect(|w| {
                    // In use again: keep it young.
                    insert(&mut g, h, w.clone(), self.capacity);
                }),
            };
            if let Some(worker) = found {
                return Some(Hit {
                    worker,
                    tokens: p.tokens[i],
                });
            }
        }
        None
    }

    /// `worker` has now processed this prompt: its prefixes are cached there.
    pub fn record(&self, p: &Prefixes, worker: &Arc<str>) {
        let mut g = self.gens.lock().expect("affinity lock");
        // The whole prompt, and a few shorter prefixes so a conversation
        // that branches (an edited earlier message) still finds the studio
        // holding the shared part.
        let n = p.hashes.len();
        for (i, h) in p.hashes.iter().enumerate() {
            let keep = i + 1 == n || (i + 1).is_power_of_two();
            if keep {
                insert(&mut g, *h, worker.clone(), self.capacity);
            }
        }
    }

    /// Forget a studio (removed from the pool).
    pub fn forget(&self, worker: &str) {
        let mut g = self.gens.lock().expect("affinity lock");
        g.0.retain(|_, w| &**w != worker);
        g.1.retain(|_, w| &**w != worker);
    }

    /// Prefixes remembered now (at most twice the generation size).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let g = self.gens.lock().expect("affinity lock");
        g.0.len() + g.1.len()
    }
}

fn insert(g: &mut (Gen, Gen), h: u64, w: Arc<str>, capacity: usize) {
    if g.0.len() >= capacity && !g.0.contains_key(&h) {
        g.1 = std::mem::take(&mut g.0);
    }
    g.0.insert(h, w);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convo(turns: usize, salt: &str) -> Vec<String> {
        (0..turns)
            .map(|i| format!("{{\"role\":\"user\",\"content\":\"{salt} turn {i}\"}}"))
            .collect()
    }

    fn prefixes(msgs: &[String]) -> Prefixes {
        Prefixes::of_parts(msgs.iter().map(|m| m.as_bytes()))
    }

    #[test]
    fn the_next_turn_finds_the_studio_of_the_turn_before() {
        let a = Affinity::new();
        let w: Arc<str> = Arc::from("studio-2");
        let turn1 = convo(3, "x");
        a.record(&prefixes(&turn1), &w);
        let turn2 = convo(5, "x");
        let hit = a.lookup(&prefixes(&turn2)).expect("a hit");
        assert_eq!(hit.worker, w);
        assert_eq!(hit.tokens, prefixes(&turn1).total_tokens());
        assert_eq!(a.lookup(&prefixes(&convo(5, "other"))), None);
    }

    #[test]
    fn memory_stays_bounded_with_a_hundred_thousand_conversations() {
        let a = Affinity::with_capacity(10_000);
        let w: Arc<str> = Arc::from("s");
        for c in 0..100_000 {
            a.record(&prefixes(&convo(4, &c.to_string())), &w);
            assert!(a.len() <= 20_000);
        }
        // Recent conversations are still known, old ones aged out.
        assert!(a.lookup(&prefixes(&convo(6, "99999"))).is_some());
        assert!(a.lookup(&prefixes(&convo(6, "5"))).is_none());
    }

    #[test]
    fn text_prompts_are_hashed_in_blocks_that_share_a_prefix() {
        let base = "a".repeat(5000);
        let p1 = Prefixes::of_text(&base);
        let p2 = Prefixes::of_text(&format!("{base} and more"));
        assert_eq!(p1.hashes[..4], p2.hashes[..4]);
        let a = Affinity::new();
        a.record(&p1, &Arc::from("t"));
        assert!(a.lookup(&p2).is_some());
    }
}
