//! The offload module's only `unsafe` code: page-aligned heap buffers for `O_DIRECT`, and two
//! thin libc calls (`posix_fadvise`, the per-thread timer slack).
//!
//! Everything else in [`crate::offload`] is safe code on top of these.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Alignment of [`AlignedBuf`] and of every `O_DIRECT` transfer: file offset, length and memory
/// address. 4096 covers both 512-byte and 4 KiB logical sectors and equals the page size on
/// x86-64 and most arm64 kernels.
pub const ALIGN: usize = 4096;

/// A zero-initialised heap buffer whose address and length are multiples of [`ALIGN`].
///
/// Allocated once (a cache slot, an I/O buffer) and reused; it owns its memory like a
/// `Vec<u8>`.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// For a piece of a slab ([`AlignedBuf::slab`]): the mapping it lies in, kept alive by
    /// every piece and unmapped with the last one. `None`: a heap allocation of its own.
    slab: Option<Arc<memmap2::MmapMut>>,
}

// SAFETY: `AlignedBuf` uniquely owns its allocation (like `Vec<u8>`) or its disjoint piece of a
// slab (whose mapping is only ever accessed through the pieces); shared access only hands out
// `&[u8]` and mutation requires `&mut self`, so moving or sharing it across threads is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: see `Send`; there is no interior mutability.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of at least `len` bytes (rounded up to a multiple of [`ALIGN`], at least one
    /// block), zero-filled. Fails with [`Error::OutOfMemory`] if the allocation is refused.
    pub fn new(len: usize) -> Result<AlignedBuf> {
        let oom = || Error::OutOfMemory {
            bytes: len as u64,
            what: "aligned I/O buffer",
        };
        let len = len.max(1).checked_next_multiple_of(ALIGN).ok_or_else(oom)?;
        let layout = std::alloc::Layout::from_size_align(len, ALIGN).map_err(|_| oom())?;
        // SAFETY: `layout` has a non-zero size (len >= ALIGN) and a power-of-two alignment.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(oom)?;
        Ok(AlignedBuf {
            ptr,
            len,
            slab: None,
        })
    }

    /// `n` zero-initialised buffers of `len` bytes each (rounded up as in [`AlignedBuf::new`]),
    /// side by side in one anonymous mapping that starts on a 2 MiB boundary and is advised for
    /// transparent huge pages (Linux): the expert cache's slots, read once per use from DRAM
    /// by the compute threads, cost one TLB entry per 2 MiB instead of per 4 KiB.
    ///
    /// The memory is faulted in now ([`populate`]), not at each slot's first read: zeroing a
    /// fresh page is CPU work, and done inside the I/O threads' reads it competed with the
    /// compute threads for the first thousands of reads (`docs/offload.md`, 2026-12-07). The
    /// budget has planned this memory anyway.
    pub fn slab(n: usize, len: usize) -> Result<Vec<AlignedBuf>> {
        const HUGE: usize = 2 << 20;
        let oom = || Error::OutOfMemory {
            bytes: (len as u64).saturating_mul(n as u64),
            what: "expert cache slots",
        };
        let len = len.max(1).checked_next_multiple_of(ALIGN).ok_or_else(oom)?;
        let total = len.checked_mul(n).ok_or_else(oom)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut map = memmap2::MmapMut::map_anon(total + HUGE).map_err(|_| oom())?;
        let skew = map.as_ptr().align_offset(HUGE);
        #[cfg(target_os = "linux")]
        // Advisory: without THP support the slots simply stay in small pages.
        let _ = map.advise_range(memmap2::Advice::HugePage, skew, total);
        populate(&mut map, skew, total).map_err(|_| oom())?;
        // SAFETY: `skew < HUGE`, so `skew + total` bytes lie inside the `total + HUGE` mapping.
        let base = unsafe { map.as_mut_ptr().add(skew) };
        let map = Arc::new(map);
        (0..n)
            .map(|i| {
                // SAFETY: piece `i` is `[i·len, (i+1)·len)` of the `total` bytes after `base`,
                // inside the mapping (above); pieces are disjoint.
                let p = unsafe { base.add(i * len) };
                Ok(AlignedBuf {
                    ptr: NonNull::new(p).ok_or_else(oom)?,
                    len,
                    slab: Some(map.clone()),
                })
            })
            .collect()
    }

    /// Length in bytes (a multiple of [`ALIGN`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a buffer holds at least one block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed at allocation) bytes owned by `self`,
        // borrowed immutably for the lifetime of `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// Faults in `len` bytes of `map` from `start` (a multiple of [`ALIGN`]), split over up to
