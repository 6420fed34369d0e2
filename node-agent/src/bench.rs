//! `ringmaster-agent bench`: random (or sequential) reads through the worker pool, closed loop at
//! a fixed total queue depth. Prints IOPS, MiB/s, p50/p99 latency and CPU µs per I/O (getrusage).
//!
//! Each of the `--qd` slots resubmits its next read from its completion callback, on the worker
//! thread that reaped it, the way fio keeps its queue full; buffered reads try the page-cache
//! fast path first, as the read service does.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;

use ringmaster_ring::io::Policy;
use ringmaster_ring::io::{
    cached, AlignedBuf, Pool, PoolConfig, ReadJob, ReadOutcome, RingFlags, WorkerMode,
};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Rand,
    Seq,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// File to read (at least one block long).
    #[arg(long)]
    pub file: std::path::PathBuf,
    /// Open with O_DIRECT (bypass the page cache).
    #[arg(long)]
    pub direct: bool,
    /// Total reads in flight.
    #[arg(long, default_value_t = 32)]
    pub qd: u32,
    /// Worker threads (one ring each).
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Read size: bytes or with a k/m suffix (4k, 1m).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub block: usize,
    /// Duration in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Ring entries per worker (default: qd / workers, rounded up).
    #[arg(long)]
    pub max_events: Option<u32>,
    /// io_uring policy: required, preferred (pread if unavailable) or disabled (pread pool).
    #[arg(long = "io-uring", value_enum, default_value_t = Policy::Preferred)]
    pub io_uring: Policy,
    /// Access pattern.
    #[arg(long, value_enum, default_value_t = Pattern::Rand)]
    pub pattern: Pattern,
    /// io_uring setup flags to try: coop, single, defer, sqpoll (comma-separated) or none.
    #[arg(long, default_value = "none", value_parser = RingFlags::parse)]
    pub ring_flags: RingFlags,
    /// Skip the page-cache fast path for buffered reads.
    #[arg(long)]
    pub no_fast_path: bool,
}

/// `4096`, `4k`, `4KiB`, `1m`, `1M` → bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1usize << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size: use bytes or a k/m/g suffix (4k, 1m)"))?;
    if n == 0 {
        return Err(format!("'{s}': the size must be positive"));
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Log-linear latency histogram in nanoseconds (16 sub-buckets per power of two, ~6% error).
struct Hist(Vec<u64>);

impl Hist {
    const LEN: usize = 32 + 59 * 16;

    fn new() -> Self {
        Hist(vec![0; Self::LEN])
    }

    fn bucket(v: u64) -> usize {
        if v < 32 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize;
        32 + (e - 5) * 16 + ((v >> (e - 4)) & 15) as usize
    }

    fn lower(i: usize) -> u64 {
        if i < 32 {
            return i as u64;
        }
        let (e, sub) = ((i - 32) / 16 + 5, ((i - 32) % 16) as u64);
        (16 + sub) << (e - 4)
    }

    fn record(&mut self, ns: u64) {
        self.0[Self::bucket(ns)] += 1;
    }

    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a += b;
        }
    }

    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.0.iter().sum();
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.0.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Self::lower(i);
            }
        }
        0
    }
}

/// One in-flight slot: its own RNG and stats, carried from completion to completion.
struct Slot {
    rng: u64,
    started: Instant,
    ios: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Hist,
}

impl Slot {
    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

struct Shared {
    pool: Pool,
    blocks: u64,
    block: usize,
    direct: bool,
    pattern: Pattern,
    fast_path: bool,
    cursor: AtomicU64,
    deadline: Instant,
    finished: mpsc::Sender<Box<Slot>>,
}

impl Shared {
    fn next_offset(&self, slot: &mut Slot) -> u64 {
        let b = match self.pattern {
            Pattern::Rand => slot.next_rand() % self.blocks,
            Pattern::Seq => self.cursor.fetch_add(1, Ordering::Relaxed) % self.blocks,
        };
        b * self.block as u64
    }

