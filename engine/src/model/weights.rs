//! Weight tensors as zero-copy views into a memory map (or owned buffers), organised per layer.
//!
//! Every matrix is row-major `[rows × cols]` in the PyTorch sense (`out × in`): row `r` is the
//! `row_bytes` bytes at `r · row_bytes`. GGUF's ggml order lists `cols` first (`ne0`), so a ggml
//! tensor `[ne0, ne1]` is a matrix with `rows = ne1`, `cols = ne0`.

use bytemuck::Zeroable;

use crate::error::{Error, Result};
use crate::formats::mmap::Blob;
use crate::kernels::packed::{BlockQ4_0x8, X8_ROWS, repack_q4_0x8};
use crate::quant::{BlockQ4_0, GgmlType};

/// A byte range of a [`Blob`].
#[derive(Clone, Debug)]
pub struct TensorBytes {
    blob: Blob,
    start: usize,
    len: usize,
}

impl TensorBytes {
    /// A view of `start..start + len` of `blob`; errors if the range is out of bounds.
    pub fn new(blob: Blob, start: usize, len: usize) -> Result<TensorBytes> {
        let end = start
            .checked_add(len)
            .filter(|&e| e <= blob.len())
            .ok_or_else(|| {
                Error::Model(format!(
                    "tensor range {start}+{len} exceeds a buffer of {} bytes",
                    blob.len()
                ))
            })?;
        let _ = end;
        Ok(TensorBytes { blob, start, len })
    }

    /// Wraps an owned buffer.
    pub fn owned(v: Vec<u8>) -> TensorBytes {
        let len = v.len();
        TensorBytes {
            blob: Blob::from_vec(v),
            start: 0,
            len,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.blob.as_bytes()[self.start..self.start + self.len]
    }

    /// The underlying blob and the range's start (for positioned reads and page release).
    pub fn location(&self) -> (&Blob, usize) {
        (&self.blob, self.start)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A sub-range of this view.
    pub fn slice(&self, start: usize, len: usize) -> Result<TensorBytes> {
        if start.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(Error::Model(format!(
                "sub-range {start}+{len} exceeds a tensor of {} bytes",
                self.len
            )));
        }
        Ok(TensorBytes {
            blob: self.blob.clone(),
            start: self.start + start,
            len,
        })
    }
}

/// An x8-packed copy of a Q4_0 matrix ([`crate::kernels::packed`]), shared between clones: a
/// buffer of its own or a range of the layer's huge-page arena.
#[derive(Clone)]
pub struct PackedX8(TensorBytes);

impl PackedX8 {
    /// Packed blocks in `bytes` (written by [`repack_q4_0x8`]).
    ///
    /// # Errors
    /// [`Error::Model`] when `bytes` is not a whole number of packed blocks.
    pub fn new(bytes: TensorBytes) -> Result<Self> {
        if !bytes
            .len()
            .is_multiple_of(std::mem::size_of::<BlockQ4_0x8>())
        {
            return Err(Error::Model(format!(
                "{} bytes are not a whole number of x8 blocks",
                bytes.len()
            )));
        }
        Ok(PackedX8(bytes))
    }

    /// The packed blocks.
    pub fn blocks(&self) -> &[BlockQ4_0x8] {
        // `new` checked the length; the block type has alignment 1.
        bytemuck::cast_slice(self.0.as_slice())
    }
}

impl std::fmt::Debug for PackedX8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedX8({} blocks)", self.blocks().len())
    }
}

/// A weight matrix `[rows × cols]` of one ggml type.
#[derive(Clone, Debug)]
pub struct Matrix {
    /// Tensor name (for errors and `inspect`).
    pub name: String,
    /// Element type.
    pub ty: GgmlType,
    /// Output dimension.
    pub rows: usize,
    /// Input dimension (contiguous).
    pub cols: usize,
    /// The data, `rows · row_bytes` bytes.
    pub data: TensorBytes,
    /// The fast path's x8-packed copy (Q4_0 with rows in eights, built at load in fast mode;
    /// the mapped original's pages are then released, and re-read only by paths that need
    /// rows, such as embedding lookups and exact mode).
    pub packed: Option<PackedX8>,
}

