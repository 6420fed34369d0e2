//! The pread pool: `workers` threads taking jobs from one bounded queue and reading with
//! `pread(2)`, resubmitting short reads like the ring does. Used when io_uring is unavailable
//! (policy `Preferred`) or disabled.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::{PoolConfig, ReadJob, Step, SubmitError};

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// Pool id of the pread worker on this thread and the jobs its completion callbacks
    /// submitted: the worker runs them next, with no queue lock and no wake-up of another thread.
    static LOCAL: RefCell<(usize, VecDeque<ReadJob>)> = const { RefCell::new((0, VecDeque::new())) };
}

struct Shared {
    id: usize,
    queue: Mutex<VecDeque<ReadJob>>,
    ready: Condvar,
    cap: usize,
    closing: AtomicBool,
    /// Threads waiting on `ready` (notify only when someone sleeps).
    sleepers: AtomicUsize,
    in_flight: AtomicU64,
}

pub struct PreadPool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl PreadPool {
    pub fn start(cfg: &PoolConfig) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::new(VecDeque::with_capacity(cfg.queue_depth)),
            ready: Condvar::new(),
            cap: cfg.queue_depth.max(1) * cfg.workers as usize,
            closing: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            in_flight: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for i in 0..cfg.workers {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pread-{i}"))
                    .spawn(move || worker(&s))?,
            );
        }
        Ok(PreadPool {
            shared,
            threads: Mutex::new(threads),
        })
    }

    pub fn submit(&self, job: ReadJob) -> Result<(), SubmitError> {
        let s = &self.shared;
        if s.closing.load(Ordering::Acquire) {
            return Err(SubmitError::ShutDown(job));
        }
        // From one of our own workers (a completion callback): keep it on this thread.
        let job = match LOCAL.with_borrow_mut(|(id, local)| {
            if *id == s.id && local.len() < s.cap {
                local.push_back(job);
                None
            } else {
                Some(job)
            }
        }) {
            None => {
                s.in_flight.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Some(job) => job,
        };
        {
            let mut q = s.queue.lock().unwrap();
            if q.len() >= s.cap {
                return Err(SubmitError::Full(job));
            }
            q.push_back(job);
        }
        s.in_flight.fetch_add(1, Ordering::Relaxed);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            s.ready.notify_one();
        }
        Ok(())
    }

    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    pub fn shutdown(&self) {
        let s = &self.shared;
        {
            let _q = s.queue.lock().unwrap();
            s.closing.store(true, Ordering::Release);
        }
        s.ready.notify_all();
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(s: &Shared) {
    LOCAL.with_borrow_mut(|(id, _)| *id = s.id);
    loop {
        if let Some(mut job) = LOCAL.with_borrow_mut(|(_, local)| local.pop_front()) {
            let result = read_all(&mut job);
            s.in_flight.fetch_sub(1, Ordering::Relaxed);
            job.finish(result);
            continue;
        }
        let job = {
            let mut q = s.queue.lock().unwrap();
            loop {
                if let Some(j) = q.pop_front() {
                    break Some(j);
                }
                if s.closing.load(Ordering::Acquire) {
                    break None;
                }
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                q = s.ready.wait(q).unwrap();
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        };
        let Some(mut job) = job else {
            LOCAL.with_borrow_mut(|(id, _)| *id = 0);
            return;
        };
        let result = read_all(&mut job);
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        job.finish(result);
    }
}

/// pread until the job is done (full, EOF or its error).
fn read_all(job: &mut ReadJob) -> Result<usize, i32> {
    let fd = job.file.as_raw_fd();
    let mut step = job.progress.next_read();
    loop {
        match step {
            Step::Done(r) => return r,
            Step::Again {
                offset,
                len,
                filled,
            } => {
                // SAFETY: filled + len <= the buffer's capacity.
                let n = unsafe {
                    libc::pread(
                        fd,
                        job.buf.as_mut_ptr().add(filled).cast(),
                        len,
                        offset as libc::off_t,
                    )
                };
                let res = if n < 0 {
                    -(std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO) as i64)
                } else {
                    n as i64
                };
                step = job.progress.after_read(res);
            }
        }
    }
}
