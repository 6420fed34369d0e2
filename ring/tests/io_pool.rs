//! The worker pools against the real kernel: data equality (buffered and O_DIRECT, across EOF),
//! concurrent readers, short reads resubmitted, per-request errors, deleted files, draining.

mod io_support;

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use io_support::{pattern, Rng, TempDir};
use ringmaster_ring::io::Policy;
use ringmaster_ring::io::{
    AlignedBuf, Pool, PoolConfig, ReadJob, ReadOutcome, SubmitError, WorkerMode,
};

const SIZE: usize = (1 << 20) + 777; // not block-aligned: reads cross a ragged EOF

/// An io_uring pool (policy Required: it must start on the CI kernel); with `break_after`,
/// one worker's ring breaks for real once that many reads reached the rings.
fn uring_pool(workers: u32, max_events: u32, break_after: Option<u64>) -> Pool {
    let mut cfg = PoolConfig::new(workers, max_events, Policy::Required);
    cfg.break_ring_after = break_after;
    let pool =
        Pool::start(&cfg).expect("io_uring pool (policy required) must start on the CI kernel");
    assert_eq!(pool.mode(), WorkerMode::IoUring);
    pool
}

fn pools() -> Vec<Pool> {
    let uring = uring_pool(2, 16, None);
    let pread = Pool::start(&PoolConfig::new(3, 16, Policy::Disabled)).unwrap();
    assert_eq!(pread.mode(), WorkerMode::Pread);
    vec![uring, pread]
}

/// A read of `len` bytes at `off` into a fresh buffer; `done` gets its outcome.
fn read_job(
    file: &Arc<File>,
    off: u64,
    len: usize,
    direct: bool,
    done: impl FnOnce(ReadOutcome) + Send + 'static,
) -> ReadJob {
    ReadJob::new(
        file.clone(),
        off,
        len,
        AlignedBuf::new(len),
        direct,
        Box::new(done),
    )
}