impl Matrix {
    /// Builds a matrix, checking that `cols` fits the type's blocks and the byte length matches.
    pub fn new(
        name: impl Into<String>,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: TensorBytes,
    ) -> Result<Matrix> {
        let name = name.into();
        let row_bytes = ty.row_bytes(cols as u64).ok_or_else(|| Error::BadLength {
            ty,
            what: format!(
                "tensor '{name}': row of {cols} elements is not a whole number of blocks"
            ),
        })?;
        let want = (row_bytes as u128) * (rows as u128);
        if want != data.len() as u128 {
            return Err(Error::BadLength {
                ty,
                what: format!(
                    "tensor '{name}': {rows}x{cols} needs {want} bytes, found {}",
                    data.len()
                ),
            });
        }
        Ok(Matrix {
            name,
            ty,
            rows,
            cols,
            data,
            packed: None,
        })
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.data.len().checked_div(self.rows).unwrap_or(0)
    }

    /// Row `r`'s bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data.as_slice()[r * rb..(r + 1) * rb]
    }

    /// All bytes.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// A borrowed view of the matrix.
    pub fn view(&self) -> MatRef<'_> {
        MatRef {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: self.data.as_slice(),
            packed: self.packed.as_ref().map(PackedX8::blocks),
        }
    }

    /// Dequantises row `r` into `out` (`cols` values), from the x8-packed copy when there is one
    /// (so a packed matrix whose original pages were released is not read through the map).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows {
            return Err(Error::InvalidInput(format!(
                "row {r} of '{}', which has {} rows",
                self.name, self.rows
            )));
        }
        match &self.packed {
            Some(p) => {
                let nb = self.cols / crate::quant::QK;
                // No allocation for rows of up to 8192 values (one lookup per token).
                let mut stack = [BlockQ4_0::zeroed(); 256];
                let mut heap = Vec::new();
                let blocks = if nb <= stack.len() {
                    &mut stack[..nb]
                } else {
                    heap.resize(nb, BlockQ4_0::zeroed());
                    &mut heap[..]
                };
                crate::kernels::packed::unpack_q4_0x8_row(p.blocks(), nb, r, blocks);
                crate::quant::dequantize_row(self.ty, bytemuck::cast_slice(blocks), out)
            }
            None => crate::quant::dequantize_row(self.ty, self.row(r), out),
        }
    }

    /// Whether [`Matrix::pack_x8`] would build an x8-packed copy: Q4_0 with rows in eights, not
    /// packed yet. The copy takes [`Matrix::data`]'s length.
    pub fn x8_packable(&self) -> bool {
        self.packed.is_none()
            && self.ty == GgmlType::Q4_0
            && self.rows > 0
            && self.rows.is_multiple_of(X8_ROWS)
    }

    /// Writes the x8-packed copy into `dst` (`data.len()` bytes), in parallel on the current
    /// rayon pool.
    ///
    /// # Errors
    /// [`Error::Model`] for a matrix that is not [`Matrix::x8_packable`]'s type and shape or a
    /// `dst` of another length.
    pub fn pack_x8_into(&self, dst: &mut [u8]) -> Result<()> {
        use rayon::prelude::*;
        let nb = self.cols / crate::quant::QK;
        let src: &[BlockQ4_0] =
            crate::quant::blocks::as_blocks(self.data.as_slice()).ok_or_else(|| {
                Error::Model(format!(
                    "tensor '{}': not a whole number of Q4_0 blocks",
                    self.name
                ))
            })?;
        let out: &mut [BlockQ4_0x8] = bytemuck::try_cast_slice_mut(dst)
            .ok()
            .filter(|o: &&mut [BlockQ4_0x8]| o.len() * X8_ROWS == src.len())
            .ok_or_else(|| {
                Error::Model(format!(
                    "tensor '{}': an x8 copy needs {} bytes",
                    self.name,
                    self.data.len()
                ))
            })?;
        // 64 groups (512 rows) per task.
        const GROUPS: usize = 64;
        out.par_chunks_mut(GROUPS * nb)
            .zip(src.par_chunks(GROUPS * nb * X8_ROWS))
            .try_for_each(|(o, s)| repack_q4_0x8(s, nb, o))
    }

    /// Whether the bytes are still read through a file's map.
    pub fn is_mapped(&self) -> bool {
        self.data.location().0.path().is_some()
    }

    /// Releases the bytes' pages from this process's resident set when they are mapped (a later
    /// touch reads them again); a no-op for owned bytes. For a copy that replaces them.
    pub fn release_pages(&self) {
        let (blob, start) = self.data.location();
        blob.release_pages(start, self.data.len());
    }

    /// Installs `bytes` (a copy of the same weights) as the matrix's data, releasing the old
    /// bytes' mapped pages.
    pub fn replace_data(&mut self, bytes: TensorBytes) {
        self.release_pages();
        self.data = bytes;
    }

    /// Installs an x8-packed copy and releases the original's pages when they are mapped, so the
    /// copy replaces rather than duplicates them.
    pub fn set_packed(&mut self, p: PackedX8) {
        self.packed = Some(p);
        self.release_pages();
    }

    /// Builds the x8-packed copy (in its own huge-page buffer, see `Blob::anon_filled`) when the
    /// matrix is [`Matrix::x8_packable`] (otherwise returns whether it is packed already), and
    /// releases the original's pages.
    pub fn pack_x8(&mut self) -> Result<bool> {
        if !self.x8_packable() {
            return Ok(self.packed.is_some());
        }
        let blob = Blob::anon_filled(self.data.len(), |d| self.pack_x8_into(d))?;
        let len = blob.len();
        self.set_packed(PackedX8::new(TensorBytes::new(blob, 0, len)?)?);
        Ok(true)
    }

    /// Replaces bytes still mapped from a file by a copy in a huge-page buffer of their own
    /// (`Blob::anon_filled`) and releases the mapped pages; a no-op for bytes not mapped.
    pub fn copy_resident(&mut self) -> Result<()> {
        if !self.is_mapped() {
            return Ok(());
        }
        let copy = Blob::anon_filled(self.data.len(), |d| {
            d.copy_from_slice(self.data.as_slice());
            Ok(())
        })?;
        let len = copy.len();
        self.replace_data(TensorBytes::new(copy, 0, len)?);
        Ok(())
    }

    /// Rows `r0..r0 + n` as a matrix of their own (shares the bytes).
    pub fn rows_view(&self, r0: usize, n: usize, name: impl Into<String>) -> Result<Matrix> {
        let rb = self.row_bytes();
        Matrix::new(
            name,
            self.ty,
            n,
            self.cols,
            self.data.slice(r0 * rb, n * rb)?,
        )
    }
}

