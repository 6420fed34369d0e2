//! Load on the read service with a fault in the middle (issue 8): the real
//! `ringmaster-agent serve` binary on 127.0.0.1 over a temp data dir, CLIENTS concurrent
//! clients making REQUESTS random range reads over FILES files; when half are done one
//! data file is removed. Every answer must be 206 with the right bytes, except requests
//! for the removed file after its removal, which must be 404; the server keeps running
//! and serves new reads afterwards. Bounded in count (REQUESTS) and time (30 s read
//! timeout per request), loopback only. No timing is asserted.

mod io_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use io_support::{http_get, pattern, Rng, TempDir};

const FILES: usize = 8;
const SIZE: usize = 256 * 1024 + 7;
const CLIENTS: usize = 16;
const REQUESTS: u64 = 20_000;
const REMOVED: usize = 3;

struct Server(Child);

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

fn rss_kb(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    not_found_removed: AtomicU64,
    removed_ok_before: AtomicU64,
    unexpected: AtomicU64,
}

#[test]
fn range_reads_under_load_survive_a_removed_file() {
    let dir = TempDir::new("serve-load");
    let data: Vec<Vec<u8>> = (0..FILES).map(|i| pattern(SIZE, 100 + i as u64)).collect();
    for (i, d) in data.iter().enumerate() {
        std::fs::write(dir.path().join(format!("f{i}")), d).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmaster-agent"))
        .args(["serve", "--listen", "127.0.0.1", "--port", "0"])
        .arg("--data-dir")
        .arg(format!("d={}", dir.path().display()))
        .args(["--io-uring", "preferred", "--max-concurrent", "1024"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ringmaster-agent serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut server = Server(child);
    let addr: SocketAddr = line
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("serve printed {line:?}"))
        .parse()
        .unwrap();
    eprintln!("serve: {}", line.trim());

    let pid = server.0.id();
    let fds_before = open_fds(pid);
    let data = Arc::new(data);
    let next = Arc::new(AtomicU64::new(0));
    let removing = Arc::new(AtomicBool::new(false));
    let removed = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let path = dir.path().join(format!("f{REMOVED}"));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (data, next, removing, removed, counts, path) = (
                data.clone(),
                next.clone(),
                removing.clone(),
                removed.clone(),
                counts.clone(),
                path.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(7 + c as u64);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= REQUESTS {
                        return;
                    }
                    if n == REQUESTS / 2 {
                        removing.store(true, Ordering::SeqCst);
                        std::fs::remove_file(&path).unwrap();
                        removed.store(true, Ordering::SeqCst);
                    }
                    let f = rng.below(FILES as u64) as usize;
                    let a = rng.below(SIZE as u64) as usize;
                    let b = (a + rng.below(64 * 1024) as usize).min(SIZE - 1);
                    // Sent after the removal finished: must be 404.
                    let gone = f == REMOVED && removed.load(Ordering::SeqCst);
                    let r = http_get(
                        addr,
                        &format!("/v1/files/d/f{f}"),
                        &[("Range", &format!("bytes={a}-{b}"))],
                    )
                    .unwrap_or_else(|e| panic!("request {n}: {e}"));
                    // Answered after the removal began: 404 is right (it raced the removal).
                    let raced = f == REMOVED && removing.load(Ordering::SeqCst);
                    let right = r.status == 206 && r.body == data[f][a..=b];
                    if (gone || raced) && r.status == 404 {
                        counts.not_found_removed.fetch_add(1, Ordering::Relaxed);
                    } else if right && f == REMOVED && !gone {
                        counts.removed_ok_before.fetch_add(1, Ordering::Relaxed);
                    } else if right && f != REMOVED {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        eprintln!(
                            "request {n}: f{f} bytes={a}-{b} gone={gone}: {} {}",
                            r.status,
                            r.text().chars().take(200).collect::<String>()
                        );
                        counts.unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    let (ok, nf, before, bad) = (
        counts.ok.load(Ordering::Relaxed),
        counts.not_found_removed.load(Ordering::Relaxed),
        counts.removed_ok_before.load(Ordering::Relaxed),
        counts.unexpected.load(Ordering::Relaxed),
    );
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

    let (fds_after, rss_kb) = (open_fds(pid), rss_kb(pid));
    eprintln!("serve_load: server fds {fds_before} before, {fds_after} after; VmRSS {rss_kb} kB");
    assert!(
        fds_after <= fds_before + 64,
        "file descriptors grew under load: {fds_before} -> {fds_after}"
    );
    // Still alive, and new reads succeed; the removed file stays 404.
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "serve exited under load"
    );
    for f in 0..FILES {
        let r = http_get(
            addr,
            &format!("/v1/files/d/f{f}"),
            &[("Range", "bytes=0-4095")],
        )
        .unwrap();
        if f == REMOVED {
            assert_eq!(r.status, 404, "removed file: {}", r.text());
        } else {
            assert_eq!(r.status, 206, "f{f}: {}", r.text());
            assert!(r.body == data[f][..4096]);
        }
    }
    // Put the file back: it is served again.
    std::fs::write(&path, &data[REMOVED]).unwrap();
    let r = http_get(
        addr,
        &format!("/v1/files/d/f{REMOVED}"),
        &[("Range", "bytes=10-19")],
    )
    .unwrap();
    assert_eq!((r.status, &r.body[..]), (206, &data[REMOVED][10..20]));
    drop(server);
}
