//! Load on the read service with a fault in the middle: the real
//! `ringmaster-agent serve` binary on 127.0.0.1 over a temp data dir, CLIENTS concurrent
//! clients making REQUESTS random range reads over FILES files, and halfway through a
//! fault: a data file removed, or a worker's io_uring ring broken (the kernel fails its
//! `io_uring_enter`). Every answer must be right (206, exact bytes) unless the fault
//! affected that request, and then it must be the documented error; the server keeps
//! running and serves afterwards. Bounded in count (REQUESTS) and time (30 s read
//! timeout per request), loopback only. No timing is asserted.

#[path = "../../ring/tests/io_support/mod.rs"]
mod io_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use io_support::{http_get, listening_addr, pattern, Rng, TempDir};

const FILES: usize = 8;
const SIZE: usize = 256 * 1024 + 7;
const CLIENTS: usize = 16;
const REQUESTS: u64 = 20_000;
const REMOVED: usize = 3;

struct Server(Child, Arc<Mutex<String>>);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A kB field of /proc/<pid>/status (`VmRSS:` resident now, `VmHWM:` its peak).
fn status_kb(pid: u32, field: &str) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Server {
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn open_fds(&self) -> usize {
        open_fds(self.pid())
    }
    fn rss_kb(&self) -> u64 {
        status_kb(self.pid(), "VmRSS:")
    }
    fn peak_rss_kb(&self) -> u64 {
        status_kb(self.pid(), "VmHWM:")
    }
}

/// One random range read (up to 16 KiB) of `f0..` that must come back 206 with the right
/// bytes, as an ordinary client beside the misbehaving ones.
fn ordinary_read(addr: SocketAddr, data: &[Vec<u8>], rng: &mut Rng, what: &str) {
    let f = rng.below(FILES as u64) as usize;
    let a = rng.below(SIZE as u64) as usize;
    let b = (a + rng.below(16 * 1024) as usize).min(SIZE - 1);
    let r = http_get(
        addr,
        &format!("/v1/files/d/f{f}"),
        &[("Range", &format!("bytes={a}-{b}"))],
    )
    .expect("an ordinary client was not served");
    assert_eq!(r.status, 206, "{what}: {}", r.text());
    assert!(r.body == data[f][a..=b], "wrong bytes for f{f} {a}-{b}");
}

/// Start `ringmaster-agent serve` over `dir` (name `d`) on a free loopback port.
fn start_serve(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Server, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmaster-agent"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1",
            "--port",
            "0",
            "--allow-unauthenticated",
        ])
        .arg("--data-dir")
        .arg(format!("d={}", dir.display()))
        .args(["--io-uring", "preferred", "--max-concurrent", "1024"])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ringmaster-agent serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // Keep the server's log: echoed to our stderr and kept for assertions.
    let log = Arc::new(Mutex::new(String::new()));
    let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("serve| {l}");
            sink.lock().unwrap().push_str(&l);
            sink.lock().unwrap().push('\n');
        }
    });
    let server = Server(child, log);
    let addr = listening_addr(&line);
    eprintln!("serve: {}", line.trim());
    (server, addr)
}

/// One request and its answer.
struct Outcome {
    f: usize,
    status: u16,
    /// 206 with exactly the asked bytes.
    right: bool,
    /// Sent after the midpoint fault finished.
    sent_after_fault: bool,
    /// Answered after the midpoint fault began.
    answered_after_fault_began: bool,
    /// Start of the body, for answers that are not right.
    text: String,
}

