//! The io_uring pool: `workers` threads, each owning one ring of `max_events` entries and a
//! bounded job queue. A worker takes as many queued jobs as it has free slots, pushes them as one
//! batch, and submits and waits in one `io_uring_enter` (min_complete 1). Short reads are pushed
//! again at offset + result; a read's error goes to that job alone; EAGAIN/EBUSY/EINTR from
//! `io_uring_enter` are retried after reaping. A sleeping worker is woken through an eventfd read
//! kept armed in its ring. On shutdown a worker finishes its queue and its ring before exiting.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use super::{AlignedBuf, PoolConfig, ReadJob, RingFlags, Step, SubmitError};

/// user_data of the eventfd read that wakes a sleeping worker.
const WAKE_TAG: u64 = u64::MAX;
/// Largest single read pushed to the ring; longer jobs continue through the short-read path.
const MAX_READ: usize = 1 << 30;

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// (pool id, worker index) of the ring worker running on this thread, so a completion
    /// callback that submits again lands in its own worker's queue without a wake-up.
    static CURRENT: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

struct Worker {
    queue: Mutex<VecDeque<ReadJob>>,
    cap: usize,
    /// The worker is about to block in io_uring_enter: a submitter must write the eventfd.
    sleeping: AtomicBool,
    eventfd: OwnedFd,
    in_flight: AtomicU64,
    /// Its ring broke and no new one could be set up: takes no more jobs.
    retired: AtomicBool,
}

impl Worker {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our own eventfd.
        unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

struct Shared {
    id: usize,
    closing: AtomicBool,
    workers: Vec<Arc<Worker>>,
    next: AtomicUsize,
    /// Rings replaced after `io_uring_enter` failed for good.
    ring_replacements: AtomicU64,
    /// Test hook: break one ring once this many reads were taken by the workers.
    break_ring_after: Option<u64>,
    taken: AtomicU64,
}

impl Shared {
    /// Whether the worker taking `n` more reads is the one to break its ring (once).
    fn fault_due(&self, n: usize) -> bool {
        let Some(at) = self.break_ring_after else {
            return false;
        };
        if n == 0 {
            return false;
        }
        let before = self.taken.fetch_add(n as u64, Ordering::Relaxed);
        before < at && at <= before + n as u64
    }
}

pub struct UringPool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    entries: u64,
}

fn build_ring(entries: u32, f: RingFlags) -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    if f.coop_taskrun {
        b.setup_coop_taskrun().setup_taskrun_flag();
    }
    if f.single_issuer {
        b.setup_single_issuer();
    }
    if f.defer_taskrun {
        b.setup_defer_taskrun();
    }
    if f.sqpoll {
        b.setup_sqpoll(1000);
    }
    b.build(entries)
}