/// `POPULATE_THREADS` threads: `MADV_POPULATE_WRITE` where the kernel has it (Linux 5.14+),
/// else one write per page. The bytes stay zero. Fails only if the kernel reports it is out of
/// memory (a cgroup limit below the plan); a thread that cannot be started leaves its part to
/// the calling thread.
fn populate(map: &mut memmap2::MmapMut, start: usize, len: usize) -> std::io::Result<()> {
    const POPULATE_THREADS: usize = 4;
    const HUGE: usize = 2 << 20;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, POPULATE_THREADS);
    // Chunks on 2 MiB boundaries keep huge pages whole.
    let chunk = len
        .div_ceil(threads)
        .checked_next_multiple_of(HUGE)
        .unwrap_or(len)
        .max(ALIGN);
    let ranges: Vec<(usize, usize)> = (start..start + len)
        .step_by(chunk)
        .map(|at| (at, chunk.min(start + len - at)))
        .collect();
    let outcomes: Vec<(usize, usize, std::io::Result<()>)> = if let [(at, n)] = ranges[..] {
        // One chunk (a small cache, or one core): no thread.
        vec![(at, n, populate_advice(map, at, n))]
    } else {
        let shared: &memmap2::MmapMut = map;
        std::thread::scope(|s| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|&(at, n)| {
                    let h = std::thread::Builder::new()
                        .name("populate".into())
                        .spawn_scoped(s, move || populate_advice(shared, at, n))
                        .ok();
                    (at, n, h)
                })
                .collect();
            handles
                .into_iter()
                .map(|(at, n, h)| {
                    let r = match h.map(|h| h.join()) {
                        Some(Ok(r)) => r,
                        // Not started (or, impossibly, panicked): done here instead.
                        _ => populate_advice(shared, at, n),
                    };
                    (at, n, r)
                })
                .collect()
        })
    };
    for (at, n, r) in outcomes {
        match r {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => return Err(e),
            // Not supported by this kernel (EINVAL) or refused otherwise: touch every page.
            Err(_) => {
                for page in map[at..at + n].chunks_mut(ALIGN) {
                    page[0] = 0;
                }
            }
        }
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn populate_advice(map: &memmap2::MmapMut, at: usize, n: usize) -> std::io::Result<()> {
    map.advise_range(memmap2::Advice::PopulateWrite, at, n)
}

#[cfg(not(target_os = "linux"))]
fn populate_advice(_: &memmap2::MmapMut, _: usize, _: usize) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.slab.is_some() {
            // A slab piece: the mapping goes with its last piece.
            return;
        }
        // The same layout `new` allocated with; `new` checked it is valid.
        if let Ok(layout) = std::alloc::Layout::from_size_align(self.len, ALIGN) {
            // SAFETY: `ptr` was returned by `alloc_zeroed` with exactly this layout and is freed
            // only here, once.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} B)", self.len)
    }
}

/// Advice for [`fadvise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// `POSIX_FADV_RANDOM`: no readahead for this file.
    Random,
    /// `POSIX_FADV_DONTNEED`: drop the range's clean pages from the page cache.
    DontNeed,
}

