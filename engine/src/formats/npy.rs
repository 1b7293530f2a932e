//! NumPy `.npy` (format 1.0/2.0, little-endian, C order) for `f32`, `i32` and `u8` arrays:
//! reading golden fixtures and writing `thinker logits` output.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Element types we read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// `<f4`
    F32,
    /// `<i4`
    I32,
    /// `|u1`
    U8,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::I32 => "<i4",
            Dtype::U8 => "|u1",
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::U8 => 1,
        }
    }
}

/// An array read from a `.npy` file.
#[derive(Clone, Debug)]
pub struct NpyArray {
    /// Element type.
    pub dtype: Dtype,
    /// Shape, C order.
    pub shape: Vec<usize>,
    /// Raw little-endian element bytes.
    pub data: Vec<u8>,
}

impl NpyArray {
    /// Elements as f32 (errors unless the array is `<f4`).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.expect(Dtype::F32)?;
        Ok(self
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Elements as i32 (errors unless the array is `<i4`).
    pub fn to_i32(&self) -> Result<Vec<i32>> {
        self.expect(Dtype::I32)?;
        Ok(self
            .data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn expect(&self, d: Dtype) -> Result<()> {
        if self.dtype != d {
            return Err(Error::InvalidInput(format!(
                "npy array is {:?}, expected {:?}",
                self.dtype, d
            )));
        }
        Ok(())
    }
}

fn bad(path: &Path, what: impl Into<String>) -> Error {
    Error::InvalidInput(format!(
        "{}: not a supported .npy file: {}",
        path.display(),
        what.into()
    ))
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&bytes).map_err(|e| bad(path, e))
}

/// Parses `.npy` bytes.
pub fn parse(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("bad magic".into());
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported version {v}")),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or("header runs past the end")?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| "header is not UTF-8")?;
    let field = |name: &str| -> std::result::Result<&str, String> {
        let key = format!("'{name}':");
        let at = header
            .find(&key)
            .ok_or_else(|| format!("header lacks '{name}'"))?;
        Ok(header[at + key.len()..].trim_start())
    };
    let descr = field("descr")?;
    let dtype = if descr.starts_with("'<f4'") {
        Dtype::F32
    } else if descr.starts_with("'<i4'") {
        Dtype::I32
    } else if descr.starts_with("'|u1'") {
        Dtype::U8
    } else {
        return Err(format!(
            "unsupported dtype {}",
            &descr[..descr.len().min(8)]
        ));
    };
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran order is not supported".into());
    }
    let shape_s = field("shape")?;
    let close = shape_s.find(')').ok_or("bad shape")?;
    let shape = shape_s[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad dimension {s}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    let nbytes = count.checked_mul(dtype.size()).ok_or("shape overflows")?;
    if bytes.len() - end != nbytes {
        return Err(format!(
            "data is {} bytes, shape needs {nbytes}",
            bytes.len() - end
        ));
    }
    Ok(NpyArray {
        dtype,
        shape,
        data: bytes[end..].to_vec(),
    })
}

/// Encodes an array header + data.
pub fn encode(dtype: Dtype, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_s}, }}",
        dtype.descr()
    );
    // Pad so the data starts on a 64-byte boundary; header ends with '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Writes an f32 array atomically (temporary file, then rename).
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_atomic(path, &encode(Dtype::F32, shape, &bytes))
}

/// Writes an i32 array atomically.
pub fn write_i32(path: &Path, shape: &[usize], data: &[i32]) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_atomic(path, &encode(Dtype::I32, shape, &bytes))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data: Vec<u8> = [1.5f32, -2.0, 3.25, 0.0, 7.0, 8.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let enc = encode(Dtype::F32, &[2, 3], &data);
        assert_eq!((10 + u16::from_le_bytes([enc[8], enc[9]]) as usize) % 64, 0);
        let a = parse(&enc).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_f32().unwrap()[2], 3.25);
        assert!(a.to_i32().is_err());
        let one = parse(&encode(Dtype::I32, &[1], &7i32.to_le_bytes())).unwrap();
        assert_eq!(one.to_i32().unwrap(), vec![7]);
    }

    #[test]
    fn rejects_truncation_and_garbage() {
        let enc = encode(Dtype::U8, &[4], &[1, 2, 3, 4]);
        for cut in 0..enc.len() {
            assert!(parse(&enc[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse(b"\x93NUMPY\x01\x00\xff\xff").is_err());
    }
}