fn data_file(dir: &TempDir, name: &str, len: usize, seed: u64) -> (std::path::PathBuf, Vec<u8>) {
    let p = dir.path().join(name);
    let data = pattern(len, seed);
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

fn open_direct(p: &std::path::Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(p)
        .unwrap_or_else(|e| {
            panic!(
                "O_DIRECT open of {} failed ({e}): the test dir must be on a filesystem with O_DIRECT \
                 (set RINGMASTER_TEST_DIR)",
                p.display()
            )
        })
}

/// Submit `reqs` (offset, len) through `submit`, wait for all, return outcomes in order.
fn read_many(
    pool: &Pool,
    file: &Arc<File>,
    reqs: &[(u64, usize)],
    direct: bool,
    fast_path: bool,
) -> Vec<ReadOutcome> {
    let (tx, rx) = mpsc::channel::<(usize, ReadOutcome)>();
    for (i, &(off, len)) in reqs.iter().enumerate() {
        let tx = tx.clone();
        let job = read_job(file, off, len, direct, move |o| tx.send((i, o)).unwrap());
        // Back-pressure: a full queue hands the job back; wait for room and retry.
        let mut job = job;
        loop {
            let r = if fast_path {
                pool.read(job)
            } else {
                pool.submit(job)
            };
            match r {
                Ok(()) => break,
                Err(SubmitError::Full(j)) => {
                    job = j;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => panic!("job {i} refused: {e:?}"),
            }
        }
    }
    drop(tx);
    let mut out: Vec<Option<ReadOutcome>> = (0..reqs.len()).map(|_| None).collect();
    for _ in 0..reqs.len() {
        let (i, o) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a read did not complete within 30 s");
        assert!(out[i].is_none(), "job {i} completed twice");
        out[i] = Some(o);
    }
    out.into_iter().map(Option::unwrap).collect()
}

fn check(data: &[u8], reqs: &[(u64, usize)], outs: &[ReadOutcome], what: &str) {
    for (&(off, len), o) in reqs.iter().zip(outs) {
        let start = (off as usize).min(data.len());
        let end = (off as usize + len).min(data.len());
        let n = *o
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("{what}: read {off}+{len} failed: {e}"));
        assert_eq!(n, end - start, "{what}: bytes read at {off}+{len}");
        assert_eq!(o.buf.len(), n);
        assert!(
            o.buf.as_slice() == &data[start..end],
            "{what}: data mismatch at {off}+{len}"
        );
    }
}

#[test]
fn buffered_random_reads_equal_the_file_including_across_eof() {
    let dir = TempDir::new("io-buffered");
    let (p, data) = data_file(&dir, "f", SIZE, 7);
    let file = Arc::new(File::open(&p).unwrap());
    let mut rng = Rng(0x1234_5678);
    let mut reqs: Vec<(u64, usize)> = (0..400)
        .map(|_| (rng.below(SIZE as u64), 1 + rng.below(70_000) as usize))
        .collect();
    reqs.push((SIZE as u64 - 10, 4096)); // crosses EOF
    reqs.push((SIZE as u64, 100)); // at EOF
    reqs.push((SIZE as u64 + 5000, 100)); // past EOF
    reqs.push((0, SIZE + 4096)); // whole file and beyond
    for pool in pools() {
        for fast in [false, true] {
            let outs = read_many(&pool, &file, &reqs, false, fast);
            check(
                &data,
                &reqs,
                &outs,
                &format!("{:?} fast_path={fast}", pool.mode()),
            );
        }
    }
}

#[test]
fn direct_random_reads_equal_the_file_including_across_eof() {
    let dir = TempDir::new("io-direct");
    let (p, data) = data_file(&dir, "f", SIZE, 11);
    let file = Arc::new(open_direct(&p));
    let blocks = SIZE.div_ceil(4096) as u64;
    let mut rng = Rng(0x9abc_def1);
    let mut reqs: Vec<(u64, usize)> = (0..300)
        .map(|_| {
            (
                rng.below(blocks) * 4096,
                (1 + rng.below(16) as usize) * 4096,
            )
        })
        .collect();
    reqs.push(((blocks - 1) * 4096, 8192)); // last, partial block: ragged EOF
    reqs.push((blocks * 4096, 4096)); // past EOF
    for pool in pools() {
        let outs = read_many(&pool, &file, &reqs, true, true);
        check(&data, &reqs, &outs, &format!("{:?} O_DIRECT", pool.mode()));
    }
}

#[test]
fn many_concurrent_readers_get_their_own_bytes() {
    let dir = TempDir::new("io-concurrent");
    let files: Vec<_> = (0..4)
        .map(|i| data_file(&dir, &format!("f{i}"), 300_000 + i * 1000, 100 + i as u64))
        .collect();
    for pool in pools() {
        let pool = Arc::new(pool);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (pool, files) = (pool.clone(), &files);
                s.spawn(move || {
                    let (p, data) = &files[t as usize % files.len()];
                    let file = Arc::new(File::open(p).unwrap());
                    let mut rng = Rng(t * 7919 + 1);
                    let reqs: Vec<(u64, usize)> = (0..150)
                        .map(|_| {
                            (
                                rng.below(data.len() as u64 + 100),
                                1 + rng.below(20_000) as usize,
                            )
                        })
                        .collect();
                    let outs = read_many(&pool, &file, &reqs, false, t % 2 == 0);
                    check(data, &reqs, &outs, &format!("{:?} reader {t}", pool.mode()));
                });
            }
        });
    }
}

/// A pipe holding `first`, its writer kept open, and a `len`-byte read of it submitted to
/// `pool`: the read waits in the kernel until `len` bytes or EOF arrive.
fn pipe_read(pool: &Pool, len: usize, first: &[u8]) -> (File, mpsc::Receiver<ReadOutcome>) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (rd, mut wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    wr.write_all(first).unwrap();
    let (tx, rx) = mpsc::channel();
    let job = read_job(&Arc::new(rd), 0, len, false, move |o| tx.send(o).unwrap());
    assert!(pool.submit(job).is_ok());
    (wr, rx)
}

