//! The GGUF reader: parses the header of a [`Blob`] once, validates every tensor's extent, and
//! hands out zero-copy slices of the tensor data.

use std::collections::HashMap;
use std::path::Path;

use super::value::{Array, Value, type_id};
use super::{
    ALIGNMENT_KEY, ARCHITECTURE_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ALIGNMENT, MAX_ARRAY_DEPTH,
    MAX_DIMS, MAX_KV, MAX_STRING_LEN, MAX_TENSORS, align_up,
};
use crate::error::{Error, GgufError, Result};
use crate::formats::mmap::Blob;
use crate::quant::GgmlType;

/// Where and what one tensor is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` (ne0) is the contiguous row length.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the first byte relative to the data section.
    pub offset: u64,
    /// Offset of the first byte from the start of the file.
    pub abs_offset: u64,
    /// Size of the data in bytes (without padding).
    pub size_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (product of the dims; 1 for a scalar with no dims).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// Elements per row (`dims[0]`; 1 for a scalar).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of `dims[1..]`.
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// Bytes of one row. Validated at parse time for tensors read from a file.
    pub fn row_bytes(&self) -> u64 {
        let be = self.ty.block_elems() as u64;
        (self.row_len() / be).saturating_mul(self.ty.block_bytes() as u64)
    }

    /// Absolute byte range of the data in the file.
    pub fn abs_range(&self) -> std::ops::Range<u64> {
        self.abs_offset..self.abs_offset.saturating_add(self.size_bytes)
    }
}

