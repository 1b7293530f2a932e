//! Storage-device profiles, and an emulator that makes reads from this machine's disk take as
//! long as they would on another device.
//!
//! # Device model
//! A read request of `n` bytes costs `latency + n / bandwidth`. The device serves up to
//! `queue_depth` requests at once: their latencies overlap, while their transfers share the
//! bandwidth, one after another (a virtual-clock model). For a request arriving at `t`:
//! 1. it takes the queue slot that frees first, at `s = max(t, slot_free)`;
//! 2. after the latency it needs the transfer channel: `x = max(s + latency, channel_free)`;
//! 3. it completes at `c = x + n / bandwidth`; the channel and the slot are busy until `c`.
//!
//! So one request at a time (QD1) takes `latency + n / bandwidth` each, and many concurrent
//! requests approach `bandwidth` once `latency` is hidden behind other requests' transfers.
//!
//! # Emulation on top of real reads
//! [`DeviceModel::emulate`] performs the real read (from the real file, so data and errors are
//! real) and then waits until the modelled completion time. **The emulated completion time is
//! `max(real completion, modelled completion)`**: a profile can only slow this machine down. If
//! the real storage is slower than the profile, the real time shows through;
//! [`DeviceModel::stats`] counts how often that happened, so a run can say its emulation was not
//! faithful. Tests and measurements read page-cached (tmpfs) files to keep the real part small.
//! The emulating thread's own wake-up latency is not charged to the device (it is credited to
//! that thread's next request), so a stream of requests keeps the modelled pace on a busy CPU.
//!
//! # Where the numbers come from
//! Each profile is built from two published figures with [`DeviceSpec::from_datasheet`]: the
//! 4 KiB random-read rate at queue depth 1 (which fixes `latency`, so that a 4 KiB QD1 read takes
//! exactly `1 / IOPS`), and the sequential read bandwidth. Sources are given per profile on
//! [`StorageProfile`]. Vendors quote decimal megabytes (10⁶ B).

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::sys;
use crate::error::{Error, Result};

/// Parameters of an emulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Fixed cost of one request (command, flash read, completion), in nanoseconds.
    pub latency_ns: u64,
    /// Sequential read bandwidth, bytes per second.
    pub bandwidth_bytes_per_s: u64,
    /// Requests served concurrently.
    pub queue_depth: u32,
}

/// Bytes of the random-read requests vendors quote IOPS for.
const IOPS_REQUEST_BYTES: u64 = 4096;

impl DeviceSpec {
    /// From a 4 KiB random-read rate at queue depth 1, a sequential read bandwidth in MB/s
    /// (10⁶ B/s) and a queue depth: `latency = 1 / iops − 4 KiB / bandwidth`.
    pub const fn from_datasheet(
        qd1_read_iops_4k: u64,
        seq_read_mb_s: u64,
        queue_depth: u32,
    ) -> Self {
        let bw = seq_read_mb_s * 1_000_000;
        let per_request = 1_000_000_000 / qd1_read_iops_4k;
        let transfer = IOPS_REQUEST_BYTES * 1_000_000_000 / bw;
        DeviceSpec {
            latency_ns: per_request.saturating_sub(transfer),
            bandwidth_bytes_per_s: bw,
            queue_depth,
        }
    }