/// CLIENTS threads make REQUESTS random range reads (up to 64 KiB) of files `f0..`;
/// the thread taking request REQUESTS/2 runs `fault` first.
fn drive_load(addr: SocketAddr, data: &[Vec<u8>], fault: &(dyn Fn() + Sync)) -> Vec<Outcome> {
    let next = AtomicU64::new(0);
    let (began, done) = (AtomicBool::new(false), AtomicBool::new(false));
    let outcomes = Mutex::new(Vec::with_capacity(REQUESTS as usize));
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (next, began, done, outcomes) = (&next, &began, &done, &outcomes);
            s.spawn(move || {
                let mut rng = Rng(7 + c as u64);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= REQUESTS {
                        return;
                    }
                    if n == REQUESTS / 2 {
                        began.store(true, Ordering::SeqCst);
                        fault();
                        done.store(true, Ordering::SeqCst);
                    }
                    let f = rng.below(FILES as u64) as usize;
                    let a = rng.below(SIZE as u64) as usize;
                    let b = (a + rng.below(64 * 1024) as usize).min(SIZE - 1);
                    let sent_after_fault = done.load(Ordering::SeqCst);
                    let r = http_get(
                        addr,
                        &format!("/v1/files/d/f{f}"),
                        &[("Range", &format!("bytes={a}-{b}"))],
                    )
                    .unwrap_or_else(|e| panic!("request {n}: {e}"));
                    let right = r.status == 206 && r.body == data[f][a..=b];
                    let text = if right {
                        String::new()
                    } else {
                        let t: String = r.text().chars().take(200).collect();
                        eprintln!("request {n}: f{f} bytes={a}-{b}: {} {t}", r.status);
                        t
                    };
                    outcomes.lock().unwrap().push(Outcome {
                        f,
                        status: r.status,
                        right,
                        sent_after_fault,
                        answered_after_fault_began: began.load(Ordering::SeqCst),
                        text,
                    });
                }
            });
        }
    });
    outcomes.into_inner().unwrap()
}

/// Write FILES files of SIZE bytes into a new temp dir.
fn data_dir(tag: &str) -> (TempDir, Vec<Vec<u8>>) {
    let dir = TempDir::new(tag);
    let data: Vec<Vec<u8>> = (0..FILES).map(|i| pattern(SIZE, 100 + i as u64)).collect();
    for (i, d) in data.iter().enumerate() {
        std::fs::write(dir.path().join(format!("f{i}")), d).unwrap();
    }
    (dir, data)
}

/// After the load: the server still runs, its fds did not grow, every file in `expect_404`
/// is 404 and every other file serves the right bytes.
fn assert_still_serving(
    server: &mut Server,
    addr: SocketAddr,
    fds_before: usize,
    data: &[Vec<u8>],
    expect_404: &[usize],
) {
    let (fds_after, rss_kb) = (server.open_fds(), server.rss_kb());
    eprintln!("serve_load: server fds {fds_before} before, {fds_after} after; VmRSS {rss_kb} kB");
    assert!(
        fds_after <= fds_before + 64,
        "file descriptors grew under load: {fds_before} -> {fds_after}"
    );
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "serve exited under load"
    );
    for (f, d) in data.iter().enumerate() {
        let r = http_get(
            addr,
            &format!("/v1/files/d/f{f}"),
            &[("Range", "bytes=0-4095")],
        )
        .unwrap();
        if expect_404.contains(&f) {
            assert_eq!(r.status, 404, "removed file: {}", r.text());
        } else {
            assert_eq!(r.status, 206, "f{f}: {}", r.text());
            assert!(r.body == d[..4096]);
        }
    }
}

#[test]
fn range_reads_under_load_survive_a_removed_file() {
    let (dir, data) = data_dir("serve-load");
    let (mut server, addr) = start_serve(dir.path(), &[], &[]);
    let fds_before = server.open_fds();
    let path = dir.path().join(format!("f{REMOVED}"));
    // The open-file cache may serve a removed file for its validity (1 s by default); the
    // fault ends, and answers must be 404, once that has passed.
    let outcomes = drive_load(addr, &data, &|| {
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
    });

    let (mut ok, mut nf, mut before, mut bad) = (0, 0, 0, 0);
    for o in &outcomes {
        let removed = o.f == REMOVED;
        // Sent after the removal: must be 404; answered after it began: 404 is right too.
        if removed && (o.sent_after_fault || o.answered_after_fault_began) && o.status == 404 {
            nf += 1;
        } else if o.right && removed && !o.sent_after_fault {
            before += 1;
        } else if o.right && !removed {
            ok += 1;
        } else {
            bad += 1;
        }
    }
    eprintln!(
        "serve_load: {REQUESTS} requests, {CLIENTS} clients: {ok} ok (other files), \
         {before} ok (removed file, before removal), {nf} 404 (removed file, after or racing removal), {bad} unexpected"
    );
    assert_eq!(bad, 0, "unexpected answers (see stderr)");
    assert_eq!(ok + nf + before, REQUESTS);
    assert!(
        nf > 0,
        "no request for the removed file came after its removal"
    );
    assert!(
        before > 0,
        "no request for the removed file came before its removal"
    );

    assert_still_serving(&mut server, addr, fds_before, &data, &[REMOVED]);
    // Put the file back: it is served again.
    std::fs::write(&path, &data[REMOVED]).unwrap();
    let r = http_get(
        addr,
        &format!("/v1/files/d/f{REMOVED}"),
        &[("Range", "bytes=10-19")],
    )
    .unwrap();
    assert_eq!((r.status, &r.body[..]), (206, &data[REMOVED][10..20]));
}