#[test]
fn short_reads_from_a_pipe_are_resubmitted_until_full() {
    // A pipe returns what has arrived: the first read completes short (1000 of 8192 bytes) and
    // the ring worker must read again for the rest, which arrives 200 ms later.
    let pool = uring_pool(1, 8, None);
    let data = pattern(8192, 3);
    let (mut wr, rx) = pipe_read(&pool, 8192, &data[..1000]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        rx.try_recv().is_err(),
        "the read completed with a short result instead of being resubmitted"
    );
    wr.write_all(&data[1000..]).unwrap();
    let o = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("read never completed");
    assert_eq!(*o.result.as_ref().unwrap(), 8192);
    assert!(o.buf.as_slice() == &data[..]);

    // A writer closing early is EOF: the read ends with what arrived.
    let (wr, rx) = pipe_read(&pool, 8192, &data[..300]);
    std::thread::sleep(Duration::from_millis(100));
    drop(wr);
    let o = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("read never completed");
    assert_eq!(*o.result.as_ref().unwrap(), 300);
    assert!(o.buf.as_slice() == &data[..300]);
}

#[test]
fn a_bad_request_fails_alone() {
    let dir = TempDir::new("io-bad");
    let (p, data) = data_file(&dir, "f", 64 * 1024, 5);
    let direct = Arc::new(open_direct(&p));
    let write_only = Arc::new(std::fs::OpenOptions::new().write(true).open(&p).unwrap());
    for pool in pools() {
        let (tx, rx) = mpsc::channel::<(&str, ReadOutcome)>();
        let submit = |tag: &'static str, f: &Arc<File>, off: u64, len: usize, d: bool| {
            let tx = tx.clone();
            let job = read_job(f, off, len, d, move |o| tx.send((tag, o)).unwrap());
            assert!(pool.submit(job).is_ok());
        };
        submit("good1", &direct, 0, 8192, true);
        submit("misaligned", &direct, 100, 4096, true); // O_DIRECT at offset 100: EINVAL
        submit("good2", &direct, 8192, 4096, true);
        submit("write-only", &write_only, 0, 4096, false); // read on an O_WRONLY fd: EBADF
        submit("good3", &direct, 16384, 4096, true);
        drop(tx);
        let mut seen = 0;
        for (tag, o) in rx.iter() {
            seen += 1;
            match tag {
                "misaligned" => assert_eq!(
                    o.result.unwrap_err().raw_os_error(),
                    Some(libc::EINVAL),
                    "{:?}",
                    pool.mode()
                ),
                "write-only" => assert_eq!(
                    o.result.unwrap_err().raw_os_error(),
                    Some(libc::EBADF),
                    "{:?}",
                    pool.mode()
                ),
                _ => {
                    let n = o.result.unwrap_or_else(|e| {
                        panic!(
                            "{tag} failed with {e} beside a bad request ({:?})",
                            pool.mode()
                        )
                    });
                    let off = o.offset as usize;
                    assert!(o.buf.as_slice() == &data[off..off + n], "{tag}");
                }
            }
        }
        assert_eq!(seen, 5);
    }
}