    /// Time to move `bytes` over the channel.
    pub fn transfer_time(&self, bytes: u64) -> Duration {
        let ns = u128::from(bytes) * 1_000_000_000 / u128::from(self.bandwidth_bytes_per_s.max(1));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Time of one request of `bytes` on an idle device: `latency + bytes / bandwidth`.
    pub fn request_time(&self, bytes: u64) -> Duration {
        Duration::from_nanos(self.latency_ns) + self.transfer_time(bytes)
    }
}

/// A storage device to read experts from: the real one, or one emulated on top of it.
///
/// Parsed from `real`, `nvme-gen4`, `nvme-gen3`, `ufs-4`, `ufs-3.1`, `sata-ssd`, `emmc`,
/// `sd-card` (`--storage NAME`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageProfile {
    /// This machine's storage as it is: no emulation.
    Real,
    /// PCIe 4.0 x4 NVMe SSD, modelled on the Samsung 990 PRO.
    ///
    /// - 7,450 MB/s sequential read: Samsung 990 PRO specification (Samsung press release,
    ///   Aug 2022; slashcam.com, "Samsung 990 PRO ... reaches the limit of PCIe 4.0").
    /// - 20,000 IOPS 4 KiB random read at QD1 (≈ 50 µs): Samsung quotes only QD32 figures for
    ///   the 990 PRO, so this is the QD1 T1 CrystalDiskMark result of PCIe 4.0 TLC drives in
    ///   KitGuru reviews (Lexar NM790 20,176 IOPS; T-Force Cardea A440 Pro 20,336 IOPS).
    /// - Queue depth 32: the depth of the vendor's random-read rating (1.4 M IOPS at QD32).
    NvmeGen4,
    /// PCIe 3.0 x4 NVMe SSD, modelled on the Samsung 970 EVO Plus 1 TB.
    ///
    /// - 3,500 MB/s sequential read and 19,000 IOPS 4 KiB random read at QD1 (≈ 53 µs):
    ///   Samsung 970 EVO Plus specification table (as reproduced by digit.in's review).
    /// - Queue depth 32: the depth of the vendor's 600 K IOPS rating.
    NvmeGen3,
    /// UFS 4.0 phone storage, modelled on Samsung's first UFS 4.0 part.
    ///
    /// - 4,200 MB/s sequential read: Samsung UFS 4.0 announcement (May 2022; neowin.net).
    /// - 37,240 IOPS 4 KiB random read (≈ 27 µs): Samsung publishes no random figure for
    ///   UFS 4.0; this is the AndroBench random 4K read of a UFS 3.0 phone (notebookcheck.net,
    ///   Jan 2019), which issues one request at a time. QD1 time is set by the flash read, not
    ///   the link, so it is assumed unchanged from UFS 3.x.
    /// - Queue depth 32: the UFS host controller's 32-entry transfer request list (JEDEC UFSHCI).
    Ufs4,
    /// UFS 3.1 phone storage.
    ///
    /// - 2,100 MB/s sequential read: the UFS 3.1 generation's headline figure (Samsung UFS 3.1,
    ///   quoted against UFS 4.0 in the 2022 announcement coverage).
    /// - 37,240 IOPS 4 KiB random read at QD1: AndroBench on UFS 3.0 (notebookcheck.net); UFS 3.1
    ///   keeps UFS 3.0's link (HS-G4, 2 lanes) and adds WriteBooster, which does not affect reads.
    /// - Queue depth 32 (JEDEC UFSHCI transfer request list).
    Ufs31,
    /// SATA III SSD, modelled on the Samsung 870 EVO.
    ///
    /// - 560 MB/s sequential read; 13,000 IOPS 4 KiB random read at QD1 (≈ 77 µs): Samsung's
    ///   870 EVO specification (quoted in KitGuru's 870 EVO 1 TB review).
    /// - Queue depth 32: SATA native command queuing (NCQ) holds 32 commands.
    SataSsd,
    /// eMMC 5.1, modelled on Samsung's first eMMC 5.1 parts.
    ///
    /// - 250 MB/s sequential read and 11,000 IOPS random read: Samsung eMMC 5.1 64 GB
    ///   announcement (cdrinfo.com, Feb 2015). Samsung states no queue depth; the figure is used
    ///   as the QD1 rate, which is optimistic for cheaper parts (typical HS400 parts read
    ///   250–300 MB/s; AndroBench on a phone measured 281 MB/s).
    /// - Queue depth 32: the eMMC 5.1 command queue (JEDEC JESD84-B51) holds 32 tasks.
    Emmc,
    /// microSD card, UHS-I, application performance class A2.
    ///
    /// - 80 MB/s sequential read: UHS-I SDR104 is a 104 MB/s bus; Gateworks measured about
    ///   80 MB/s reads from microSD cards in SDR104 mode (trac.gateworks.com, MMC wiki page).
    /// - 1,500 IOPS 4 KiB random read at QD1 (≈ 667 µs): the A1 minimum (SD Physical 5.1). The
    ///   A2 minimum of 4,000 IOPS needs the command queue, i.e. several requests in flight; one
    ///   request at a time an A2 card performs at the A1 level.
    /// - Queue depth 32: the SD 6.0 command queue holds up to 32 tasks.
    SdCard,
    /// A device described by the caller (tests, what-if studies).
    Custom(DeviceSpec),
}

