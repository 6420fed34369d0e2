//! The HTTP read service in-process over both pools: 206 bodies and headers, 200, 416, 404, 400,
//! path traversal refused, range caps, metrics, health, graceful shutdown.

#[path = "../../ring/tests/io_support/mod.rs"]
mod io_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use io_support::{http_get, pattern, small_receive_buffer, Rng, TempDir};
use ringmaster_ring::io::Policy;
use ringmaster_serve::{self as serve, Auth, ServeConfig, ServeHandle};

const SIZE: usize = 200_000 + 13;

struct Fixture {
    _dir: TempDir,
    data: Vec<u8>,
    secret: Vec<u8>,
}

/// data/ (served) holds `blob`, `sub/blob2`, `inside` -> blob, `escape` -> ../secret,
/// `abs` -> /etc/passwd, `subdir-escape/x` -> ../../secret; `secret` sits beside data/.
fn fixture() -> (Fixture, PathBuf) {
    let dir = TempDir::new("serve");
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(data_dir.join("sub")).unwrap();
    std::fs::create_dir_all(data_dir.join("subdir-escape")).unwrap();
    let data = pattern(SIZE, 42);
    std::fs::write(data_dir.join("blob"), &data).unwrap();
    std::fs::write(data_dir.join("sub/blob2"), &data[..5000]).unwrap();
    let secret = b"top secret outside the data dir".to_vec();
    std::fs::write(dir.path().join("secret"), &secret).unwrap();
    std::os::unix::fs::symlink("blob", data_dir.join("inside")).unwrap();
    std::os::unix::fs::symlink("../secret", data_dir.join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", data_dir.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../secret", data_dir.join("subdir-escape/x")).unwrap();
    (
        Fixture {
            _dir: dir,
            data,
            secret,
        },
        data_dir,
    )
}

async fn start(data_dir: PathBuf, policy: Policy, max_range: u64) -> ServeHandle {
    let mut cfg = ServeConfig::new(
        vec![("d".into(), data_dir)],
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        Auth::Unauthenticated,
    );
    cfg.policy = policy;
    cfg.max_range_bytes = max_range;
    serve::start(cfg).await.expect("serve starts")
}

