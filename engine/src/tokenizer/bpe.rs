//! Rank-based BPE merging over byte-level symbols, in the order Hugging Face `tokenizers` applies
//! merges: repeatedly the adjacent pair with the lowest merge rank, the leftmost one on ties.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// A fast non-cryptographic hasher (FxHash-style) for the pair keys and token strings. The
/// tables are built once from the model's own vocabulary, so hash flooding is not a concern.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing; fold the well-mixed high bits down for the table index.
        let h = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// Hash-map builder with [`FastHasher`].
pub(crate) type FastBuild = BuildHasherDefault<FastHasher>;

/// Merge table: pair of token ids -> (rank, merged token id).
pub(crate) type MergeMap = HashMap<u64, (u32, u32), FastBuild>;

/// Key of a pair of ids.
#[inline]
pub(crate) fn pair_key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

/// The BPE model: byte symbols and merges.
#[derive(Debug, Clone)]
pub(crate) struct Bpe {
    /// Token id of each single byte, `None` when the vocabulary lacks it (such bytes are dropped,
    /// as `tokenizers` does without an unknown token).
    pub(crate) byte_ids: [Option<u32>; 256],
    /// Merges.
    pub(crate) merges: MergeMap,
}

/// One symbol of a word being merged: a doubly-linked list in a vector.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    id: u32,
    prev: u32,
    next: u32,
    alive: bool,
}

const NONE: u32 = u32::MAX;

/// Reusable buffers for [`Bpe::encode_word`].
#[derive(Default, Debug)]
pub(crate) struct BpeScratch {
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Reverse<(u32, u32)>>,
}

impl Bpe {
    /// Appends the token ids of one pre-token (raw bytes) to `out`.
    pub(crate) fn encode_word(&self, bytes: &[u8], scratch: &mut BpeScratch, out: &mut Vec<u32>) {
        let syms = &mut scratch.symbols;
        syms.clear();
        for &b in bytes {
            if let Some(id) = self.byte_ids[b as usize] {
                syms.push(Symbol {
                    id,
                    prev: NONE,
                    next: NONE,
                    alive: true,
                });
            }
        }
        let n = syms.len();
        if n <= 1 {
            out.extend(syms.iter().map(|s| s.id));
            return;
        }
        for (i, sym) in syms.iter_mut().enumerate() {
            sym.prev = if i == 0 { NONE } else { (i - 1) as u32 };
            sym.next = if i + 1 == n { NONE } else { (i + 1) as u32 };
        }
        let heap = &mut scratch.heap;
        heap.clear();
        for i in 0..n - 1 {
            if let Some(&(rank, _)) = self.merges.get(&pair_key(syms[i].id, syms[i + 1].id)) {
                heap.push(Reverse((rank, i as u32)));
            }
        }
        while let Some(Reverse((rank, pos))) = heap.pop() {
            let p = pos as usize;
            let left = syms[p];
            if !left.alive || left.next == NONE {
                continue;
            }
            let r = left.next as usize;
            let right = syms[r];
            // The entry is stale if either side changed since it was pushed.
            let Some(&(cur_rank, new_id)) = self.merges.get(&pair_key(left.id, right.id)) else {
                continue;
            };
            if cur_rank != rank {
                continue;
            }
            syms[p].id = new_id;
            syms[p].next = right.next;
            syms[r].alive = false;
            if right.next != NONE {
                syms[right.next as usize].prev = pos;
            }
            if left.prev != NONE {
                let q = left.prev as usize;
                if let Some(&(rk, _)) = self.merges.get(&pair_key(syms[q].id, new_id)) {
                    heap.push(Reverse((rk, left.prev)));
                }
            }
            if right.next != NONE {
                let s = right.next as usize;
                if let Some(&(rk, _)) = self.merges.get(&pair_key(new_id, syms[s].id)) {
                    heap.push(Reverse((rk, pos)));
                }
            }
        }
        let mut i = 0u32;
        while i != NONE {
            let s = syms[i as usize];
            out.push(s.id);
            i = s.next;
        }
    }
}