#[test]
fn pool_survives_a_deleted_file() {
    let dir = TempDir::new("io-deleted");
    let (p, data) = data_file(&dir, "gone", 200_000, 9);
    let (p2, data2) = data_file(&dir, "stays", 50_000, 10);
    for pool in pools() {
        let f = Arc::new(File::open(&p).unwrap());
        let reqs: Vec<(u64, usize)> = (0..50).map(|i| (i * 4000, 4000)).collect();
        let (tx, rx) = mpsc::channel();
        for &(off, len) in &reqs {
            let tx = tx.clone();
            let job = read_job(&f, off, len, false, move |o| tx.send(o).unwrap());
            assert!(pool.submit(job).is_ok());
        }
        std::fs::remove_file(&p).unwrap(); // unlinked while reads are queued and in flight
        drop(tx);
        let mut completed = 0;
        for o in rx.iter() {
            let n = o
                .result
                .expect("reads of an unlinked but open file succeed");
            let off = o.offset as usize;
            assert_eq!(n, 4000, "{:?}: read at {off} came back short", pool.mode());
            assert!(o.buf.as_slice() == &data[off..off + n]);
            completed += 1;
        }
        assert_eq!(
            completed,
            reqs.len(),
            "{:?}: reads of the deleted file never completed",
            pool.mode()
        );
        // The pool goes on serving other files.
        let f2 = Arc::new(File::open(&p2).unwrap());
        let reqs2 = [(0u64, 50_000usize), (49_000, 5000)];
        let outs = read_many(&pool, &f2, &reqs2, false, true);
        check(&data2, &reqs2, &outs, "after delete");
        std::fs::write(&p, &data).unwrap();
    }
}

#[test]
fn shutdown_finishes_every_queued_read() {
    let dir = TempDir::new("io-drain");
    let (p, data) = data_file(&dir, "f", 1 << 20, 12);
    for pool in pools() {
        let mode = pool.mode();
        let f = Arc::new(open_direct(&p));
        let (tx, rx) = mpsc::channel();
        let mut queued = 0;
        for i in 0..200u64 {
            let tx = tx.clone();
            let job = read_job(&f, (i % 256) * 4096, 4096, true, move |o| {
                tx.send(o).unwrap()
            });
            if pool.submit(job).is_ok() {
                queued += 1;
            }
        }
        assert!(queued >= 64, "{mode:?}: only {queued} of 200 jobs queued");
        pool.shutdown();
        drop(tx);
        let outs: Vec<ReadOutcome> = rx.iter().collect();
        assert_eq!(
            outs.len(),
            queued,
            "{mode:?}: every queued read completes before shutdown returns"
        );
        for o in outs {
            let n = o.result.unwrap();
            let off = o.offset as usize;
            assert!(o.buf.as_slice() == &data[off..off + n]);
        }
        // After shutdown the pool refuses work and hands the job back.
        let job = read_job(&f, 0, 4096, true, |_| {});
        assert!(matches!(
            pool.submit(job),
            Err(ringmaster_ring::io::SubmitError::ShutDown(_))
        ));
    }
}

#[test]
fn bad_pool_config_is_refused_with_the_flag_named() {
    let e = Pool::start(&PoolConfig::new(0, 16, Policy::Preferred))
        .err()
        .unwrap();
    assert!(e.to_string().contains("--workers"), "{e}");
    let e = Pool::start(&PoolConfig::new(1, 0, Policy::Preferred))
        .err()
        .unwrap();
    assert!(e.to_string().contains("--max-events"), "{e}");
}

/// Each completion submits the next read from the worker thread (the closed loop bench and a
/// streaming reader use): the local-queue path of both pools, then a clean shutdown.
fn chain(pool: Arc<Pool>, file: Arc<File>, data: Arc<Vec<u8>>, left: u32, done: mpsc::Sender<u32>) {
    let off = (left as u64 * 7919) % (data.len() as u64 - 4096);
    let p = pool.clone();
    let job = read_job(&file, off, 4096, false, move |o: ReadOutcome| {
        let n = o.result.expect("chained read");
        let ok = o.buf.as_slice() == &data[off as usize..off as usize + n] && n == 4096;
        if !ok || left == 0 {
            done.send(if ok { 0 } else { left + 1 }).unwrap();
            return;
        }
        chain(p, o.file, data, left - 1, done);
    });
    assert!(pool.read(job).is_ok());
}

