//! The GGUF writer: [`encode_header`] lays out a v3 file, [`GgufWriter`] streams the tensor
//! data into a temporary file next to the target and renames it into place when complete.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::read::TensorInfo;
use super::value::{Array, Value};
use super::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, MAX_ALIGNMENT, MAX_ARRAY_DEPTH,
    MAX_DIMS, MAX_KV, MAX_STRING_LEN, MAX_TENSORS, align_up,
};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// A tensor to be written: name, ggml-order dims (`dims[0]` = row length) and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Dimensions in ggml order.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
}

impl TensorSpec {
    /// A spec from its parts.
    pub fn new(name: impl Into<String>, dims: Vec<u64>, ty: GgmlType) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dims,
            ty,
        }
    }

    /// Data size in bytes, validating the shape the way the reader does: at most
    /// [`MAX_DIMS`] dims, each non-zero, element count within `i64`, row length a multiple of the
    /// block size.
    pub fn size_bytes(&self) -> Result<u64> {
        let bad = |what: String| Error::InvalidInput(format!("tensor '{}': {what}", self.name));
        if self.dims.len() > MAX_DIMS {
            return Err(bad(format!("{} dims, at most {MAX_DIMS}", self.dims.len())));
        }
        let mut n: u64 = 1;
        for &d in &self.dims {
            if d == 0 {
                return Err(bad(format!("zero dimension in {:?}", self.dims)));
            }
            n = n
                .checked_mul(d)
                .filter(|&p| p <= i64::MAX as u64)
                .ok_or_else(|| bad(format!("element count of {:?} overflows", self.dims)))?;
        }
        let row_len = self.dims.first().copied().unwrap_or(1);
        let row_bytes = self.ty.row_bytes(row_len).ok_or_else(|| Error::BadLength {
            ty: self.ty,
            what: format!(
                "tensor '{}': row length {row_len} is not a multiple of the block size {}",
                self.name,
                self.ty.block_elems()
            ),
        })?;
        row_bytes
            .checked_mul(n / row_len)
            .ok_or_else(|| bad("byte size overflows".into()))
    }
}

impl From<&TensorInfo> for TensorSpec {
    fn from(t: &TensorInfo) -> TensorSpec {
        TensorSpec::new(t.name.clone(), t.dims.clone(), t.ty)
    }
}

/// Where everything goes in a file produced by [`encode_header`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufLayout {
    /// Length of the header without its trailing padding.
    pub header_len: u64,
    /// Absolute offset of the data section (header padded to the alignment).
    pub data_offset: u64,
    /// Each tensor's offset relative to the data section, in spec order.
    pub tensor_offsets: Vec<u64>,
    /// Each tensor's size in bytes (without padding).
    pub tensor_sizes: Vec<u64>,
    /// Total file length: every tensor is padded to the alignment, the last one included.
    pub total_len: u64,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn check_str(key: &str, s: &str, what: &str) -> Result<()> {
    if s.len() as u64 > MAX_STRING_LEN {
        return Err(Error::BadKey {
            key: key.to_owned(),
            what: format!(
                "{what} of {} bytes exceeds the cap {MAX_STRING_LEN}",
                s.len()
            ),
        });
    }
    Ok(())
}

fn put_array(out: &mut Vec<u8>, key: &str, a: &Array, depth: usize) -> Result<()> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(Error::BadKey {
            key: key.to_owned(),
            what: format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
        });
    }
    out.extend_from_slice(&a.elem_type_id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! nums {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => nums!(v),
        Array::U16(v) => nums!(v),
        Array::I16(v) => nums!(v),
        Array::U32(v) => nums!(v),
        Array::I32(v) => nums!(v),
        Array::U64(v) => nums!(v),
        Array::I64(v) => nums!(v),
        Array::F32(v) => nums!(v),
        Array::F64(v) => nums!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => {
            for s in v {
                check_str(key, s, "array string")?;
                put_str(out, s);
            }
        }
        Array::Array(v) => {
            for inner in v {
                put_array(out, key, inner, depth + 1)?;
            }
        }
    }
    Ok(())
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &Value) -> Result<()> {
    out.extend_from_slice(&v.type_id().to_le_bytes());
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => {
            check_str(key, s, "string value")?;
            put_str(out, s);
        }
        Value::Array(a) => put_array(out, key, a, 1)?,
    }
    Ok(())
}

