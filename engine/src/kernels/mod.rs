//! Hot loops: dot products between quantised weight rows and activations, with a scalar
//! reference ([`scalar`]) and SIMD variants selected once at run time.
//!
//! - [`features`] reports the CPU's SIMD features (detected once).
//! - [`simd_level`] is the level in use: the best the CPU supports, capped by the environment
//!   variable `THINKER_SIMD=scalar|avx2|avx512` (a cap, never a raise).
//! - [`Kernels`] is a table of safe function pointers for one level; [`Kernels::active`] is
//!   the one in use and [`Kernels::available`] lists every level this CPU can run (tests compare
//!   them). The free functions below (`vec_dot_q4_0_q8_0`, ...) check lengths and call the
//!   active table.
//! - [`QuantAct`], [`ActFormat`], [`act_format_for`], [`dot_row`] and [`dot_rows`] are the
//!   type-generic entry the model uses: quantise an activation once, then dot it with rows of
//!   any supported weight type.
//!
//! Dot products use ggml's scheme: the activation is quantised (Q8_0 for Q4_0/Q5_0/Q8_0
//! weights, Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants), then integer dot products per block are
//! scaled and summed in f32. The activation quantisers are bit-exact with ggml's reference
//! quantisers on every level.

mod act;
pub mod packed;
pub mod scalar;
pub mod wf32;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

pub use act::{
    ActFormat, QuantAct, act_format_for, dot_row, dot_rows, dot_rows_gather2, dot_rows_x8,
    dot_rows_x8_tokens, dot_rows2, gemv_q4_0_q8_0, gemv_q8_0_q8_0,
};

use crate::quant::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0, BlockQ8_1, BlockQ8K, QK, QK_K,
};

/// Environment variable that caps the SIMD level (`scalar`, `avx2`, `avx512`).
pub const SIMD_ENV: &str = "THINKER_SIMD";

/// SIMD features of the running CPU (all `false` on non-x86 targets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// AVX2.
    pub avx2: bool,
    /// FMA3.
    pub fma: bool,
    /// F16C (half-precision conversions).
    pub f16c: bool,
    /// BMI2.
    pub bmi2: bool,
    /// AVX-512 Foundation.
    pub avx512f: bool,
    /// AVX-512 byte/word instructions.
    pub avx512bw: bool,
    /// AVX-512 vector-length extensions.
    pub avx512vl: bool,
    /// AVX-512 VNNI (int8 dot products).
    pub avx512vnni: bool,
    /// AVX-VNNI (VEX-encoded int8 dot products).
    pub avxvnni: bool,
}

impl CpuFeatures {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            CpuFeatures {
                avx2: has!("avx2"),
                fma: has!("fma"),
                f16c: has!("f16c"),
                bmi2: has!("bmi2"),
                avx512f: has!("avx512f"),
                avx512bw: has!("avx512bw"),
                avx512vl: has!("avx512vl"),
                avx512vnni: has!("avx512vnni"),
                avxvnni: has!("avxvnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuFeatures::default()
        }
    }
}

/// The CPU's SIMD features, detected on first use.
pub fn features() -> &'static CpuFeatures {
    static F: OnceLock<CpuFeatures> = OnceLock::new();
    F.get_or_init(CpuFeatures::detect)
}

/// A kernel implementation level, ordered from slowest to fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// Portable Rust ([`scalar`]).
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL with VNNI (plus everything AVX2 needs).
    Avx512,
}