/// `posix_fadvise(file, offset, len, advice)`; `len == 0` means "to the end of the file".
pub fn fadvise(file: &File, offset: u64, len: u64, advice: Advice) -> std::io::Result<()> {
    let adv = match advice {
        Advice::Random => libc::POSIX_FADV_RANDOM,
        Advice::DontNeed => libc::POSIX_FADV_DONTNEED,
    };
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    // SAFETY: `posix_fadvise` only reads its integer arguments; the descriptor is open for the
    // lifetime of `file`.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), off, n, adv) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// Whether `file` is on a filesystem held in memory (Linux tmpfs or ramfs, by `fstatfs`'s
/// magic number); false where that cannot be told.
pub fn is_in_memory_fs(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        // Filesystem magic numbers are 32-bit; `f_type`'s type and sign vary by target.
        const TMPFS_MAGIC: u32 = 0x0102_1994;
        const RAMFS_MAGIC: u32 = 0x8584_58f6;
        let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: `fstatfs` writes a `statfs` into the buffer it is given, which is large enough
        // and writable; the descriptor is open for the lifetime of `file`. The buffer is read
        // only when the call succeeded.
        let rc = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
        if rc != 0 {
            return false;
        }
        // SAFETY: `fstatfs` returned 0, so it initialised `st`.
        let magic = unsafe { st.assume_init() }.f_type as u32;
        magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

/// Sets the calling thread's timer slack (Linux `PR_SET_TIMERSLACK`) so sleeps wake close to
/// their deadline; storage emulation uses it. Errors are ignored (the default slack is 50 µs).
pub fn set_thread_timer_slack_ns(ns: u64) {
    let ns = libc::c_ulong::try_from(ns.max(1)).unwrap_or(1);
    // SAFETY: `prctl(PR_SET_TIMERSLACK, n)` takes plain integers and only affects this thread.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0) };
}

/// Makes glibc's `malloc` serve every request of at least `bytes` with a mapping of its own,
/// unmapped when freed, instead of letting the threshold grow with the sizes freed (glibc's
/// default: after a large block is freed, blocks up to its size come from the arenas, which keep
/// freed memory). Returns whether the setting took (false elsewhere than Linux with glibc).
///
/// For a process that must stay inside a memory budget: the compute threads' large temporaries
/// (prefill's per-expert and attention buffers) otherwise stay in each thread's arena after use,
/// one peak's worth per thread. The engine never calls this itself; the `thinker` binary does.
pub fn pin_malloc_mmap_threshold(bytes: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let Ok(v) = libc::c_int::try_from(bytes) else {
            return false;
        };
        // SAFETY: `mallopt` only sets an allocator parameter from plain integers; a value it
        // does not accept is refused with 0, nothing else changes.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, v) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = bytes;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_zeroed_and_rounded_up() {
        let mut b = AlignedBuf::new(5000).unwrap();
        assert_eq!(b.len(), 2 * ALIGN);
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[4999] = 7;
        assert_eq!(b.as_slice()[4999], 7);
        assert_eq!(AlignedBuf::new(0).unwrap().len(), ALIGN);
    }

    #[test]
    fn absurd_sizes_are_an_error_not_an_abort() {
        let err = AlignedBuf::new(usize::MAX - 10).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        let err = AlignedBuf::slab(1 << 20, usize::MAX / 4).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
    }

    #[test]
    fn slab_pieces_are_aligned_zeroed_disjoint_and_outlive_each_other() {
        let mut v = AlignedBuf::slab(5, 5000).unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v[0].as_slice().as_ptr() as usize % (2 << 20), 0);
        for (i, b) in v.iter_mut().enumerate() {
            assert_eq!(b.len(), 2 * ALIGN);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice().fill(i as u8 + 1);
        }
        // Dropping pieces keeps the others' memory.
        let last = v.pop().unwrap();
        v.truncate(1);
        assert!(v[0].as_slice().iter().all(|&x| x == 1));
        assert!(last.as_slice().iter().all(|&x| x == 5));
        assert!(AlignedBuf::slab(0, 4096).unwrap().is_empty());
    }

    #[test]
    fn tmpfs_files_are_in_memory_and_disk_files_are_not() {
        let shm = std::path::Path::new("/dev/shm");
        // Only where /dev/shm is a tmpfs mount, as /proc/self/mounts says (usual, not certain).
        let shm_is_tmpfs = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.len() > 2 && f[1] == "/dev/shm" && f[2] == "tmpfs"
            })
        });
        if cfg!(target_os = "linux") && shm_is_tmpfs && shm.is_dir() {
            let f = tempfile::tempfile_in(shm).unwrap();
            assert!(is_in_memory_fs(&f));
        }
        // procfs is not a memory filesystem in this sense (and always there on Linux).
        if let Ok(f) = File::open("/proc/self/stat") {
            assert!(!is_in_memory_fs(&f));
        }
    }

    #[test]
    fn fadvise_accepts_a_regular_file() {
        let f = tempfile::tempfile().unwrap();
        fadvise(&f, 0, 0, Advice::Random).unwrap();
        fadvise(&f, 0, 4096, Advice::DontNeed).unwrap();
    }
}
