//! The README's "run the main job": `hack/demo.sh` on its own control plane (beside the test
//! cluster), with the operator and a real agent on this host. Checks what it prints (the
//! StorageCluster counting this node's report, the StorageNode's verdict, the node labels,
//! how to explore and tear down), then `hack/demo.sh down` and that it put everything back.
//! Needs root (the agent tunes fs.aio-max-nr) and the binaries in RINGMASTER_BIN_DIR.

use std::process::Command;

use ringmaster_e2e::{bin_dir, repo_root, unique_name};

fn aio_max_nr() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/aio-max-nr")
        .expect("reading fs.aio-max-nr")
        .trim()
        .parse()
        .expect("fs.aio-max-nr is a number")
}

/// Runs `hack/demo.sh down` on drop, so a failed assertion leaves no cluster or agent behind.
struct Demo {
    dir: std::path::PathBuf,
}

impl Demo {
    fn run(&self, arg: &str) -> (bool, String) {
        let out = Command::new(repo_root().join("hack/demo.sh"))
            .arg(arg)
            .env("RINGMASTER_DEMO_DIR", &self.dir)
            .env("RINGMASTER_BIN_DIR", bin_dir())
            // The demo starts a control plane of its own; it must not see the test cluster's.
            .env_remove("KUBECONFIG")
            .env_remove("RINGMASTER_CLUSTER_DIR")
            .env_remove("RINGMASTER_APISERVER")
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

#[test]
fn demo_shows_a_populated_cluster_and_tears_down_cleanly() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the demo's agent tunes fs.aio-max-nr: run the e2e tests as root"
    );
    let before = aio_max_nr();
    let demo = Demo {
        dir: std::env::temp_dir().join(unique_name("ringmaster-demo")),
    };
    let (ok, out) = demo.run("up");
    eprintln!("{out}");
    assert!(ok, "hack/demo.sh failed:\n{out}");

    // The chart, the nodes, the operator and the agent came up in order.
    for step in [
        "install the Helm chart",
        "create simulated nodes: demo-node-1 demo-node-2 demo-node-3",
        "run the operator",
        "storagecluster.ringmaster.io/storage created",
        "run the real agent for demo-node-1",
    ] {
        assert!(out.contains(step), "the demo did not {step:?}:\n{out}");
    }
    // kubectl get stc,stn: the cluster selects the three nodes and counts one report; the
    // StorageNode of this host carries a real verdict.
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
        "DESIRED should count the three simulated nodes: {stc:?}"
    );
    let stn = row("storagenode.ringmaster.io/demo-node-1", 8);
    // NAME CLUSTER IO_URING [REASON] MODE AIO-MAX-NR READY GEN AGE: REASON is empty when supported.
    let raised: u64 = stn[stn.len() - 4]
        .parse()
        .unwrap_or_else(|_| panic!("no AIO-MAX-NR column in {stn:?}"));
    assert_eq!(stn[1], "ringmaster-demo/storage", "{stn:?}");
    assert!(
        stn[2] == "supported" || stn[2] == "unsupported",
        "StorageNode demo-node-1 has no io_uring verdict: {stn:?}"
    );
    // Node labels: the agent's node labelled, the simulated ones (no agent) not.
    let n1 = row("demo-node-1", 5);
    assert!(
        n1.contains(&stn[2]),
        "demo-node-1's io-uring label does not match its StorageNode: {n1:?}"
    );
    let n2 = row("demo-node-2", 5);
    assert!(
        !n2.contains(&"supported") && !n2.contains(&"true"),
        "demo-node-2 has no agent: {n2:?}"
    );
    // Where to go next.
    for hint in [
        "source ",
        "kubectl get stn demo-node-1 -o yaml",
        "hack/demo.sh down",
    ] {
        assert!(
            out.contains(hint),
            "the demo does not tell {hint:?}:\n{out}"
        );
    }
    let (ok, status) = demo.run("status");
    assert!(
        ok && status.contains("storagenode.ringmaster.io/demo-node-1"),
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
    // The agent's raise is undone. (Compared with the value the agent set rather than only
    // with `before`: on a shared development machine other tests may move the value meanwhile;
    // in CI nothing else runs and it comes back to exactly `before`.)
    let after = aio_max_nr();
    if before < raised {
        assert!(
            after < raised,
            "the demo did not put fs.aio-max-nr back: {before} before, {raised} set by the agent, {after} after down"
        );
    }
    if std::env::var_os("CI").is_some() {
        assert_eq!(
            after, before,
            "fs.aio-max-nr {before} before the demo, {after} after"
        );
    }
    let ps = Command::new("pgrep")
        .args(["-f", demo.dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ps.stdout).trim().is_empty(),
        "processes of the demo still run: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}
