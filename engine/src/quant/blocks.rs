//! ggml block layouts as `#[repr(C, packed)]` structs.
//!
//! Every struct has alignment 1 and exactly the size ggml gives the block (checked at compile
//! time), so a byte slice from a memory-mapped GGUF file can be viewed as a block slice at any
//! offset with [`as_blocks`]. Scales stored as `f16` are kept as their raw bits (`u16`); the
//! accessor methods convert them. Fields are plain data: reading one by value is always fine,
//! but taking a reference to a multi-byte field of a packed struct is not allowed by the
//! compiler, so copy it first (`let bsums = b.bsums;`).

use bytemuck::{Pod, Zeroable};

use super::GgmlType;
use super::f16_to_f32;

/// Elements per block of the 32-element formats.
pub const QK: usize = 32;
/// Elements per super-block of the K-quant formats.
pub const QK_K: usize = 256;

/// A block type with a fixed ggml type and element count.
pub trait QuantBlock: Pod {
    /// The ggml type whose blocks this struct describes.
    const TYPE: GgmlType;
    /// Elements per block.
    const ELEMS: usize;
}

/// Views `bytes` as a slice of blocks, or `None` when the length is not a multiple of the block
/// size. Never fails on alignment, since every block struct has alignment 1.
pub fn as_blocks<B: QuantBlock>(bytes: &[u8]) -> Option<&[B]> {
    bytemuck::try_cast_slice(bytes).ok()
}

/// Mutable variant of [`as_blocks`].
pub fn as_blocks_mut<B: QuantBlock>(bytes: &mut [u8]) -> Option<&mut [B]> {
    bytemuck::try_cast_slice_mut(bytes).ok()
}

/// Views a block slice as its bytes.
pub fn blocks_as_bytes<B: QuantBlock>(blocks: &[B]) -> &[u8] {
    bytemuck::cast_slice(blocks)
}

macro_rules! block_meta {
    ($name:ident, $ty:ident, $elems:expr, $bytes:expr) => {
        impl QuantBlock for $name {
            const TYPE: GgmlType = GgmlType::$ty;
            const ELEMS: usize = $elems;
        }
        const _: () = assert!(std::mem::size_of::<$name>() == $bytes);
        const _: () = assert!(std::mem::align_of::<$name>() == 1);
    };
}

/// Q4_0: 32 weights, `x = d·(q − 8)`, q in 0..16. Byte `j` of `qs` holds element `j` in its low
/// nibble and element `j + 16` in its high nibble.
#[allow(non_camel_case_types)]
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Nibbles.
    pub qs: [u8; 16],
}
block_meta!(BlockQ4_0, Q4_0, QK, 18);

/// Q4_1: 32 weights, `x = d·q + m`, q in 0..16, same nibble layout as Q4_0.
#[allow(non_camel_case_types)]
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Minimum (offset), f16 bits.
    pub m: u16,
    /// Nibbles.
    pub qs: [u8; 16],
}
block_meta!(BlockQ4_1, Q4_1, QK, 20);

/// Q5_0: 32 weights, `x = d·(q − 16)`, q in 0..32: low four bits as in Q4_0, the fifth bit of
/// element `j` is bit `j` of the little-endian `u32` in `qh`.
#[allow(non_camel_case_types)]
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Fifth bits, a little-endian `u32`.
    pub qh: [u8; 4],
    /// Low nibbles.
    pub qs: [u8; 16],
}
block_meta!(BlockQ5_0, Q5_0, QK, 22);

/// Q5_1: 32 weights, `x = d·q + m`, q in 0..32, bit layout as Q5_0.
#[allow(non_camel_case_types)]
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Minimum (offset), f16 bits.
    pub m: u16,
    /// Fifth bits, a little-endian `u32`.
    pub qh: [u8; 4],
    /// Low nibbles.
    pub qs: [u8; 16],
}
block_meta!(BlockQ5_1, Q5_1, QK, 24);

/// Q8_0: 32 values, `x = d·q`.
#[allow(non_camel_case_types)]
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Quants.
    pub qs: [i8; 32],
}
block_meta!(BlockQ8_0, Q8_0, QK, 34);

/// Q8_1: 32 values, `x = d·q`, plus `s = d·Σq` (used by the Q4_1/Q5_1 dot products).
#[allow(non_camel_case_types)]
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// Scale, f16 bits.
    pub d: u16,
    /// `d · Σ qs`, f16 bits.
    pub s: u16,
    /// Quants.
    pub qs: [i8; 32],
}
block_meta!(BlockQ8_1, Q8_1, QK, 36);