impl SimdLevel {
    /// Lower-case name as accepted by `THINKER_SIMD`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// The best level this CPU can run.
    pub fn detected() -> SimdLevel {
        #[cfg(target_arch = "x86_64")]
        {
            if x86::avx512_supported() {
                return SimdLevel::Avx512;
            }
            if x86::avx2_supported() {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Scalar
    }
}

/// Parses a `THINKER_SIMD` value into a cap; `None` for "no cap" (`avx512`) or unknown values.
fn parse_cap(v: &str) -> Result<Option<SimdLevel>, ()> {
    match v.trim().to_ascii_lowercase().as_str() {
        "scalar" | "none" | "off" => Ok(Some(SimdLevel::Scalar)),
        "avx2" => Ok(Some(SimdLevel::Avx2)),
        "avx512" => Ok(Some(SimdLevel::Avx512)),
        "" | "auto" => Ok(None),
        _ => Err(()),
    }
}

/// The level in use: [`SimdLevel::detected`] capped by `THINKER_SIMD` (read once).
pub fn simd_level() -> SimdLevel {
    static L: OnceLock<SimdLevel> = OnceLock::new();
    *L.get_or_init(|| {
        let best = SimdLevel::detected();
        let level = match std::env::var(SIMD_ENV) {
            Ok(v) => match parse_cap(&v) {
                Ok(Some(cap)) => best.min(cap),
                Ok(None) => best,
                Err(()) => {
                    tracing::warn!(value = %v, "unknown {SIMD_ENV} value, ignoring it");
                    best
                }
            },
            Err(_) => best,
        };
        tracing::debug!(level = level.name(), "kernel SIMD level");
        level
    })
}

/// A matrix × two-level Q8_0 vector kernel: `(w, hi, lo, out)`.
pub type Gemv2<W> = fn(&[W], &[BlockQ8_0], &[BlockQ8_0], &mut [f32]);

/// Gathered rows × a two-level Q8_0 vector: `(w, idx, hi, lo, out)`.
pub type Gather2<W> = fn(&[W], &[u32], &[BlockQ8_0], &[BlockQ8_0], &mut [f32]);

/// The loop every [`Gather2`] kernel shares: `out[i] = dot(row idx[i])` over rows of `nb` blocks
/// of `w`, four rows per call of `dot4` and the last `idx.len() % 4` rows one at a time with
/// `dot1`. Before each four, the next four rows are requested into L2 ([`prefetch_l2`]):
/// gathered rows are scattered, so no hardware prefetcher follows them.
///
/// # Panics
/// If an index is outside `w` (the checked entry point [`dot_rows_gather2`] rejects those first).
#[inline(always)]
pub(crate) fn gather_rows<W: bytemuck::Pod>(
    w: &[W],
    nb: usize,
    idx: &[u32],
    out: &mut [f32],
    mut dot4: impl FnMut([&[W]; 4]) -> [f32; 4],
    mut dot1: impl FnMut(&[W]) -> f32,
) {
    let row = |i: u32| &w[i as usize * nb..(i as usize + 1) * nb];
    let rows4 = |i: &[u32; 4]| i.map(row);
    let (i4, ir) = idx.as_chunks::<4>();
    let (o4, or) = out.as_chunks_mut::<4>();
    for (g, (i, o)) in i4.iter().zip(o4.iter_mut()).enumerate() {
        for &n in i4.get(g + 1).map_or(ir, |n| &n[..]) {
            prefetch_l2(bytemuck::cast_slice(row(n)));
        }
        *o = dot4(rows4(i));
    }
    for (&i, o) in ir.iter().zip(or.iter_mut()) {
        *o = dot1(row(i));
    }
}

/// Asks the CPU to bring `bytes` into its L2 cache (one request per 64-byte line, the last line
/// included) without waiting: for data read soon that no hardware prefetcher will predict
/// (gathered rows, active neurons' planes). L2 rather than L1, because the L1 can keep far fewer
/// requests in flight: over DRAM-resident experts this took the gathered up rows from 3.4 to
/// 5.4–6.2 GB/s (`expert_stream` example). A no-op where there is no prefetch instruction.
#[inline]
pub fn prefetch_l2(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    x86::prefetch_l2(bytes);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// A table of kernels for one [`SimdLevel`]. Every entry is a safe function; the SIMD tables
/// can only be obtained on a CPU that supports them.
///
/// Entries do not validate lengths (mismatched slices give meaningless results or a panic,
/// never undefined behaviour); the free functions of this module do.
#[non_exhaustive]
#[derive(Debug)]
pub struct Kernels {
    /// The level these kernels need.
    pub level: SimdLevel,
    /// See [`quantize_row_q8_0`].
    pub quantize_row_q8_0: fn(&[f32], &mut [BlockQ8_0]),
    /// See [`quantize_row_q8_1`].
    pub quantize_row_q8_1: fn(&[f32], &mut [BlockQ8_1]),
    /// See [`quantize_row_q8_k`].
    pub quantize_row_q8_k: fn(&[f32], &mut [BlockQ8K]),
    /// See [`vec_dot_q4_0_q8_0`].
    pub vec_dot_q4_0_q8_0: fn(&[BlockQ4_0], &[BlockQ8_0]) -> f32,
    /// See [`vec_dot_q8_0_q8_0`].
    pub vec_dot_q8_0_q8_0: fn(&[BlockQ8_0], &[BlockQ8_0]) -> f32,
    /// See [`vec_dot_q4_1_q8_1`].
    pub vec_dot_q4_1_q8_1: fn(&[BlockQ4_1], &[BlockQ8_1]) -> f32,
    /// See [`vec_dot_q5_0_q8_0`].
    pub vec_dot_q5_0_q8_0: fn(&[BlockQ5_0], &[BlockQ8_0]) -> f32,
    /// See [`vec_dot_q5_1_q8_1`].
    pub vec_dot_q5_1_q8_1: fn(&[BlockQ5_1], &[BlockQ8_1]) -> f32,
    /// See [`vec_dot_q2_k_q8_k`].
    pub vec_dot_q2_k_q8_k: fn(&[BlockQ2K], &[BlockQ8K]) -> f32,
    /// See [`vec_dot_q3_k_q8_k`].
    pub vec_dot_q3_k_q8_k: fn(&[BlockQ3K], &[BlockQ8K]) -> f32,
    /// See [`vec_dot_q4_k_q8_k`].
    pub vec_dot_q4_k_q8_k: fn(&[BlockQ4K], &[BlockQ8K]) -> f32,
    /// See [`vec_dot_q5_k_q8_k`].
    pub vec_dot_q5_k_q8_k: fn(&[BlockQ5K], &[BlockQ8K]) -> f32,
    /// See [`vec_dot_q6_k_q8_k`].
    pub vec_dot_q6_k_q8_k: fn(&[BlockQ6K], &[BlockQ8K]) -> f32,
    /// `gemv(w, a, out)`: `out[r] = vec_dot(w[r·nb..(r+1)·nb], a)`, `nb = a.len()`.
    pub gemv_q4_0_q8_0: fn(&[BlockQ4_0], &[BlockQ8_0], &mut [f32]),
    /// As `gemv_q4_0_q8_0` for Q8_0 weights.
    pub gemv_q8_0_q8_0: fn(&[BlockQ8_0], &[BlockQ8_0], &mut [f32]),
    /// `gemv2(w, hi, lo, out)`: `out[r] = row_r · hi + row_r · lo` (a two-level activation) in
    /// one pass over the weights.
    pub gemv2_q4_0_q8_0: Gemv2<BlockQ4_0>,
    /// As `gemv2_q4_0_q8_0` for Q8_0 weights.
    pub gemv2_q8_0_q8_0: Gemv2<BlockQ8_0>,
    /// `gemv(w, a, out)` over an x8-packed Q4_0 matrix ([`packed`]): `out.len() / 8` groups
    /// of `a.len()` blocks.
    pub gemv_q4_0x8_q8_0: fn(&[packed::BlockQ4_0x8], packed::Q8Blocks<'_>, &mut [f32]),
    /// As `gemv_q4_0x8_q8_0` with a two-level activation (`hi`, `lo`).
    pub gemv2_q4_0x8_q8_0:
        fn(&[packed::BlockQ4_0x8], packed::Q8Blocks<'_>, packed::Q8Blocks<'_>, &mut [f32]),
    /// `gemm2(w, acts, out)`: the two-level x8 product for several tokens in one pass over the
    /// weights, [`packed::GEMM_TOKENS`] at a time: `out[t·rows + r] = row_r · (hi_t + lo_t)`
    /// for `acts[t] = (hi_t, lo_t)`, `rows = out.len() / acts.len()`. Each token's result is
    /// bit for bit `gemv2_q4_0x8_q8_0`'s of the same level.
    pub gemm2_q4_0x8_q8_0: packed::Gemm2,
    /// `gather(w, idx, hi, lo, out)`: `out[i] = row(idx[i]) · (hi + lo)` (the rows of active
    /// neurons of an expert's up matrix), four gathered rows at a time.
    pub gather_gemv2_q4_0_q8_0: Gather2<BlockQ4_0>,
    /// As `gather_gemv2_q4_0_q8_0` for Q8_0 weights.
    pub gather_gemv2_q8_0_q8_0: Gather2<BlockQ8_0>,
    /// See [`dot_f32`].
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    /// See [`dot_f16_f32`].
    pub dot_f16_f32: fn(&[u16], &[f32]) -> f32,
    /// See [`dot_bf16_f32`].
    pub dot_bf16_f32: fn(&[u16], &[f32]) -> f32,
    /// See [`axpy_f32`].
    pub axpy_f32: fn(f32, &[f32], &mut [f32]),
    /// See [`scale_f32`].
    pub scale_f32: fn(&mut [f32], f32),
    /// See [`axpy_q4_0_f32`].
    pub axpy_q4_0_f32: fn(f32, &[BlockQ4_0], &mut [f32]),
    /// See [`axpy_q8_0_f32`].
    pub axpy_q8_0_f32: fn(f32, &[BlockQ8_0], &mut [f32]),
    /// See [`sgemm_acc`] (shape already checked).
    pub sgemm_acc: fn(Sgemm, &[f32], &[f32], &mut [f32]),
    /// See [`exp_shift_sum`].
    pub exp_shift_sum: fn(&mut [f32], f32) -> f32,
}

static SCALAR: Kernels = Kernels {
    level: SimdLevel::Scalar,
    quantize_row_q8_0: scalar::quantize_row_q8_0,
    quantize_row_q8_1: scalar::quantize_row_q8_1,
    quantize_row_q8_k: scalar::quantize_row_q8_k,
    vec_dot_q4_0_q8_0: scalar::vec_dot_q4_0_q8_0,
    vec_dot_q8_0_q8_0: scalar::vec_dot_q8_0_q8_0,
    vec_dot_q4_1_q8_1: scalar::vec_dot_q4_1_q8_1,
    vec_dot_q5_0_q8_0: scalar::vec_dot_q5_0_q8_0,
    vec_dot_q5_1_q8_1: scalar::vec_dot_q5_1_q8_1,
    vec_dot_q2_k_q8_k: scalar::vec_dot_q2_k_q8_k,
    vec_dot_q3_k_q8_k: scalar::vec_dot_q3_k_q8_k,
    vec_dot_q4_k_q8_k: scalar::vec_dot_q4_k_q8_k,
    vec_dot_q5_k_q8_k: scalar::vec_dot_q5_k_q8_k,
    vec_dot_q6_k_q8_k: scalar::vec_dot_q6_k_q8_k,
    gemv_q4_0_q8_0: scalar::gemv_q4_0_q8_0,
    gemv_q8_0_q8_0: scalar::gemv_q8_0_q8_0,
    gemv2_q4_0_q8_0: scalar::gemv2_q4_0_q8_0,
    gemv2_q8_0_q8_0: scalar::gemv2_q8_0_q8_0,
    gemv_q4_0x8_q8_0: packed::gemv_q4_0x8_q8_0,
    gemv2_q4_0x8_q8_0: packed::gemv2_q4_0x8_q8_0,
    gemm2_q4_0x8_q8_0: packed::gemm2_q4_0x8_q8_0,
    gather_gemv2_q4_0_q8_0: scalar::gather_gemv2_q4_0_q8_0,
    gather_gemv2_q8_0_q8_0: scalar::gather_gemv2_q8_0_q8_0,
    dot_f32: scalar::dot_f32,
    dot_f16_f32: scalar::dot_f16_f32,
    dot_bf16_f32: scalar::dot_bf16_f32,
    axpy_f32: scalar::axpy_f32,
    scale_f32: scalar::scale_f32,
    sgemm_acc: scalar::sgemm_acc,
    exp_shift_sum: scalar::exp_shift_sum,
    axpy_q4_0_f32: scalar::axpy_q4_0_f32,
    axpy_q8_0_f32: scalar::axpy_q8_0_f32,
};

impl Kernels {
    /// The table for `level`, or `None` when this CPU cannot run it.
    pub fn for_level(level: SimdLevel) -> Option<&'static Kernels> {
        match level {
            SimdLevel::Scalar => Some(&SCALAR),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 if x86::avx2_supported() => Some(&x86::AVX2),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 if x86::avx512_supported() => Some(&x86::AVX512),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The table in use ([`simd_level`]).
    pub fn active() -> &'static Kernels {
        static K: OnceLock<&'static Kernels> = OnceLock::new();
        K.get_or_init(|| Kernels::for_level(simd_level()).unwrap_or(&SCALAR))
    }

    /// Every table this CPU can run, scalar first (ignores `THINKER_SIMD`).
    pub fn available() -> Vec<&'static Kernels> {
        [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512]
            .into_iter()
            .filter_map(Kernels::for_level)
            .collect()
    }
}

#[inline]
fn k() -> &'static Kernels {
    Kernels::active()
}

/// Quantises `src` (`32·dst.len()` values) to Q8_0, bit-exactly as ggml's
/// `quantize_row_q8_0_ref`.
///
/// # Panics
/// If `src.len() != 32 · dst.len()`.
pub fn quantize_row_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    assert_eq!(
        src.len(),
        dst.len() * QK,
        "quantize_row_q8_0: length mismatch"
    );
    (k().quantize_row_q8_0)(src, dst)
}

/// Quantises `src` (`32·dst.len()` values) to Q8_1, bit-exactly as ggml's
/// `quantize_row_q8_1_ref`.
///
/// # Panics
/// If `src.len() != 32 · dst.len()`.
pub fn quantize_row_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    assert_eq!(
        src.len(),
        dst.len() * QK,
        "quantize_row_q8_1: length mismatch"
    );
    (k().quantize_row_q8_1)(src, dst)
}

