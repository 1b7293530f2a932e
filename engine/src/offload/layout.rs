//! Where each expert's bytes live in the model file, and how they are laid out in a cache slot.
//!
//! An expert is three matrices (gate, up, down). In a GGUF file each layer stores them as three
//! stacked tensors `[.., .., E]`, so expert `e`'s gate is the `e`-th equal slice of
//! `blk.L.ffn_gate_exps.weight`, and likewise for up and down: three separate contiguous byte
//! ranges of the file per expert. A slot holds the three ranges one after another, each read
//! as the [`ALIGN`]-aligned range that covers it (what `O_DIRECT` requires), so the matrix bytes
//! start at a small offset inside their block.

use std::ops::Range;
use std::path::PathBuf;

use super::ExpertKey;
use super::sys::ALIGN;
use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;
use crate::model::weights::{Matrix, Weights};

/// Number of matrices per expert.
pub const N_PARTS: usize = 3;

/// One of an expert's matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// Gate `[F × H]`.
    Gate = 0,
    /// Up `[F × H]`.
    Up = 1,
    /// Down `[H × F]` (or `[F × H]` transposed).
    Down = 2,
}

impl Part {
    /// All parts in slot order.
    pub const ALL: [Part; N_PARTS] = [Part::Gate, Part::Up, Part::Down];

    /// Lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Part::Gate => "gate",
            Part::Up => "up",
            Part::Down => "down",
        }
    }
}

/// A byte range of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FileRange {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl FileRange {
    /// One past the last byte (saturating).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }

    /// The smallest [`ALIGN`]-aligned range containing this one (empty ranges cover nothing).
    pub fn covering(&self) -> FileRange {
        let a = ALIGN as u64;
        if self.len == 0 {
            return FileRange {
                offset: self.offset / a * a,
                len: 0,
            };
        }
        let start = self.offset / a * a;
        let end = self.end().div_ceil(a).saturating_mul(a);
        FileRange {
            offset: start,
            len: end - start,
        }
    }
}

/// Where one matrix goes in a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PartPlacement {
    /// The matrix's bytes in the file.
    pub data: FileRange,
    /// The aligned range actually read (covers `data`).
    pub read: FileRange,
    /// Where in the slot `read` lands (a multiple of [`ALIGN`]).
    pub buf_offset: usize,
}

impl PartPlacement {
    /// The matrix's bytes within the slot.
    pub fn slot_range(&self) -> Range<usize> {
        let start = self.buf_offset + (self.data.offset - self.read.offset) as usize;
        start..start + self.data.len as usize
    }

    /// Where the aligned read lands within the slot (covers [`PartPlacement::slot_range`]).
    pub fn read_slot_range(&self) -> Range<usize> {
        self.buf_offset..self.buf_offset + self.read.len as usize
    }
}

/// How one expert fills a slot: its three parts in [`Part::ALL`] order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SlotLayout {
    /// Gate, up, down.
    pub parts: [PartPlacement; N_PARTS],
    /// Bytes of the slot used (sum of the aligned read lengths).
    pub used_bytes: usize,
}

impl SlotLayout {
    /// Places `ranges` one after another, each as its covering aligned range.
    pub fn new(ranges: &[FileRange; N_PARTS]) -> SlotLayout {
        let mut parts = [PartPlacement::default(); N_PARTS];
        let mut at = 0usize;
        for (p, r) in parts.iter_mut().zip(ranges) {
            let read = r.covering();
            *p = PartPlacement {
                data: *r,
                read,
                buf_offset: at,
            };
            at += read.len as usize;
        }
        SlotLayout {
            parts,
            used_bytes: at,
        }
    }

    /// Bytes of the matrices themselves (without alignment padding).
    pub fn data_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.data.len).sum()
    }
}

/// The file ranges of every expert of a model: `n_layers × n_experts × 3` ranges.
#[derive(Clone, Debug)]
pub struct ExpertLayout {
    n_layers: u32,
    n_experts: u32,
    ranges: Vec<[FileRange; N_PARTS]>,
    slot_bytes: usize,
}