/// Q2_K: 256 weights in 16 sub-blocks of 16; each scale byte holds a 4-bit scale (low) and a
/// 4-bit min (high); `x = d·sc·q − dmin·m`, q in 0..4.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ2K {
    /// Per sub-block scale (low nibble) and min (high nibble).
    pub scales: [u8; 16],
    /// 2-bit quants, four per byte.
    pub qs: [u8; 64],
    /// Super-block scale, f16 bits.
    pub d: u16,
    /// Super-block scale of the mins, f16 bits.
    pub dmin: u16,
}
block_meta!(BlockQ2K, Q2_K, QK_K, 84);

/// Q3_K: 256 weights in 16 sub-blocks of 16 with 6-bit signed scales; `x = d·(sc − 32)·q`,
/// q in −4..4 (two low bits in `qs`, the high bit in `hmask`, set meaning "no −4").
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ3K {
    /// High bits.
    pub hmask: [u8; 32],
    /// Low two bits, four per byte.
    pub qs: [u8; 64],
    /// 16 packed 6-bit scales.
    pub scales: [u8; 12],
    /// Super-block scale, f16 bits.
    pub d: u16,
}
block_meta!(BlockQ3K, Q3_K, QK_K, 110);

/// Q4_K: 256 weights in 8 sub-blocks of 32, with 6-bit scales and mins packed in `scales`;
/// `x = d·sc·q − dmin·m`, q in 0..16.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale, f16 bits.
    pub d: u16,
    /// Super-block scale of the mins, f16 bits.
    pub dmin: u16,
    /// 8 scales and 8 mins, 6 bits each.
    pub scales: [u8; 12],
    /// Nibbles: chunk c (64 weights) uses `qs[32c..32c+32]`, low nibbles first.
    pub qs: [u8; 128],
}
block_meta!(BlockQ4K, Q4_K, QK_K, 144);

/// Q5_K: as Q4_K with a fifth bit per weight in `qh`; q in 0..32.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5K {
    /// Super-block scale, f16 bits.
    pub d: u16,
    /// Super-block scale of the mins, f16 bits.
    pub dmin: u16,
    /// 8 scales and 8 mins, 6 bits each.
    pub scales: [u8; 12],
    /// Fifth bits: bit `2c` (low nibbles) and `2c+1` (high nibbles) of byte `l` for chunk c.
    pub qh: [u8; 32],
    /// Low nibbles, as in Q4_K.
    pub qs: [u8; 128],
}
block_meta!(BlockQ5K, Q5_K, QK_K, 176);

/// Q6_K: 256 weights in 16 sub-blocks of 16 with signed 8-bit scales; `x = d·sc·(q − 32)`,
/// q in 0..64. Note that `d` comes last.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6K {
    /// Low four bits.
    pub ql: [u8; 128],
    /// High two bits.
    pub qh: [u8; 64],
    /// Sub-block scales.
    pub scales: [i8; 16],
    /// Super-block scale, f16 bits.
    pub d: u16,
}
block_meta!(BlockQ6K, Q6_K, QK_K, 210);

/// Q8_K: 256 activation values, `x = d·q` with an f32 scale, plus the sums of each 16 quants
/// (used to apply the weight mins of the K-quant dot products).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8K {
    /// Scale (f32, not f16).
    pub d: f32,
    /// Quants.
    pub qs: [i8; 256],
    /// `bsums[j] = Σ qs[16j..16j+16]`.
    pub bsums: [i16; 16],
}
block_meta!(BlockQ8K, Q8_K, QK_K, 292);

impl BlockQ4_0 {
    /// The scale as f32.
    #[inline]
    pub fn scale(&self) -> f32 {
        f16_to_f32(self.d)
    }
}

impl BlockQ4_1 {
    /// The scale as f32.
    #[inline]
    pub fn scale(&self) -> f32 {
        f16_to_f32(self.d)
    }
    /// The minimum as f32.
    #[inline]
    pub fn min(&self) -> f32 {
        f16_to_f32(self.m)
    }
}

impl BlockQ5_0 {
    /// The scale as f32.
    #[inline]
    pub fn scale(&self) -> f32 {
        f16_to_f32(self.d)
    }
    /// The fifth bits as one `u32` (bit j belongs to element j).
    #[inline]
    pub fn high_bits(&self) -> u32 {
        u32::from_le_bytes(self.qh)
    }
}

