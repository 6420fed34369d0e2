//! The `ringmaster-agent serve` binary's authentication: it refuses to start with neither
//! `--auth-token-file` nor `--allow-unauthenticated` (naming both), and with a token file a read
//! without the token gets 401 (counted in /metrics), a wrong one 401, the right one 206 with the
//! right bytes, and a rotated file takes effect without a restart.

#[path = "../../ring/tests/io_support/mod.rs"]
mod io_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use io_support::{http_get, listening_addr, pattern, TempDir};

const AGENT: &str = env!("CARGO_BIN_EXE_ringmaster-agent");
const TOKEN: &str = "5d41402abc4b2a76b9719d911017c592aa0f3c1e2b3d4f5a6b7c8d9e0f1a2b3c";
const ROTATED: &str = "7f3e9d2c1b0a99887766554433221100ffeeddccbbaa0099887766554433aabb";

/// Kills the server on drop so a failing assertion leaves no process behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &std::path::Path, auth: &[&str]) -> Command {
    let mut c = Command::new(AGENT);
    c.args(["serve", "--listen", "127.0.0.1", "--port", "0"])
        .arg("--data-dir")
        .arg(format!("d={}", dir.display()))
        .args(auth)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Runs `cmd` to its exit, killing it after 20 s (a server that started anyway).
fn exit_of(mut cmd: Command) -> std::process::Output {
    let child = Server(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut child = child;
    while child.0.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            panic!("serve is still running: it started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap());
    c.wait_with_output().unwrap()
}

#[test]
fn serve_without_an_auth_choice_refuses_naming_both_flags() {
    let dir = TempDir::new("serve-cli-noauth");
    let out = exit_of(serve(dir.path(), &[]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--auth-token-file") && err.contains("--allow-unauthenticated"),
        "{err}"
    );
    let out = exit_of(serve(
        dir.path(),
        &["--allow-unauthenticated", "--auth-token-file", "/dev/null"],
    ));
    assert!(!out.status.success(), "both flags accepted: {out:?}");
}

#[test]
fn serve_with_a_token_file_answers_401_without_it_and_206_with_it() {
    let dir = TempDir::new("serve-cli-auth");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let bytes = pattern(50_000, 3);
    std::fs::write(data.join("blob"), &bytes).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut child = Server(
        serve(&data, &["--auth-token-file", token_file.to_str().unwrap()])
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = listening_addr(line.trim());
    let range = ("Range", "bytes=1000-1999");
    let get = |auth: Option<&str>| {
        let h = auth.map(|t| format!("Bearer {t}"));
        let mut extra = vec![range];
        if let Some(h) = &h {
            extra.push(("Authorization", h.as_str()));
        }
        http_get(addr, "/v1/files/d/blob", &extra).unwrap()
    };

    let r = get(None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r
        .header("www-authenticate")
        .is_some_and(|c| c.starts_with("Bearer ")));
    let r = get(Some(ROTATED));
    assert_eq!(r.status, 401, "{}", r.text());
    let r = get(Some(TOKEN));
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(&r.body[..], &bytes[1000..2000]);
    assert_eq!(http_get(addr, "/healthz", &[]).unwrap().status, 200);
    let m = http_get(addr, "/metrics", &[]).unwrap().text();
    assert_eq!(
        sample(
            &m,
            r#"ringmaster_requests_unauthorized_total{reason="missing"}"#
        ),
        Some(1),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"ringmaster_requests_unauthorized_total{reason="invalid"}"#
        ),
        Some(1),
        "{m}"
    );

    // Rotated in place (a plain rewrite here; the in-process tests swap a Secret's links).
    std::fs::write(&token_file, ROTATED).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(Some(ROTATED)).status != 206 {
        assert!(
            Instant::now() < deadline,
            "the rotated token never took effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(Some(TOKEN)).status, 401, "the old token still reads");
}
