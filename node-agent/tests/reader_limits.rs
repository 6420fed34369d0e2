//! The `ringmaster-agent reader` process applies a change of `readService.limits` from a new
//! config.json without being restarted: the read service it runs is replaced in place. A
//! range the old limit allows is refused (400) once `maxRangeBytes` is lowered, one within
//! the new limit is still served; limits that break the CRD's rules (a spec the API server
//! did not check) leave the reader not serving, with a report naming the field.
//!
//! The test plays the agent: it writes config.json into the handoff dir as the agent would.

#[path = "../../ring/tests/io_support/mod.rs"]
mod io_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use io_support::{http_get, pattern, TempDir};
use ringmaster_agent::handoff::{self, Handoff, Policy, ReaderConfig, ReaderReport};
use ringmaster_api::ReadServiceLimits;

const AGENT: &str = env!("CARGO_BIN_EXE_ringmaster-agent");

/// Kills the reader on drop so a failing assertion leaves no process behind.
struct Reader(Child);

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(generation: i64, data: &Path, limits: ReadServiceLimits) -> ReaderConfig {
    ReaderConfig {
        generation,
        config_hash: format!("hash-{generation}"),
        max_events: 64,
        min_max_events: 16,
        workers: 2,
        policy: Policy::Preferred,
        data_dirs: vec![("d0".into(), data.to_path_buf())],
        port: 0,
        limits,
    }
}

/// The reader's report answering `generation`, once written.
fn wait_report(state: &Path, generation: i64, reader: &mut Reader) -> ReaderReport {
    let dir = Handoff::open(state).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(code) = reader.0.try_wait().unwrap() {
            panic!("the reader exited ({code}) before answering generation {generation}");
        }
        let report = dir
            .reader_dir(false)
            .unwrap()
            .and_then(|d| handoff::read_json::<ReaderReport>(&d, handoff::READER_FILE).ok())
            .flatten();
        match report {
            Some(r) if r.generation == generation => return r,
            last => assert!(
                Instant::now() < deadline,
                "no report for generation {generation} after 30 s; last: {last:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn range(addr: SocketAddr, first: u64, last: u64) -> (u16, Vec<u8>) {
    let r = http_get(
        addr,
        "/v1/files/d0/blob",
        &[("Range", &format!("bytes={first}-{last}"))],
    )
    .unwrap();
    (r.status, r.body)
}

#[test]
fn a_lowered_max_range_reaches_the_running_reader() {
    let dir = TempDir::new("reader-limits");
    let state = dir.path().join("state");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bytes = pattern(256 << 10, 7);
    std::fs::write(data.join("blob"), &bytes).unwrap();
    let handoff_dirs = Handoff::open(&state).unwrap();
    let agent_dir = handoff_dirs.agent_dir(true).unwrap().unwrap();
    let write =
        |c: &ReaderConfig| handoff::write_json(&agent_dir, handoff::CONFIG_FILE, c).unwrap();

    write(&config(1, &data, ReadServiceLimits::default()));
    let mut reader = Reader(
        Command::new(AGENT)
            .args(["reader", "--bind", "127.0.0.1:0", "--allow-unauthenticated"])
            .args(["--poll-ms", "50", "--state-dir"])
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = reader.0.id();
    let r = wait_report(&state, 1, &mut reader);
    assert!(r.serving, "{r:?}");
    let addr: SocketAddr = r.listen_addr.unwrap().parse().unwrap();
    // 64 KiB: well within the default 16 MiB.
    let (status, body) = range(addr, 0, 65535);
    assert_eq!(status, 206, "{}", String::from_utf8_lossy(&body));
    assert!(body == bytes[..65536], "wrong bytes for 0-65535");

    // maxRangeBytes lowered to 4 KiB: the same reader restarts its service with it.
    let lowered = ReadServiceLimits {
        max_range_bytes: 4096,
        ..Default::default()
    };
    write(&config(2, &data, lowered));
    let r = wait_report(&state, 2, &mut reader);
    assert!(r.serving && r.error.is_none(), "{r:?}");
    assert_eq!(reader.0.id(), pid);
    assert!(reader.0.try_wait().unwrap().is_none(), "the reader exited");
    let addr: SocketAddr = r.listen_addr.unwrap().parse().unwrap();
    let (status, body) = range(addr, 0, 65535);
    assert_eq!(
        status,
        400,
        "a 64 KiB range under maxRangeBytes 4096 ({} bytes back)",
        body.len()
    );
    let (status, body) = range(addr, 4096, 8191);
    assert_eq!(status, 206, "{}", String::from_utf8_lossy(&body));
    assert!(body == bytes[4096..8192], "wrong bytes for 4096-8191");

    // Limits the CRD would refuse: not served, and the report names the field.
    let broken = ReadServiceLimits {
        max_range_bytes: 1 << 20,
        max_response_bytes: 1 << 20,
        ..Default::default()
    };
    write(&config(3, &data, broken));
    let r = wait_report(&state, 3, &mut reader);
    assert!(!r.serving, "{r:?}");
    let error = r.error.unwrap_or_default();
    assert!(
        error.contains("spec.readService.limits.maxResponseBytes (1048576)")
            && error.contains("spec.readService.limits.maxRangeBytes"),
        "{error}"
    );
    assert_eq!(reader.0.id(), pid);
}