impl BlockQ5_1 {
    /// The scale as f32.
    #[inline]
    pub fn scale(&self) -> f32 {
        f16_to_f32(self.d)
    }
    /// The minimum as f32.
    #[inline]
    pub fn min(&self) -> f32 {
        f16_to_f32(self.m)
    }
    /// The fifth bits as one `u32` (bit j belongs to element j).
    #[inline]
    pub fn high_bits(&self) -> u32 {
        u32::from_le_bytes(self.qh)
    }
}

impl BlockQ8_0 {
    /// The scale as f32.
    #[inline]
    pub fn scale(&self) -> f32 {
        f16_to_f32(self.d)
    }
}

impl BlockQ8_1 {
    /// The scale as f32.
    #[inline]
    pub fn scale(&self) -> f32 {
        f16_to_f32(self.d)
    }
    /// `d · Σ qs` as f32.
    #[inline]
    pub fn sum(&self) -> f32 {
        f16_to_f32(self.s)
    }
}

/// Unpacks the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K block.
#[inline]
pub fn scale_min_k4(j: usize, scales: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Unpacks the 16 signed scales of a Q3_K block (each already minus 32).
#[inline]
pub fn q3k_scales(scales: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 {
            scales[j] & 0xF
        } else {
            scales[j - 8] >> 4
        };
        let high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}

impl BlockQ4K {
    /// Super-block scale and min scale as f32.
    #[inline]
    pub fn scales_f32(&self) -> (f32, f32) {
        (f16_to_f32(self.d), f16_to_f32(self.dmin))
    }
}

impl BlockQ5K {
    /// Super-block scale and min scale as f32.
    #[inline]
    pub fn scales_f32(&self) -> (f32, f32) {
        (f16_to_f32(self.d), f16_to_f32(self.dmin))
    }
}

impl BlockQ6K {
    /// The super-block scale as f32.
    #[inline]
    pub fn scale(&self) -> f32 {
        f16_to_f32(self.d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_match_ggml_type_table() {
        fn check<B: QuantBlock>() {
            assert_eq!(
                std::mem::size_of::<B>(),
                B::TYPE.block_bytes(),
                "{:?}",
                B::TYPE
            );
            assert_eq!(B::ELEMS, B::TYPE.block_elems(), "{:?}", B::TYPE);
        }
        check::<BlockQ4_0>();
        check::<BlockQ4_1>();
        check::<BlockQ5_0>();
        check::<BlockQ5_1>();
        check::<BlockQ8_0>();
        check::<BlockQ8_1>();
        check::<BlockQ2K>();
        check::<BlockQ3K>();
        check::<BlockQ4K>();
        check::<BlockQ5K>();
        check::<BlockQ6K>();
        check::<BlockQ8K>();
    }

    #[test]
    fn blocks_view_unaligned_bytes() {
        let bytes = [0u8; 18 * 3 + 1];
        let b: &[BlockQ4_0] = as_blocks(&bytes[1..]).expect("multiple of 18");
        assert_eq!(b.len(), 3);
        assert!(as_blocks::<BlockQ4_0>(&bytes[..20]).is_none());
    }

    #[test]
    fn q4k_scale_unpacking_covers_high_bits() {
        // Pack known 6-bit values the way ggml does and unpack them again.
        let sc = [1u8, 63, 17, 40, 62, 5, 33, 48];
        let mn = [0u8, 2, 63, 31, 32, 60, 7, 44];
        let mut s = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                s[j] = sc[j];
                s[j + 4] = mn[j];
            } else {
                s[j + 4] = (sc[j] & 0xF) | ((mn[j] & 0xF) << 4);
                s[j - 4] |= (sc[j] >> 4) << 6;
                s[j] |= (mn[j] >> 4) << 6;
            }
        }
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &s), (sc[j], mn[j]), "sub-block {j}");
        }
    }

    #[test]
    fn q3k_scale_unpacking_round_trips() {
        let want: [i8; 16] = [
            -32, 31, 0, 5, -7, 12, -20, 30, 1, -1, 16, -16, 8, -8, 24, -24,
        ];
        let mut s = [0u8; 12];
        for (j, &w) in want.iter().enumerate() {
            let l = (w + 32) as u8;
            if j < 8 {
                s[j] |= l & 0xF;
            } else {
                s[j - 8] |= (l & 0xF) << 4;
            }
            s[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
        }
        assert_eq!(q3k_scales(&s), want);
    }
}