#[test]
fn completions_that_submit_again_keep_running_on_both_pools() {
    let dir = TempDir::new("io-chain");
    let (p, data) = data_file(&dir, "f", 1 << 20, 21);
    let data = Arc::new(data);
    for pool in pools() {
        let pool = Arc::new(pool);
        let file = Arc::new(File::open(&p).unwrap());
        let (tx, rx) = mpsc::channel();
        for _ in 0..8 {
            chain(pool.clone(), file.clone(), data.clone(), 500, tx.clone());
        }
        for _ in 0..8 {
            let r = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("chain stalled");
            assert_eq!(
                r,
                0,
                "{:?}: chained read {} returned wrong bytes",
                pool.mode(),
                r - 1
            );
        }
        pool.shutdown();
    }
}

#[test]
fn a_broken_ring_is_replaced_and_only_the_read_it_held_fails() {
    // Fault injected for real: once the ring has taken its 2nd read, the worker's ring fd
    // becomes /dev/null, so the kernel fails the next io_uring_enter (EOPNOTSUPP). The read
    // the old ring holds forever (a pipe with no data) fails alone, with that errno, after
    // the bounded drain; every other read completes with the right bytes on the new ring.
    let pool = uring_pool(1, 8, Some(2));
    let (_writer, stuck) = pipe_read(&pool, 4096, &[]);
    std::thread::sleep(Duration::from_millis(100));
    assert!(stuck.try_recv().is_err(), "the pipe read should be waiting");

    let dir = TempDir::new("io-broken-ring");
    let (p, data) = data_file(&dir, "f", SIZE, 21);
    let file = Arc::new(File::open(&p).unwrap());
    let mut rng = Rng(0xfeed);
    let reqs: Vec<(u64, usize)> = (0..500)
        .map(|_| (rng.below(SIZE as u64), 1 + rng.below(65_536) as usize))
        .collect();
    let outs = read_many(&pool, &file, &reqs, false, false);
    check(&data, &reqs, &outs, "reads around the ring replacement");
    assert_eq!(
        pool.ring_replacements(),
        1,
        "the broken ring was not replaced"
    );

    let o = stuck
        .recv_timeout(Duration::from_secs(10))
        .expect("the read held by the broken ring never failed");
    let e = o
        .result
        .expect_err("the read held by the broken ring cannot succeed");
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
    assert_eq!(pool.in_flight(), 0);

    // The new ring keeps working, including for reads the kernel must wait for.
    let (mut writer, rx) = pipe_read(&pool, 4096, &[]);
    writer.write_all(&data[..4096]).unwrap();
    let o = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(o.buf.as_slice() == &data[..4096]);
    let outs = read_many(&pool, &file, &reqs[..50], false, false);
    check(&data, &reqs[..50], &outs, "after the replacement");
    assert_eq!(pool.ring_replacements(), 1);
}

#[test]
fn direct_reads_in_flight_survive_a_broken_ring() {
    // O_DIRECT reads are in the kernel (waiting for the device) when the ring breaks: the
    // worker waits for them in the completion queue, retries what the kernel never took on
    // a new ring, and nothing fails.
    let dir = TempDir::new("io-broken-ring-direct");
    let (p, data) = data_file(&dir, "f", 4 << 20, 22);
    let file = Arc::new(open_direct(&p));
    let mut rng = Rng(0xd1ec);
    let reqs: Vec<(u64, usize)> = (0..3000)
        .map(|_| (rng.below(1024) * 4096, 4096 * (1 + rng.below(16) as usize)))
        .collect();
    let pool = uring_pool(2, 32, Some(700));
    let outs = read_many(&pool, &file, &reqs, true, false);
    check(
        &data,
        &reqs,
        &outs,
        "O_DIRECT reads around the ring replacement",
    );
    assert_eq!(pool.ring_replacements(), 1);
}
