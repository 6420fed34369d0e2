//! The reader serves the network and runs unprivileged; the agent is privileged. Whatever
//! sits in the handoff dirs is treated as the reader's doing: the agent never writes
//! through a name planted there and never reads anything but a small regular file, and a
//! refusal is a condition and a log line, never a hang, a crash or a write elsewhere.
//!
//! Real control plane, a kwok node, the real `ringmaster-agent run` and `reader` processes
//! (as in `agent_nodes.rs`); the test plays the hostile reader on the real filesystem. And
//! what the handoff carries: `spec.readService.limits` reach `config.json` and the running
//! reader.
//!
//! ```text
//! eval "$(hack/cluster.sh up)"
//! cargo build -p ringmaster-agent --bins
//! RINGMASTER_BIN_DIR=$PWD/target/debug cargo test -p ringmaster-e2e --test e2e -- agent_handoff::
//! ```

use crate::agent_support;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_support::*;
use ringmaster_api::node_conditions as cond;
use serde_json::json;

/// How long one planted file may take to show up as a condition (poll 0.2 s, one pass).
const PER_CASE: Duration = Duration::from_secs(20);

/// Polls `check` until it is Ok or `timeout` passes; the last error otherwise (no panic,
/// so every case is tried and reported).
async fn poll_until<F, Fut>(timeout: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() >= timeout => return Err(format!("{e:#}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; mknod(2) touches no memory of ours.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Remove whatever is at `path` (file, symlink, FIFO, device node or directory).
fn clear(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

#[tokio::test]
async fn hostile_handoff_files_are_refused_reported_and_survived() {
    let mut f = Fleet::create("agent-hostile", &[Uring::Works]).await;
    let node = f.agents[0].node.clone();
    let ns = f.ns().to_string();
    let agent_dir = f.agents[0].agent_dir();
    let reader_dir = f.agents[0].reader_dir();

    // A host file outside the handoff that a followed symlink would overwrite.
    let host = TempDir::new("hostile-host");
    let victim = host.path().join("victim.conf");
    let victim_text = "host file: must not change\n";
    std::fs::write(&victim, victim_text).unwrap();

    // Write side: symlinks at every name the agent writes, before it starts.
    std::fs::create_dir_all(&agent_dir).unwrap();
    symlink(&victim, agent_dir.join("agent.addr")).unwrap();
    symlink(&victim, agent_dir.join("config.json")).unwrap();
    f.agents[0].start_agent(&ns);
    // The predictable temporary an older writer used (`.config.json.<pid>.tmp`), planted
    // once the pid is known and before any config is written (no cluster yet).
    let pid = f.agents[0].agent.as_ref().unwrap().pid();
    for n in [
        format!(".config.json.{pid}.tmp"),
        format!(".agent.addr.{pid}.tmp"),
    ] {
        symlink(&victim, agent_dir.join(n)).unwrap();
    }
    // Verify mode: this test never changes the host's sysctl.
    let gen = f
        .create_cluster_generation("sysctl: {mode: Verify, aioMaxNr: 0}")
        .await;
    let mut failures: Vec<String> = Vec::new();
    let addr_file = agent_dir.join("agent.addr");
    let addr = match poll_until(PER_CASE, || async {
        std::fs::read_to_string(&addr_file)?.parse::<std::net::SocketAddr>()?;
        Ok(())
    })
    .await
    {
        Ok(()) => std::fs::read_to_string(&addr_file).unwrap(),
        Err(e) => {
            failures.push(format!("agent.addr does not hold the agent's address: {e}"));
            addr_from_log(&f.agents[0].agent.as_ref().unwrap().log())
        }
    };
    let config: serde_json::Value = wait_for_config(&agent_dir, gen).await;
    for name in ["agent.addr", "config.json"] {
        let m = std::fs::symlink_metadata(agent_dir.join(name)).unwrap();
        if !m.file_type().is_file() {
            failures.push(format!("{name} is still not a regular file: {m:?}"));
        }
    }
    let victim_now = std::fs::read_to_string(&victim).unwrap();
    if victim_now != victim_text {
        failures.push(format!(
            "write side: the agent wrote through a planted symlink: {victim_now:?}"
        ));
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&agent_dir).unwrap().permissions(),
    );
    if mode & 0o777 != 0o755 {
        failures.push(format!("agent/ has mode {:o}, not 755", mode & 0o777));
    }

    // Read side. A valid-looking report claiming io_uring works, for the current config:
    // what a followed symlink would make the agent trust.
    let forged = json!({
        "generation": config["generation"], "config_hash": config["config_hash"],
        "host": {"kernel_release": "forged"}, "io_uring": {"supported": true, "ring_entries": 512},
        "worker_mode": "io_uring", "worker_mode_reason": "forged", "serving": true,
        "service_configured": true, "probed_at": "2026-01-01T00:00:00Z",
        "boot_id": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim(),
    });
    let forged_dir = host.path().join("forged");
    std::fs::create_dir_all(&forged_dir).unwrap();
    std::fs::write(forged_dir.join("reader.json"), forged.to_string()).unwrap();
    let report = reader_dir.join("reader.json");
    // Adjacent cases differ in what they expect, so each result is this case's.
    type Plant = Box<dyn Fn()>;
    let cases: Vec<(&str, Plant, String)> = vec![
        (
            "symlink to a forged report outside",
            Box::new({
                let (t, r) = (forged_dir.join("reader.json"), report.clone());
                move || symlink(&t, &r).unwrap()
            }),
            "reader.json: refused: it is a symbolic link".into(),
        ),
        (
            "huge sparse file (256 MiB)",
            Box::new({
                let r = report.clone();
                move || {
                    std::fs::File::create(&r)
                        .unwrap()
                        .set_len(256 << 20)
                        .unwrap()
                }
            }),
            "over the cap of 1048576".into(),
        ),
        (
            "reader dir replaced by a symlink",
            Box::new({
                let (t, d) = (forged_dir.clone(), reader_dir.clone());
                move || {
                    clear(&d);
                    symlink(&t, &d).unwrap()
                }
            }),
            format!("{}: refused: it is a symbolic link", reader_dir.display()),
        ),
        (
            "device node /dev/zero (what a bind mount of it looks like)",
            Box::new({
                let r = report.clone();
                move || mknod(&r, libc::S_IFCHR | 0o644, libc::makedev(1, 5))
            }),
            "reader.json: refused: it is a character device".into(),
        ),
        (
            "symlink to /dev/zero",
            Box::new({
                let r = report.clone();
                move || symlink("/dev/zero", &r).unwrap()
            }),
            "reader.json: refused: it is a symbolic link".into(),
        ),
        (
            "FIFO nobody writes",
            Box::new({
                let r = report.clone();
                move || mknod(&r, libc::S_IFIFO | 0o644, 0)
            }),
            "reader.json: refused: it is a FIFO".into(),
        ),
    ];
    // HOSTILE_CASE=<part of a name> runs only matching cases (to watch one fail alone).
    let only = std::env::var("HOSTILE_CASE").ok();
    for (what, plant, want) in &cases {
        if only.as_deref().is_some_and(|o| !what.contains(o)) {
            continue;
        }
        // Put the reader dir back as a plain dir, then plant.
        if std::fs::symlink_metadata(&reader_dir).is_ok_and(|m| !m.is_dir()) {
            clear(&reader_dir);
        }
        std::fs::create_dir_all(&reader_dir).unwrap();
        clear(&report);
        plant();
        let t0 = Instant::now();
        let result = poll_until(PER_CASE, || async {
            let st = f.node_status(&node).await?;
            let c = st
                .conditions
                .iter()
                .find(|c| c.type_ == cond::IO_URING_SUPPORTED)
                .cloned();
            anyhow::ensure!(
                c.as_ref().is_some_and(|c| c.status == "Unknown"
                    && c.reason == "ReaderReportInvalid"
                    && c.message.contains(want.as_str())),
                "IoUringSupported {c:?}"
            );
            // Still up and looping: /healthz answers 200 (a pass completed recently).
            let (code, body) = http_get(&addr, "/healthz");
            anyhow::ensure!(code == 200, "/healthz {code} {body}");
            Ok(())
        })
        .await;
        let agent = f.agents[0].agent.as_mut().unwrap();
        match result {
            Ok(()) if agent.log().contains(want.as_str()) => {
                println!(
                    "refused: {what}: condition after {:.1?}, agent log names it",
                    t0.elapsed()
                )
            }
            Ok(()) => failures.push(format!("{what}: condition set but not logged")),
            Err(e) => failures.push(format!("{what}: want {want:?}; last: {e}")),
        }
        if !agent.is_running() {
            failures.push(format!("{what}: the agent exited"));
            break;
        }
    }
    if std::fs::read_to_string(&victim).unwrap() != victim_text {
        failures.push("the host file changed".into());
    }

    // The real reader replaces whatever is left (a FIFO) and the node converges; the
    // agent is the same process throughout.
    if std::fs::symlink_metadata(&reader_dir).is_ok_and(|m| !m.is_dir()) {
        clear(&reader_dir);
    }
    f.agents[0].start_reader();
    if failures.is_empty() {
        let sn = f.wait_applied(&node, gen).await;
        let st = sn.status.unwrap();
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == cond::IO_URING_SUPPORTED)
            .unwrap();
        assert_eq!(c.status, "True", "{c:?}");
        assert_ne!(
            st.kernel.as_deref(),
            Some("forged"),
            "the forged report was trusted"
        );
        f.agents[0].agent.as_mut().unwrap().assert_running();
        assert_eq!(f.agents[0].agent.as_ref().unwrap().pid(), pid);
    }
    assert!(
        failures.is_empty(),
        "{} checks failed:\n  {}\nagent log:\n{}",
        failures.len(),
        failures.join("\n  "),
        f.agents[0].agent.as_ref().unwrap().log()
    );
}

/// The address the agent logged (`bound=...`), when agent.addr cannot be trusted.
fn addr_from_log(log: &str) -> String {
    let mut plain = String::new();
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip an ANSI colour sequence up to its final 'm'.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let at = plain.find("bound=").expect("the agent logs bound=ADDR") + "bound=".len();
    plain[at..].split_whitespace().next().unwrap().to_string()
}

/// The config the agent handed over (read as the reader would; the file type is checked
/// apart, so a write through a symlink is reported with the other failures).
async fn wait_for_config(agent_dir: &Path, gen: i64) -> serde_json::Value {
    let p = agent_dir.join("config.json");
    ringmaster_e2e::wait_for(T, "config.json of the current generation", || async {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
        anyhow::ensure!(v["generation"] == gen, "{v}");
        Ok(v)
    })
    .await
}

/// `spec.readService.limits` travel StorageCluster → agent → config.json → the running
/// reader: the server's defaults first, then a patched `maxRangeBytes` (and the open-file
/// cache turned off) in the next config, answered by the same reader process, whose
/// restarted service refuses a range over the new limit (400) and serves one within it.
#[tokio::test]
async fn storage_cluster_limits_reach_config_json_and_the_running_reader() {
    let mut f = Fleet::create("agent-limits", &[Uring::Works]).await;
    let node = f.agents[0].node.clone();
    let agent_dir = f.agents[0].agent_dir();
    // ASCII, so the harness's text reader takes the body as it is.
    let text: String = (0..64 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    std::fs::write(f.data_dir.path().join("blob.txt"), &text).unwrap();
    // Verify mode: this test never changes the host's sysctl.
    let gen = f
        .start_and_wait_applied("sysctl: {mode: Verify, aioMaxNr: 0}")
        .await;
    let config = wait_for_config(&agent_dir, gen).await;
    let limits = &config["limits"];
    for (field, want) in [
        ("maxRangeBytes", json!(16 << 20)),
        ("maxConcurrent", json!(256)),
        ("maxConnections", json!(1024)),
        ("maxResponseBytes", json!(128 << 20)),
        ("headerReadTimeoutSeconds", json!(30)),
        ("writeTimeoutSeconds", json!(30)),
    ] {
        assert_eq!(limits[field], want, "config.json limits.{field}: {config}");
    }
    assert_eq!(
        limits["openFileCache"],
        json!({"entries": 1024, "validMilliseconds": 1000})
    );
    let state_dir = f.agents[0].state_dir.path().to_path_buf();
    let addr = reader_listen_addr(&state_dir).expect("the reader serves");
    let (code, body) = http_range(&addr, "/v1/files/d0/blob.txt", "0-65535");
    assert_eq!(code, 206, "before: {body}");
    assert!(body == text, "before: the wrong bytes for 0-65535");
    let reader_pid = f.agents[0].reader.as_ref().unwrap().pid();

    let patched = f
        .patch_cluster(json!({"readService": {"limits": {
            "maxRangeBytes": 4096, "openFileCache": {"entries": 0}}}}))
        .await;
    let gen2 = patched.metadata.generation.unwrap();
    assert!(gen2 > gen);
    assert_ne!(
        patched.spec.config_hash(),
        config["config_hash"],
        "{config}"
    );
    let config = wait_for_config(&agent_dir, gen2).await;
    let limits = &config["limits"];
    assert_eq!(limits["maxRangeBytes"], 4096, "{config}");
    assert_eq!(limits["openFileCache"]["entries"], 0, "{config}");
    assert_eq!(
        limits["openFileCache"]["validMilliseconds"], 1000,
        "the server defaults what the patch left out: {config}"
    );
    assert_eq!(limits["maxResponseBytes"], 128 << 20, "{config}");
    // The node applied it: the reader answered the new generation.
    let sn = f.wait_applied(&node, gen2).await;
    let st = sn.status.unwrap();
    assert_eq!(
        st.applied_config_hash.as_deref(),
        config["config_hash"].as_str(),
        "{st:?}"
    );
    let reader = f.agents[0].reader.as_mut().unwrap();
    reader.assert_running();
    assert_eq!(
        reader.pid(),
        reader_pid,
        "the same reader process applies it"
    );
    let addr = reader_listen_addr(&state_dir).expect("the reader serves again");
    let (code, body) = http_range(&addr, "/v1/files/d0/blob.txt", "0-65535");
    assert_eq!(
        code,
        400,
        "a 64 KiB range over maxRangeBytes 4096 ({} bytes back)",
        body.len()
    );
    let (code, body) = http_range(&addr, "/v1/files/d0/blob.txt", "4096-8191");
    assert_eq!(code, 206, "{body}");
    assert!(body == text[4096..8192], "the wrong bytes for 4096-8191");
}
