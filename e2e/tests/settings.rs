//! The verified settings handed to the storage service: on nodes with each failure
//! mode, every key of `aio.toml` and its `aio.env` twin equals what the StorageNode status
//! says was verified there; the 3FS example's init script renders them into
//! storage_main.toml; and both files follow the StorageCluster when its sizing changes.
//! (agent_nodes.rs checks a few keys by substring; this checks them all, against the status.)
//!
//! Failure modes: the reader under `seccomp-exec --io-uring ENOSYS|EPERM`, and
//! `kernel.io_uring_disabled=2` (global, restored by a guard).
//!
//! Needs `KUBECONFIG`, `RINGMASTER_BIN_DIR` (ringmaster-agent, seccomp-exec), helm, root, sh, awk.

use crate::agent_support;

use std::collections::BTreeMap;
use std::path::Path;

use agent_support::*;
use ringmaster_api::StorageNode;
use ringmaster_e2e::{repo_root, wait_for};
use serde::Deserialize;
use serde_json::json;

/// `section.key -> value` (strings unquoted) of the flat TOML the agent writes.
fn parse_toml(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key = value: {line:?} in\n{text}"));
        let v = v.trim().trim_matches('"').to_string();
        assert!(
            out.insert(format!("{section}.{}", k.trim()), v).is_none(),
            "duplicate key {k} in\n{text}"
        );
    }
    out
}

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// What the files must say, from the StorageNode the agent wrote.
fn expected(sn: &StorageNode, ns: &str) -> BTreeMap<String, String> {
    let st = sn.status.as_ref().unwrap();
    let ss = st
        .service_settings
        .as_ref()
        .expect("status.serviceSettings");
    let node = sn.metadata.name.clone().unwrap();
    [
        (
            "server.aio_read_worker.num_threads",
            ss.num_threads.to_string(),
        ),
        (
            "server.aio_read_worker.max_events",
            ss.max_events.to_string(),
        ),
        (
            "server.aio_read_worker.enable_io_uring",
            ss.enable_io_uring.to_string(),
        ),
        ("ringmaster.aio_budget", ss.aio_budget.to_string()),
        (
            "ringmaster.generation",
            st.applied_generation.unwrap().to_string(),
        ),
        (
            "ringmaster.config_hash",
            st.applied_config_hash.clone().unwrap(),
        ),
        ("ringmaster.cluster", format!("{ns}/{CLUSTER}")),
        ("ringmaster.node", node),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Checks a node's files against its StorageNode and the verdict.
fn verify(
    a: &NodeAgent,
    sn: &StorageNode,
    ns: &str,
    workers: u32,
    max_events: u32,
) -> anyhow::Result<()> {
    use anyhow::ensure;
    let st = sn.status.as_ref().unwrap();
    let io = st.io_uring.as_ref().unwrap();
    let ss = st.service_settings.as_ref().unwrap();

    // The status values themselves, against the verdict.
    ensure!(
        ss.num_threads == workers,
        "num_threads {} != workers {workers}",
        ss.num_threads
    );
    ensure!(
        ss.enable_io_uring == (io.supported && st.worker_mode.as_deref() == Some("io_uring")),
        "enable_io_uring {} vs verdict {io:?} / {:?}",
        ss.enable_io_uring,
        st.worker_mode
    );
    if io.supported {
        ensure!(
            ss.max_events == io.ring_entries,
            "max_events {} is not the ring that worked {io:?}",
            ss.max_events
        );
        ensure!(io.ring_entries >= max_events, "{io:?}");
    } else {
        ensure!(
            ss.max_events == max_events,
            "max_events {} is not the asked size {max_events} (libaio)",
            ss.max_events
        );
    }
    let aio = st.aio.as_ref().unwrap();
    ensure!(
        ss.aio_budget == aio.current - aio.aio_nr,
        "budget {} vs {aio:?}",
        ss.aio_budget
    );

    // The files: every key, nothing more.
    let toml_text = a
        .settings_toml()
        .ok_or_else(|| anyhow::anyhow!("no aio.toml"))?;
    let toml = parse_toml(&toml_text);
    let want = expected(sn, ns);
    ensure!(toml == want, "aio.toml\n{toml_text}\nwant {want:?}");
    let env = parse_env(&std::fs::read_to_string(
        a.host_state_dir.path().join("aio.env"),
    )?);
    for (e, t) in [
        (
            "RINGMASTER_AIO_NUM_THREADS",
            "server.aio_read_worker.num_threads",
        ),
        (
            "RINGMASTER_AIO_MAX_EVENTS",
            "server.aio_read_worker.max_events",
        ),
        (
            "RINGMASTER_AIO_ENABLE_IO_URING",
            "server.aio_read_worker.enable_io_uring",
        ),
        ("RINGMASTER_AIO_BUDGET", "ringmaster.aio_budget"),
        ("RINGMASTER_GENERATION", "ringmaster.generation"),
        ("RINGMASTER_CONFIG_HASH", "ringmaster.config_hash"),
    ] {
        ensure!(
            env.get(e) == Some(&toml[t]),
            "aio.env {e}: {env:?} vs aio.toml {t}"
        );
    }

    // The 3FS example's init script renders them into storage_main.toml.
    let rendered = render_3fs(a.host_state_dir.path());
    let r = parse_toml(&rendered);
    for k in ["num_threads", "max_events", "enable_io_uring"] {
        let key = format!("server.aio_read_worker.{k}");
        ensure!(
            r.get(&key) == toml.get(&key),
            "rendered storage_main.toml\n{rendered}"
        );
    }
    ensure!(
        r["server.aio_read_worker.ioengine"] == "'libaio'",
        "template key lost\n{rendered}"
    );
    Ok(())
}

/// Waits until node `i`'s files and StorageNode agree as [`verify`] checks (the host's
/// aio-nr, and so the budget, can move between the agent's passes); returns the StorageNode.
async fn check_node(f: &Fleet, i: usize, workers: u32, max_events: u32) -> StorageNode {
    let a = &f.agents[i];
    wait_for(T, &format!("verified settings on {}", a.node), || async {
        let sn = f.storage_nodes().get(&a.node).await?;
        verify(a, &sn, f.ns(), workers, max_events)?;
        Ok(sn)
    })
    .await
}

/// Runs examples/3fs/storage-main.yaml's init script (from its ConfigMap) on the template
/// there, with `host_dir/aio.env` as the settings, as the init container would.
fn render_3fs(host_dir: &Path) -> String {
    let text = std::fs::read_to_string(repo_root().join("examples/3fs/storage-main.yaml")).unwrap();
    let cm = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).expect("YAML documents"))
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap in examples/3fs/storage-main.yaml");
    let dir = TempDir::new("render-3fs");
    let script = dir.path().join("render-aio-settings.sh");
    std::fs::write(
        &script,
        cm["data"]["render-aio-settings.sh"].as_str().unwrap(),
    )
    .unwrap();
    let template = dir.path().join("storage_main.toml");
    std::fs::write(&template, cm["data"]["storage_main.toml"].as_str().unwrap()).unwrap();
    let out = dir.path().join("out.toml");
    let run = std::process::Command::new("sh")
        .arg(&script)
        .arg(&template)
        .arg(&out)
        .arg(host_dir.join("aio.env"))
        .output()
        .expect("sh");
    assert!(
        run.status.success(),
        "render-aio-settings.sh failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read_to_string(out).unwrap()
}

const IO_URING_DISABLED: &str = "/proc/sys/kernel/io_uring_disabled";

/// Sets `kernel.io_uring_disabled` and puts the original back on drop.
struct IoUringDisabled(String);

impl IoUringDisabled {
    fn set(v: &str) -> Self {
        let orig = std::fs::read_to_string(IO_URING_DISABLED)
            .unwrap_or_else(|e| panic!("{IO_URING_DISABLED} (kernel >= 6.6): {e}"));
        std::fs::write(IO_URING_DISABLED, v)
            .unwrap_or_else(|e| panic!("writing {IO_URING_DISABLED}: {e}"));
        IoUringDisabled(orig)
    }
}

impl Drop for IoUringDisabled {
    fn drop(&mut self) {
        std::fs::write(IO_URING_DISABLED, self.0.trim())
            .expect("restoring kernel.io_uring_disabled");
    }
}

#[tokio::test]
async fn settings_files_match_the_verdict_and_follow_the_cluster() {
    let _guard = SysctlGuard::take();
    let mut f = Fleet::create(
        "settings",
        &[Uring::Works, Uring::Fails("ENOSYS"), Uring::Fails("EPERM")],
    )
    .await;

    let g1 = f
        .start_and_wait_applied("aio: {maxEvents: 512, workers: 8}\nsysctl: {aioMaxNr: 65536}")
        .await;
    let mut hashes = Vec::new();
    for i in 0..f.agents.len() {
        let sn = check_node(&f, i, 8, 512).await;
        hashes.push(sn.status.unwrap().applied_config_hash.unwrap());
    }
    let ss = |a: &NodeAgent| parse_toml(&a.settings_toml().unwrap());
    assert_eq!(
        ss(&f.agents[0])["server.aio_read_worker.enable_io_uring"],
        "true"
    );
    assert_eq!(
        ss(&f.agents[1])["server.aio_read_worker.enable_io_uring"],
        "false"
    );
    assert_eq!(
        ss(&f.agents[2])["server.aio_read_worker.enable_io_uring"],
        "false"
    );

    // The cluster changes: new sizing in every node's files, a new generation and hash.
    let g2 = f
        .patch_cluster(json!({"aio": {"maxEvents": 128, "workers": 4}}))
        .await
        .metadata
        .generation
        .unwrap();
    assert!(g2 > g1);
    for (i, old_hash) in hashes.iter().enumerate() {
        f.wait_applied(&f.agents[i].node, g2).await;
        let sn = check_node(&f, i, 4, 128).await;
        assert_eq!(sn.status.unwrap().applied_generation, Some(g2));
        assert_ne!(
            &ss(&f.agents[i])["ringmaster.config_hash"],
            old_hash,
            "config hash unchanged on {}",
            f.agents[i].node
        );
    }

    // Another failure mode on the supported node: io_uring disabled by sysctl for everyone.
    // Its reader restarts (as after a node reboot) and the files say libaio.
    let node = f.agents[0].node.clone();
    let restart_reader = |f: &mut Fleet| {
        let a = f.agent(&node);
        a.reader.take();
        a.start_reader();
    };
    let io_uring_in_file = |f: &Fleet| {
        parse_toml(&f.agents[0].settings_toml().unwrap_or_default())
            .get("server.aio_read_worker.enable_io_uring")
            .cloned()
    };
    {
        let _disabled = IoUringDisabled::set("2");
        restart_reader(&mut f);
        wait_for(
            T,
            &format!("{node}: enable_io_uring = false under io_uring_disabled=2"),
            || async {
                let v = io_uring_in_file(&f);
                anyhow::ensure!(v.as_deref() == Some("false"), "{v:?}");
                Ok(())
            },
        )
        .await;
        let sn = check_node(&f, 0, 4, 128).await;
        let io = sn.status.unwrap().io_uring.unwrap();
        assert!(!io.supported, "{io:?}");
    }
    // Restored: back to io_uring.
    restart_reader(&mut f);
    wait_for(
        T,
        &format!("{node}: enable_io_uring = true again"),
        || async {
            let v = io_uring_in_file(&f);
            anyhow::ensure!(v.as_deref() == Some("true"), "{v:?}");
            Ok(())
        },
    )
    .await;
    let sn = check_node(&f, 0, 4, 128).await;
    assert!(sn.status.unwrap().io_uring.unwrap().supported);
}