impl StorageProfile {
    /// The names [`StorageProfile::from_str`] accepts, in order of speed.
    pub const NAMES: [&'static str; 8] = [
        "real",
        "nvme-gen4",
        "nvme-gen3",
        "ufs-4",
        "ufs-3.1",
        "sata-ssd",
        "emmc",
        "sd-card",
    ];

    /// Every named profile.
    pub const ALL: [StorageProfile; 8] = [
        StorageProfile::Real,
        StorageProfile::NvmeGen4,
        StorageProfile::NvmeGen3,
        StorageProfile::Ufs4,
        StorageProfile::Ufs31,
        StorageProfile::SataSsd,
        StorageProfile::Emmc,
        StorageProfile::SdCard,
    ];

    /// The emulated device's parameters; `None` for [`StorageProfile::Real`].
    pub const fn spec(&self) -> Option<DeviceSpec> {
        Some(match self {
            StorageProfile::Real => return None,
            StorageProfile::NvmeGen4 => DeviceSpec::from_datasheet(20_000, 7_450, 32),
            StorageProfile::NvmeGen3 => DeviceSpec::from_datasheet(19_000, 3_500, 32),
            StorageProfile::Ufs4 => DeviceSpec::from_datasheet(37_240, 4_200, 32),
            StorageProfile::Ufs31 => DeviceSpec::from_datasheet(37_240, 2_100, 32),
            StorageProfile::SataSsd => DeviceSpec::from_datasheet(13_000, 560, 32),
            StorageProfile::Emmc => DeviceSpec::from_datasheet(11_000, 250, 32),
            StorageProfile::SdCard => DeviceSpec::from_datasheet(1_500, 80, 32),
            StorageProfile::Custom(s) => *s,
        })
    }

    /// The profile's name (`custom` for [`StorageProfile::Custom`]).
    pub const fn name(&self) -> &'static str {
        match self {
            StorageProfile::Real => "real",
            StorageProfile::NvmeGen4 => "nvme-gen4",
            StorageProfile::NvmeGen3 => "nvme-gen3",
            StorageProfile::Ufs4 => "ufs-4",
            StorageProfile::Ufs31 => "ufs-3.1",
            StorageProfile::SataSsd => "sata-ssd",
            StorageProfile::Emmc => "emmc",
            StorageProfile::SdCard => "sd-card",
            StorageProfile::Custom(_) => "custom",
        }
    }

    /// A device model for this profile, `None` for [`StorageProfile::Real`].
    pub fn model(&self) -> Option<DeviceModel> {
        self.spec().map(DeviceModel::new)
    }
}

impl FromStr for StorageProfile {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        StorageProfile::ALL
            .into_iter()
            .find(|p| p.name() == t)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown storage profile '{s}'; valid: {}",
                    StorageProfile::NAMES.join(", ")
                ))
            })
    }
}

impl fmt::Display for StorageProfile {
    /// `real`, or the name with its parameters, e.g.
    /// `sd-card (emulated: 615 us + n / 80 MB/s, QD 32)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.spec() {
            None => write!(f, "{}", self.name()),
            Some(s) => write!(
                f,
                "{} (emulated: {} us + n / {} MB/s, QD {})",
                self.name(),
                s.latency_ns / 1000,
                s.bandwidth_bytes_per_s / 1_000_000,
                s.queue_depth
            ),
        }
    }
}