/// The value of metric `name` (a counter or gauge without labels) from /metrics.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let m = http_get(addr, "/metrics", &[]).unwrap().text();
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{m}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn range_reads_under_load_survive_a_broken_ring() {
    // Every read goes through the rings (no page-cache fast path). When the rings have
    // taken REQUESTS/2 reads, one worker's ring fd is turned into /dev/null by the test
    // hook, so the kernel fails that worker's next io_uring_enter (EOPNOTSUPP) with reads
    // in flight. Reads the kernel never took are retried on a new ring, the ones it took
    // are reaped from the old ring's memory; a read lost with the ring may fail, and then
    // only as a 500 naming the errno.
    const WORKERS: u64 = 2;
    let (dir, data) = data_dir("serve-load-ring");
    let at = (REQUESTS / 2).to_string();
    let (mut server, addr) = start_serve(
        dir.path(),
        &[
            "--no-cache-fast-path",
            "--workers",
            &WORKERS.to_string(),
            "--max-events",
            "32",
        ],
        &[
            ("RINGMASTER_FAULT_BREAK_RING_AFTER", &at),
            ("RUST_LOG", "warn"),
        ],
    );
    let fds_before = server.open_fds();
    assert_eq!(metric(addr, "ringmaster_ring_replacements_total"), 0);
    let outcomes = drive_load(addr, &data, &|| {});

    // A failed read's 500 names the errno as the OS words it.
    let errno_text = std::io::Error::from_raw_os_error(libc::EOPNOTSUPP).to_string();
    let (mut ok, mut affected, mut bad) = (0, 0, 0);
    for o in &outcomes {
        if o.right {
            ok += 1;
        } else if o.status == 500 && o.text.contains(&errno_text) {
            affected += 1;
        } else {
            bad += 1;
        }
    }
    let replaced = metric(addr, "ringmaster_ring_replacements_total");
    let log = server.1.lock().unwrap().clone();
    let line = log
        .lines()
        .find(|l| l.contains("ring replaced"))
        .unwrap_or_else(|| panic!("no 'ring replaced' in the server log:\n{log}"));
    // What the dead ring held: the reads the worker failed (`lost=` in its log line), at
    // most one ring's entries (the metric is the sum over WORKERS rings).
    let lost: u64 = strip_ansi(line)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("lost=")?.parse().ok())
        .unwrap_or_else(|| panic!("no lost=N in the log line: {line}"));
    let ring_holds = metric(addr, "ringmaster_ring_entries") / WORKERS;
    eprintln!(
        "serve_load: {REQUESTS} requests, {CLIENTS} clients, ring broken after {at} reads: \
         {ok} ok, {affected} failed with the ring's errno, {bad} unexpected; \
         rings replaced: {replaced}; the dead ring held {lost} of {ring_holds}; log: {line}"
    );
    assert_eq!(bad, 0, "unexpected answers (see stderr)");
    assert_eq!(ok + affected, REQUESTS);
    assert!(
        affected <= lost && lost <= ring_holds,
        "{affected} reads failed, but only the {lost} the dead ring held (at most {ring_holds}) may"
    );
    assert_eq!(replaced, 1, "the broken ring was not replaced exactly once");
    assert!(
        line.contains("EOPNOTSUPP"),
        "the log names the errno: {line}"
    );
    assert_still_serving(&mut server, addr, fds_before, &data, &[]);
}

/// `s` without terminal colour sequences (`ESC [ ... letter`), as the log may carry them.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Wait until the server closes `s` (EOF or reset); what it sent first, or a panic naming
/// `what` if it is still open after 30 s.
fn wait_closed_by_server(mut s: std::net::TcpStream, what: &str) -> Vec<u8> {
    use std::io::Read;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("{what}: still open after 30 s ({e})"),
        }
    }
}