impl ExpertLayout {
    /// From explicit ranges, `ranges[layer · n_experts + expert] = [gate, up, down]`.
    pub fn new(
        n_layers: u32,
        n_experts: u32,
        ranges: Vec<[FileRange; N_PARTS]>,
    ) -> Result<ExpertLayout> {
        let n = (n_layers as usize)
            .checked_mul(n_experts as usize)
            .ok_or_else(|| Error::Model("expert layout: too many experts".into()))?;
        if ranges.len() != n || n == 0 {
            return Err(Error::Model(format!(
                "expert layout: {} range triples for {n_layers} layers x {n_experts} experts",
                ranges.len()
            )));
        }
        let mut slot_bytes = 0usize;
        for r in &ranges {
            if r.iter().any(|x| x.offset.checked_add(x.len).is_none()) {
                return Err(Error::Model(format!(
                    "expert layout: range {r:?} overflows"
                )));
            }
            let used: u64 = r.iter().map(|x| x.covering().len).sum();
            let used = usize::try_from(used)
                .map_err(|_| Error::Model(format!("expert of {used} bytes does not fit")))?;
            slot_bytes = slot_bytes.max(used);
        }
        Ok(ExpertLayout {
            n_layers,
            n_experts,
            ranges,
            slot_bytes,
        })
    }

    /// From stacked tensors: `stacked(layer, part)` gives the byte range of the whole
    /// `[.., .., E]` tensor (e.g. a GGUF tensor's absolute data offset and size), which is split
    /// into `n_experts` equal slices.
    pub fn from_stacked(
        n_layers: u32,
        n_experts: u32,
        mut stacked: impl FnMut(u32, Part) -> Result<FileRange>,
    ) -> Result<ExpertLayout> {
        let e = u64::from(n_experts.max(1));
        let mut ranges = Vec::with_capacity(n_layers as usize * n_experts as usize);
        for l in 0..n_layers {
            let mut per_part = [FileRange::default(); N_PARTS];
            for p in Part::ALL {
                let t = stacked(l, p)?;
                if t.len % e != 0 {
                    return Err(Error::Model(format!(
                        "layer {l} {}: {} bytes do not split into {n_experts} experts",
                        p.name(),
                        t.len
                    )));
                }
                per_part[p as usize] = t;
            }
            for x in 0..u64::from(n_experts) {
                ranges.push(per_part.map(|t| {
                    let per = t.len / e;
                    FileRange {
                        offset: t.offset + x * per,
                        len: per,
                    }
                }));
            }
        }
        ExpertLayout::new(n_layers, n_experts, ranges)
    }

    /// From a GGUF file's stacked expert tensors `blk.L.ffn_{gate,up,down}_exps.weight`
    /// (`[.., .., E]`, as llama.cpp writes them) for layers `0..n_layers`.
    pub fn from_gguf(g: &GgufFile, n_layers: u32) -> Result<ExpertLayout> {
        let name = |l: u32, p: Part| format!("blk.{l}.ffn_{}_exps.weight", p.name());
        let first = g.require_tensor(&name(0, Part::Gate))?;
        let n_experts = match first.dims.as_slice() {
            [_, _, e] => u32::try_from(*e).map_err(|_| Error::Model("too many experts".into()))?,
            _ => {
                return Err(Error::Model(format!(
                    "tensor '{}': shape {:?} is not [cols, rows, experts]",
                    first.name, first.dims
                )));
            }
        };
        ExpertLayout::from_stacked(n_layers, n_experts, |l, p| {
            let t = g.require_tensor(&name(l, p))?;
            if t.dims.len() != 3 || t.dims[2] != u64::from(n_experts) {
                return Err(Error::Model(format!(
                    "tensor '{}': shape {:?} does not stack {n_experts} experts",
                    t.name, t.dims
                )));
            }
            Ok(FileRange {
                offset: t.abs_offset,
                len: t.size_bytes,
            })
        })
    }

