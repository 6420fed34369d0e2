//! The README's "run the main job", exactly as written: `hack/demo.sh` with its defaults (no
//! RINGMASTER_DEMO_DIR, no prebuilt binaries: the state under ~/.cache/ringmaster/demo, a cargo
//! build, the images) on a control plane of its own with this host as a real node. Checks what
//! it prints (the StorageCluster counting the real node's report, its StorageNode with the verdict
//! containerd's RuntimeDefault gives, the node labels, the release's pods running on the real
//! node, how to explore and tear down), then `hack/demo.sh down` and that it put everything back,
//! fs.aio-max-nr included. Needs root and no other real node on this host (hack/test.sh runs it
//! in its last stage).

use std::process::Command;

use ringmaster_e2e::repo_root;

fn aio_max_nr() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/aio-max-nr")
        .expect("reading fs.aio-max-nr")
        .trim()
        .parse()
        .expect("fs.aio-max-nr is a number")
}

/// Runs `hack/demo.sh down` on drop, so a failed assertion leaves no cluster or agent behind.
struct Demo {
    /// The demo's default state dir (not passed to it: only to check it is removed).
    dir: std::path::PathBuf,
}

impl Demo {
    fn run(&self, arg: &str) -> (bool, String) {
        let out = Command::new(repo_root().join("hack/demo.sh"))
            .arg(arg)
            // The README's command as a user runs it: none of the test environment's settings.
            .env_remove("RINGMASTER_DEMO_DIR")
            .env_remove("RINGMASTER_BIN_DIR")
            .env_remove("KUBECONFIG")
            .env_remove("RINGMASTER_CLUSTER_DIR")
            .env_remove("RINGMASTER_APISERVER")
            .env_remove("RINGMASTER_REAL_NODE")
            .output()
            .expect("running hack/demo.sh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.dir.exists() {
            let (ok, out) = self.run("down");
            if !ok {
                eprintln!("hack/demo.sh down failed:\n{out}");
            }
        }
    }
}

fn host_node_name() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_lowercase()
}

#[test]
fn own_real_node_demo_runs_the_release_on_this_host_and_tears_down_cleanly() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the demo makes this host a real node: run the e2e tests as root"
    );
    let home = std::env::var("HOME").expect("HOME");
    let cache = std::env::var("RINGMASTER_CACHE").unwrap_or(format!("{home}/.cache/ringmaster"));
    let demo = Demo {
        dir: std::path::PathBuf::from(cache).join("demo"),
    };
    assert!(
        !demo.dir.join("env").exists(),
        "a demo is already up in {}: this test runs the README's command with its defaults; \
         hack/demo.sh down first",
        demo.dir.display()
    );
    let node = host_node_name();
    let before = aio_max_nr();
    let (ok, out) = demo.run("up");
    eprintln!("{out}");
    assert!(ok, "hack/demo.sh failed:\n{out}");

    for step in [
        "hack/cluster.sh up --real-node",
        "helm install ringmaster charts/ringmaster",
        "add simulated nodes beside",
        "storagecluster.ringmaster.io/storage created",
        "wait for the agent pod on",
    ] {
        assert!(out.contains(step), "the demo did not {step:?}:\n{out}");
    }
    // A table row: `name` in its first or second column, at least `min` columns.
    let row = |name: &str, min: usize| {
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.len() >= min && cols.iter().take(2).any(|c| *c == name))
            .unwrap_or_else(|| panic!("no table row for {name:?} in the demo's output:\n{out}"))
    };
    assert!(
        out.contains("DESIRED") && out.contains("IO_URING"),
        "no printer columns:\n{out}"
    );
    let stc = row("storagecluster.ringmaster.io/storage", 8);
    assert_eq!(stc[0], "ringmaster-demo");
    assert_eq!(
        stc[2], "3",
        "DESIRED should count the real node and the two simulated ones: {stc:?}"
    );
    // NAME CLUSTER IO_URING REASON MODE AIO-MAX-NR READY GEN AGE: RuntimeDefault refuses io_uring.
    let stn = row(&format!("storagenode.ringmaster.io/{node}"), 9);
    assert_eq!(stn[1], "ringmaster-demo/storage", "{stn:?}");
    assert_eq!(
        (stn[2], stn[3], stn[4]),
        ("unsupported", "EPERM", "pread"),
        "containerd's RuntimeDefault should refuse io_uring with EPERM: {stn:?}"
    );
    let raised: u64 = stn[5]
        .parse()
        .unwrap_or_else(|_| panic!("no AIO-MAX-NR column in {stn:?}"));
    assert!(raised >= 1_048_576, "{stn:?}");
    // Node labels: the real node labelled, the simulated ones (no agent reports) not.
    let n1 = row(&node, 5);
    assert!(
        n1.contains(&"unsupported") && n1.contains(&"EPERM"),
        "{node}'s labels do not match its StorageNode: {n1:?}"
    );
    // The read it shows was served, and says how: under RuntimeDefault, by the pread fallback.
    assert!(
        out.contains("HTTP/1.1 206 Partial Content")
            && out.contains("# x-ringmaster-worker-mode: pread: this runtime's RuntimeDefault"),
        "the demo does not show the read and its worker mode:\n{out}"
    );
    let n2 = row("demo-node-2", 5);
    assert!(
        !n2.contains(&"unsupported") && !n2.contains(&"supported"),
        "demo-node-2 has no agent: {n2:?}"
    );
    // The release's pods run on the real node: the operator's and the agent's (2/2).
    let op = out
        .lines()
        .find(|l| l.starts_with("ringmaster-operator-"))
        .unwrap_or_else(|| panic!("no operator pod listed:\n{out}"));
    assert!(
        op.contains("1/1") && op.contains("Running") && op.contains(&node),
        "{op}"
    );
    let agent = out
        .lines()
        .find(|l| l.starts_with("storage-agent-") && l.contains(&node))
        .unwrap_or_else(|| panic!("no agent pod on {node} listed:\n{out}"));
    assert!(
        agent.contains("2/2") && agent.contains("Running"),
        "{agent}"
    );
    for hint in [
        "source ",
        &format!("kubectl get stn {node} -o yaml"),
        "localhostProfile",
        "hack/demo.sh down",
    ] {
        assert!(
            out.contains(hint),
            "the demo does not tell {hint:?}:\n{out}"
        );
    }
    let (ok, status) = demo.run("status");
    assert!(
        ok && status.contains(&format!("storagenode.ringmaster.io/{node}")),
        "status:\n{status}"
    );

    let (ok, down) = demo.run("down");
    assert!(ok, "hack/demo.sh down failed:\n{down}");
    assert!(down.contains("torn down"), "{down}");
    assert!(
        !demo.dir.exists(),
        "the demo's state dir is left: {}",
        demo.dir.display()
    );
    // `down` puts fs.aio-max-nr back exactly (the snapshot `up --real-node` took).
    assert_eq!(
        aio_max_nr(),
        before,
        "fs.aio-max-nr {before} before the demo, {} after down",
        aio_max_nr()
    );
    assert!(
        !std::path::Path::new("/run/ringmaster-real-node").exists(),
        "the real node is still claimed after down"
    );
}