#[test]
fn slow_clients_and_connection_floods_stay_bounded() {
    // SILENT clients send half a request head and stall; TRICKLE clients send a byte every
    // 300 ms (slowloris). The server holds at most 64 connections (the rest wait in the
    // listen backlog, costing it no fd) and closes any that has not sent a complete head
    // within 2 s. Meanwhile ordinary clients must all be served, the server's fds must stay
    // under the cap, and every slow connection must be closed by the server.
    const SILENT: usize = 300;
    const TRICKLE: usize = 20;
    const NORMAL: u64 = 400;
    const MAX_CONN: usize = 64;
    let (dir, data) = data_dir("serve-slow");
    let (mut server, addr) = start_serve(
        dir.path(),
        &[
            "--max-connections",
            &MAX_CONN.to_string(),
            "--header-read-timeout-secs",
            "2",
        ],
        &[],
    );
    let pid = server.pid();
    let fds_before = server.open_fds();
    let sampling = AtomicBool::new(true);
    let fds_max = AtomicU64::new(fds_before as u64);
    let started = std::time::Instant::now();
    let next = AtomicU64::new(0);
    let ok = AtomicU64::new(0);
    let (trickle_closed_after, normal_ok) = std::thread::scope(|s| {
        s.spawn(|| {
            while sampling.load(Ordering::SeqCst) {
                fds_max.fetch_max(open_fds(pid) as u64, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let trickles: Vec<_> = (0..TRICKLE)
            .map(|_| {
                s.spawn(move || {
                    use std::io::Write;
                    let mut c = std::net::TcpStream::connect(addr).unwrap();
                    let t0 = std::time::Instant::now();
                    let head = b"GET /v1/files/d/f0 HTTP/1.1\r\nHost: slow\r\nX-Padding: ";
                    for b in head.iter().chain(std::iter::repeat(&b'a')) {
                        if c.write_all(&[*b]).is_err() {
                            return t0.elapsed();
                        }
                        if t0.elapsed() > std::time::Duration::from_secs(60) {
                            panic!("a trickling client was never cut off");
                        }
                        std::thread::sleep(std::time::Duration::from_millis(300));
                    }
                    unreachable!()
                })
            })
            .collect();
        let silent: Vec<std::net::TcpStream> = (0..SILENT)
            .map(|_| {
                use std::io::Write;
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(b"GET /v1/files/d/f1 HTTP/1.1\r\nHost: slow\r\n")
                    .unwrap();
                c
            })
            .collect();
        let normals: Vec<_> = (0..8)
            .map(|c| {
                let (next, ok, data) = (&next, &ok, &data);
                s.spawn(move || {
                    let mut rng = Rng(99 + c);
                    while next.fetch_add(1, Ordering::SeqCst) < NORMAL {
                        ordinary_read(addr, data, &mut rng, "ordinary read beside slow clients");
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for (i, c) in silent.into_iter().enumerate() {
            let sent = wait_closed_by_server(c, &format!("silent client {i}"));
            assert!(
                !String::from_utf8_lossy(&sent).starts_with("HTTP/1.1 2"),
                "an incomplete request was answered with success"
            );
        }
        for n in normals {
            n.join().unwrap();
        }
        let closed: Vec<_> = trickles.into_iter().map(|t| t.join().unwrap()).collect();
        sampling.store(false, Ordering::SeqCst);
        (closed, ok.load(Ordering::SeqCst))
    });
    let fds_max = fds_max.load(Ordering::SeqCst) as usize;
    let longest = trickle_closed_after.iter().max().unwrap();
    eprintln!(
        "serve_load: {SILENT} silent + {TRICKLE} trickling clients, {NORMAL} ordinary requests \
         ({normal_ok} served right) in {:.1} s; server fds {fds_before} before, at most {fds_max} \
         during (cap {MAX_CONN} connections); trickling clients cut off after at most {:.1} s; \
         VmRSS {} kB",
        started.elapsed().as_secs_f64(),
        longest.as_secs_f64(),
        server.rss_kb()
    );
    assert_eq!(normal_ok, NORMAL);
    // Open connections ≤ the cap, plus a file or two opened by reads in progress.
    assert!(
        fds_max <= fds_before + MAX_CONN + 16,
        "server fds grew past the connection cap: {fds_before} -> {fds_max}"
    );
    assert!(
        metric(addr, "ringmaster_connections_open") <= 1,
        "connections left open"
    );
    assert_still_serving(&mut server, addr, fds_before, &data, &[]);
}

#[test]
fn clients_that_never_read_large_answers_do_not_pin_memory() {
    // STALLED clients each ask for a 16 MiB range and never read a byte of the answer (before
    // the byte budget, 1024 of them pinned ~16 GiB). The server holds response bodies within
    // --max-response-bytes (default 128 MiB, answers over 1 MiB at most half of it; the rest
    // get 503 at once), keeps a stalled answer's concurrency permit until it is written, and
    // resets a connection whose writes make no progress for --write-timeout-secs. Its peak RSS
    // must stay under PEAK_RSS_BOUND_KB while ordinary clients keep getting the right bytes.
    const STALLED: usize = 1024;
    const BIG: usize = 16 << 20;
    const NORMAL: u64 = 400;
    const WRITE_TIMEOUT_SECS: u64 = 4;
    const PEAK_RSS_BOUND_KB: u64 = 256 << 10;
    let (dir, data) = data_dir("serve-stalled");
    let big = pattern(BIG, 4711);
    std::fs::write(dir.path().join("big"), &big).unwrap();
    let (mut server, addr) = start_serve(
        dir.path(),
        &[
            "--max-connections",
            "2048",
            "--write-timeout-secs",
            &WRITE_TIMEOUT_SECS.to_string(),
        ],
        &[],
    );
    let fds_before = server.open_fds();
    let started = std::time::Instant::now();
    let stalled: Vec<std::net::TcpStream> = (0..STALLED)
        .map(|i| {
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("stalled client {i}: {e}"));
            c.write_all(
                format!(
                    "GET /v1/files/d/big HTTP/1.1\r\nHost: stalled\r\nRange: bytes=0-{}\r\n\r\n",
                    BIG - 1
                )
                .as_bytes(),
            )
            .unwrap();
            c
        })
        .collect();
    // The answers being written to clients that do not read hold their permits. (Each property
    // is measured, then all are asserted at the end, so one run shows every one that fails.)
    let mut held = 0;
    for _ in 0..100 {
        held = metric(addr, "ringmaster_reads_in_flight");
        if held > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for c in 0..8 {
            let (next, data) = (&next, &data);
            s.spawn(move || {
                let mut rng = Rng(1234 + c);
                while next.fetch_add(1, Ordering::SeqCst) < NORMAL {
                    ordinary_read(addr, data, &mut rng, "ordinary read beside stalled ones");
                }
            });
        }
    });
    let during = metric(addr, "ringmaster_reads_in_flight");
    // Past the write timeout the stalled answers are reset and give their permits back, while
    // the clients still hold their sockets and read nothing.
    let mut left = during;
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(WRITE_TIMEOUT_SECS + 10);
    while left > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        left = metric(addr, "ringmaster_reads_in_flight");
    }
    let peak = server.peak_rss_kb();
    let big_ok = http_get(addr, "/v1/files/d/big", &[("Range", "bytes=1000-1999")]).unwrap();
    eprintln!(
        "serve_load: {STALLED} clients asking 16 MiB and never reading, {NORMAL} ordinary reads \
         right; answers held while stalled: {held} (then {during}), {left} left {:.1} s after \
         the start (write timeout {WRITE_TIMEOUT_SECS} s); peak RSS {} kB (bound {} kB)",
        started.elapsed().as_secs_f64(),
        peak,
        PEAK_RSS_BOUND_KB
    );
    let mut failed = Vec::new();
    if held == 0 {
        failed.push(
            "no stalled answer held its concurrency permit (released before the body was written)"
                .to_string(),
        );
    }
    if left > 0 {
        failed.push(format!(
            "{left} stalled answers still held after the write timeout"
        ));
    }
    if peak >= PEAK_RSS_BOUND_KB {
        failed.push(format!(
            "server peak RSS {peak} kB over the {PEAK_RSS_BOUND_KB} kB bound"
        ));
    }
    assert!(failed.is_empty(), "{}", failed.join("; "));
    assert_eq!((big_ok.status, &big_ok.body[..]), (206, &big[1000..2000]));
    // The clients hang up: the server closes their connections as it reads the EOFs.
    drop(stalled);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(addr, "ringmaster_connections_open") > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_still_serving(&mut server, addr, fds_before, &data, &[]);
}