    fn job(
        self: &Arc<Self>,
        slot: Box<Slot>,
        file: Arc<File>,
        offset: u64,
        buf: AlignedBuf,
    ) -> ReadJob {
        let st = self.clone();
        ReadJob::new(
            file,
            offset,
            self.block,
            buf,
            self.direct,
            Box::new(move |o| on_done(st, slot, o)),
        )
    }
}

/// Record a finished read and issue the slot's next one (page-cache hits loop here inline).
fn on_done(st: Arc<Shared>, mut slot: Box<Slot>, out: ReadOutcome) {
    let ReadOutcome {
        file,
        mut buf,
        result,
        ..
    } = out;
    let mut result = result.map_err(|e| e.to_string());
    loop {
        let now = Instant::now();
        match &result {
            Ok(n) => {
                slot.ios += 1;
                slot.bytes += *n as u64;
                slot.hist
                    .record(now.duration_since(slot.started).as_nanos() as u64);
            }
            Err(e) => {
                slot.errors += 1;
                slot.first_error.get_or_insert_with(|| e.clone());
            }
        }
        if now >= st.deadline {
            let _ = st.finished.send(slot);
            return;
        }
        let offset = st.next_offset(&mut slot);
        slot.started = now;
        if st.fast_path {
            // SAFETY: buf holds at least `block` bytes.
            if let Some(n) =
                unsafe { cached::read_nowait(file.as_raw_fd(), buf.as_mut_ptr(), st.block, offset) }
            {
                if n == st.block {
                    result = Ok(n);
                    continue;
                }
            }
        }
        let job = st.job(slot, file, offset, buf);
        if let Err(e) = st.pool.submit(job) {
            // Only at shutdown; the slot is dropped with the job, report what we have.
            drop(e.into_job());
        }
        return;
    }
}

/// Results of one run.
#[derive(Debug)]
pub struct BenchReport {
    pub mode: WorkerMode,
    pub reason: String,
    pub ios: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub iops: f64,
    pub mib_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_io: f64,
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

pub fn bench(a: &BenchArgs) -> anyhow::Result<BenchReport> {
    if a.qd == 0 {
        anyhow::bail!("--qd must be at least 1");
    }
    if a.seconds <= 0.0 {
        anyhow::bail!("--seconds must be positive");
    }
    if a.direct && !a.block.is_multiple_of(AlignedBuf::ALIGN) {
        anyhow::bail!("--block {} with --direct: use a multiple of 4096", a.block);
    }
    let mut oo = std::fs::OpenOptions::new();
    oo.read(true);
    if a.direct {
        oo.custom_flags(libc::O_DIRECT);
    }
    let file = Arc::new(
        oo.open(&a.file)
            .with_context(|| format!("--file {}: cannot open", a.file.display()))?,
    );
    let size = file.metadata()?.len();
    let blocks = size / a.block as u64;
    if blocks == 0 {
        anyhow::bail!(
            "--file {} is {size} bytes, smaller than one --block {}",
            a.file.display(),
            a.block
        );
    }
    let max_events = a
        .max_events
        .unwrap_or(a.qd.div_ceil(a.workers.max(1)).max(1));
    let mut pc = PoolConfig::new(a.workers, max_events, a.io_uring);
    pc.queue_depth = pc.queue_depth.max(a.qd as usize);
    pc.ring_flags = a.ring_flags;
    let pool = Pool::start(&pc)?;
    let fast_path = !a.direct && !a.no_fast_path && pool.mode() == WorkerMode::IoUring;
    let (tx, rx) = mpsc::channel();
    let st = Arc::new(Shared {
        pool,
        blocks,
        block: a.block,
        direct: a.direct,
        pattern: a.pattern,
        fast_path,
        cursor: AtomicU64::new(0),
        deadline: Instant::now() + Duration::from_secs_f64(a.seconds),
        finished: tx,
    });
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    for i in 0..a.qd {
        let mut slot = Box::new(Slot {
            rng: 0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) << 17) ^ t0.elapsed().as_nanos() as u64,
            started: Instant::now(),
            ios: 0,
            bytes: 0,
            errors: 0,
            first_error: None,
            hist: Hist::new(),
        });
        let off = st.next_offset(&mut slot);
        let job = st.job(slot, file.clone(), off, AlignedBuf::new(a.block));
        if st.pool.submit(job).is_err() {
            anyhow::bail!("the read queue refused the initial reads (qd {})", a.qd);
        }
    }
    let mut hist = Hist::new();
    let (mut ios, mut bytes, mut errors, mut first_error) = (0, 0, 0, None);
    let wait = Duration::from_secs_f64(a.seconds) + Duration::from_secs(60);
    for _ in 0..a.qd {
        let s = rx
            .recv_timeout(wait)
            .context("reads did not finish within 60 s after the deadline")?;
        ios += s.ios;
        bytes += s.bytes;
        errors += s.errors;
        if first_error.is_none() {
            first_error = s.first_error.clone();
        }
        hist.merge(&s.hist);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    let (mode, reason) = (st.pool.mode(), st.pool.reason().to_string());
    st.pool.shutdown();
    Ok(BenchReport {
        mode,
        reason,
        ios,
        errors,
        first_error,
        seconds: elapsed,
        iops: ios as f64 / elapsed,
        mib_s: bytes as f64 / elapsed / (1 << 20) as f64,
        p50_us: hist.quantile(0.50) as f64 / 1e3,
        p99_us: hist.quantile(0.99) as f64 / 1e3,
        cpu_us_per_io: if ios > 0 { cpu * 1e6 / ios as f64 } else { 0.0 },
    })
}

pub fn run(a: BenchArgs) -> i32 {
    crate::init_tracing();
    match bench(&a) {
        Ok(r) => {
            println!(
                "mode={} iops={:.0} mib_s={:.1} p50_us={:.1} p99_us={:.1} cpu_us_per_io={:.2} ios={} errors={} seconds={:.2}",
                r.mode.as_str(), r.iops, r.mib_s, r.p50_us, r.p99_us, r.cpu_us_per_io, r.ios, r.errors, r.seconds
            );
            eprintln!("worker mode {}: {}", r.mode.as_str(), r.reason);
            if let Some(e) = r.first_error {
                eprintln!("error: {} reads failed, first: {e}", r.errors);
                return 1;
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("x").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn histogram_quantiles_are_within_a_bucket() {
        let mut h = Hist::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5_000_000.0).abs() / 5_000_000.0 < 0.07, "{p50}");
        for i in 0..Hist::LEN {
            assert_eq!(Hist::bucket(Hist::lower(i)), i);
        }
    }
}