/// Counters of a [`DeviceModel`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Requests emulated.
    pub requests: u64,
    /// Bytes requested.
    pub bytes: u64,
    /// Requests whose real read finished after the modelled completion (emulation could not slow
    /// them down to the profile: the real device is slower than the profile).
    pub real_slower: u64,
    /// Total time spent waiting for modelled completions, nanoseconds.
    pub throttled_ns: u64,
    /// Modelled service time of all requests (arrival to modelled completion), nanoseconds.
    pub modelled_ns: u64,
    /// Time by which the real reads overran their modelled completions, summed, nanoseconds.
    pub excess_ns: u64,
    /// Total time the emulating threads woke up after the modelled completions (scheduler
    /// latency, credited to their next requests), nanoseconds.
    pub late_ns: u64,
    /// Whether the file read lives in memory (tmpfs, ramfs): then a real read is a memory copy
    /// on the reading thread, and one slower than the profile means the copy (or a busy CPU),
    /// not storage, was slow ([`DeviceModel::set_source_in_memory`]).
    pub source_in_memory: bool,
}

thread_local! {
    /// This thread's wake-up lateness after its last emulated request (see
    /// [`DeviceModel::emulate`]).
    static WAKE_CREDIT: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
    /// Whether this thread's timer slack was lowered.
    static SLACK_SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

struct DeviceState {
    /// When each queue slot is free again.
    slot_free: Vec<Instant>,
    /// When the transfer channel is free again.
    channel_free: Instant,
    stats: DeviceStats,
}

/// The virtual-clock model of one device, shared by all I/O threads reading through it.
pub struct DeviceModel {
    spec: DeviceSpec,
    state: Mutex<DeviceState>,
}

impl fmt::Debug for DeviceModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceModel")
            .field("spec", &self.spec)
            .finish()
    }
}

/// Sleeps until `deadline`. No busy-waiting: Linux sleeps overshoot by 50–100 µs (measured on
/// the development VM, even with a 1 ns timer slack), and more on a loaded CPU, but that
/// lateness is credited to the thread's next request (see [`DeviceModel::emulate`]), so a
/// stream of requests keeps the modelled pace without burning a core. (A spinning variant was
/// measured to be *less* accurate on a shared 2-core machine: the spinning thread is preempted.)
pub fn sleep_until(deadline: Instant) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep(deadline - now);
    }
}

impl DeviceStats {
    /// The counts accumulated between `earlier` and `self`.
    pub fn since(&self, earlier: &DeviceStats) -> DeviceStats {
        DeviceStats {
            requests: self.requests.saturating_sub(earlier.requests),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            real_slower: self.real_slower.saturating_sub(earlier.real_slower),
            throttled_ns: self.throttled_ns.saturating_sub(earlier.throttled_ns),
            modelled_ns: self.modelled_ns.saturating_sub(earlier.modelled_ns),
            excess_ns: self.excess_ns.saturating_sub(earlier.excess_ns),
            late_ns: self.late_ns.saturating_sub(earlier.late_ns),
            source_in_memory: self.source_in_memory,
        }
    }

    /// Share of the requests the real storage served more slowly than the profile (`None`
    /// without requests): those took the real time instead of the modelled one.
    pub fn real_slower_share(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.real_slower as f64 / self.requests as f64)
    }

    /// The time the real storage added beyond the modelled service time, as a share of it
    /// (`None` without requests): 0 when every read kept the profile's pace.
    pub fn excess_share(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.excess_ns as f64 / self.modelled_ns.max(1) as f64)
    }

    /// Whether the real storage added more than [`UNFAITHFUL_SHARE`] to the modelled read time:
    /// then the run measured this machine's storage, not the profile.
    pub fn unfaithful(&self) -> bool {
        self.excess_share().is_some_and(|s| s > UNFAITHFUL_SHARE)
    }
}

