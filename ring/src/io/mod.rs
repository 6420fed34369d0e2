//! The read workers: an io_uring pool (one ring per thread), a pread pool with the same
//! interface, and a page-cache fast path. Knows nothing of Kubernetes.
//!
//! A caller builds a [`ReadJob`] (file, offset, length, buffer, completion callback) and hands it to
//! [`Pool::read`] (page-cache fast path first, then the queue) or [`Pool::submit`] (queue only).
//! The callback runs exactly once, on a worker thread (or inline on a fast-path hit), with the
//! buffer back and the bytes read: short only at EOF, or the request's own error.

mod buf;
pub mod cached;
pub mod completion;
mod pread;
mod uring;

use std::fs::File;
use std::io;
use std::sync::Arc;

pub use buf::AlignedBuf;
pub use completion::{Progress, Step};

/// io_uring policy of a pool: `Required` (fail without io_uring), `Preferred` (fall back to
/// pread), `Disabled` (pread). The agent maps the API's `aio.ioUring` onto it; the reader
/// config file carries it in this lowercase form.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Required,
    #[default]
    Preferred,
    Disabled,
}

/// Called once when a job finishes.
pub type Completion = Box<dyn FnOnce(ReadOutcome) + Send>;

/// One read request.
pub struct ReadJob {
    pub file: Arc<File>,
    pub buf: AlignedBuf,
    pub done: Completion,
    pub(crate) progress: Progress,
}

impl ReadJob {
    /// Read `len` bytes at `offset` into `buf` (capacity >= len). `direct`: the file is O_DIRECT
    /// (offset, length and buffer must be aligned, or that request alone fails with EINVAL).
    pub fn new(
        file: Arc<File>,
        offset: u64,
        len: usize,
        buf: AlignedBuf,
        direct: bool,
        done: Completion,
    ) -> Self {
        let len = len.min(buf.capacity());
        ReadJob {
            file,
            buf,
            done,
            progress: Progress::new(offset, len, direct),
        }
    }

    pub fn offset(&self) -> u64 {
        self.progress.offset
    }

    pub fn len(&self) -> usize {
        self.progress.len
    }

    pub fn is_empty(&self) -> bool {
        self.progress.len == 0
    }

    pub fn direct(&self) -> bool {
        self.progress.direct
    }

    /// Finish: hand the outcome to the callback.
    pub(crate) fn finish(self, result: Result<usize, i32>) {
        let ReadJob {
            file,
            mut buf,
            done,
            progress,
        } = self;
        let result = match result {
            Ok(n) => {
                buf.set_len(n);
                Ok(n)
            }
            Err(e) => {
                buf.set_len(0);
                Err(completion::errno_error(e))
            }
        };
        done(ReadOutcome {
            file,
            offset: progress.offset,
            buf,
            result,
        });
    }
}

/// What a finished job hands back.
pub struct ReadOutcome {
    pub file: Arc<File>,
    pub offset: u64,
    /// `len()` is the bytes read.
    pub buf: AlignedBuf,
    pub result: io::Result<usize>,
}

/// Why a job was not queued; the job comes back so the caller can retry or fail it.
pub enum SubmitError {
    /// The bounded queue is full (back-pressure).
    Full(ReadJob),
    /// The pool is shutting down.
    ShutDown(ReadJob),
}

impl SubmitError {
    pub fn into_job(self) -> ReadJob {
        match self {
            SubmitError::Full(j) | SubmitError::ShutDown(j) => j,
        }
    }
}

impl std::fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SubmitError::Full(_) => "read queue full",
            SubmitError::ShutDown(_) => "read pool shutting down",
        })
    }
}

/// How the read workers run: the one worker-mode type, from the pool to the reader's report
/// (`reader.json`) and the StorageNode's `status.workerMode` (its wire value, [`Self::as_str`]).
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerMode {
    /// One io_uring ring per worker thread.
    #[serde(rename = "io_uring")]
    IoUring,
    /// The pread thread pool (io_uring disabled by policy, or unavailable under `Preferred`).
    #[serde(rename = "pread")]
    Pread,
    /// Nothing serves, on purpose: policy `Required` and io_uring unavailable. A running
    /// [`Pool`] is never in this mode.
    #[serde(rename = "none")]
    Off,
}

impl WorkerMode {
    /// The wire value: `io_uring`, `pread` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerMode::IoUring => "io_uring",
            WorkerMode::Pread => "pread",
            WorkerMode::Off => "none",
        }
    }
}

impl std::fmt::Display for WorkerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// io_uring setup flags, each adopted only where measured to help (docs/benchmarks.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingFlags {
    /// IORING_SETUP_COOP_TASKRUN | TASKRUN_FLAG: no IPI to the worker for task work.
    pub coop_taskrun: bool,
    /// IORING_SETUP_SINGLE_ISSUER (+ DEFER_TASKRUN): completions run when the worker waits.
    pub single_issuer: bool,
    pub defer_taskrun: bool,
    /// IORING_SETUP_SQPOLL: a kernel thread polls the SQ (burns a core; off by default).
    pub sqpoll: bool,
}

impl RingFlags {
    /// Parse `coop,single,defer,sqpoll` (empty or `none` = no flags).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut f = RingFlags::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "none" => {}
                "coop" => f.coop_taskrun = true,
                "single" => f.single_issuer = true,
                "defer" => {
                    f.single_issuer = true;
                    f.defer_taskrun = true
                }
                "sqpoll" => f.sqpoll = true,
                other => {
                    return Err(format!(
                        "unknown ring flag '{other}': use coop, single, defer, sqpoll or none"
                    ))
                }
            }
        }
        Ok(f)
    }
}