impl UringPool {
    /// Set up one ring per worker, on the worker's own thread (SINGLE_ISSUER wants the creator
    /// to submit). Any ring failing fails the pool with that error (errno preserved).
    pub fn start(cfg: &PoolConfig) -> io::Result<Self> {
        let mut workers = Vec::new();
        for _ in 0..cfg.workers {
            // Blocking eventfd: io_uring arms a poll for it instead of returning EAGAIN.
            // SAFETY: plain syscall; the fd is owned right after.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            workers.push(Arc::new(Worker {
                queue: Mutex::new(VecDeque::with_capacity(cfg.queue_depth)),
                cap: cfg.queue_depth.max(1),
                sleeping: AtomicBool::new(false),
                // SAFETY: fd is a fresh descriptor we own.
                eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
                in_flight: AtomicU64::new(0),
                retired: AtomicBool::new(false),
            }));
        }
        let shared = Arc::new(Shared {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            closing: AtomicBool::new(false),
            workers,
            next: AtomicUsize::new(0),
            ring_replacements: AtomicU64::new(0),
            break_ring_after: cfg.break_ring_after,
            taken: AtomicU64::new(0),
        });
        if let Some(n) = cfg.break_ring_after {
            tracing::warn!(
                after = n,
                "fault injection armed: one worker ring breaks after {n} reads"
            );
        }
        let (tx, rx) = mpsc::channel::<io::Result<u32>>();
        let mut threads = Vec::new();
        for i in 0..cfg.workers as usize {
            let (s, tx, max_events, flags) =
                (shared.clone(), tx.clone(), cfg.max_events, cfg.ring_flags);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("uring-{i}"))
                    .spawn(move || match build_ring(max_events, flags) {
                        Ok(ring) => {
                            let _ = tx.send(Ok(ring.params().sq_entries()));
                            drop(tx);
                            run_worker(ring, &s, i, max_events as usize, flags);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    })?,
            );
        }
        drop(tx);
        let mut entries = 0u64;
        let mut first_err = None;
        for r in rx.iter() {
            match r {
                Ok(n) => entries += n as u64,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let pool = UringPool {
            shared,
            threads: Mutex::new(threads),
            entries,
        };
        match first_err {
            Some(e) => {
                pool.shutdown();
                Err(e)
            }
            None => Ok(pool),
        }
    }

    pub fn ring_entries(&self) -> u64 {
        self.entries
    }

    /// Rings replaced after a fatal `io_uring_enter` error since start.
    pub fn ring_replacements(&self) -> u64 {
        self.shared.ring_replacements.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u64 {
        self.shared
            .workers
            .iter()
            .map(|w| w.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    pub fn submit(&self, job: ReadJob) -> Result<(), SubmitError> {
        let s = &self.shared;
        let n = s.workers.len();
        let (pool_id, cur) = CURRENT.get();
        let local = pool_id == s.id;
        let start = if local {
            cur
        } else {
            s.next.fetch_add(1, Ordering::Relaxed) % n
        };
        for k in 0..n {
            let w = &s.workers[(start + k) % n];
            let mut q = w.queue.lock().unwrap();
            // Checked under the queue lock: a worker that saw `closing` and an empty queue exits.
            if s.closing.load(Ordering::Acquire) {
                return Err(SubmitError::ShutDown(job));
            }
            if q.len() >= w.cap || w.retired.load(Ordering::Acquire) {
                continue;
            }
            w.in_flight.fetch_add(1, Ordering::Relaxed);
            q.push_back(job);
            drop(q);
            let own_thread = local && k == 0;
            if !own_thread
                && w.sleeping.load(Ordering::SeqCst)
                && w.sleeping.swap(false, Ordering::SeqCst)
            {
                w.wake();
            }
            return Ok(());
        }
        Err(SubmitError::Full(job))
    }

    pub fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::Release);
        for w in &self.shared.workers {
            w.wake();
        }
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

/// How long a worker whose ring broke waits for reads the kernel already took before it
/// gives their buffers up for lost (leaks them rather than free memory the kernel may write).
const DRAIN_BROKEN_RING: Duration = Duration::from_secs(2);

/// One worker thread's ring and the reads it holds. Slot `s` of `slots` is a read the worker
/// owns; its index is the SQE's user_data. A slot is in exactly one place: `pending` (not
/// pushed yet), `in_sq` (pushed, not yet consumed by the kernel) or the kernel (`in_kernel`
/// counts those, plus the armed eventfd read).
struct RingWorker<'a> {
    pool: &'a Shared,
    me: &'a Worker,
    idx: usize,
    max: usize,
    flags: RingFlags,
    /// Dropped at exit unless `leak_ring` (the kernel may still own reads in it).
    ring: ManuallyDrop<IoUring>,
    leak_ring: bool,
    slots: Vec<Option<ReadJob>>,
    free: Vec<usize>,
    pending: VecDeque<usize>,
    in_sq: VecDeque<u64>,
    in_kernel: usize,
    /// Completions taken from the CQ, kept between loops for its capacity.
    reaped: Vec<(u64, i32)>,
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
}

fn run_worker(ring: IoUring, pool: &Shared, idx: usize, max: usize, flags: RingFlags) {
    CURRENT.set((pool.id, idx));
    let mut w = RingWorker {
        pool,
        me: &pool.workers[idx],
        idx,
        max,
        flags,
        ring: ManuallyDrop::new(ring),
        leak_ring: false,
        slots: (0..max).map(|_| None).collect(),
        free: (0..max).rev().collect(),
        pending: VecDeque::with_capacity(max),
        in_sq: VecDeque::with_capacity(max + 1),
        in_kernel: 0,
        reaped: Vec::with_capacity(max * 2),
        wake_buf: Box::new([0u8; 8]),
        wake_armed: false,
    };
    w.run();
    if !w.leak_ring {
        // SAFETY: dropped once, here; nothing uses the ring after `run` returned.
        unsafe { ManuallyDrop::drop(&mut w.ring) };
    }
    CURRENT.set((0, 0));
}

impl RingWorker<'_> {
    fn run(&mut self) {
        let me = self.me;
        let mut batch: Vec<ReadJob> = Vec::with_capacity(self.max);
        let mut wake_drain_sent = false;
        loop {
            let closing = self.pool.closing.load(Ordering::Acquire);
            if !self.free.is_empty() {
                let mut q = me.queue.lock().unwrap();
                let n = self.free.len().min(q.len());
                batch.extend(q.drain(..n));
                let exit_ready =
                    closing && q.is_empty() && self.free.len() == self.max && batch.is_empty();
                drop(q);
                if exit_ready {
                    if !self.wake_armed {
                        break;
                    }
                    if !wake_drain_sent {
                        // Complete our own eventfd read so no SQE points at `wake_buf` after exit.
                        me.wake();
                        wake_drain_sent = true;
                    }
                }
            }
            if self.pool.fault_due(batch.len()) {
                self.break_ring_for_test();
            }
            for job in batch.drain(..) {
                if let Step::Done(r) = job.progress.next_read() {
                    me.in_flight.fetch_sub(1, Ordering::Relaxed);
                    job.finish(r);
                    continue;
                }
                let s = self.free.pop().expect("took no more jobs than free slots");
                self.slots[s] = Some(job);
                self.pending.push_back(s);
            }
            if !self.wake_armed && !closing {
                let sqe = opcode::Read::new(
                    types::Fd(me.eventfd.as_raw_fd()),
                    self.wake_buf.as_mut_ptr(),
                    8,
                )
                .build()
                .user_data(WAKE_TAG);
                // SAFETY: wake_buf outlives the SQE (drained before the worker returns).
                self.wake_armed = unsafe { self.ring.submission().push(&sqe) }.is_ok();
                if self.wake_armed {
                    self.in_sq.push_back(WAKE_TAG);
                }
            }
            self.push_pending();

            // Wait for a completion unless there is work we can do right now.
            let mut want = 1;
            if !self.pending.is_empty() {
                want = 0; // SQ full: submit, then push the rest
            } else {
                me.sleeping.store(true, Ordering::SeqCst);
                if !self.free.is_empty() && !me.queue.lock().unwrap().is_empty() {
                    want = 0;
                }
            }
            let r = if want == 0 && self.in_sq.is_empty() {
                Ok(0)
            } else {
                self.ring.submit_and_wait(want)
            };
            me.sleeping.store(false, Ordering::SeqCst);
            self.note_consumed();
            if let Err(e) = r {
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::EINTR) => {} // reap, retry
                    _ => {
                        if !self.replace_broken_ring(&e) {
                            self.fail_all_and_retire(&e);
                            return;
                        }
                        continue;
                    }
                }
            }
            self.reap();
        }
    }

    /// Push the next read of each pending slot until the SQ is full.
    fn push_pending(&mut self) {
        let mut sq = self.ring.submission();
        while let Some(&s) = self.pending.front() {
            let job = self.slots[s].as_mut().expect("pending slot holds a job");
            let Step::Again {
                offset,
                len,
                filled,
            } = job.progress.next_read()
            else {
                unreachable!("a finished job is never pending");
            };
            // SAFETY: filled + len <= the buffer's capacity; the buffer lives in `slots` until
            // the completion is reaped.
            let ptr = unsafe { job.buf.as_mut_ptr().add(filled) };
            let sqe = opcode::Read::new(
                types::Fd(job.file.as_raw_fd()),
                ptr,
                len.min(MAX_READ) as u32,
            )
            .offset(offset)
            .build()
            .user_data(s as u64);
            // SAFETY: the SQE points at memory that stays valid until its CQE.
            if unsafe { sq.push(&sqe) }.is_err() {
                break;
            }
            self.pending.pop_front();
            self.in_sq.push_back(s as u64);
        }
        sq.sync();
    }

    /// Move the SQEs the kernel consumed (its SQ head moved) from `in_sq` to `in_kernel`.
    fn note_consumed(&mut self) {
        let unconsumed = self.ring.submission().len();
        let consumed = self.in_sq.len().saturating_sub(unconsumed);
        self.in_sq.drain(..consumed);
        self.in_kernel += consumed;
    }

    /// Handle every completion in the CQ (reads the shared memory; no syscall).
    fn reap(&mut self) {
        // Reuse one buffer: this runs once per loop, a fresh Vec would allocate each time.
        let mut done = std::mem::take(&mut self.reaped);
        done.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for (ud, res) in done.drain(..) {
            self.in_kernel = self.in_kernel.saturating_sub(1);
            if ud == WAKE_TAG {
                self.wake_armed = false;
                continue;
            }
            let s = ud as usize;
            let job = self.slots[s]
                .as_mut()
                .expect("completion for an occupied slot");
            match job.progress.after_read(res as i64) {
                Step::Again { .. } => self.pending.push_back(s),
                Step::Done(r) => {
                    let job = self.slots[s].take().expect("occupied slot");
                    self.free.push(s);
                    self.me.in_flight.fetch_sub(1, Ordering::Relaxed);
                    job.finish(r);
                }
            }
        }
        self.reaped = done;
    }

    /// `io_uring_enter` failed with an error that retrying will not fix (the ring fd is no
    /// longer a ring, the ring is dying, ...). Reads the kernel never consumed are retried on
    /// a new ring; reads it took are awaited in the CQ memory for a bounded time. A read that
    /// never completes fails alone, and its buffer is leaked (the kernel may still write to
    /// it). False when no new ring can be set up.
    fn replace_broken_ring(&mut self, err: &io::Error) -> bool {
        let errno = err.raw_os_error().unwrap_or(libc::EIO);
        // Unconsumed SQEs never reached the kernel: back to the front of `pending`, in order.
        let unconsumed: Vec<u64> = self.in_sq.drain(..).collect();
        let mut retried = 0usize;
        for &ud in unconsumed.iter().rev() {
            if ud == WAKE_TAG {
                self.wake_armed = false;
            } else {
                self.pending.push_front(ud as usize);
                retried += 1;
            }
        }
        // Our armed eventfd read completes once the eventfd is written.
        if self.wake_armed {
            self.me.wake();
        }
        let deadline = Instant::now() + DRAIN_BROKEN_RING;
        loop {
            self.reap();
            if self.in_kernel == 0 || Instant::now() >= deadline {
                break;
            }
            // A syscall: lets the kernel run the task work that posts our completions.
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut lost = 0usize;
        if self.in_kernel > 0 {
            // Still in the kernel's hands: fail those reads, keep their memory (and the old
            // ring's) forever rather than free what the kernel may yet write.
            let waiting: Vec<usize> = (0..self.max)
                .filter(|s| self.slots[*s].is_some() && !self.pending.contains(s))
                .collect();
            for s in waiting {
                let mut job = self.slots[s].take().expect("occupied slot");
                std::mem::forget(std::mem::replace(&mut job.buf, AlignedBuf::new(0)));
                self.free.push(s);
                self.me.in_flight.fetch_sub(1, Ordering::Relaxed);
                job.finish(Err(errno));
                lost += 1;
            }
            if self.wake_armed {
                Box::leak(std::mem::replace(&mut self.wake_buf, Box::new([0u8; 8])));
                self.wake_armed = false;
            }
            self.in_kernel = 0;
        }
        match build_ring(self.max as u32, self.flags) {
            Ok(ring) => {
                let old = std::mem::replace(&mut *self.ring, ring);
                if lost > 0 {
                    std::mem::forget(old);
                }
                self.pool.ring_replacements.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    worker = self.idx,
                    error = %super::describe_errno(err),
                    retried,
                    lost,
                    "io_uring_enter failed; ring replaced"
                );
                true
            }
            Err(e) => {
                tracing::error!(
                    worker = self.idx,
                    error = %super::describe_errno(err),
                    setup_error = %super::describe_errno(&e),
                    "io_uring_enter failed and no new ring could be set up; worker retired"
                );
                self.leak_ring |= lost > 0;
                false
            }
        }
    }

    /// The ring is gone for good: fail every read this worker holds or has queued with the
    /// ring's errno, and stop taking new ones (submit skips a retired worker).
    fn fail_all_and_retire(&mut self, err: &io::Error) {
        let errno = err.raw_os_error().unwrap_or(libc::EIO);
        let jobs: Vec<ReadJob> = {
            let mut q = self.me.queue.lock().unwrap();
            self.me.retired.store(true, Ordering::Release);
            q.drain(..).collect()
        };
        let held = self.pending.drain(..).filter_map(|s| self.slots[s].take());
        for job in held.collect::<Vec<_>>().into_iter().chain(jobs) {
            self.me.in_flight.fetch_sub(1, Ordering::Relaxed);
            job.finish(Err(errno));
        }
    }

    /// Test hook (`PoolConfig::break_ring_after`): turn this worker's ring fd into /dev/null,
    /// so the kernel itself fails the next `io_uring_enter` (EOPNOTSUPP), with reads in flight.
    fn break_ring_for_test(&mut self) {
        // SAFETY: plain syscalls on fds we own; dup3 keeps the fd number the ring uses.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if null >= 0 {
                libc::dup3(null, self.ring.as_raw_fd(), libc::O_CLOEXEC);
                libc::close(null);
            }
        }
        tracing::warn!(
            worker = self.idx,
            in_kernel = self.in_kernel,
            "fault injection: ring fd replaced by /dev/null"
        );
    }
}