/// A parsed GGUF file: metadata, tensor directory and the underlying bytes.
pub struct GgufFile {
    blob: Blob,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("blob", &self.blob)
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` and parses it. Parse errors are wrapped in [`Error::InFile`] naming the path.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let blob = Blob::open(path)?;
        GgufFile::parse(blob).map_err(|e| Error::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Parses a GGUF held in `blob`.
    pub fn parse(blob: Blob) -> Result<GgufFile> {
        let h = parse_header(blob.as_bytes())?;
        Ok(GgufFile {
            blob,
            version: h.version,
            alignment: h.alignment,
            data_offset: h.data_offset,
            metadata: h.metadata,
            kv_index: h.kv_index,
            tensors: h.tensors,
            tensor_index: h.tensor_index,
        })
    }

    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section and of each tensor.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section. May exceed [`GgufFile::file_len`] only in a file
    /// without tensors whose header padding was omitted.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The underlying bytes.
    pub fn blob(&self) -> &Blob {
        &self.blob
    }

    /// File length in bytes.
    pub fn file_len(&self) -> u64 {
        self.blob.len() as u64
    }

    /// The mapped file's path, if the bytes come from [`GgufFile::open`].
    pub fn path(&self) -> Option<&Path> {
        self.blob.path()
    }

    /// All key/value pairs, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A non-negative integer of any width; [`Error::BadKey`] for another type or a negative value.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get_with(key, "a non-negative integer", Value::as_u64)
    }

    /// Like [`GgufFile::get_u64`], also [`Error::BadKey`] when the value exceeds `u32::MAX`.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        self.get_with(key, "an integer in 0..=4294967295", |v| {
            v.as_u64().and_then(|x| u32::try_from(x).ok())
        })
    }

    /// A float or integer, converted to `f32`.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get_with(key, "a number", |v| v.as_f64().map(|x| x as f32))
    }

    /// A bool.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get_with(key, "a bool", Value::as_bool)
    }

    /// A string.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.get_with(key, "a string", Value::as_str)
    }

    /// An array.
    pub fn get_array(&self, key: &str) -> Result<Option<&Array>> {
        self.get_with(key, "an array", Value::as_array)
    }

    /// [`GgufFile::get_u32`], with [`Error::MissingKey`] when absent.
    pub fn require_u32(&self, key: &str) -> Result<u32> {
        self.get_u32(key)?.ok_or_else(|| missing(key))
    }

    /// [`GgufFile::get_u64`], with [`Error::MissingKey`] when absent.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key)?.ok_or_else(|| missing(key))
    }

    /// [`GgufFile::get_f32`], with [`Error::MissingKey`] when absent.
    pub fn require_f32(&self, key: &str) -> Result<f32> {
        self.get_f32(key)?.ok_or_else(|| missing(key))
    }

    /// [`GgufFile::get_bool`], with [`Error::MissingKey`] when absent.
    pub fn require_bool(&self, key: &str) -> Result<bool> {
        self.get_bool(key)?.ok_or_else(|| missing(key))
    }

    /// [`GgufFile::get_str`], with [`Error::MissingKey`] when absent.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.get_str(key)?.ok_or_else(|| missing(key))
    }

    /// [`GgufFile::get_array`], with [`Error::MissingKey`] when absent.
    pub fn require_array(&self, key: &str) -> Result<&Array> {
        self.get_array(key)?.ok_or_else(|| missing(key))
    }

    /// `general.architecture` (required).
    pub fn architecture(&self) -> Result<&str> {
        self.require_str(ARCHITECTURE_KEY)
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor called `name`, or [`Error::MissingTensor`].
    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name)
            .ok_or_else(|| Error::MissingTensor(name.to_owned()))
    }

    /// The bytes of `t`, borrowed from the map. `t` must come from this file's
    /// [`GgufFile::tensors`] (its range was validated at parse time); a `TensorInfo` whose range
    /// lies outside the file yields an empty slice.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let (Ok(start), Ok(len)) = (usize::try_from(t.abs_offset), usize::try_from(t.size_bytes))
        else {
            return &[];
        };
        start
            .checked_add(len)
            .and_then(|end| self.blob.as_bytes().get(start..end))
            .unwrap_or(&[])
    }

    fn get_with<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match f(v) {
                Some(x) => Ok(Some(x)),
                None => Err(Error::BadKey {
                    key: key.to_owned(),
                    what: format!("expected {expected}, found {}", describe(v)),
                }),
            },
        }
    }
}

fn missing(key: &str) -> Error {
    Error::MissingKey(key.to_owned())
}

/// A short description of a value for error messages (arrays by element type and length only).
fn describe(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("array of {} {}", a.len(), a.elem_type_name()),
        Value::String(s) => {
            let short: String = s.chars().take(40).collect();
            if short.len() < s.len() {
                format!("string {short:?}...")
            } else {
                format!("string {short:?}")
            }
        }
        Value::U8(x) => format!("u8 {x}"),
        Value::I8(x) => format!("i8 {x}"),
        Value::U16(x) => format!("u16 {x}"),
        Value::I16(x) => format!("i16 {x}"),
        Value::U32(x) => format!("u32 {x}"),
        Value::I32(x) => format!("i32 {x}"),
        Value::U64(x) => format!("u64 {x}"),
        Value::I64(x) => format!("i64 {x}"),
        Value::F32(x) => format!("f32 {x}"),
        Value::F64(x) => format!("f64 {x}"),
        Value::Bool(x) => format!("bool {x}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

fn invalid(offset: usize, what: String) -> Error {
    Error::Gguf(GgufError::Invalid {
        offset: offset as u64,
        what,
    })
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self, need: u64, what: &'static str) -> Error {
        Error::Gguf(GgufError::Truncated {
            offset: self.pos as u64,
            need,
            what,
            len: self.buf.len() as u64,
        })
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.truncated(n as u64, what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn bytes<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.bytes::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        self.bytes(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        self.bytes(what).map(u64::from_le_bytes)
    }

    /// Checks that `n` items of at least `min_size` bytes each can still follow, before anything
    /// is allocated for them.
    fn check_count(&self, n: u64, min_size: usize, what: &'static str) -> Result<usize> {
        let need = n
            .checked_mul(min_size as u64)
            .ok_or_else(|| invalid(self.pos, format!("{what}: count {n} overflows")))?;
        if need > self.remaining() as u64 {
            return Err(self.truncated(need, what));
        }
        // `need` fits the buffer, so `n` fits usize.
        Ok(n as usize)
    }

    /// A length-prefixed UTF-8 string, borrowed.
    fn str(&mut self, what: &'static str) -> Result<&'a str> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > MAX_STRING_LEN {
            return Err(invalid(
                at,
                format!("{what}: string length {len} exceeds the cap {MAX_STRING_LEN}"),
            ));
        }
        let data_at = self.pos;
        let bytes = self.take(len as usize, what)?;
        std::str::from_utf8(bytes).map_err(|e| {
            invalid(
                data_at + e.valid_up_to(),
                format!(
                    "{what}: invalid UTF-8 after {} valid bytes",
                    e.valid_up_to()
                ),
            )
        })
    }
}

fn fixed<T, const N: usize>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

fn read_value(cur: &mut Cursor<'_>, ty: u32, key: &str, ty_at: usize) -> Result<Value> {
    use type_id as t;
    Ok(match ty {
        t::U8 => Value::U8(cur.u8("u8 value")?),
        t::I8 => Value::I8(cur.u8("i8 value")? as i8),
        t::U16 => Value::U16(u16::from_le_bytes(cur.bytes("u16 value")?)),
        t::I16 => Value::I16(i16::from_le_bytes(cur.bytes("i16 value")?)),
        t::U32 => Value::U32(cur.u32("u32 value")?),
        t::I32 => Value::I32(i32::from_le_bytes(cur.bytes("i32 value")?)),
        t::U64 => Value::U64(cur.u64("u64 value")?),
        t::I64 => Value::I64(i64::from_le_bytes(cur.bytes("i64 value")?)),
        t::F32 => Value::F32(f32::from_le_bytes(cur.bytes("f32 value")?)),
        t::F64 => Value::F64(f64::from_le_bytes(cur.bytes("f64 value")?)),
        t::BOOL => {
            let at = cur.pos;
            match cur.u8("bool value")? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(invalid(
                        at,
                        format!("key '{key}': bool value {b} is not 0 or 1"),
                    ));
                }
            }
        }
        t::STRING => Value::String(cur.str("string value")?.to_owned()),
        t::ARRAY => Value::Array(read_array(cur, key, 1)?),
        other => {
            return Err(invalid(
                ty_at,
                format!("key '{key}': unknown value type {other}"),
            ));
        }
    })
}

fn read_array(cur: &mut Cursor<'_>, key: &str, depth: usize) -> Result<Array> {
    use type_id as t;
    let at = cur.pos;
    if depth > MAX_ARRAY_DEPTH {
        return Err(invalid(
            at,
            format!("key '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
        ));
    }
    let ety = cur.u32("array element type")?;
    let n = cur.u64("array length")?;
    let Some(min) = t::min_size(ety) else {
        return Err(invalid(
            at,
            format!("key '{key}': unknown array element type {ety}"),
        ));
    };
    let n = cur.check_count(n, min, "array elements")?;
    if let Some(size) = t::fixed_size(ety) {
        let data_at = cur.pos;
        let bytes = cur.take(n * size, "array elements")?;
        return Ok(match ety {
            t::U8 => Array::U8(bytes.to_vec()),
            t::I8 => Array::I8(bytes.iter().map(|&b| b as i8).collect()),
            t::U16 => Array::U16(fixed(bytes, u16::from_le_bytes)),
            t::I16 => Array::I16(fixed(bytes, i16::from_le_bytes)),
            t::U32 => Array::U32(fixed(bytes, u32::from_le_bytes)),
            t::I32 => Array::I32(fixed(bytes, i32::from_le_bytes)),
            t::U64 => Array::U64(fixed(bytes, u64::from_le_bytes)),
            t::I64 => Array::I64(fixed(bytes, i64::from_le_bytes)),
            t::F32 => Array::F32(fixed(bytes, f32::from_le_bytes)),
            t::F64 => Array::F64(fixed(bytes, f64::from_le_bytes)),
            t::BOOL => {
                if let Some(i) = bytes.iter().position(|&b| b > 1) {
                    return Err(invalid(
                        data_at + i,
                        format!(
                            "key '{key}': bool element {i} has value {} (not 0 or 1)",
                            bytes[i]
                        ),
                    ));
                }
                Array::Bool(bytes.iter().map(|&b| b == 1).collect())
            }
            _ => unreachable!("fixed_size covers exactly the fixed-size types"),
        });
    }
    match ety {
        t::STRING => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(cur.str("array string")?.to_owned());
            }
            Ok(Array::String(v))
        }
        t::ARRAY => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(cur, key, depth + 1)?);
            }
            Ok(Array::Array(v))
        }
        _ => unreachable!("min_size is Some only for known types"),
    }
}

/// Smallest encoded key/value pair: empty key (8) + type (4) + one-byte value.
const MIN_KV_BYTES: usize = 13;
/// Smallest encoded tensor info: empty name (8) + n_dims (4) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 24;
/// Most key/value pairs or tensors reserved up front.
const PREALLOC_CAP: usize = 4096;

fn parse_header(buf: &[u8]) -> Result<Header> {
    let mut cur = Cursor { buf, pos: 0 };

    let magic: [u8; 4] = cur.bytes("magic")?;
    if magic != GGUF_MAGIC {
        let mut rev = GGUF_MAGIC;
        rev.reverse();
        let what = if magic == rev {
            "bad magic \"FUGG\": a byte-swapped (big-endian) GGUF, which is not supported"
                .to_owned()
        } else {
            format!("bad magic {magic:02x?}, expected \"GGUF\" (not a GGUF file)")
        };
        return Err(invalid(0, what));
    }

    let version = cur.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(invalid(
                4,
                "GGUF version 1 is not supported (only 2 and 3)".into(),
            ));
        }
        v if v & 0xFFFF == 0 && matches!(v.swap_bytes(), 1..=3) => {
            return Err(invalid(
                4,
                format!(
                    "version field reads {v:#010x}: a big-endian GGUF v{}, which is not supported",
                    v.swap_bytes()
                ),
            ));
        }
        v => {
            return Err(invalid(
                4,
                format!("unsupported GGUF version {v} (only 2 and 3)"),
            ));
        }
    }

    let n_tensors = cur.u64("tensor count")?;
    if n_tensors > MAX_TENSORS {
        return Err(invalid(
            8,
            format!("tensor count {n_tensors} exceeds the cap {MAX_TENSORS}"),
        ));
    }
    let n_kv = cur.u64("key/value count")?;
    if n_kv > MAX_KV {
        return Err(invalid(
            16,
            format!("key/value count {n_kv} exceeds the cap {MAX_KV}"),
        ));
    }

    // Key/value pairs.
    let n_kv = cur.check_count(n_kv, MIN_KV_BYTES, "key/value pairs")?;
    // Counts are bounded by the bytes left; pre-allocation is capped further so that a large
    // hostile count cannot reserve much before it fails.
    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv.min(PREALLOC_CAP));
    let mut kv_index: HashMap<String, usize> = HashMap::with_capacity(n_kv.min(PREALLOC_CAP));
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..n_kv {
        let key_at = cur.pos;
        let key = cur.str("key")?;
        if let Some(&first) = kv_index.get(key) {
            return Err(invalid(
                key_at,
                format!("duplicate key '{key}' (pairs {first} and {i})"),
            ));
        }
        let ty_at = cur.pos;
        let ty = cur.u32("value type")?;
        let value = read_value(&mut cur, ty, key, ty_at)?;
        if key == ALIGNMENT_KEY {
            alignment = match value.as_u64() {
                Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a,
                _ => {
                    return Err(invalid(
                        ty_at,
                        format!(
                            "{ALIGNMENT_KEY} is {}, expected a power of two in 1..={MAX_ALIGNMENT}",
                            describe(&value)
                        ),
                    ));
                }
            };
        }
        kv_index.insert(key.to_owned(), i);
        metadata.push((key.to_owned(), value));
    }

    // Tensor infos.
    let n_tensors = cur.check_count(n_tensors, MIN_TENSOR_INFO_BYTES, "tensor infos")?;
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors.min(PREALLOC_CAP));
    let mut info_at: Vec<usize> = Vec::with_capacity(n_tensors.min(PREALLOC_CAP));
    let mut tensor_index: HashMap<String, usize> =
        HashMap::with_capacity(n_tensors.min(PREALLOC_CAP));
    for i in 0..n_tensors {
        let at = cur.pos;
        let name = cur.str("tensor name")?;
        if let Some(&first) = tensor_index.get(name) {
            return Err(invalid(
                at,
                format!("duplicate tensor name '{name}' (tensors {first} and {i})"),
            ));
        }
        let nd_at = cur.pos;
        let n_dims = cur.u32("tensor n_dims")?;
        if n_dims as usize > MAX_DIMS {
            return Err(invalid(
                nd_at,
                format!("tensor '{name}': {n_dims} dimensions, at most {MAX_DIMS} supported"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut n_elems: u64 = 1;
        for d in 0..n_dims {
            let d_at = cur.pos;
            let ne = cur.u64("tensor dimension")?;
            if ne == 0 || ne > i64::MAX as u64 {
                return Err(invalid(
                    d_at,
                    format!("tensor '{name}': dimension {d} is {ne}, must be in 1..=i64::MAX"),
                ));
            }
            n_elems = match n_elems.checked_mul(ne) {
                Some(p) if p <= i64::MAX as u64 => p,
                _ => {
                    return Err(invalid(
                        d_at,
                        format!("tensor '{name}': element count overflows (dims {dims:?} x {ne})"),
                    ));
                }
            };
            dims.push(ne);
        }
        let ty_at = cur.pos;
        let type_id = cur.u32("tensor type")?;
        let Some(ty) = GgmlType::from_id(type_id) else {
            return Err(Error::UnknownTensorType {
                tensor: name.to_owned(),
                type_id,
            });
        };
        let row_len = dims.first().copied().unwrap_or(1);
        let be = ty.block_elems() as u64;
        if row_len % be != 0 {
            return Err(invalid(
                ty_at,
                format!(
                    "tensor '{name}': row length {row_len} is not a multiple of the {} block size {be}",
                    ty.name()
                ),
            ));
        }
        let n_rows = n_elems / row_len;
        let size_bytes = ty
            .row_bytes(row_len)
            .and_then(|rb| rb.checked_mul(n_rows))
            .ok_or_else(|| invalid(ty_at, format!("tensor '{name}': byte size overflows")))?;
        let off_at = cur.pos;
        let offset = cur.u64("tensor offset")?;
        if offset % alignment != 0 {
            return Err(invalid(
                off_at,
                format!(
                    "tensor '{name}': offset {offset} is not a multiple of the alignment {alignment}"
                ),
            ));
        }
        tensor_index.insert(name.to_owned(), i);
        info_at.push(at);
        tensors.push(TensorInfo {
            name: name.to_owned(),
            dims,
            ty,
            offset,
            abs_offset: 0,
            size_bytes,
        });
    }

    // Data section: bounds and overlap.
    let header_end = cur.pos as u64;
    let file_len = buf.len() as u64;
    let data_offset = align_up(header_end, alignment)
        .ok_or_else(|| invalid(cur.pos, "data offset overflows".into()))?;
    for (t, &at) in tensors.iter_mut().zip(&info_at) {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| Some((s, s.checked_add(t.size_bytes)?)));
        match end {
            Some((start, end)) if end <= file_len => t.abs_offset = start,
            _ => {
                return Err(invalid(
                    at,
                    format!(
                        "tensor '{}': data at {}+{} ({} bytes) extends past the end of the file ({file_len} bytes)",
                        t.name, data_offset, t.offset, t.size_bytes
                    ),
                ));
            }
        }
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_unstable_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        // In bounds, so no overflow.
        if a.offset + a.size_bytes > b.offset {
            return Err(invalid(
                info_at[w[1]],
                format!(
                    "tensor '{}' (offset {}, {} bytes) overlaps tensor '{}' (offset {})",
                    a.name, a.offset, a.size_bytes, b.name, b.offset
                ),
            ));
        }
    }

    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        kv_index,
        tensors,
        tensor_index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::{TensorSpec, encode_header};

    fn file(metadata: &[(String, Value)], tensors: &[TensorSpec], align: u64) -> Vec<u8> {
        let (mut out, layout) = encode_header(metadata, tensors, align).unwrap();
        out.resize(layout.total_len as usize, 0xAB);
        out
    }

    #[test]
    fn cursor_reports_truncation_with_offset_and_need() {
        let mut c = Cursor {
            buf: &[1, 0, 0, 0, 9],
            pos: 0,
        };
        assert_eq!(c.u32("x").unwrap(), 1);
        match c.u32("y") {
            Err(Error::Gguf(GgufError::Truncated {
                offset: 4,
                need: 4,
                what: "y",
                len: 5,
            })) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(c.pos, 4, "a failed read consumes nothing");
        assert_eq!(c.u8("z").unwrap(), 9);
    }

    #[test]
    fn parses_the_minimal_file_and_locates_tensor_data() {
        let md = vec![("general.architecture".to_owned(), Value::from("a"))];
        let specs = [
            TensorSpec::new("x", vec![3], GgmlType::F32),
            TensorSpec::new("y", vec![32, 2], GgmlType::Q8_0),
        ];
        let bytes = file(&md, &specs, 32);
        let f = GgufFile::parse(Blob::from_vec(bytes)).unwrap();
        assert_eq!(f.architecture().unwrap(), "a");
        let (x, y) = (
            f.require_tensor("x").unwrap(),
            f.require_tensor("y").unwrap(),
        );
        assert_eq!((x.offset, x.size_bytes), (0, 12));
        assert_eq!((y.offset, y.size_bytes, y.row_bytes()), (32, 68, 34));
        assert_eq!(y.abs_offset, f.data_offset() + 32);
        assert_eq!(f.tensor_data(y).len(), 68);
        assert!(format!("{f:?}").contains("n_tensors: 2"));
    }

    #[test]
    fn tensor_data_of_a_foreign_tensor_info_is_empty_not_a_panic() {
        let f = GgufFile::parse(Blob::from_vec(file(&[], &[], 32))).unwrap();
        let t = TensorInfo {
            name: "z".into(),
            dims: vec![4],
            ty: GgmlType::F32,
            offset: 0,
            abs_offset: u64::MAX - 1,
            size_bytes: 16,
        };
        assert!(f.tensor_data(&t).is_empty());
        assert_eq!(t.abs_range().end, u64::MAX);
    }

    #[test]
    fn describe_shortens_long_values() {
        let long = Value::from("x".repeat(100).as_str());
        assert_eq!(describe(&long), format!("string {:?}...", "x".repeat(40)));
        assert_eq!(describe(&Value::from(vec![1u16, 2])), "array of 2 u16");
        assert_eq!(describe(&Value::I8(-1)), "i8 -1");
    }
}