async fn get(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> io_support::HttpResponse {
    let (t, e): (String, Vec<(String, String)>) = (
        target.to_string(),
        extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    tokio::task::spawn_blocking(move || {
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        http_get(addr, &t, &e).unwrap_or_else(|err| panic!("GET {t}: {err}"))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_return_the_right_bytes_and_headers_on_both_pools() {
    let (fx, data_dir) = fixture();
    for (policy, mode) in [(Policy::Required, "io_uring"), (Policy::Disabled, "pread")] {
        let h = start(data_dir.clone(), policy, 1 << 20).await;
        assert_eq!(h.worker_mode().as_str(), mode);
        let addr = h.local_addr();
        let mut rng = Rng(77);
        let mut cases: Vec<(String, usize, usize)> = (0..40)
            .map(|_| {
                let a = rng.below(SIZE as u64) as usize;
                let b = a + rng.below(70_000) as usize;
                (format!("bytes={a}-{b}"), a, b.min(SIZE - 1))
            })
            .collect();
        cases.push(("bytes=0-0".into(), 0, 0));
        cases.push((format!("bytes={}-", SIZE - 5), SIZE - 5, SIZE - 1));
        cases.push(("bytes=-100".into(), SIZE - 100, SIZE - 1));
        cases.push((format!("bytes=-{}", SIZE * 2), 0, SIZE - 1));
        for (range, a, b) in cases {
            let r = get(addr, "/v1/files/d/blob", &[("Range", &range)]).await;
            assert_eq!(r.status, 206, "{mode} {range}: {}", r.text());
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes {a}-{b}/{SIZE}").as_str()),
                "{range}"
            );
            assert_eq!(
                r.header("content-length"),
                Some((b - a + 1).to_string().as_str())
            );
            assert_eq!(r.header("accept-ranges"), Some("bytes"));
            assert_eq!(r.header("x-ringmaster-worker-mode"), Some(mode));
            assert!(r.body == fx.data[a..=b], "{mode} {range}: body differs");
        }
        // Nested path, symlink inside the dir, and a small file without Range (200).
        let r = get(addr, "/v1/files/d/sub/blob2", &[("Range", "bytes=10-19")]).await;
        assert_eq!((r.status, &r.body[..]), (206, &fx.data[10..20]));
        let r = get(addr, "/v1/files/d/inside", &[("Range", "bytes=0-99")]).await;
        assert_eq!((r.status, &r.body[..]), (206, &fx.data[..100]));
        let r = get(addr, "/v1/files/d/sub/blob2", &[]).await;
        assert_eq!((r.status, &r.body[..]), (200, &fx.data[..5000]));
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_416_404_400() {
    let (_fx, data_dir) = fixture();
    let h = start(data_dir, Policy::Preferred, 1 << 20).await;
    let addr = h.local_addr();
    for range in [
        format!("bytes={SIZE}-"),
        format!("bytes={}-{}", SIZE + 10, SIZE + 20),
        "bytes=-0".into(),
    ] {
        let r = get(addr, "/v1/files/d/blob", &[("Range", &range)]).await;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{SIZE}").as_str())
        );
    }
    for target in [
        "/v1/files/d/nope",
        "/v1/files/other/blob",
        "/v1/files/d/sub",
        "/v1/nothing",
    ] {
        let r = get(addr, target, &[("Range", "bytes=0-1")]).await;
        assert_eq!(r.status, 404, "{target}: {}", r.text());
    }
    for range in [
        "bytes=5-1",
        "bytes=abc",
        "items=0-1",
        "bytes=0-1,5-6",
        "bytes=-",
    ] {
        let r = get(addr, "/v1/files/d/blob", &[("Range", range)]).await;
        assert_eq!(r.status, 400, "{range}: {}", r.text());
        assert!(!r.text().is_empty(), "a 400 says why");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_is_refused() {
    let (fx, data_dir) = fixture();
    let h = start(data_dir, Policy::Preferred, 1 << 20).await;
    let addr = h.local_addr();
    let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
    for target in [
        "/v1/files/d/../secret",
        "/v1/files/d/sub/../../secret",
        "/v1/files/d/%2e%2e/secret",
        "/v1/files/d/%2E%2E/secret",
        "/v1/files/d/%2e%2e%2fsecret",
        "/v1/files/d/sub/..%2f..%2fsecret",
        "/v1/files/d/./blob",
        "/v1/files/d//etc/passwd",
        "/v1/files/d/%2fetc%2fpasswd",
        "/v1/files/d/sub%00/blob2",
        "/v1/files/d/..%5csecret",
        "/v1/files/d/escape",
        "/v1/files/d/abs",
        "/v1/files/d/subdir-escape/x",
    ] {
        let r = get(addr, target, &[("Range", "bytes=0-100000")]).await;
        assert!(
            r.status == 400 || r.status == 404,
            "{target}: expected 400 or 404, got {} {}",
            r.status,
            r.text()
        );
        assert!(
            !r.body.windows(fx.secret.len()).any(|w| w == fx.secret),
            "{target} leaked the secret"
        );
        assert!(
            passwd.is_empty() || r.body != passwd,
            "{target} leaked /etc/passwd"
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_ranges_are_refused() {
    let (fx, data_dir) = fixture();
    let h = start(data_dir, Policy::Preferred, 4096).await;
    let addr = h.local_addr();
    let r = get(addr, "/v1/files/d/blob", &[("Range", "bytes=0-4096")]).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("--max-range-bytes"), "{}", r.text());
    let r = get(addr, "/v1/files/d/blob", &[]).await;
    assert_eq!(r.status, 400, "a file over the cap needs a Range header");
    let r = get(addr, "/v1/files/d/blob", &[("Range", "bytes=0-4095")]).await;
    assert_eq!((r.status, &r.body[..]), (206, &fx.data[..4096]));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness() {
    let (_fx, data_dir) = fixture();
    let h = start(data_dir, Policy::Required, 1 << 20).await;
    let addr = h.local_addr();
    for _ in 0..3 {
        assert_eq!(
            get(addr, "/v1/files/d/blob", &[("Range", "bytes=0-999")])
                .await
                .status,
            206
        );
    }
    assert_eq!(
        get(addr, "/v1/files/d/blob", &[("Range", "bytes=0-")])
            .await
            .status,
        206
    );
    assert_eq!(get(addr, "/v1/files/d/nope", &[]).await.status, 404);
    assert_eq!(get(addr, "/healthz", &[]).await.status, 200);
    assert_eq!(get(addr, "/readyz", &[]).await.status, 200);
    let m = get(addr, "/metrics", &[]).await.text();
    for want in [
        "ringmaster_reads_total{status=\"206\"} 4",
        "ringmaster_reads_total{status=\"404\"} 1",
        &format!("ringmaster_read_bytes_total {}", 3 * 1000 + SIZE),
        "ringmaster_read_duration_seconds_count 4",
        "ringmaster_reads_in_flight 0",
        "ringmaster_ring_entries 256",
        "ringmaster_worker_mode{mode=\"io_uring\",reason=",
        "ringmaster_worker_mode{mode=\"pread\"} 0",
    ] {
        assert!(m.contains(want), "/metrics lacks {want:?}:\n{m}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_never_truncates_a_response() {
    let (fx, data_dir) = fixture();
    let h = start(data_dir, Policy::Preferred, 1 << 20).await;
    let addr = h.local_addr();
    // Clients with a small receive window stop reading after the first bytes until the
    // shutdown has begun, so responses are still being sent when it does.
    let shutting_down = Arc::new(AtomicBool::new(false));
    let (first_byte, answering) = std::sync::mpsc::channel::<()>();
    let mut tasks = Vec::new();
    for i in 0..40usize {
        let (first_byte, shutting_down) = (first_byte.clone(), shutting_down.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let a = i * 1000;
            let range = format!("bytes={a}-{}", a + 99_999);
            (
                a,
                get_around_shutdown(addr, &range, &first_byte, &shutting_down),
            )
        }));
    }
    drop(first_byte);
    // Shut down once the server is answering at least one request.
    tokio::task::spawn_blocking(move || answering.recv())
        .await
        .unwrap()
        .expect("no request was answered before shutdown");
    let shutdown = tokio::spawn(h.shutdown());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    shutting_down.store(true, Ordering::SeqCst);
    shutdown.await.unwrap();
    let (mut served, mut not_served) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (_, Answer::NotServed(e)) => {
                eprintln!("not served (no byte of a response): {e}");
                not_served += 1;
            }
            (a, Answer::Truncated(got, e)) => {
                panic!("response at {a} cut after {got} bytes: {e}")
            }
            (a, Answer::Complete(raw)) => {
                // Begun before shutdown: the whole response arrives.
                let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                let head = String::from_utf8_lossy(&raw[..head_end]);
                assert!(head.starts_with("HTTP/1.1 206"), "at {a}: {head}");
                assert!(
                    raw[head_end + 4..] == fx.data[a..a + 100_000],
                    "response at {a} truncated or wrong ({} body bytes)",
                    raw.len() - head_end - 4
                );
                served += 1;
            }
        }
    }
    eprintln!("{served} of 40 requests were served around shutdown, {not_served} not served");
    assert!(served >= 1, "no request was served whole around shutdown");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

/// What a client got from a server that is shutting down.
enum Answer {
    /// Refused or reset before any byte of a response: never begun, may be retried.
    NotServed(std::io::Error),
    /// Part of a response, then an error: the server cut a response it had begun.
    Truncated(usize, std::io::Error),
    /// Bytes up to the server's close (possibly still short: the caller checks).
    Complete(Vec<u8>),
}

/// `GET /v1/files/d/blob` with `Range: range`, `Connection: close`; signals `first_byte`
/// when the response begins, then reads on only once `shutting_down` is set.
fn get_around_shutdown(
    addr: SocketAddr,
    range: &str,
    first_byte: &std::sync::mpsc::Sender<()>,
    shutting_down: &AtomicBool,
) -> Answer {
    use std::io::{Read, Write};
    let mut s = match std::net::TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return Answer::NotServed(e),
    };
    small_receive_buffer(&s, 4096);
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let req = format!(
        "GET /v1/files/d/blob HTTP/1.1\r\nHost: test\r\nConnection: close\r\nRange: {range}\r\n\r\n"
    );
    if let Err(e) = s.write_all(req.as_bytes()) {
        return Answer::NotServed(e);
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) if raw.is_empty() => {
                return Answer::NotServed(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before any byte",
                ))
            }
            Ok(0) => return Answer::Complete(raw),
            Ok(n) => {
                if raw.is_empty() {
                    let _ = first_byte.send(());
                    let waited = std::time::Instant::now();
                    while !shutting_down.load(Ordering::SeqCst)
                        && waited.elapsed() < std::time::Duration::from_secs(10)
                    {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                raw.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if raw.is_empty() => return Answer::NotServed(e),
            Err(e) => return Answer::Truncated(raw.len(), e),
        }
    }
}

#[tokio::test]
async fn bad_config_is_refused_with_the_field_named() {
    let cfg = ServeConfig::new(
        vec![("d".into(), "/nonexistent/dir".into())],
        "127.0.0.1:0".parse().unwrap(),
        Auth::Unauthenticated,
    );
    let e = serve::start(cfg).await.err().unwrap();
    assert!(
        format!("{e:#}").contains("--data-dir d=/nonexistent/dir"),
        "{e:#}"
    );
    let e = serve::start(ServeConfig::new(
        vec![],
        "127.0.0.1:0".parse().unwrap(),
        Auth::Unauthenticated,
    ))
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("--data-dir"), "{e}");
}

/// `bytes a-b/total` of a 206.
fn content_range(r: &io_support::HttpResponse) -> (usize, usize, usize) {
    let cr = r.header("content-range").expect("206 has Content-Range");
    let (ab, total) = cr
        .strip_prefix("bytes ")
        .and_then(|x| x.split_once('/'))
        .unwrap();
    let (a, b) = ab.split_once('-').unwrap();
    (
        a.parse().unwrap(),
        b.parse().unwrap(),
        total.parse().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_files_replaced_truncated_or_swapped_are_never_served_wrong() {
    // The open-file cache may reuse an fd for VALID; whatever happens to the file meanwhile,
    // an answer is either the old file's or the new file's bytes at the offsets it names,
    // never past the file's current end, and after VALID (plus slack for a loaded machine)
    // only the new state is served. A symlink swapped to point out of the data dir is never
    // followed, cached or not.
    const VALID: std::time::Duration = std::time::Duration::from_millis(300);
    const SLACK: std::time::Duration = std::time::Duration::from_millis(700);
    let (fx, data_dir) = fixture();
    let mut cfg = ServeConfig::new(
        vec![("d".into(), data_dir.clone())],
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        Auth::Unauthenticated,
    );
    cfg.open_file_cache_valid = VALID;
    let h = serve::start(cfg).await.expect("serve starts");
    let addr = h.local_addr();
    let f = data_dir.join("blob");
    let a = &fx.data;
    let warm = get(addr, "/v1/files/d/blob", &[("Range", "bytes=0-99")]).await;
    assert_eq!((warm.status, &warm.body[..]), (206, &a[..100]));

    // 1. Truncated in place (same inode, the cache holds its fd and its old size).
    const T: usize = 10_000;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(T as u64)
        .unwrap();
    let r = get(addr, "/v1/files/d/blob", &[("Range", "bytes=20000-20099")]).await;
    assert_eq!(r.status, 416, "range past the new end: {}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{T}").as_str())
    );
    let r = get(addr, "/v1/files/d/blob", &[("Range", "bytes=9900-10099")]).await;
    assert_eq!(r.status, 206, "range across the new end: {}", r.text());
    assert_eq!(
        content_range(&r),
        (9900, T - 1, T),
        "clamped to the new end"
    );
    assert!(r.body == a[9900..T]);
    let r = get(addr, "/v1/files/d/blob", &[("Range", "bytes=-100")]).await;
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(
        content_range(&r),
        (T - 100, T - 1, T),
        "suffix of the new size"
    );
    assert!(r.body == a[T - 100..T]);

    // 2. Replaced by rename (a new inode with other bytes and another size), while 4
    //    clients read across it.
    let b = pattern(30_000 + 3, 4242);
    let tmp = data_dir.join(".blob.new");
    std::fs::write(&tmp, &b).unwrap();
    let swapped_at = std::time::Instant::now();
    let (old, new) = (a[..T].to_vec(), b.clone());
    let readers: Vec<_> = (0..4u64)
        .map(|c| {
            let (old, new) = (old.clone(), new.clone());
            tokio::task::spawn_blocking(move || {
                let mut rng = Rng(5 + c);
                let (mut saw_old, mut saw_new) = (0, 0);
                let t0 = std::time::Instant::now();
                while t0.elapsed() < VALID * 3 {
                    let x = rng.below(12_000) as usize;
                    let y = x + rng.below(4096) as usize;
                    let r = http_get(
                        addr,
                        "/v1/files/d/blob",
                        &[("Range", &format!("bytes={x}-{y}"))],
                    )
                    .unwrap();
                    match r.status {
                        206 => {
                            let (p, q, total) = content_range(&r);
                            let file = if total == old.len() { &old } else { &new };
                            assert!(total == old.len() || total == new.len(), "total {total}");
                            assert_eq!((p, q), (x, y.min(total - 1)));
                            assert!(
                                r.body == file[p..=q],
                                "bytes {p}-{q}/{total} are not that file's"
                            );
                            if total == old.len() {
                                saw_old += 1
                            } else {
                                saw_new += 1
                            }
                        }
                        416 => {
                            let cr = r.header("content-range").unwrap().to_string();
                            assert!(
                                cr == format!("bytes */{}", old.len())
                                    || cr == format!("bytes */{}", new.len()),
                                "416 with {cr}"
                            );
                            assert!(x >= old.len().min(new.len()));
                        }
                        s => panic!("{s} for bytes={x}-{y}: {}", r.text()),
                    }
                }
                (saw_old, saw_new)
            })
        })
        .collect();
    std::fs::rename(&tmp, &f).unwrap();
    let mut seen = (0, 0);
    for rd in readers {
        let (o, n) = rd.await.unwrap();
        seen = (seen.0 + o, seen.1 + n);
    }
    eprintln!(
        "replace: {} answers from the old file, {} from the new",
        seen.0, seen.1
    );
    assert!(seen.1 > 0, "the replaced file was never served");
    tokio::time::sleep((VALID + SLACK).saturating_sub(swapped_at.elapsed())).await;
    let r = get(addr, "/v1/files/d/blob", &[("Range", "bytes=0-4095")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(
        content_range(&r),
        (0, 4095, b.len()),
        "stale after {VALID:?}"
    );
    assert!(r.body == b[..4096]);

    // 3. A cached symlink swapped to leave the data dir: the cached target at most, never
    //    the outside file; after VALID, 404.
    let inside = get(addr, "/v1/files/d/inside", &[("Range", "bytes=0-9")]).await;
    assert_eq!((inside.status, &inside.body[..]), (206, &b[..10]));
    let link = data_dir.join("inside");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("../secret", &link).unwrap();
    let swapped_at = std::time::Instant::now();
    let r = get(addr, "/v1/files/d/inside", &[("Range", "bytes=0-9")]).await;
    assert!(
        r.status == 404 || (r.status == 206 && r.body == b[..10]),
        "swapped symlink: {} {:?}",
        r.status,
        r.text()
    );
    assert!(!r.body.windows(fx.secret.len()).any(|w| w == fx.secret));
    tokio::time::sleep((VALID + SLACK).saturating_sub(swapped_at.elapsed())).await;
    let r = get(addr, "/v1/files/d/inside", &[("Range", "bytes=0-9")]).await;
    assert_eq!(r.status, 404, "symlink out of the data dir: {}", r.text());

    // 4. Deleted: 404 after VALID.
    std::fs::remove_file(&f).unwrap();
    let deleted_at = std::time::Instant::now();
    tokio::time::sleep((VALID + SLACK).saturating_sub(deleted_at.elapsed())).await;
    let r = get(addr, "/v1/files/d/blob", &[("Range", "bytes=0-9")]).await;
    assert_eq!(r.status, 404, "deleted file still served after {VALID:?}");
    h.shutdown().await;
}