    /// From weights whose expert matrices are views of a memory-mapped file (as the GGUF loader
    /// builds them): the view offsets are file offsets. Returns the layout and the file's path.
    /// The map itself is not touched.
    pub fn from_weights(w: &Weights) -> Result<(ExpertLayout, PathBuf)> {
        let n_layers =
            u32::try_from(w.layers.len()).map_err(|_| Error::Model("too many layers".into()))?;
        let n_experts = w.layers.first().map_or(0, |l| l.experts.len());
        let n_experts =
            u32::try_from(n_experts).map_err(|_| Error::Model("too many experts".into()))?;
        let mut path: Option<PathBuf> = None;
        let mut range_of = |m: &Matrix| -> Result<FileRange> {
            let (blob, start) = m.data.location();
            let p = blob.path().ok_or_else(|| {
                Error::Model(format!(
                    "tensor '{}' is not backed by a file, it cannot be offloaded",
                    m.name
                ))
            })?;
            match &path {
                None => path = Some(p.to_path_buf()),
                Some(q) if q == p => {}
                Some(q) => {
                    return Err(Error::Model(format!(
                        "experts span two files ({} and {})",
                        q.display(),
                        p.display()
                    )));
                }
            }
            Ok(FileRange {
                offset: start as u64,
                len: m.data.len() as u64,
            })
        };
        let mut ranges = Vec::new();
        for (l, layer) in w.layers.iter().enumerate() {
            if layer.experts.len() != n_experts as usize {
                return Err(Error::Model(format!(
                    "layer {l} has {} experts, layer 0 has {n_experts}",
                    layer.experts.len()
                )));
            }
            for e in &layer.experts {
                ranges.push([range_of(&e.gate)?, range_of(&e.up)?, range_of(&e.down)?]);
            }
        }
        let path = path.ok_or_else(|| Error::Model("model has no experts".into()))?;
        Ok((ExpertLayout::new(n_layers, n_experts, ranges)?, path))
    }

    /// Number of layers.
    pub fn n_layers(&self) -> u32 {
        self.n_layers
    }

    /// Experts per layer.
    pub fn n_experts(&self) -> u32 {
        self.n_experts
    }

    /// Number of (layer, expert) keys.
    pub fn n_keys(&self) -> usize {
        self.ranges.len()
    }

    /// Dense index of `key`, or an error naming it if out of range.
    pub fn index(&self, key: ExpertKey) -> Result<usize> {
        if key.layer < self.n_layers && key.expert < self.n_experts {
            Ok(key.layer as usize * self.n_experts as usize + key.expert as usize)
        } else {
            Err(Error::InvalidInput(format!(
                "expert {key} out of range ({} layers x {} experts)",
                self.n_layers, self.n_experts
            )))
        }
    }

    /// The key at a dense index (inverse of [`ExpertLayout::index`]).
    pub fn key_at(&self, index: usize) -> ExpertKey {
        let e = self.n_experts.max(1) as usize;
        ExpertKey::new((index / e) as u32, (index % e) as u32)
    }

    /// Gate, up and down ranges of `key`.
    pub fn ranges(&self, key: ExpertKey) -> Result<[FileRange; N_PARTS]> {
        Ok(self.ranges[self.index(key)?])
    }

    /// How `key` fills a slot.
    pub fn slot_layout(&self, key: ExpertKey) -> Result<SlotLayout> {
        Ok(SlotLayout::new(&self.ranges[self.index(key)?]))
    }

