//! Generation slots, each remembering the prompt it last processed, as
//! llama.cpp's slots do: a request takes the free slot whose cached prefix
//! is longest, and only the rest of its prompt has to be prefilled.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Tokens per cached block. Only whole blocks count as cached, as in paged
/// KV caches.
pub(super) const BLOCK: u32 = 16;

/// Blocks remembered per slot (a 128k-token context).
const MAX_BLOCKS: usize = 8192;

/// Chained hashes of a token sequence, one per whole block: equal hashes at
/// block `k` mean equal tokens up to the end of block `k`.
#[derive(Clone, Debug, Default)]
pub(super) struct Blocks {
    hashes: Vec<u64>,
    running: u64,
    in_block: u32,
}

impl Blocks {
    pub(super) fn of(text: &str) -> Blocks {
        let mut b = Blocks::default();
        for word in text.split_whitespace() {
            b.push(word);
        }
        b
    }

    /// Add one token (a whitespace-separated word, as the sim counts them).
    pub(super) fn push(&mut self, token: &str) {
        if self.hashes.len() >= MAX_BLOCKS {
            return;
        }
        if self.in_block == 0 {
            // Chain from the previous block (FNV-1a offset basis at the start).
            self.running = self.hashes.last().copied().unwrap_or(0xcbf29ce484222325);
        }
        for b in token.as_bytes().iter().chain(b" ") {
            self.running ^= u64::from(*b);
            self.running = self.running.wrapping_mul(0x100000001b3);
        }
        self.in_block += 1;
        if self.in_block == BLOCK {
            self.hashes.push(self.running);
            self.in_block = 0;
        }
    }

    /// Whole blocks both sequences start with.
    pub(super) fn common_prefix(&self, other: &Blocks) -> usize {
        self.hashes
            .iter()
            .zip(&other.hashes)
            .take_while(|(a, b)| a == b)
            .count()
    }
}

struct Slot {
    busy: bool,
    memory: Blocks,
    last_used: u64,
}

/// The studio's generation slots.
pub(super) struct Slots {
    free: Arc<Semaphore>,
    table: Mutex<Vec<Slot>>,
    clock: AtomicU64,
}

/// A slot taken for one generation.
pub(super) struct Taken {
    pub(super) index: usize,
    /// Prompt tokens already in the slot's cache.
    pub(super) cached_tokens: u32,
    pub(super) permit: OwnedSemaphorePermit,
}

impl Slots {
    pub(super) fn new(n: usize) -> Slots {
        Slots {
            free: Arc::new(Semaphore::new(n)),
            table: Mutex::new(
                (0..n)
                    .map(|_| Slot {
                        busy: false,
                        memory: Blocks::default(),
                        last_used: 0,
                    })
                    .collect(),
            ),
            clock: AtomicU64::new(1),
        }
    }

    /// Wait in FIFO order for a free slot, then take the free one with the
    /// longest common prefix with `prompt` (or, with none, the least
    /// recently used, so other conversations keep their caches).
    pub(super) async fn take(&self, prompt: &Blocks, prompt_tokens: u32) -> Taken {
        let permit = self
            .free
            .clone()
            .acquire_owned()
            .await
            .expect("slot semaphore never closed");
        let mut table = self.table.lock().expect("slot table lock");
        let (index, blocks) = table
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy)
            .map(|(i, s)| (i, s.memory.common_prefix(prompt), s.last_used))
            .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
            .map(|(i, blocks, _)| (i, blocks))
            .expect("a permit guarantees a free slot");
        table[index].busy = true;
        // The last prompt token is always evaluated again: its logits give
        // the first answer token.
        let cached_tokens = (blocks as u32 * BLOCK).min(prompt_tokens.saturating_sub(1));
        Taken {
            index,
            cached_tokens,
            permit,
        }
    }

    /// Free a slot; it now holds `memory` (the prompt and the answer).
    pub(super) fn give_back(&self, index: usize, memory: Blocks) {
        let mut table = self.table.lock().expect("slot table lock");
        let s = &mut table[index];
        s.busy = false;
        s.memory = memory;
        s.last_used = self.clock.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, salt: &str) -> String {
        (0..n).map(|i| format!("{salt}{i} ")).collect()
    }

    #[test]
    fn prefixes_match_by_whole_blocks() {
        let a = Blocks::of(&words(40, "w"));
        let longer = Blocks::of(&(words(40, "w") + &words(30, "x")));
        assert_eq!(a.common_prefix(&longer), 2);
        let other = Blocks::of(&words(40, "z"));
        assert_eq!(a.common_prefix(&other), 0);
        // A change inside block 1 breaks the chain from there on.
        let mut changed = words(40, "w");
        changed = changed.replacen("w20 ", "q20 ", 1);
        assert_eq!(a.common_prefix(&Blocks::of(&changed)), 1);
    }

    #[tokio::test]
    async fn a_request_takes_the_slot_with_its_prefix() {
        let slots = Slots::new(2);
        let conv = words(64, "c");
        let t = slots.take(&Blocks::of(&conv), 64).await;
        assert_eq!(t.cached_tokens, 0);
        let first = t.index;
        slots.give_back(t.index, Blocks::of(&conv));
        drop(t.permit);
        // Another prompt goes to the other (least recently used) slot.
        let t = slots.take(&Blocks::of(&words(64, "o")), 64).await;
        assert_ne!(t.index, first);
        slots.give_back(t.index, Blocks::of(&words(64, "o")));
        drop(t.permit);
        // The conversation's next turn finds its slot again.
        let next = conv + &words(20, "n");
        let t = slots.take(&Blocks::of(&next), 84).await;
        assert_eq!((t.index, t.cached_tokens), (first, 64));
    }
}
