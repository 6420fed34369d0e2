//! `ringmaster-agent serve` raises its soft RLIMIT_NOFILE to the hard limit at start: a
//! container runtime's soft 1024 would otherwise cut the default 1024 connections plus 1024
//! cached open files short.

#[path = "../../ring/tests/io_support/mod.rs"]
mod io_support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use io_support::TempDir;

const AGENT: &str = env!("CARGO_BIN_EXE_ringmaster-agent");
const LOW_SOFT: u64 = 256;

/// (soft, hard) "Max open files" of a process, from /proc/PID/limits.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().into(), f.next().unwrap().into())
}

#[test]
fn serve_raises_its_soft_open_file_limit_to_the_hard_one() {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .expect("a finite hard RLIMIT_NOFILE");
    assert!(hard > LOW_SOFT, "hard limit {hard} leaves nothing to raise");
    let dir = TempDir::new("serve-nofile");
    let mut cmd = Command::new(AGENT);
    cmd.args(["serve", "--listen", "127.0.0.1", "--port", "0"])
        .arg("--data-dir")
        .arg(format!("d={}", dir.path().display()))
        .arg("--allow-unauthenticated")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = rustix::process::Rlimit {
                current: Some(LOW_SOFT),
                maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
            };
            rustix::process::setrlimit(rustix::process::Resource::Nofile, lim)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let got = nofile(pid);
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening on "), "serve printed {line:?}");
    assert_eq!(
        got,
        (hard.to_string(), hard.to_string()),
        "soft limit not raised from {LOW_SOFT} to the hard {hard}"
    );
}
