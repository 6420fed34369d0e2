//! `hack/cluster.sh up --real-node` and `down` on this host, twice: the node runs a pod, and
//! `down` leaves the host exactly as `up` found it (sysctls the kubelet, kube-proxy and the
//! CNI plugins set; nftables/iptables rules; links; mounts; network namespaces; cgroups; the
//! kubelet's and containerd's dirs); a second `up` after a `down` works.
//!
//! Brings up a real node of its own, so it runs when no other real node is up on this host
//! (hack/test.sh's last stage) and fails, never skips, otherwise. Needs root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ringmaster_e2e::{repo_root, unique_name, wait_for_sync};

/// Every sysctl `up --real-node` may change (the kubelet's kernel tunables, kube-proxy's,
/// the bridge plugin's forwarding) and fs.aio-max-nr.
const SYSCTLS: &[&str] = &[
    "fs/aio-max-nr",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/ipv6/conf/all/forwarding",
    "net/bridge/bridge-nf-call-iptables",
    "net/netfilter/nf_conntrack_max",
];
const HOST_DIRS: &[&str] = &[
    "/var/lib/kubelet",
    "/run/containerd",
    "/var/lib/cni",
    "/var/run/netns",
    "/etc/cni",
    "/run/ringmaster-containerd",
    "/run/ringmaster-real-node",
];

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `down` must put back, as comparable text.
fn host_state() -> BTreeMap<&'static str, String> {
    let mut s = BTreeMap::new();
    let sysctls: Vec<String> = SYSCTLS
        .iter()
        .map(|k| {
            let v = std::fs::read_to_string(Path::new("/proc/sys").join(k)).unwrap_or_default();
            format!("{k}={}", v.trim())
        })
        .collect();
    s.insert("sysctls", sysctls.join("\n"));
    s.insert("nft ruleset", sh("nft list ruleset"));
    s.insert("iptables", sh("iptables-save | grep -v '^#'"));
    s.insert(
        "links",
        sh("ip -o link show | awk -F': ' '{print $2}' | sort"),
    );
    s.insert("mounts", sh("awk '{print $5}' /proc/self/mountinfo | sort"));
    s.insert("netns", sh("ls /var/run/netns 2>/dev/null"));
    s.insert(
        "kubepods cgroups",
        sh("ls -d /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/kubepods* 2>/dev/null"),
    );
    let dirs: Vec<String> = HOST_DIRS
        .iter()
        .map(|d| format!("{d} {}", Path::new(d).exists()))
        .collect();
    s.insert("dirs", dirs.join("\n"));
    s.insert(
        "shims",
        sh("pgrep -x containerd-shim; pgrep -x kubelet; pgrep -x containerd"),
    );
    s
}

struct Node {
    dir: PathBuf,
    env: BTreeMap<String, String>,
}

impl Node {
    fn up() -> Self {
        let dir = std::env::temp_dir().join(unique_name("rm-own-node"));
        let start = std::time::Instant::now();
        let out = Command::new(repo_root().join("hack/cluster.sh"))
            .args(["up", "--real-node"])
            .env("RINGMASTER_CLUSTER_DIR", &dir)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("up --real-node: {:.0?}\n{stderr}", start.elapsed());
        let mut node = Node {
            dir,
            env: BTreeMap::new(),
        };
        assert!(
            out.status.success() && !stdout.contains("false"),
            "hack/cluster.sh up --real-node failed:\n{stderr}"
        );
        node.env = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            // PATH comes twice (control-plane tools, node tools): keep the first, kubectl's.
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .rev()
            .collect();
        node
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let bin = Path::new(&self.env["PATH"].split(':').next().unwrap().to_string()).to_path_buf();
        let out = Command::new(bin.join("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.env["KUBECONFIG"])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn down(&mut self) {
        if !self.dir.exists() {
            return;
        }
        let out = Command::new(repo_root().join("hack/cluster.sh"))
            .arg("down")
            .env("RINGMASTER_CLUSTER_DIR", &self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = Command::new(repo_root().join("hack/cluster.sh"))
                .arg("down")
                .env("RINGMASTER_CLUSTER_DIR", &self.dir)
                .status();
        }
    }
}

#[test]
fn own_real_node_down_restores_the_host_and_a_second_up_works() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "a real node runs a kubelet and containerd: run the e2e tests as root"
    );
    assert!(
        !Path::new("/run/ringmaster-real-node").exists(),
        "a real node is already up on this host ({}): this test brings up its own; \
         run it when none is up (hack/test.sh runs it last)",
        std::fs::read_to_string("/run/ringmaster-real-node").unwrap_or_default()
    );
    let before = host_state();
    for round in 1..=2 {
        let mut node = Node::up();
        let name = node.env["RINGMASTER_REAL_NODE"].clone();
        let pod = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p{round}","namespace":"default"}},
            "spec":{{"nodeName":"{name}","containers":[{{"name":"c","image":"busybox:1.36",
            "imagePullPolicy":"Never","command":["sleep","3600"]}}]}}}}"#
        );
        let f = node.dir.join("pod.json");
        std::fs::write(&f, pod).unwrap();
        let (ok, out) = node.kubectl(&["apply", "-f", f.to_str().unwrap()]);
        assert!(ok, "{out}");
        wait_for_sync(
            Duration::from_secs(120),
            &format!("round {round}: a pod Running on {name}"),
            || {
                let (_, phase) = node.kubectl(&[
                    "get",
                    "pod",
                    &format!("p{round}"),
                    "-o",
                    "jsonpath={.status.phase}",
                ]);
                anyhow::ensure!(phase == "Running", "{phase}");
                Ok(())
            },
        );
        // The pod is up: the host carries its netns, mounts, cgroups and bridge now.
        let during = host_state();
        assert_ne!(
            during["links"], before["links"],
            "no pod bridge during round {round}"
        );
        node.down();
        let after = host_state();
        for (k, v) in &before {
            assert_eq!(
                &after[k], v,
                "round {round}: `down` left {k} changed\n--- before\n{v}\n--- after\n{}",
                after[k]
            );
        }
    }
}