/// Encodes a GGUF v3 header for `metadata` (written in the given order) and `tensors` (laid out
/// back to back in the given order, each padded to `alignment`, as llama.cpp does). Tensor
/// shapes are validated as the reader does, and names must be shorter than
/// [`MAX_TENSOR_NAME_WRITE`] bytes.
///
/// `alignment` must be a power of two up to [`MAX_ALIGNMENT`]. The `general.alignment` key is
/// written only if `metadata` contains it, in which case it must be a u32 equal to `alignment`;
/// without it, `alignment` must be [`DEFAULT_ALIGNMENT`] (a reader would assume that).
/// Returns the header including the zero padding up to the data section, and the layout.
pub fn encode_header(
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
    alignment: u64,
) -> Result<(Vec<u8>, GgufLayout)> {
    if !alignment.is_power_of_two() || alignment > MAX_ALIGNMENT {
        return Err(Error::InvalidInput(format!(
            "GGUF alignment {alignment} is not a power of two in 1..={MAX_ALIGNMENT}"
        )));
    }
    match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        Some((_, Value::U32(a))) if u64::from(*a) == alignment => {}
        Some((_, v)) => {
            return Err(Error::BadKey {
                key: ALIGNMENT_KEY.to_owned(),
                what: format!("must be the u32 {alignment} (the alignment written), found {v:?}"),
            });
        }
        None if alignment != DEFAULT_ALIGNMENT => {
            return Err(Error::InvalidInput(format!(
                "alignment {alignment} differs from the default {DEFAULT_ALIGNMENT}: \
                 put {ALIGNMENT_KEY} = {alignment}u32 in the metadata"
            )));
        }
        None => {}
    }
    if metadata.len() as u64 > MAX_KV {
        return Err(Error::InvalidInput(format!(
            "{} metadata keys, at most {MAX_KV}",
            metadata.len()
        )));
    }
    if tensors.len() as u64 > MAX_TENSORS {
        return Err(Error::InvalidInput(format!(
            "{} tensors, at most {MAX_TENSORS}",
            tensors.len()
        )));
    }

    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(&GGUF_MAGIC);
    out.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());

    let mut keys: HashSet<&str> = HashSet::with_capacity(metadata.len());
    for (key, value) in metadata {
        if !keys.insert(key) {
            return Err(Error::BadKey {
                key: key.clone(),
                what: "duplicate key".into(),
            });
        }
        check_str(key, key, "key")?;
        put_str(&mut out, key);
        put_value(&mut out, key, value)?;
    }

    let mut names: HashSet<&str> = HashSet::with_capacity(tensors.len());
    let mut tensor_offsets = Vec::with_capacity(tensors.len());
    let mut tensor_sizes = Vec::with_capacity(tensors.len());
    let mut next: u64 = 0;
    let overflow = || Error::InvalidInput("GGUF data section size overflows".into());
    for t in tensors {
        if !names.insert(&t.name) {
            return Err(Error::InvalidInput(format!(
                "duplicate tensor name '{}'",
                t.name
            )));
        }
        if t.name.len() >= MAX_TENSOR_NAME_WRITE {
            return Err(Error::InvalidInput(format!(
                "tensor name '{}' has {} bytes; llama.cpp reads at most {}",
                t.name,
                t.name.len(),
                MAX_TENSOR_NAME_WRITE - 1
            )));
        }
        let size = t.size_bytes()?;
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for &d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ty.id().to_le_bytes());
        out.extend_from_slice(&next.to_le_bytes());
        tensor_offsets.push(next);
        tensor_sizes.push(size);
        next = next
            .checked_add(size)
            .and_then(|e| align_up(e, alignment))
            .ok_or_else(overflow)?;
    }

    let header_len = out.len() as u64;
    let data_offset = align_up(header_len, alignment).ok_or_else(overflow)?;
    out.resize(data_offset as usize, 0);
    let total_len = data_offset.checked_add(next).ok_or_else(overflow)?;
    Ok((
        out,
        GgufLayout {
            header_len,
            data_offset,
            tensor_offsets,
            tensor_sizes,
            total_len,
        },
    ))
}

const ZEROS: [u8; 4096] = [0; 4096];

/// Tensor names must be shorter than this to be written (ggml's `GGML_MAX_NAME`: llama.cpp
/// refuses longer names). The reader accepts any name up to [`MAX_STRING_LEN`].
pub const MAX_TENSOR_NAME_WRITE: usize = 64;

