//! `serve` under a real seccomp filter that denies io_uring (seccomp-exec): `preferred` runs on
//! the pread pool and says so (header and /metrics), `required` exits non-zero naming the errno.

#[path = "../../ring/tests/io_support/mod.rs"]
mod io_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use io_support::{http_get, listening_addr, pattern, TempDir};

const AGENT: &str = env!("CARGO_BIN_EXE_ringmaster-agent");
const SECCOMP_EXEC: &str = env!("CARGO_BIN_EXE_seccomp-exec");

/// Kills the server on drop so a failing assertion leaves no process behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_cmd(errno: &str, policy: &str, dir: &std::path::Path) -> Command {
    let mut c = Command::new(SECCOMP_EXEC);
    c.args([
        "--io-uring",
        errno,
        "--",
        AGENT,
        "serve",
        "--listen",
        "127.0.0.1",
        "--port",
        "0",
        "--allow-unauthenticated",
    ])
    .arg("--data-dir")
    .arg(format!("d={}", dir.display()))
    .args(["--io-uring", policy]);
    c
}

#[test]
fn preferred_falls_back_to_pread_and_reports_it() {
    for errno in ["EPERM", "ENOSYS"] {
        let dir = TempDir::new("seccomp-serve");
        let data = pattern(100_000, 1);
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let mut child = serve_cmd(errno, "preferred", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn seccomp-exec");
        let stdout = child.stdout.take().unwrap();
        let mut server = Server(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("listening on "),
            "unexpected first line {line:?}"
        );
        assert!(line.contains("worker_mode=pread"), "{errno}: {line}");
        assert!(
            line.contains(errno),
            "{errno}: the reason names the errno: {line}"
        );
        let addr = listening_addr(&line);

        let r = http_get(addr, "/v1/files/d/f", &[("Range", "bytes=100-4195")]).unwrap();
        assert_eq!(r.status, 206);
        assert!(r.body == data[100..4196]);
        assert_eq!(r.header("x-ringmaster-worker-mode"), Some("pread"));
        let m = http_get(addr, "/metrics", &[]).unwrap().text();
        assert!(
            m.contains("ringmaster_worker_mode{mode=\"pread\",reason=\"io_uring_setup failed with"),
            "{m}"
        );
        assert!(
            m.contains(&format!("{errno} (")),
            "{errno} missing from /metrics:\n{m}"
        );
        assert!(m.contains("ringmaster_ring_entries 0"), "{m}");

        // SIGTERM: graceful shutdown, exit 0.
        unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = server.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{errno}: exit after SIGTERM: {status}");
    }
}

#[test]
fn required_exits_non_zero_naming_the_errno() {
    for errno in ["EPERM", "ENOSYS"] {
        let dir = TempDir::new("seccomp-required");
        let out = serve_cmd(errno, "required", dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run seccomp-exec");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{errno}: serve --io-uring required must fail: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{errno}: nothing may listen: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            err.contains("io_uring is required") && err.contains(&format!("failed with {errno} (")),
            "{errno}: unclear error: {err}"
        );
    }
}

#[test]
fn without_the_filter_serve_runs_on_io_uring() {
    // The control: the same command line without the filter uses the ring.
    let dir = TempDir::new("noseccomp-serve");
    std::fs::write(dir.path().join("f"), b"hello").unwrap();
    let mut child = Command::new(AGENT)
        .args([
            "serve",
            "--listen",
            "127.0.0.1",
            "--port",
            "0",
            "--allow-unauthenticated",
            "--io-uring",
            "required",
        ])
        .arg("--data-dir")
        .arg(format!("d={}", dir.path().display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.contains("worker_mode=io_uring"), "{line}");
    let addr = listening_addr(&line);
    let r = http_get(addr, "/v1/files/d/f", &[("Range", "bytes=1-3")]).unwrap();
    assert_eq!((r.status, &r.body[..]), (206, &b"ell"[..]));
    assert_eq!(r.header("x-ringmaster-worker-mode"), Some("io_uring"));
}