/// Quantises `src` (`256·dst.len()` values) to Q8_K, bit-exactly as ggml's
/// `quantize_row_q8_K_ref` (except that all-zero blocks get zero `bsums`).
///
/// # Panics
/// If `src.len() != 256 · dst.len()`.
pub fn quantize_row_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    assert_eq!(
        src.len(),
        dst.len() * QK_K,
        "quantize_row_q8_k: length mismatch"
    );
    (k().quantize_row_q8_k)(src, dst)
}

macro_rules! checked_dot {
    ($(#[$doc:meta])* $name:ident, $w:ty, $a:ty) => {
        $(#[$doc])*
        ///
        /// # Panics
        /// If the two slices have different lengths.
        pub fn $name(w: &[$w], a: &[$a]) -> f32 {
            assert_eq!(w.len(), a.len(), concat!(stringify!($name), ": length mismatch"));
            (k().$name)(w, a)
        }
    };
}

checked_dot!(
    /// Q4_0 weights · Q8_0 activation.
    vec_dot_q4_0_q8_0, BlockQ4_0, BlockQ8_0
);
checked_dot!(
    /// Q8_0 weights · Q8_0 activation.
    vec_dot_q8_0_q8_0, BlockQ8_0, BlockQ8_0
);
checked_dot!(
    /// Q4_1 weights · Q8_1 activation.
    vec_dot_q4_1_q8_1, BlockQ4_1, BlockQ8_1
);
checked_dot!(
    /// Q5_0 weights · Q8_0 activation (scalar on every level).
    vec_dot_q5_0_q8_0, BlockQ5_0, BlockQ8_0
);
checked_dot!(
    /// Q5_1 weights · Q8_1 activation (scalar on every level).
    vec_dot_q5_1_q8_1, BlockQ5_1, BlockQ8_1
);
checked_dot!(
    /// Q2_K weights · Q8_K activation (scalar on every level).
    vec_dot_q2_k_q8_k, BlockQ2K, BlockQ8K
);
checked_dot!(
    /// Q3_K weights · Q8_K activation (scalar on every level).
    vec_dot_q3_k_q8_k, BlockQ3K, BlockQ8K
);
checked_dot!(
    /// Q4_K weights · Q8_K activation.
    vec_dot_q4_k_q8_k, BlockQ4K, BlockQ8K
);
checked_dot!(
    /// Q5_K weights · Q8_K activation (scalar on every level).
    vec_dot_q5_k_q8_k, BlockQ5K, BlockQ8K
);
checked_dot!(
    /// Q6_K weights · Q8_K activation.
    vec_dot_q6_k_q8_k, BlockQ6K, BlockQ8K
);

/// Σ a·b in f32.
///
/// # Panics
/// If the slices have different lengths.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: length mismatch");
    (k().dot_f32)(a, b)
}

/// Σ w·x with `w` as IEEE half bits.
///
/// # Panics
/// If the slices have different lengths.
pub fn dot_f16_f32(w: &[u16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_f16_f32: length mismatch");
    (k().dot_f16_f32)(w, x)
}

/// Σ w·x with `w` as bfloat16 bits.
///
/// # Panics
/// If the slices have different lengths.
pub fn dot_bf16_f32(w: &[u16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_bf16_f32: length mismatch");
    (k().dot_bf16_f32)(w, x)
}

/// `y += alpha·x`.
///
/// # Panics
/// If the slices have different lengths.
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy_f32: length mismatch");
    (k().axpy_f32)(alpha, x, y)
}

/// The shape of an f32 matrix product [`sgemm_acc`]: `C[m×n] += A[m×k] · B[k×n]`, row-major
/// with row strides `lda`, `ldb`, `ldc` (in elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sgemm {
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
    /// Row stride of `A` (at least `k`).
    pub lda: usize,
    /// Row stride of `B` (at least `n`).
    pub ldb: usize,
    /// Row stride of `C` (at least `n`).
    pub ldc: usize,
}

impl Sgemm {
    /// Elements a row-major `rows × cols` matrix with stride `ld` spans.
    fn span(rows: usize, cols: usize, ld: usize) -> Option<usize> {
        match rows {
            0 => Some(0),
            r => (r - 1).checked_mul(ld)?.checked_add(cols),
        }
    }
}

/// `c[i·ldc + j] += Σ_p a[i·lda + p] · b[p·ldb + j]` for `i < m`, `j < n`, `p < k`: a small f32
/// matrix product (attention's scores and weighted values). The SIMD variants keep a block of
/// six rows × sixteen columns of `C` in registers while `p` runs; every variant adds the `k`
/// products of an element in order of `p` (fused on SIMD, multiply then add in scalar, so the
/// levels differ in the last bits).
///
/// # Errors
/// [`crate::error::Error::InvalidInput`] when a stride is smaller than its row or a slice is
/// shorter than its matrix.
pub fn sgemm_acc(s: Sgemm, a: &[f32], b: &[f32], c: &mut [f32]) -> crate::error::Result<()> {
    let fits = |rows, cols, ld: usize, len: usize| {
        ld >= cols && Sgemm::span(rows, cols, ld).is_some_and(|n| n <= len)
    };
    if !(fits(s.m, s.k, s.lda, a.len())
        && fits(s.k, s.n, s.ldb, b.len())
        && fits(s.m, s.n, s.ldc, c.len()))
    {
        return Err(crate::error::Error::InvalidInput(format!(
            "f32 product {s:?} over slices of {}, {} and {}",
            a.len(),
            b.len(),
            c.len()
        )));
    }
    if s.m > 0 && s.n > 0 && s.k > 0 {
        (k().sgemm_acc)(s, a, b, c);
    }
    Ok(())
}

/// `x[i] = exp(x[i] − m)`, returning `Σ x[i]`: a softmax's numerators for a maximum `m`.
/// Every element must be at most `m` (a larger one is computed as `exp(0)`); results below
/// `f32::MIN_POSITIVE` may come out as that value instead. The SIMD variants approximate
/// `exp` within a few ulp and sum in lanes, so they differ from the scalar one in the last
/// bits.
pub fn exp_shift_sum(x: &mut [f32], m: f32) -> f32 {
    (k().exp_shift_sum)(x, m)
}

/// `x *= s`.
pub fn scale_f32(x: &mut [f32], s: f32) {
    (k().scale_f32)(x, s)
}

/// `y += alpha·dequantize(w)` for one Q4_0 row (the sparse down-projection of the experts).
///
/// # Panics
/// If `y.len() != 32 · w.len()`.
pub fn axpy_q4_0_f32(alpha: f32, w: &[BlockQ4_0], y: &mut [f32]) {
    assert_eq!(y.len(), w.len() * QK, "axpy_q4_0_f32: length mismatch");
    (k().axpy_q4_0_f32)(alpha, w, y)
}

/// `y += alpha·dequantize(w)` for one Q8_0 row.
///
/// # Panics
/// If `y.len() != 32 · w.len()`.
pub fn axpy_q8_0_f32(alpha: f32, w: &[BlockQ8_0], y: &mut [f32]) {
    assert_eq!(y.len(), w.len() * QK, "axpy_q8_0_f32: length mismatch");
    (k().axpy_q8_0_f32)(alpha, w, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_cap_parsing() {
        assert_eq!(parse_cap("scalar"), Ok(Some(SimdLevel::Scalar)));
        assert_eq!(parse_cap(" AVX2 "), Ok(Some(SimdLevel::Avx2)));
        assert_eq!(parse_cap("avx512"), Ok(Some(SimdLevel::Avx512)));
        assert_eq!(parse_cap("auto"), Ok(None));
        assert_eq!(parse_cap("sse9"), Err(()));
    }

    #[test]
    fn active_level_is_supported_and_tables_match_levels() {
        let active = Kernels::active();
        assert!(active.level <= SimdLevel::detected());
        for t in Kernels::available() {
            assert_eq!(Kernels::for_level(t.level).map(|k| k.level), Some(t.level));
        }
        assert_eq!(Kernels::available()[0].level, SimdLevel::Scalar);
        let f = features();
        if SimdLevel::detected() >= SimdLevel::Avx2 {
            assert!(f.avx2 && f.fma && f.f16c);
        }
        if SimdLevel::detected() == SimdLevel::Avx512 {
            assert!(f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni);
        }
    }
}