/// Pool sizing and policy.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Worker threads (one ring each in io_uring mode).
    pub workers: u32,
    /// Reads in flight per ring at most (ring size).
    pub max_events: u32,
    pub policy: Policy,
    /// Bounded job queue per worker (io_uring) or for the pool (pread).
    pub queue_depth: usize,
    pub ring_flags: RingFlags,
    /// Try the page cache (preadv2 RWF_NOWAIT) before queueing a buffered read.
    pub cache_fast_path: bool,
    /// Fault injection for tests: after this many reads reached the rings, one worker turns
    /// its ring fd into /dev/null so `io_uring_enter` really fails (see `uring.rs`).
    pub break_ring_after: Option<u64>,
}

impl PoolConfig {
    pub fn new(workers: u32, max_events: u32, policy: Policy) -> Self {
        PoolConfig {
            workers,
            max_events,
            policy,
            queue_depth: (max_events as usize * 4).max(64),
            ring_flags: RingFlags::default(),
            cache_fast_path: true,
            break_ring_after: None,
        }
    }
}

enum Inner {
    Uring(uring::UringPool),
    Pread(pread::PreadPool),
}

/// The worker pool: io_uring or pread, chosen at start from the policy and what the kernel allows.
pub struct Pool {
    inner: Inner,
    reason: String,
    cache_fast_path: bool,
}

impl Pool {
    /// Start the pool. io_uring is tried by setting up the rings themselves: under `Preferred` a
    /// failure (ENOSYS, EPERM, ...) falls back to pread with the errno as the reason; under
    /// `Required` it is an error naming the errno; `Disabled` runs pread.
    pub fn start(cfg: &PoolConfig) -> anyhow::Result<Pool> {
        if cfg.workers == 0 {
            anyhow::bail!("--workers must be at least 1");
        }
        if cfg.max_events == 0 || cfg.max_events > 32768 {
            anyhow::bail!(
                "--max-events {} is out of range: use 1..=32768 (io_uring ring entries)",
                cfg.max_events
            );
        }
        let cache_fast_path = cfg.cache_fast_path;
        match cfg.policy {
            Policy::Disabled => Ok(Pool {
                cache_fast_path,
                inner: Inner::Pread(pread::PreadPool::start(cfg)?),
                reason: "io_uring disabled by policy (--io-uring disabled)".into(),
            }),
            Policy::Preferred | Policy::Required => match uring::UringPool::start(cfg) {
                Ok(p) => Ok(Pool {
                    cache_fast_path,
                    inner: Inner::Uring(p),
                    reason: format!(
                        "io_uring rings set up: {} x {} entries",
                        cfg.workers, cfg.max_events
                    ),
                }),
                Err(e) if cfg.policy == Policy::Required => Err(anyhow::anyhow!(
                    "io_uring is required (--io-uring required) but io_uring_setup failed with {}; \
                     allow io_uring in the seccomp profile / kernel.io_uring_disabled, or use \
                     --io-uring preferred to fall back to pread",
                    describe_errno(&e)
                )),
                Err(e) => Ok(Pool {
                    cache_fast_path,
                    inner: Inner::Pread(pread::PreadPool::start(cfg)?),
                    reason: format!(
                        "io_uring_setup failed with {}; using the pread pool",
                        describe_errno(&e)
                    ),
                }),
            },
        }
    }

    pub fn mode(&self) -> WorkerMode {
        match self.inner {
            Inner::Uring(_) => WorkerMode::IoUring,
            Inner::Pread(_) => WorkerMode::Pread,
        }
    }

    /// Why this mode runs.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Total ring entries (0 in pread mode).
    pub fn ring_entries(&self) -> u64 {
        match &self.inner {
            Inner::Uring(p) => p.ring_entries(),
            Inner::Pread(_) => 0,
        }
    }

    /// io_uring rings replaced after a fatal `io_uring_enter` error (0 in pread mode).
    pub fn ring_replacements(&self) -> u64 {
        match &self.inner {
            Inner::Uring(p) => p.ring_replacements(),
            Inner::Pread(_) => 0,
        }
    }

    /// Reads queued or in flight in the pool.
    pub fn in_flight(&self) -> u64 {
        match &self.inner {
            Inner::Uring(p) => p.in_flight(),
            Inner::Pread(p) => p.in_flight(),
        }
    }

    /// Queue the job (no fast path).
    pub fn submit(&self, job: ReadJob) -> Result<(), SubmitError> {
        match &self.inner {
            Inner::Uring(p) => p.submit(job),
            Inner::Pread(p) => p.submit(job),
        }
    }

    /// Page-cache fast path first for buffered files (completes inline on a hit), then the queue.
    pub fn read(&self, mut job: ReadJob) -> Result<(), SubmitError> {
        if self.cache_fast_path && !job.direct() && self.mode() == WorkerMode::IoUring {
            if let Some(r) = cached::try_read_cached(&mut job) {
                job.finish(r);
                return Ok(());
            }
        }
        self.submit(job)
    }

    /// Stop taking jobs, finish queued and in-flight reads, join the threads. Idempotent.
    pub fn shutdown(&self) {
        match &self.inner {
            Inner::Uring(p) => p.shutdown(),
            Inner::Pread(p) => p.shutdown(),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `EPERM (Operation not permitted)` for an OS error, else the error text.
pub fn describe_errno(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let text = io::Error::from_raw_os_error(n).to_string();
            let text = text
                .split(" (os error")
                .next()
                .unwrap_or_default()
                .to_string();
            format!("{} ({text})", errno_name(n))
        }
        None => e.to_string(),
    }
}

/// Symbolic name of an errno (one table for the whole agent, in the probe).
pub use crate::probe::errno::errno_name;
