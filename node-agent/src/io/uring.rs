//! The io_uring pool: `workers` threads, each owning one ring of `max_events` entries and a
//! bounded job queue. A worker takes as many queued jobs as it has free slots, pushes them as one
//! batch, and submits and waits in one `io_uring_enter` (min_complete 1). Short reads are pushed
//! again at offset + result; a read's error goes to that job alone; EAGAIN/EBUSY/EINTR from
//! `io_uring_enter` are retried after reaping. A sleeping worker is woken through an eventfd read
//! kept armed in its ring. On shutdown a worker finishes its queue and its ring before exiting.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use io_uring::{opcode, types, IoUring};

use super::{PoolConfig, ReadJob, RingFlags, Step, SubmitError};

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
            }));
        }
        let shared = Arc::new(Shared {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            closing: AtomicBool::new(false),
            workers,
            next: AtomicUsize::new(0),
        });
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
                            run_worker(ring, &s, i, max_events as usize);
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
            if q.len() >= w.cap {
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

/// Push the next read of each pending slot until the SQ is full.
fn push_pending(ring: &mut IoUring, slots: &mut [Option<ReadJob>], pending: &mut VecDeque<usize>) {
    let mut sq = ring.submission();
    while let Some(&s) = pending.front() {
        let job = slots[s].as_mut().expect("pending slot holds a job");
        let Step::Again {
            offset,
            len,
            filled,
        } = job.progress.next_read()
        else {
            unreachable!("a finished job is never pending");
        };
        // SAFETY: filled + len <= the buffer's capacity; the buffer lives in `slots` until the
        // completion is reaped.
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
        pending.pop_front();
    }
    sq.sync();
}

fn run_worker(mut ring: IoUring, pool: &Shared, idx: usize, max: usize) {
    CURRENT.set((pool.id, idx));
    let me = &pool.workers[idx];
    let efd: RawFd = me.eventfd.as_raw_fd();
    let mut slots: Vec<Option<ReadJob>> = (0..max).map(|_| None).collect();
    let mut free: Vec<usize> = (0..max).rev().collect();
    let mut pending: VecDeque<usize> = VecDeque::with_capacity(max);
    let mut batch: Vec<ReadJob> = Vec::with_capacity(max);
    let mut reaped: Vec<(u64, i32)> = Vec::with_capacity(max * 2);
    let mut wake_buf = Box::new([0u8; 8]);
    let mut wake_armed = false;
    let mut wake_drain_sent = false;

    loop {
        let closing = pool.closing.load(Ordering::Acquire);
        if !free.is_empty() {
            let mut q = me.queue.lock().unwrap();
            let n = free.len().min(q.len());
            batch.extend(q.drain(..n));
            let exit_ready = closing && q.is_empty() && free.len() == max && batch.is_empty();
            drop(q);
            if exit_ready {
                if !wake_armed {
                    break;
                }
                if !wake_drain_sent {
                    // Complete our own eventfd read so no SQE points at `wake_buf` after exit.
                    me.wake();
                    wake_drain_sent = true;
                }
            }
        }
        for job in batch.drain(..) {
            if let Step::Done(r) = job.progress.next_read() {
                me.in_flight.fetch_sub(1, Ordering::Relaxed);
                job.finish(r);
                continue;
            }
            let s = free.pop().expect("took no more jobs than free slots");
            slots[s] = Some(job);
            pending.push_back(s);
        }
        if !wake_armed && !closing {
            let sqe = opcode::Read::new(types::Fd(efd), wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE_TAG);
            // SAFETY: wake_buf outlives the SQE (drained before the worker returns).
            wake_armed = unsafe { ring.submission().push(&sqe) }.is_ok();
        }
        push_pending(&mut ring, &mut slots, &mut pending);

        // Wait for a completion unless there is work we can do right now.
        let mut want = 1;
        if !pending.is_empty() {
            want = 0; // SQ full: submit, then push the rest
        } else {
            me.sleeping.store(true, Ordering::SeqCst);
            if !free.is_empty() && !me.queue.lock().unwrap().is_empty() {
                want = 0;
            }
        }
        let sq_empty = ring.submission().is_empty();
        let r = if want == 0 && sq_empty {
            Ok(0)
        } else {
            ring.submit_and_wait(want)
        };
        me.sleeping.store(false, Ordering::SeqCst);
        if let Err(e) = r {
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::EINTR) => {} // reap, retry
                _ => {
                    tracing::error!(worker = idx, error = %e, "io_uring_enter failed; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }

        reaped.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for (ud, res) in reaped.drain(..) {
            if ud == WAKE_TAG {
                wake_armed = false;
                continue;
            }
            let s = ud as usize;
            let job = slots[s].as_mut().expect("completion for an occupied slot");
            match job.progress.after_read(res as i64) {
                Step::Again { .. } => pending.push_back(s),
                Step::Done(r) => {
                    let job = slots[s].take().expect("occupied slot");
                    free.push(s);
                    me.in_flight.fetch_sub(1, Ordering::Relaxed);
                    job.finish(r);
                }
            }
        }
    }
    CURRENT.set((0, 0));
}