/// Above this much time added by the real storage, relative to the modelled read time, an
/// emulated run is reported as not faithful (the emulation can only slow reads down). The same
/// 10% as the emulation's own accuracy requirement (a stream of requests takes the time the
/// profile predicts within 10%).
pub const UNFAITHFUL_SHARE: f64 = 0.10;

impl fmt::Display for DeviceStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "emulated {} reads", self.requests)?;
        match self.real_slower_share() {
            Some(share) if self.real_slower > 0 => write!(
                f,
                ", {} ({:.0}%) slower on the real storage than on the profile, adding {:.1}% to \
                 the modelled read time{}",
                self.real_slower,
                100.0 * share,
                100.0 * self.excess_share().unwrap_or(0.0),
                match (self.unfaithful(), self.source_in_memory) {
                    (false, _) => "",
                    (true, false) => {
                        ": NOT FAITHFUL, the real storage set the pace (put the model on faster \
                         storage, e.g. tmpfs)"
                    }
                    (true, true) => {
                        ": NOT FAITHFUL, the real reads set the pace although the model is in \
                         memory: this machine copied from memory more slowly than the profile \
                         reads (a busy CPU, or a slow copy), so the speed measured is a lower \
                         bound for the device"
                    }
                }
            ),
            _ => write!(f, ", all at the profile's pace"),
        }
    }
}

impl DeviceModel {
    /// An idle device.
    pub fn new(spec: DeviceSpec) -> DeviceModel {
        let now = Instant::now();
        DeviceModel {
            spec,
            state: Mutex::new(DeviceState {
                slot_free: vec![now; spec.queue_depth.max(1) as usize],
                channel_free: now,
                stats: DeviceStats::default(),
            }),
        }
    }