/// Streams a GGUF file: the header is written by [`GgufWriter::create`], then the tensors' bytes
/// in spec order via [`GgufWriter::write_chunk`] / [`GgufWriter::write_tensor`], and
/// [`GgufWriter::finish`] flushes, fsyncs and renames `<path>.tmp-<pid>` to `path` (then fsyncs
/// the directory). Dropping an unfinished writer deletes the temporary file, so `path` never
/// holds a partial file.
pub struct GgufWriter {
    path: PathBuf,
    tmp_path: PathBuf,
    out: Option<BufWriter<File>>,
    names: Vec<String>,
    layout: GgufLayout,
    alignment: u64,
    /// Index of the tensor being written.
    current: usize,
    /// Bytes of the current tensor written so far.
    written: u64,
    /// Tensor bytes (without padding) still expected in total.
    remaining_total: u64,
    /// Set after an I/O error: the file is in an unknown state.
    failed: bool,
    /// Set once the temporary file has been renamed to `path`.
    renamed: bool,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("path", &self.path)
            .field("current", &self.current)
            .field("written", &self.written)
            .field("n_tensors", &self.names.len())
            .finish()
    }
}

impl GgufWriter {
    /// Validates and encodes the header (see [`encode_header`]), creates `<path>.tmp-<pid>` and
    /// writes the header to it.
    pub fn create(
        path: &Path,
        metadata: Vec<(String, Value)>,
        tensors: Vec<TensorSpec>,
        alignment: u64,
    ) -> Result<GgufWriter> {
        let (header, layout) = encode_header(&metadata, &tensors, alignment)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp_path = PathBuf::from(tmp);
        let io = |source| Error::Io {
            path: tmp_path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(io)?;
        let remaining_total = layout.tensor_sizes.iter().sum();
        let mut w = GgufWriter {
            path: path.to_path_buf(),
            tmp_path: tmp_path.clone(),
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            names: tensors.into_iter().map(|t| t.name).collect(),
            layout,
            alignment,
            current: 0,
            written: 0,
            remaining_total,
            failed: false,
            renamed: false,
        };
        w.write_raw(&header)?;
        Ok(w)
    }

    /// The layout being written.
    pub fn layout(&self) -> &GgufLayout {
        &self.layout
    }

    /// Name of the tensor the next bytes belong to, or `None` when all are written.
    pub fn current_tensor(&self) -> Option<&str> {
        self.names.get(self.current).map(String::as_str)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Err(Error::InvalidInput("GGUF writer already closed".into()));
        };
        out.write_all(bytes).map_err(|source| {
            self.failed = true;
            Error::Io {
                path: self.tmp_path.clone(),
                source,
            }
        })
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::InvalidInput(format!(
                "GGUF writer for {} failed earlier",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Appends bytes of the current tensor (then of the following ones: a chunk may span
    /// tensors), padding each tensor to the alignment once complete. Errors, writing nothing,
    /// if the bytes go beyond the last tensor.
    pub fn write_chunk(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.check_usable()?;
        if bytes.len() as u64 > self.remaining_total {
            return Err(Error::InvalidInput(format!(
                "GGUF writer for {}: {} bytes given, only {} tensor bytes left",
                self.path.display(),
                bytes.len(),
                self.remaining_total
            )));
        }
        while !bytes.is_empty() {
            let size = self.layout.tensor_sizes[self.current];
            let take = (size - self.written).min(bytes.len() as u64) as usize;
            self.write_raw(&bytes[..take])?;
            bytes = &bytes[take..];
            self.written += take as u64;
            self.remaining_total -= take as u64;
            if self.written == size {
                let pad = align_up(size, self.alignment).unwrap_or(size) - size;
                let mut left = pad as usize;
                while left > 0 {
                    let n = left.min(ZEROS.len());
                    self.write_raw(&ZEROS[..n])?;
                    left -= n;
                }
                self.current += 1;
                self.written = 0;
            }
        }
        Ok(())
    }

    /// Writes the whole current tensor; errors if a tensor is partly written or `bytes` has the
    /// wrong length.
    pub fn write_tensor(&mut self, bytes: &[u8]) -> Result<()> {
        self.check_usable()?;
        let Some(name) = self.names.get(self.current) else {
            return Err(Error::InvalidInput(format!(
                "GGUF writer for {}: all {} tensors already written",
                self.path.display(),
                self.names.len()
            )));
        };
        let size = self.layout.tensor_sizes[self.current];
        if self.written != 0 {
            return Err(Error::InvalidInput(format!(
                "tensor '{name}': {} of {size} bytes already written by write_chunk",
                self.written
            )));
        }
        if bytes.len() as u64 != size {
            return Err(Error::InvalidInput(format!(
                "tensor '{name}': {} bytes given, expected {size}",
                bytes.len()
            )));
        }
        self.write_chunk(bytes)
    }

    /// Checks that every tensor was written, flushes, fsyncs, renames the temporary file to the
    /// target path and fsyncs the directory.
    pub fn finish(mut self) -> Result<()> {
        self.check_usable()?;
        if let Some(name) = self.names.get(self.current) {
            return Err(Error::InvalidInput(format!(
                "GGUF writer for {}: tensor '{name}' ({} of {}) incomplete: {} of {} bytes written",
                self.path.display(),
                self.current + 1,
                self.names.len(),
                self.written,
                self.layout.tensor_sizes[self.current]
            )));
        }
        let tmp = self.tmp_path.clone();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let Some(out) = self.out.take() else {
            return Err(Error::InvalidInput("GGUF writer already closed".into()));
        };
        let file = out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        let len = file.metadata().map_err(io(&tmp))?.len();
        if len != self.layout.total_len {
            return Err(Error::InvalidInput(format!(
                "GGUF writer for {}: wrote {len} bytes, layout says {}",
                self.path.display(),
                self.layout.total_len
            )));
        }
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        self.renamed = true;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))?;
        Ok(())
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        // Unfinished, or `finish` failed before the rename: remove the partial file.
        if !self.renamed {
            drop(self.out.take());
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_packs_tensors_with_padding_after_each() {
        let specs = [
            TensorSpec::new("a", vec![3], GgmlType::F32), // 12 B -> 32
            TensorSpec::new("b", vec![32, 3], GgmlType::Q4_0), // 54 B -> 64
            TensorSpec::new("c", vec![256, 1], GgmlType::Q6_K), // 210 B -> 224
        ];
        let (header, layout) = encode_header(&[], &specs, 32).unwrap();
        assert_eq!(header.len() as u64, layout.data_offset);
        assert_eq!(layout.data_offset % 32, 0);
        assert!(layout.header_len <= layout.data_offset);
        assert!(header[layout.header_len as usize..].iter().all(|&b| b == 0));
        assert_eq!(layout.tensor_offsets, [0, 32, 96]);
        assert_eq!(layout.tensor_sizes, [12, 54, 210]);
        assert_eq!(layout.total_len, layout.data_offset + 96 + 224);
        assert_eq!(&header[..8], b"GGUF\x03\x00\x00\x00");
        assert_eq!(header[8..16], 3u64.to_le_bytes());
        assert_eq!(header[16..24], 0u64.to_le_bytes());
    }

    #[test]
    fn spec_sizes_validate_shapes() {
        assert_eq!(
            TensorSpec::new("s", vec![], GgmlType::F16)
                .size_bytes()
                .unwrap(),
            2
        );
        assert_eq!(
            TensorSpec::new("q", vec![64, 2, 3], GgmlType::Q8_0)
                .size_bytes()
                .unwrap(),
            2 * 34 * 6
        );
        assert!(matches!(
            TensorSpec::new("q", vec![48], GgmlType::Q8_0).size_bytes(),
            Err(Error::BadLength {
                ty: GgmlType::Q8_0,
                ..
            })
        ));
        assert!(
            TensorSpec::new("z", vec![2, 0], GgmlType::F32)
                .size_bytes()
                .is_err()
        );
        assert!(
            TensorSpec::new("o", vec![1 << 62], GgmlType::F32)
                .size_bytes()
                .is_err()
        );
        assert!(
            TensorSpec::new("d", vec![1; 5], GgmlType::F32)
                .size_bytes()
                .is_err()
        );
    }

    #[test]
    fn values_encode_as_type_then_payload() {
        let md = vec![
            ("k".to_owned(), Value::Bool(true)),
            ("a".to_owned(), Value::from(vec![-1i16])),
        ];
        let (h, layout) = encode_header(&md, &[], 32).unwrap();
        let body = &h[24..layout.header_len as usize];
        let mut want = Vec::new();
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(b"k");
        want.extend_from_slice(&7u32.to_le_bytes());
        want.push(1);
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(b"a");
        want.extend_from_slice(&9u32.to_le_bytes());
        want.extend_from_slice(&3u32.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&(-1i16).to_le_bytes());
        assert_eq!(body, &want[..]);
    }

    #[test]
    fn align_up_rounds_and_detects_overflow() {
        assert_eq!(align_up(0, 32), Some(0));
        assert_eq!(align_up(1, 32), Some(32));
        assert_eq!(align_up(64, 32), Some(64));
        assert_eq!(align_up(5, 1), Some(5));
        assert_eq!(align_up(u64::MAX - 3, 32), None);
    }
}