    /// Slot size that fits every expert (a multiple of [`ALIGN`]).
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Largest expert's matrix bytes (without alignment padding).
    pub fn max_expert_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| r.iter().map(|x| x.len).sum::<u64>())
            .max()
            .unwrap_or(0)
    }

    /// Longest aligned read of `part` over every expert (what a buffer that receives that part
    /// alone must hold).
    pub fn max_read_len(&self, part: Part) -> u64 {
        self.ranges
            .iter()
            .map(|r| r[part as usize].covering().len)
            .max()
            .unwrap_or(0)
    }

    /// Last byte any expert needs (the file must be at least this long).
    pub fn end(&self) -> u64 {
        self.ranges
            .iter()
            .flat_map(|r| r.iter().map(FileRange::end))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_range_is_aligned_and_contains_the_data() {
        let r = FileRange {
            offset: 5000,
            len: 663_552,
        };
        let c = r.covering();
        assert_eq!(c.offset % ALIGN as u64, 0);
        assert_eq!(c.len % ALIGN as u64, 0);
        assert!(c.offset <= r.offset && c.end() >= r.end());
        assert!(c.len - r.len < 2 * ALIGN as u64);
        // An already aligned range is its own cover.
        let a = FileRange {
            offset: 8192,
            len: 663_552,
        };
        assert_eq!(a.covering(), a);
    }

    #[test]
    fn slot_layout_places_parts_on_aligned_boundaries() {
        let ranges = [
            FileRange {
                offset: 100,
                len: 5000,
            },
            FileRange {
                offset: 1_000_032,
                len: 4096,
            },
            FileRange {
                offset: 8192,
                len: 10,
            },
        ];
        let s = SlotLayout::new(&ranges);
        for (p, r) in s.parts.iter().zip(&ranges) {
            assert_eq!(p.buf_offset % ALIGN, 0);
            assert_eq!(p.slot_range().len() as u64, r.len);
        }
        assert_eq!(s.parts[0].slot_range(), 100..5100);
        assert_eq!(s.parts[1].buf_offset, 8192);
        assert_eq!(s.used_bytes, 8192 + 8192 + 4096);
        assert_eq!(s.data_bytes(), 5000 + 4096 + 10);
    }

    #[test]
    fn stacked_tensors_split_into_equal_expert_slices() {
        let l = ExpertLayout::from_stacked(2, 4, |layer, part| {
            Ok(FileRange {
                offset: 1_000_000 * (u64::from(layer) * 3 + part as u64),
                len: 4 * 663_552,
            })
        })
        .unwrap();
        assert_eq!(l.n_keys(), 8);
        let r = l.ranges(ExpertKey::new(1, 2)).unwrap();
        assert_eq!(r[0].offset, 3_000_000 + 2 * 663_552);
        assert_eq!(r[2].offset, 5_000_000 + 2 * 663_552);
        assert_eq!(l.max_expert_bytes(), 3 * 663_552);
        assert_eq!(l.slot_bytes() % ALIGN, 0);
        assert!(l.ranges(ExpertKey::new(2, 0)).is_err());
        assert_eq!(
            l.key_at(l.index(ExpertKey::new(1, 3)).unwrap()),
            ExpertKey::new(1, 3)
        );
        let bad = ExpertLayout::from_stacked(1, 3, |_, _| Ok(FileRange { offset: 0, len: 10 }));
        assert!(bad.is_err());
    }

    /// The longest read of a part is the largest of the slot layouts' own reads, and a read
    /// lands in the slot where its data's range says.
    #[test]
    fn the_longest_part_read_matches_the_slot_layouts() {
        // Expert 1's down matrix starts 100 bytes into an aligned block: its read spans one
        // more block than expert 0's.
        let r = |offset: u64, len: u64| FileRange { offset, len };
        let l = ExpertLayout::new(
            1,
            2,
            vec![
                [r(0, 8192), r(8192, 8192), r(16_384, 8192)],
                [r(32_768, 8192), r(40_960, 8192), r(49_252, 8192)],
            ],
        )
        .unwrap();
        let reads =
            |e: u32| l.slot_layout(ExpertKey::new(0, e)).unwrap().parts[Part::Down as usize];
        assert_eq!(reads(0).read.len, 8192);
        assert_eq!(reads(1).read.len, 8192 + 4096);
        assert_eq!(l.max_read_len(Part::Down), 8192 + 4096);
        assert_eq!(l.max_read_len(Part::Gate), 8192);
        let p = reads(1);
        let (read, data) = (p.read_slot_range(), p.slot_range());
        assert!(read.start <= data.start && data.end <= read.end);
        assert_eq!(read.len() as u64, p.read.len);
    }
}