/// A borrowed weight matrix: the same shape and type as a [`Matrix`], over any bytes (a memory
/// map, an owned buffer, an expert cache slot). The compute kernels take these, so experts
/// streamed from storage run through exactly the code the in-memory ones do.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// Element type.
    pub ty: GgmlType,
    /// Output dimension.
    pub rows: usize,
    /// Input dimension (contiguous).
    pub cols: usize,
    /// `rows · row_bytes` bytes.
    pub data: &'a [u8],
    /// The x8-packed copy, when one was built ([`Matrix::pack_x8`]).
    pub packed: Option<&'a [BlockQ4_0x8]>,
}

impl<'a> MatRef<'a> {
    /// A view of `data` as a `rows × cols` matrix of `ty`, checking the length.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<MatRef<'a>> {
        let row_bytes = ty.row_bytes(cols as u64).ok_or_else(|| Error::BadLength {
            ty,
            what: format!("row of {cols} elements is not a whole number of blocks"),
        })?;
        if (row_bytes as u128) * (rows as u128) != data.len() as u128 {
            return Err(Error::BadLength {
                ty,
                what: format!(
                    "{rows}x{cols} needs {} bytes, found {}",
                    (row_bytes as u128) * (rows as u128),
                    data.len()
                ),
            });
        }
        Ok(MatRef {
            ty,
            rows,
            cols,
            data,
            packed: None,
        })
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.data.len().checked_div(self.rows).unwrap_or(0)
    }

    /// Row `r`'s bytes.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// All bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// The x8-packed blocks of rows `r0..r0 + n`, when packed and the range is in whole groups.
    pub fn packed_rows(&self, r0: usize, n: usize) -> Option<&'a [BlockQ4_0x8]> {
        let p = self.packed?;
        if !r0.is_multiple_of(X8_ROWS) || !n.is_multiple_of(X8_ROWS) || r0 + n > self.rows {
            return None;
        }
        let nb = self.cols / crate::quant::QK;
        p.get(r0 / X8_ROWS * nb..(r0 + n) / X8_ROWS * nb)
    }
}

