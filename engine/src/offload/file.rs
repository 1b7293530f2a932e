//! The model file opened for positioned reads of expert ranges, bypassing the page cache where
//! the filesystem allows (`O_DIRECT`), so that reading experts never grows the page cache
//! behind the memory budget's back.
//!
//! - **Direct** (`O_DIRECT`): reads go from the device into our [`AlignedBuf`]s. Offsets,
//!   lengths and addresses must be multiples of [`ALIGN`], so a range is read as the aligned
//!   range covering it and the caller gets the sub-slice.
//! - **Buffered** (fallback, e.g. tmpfs or filesystems that refuse `O_DIRECT`): plain `pread`
//!   with readahead disabled (`POSIX_FADV_RANDOM`) and the range dropped from the page cache
//!   after each read (`POSIX_FADV_DONTNEED`), so the cache does not grow either.
//!
//! Faults are typed: a range past the end of a truncated file, a removed file, or an I/O error
//! gives [`Error::ReadRange`] naming the path and the range. A short read is never returned as
//! data.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::layout::FileRange;
use super::sys::{self, ALIGN, Advice, AlignedBuf};
use crate::error::{Error, Result};

/// How to open the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OpenMode {
    /// `O_DIRECT` if the filesystem supports it, else buffered.
    #[default]
    Auto,
    /// `O_DIRECT` or fail.
    Direct,
    /// Buffered reads with page-cache release.
    Buffered,
}

impl FromStr for OpenMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(OpenMode::Auto),
            "direct" => Ok(OpenMode::Direct),
            "buffered" => Ok(OpenMode::Buffered),
            _ => Err(Error::InvalidInput(format!(
                "unknown I/O mode '{s}'; valid: auto, direct, buffered"
            ))),
        }
    }
}

/// The mode a file is actually read in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// `O_DIRECT`: no page cache.
    Direct,
    /// Buffered `pread` + `POSIX_FADV_DONTNEED`, with the reason `O_DIRECT` is not used.
    Buffered {
        /// Why (e.g. "O_DIRECT refused by the filesystem: Invalid argument", "requested").
        reason: String,
    },
}

impl IoMode {
    /// Whether this is `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        matches!(self, IoMode::Direct)
    }
}

impl fmt::Display for IoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoMode::Direct => write!(f, "O_DIRECT"),
            IoMode::Buffered { reason } => {
                write!(f, "buffered pread + fadvise(DONTNEED) ({reason})")
            }
        }
    }
}

/// A model file opened for expert reads. Reads take `&self` and may run on several threads.
#[derive(Debug)]
pub struct ExpertFile {
    path: PathBuf,
    file: File,
    mode: IoMode,
    len_at_open: u64,
    check_removed: bool,
    in_memory: bool,
}

impl fmt::Display for ExpertFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} B, {})",
            self.path.display(),
            self.len_at_open,
            self.mode
        )
    }
}

