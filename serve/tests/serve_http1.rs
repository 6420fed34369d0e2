//! The read port's own HTTP/1.1 layer over real sockets: pipelining, HEAD, refused bodies, a
//! head over the buffer, keep-alive rules, and the sendfile path (exact bytes, counted, and
//! never wrong bytes when the file is replaced or truncated, before or during the send).

#[path = "../../ring/tests/io_support/mod.rs"]
mod io_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use io_support::{pattern, small_receive_buffer, TempDir};
use ringmaster_serve::{self as serve, Auth, ServeConfig, ServeHandle};

/// One response as a client reads it.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/1.1 client on one connection.
struct Client {
    s: TcpStream,
    got: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client { s, got: Vec::new() }
    }

    fn send(&mut self, raw: &[u8]) {
        self.s.write_all(raw).unwrap();
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut buf = [0u8; 64 << 10];
        let n = self.s.read(&mut buf)?;
        self.got.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// The next response (`head_request`: it has no body whatever Content-Length says).
    fn response(&mut self, head_request: bool) -> Resp {
        let end = loop {
            if let Some(i) = self.got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(self.fill().unwrap() > 0, "closed before a response head");
        };
        let head = String::from_utf8(self.got[..end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        self.got.drain(..end + 4);
        let mut r = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = r.header("content-length").unwrap().parse().unwrap();
        if !head_request {
            while self.got.len() < len {
                assert!(self.fill().unwrap() > 0, "closed inside a body");
            }
            r.body = self.got.drain(..len).collect();
        }
        r
    }

    /// The server closed the connection (EOF or reset) with nothing more sent.
    fn closed(&mut self) -> bool {
        match self.fill() {
            Ok(0) => self.got.is_empty(),
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset && self.got.is_empty(),
        }
    }
}

fn get(path: &str, range: &str, close: bool) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n");
    if !range.is_empty() {
        req.push_str(&format!("Range: {range}\r\n"));
    }
    if close {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

async fn start_with(dir: &Path, tune: impl FnOnce(&mut ServeConfig)) -> ServeHandle {
    let mut cfg = ServeConfig::new(
        vec![("d".into(), dir.to_path_buf())],
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        Auth::Unauthenticated,
    );
    tune(&mut cfg);
    serve::start(cfg).await.expect("serve starts")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A sample of `/metrics`.
fn metric(addr: SocketAddr, series: &str) -> u64 {
    let mut c = Client::connect(addr);
    c.send(&get("/metrics", "", true));
    let m = String::from_utf8(c.response(false).body).unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{m}"))
}

const SENT: &str = "ringmaster_sendfile_responses_total";

fn data_dir(tag: &str) -> (TempDir, PathBuf) {
    let t = TempDir::new(tag);
    let d = t.path().join("data");
    std::fs::create_dir_all(&d).unwrap();
    (t, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_head_405_and_keep_alive_rules() {
    let (_t, dir) = data_dir("http1-pipe");
    let data = pattern(300_000, 7);
    std::fs::write(dir.join("blob"), &data).unwrap();
    let h = start_with(&dir, |_| {}).await;
    let addr = h.local_addr();
    blocking(move || {
        // Three requests in one write (a small range, a large one, a HEAD), then one more:
        // four answers in order on one connection.
        let mut c = Client::connect(addr);
        let mut burst = get("/v1/files/d/blob?x=1", "bytes=10-19", false);
        burst.extend(get("/v1/files/d/blob", "bytes=1000-200999", false));
        burst.extend(b"HEAD /v1/files/d/blob HTTP/1.1\r\nRange: bytes=5-104\r\n\r\n");
        c.send(&burst);
        let r = c.response(false);
        assert_eq!((r.status, &r.body[..]), (206, &data[10..20]));
        let r = c.response(false);
        assert_eq!(r.status, 206);
        assert!(r.body == data[1000..201_000], "second pipelined answer");
        let r = c.response(true);
        assert_eq!(r.status, 206, "HEAD");
        assert_eq!(r.header("content-length"), Some("100"));
        assert_eq!(r.header("content-range"), Some("bytes 5-104/300000"));
        assert!(r.header("x-ringmaster-worker-mode").is_some());
        // A HEAD sends no body: the next answer starts right after its head.
        c.send(&get("/v1/files/d/blob", "bytes=0-3", false));
        let r = c.response(false);
        assert_eq!((r.status, &r.body[..]), (206, &data[..4]));
        // HEAD of a missing file, and of the whole file.
        c.send(b"HEAD /v1/files/d/nope HTTP/1.1\r\n\r\nHEAD /v1/files/d/blob HTTP/1.1\r\n\r\n");
        assert_eq!(c.response(true).status, 404);
        let r = c.response(true);
        assert_eq!(
            (r.status, r.header("content-length")),
            (200, Some("300000"))
        );
        // Other methods: 405 naming the allowed ones; the connection stays usable.
        c.send(b"DELETE /v1/files/d/blob HTTP/1.1\r\n\r\n");
        let r = c.response(false);
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
        assert!(r.header("x-ringmaster-worker-mode").is_some());
        c.send(&get("/healthz", "", true));
        let r = c.response(false);
        assert_eq!((r.status, &r.body[..]), (200, &b"ok\n"[..]));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed(), "Connection: close is honoured");

        // HTTP/1.0 closes unless it asks for keep-alive.
        let mut c = Client::connect(addr);
        c.send(b"GET /healthz HTTP/1.0\r\n\r\n");
        assert_eq!(c.response(false).status, 200);
        assert!(c.closed(), "HTTP/1.0 without keep-alive closes");
        let mut c = Client::connect(addr);
        c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.response(false);
        assert_eq!(r.header("connection"), Some("keep-alive"));
        c.send(b"GET /readyz HTTP/1.0\r\n\r\n");
        assert_eq!(
            c.response(false).status,
            200,
            "kept open for HTTP/1.0 keep-alive"
        );
        assert!(c.closed());
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_oversized_heads_are_refused_and_the_connection_closed() {
    let (_t, dir) = data_dir("http1-refuse");
    std::fs::write(dir.join("blob"), pattern(1000, 1)).unwrap();
    let h = start_with(&dir, |_| {}).await;
    let addr = h.local_addr();
    blocking(move || {
        for (what, raw, status) in [
            (
                "a body",
                b"POST /v1/files/d/blob HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
                400,
            ),
            (
                "a GET with a body",
                b"GET /v1/files/d/blob HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /healthz HTTP/1.1\r\n\r\n".to_vec(),
                400,
            ),
            (
                "Transfer-Encoding",
                b"GET /v1/files/d/blob HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
                400,
            ),
            (
                "a head over 8 KiB",
                format!(
                    "GET /v1/files/d/blob HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
                    "a".repeat(9000)
                )
                .into_bytes(),
                431,
            ),
            (
                "too many fields",
                format!(
                    "GET /v1/files/d/blob HTTP/1.1\r\n{}\r\n",
                    (0..100).map(|i| format!("X-{i}: y\r\n")).collect::<String>()
                )
                .into_bytes(),
                431,
            ),
            (
                "an absolute-form target",
                b"GET http://x/v1/files/d/blob HTTP/1.1\r\n\r\n".to_vec(),
                400,
            ),
        ] {
            let mut c = Client::connect(addr);
            c.send(&raw);
            let r = c.response(false);
            assert_eq!(r.status, status, "{what}: {:?}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.header("connection"), Some("close"), "{what}");
            assert!(r.header("x-ringmaster-worker-mode").is_some(), "{what}");
            assert!(c.closed(), "{what}: the connection stays open");
        }
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_cached_ranges_go_out_with_sendfile_byte_for_byte() {
    let (_t, dir) = data_dir("http1-sendfile");
    let data = pattern((4 << 20) + 7, 99);
    std::fs::write(dir.join("big"), &data).unwrap();
    let h = start_with(&dir, |c| c.max_range_bytes = 8 << 20).await;
    let addr = h.local_addr();
    blocking(move || {
        assert_eq!(metric(addr, SENT), 0);
        let mut c = Client::connect(addr);
        // The file was just written (its pages are cached): large ranges (sendfile), a
        // small one (copied), and the whole file without Range (200).
        for (range, a, b) in [
            ("bytes=0-1048575", 0, 1 << 20),
            ("bytes=12345-3012344", 12345, 3_012_345),
            ("bytes=-100000", data.len() - 100_000, data.len()),
        ] {
            c.send(&get("/v1/files/d/big", range, false));
            let r = c.response(false);
            assert_eq!(r.status, 206, "{range}");
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes {a}-{}/{}", b - 1, data.len()).as_str())
            );
            assert!(
                r.body == data[a..b],
                "{range}: the bytes differ from the file"
            );
        }
        let large = metric(addr, SENT);
        assert_eq!(large, 3, "large cached ranges were not sent with sendfile");
        c.send(&get("/v1/files/d/big", "bytes=100-4195", false));
        let r = c.response(false);
        assert_eq!((r.status, &r.body[..]), (206, &data[100..4196]));
        assert_eq!(
            metric(addr, SENT),
            3,
            "a 4 KiB range is copied, not sent with sendfile"
        );
        c.send(&get("/v1/files/d/big", "", true));
        let r = c.response(false);
        assert_eq!(r.status, 200);
        assert!(r.body == data, "whole file");
        assert_eq!(metric(addr, SENT), 4);
    })
    .await;
    h.shutdown().await;
}

/// A file in the open-file cache that is rewritten in place, truncated, or replaced by a
/// rename: every answer holds exactly the bytes of one state of the file at the offsets its
/// Content-Range names, never bytes past the file's end, on the copy path (4 KiB ranges) and on
/// the sendfile path (256 KiB ranges).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_files_changed_under_both_paths_are_never_served_wrong() {
    const SIZE: usize = 2 << 20;
    for (what, len, sendfile) in [("copy", 4096usize, false), ("sendfile", 256 << 10, true)] {
        let (_t, dir) = data_dir("http1-change");
        let f = dir.join("blob");
        let a = pattern(SIZE, 1);
        std::fs::write(&f, &a).unwrap();
        // The cache keeps the fd (and its size) for the whole test.
        let h = start_with(&dir, |c| c.open_file_cache_valid = Duration::from_secs(60)).await;
        let addr = h.local_addr();
        let f2 = f.clone();
        blocking(move || {
            let f = f2;
            let range = |c: &mut Client, first: usize, last: usize| {
                c.send(&get(
                    "/v1/files/d/blob",
                    &format!("bytes={first}-{last}"),
                    false,
                ));
                c.response(false)
            };
            let mut c = Client::connect(addr);
            let r = range(&mut c, 0, len - 1);
            assert!(r.status == 206 && r.body == a[..len], "{what}: warm");

            // 1. Rewritten in place (same inode, same size): the new bytes.
            let b = pattern(SIZE, 2);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .write_all(&b)
                .unwrap();
            let r = range(&mut c, 1000, 1000 + len - 1);
            assert_eq!(r.status, 206, "{what}");
            assert!(r.body == b[1000..1000 + len], "{what}: rewritten in place");

            // 2. Truncated in place with the fd and the old size still cached: a range across
            //    the new end is clamped to it, one past it is 416. The new end lies inside a
            //    page the range covers, so the page cache alone still looks complete.
            let t = SIZE / 2 + 100;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .set_len(t as u64)
                .unwrap();
            let first = t + 100 - len;
            let r = range(&mut c, first, t + 99);
            assert_eq!(r.status, 206, "{what}: across the new end");
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes {first}-{}/{t}", t - 1).as_str()),
                "{what}"
            );
            assert!(r.body == b[first..t], "{what}: clamped bytes");
            let r = range(&mut c, t + 10, t + 10 + len);
            assert_eq!(r.status, 416, "{what}: past the new end");
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes */{t}").as_str())
            );

            // 3. Replaced by a rename (another inode, size and bytes): the old inode's bytes
            //    or the new file's, each whole, as Content-Range's total tells.
            let n = pattern(SIZE - 4096, 3);
            let tmp = f.with_extension("new");
            std::fs::write(&tmp, &n).unwrap();
            std::fs::rename(&tmp, &f).unwrap();
            for first in [0, 300_000, 700_000] {
                let r = range(&mut c, first, first + len - 1);
                assert_eq!(r.status, 206, "{what}");
                let total: usize = r
                    .header("content-range")
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let file = if total == t { &b[..t] } else { &n[..] };
                assert!(total == t || total == n.len(), "{what}: total {total}");
                assert!(
                    r.body == file[first..first + len],
                    "{what}: bytes of neither file"
                );
            }
            let sent = metric(addr, SENT);
            assert_eq!(sent > 0, sendfile, "{what}: sendfile used {sent} times");
        })
        .await;
        h.shutdown().await;
    }
}

/// A file truncated while sendfile is sending it: the client gets a prefix of the right bytes
/// and then a reset (or EOF), never other bytes and never a complete-looking answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_truncated_during_sendfile_resets_the_connection() {
    const SIZE: usize = 16 << 20;
    let (_t, dir) = data_dir("http1-trunc");
    let f = dir.join("big");
    let data = pattern(SIZE, 5);
    std::fs::write(&f, &data).unwrap();
    let h = start_with(&dir, |_| {}).await;
    let addr = h.local_addr();
    blocking(move || {
        let s = std::net::TcpStream::connect(addr).unwrap();
        // A small receive window: the server's sendfile blocks long before 16 MiB are out.
        small_receive_buffer(&s, 128 << 10);
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client { s, got: Vec::new() };
        c.send(&get(
            "/v1/files/d/big",
            &format!("bytes=0-{}", SIZE - 1),
            true,
        ));
        while !c.got.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(c.fill().unwrap() > 0);
        }
        std::thread::sleep(Duration::from_millis(300));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(0)
            .unwrap();
        let reset = loop {
            match c.fill() {
                Ok(0) => break false,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(e) => panic!("{e}"),
            }
        };
        let end = c.got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let body = &c.got[end + 4..];
        eprintln!(
            "truncated during sendfile: {} body bytes, then reset: {reset}",
            body.len()
        );
        assert!(body.len() < SIZE, "a complete answer from a truncated file");
        assert!(body == &data[..body.len()], "bytes other than the file's");
        assert_eq!(metric(addr, SENT), 1);
    })
    .await;
    h.shutdown().await;
}

/// A client that asks for a large range and never reads it: after the write timeout its
/// connection is reset and its permit given back, on the copy path and the sendfile path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_reset_after_the_write_timeout() {
    const SIZE: usize = 16 << 20;
    let (_t, dir) = data_dir("http1-stall");
    let data = pattern(SIZE, 9);
    std::fs::write(dir.join("big"), &data).unwrap();
    for (what, sendfile_min) in [("copy", 0u64), ("sendfile", 16 << 10)] {
        let h = start_with(&dir, |c| {
            c.write_timeout = Duration::from_secs(1);
            c.sendfile_min_bytes = sendfile_min;
        })
        .await;
        let addr = h.local_addr();
        blocking(move || {
            let mut c = Client::connect(addr);
            c.send(&get(
                "/v1/files/d/big",
                &format!("bytes=0-{}", SIZE - 1),
                false,
            ));
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(
                metric(addr, "ringmaster_reads_in_flight"),
                1,
                "{what}: the stalled answer holds its permit"
            );
            let t0 = std::time::Instant::now();
            while metric(addr, "ringmaster_reads_in_flight") > 0 {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "{what}: still held 10 s after a 1 s write timeout"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            // What the kernel had queued is dropped: the client sees a reset, not the rest.
            let mut got = 0usize;
            let reset = loop {
                let mut buf = vec![0u8; 1 << 20];
                match c.s.read(&mut buf) {
                    Ok(0) => break false,
                    Ok(n) => got += n,
                    Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
                }
            };
            assert!(reset, "{what}: closed without a reset after {got} bytes");
            assert!(got < SIZE, "{what}: the whole answer arrived");
        })
        .await;
        h.shutdown().await;
    }
}

/// Shutdown closes kept-alive connections that sit idle (or hold half a head) at once, rather
/// than waiting out the header read timeout, and then returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_keep_alive_connections_and_returns() {
    let (_t, dir) = data_dir("http1-idle");
    std::fs::write(dir.join("blob"), pattern(1000, 3)).unwrap();
    let h = start_with(&dir, |c| c.header_read_timeout = Duration::from_secs(60)).await;
    let addr = h.local_addr();
    let (idle, half) = blocking(move || {
        let mut idle = Client::connect(addr);
        idle.send(&get("/v1/files/d/blob", "bytes=0-9", false));
        assert_eq!(idle.response(false).status, 206);
        let mut half = Client::connect(addr);
        half.send(b"GET /v1/files/d/blob HTTP/1.1\r\nRange: by");
        (idle, half)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), h.shutdown())
        .await
        .expect("shutdown waited for idle connections (60 s header timeout)");
    eprintln!("shutdown took {:?}", t0.elapsed());
    blocking(move || {
        for (what, mut c) in [("idle", idle), ("half a head", half)] {
            assert!(c.closed(), "{what}: the connection was not closed");
        }
    })
    .await;
}