impl ExpertWeights {
    /// Outputs of the down projection (the hidden size).
    pub fn down_rows_out(&self) -> usize {
        if self.down_transposed {
            self.down.cols
        } else {
            self.down.rows
        }
    }
}

/// One expert's three matrices.
#[derive(Clone, Debug)]
pub struct ExpertWeights {
    /// Gate `[F × H]`.
    pub gate: Matrix,
    /// Up `[F × H]`.
    pub up: Matrix,
    /// Down: `[H × F]`, or `[F × H]` when [`ExpertWeights::down_transposed`].
    pub down: Matrix,
    /// Down stored neuron-major (PowerInfer's `--transpose-down`): row f is neuron f's output column.
    pub down_transposed: bool,
    /// The fast path's lossless neuron-major copy of `down` (built at load in fast mode).
    pub down_planes: Option<std::sync::Arc<crate::moe::sparse_down::DownPlanes>>,
}

/// Weights of one decoder layer.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// Attention RMSNorm gain `[H]`.
    pub attn_norm: Vec<f32>,
    /// Query projection `[n_h·d × H]`.
    pub wq: Matrix,
    /// Key projection `[n_kv·d × H]`.
    pub wk: Matrix,
    /// Value projection `[n_kv·d × H]`.
    pub wv: Matrix,
    /// Output projection `[H × n_h·d]`.
    pub wo: Matrix,
    /// FFN RMSNorm gain `[H]`.
    pub ffn_norm: Vec<f32>,
    /// Router `[E × H]`.
    pub router: Matrix,
    /// The layer's experts, indexed by expert id.
    pub experts: Vec<ExpertWeights>,
}

/// All weights of a model.
#[derive(Clone, Debug)]
pub struct Weights {
    /// Token embedding `[V × H]`.
    pub embed: Matrix,
    /// Final RMSNorm gain `[H]`.
    pub output_norm: Vec<f32>,
    /// LM head `[V × H]` (the embedding itself when tied).
    pub lm_head: Matrix,
    /// Decoder layers.
    pub layers: Vec<LayerWeights>,
}

/// Reads a 1-D gain vector of any float type as f32.
pub fn vector_f32(name: &str, ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    let want = ty.row_bytes(n as u64).ok_or_else(|| Error::BadLength {
        ty,
        what: format!("tensor '{name}': {n} elements"),
    })?;
    if want as usize != bytes.len() {
        return Err(Error::BadLength {
            ty,
            what: format!(
                "tensor '{name}': {n} elements need {want} bytes, found {}",
                bytes.len()
            ),
        });
    }
    crate::quant::dequantize_row(ty, bytes, &mut out)?;
    Ok(out)
}