fn open_with(path: &Path, direct: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

impl ExpertFile {
    /// Opens `path` in `mode`. With [`OpenMode::Auto`], `O_DIRECT` is tried (open and one
    /// aligned read) and buffered reads are used if the filesystem refuses it.
    pub fn open(path: &Path, mode: OpenMode) -> Result<ExpertFile> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let (file, mode) = match mode {
            OpenMode::Buffered => (
                open_with(path, false).map_err(io)?,
                IoMode::Buffered {
                    reason: "requested".into(),
                },
            ),
            OpenMode::Direct => {
                let f = open_with(path, true).map_err(io)?;
                probe_direct(&f).map_err(io)?;
                (f, IoMode::Direct)
            }
            OpenMode::Auto => match open_with(path, true).and_then(|f| probe_direct(&f).map(|_| f))
            {
                Ok(f) => (f, IoMode::Direct),
                Err(e)
                    if e.kind() == ErrorKind::NotFound
                        || e.kind() == ErrorKind::PermissionDenied =>
                {
                    return Err(io(e));
                }
                Err(e) => (
                    open_with(path, false).map_err(io)?,
                    IoMode::Buffered {
                        reason: format!("O_DIRECT refused by the filesystem: {e}"),
                    },
                ),
            },
        };
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(io(std::io::Error::other("not a regular file")));
        }
        if !mode.is_direct() {
            // Readahead would pull neighbouring experts into the page cache; we read exactly what
            // we need. Advisory: ignore failure.
            let _ = sys::fadvise(&file, 0, 0, Advice::Random);
        }
        let in_memory = sys::is_in_memory_fs(&file);
        Ok(ExpertFile {
            path: path.to_path_buf(),
            file,
            mode,
            len_at_open: meta.len(),
            check_removed: true,
            in_memory,
        })
    }

    /// Whether the file lives in memory (tmpfs or ramfs), where a read is a memory copy.
    pub fn in_memory(&self) -> bool {
        self.in_memory
    }

    /// Whether each read first checks that the file still has a name (default: on). An open
    /// file that was unlinked stays readable on Unix; with the check a removed model file stops
    /// the run with an error instead of silently running from a deleted inode.
    pub fn set_check_removed(&mut self, on: bool) {
        self.check_removed = on;
    }

    /// The mode in use.
    pub fn mode(&self) -> &IoMode {
        &self.mode
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File length when opened.
    pub fn len_at_open(&self) -> u64 {
        self.len_at_open
    }

    fn range_err(&self, r: FileRange, source: std::io::Error) -> Error {
        Error::ReadRange {
            path: self.path.clone(),
            offset: r.offset,
            len: r.len,
            context: String::new(),
            source,
        }
    }

    /// Reads `range` into `dst`, which must start [`ALIGN`]-aligned and hold the covering aligned
    /// range (`range.covering().len` bytes). Returns where the range's bytes are in `dst`.
    ///
    /// Errors (never partial data): the file ends before `range.end()` (truncated), the file was
    /// removed (see [`ExpertFile::set_check_removed`]), or the read failed.
    pub fn read_into(&self, range: FileRange, dst: &mut [u8]) -> Result<Range<usize>> {
        let cover = range.covering();
        let clen = cover.len as usize;
        if !(dst.as_ptr() as usize).is_multiple_of(ALIGN) || dst.len() < clen {
            return Err(Error::InvalidInput(format!(
                "read buffer of {} B at {:p} cannot hold the aligned range {}+{}",
                dst.len(),
                dst.as_ptr(),
                cover.offset,
                cover.len
            )));
        }
        if self.check_removed {
            let meta = self.file.metadata().map_err(|e| self.range_err(range, e))?;
            if meta.nlink() == 0 {
                return Err(self.range_err(
                    range,
                    std::io::Error::new(ErrorKind::NotFound, "the file was removed while in use"),
                ));
            }
        }
        let need = (range.end() - cover.offset) as usize;
        let mut done = 0usize;
        while done < need {
            match self
                .file
                .read_at(&mut dst[done..clen], cover.offset + done as u64)
            {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    // O_DIRECT returns a partial block only at the end of the file; reading on
                    // from an unaligned offset would fail with EINVAL instead of reporting it.
                    if self.mode.is_direct() && !done.is_multiple_of(ALIGN) {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.range_err(range, e)),
            }
        }
        if !self.mode.is_direct() {
            let _ = sys::fadvise(&self.file, cover.offset, cover.len, Advice::DontNeed);
        }
        if done < need {
            let now = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            return Err(self.range_err(
                range,
                std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "the file ends at byte {now} (it had {} bytes when opened): truncated?",
                        self.len_at_open
                    ),
                ),
            ));
        }
        let start = (range.offset - cover.offset) as usize;
        Ok(start..start + range.len as usize)
    }

    /// Drops the clean pages of `range` from the page cache (`POSIX_FADV_DONTNEED`), e.g. expert
    /// bytes a memory map of the same file pulled in, so they are not counted against a memory
    /// budget. Advisory: errors are ignored.
    pub fn drop_cached(&self, range: FileRange) {
        if range.len == 0 {
            return;
        }
        let _ = sys::fadvise(&self.file, range.offset, range.len, Advice::DontNeed);
    }

    /// Reads `range` into `buf` (from its start) and returns the bytes.
    pub fn read<'b>(&self, range: FileRange, buf: &'b mut AlignedBuf) -> Result<&'b [u8]> {
        let r = self.read_into(range, buf.as_mut_slice())?;
        Ok(&buf.as_slice()[r])
    }
}