    /// Records whether the file read through this model lives in memory (see
    /// [`DeviceStats::source_in_memory`]).
    pub fn set_source_in_memory(&self, in_memory: bool) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats
            .source_in_memory = in_memory;
    }

    /// The device's parameters.
    pub fn spec(&self) -> DeviceSpec {
        self.spec
    }

    /// Books a request of `bytes` arriving at `arrival` and returns its modelled completion.
    pub fn schedule(&self, arrival: Instant, bytes: u64) -> Instant {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (slot, &free) = st
            .slot_free
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .expect("queue depth is at least 1");
        let start = arrival.max(free);
        let xfer_start = (start + Duration::from_nanos(self.spec.latency_ns)).max(st.channel_free);
        let done = xfer_start + self.spec.transfer_time(bytes);
        st.channel_free = done;
        st.slot_free[slot] = done;
        st.stats.requests += 1;
        st.stats.bytes += bytes;
        done
    }

    /// Runs the real read `read` as a request of `bytes` and returns its result no earlier than
    /// the modelled completion: the caller sees `max(real, modelled)` completion time.
    ///
    /// The request arrives now, minus this thread's wake-up credit (see below), but not before
    /// `submitted` when given (a queued request cannot start before it was submitted).
    ///
    /// Wake-up credit: the emulating thread sleeps until the modelled completion and may wake up
    /// late when the CPU is busy. That lateness is an artefact of emulation (a real device's
    /// completion does not wait for our sleep to end), so it is not charged to the next request:
    /// the thread's next request is back-dated by it. Lateness therefore does not accumulate
    /// over a stream of requests; it appears at most once at the end.
    pub fn emulate<T>(
        &self,
        bytes: u64,
        submitted: Option<Instant>,
        read: impl FnOnce() -> T,
    ) -> T {
        if !SLACK_SET.replace(true) {
            sys::set_thread_timer_slack_ns(1);
        }
        let now = Instant::now();
        let credit = WAKE_CREDIT.get();
        let mut arrival = now.checked_sub(credit).unwrap_or(now);
        if let Some(s) = submitted {
            arrival = arrival.max(s.min(now));
        }
        let deadline = self.schedule(arrival, bytes);
        let out = read();
        let real_done = Instant::now();
        let read_time = real_done.saturating_duration_since(now);
        // Where this request completes on the thread's virtual timeline: the model, or the real
        // read if that alone took longer.
        let virtual_done = deadline.max(arrival + read_time);
        if arrival + read_time > deadline {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.stats.real_slower += 1;
        } else {
            sleep_until(deadline);
            let waited = Instant::now().saturating_duration_since(real_done);
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.stats.throttled_ns += super::saturating_nanos(waited);
        }
        let late = Instant::now().saturating_duration_since(virtual_done);
        WAKE_CREDIT.set(late);
        {
            let ns = super::saturating_nanos;
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.stats.late_ns += ns(late);
            // The modelled service time, and how far the real read overran it (zero when the
            // model set the pace).
            let modelled = ns(deadline.saturating_duration_since(arrival));
            st.stats.modelled_ns = st.stats.modelled_ns.saturating_add(modelled);
            let excess = ns(virtual_done.saturating_duration_since(deadline));
            st.stats.excess_ns = st.stats.excess_ns.saturating_add(excess);
        }
        out
    }

    /// Counters so far.
    pub fn stats(&self) -> DeviceStats {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid_ones() {
        for p in StorageProfile::ALL {
            assert_eq!(p.name().parse::<StorageProfile>().unwrap(), p);
        }
        assert_eq!(
            " UFS-3.1 ".parse::<StorageProfile>().unwrap(),
            StorageProfile::Ufs31
        );
        let err = "floppy".parse::<StorageProfile>().unwrap_err().to_string();
        assert!(err.contains("floppy"), "{err}");
        for n in StorageProfile::NAMES {
            assert!(err.contains(n), "{err} lacks {n}");
        }
    }

    #[test]
    fn datasheet_figures_give_the_quoted_qd1_time_for_4k() {
        for p in StorageProfile::ALL.into_iter().skip(1) {
            let s = p.spec().unwrap();
            assert!(s.latency_ns > 10_000 && s.latency_ns < 1_000_000, "{p}");
        }
        let s = StorageProfile::SataSsd.spec().unwrap();
        // 13,000 IOPS: 76.9 us per 4 KiB request.
        let t = s.request_time(4096).as_nanos() as i64;
        assert!((t - 76_923).abs() < 10, "{t}");
        assert_eq!(s.bandwidth_bytes_per_s, 560_000_000);
        assert!(StorageProfile::Real.spec().is_none());
        assert_eq!(StorageProfile::Real.to_string(), "real");
        assert!(StorageProfile::SdCard.to_string().contains("80 MB/s"));
    }

    const SPEC: DeviceSpec = DeviceSpec {
        latency_ns: 100_000,
        bandwidth_bytes_per_s: 1_000_000_000,
        queue_depth: 4,
    };

    #[test]
    fn one_request_at_a_time_costs_latency_plus_transfer_each() {
        let m = DeviceModel::new(SPEC);
        let t0 = Instant::now() + Duration::from_millis(1);
        let mut t = t0;
        for _ in 0..10 {
            t = m.schedule(t, 1_000_000);
        }
        // 10 × (100 us + 1 ms).
        assert_eq!(t - t0, Duration::from_micros(11_000));
    }

    #[test]
    fn concurrent_requests_overlap_latency_and_share_bandwidth() {
        let m = DeviceModel::new(SPEC);
        let t0 = Instant::now() + Duration::from_millis(1);
        let done: Vec<_> = (0..4).map(|_| m.schedule(t0, 1_000_000)).collect();
        // Latencies overlap; transfers queue on the channel: 100 us + i × 1 ms.
        for (i, d) in done.iter().enumerate() {
            assert_eq!(*d - t0, Duration::from_micros(100 + 1000 * (i as u64 + 1)));
        }
        // A fifth request waits for the first free slot (the first one, at 1.1 ms).
        let fifth = m.schedule(t0, 1_000_000);
        assert_eq!(fifth - t0, Duration::from_micros(5100));
    }

    #[test]
    fn queue_depth_one_serialises_latencies() {
        let m = DeviceModel::new(DeviceSpec {
            queue_depth: 1,
            ..SPEC
        });
        let t0 = Instant::now() + Duration::from_millis(1);
        let last = (0..3).map(|_| m.schedule(t0, 1_000_000)).last().unwrap();
        assert_eq!(last - t0, Duration::from_micros(3 * 1100));
    }

    #[test]
    fn stats_difference_share_and_fidelity() {
        let a = DeviceStats {
            requests: 10,
            bytes: 1000,
            real_slower: 1,
            throttled_ns: 5,
            modelled_ns: 1_000,
            excess_ns: 10,
            late_ns: 2,
            source_in_memory: false,
        };
        let b = DeviceStats {
            requests: 110,
            bytes: 9000,
            real_slower: 31,
            throttled_ns: 50,
            modelled_ns: 101_000,
            excess_ns: 20_010,
            late_ns: 3,
            source_in_memory: false,
        };
        let d = b.since(&a);
        assert_eq!((d.requests, d.bytes, d.real_slower), (100, 8000, 30));
        assert_eq!(d.real_slower_share(), Some(0.3));
        assert_eq!(d.excess_share(), Some(0.2));
        assert!(d.unfaithful());
        assert!(d.to_string().contains("NOT FAITHFUL"), "{d}");
        assert!(d.to_string().contains("faster storage"), "{d}");
        // From a tmpfs the storage is not what is slow: the message says so.
        let m = DeviceStats {
            source_in_memory: true,
            ..d
        };
        assert!(m.to_string().contains("NOT FAITHFUL"), "{m}");
        assert!(
            m.to_string().contains("a lower bound for the device")
                && !m.to_string().contains("faster storage"),
            "{m}"
        );
        assert!(b.since(&a).source_in_memory == b.source_in_memory);
        // Many reads a little slow: faithful (the added time is what matters).
        let ok = DeviceStats {
            requests: 100,
            real_slower: 30,
            modelled_ns: 100_000,
            excess_ns: 4_000,
            ..DeviceStats::default()
        };
        assert!(!ok.unfaithful());
        assert!(!ok.to_string().contains("NOT FAITHFUL"), "{ok}");
        assert_eq!(DeviceStats::default().real_slower_share(), None);
        assert!(!DeviceStats::default().unfaithful());
    }

    #[test]
    fn emulate_waits_for_the_model_and_counts_requests() {
        let m = DeviceModel::new(DeviceSpec {
            latency_ns: 2_000_000,
            bandwidth_bytes_per_s: 1_000_000_000,
            queue_depth: 1,
        });
        let t = Instant::now();
        let v = m.emulate(1_000_000, None, || 42);
        let dt = t.elapsed();
        assert_eq!(v, 42);
        assert!(dt >= Duration::from_micros(3000), "{dt:?}");
        // Sleeps overshoot on a loaded machine; the fidelity within 10% is checked over many
        // requests in the integration tests. This bounds gross errors (a doubled wait).
        assert!(dt < Duration::from_micros(3000 + 3000), "{dt:?}");
        let s = m.stats();
        assert_eq!((s.requests, s.bytes, s.real_slower), (1, 1_000_000, 0));
        assert!(s.modelled_ns >= 3_000_000 && s.excess_ns == 0, "{s:?}");
        assert!(!s.unfaithful());
    }

    #[test]
    fn a_real_read_slower_than_the_profile_is_counted_as_unfaithful() {
        // Modelled at 0.1 ms; the "real" read takes 5 ms.
        let m = DeviceModel::new(DeviceSpec {
            latency_ns: 100_000,
            bandwidth_bytes_per_s: 1_000_000_000_000,
            queue_depth: 1,
        });
        m.emulate(1000, None, || std::thread::sleep(Duration::from_millis(5)));
        let s = m.stats();
        assert_eq!(s.real_slower, 1);
        assert!(s.excess_ns >= 4_000_000, "{s:?}");
        assert!(s.unfaithful(), "{s}");
        assert!(s.to_string().contains("NOT FAITHFUL"), "{s}");
    }
}