/// Where a model's weight bytes are, and how many one decoded token reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightBytes {
    /// Every weight.
    pub total: u64,
    /// The token embedding table.
    pub embed: u64,
    /// One embedding row (read per token).
    pub embed_row: u64,
    /// The LM head (the embedding table again when tied).
    pub lm_head: u64,
    /// Attention projections, all layers.
    pub attention: u64,
    /// Routers, all layers.
    pub routers: u64,
    /// Norm gains, all layers.
    pub norms: u64,
    /// Weight parameters (elements) of every weight, counted as `total` counts bytes.
    pub params: u64,
    /// All experts, all layers.
    pub experts: u64,
    /// One expert (gate + up + down), the largest in the model.
    pub expert_one: u64,
    /// Experts chosen per token, all layers (`n_layers × top-k`).
    pub active_experts: u64,
}

impl WeightBytes {
    /// Bytes a dense decode step reads: embedding row, attention, routers, norms, the chosen
    /// experts in full, and the LM head.
    pub fn per_token(&self) -> u64 {
        self.embed_row
            + self.attention
            + self.routers
            + self.norms
            + self.expert_one * self.active_experts
            + self.lm_head
    }

    /// Bytes that are not experts (what must stay resident when experts are offloaded).
    pub fn non_expert(&self) -> u64 {
        self.total - self.experts
    }
}

impl Weights {
    /// Byte accounting for `config`.
    pub fn bytes(&self, tied: bool, n_experts_used: usize) -> WeightBytes {
        let len = |m: &Matrix| m.data.len() as u64;
        let n = |m: &Matrix| (m.rows * m.cols) as u64;
        let mut b = WeightBytes {
            embed: len(&self.embed),
            embed_row: self.embed.row_bytes() as u64,
            lm_head: len(&self.lm_head),
            norms: (self.output_norm.len() * 4) as u64,
            params: (n(&self.embed) + if tied { 0 } else { n(&self.lm_head) })
                + self.output_norm.len() as u64,
            active_experts: (self.layers.len() * n_experts_used) as u64,
            ..WeightBytes::default()
        };
        for l in &self.layers {
            b.attention += len(&l.wq) + len(&l.wk) + len(&l.wv) + len(&l.wo);
            b.routers += len(&l.router);
            b.norms += ((l.attn_norm.len() + l.ffn_norm.len()) * 4) as u64;
            b.params += n(&l.wq) + n(&l.wk) + n(&l.wv) + n(&l.wo) + n(&l.router);
            b.params += (l.attn_norm.len() + l.ffn_norm.len()) as u64;
            for e in &l.experts {
                let one = len(&e.gate) + len(&e.up) + len(&e.down);
                b.experts += one;
                b.expert_one = b.expert_one.max(one);
                b.params += n(&e.gate) + n(&e.up) + n(&e.down);
            }
        }
        b.total = b.embed
            + if tied { 0 } else { b.lm_head }
            + b.attention
            + b.routers
            + b.norms
            + b.experts;
        b
    }
}

impl Weights {
    /// Whether the LM head is the token embedding's bytes (tied weights: one copy serves both).
    pub fn lm_head_is_embedding(&self) -> bool {
        let (a, sa) = self.embed.data.location();
        let (b, sb) = self.lm_head.data.location();
        sa == sb
            && std::ptr::eq(a.as_bytes().as_ptr(), b.as_bytes().as_ptr())
            && self.embed.data.len() == self.lm_head.data.len()
    }

    /// A short quantisation label from the dominant expert type (e.g. "q4_0"), for reports.
    pub fn quant_label(&self) -> String {
        self.layers
            .first()
            .and_then(|l| l.experts.first())
            .map(|e| e.gate.ty.name().to_lowercase())
            .unwrap_or_else(|| self.embed.ty.name().to_lowercase())
    }
}