/// One aligned read at offset 0: filesystems that accept the `O_DIRECT` flag at open but not
/// the transfer (or that need a larger alignment) fail here rather than mid-run.
fn probe_direct(f: &File) -> std::io::Result<()> {
    let mut b = AlignedBuf::new(ALIGN).map_err(|e| std::io::Error::other(e.to_string()))?;
    loop {
        match f.read_at(b.as_mut_slice(), 0) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    fn temp_file(data: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.bin");
        std::fs::write(&p, data).unwrap();
        (dir, p)
    }

    #[test]
    fn reads_arbitrary_ranges_exactly_in_every_mode() {
        let data = pattern(100_000);
        let (_d, p) = temp_file(&data);
        for mode in [OpenMode::Auto, OpenMode::Buffered] {
            let f = ExpertFile::open(&p, mode).unwrap();
            let mut buf = AlignedBuf::new(64 * 1024).unwrap();
            for (off, len) in [
                (0, 10),
                (4095, 2),
                (5000, 40_000),
                (99_990, 10),
                (8192, 4096),
            ] {
                let got = f
                    .read(FileRange { offset: off, len }, &mut buf)
                    .unwrap()
                    .to_vec();
                assert_eq!(
                    got,
                    &data[off as usize..(off + len) as usize],
                    "{mode:?} {off}+{len}"
                );
            }
        }
    }

    #[test]
    fn a_range_past_the_end_is_a_truncation_error_naming_path_and_range() {
        let (_d, p) = temp_file(&pattern(10_000));
        let f = ExpertFile::open(&p, OpenMode::Auto).unwrap();
        let mut buf = AlignedBuf::new(16 * 1024).unwrap();
        let err = f
            .read(
                FileRange {
                    offset: 9000,
                    len: 2000,
                },
                &mut buf,
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("model.bin") && msg.contains("9000..11000"),
            "{msg}"
        );
        assert!(msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn truncation_and_removal_after_open_are_detected() {
        let (_d, p) = temp_file(&pattern(50_000));
        let f = ExpertFile::open(&p, OpenMode::Auto).unwrap();
        let mut buf = AlignedBuf::new(64 * 1024).unwrap();
        let r = FileRange {
            offset: 30_000,
            len: 10_000,
        };
        f.read(r, &mut buf).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(20_000)
            .unwrap();
        let err = f.read(r, &mut buf).unwrap_err();
        assert!(
            matches!(&err, Error::ReadRange { source, .. } if source.kind() == ErrorKind::UnexpectedEof),
            "{err}"
        );
        std::fs::remove_file(&p).unwrap();
        let err = f
            .read(
                FileRange {
                    offset: 0,
                    len: 100,
                },
                &mut buf,
            )
            .unwrap_err();
        assert!(
            matches!(&err, Error::ReadRange { source, .. } if source.kind() == ErrorKind::NotFound),
            "{err}"
        );
    }

    #[test]
    fn misaligned_or_small_buffers_are_rejected() {
        let (_d, p) = temp_file(&pattern(20_000));
        let f = ExpertFile::open(&p, OpenMode::Buffered).unwrap();
        let mut buf = AlignedBuf::new(8192).unwrap();
        let r = FileRange {
            offset: 100,
            len: 9000,
        };
        assert!(matches!(f.read(r, &mut buf), Err(Error::InvalidInput(_))));
        let r = FileRange {
            offset: 0,
            len: 100,
        };
        assert!(f.read_into(r, &mut buf.as_mut_slice()[1..]).is_err());
    }

    #[test]
    fn missing_files_and_modes_report_clearly() {
        let err = ExpertFile::open(Path::new("/nonexistent/m.gguf"), OpenMode::Auto).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/m.gguf"));
        assert_eq!("Direct".parse::<OpenMode>().unwrap(), OpenMode::Direct);
        assert!(
            "fast"
                .parse::<OpenMode>()
                .unwrap_err()
                .to_string()
                .contains("auto, direct, buffered")
        );
        let b = IoMode::Buffered {
            reason: "requested".into(),
        };
        assert!(b.to_string().contains("DONTNEED"));
        assert_eq!(IoMode::Direct.to_string(), "O_DIRECT");
    }
}
