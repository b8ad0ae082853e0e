//! Deterministic generated text and token counting for simulated studios.
//!
//! The same prompt always yields the same words, so tests can compare what a
//! client received with what the studio sent.

const WORDS: &[&str] = &[
    "the",
    "studio",
    "answers",
    "every",
    "request",
    "with",
    "steady",
    "tokens",
    "while",
    "baton",
    "keeps",
    "the",
    "pool",
    "busy",
    "and",
    "fair",
    "each",
    "worker",
    "streams",
    "its",
    "share",
    "of",
    "load",
    "without",
    "waiting",
    "on",
    "a",
    "slow",
    "or",
    "silent",
    "peer",
    "so",
    "adding",
    "machines",
    "adds",
    "capacity",
    "instead",
    "of",
    "latency",
    "models",
    "run",
    "locally",
    "on",
    "quiet",
    "desks",
    "at",
    "night",
    "benchmarks",
    "tell",
    "the",
    "truth",
];

/// FNV-1a: a stable hash so outputs do not change between runs or platforms.
pub fn stable_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The `i`-th token of the answer to `prompt`, including its trailing space.
pub fn token(prompt_hash: u64, i: u32) -> String {
    let idx = (prompt_hash.wrapping_add(u64::from(i).wrapping_mul(7))) as usize % WORDS.len();
    format!("{} ", WORDS[idx])
}

/// The whole answer of `n` tokens.
pub fn answer(prompt_hash: u64, n: u32) -> String {
    (0..n).map(|i| token(prompt_hash, i)).collect()
}

/// Rough token count of a prompt: whitespace-separated words, at least one.
pub fn count_tokens(text: &str) -> u32 {
    (text.split_whitespace().count() as u32).max(1)
}

/// A deterministic unit vector for an embedding input.
pub fn embedding(input: &str, dims: usize) -> Vec<f32> {
    let mut h = stable_hash(input) | 1;
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            // xorshift64: cheap, reproducible pseudo-random components.
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            (h % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_prompt_same_answer() {
        let h = stable_hash("hello");
        assert_eq!(answer(h, 10), answer(stable_hash("hello"), 10));
        assert_ne!(answer(h, 10), answer(stable_hash("other prompt"), 10));
        assert_eq!(answer(h, 10).split_whitespace().count(), 10);
    }

    #[test]
    fn embeddings_are_unit_length() {
        let v = embedding("abc", 32);
        let n: f32 = v.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4, "{n}");
    }
}
