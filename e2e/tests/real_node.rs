//! On a real node (`hack/cluster.sh up --real-node`: kubelet, containerd, runc, the CNI bridge and
//! kube-proxy on this host): the chart's pods really run, the runtime itself produces the seed's
//! io_uring error, and the examples' workloads land where the verdict allows.
//!
//! These tests fail, never skip, without a real node: they need `RINGMASTER_REAL_NODE` (set by
//! `eval "$(hack/cluster.sh up --real-node)"`) and the project's images imported into the node
//! (`hack/cluster.sh up --real-node` does it; `hack/cluster.sh load-images` after a rebuild).
//! They change this host's fs.aio-max-nr through the agent and check it is put back.

use std::time::Duration;

use ringmaster_e2e::{kubectl, kubectl_ok, kubectl_stdin, repo_root, unique_name, wait_for_sync};
use serde_json::{json, Value};

const SYSTEM_NS: &str = "ringmaster-system";
const AGENT_IMAGE_REPO: &str = "ghcr.io/ringmaster-io/ringmaster-agent";
const KUBELET_SECCOMP_DIR: &str = "/var/lib/kubelet/seccomp";
const PROFILE: &str = "ringmaster/io-uring.json";
const WAIT: Duration = Duration::from_secs(180);

fn real_node() -> String {
    std::env::var("RINGMASTER_REAL_NODE")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "RINGMASTER_REAL_NODE is not set: these tests need a real node: \
                 eval \"$(hack/cluster.sh up --real-node)\" (e2e tests never skip)"
            )
        })
}

/// The chart's default agent image (`ghcr.io/ringmaster-io/ringmaster-agent:<appVersion>`).
fn agent_image() -> String {
    let chart = std::fs::read_to_string(repo_root().join("charts/ringmaster/Chart.yaml")).unwrap();
    let v = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .expect("appVersion in Chart.yaml")
        .trim()
        .trim_matches('"');
    format!("{AGENT_IMAGE_REPO}:{v}")
}

fn get_json(args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&kubectl_ok(a)).expect("kubectl -o json")
}

/// The first pod labelled `selector` in `ns` (for a wait: an error until there is one).
fn first_pod(ns: &str, selector: &str) -> anyhow::Result<Value> {
    let pods = get_json(&["pods", "-n", ns, "-l", selector]);
    pods["items"]
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no pod labelled {selector} yet"))
}

/// `kubectl <verb> -n ns -f examples/<file> <extra...>`.
fn kubectl_example(verb: &str, ns: &str, file: &str, extra: &[&str]) {
    let path = repo_root().join("examples").join(file);
    let mut args = vec![verb, "-n", ns, "-f", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    kubectl_ok(args);
}

fn aio_max_nr() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/aio-max-nr")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn node_labels(node: &str) -> serde_json::Map<String, Value> {
    get_json(&["node", node])["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn pod_phase(ns: &str, pod: &str) -> String {
    get_json(&["pod", "-n", ns, pod])["status"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Runs a pod to completion on the real node; returns (phase, logs).
fn run_to_completion(ns: &str, pod: &Value) -> (String, String) {
    kubectl_stdin(["apply", "-n", ns, "-f", "-"], &pod.to_string()).ok();
    let name = pod["metadata"]["name"].as_str().unwrap();
    let phase = wait_for_sync(WAIT, &format!("pod {name} to finish"), || {
        let p = pod_phase(ns, name);
        anyhow::ensure!(p == "Succeeded" || p == "Failed", "phase {p:?}");
        Ok(p)
    });
    (phase, kubectl_ok(["logs", "-n", ns, name]))
}

/// A namespace of this test, deleted (and waited for) on drop.
struct Ns(String);
impl Ns {
    fn new(prefix: &str) -> Self {
        let n = unique_name(prefix);
        kubectl_ok(["create", "namespace", &n]);
        Ns(n)
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = kubectl([
            "delete",
            "namespace",
            &self.0,
            "--wait=true",
            "--timeout=120s",
        ]);
    }
}

fn check_pod(name: &str, node: &str, seccomp: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "securityContext": {"seccompProfile": seccomp},
            "containers": [{
                "name": "storage-main",
                "image": agent_image(),
                "imagePullPolicy": "Never",
                "command": ["ringmaster-agent", "check", "--max-events", "512"],
            }],
        },
    })
}

#[test]
fn real_node_is_ready_and_the_api_server_reaches_its_kubelet() {
    let node = real_node();
    let n = get_json(&["node", &node]);
    let info = &n["status"]["nodeInfo"];
    assert!(
        info["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("containerd://2."),
        "{info}"
    );
    assert_eq!(info["kubeletVersion"], "v1.36.3", "{info}");
    let ready = n["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    assert!(
        ready,
        "node {node} not Ready: {}",
        n["status"]["conditions"]
    );
    // The kubelet's own credentials, not the admin's: system:node:<name>.
    let ns = Ns::new("real-node");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "shell"},
        "spec": {"nodeName": node, "containers": [{
            "name": "sh", "image": "busybox:1.36", "imagePullPolicy": "Never",
            "command": ["sh", "-c", "echo hello from $(hostname); exec sleep 3600"]}]},
    });
    kubectl_stdin(["apply", "-n", &ns.0, "-f", "-"], &pod.to_string()).ok();
    kubectl_ok([
        "wait",
        "-n",
        &ns.0,
        "--for=condition=Ready",
        "pod/shell",
        "--timeout=120s",
    ]);
    // `kubectl logs` and `exec`: the API server dials the kubelet at the node's InternalIP.
    let logs = wait_for_sync(Duration::from_secs(30), "kubectl logs of the pod", || {
        let l = kubectl(["logs", "-n", &ns.0, "shell"]);
        anyhow::ensure!(l.success(), "{}", l.stderr);
        Ok(l.stdout)
    });
    assert!(logs.contains("hello from shell"), "{logs}");
    let out = kubectl_ok(["exec", "-n", &ns.0, "shell", "--", "cat", "/etc/hostname"]);
    assert_eq!(out.trim(), "shell");
    // Pods reach the API server through the `kubernetes` Service (kube-proxy's DNAT).
    let out = kubectl([
        "exec",
        "-n",
        &ns.0,
        "shell",
        "--",
        "sh",
        "-c",
        "nc -w 5 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT </dev/null && echo reached",
    ]);
    assert!(
        out.stdout.contains("reached"),
        "a pod cannot reach the API server through the kubernetes Service: {out:?}"
    );
}

/// The seed's error, produced by the container runtime: containerd >= 2.0's RuntimeDefault
/// seccomp profile refuses io_uring_setup with EPERM; the shipped Localhost profile allows it.
#[test]
fn real_node_runtime_default_refuses_io_uring_and_the_localhost_profile_allows_it() {
    let node = real_node();
    let ns = Ns::new("seed-error");
    // The profile the agent installs; put it there ourselves if no agent did yet.
    let profile = std::path::Path::new(KUBELET_SECCOMP_DIR).join(PROFILE);
    let shipped =
        std::fs::read_to_string(repo_root().join("deploy/seccomp/io-uring.json")).unwrap();
    let installed_here = !profile.exists();
    if installed_here {
        std::fs::create_dir_all(profile.parent().unwrap()).unwrap();
        std::fs::write(&profile, &shipped).unwrap();
    }

    let (phase, logs) = run_to_completion(
        &ns.0,
        &check_pod("runtime-default", &node, json!({"type": "RuntimeDefault"})),
    );
    eprintln!("RuntimeDefault:\n{logs}");
    assert_eq!(phase, "Failed", "{logs}");
    assert!(
        logs.contains("FAILED at setup with EPERM (errno 1), tried 512"),
        "RuntimeDefault did not refuse io_uring_setup with EPERM:\n{logs}"
    );

    let (phase, logs) = run_to_completion(
        &ns.0,
        &check_pod(
            "localhost",
            &node,
            json!({"type": "Localhost", "localhostProfile": PROFILE}),
        ),
    );
    eprintln!("Localhost {PROFILE}:\n{logs}");
    assert_eq!(phase, "Succeeded", "{logs}");
    assert!(
        logs.contains("ok, 512 entries (requested 512)"),
        "the Localhost profile did not allow a 512-entry ring:\n{logs}"
    );
    if installed_here {
        let _ = std::fs::remove_file(&profile);
    }
}

/// A plain `helm install` (no --set) on the real node: the operator Deployment runs; a
/// StorageCluster's agent pod runs both containers, tunes the host and reports the verdict
/// the runtime gives; the Localhost profile flips it; the examples' workloads follow the
/// verdict; deleting the StorageCluster and uninstalling leave the node as found.
#[test]
fn real_node_chart_pods_run_follow_the_verdict_and_leave_the_node_as_found() {
    let node = real_node();
    let before_aio = aio_max_nr();
    let before_labels = node_labels(&node);
    let root = repo_root();
    let chart = root.join("charts/ringmaster");
    // The chart's defaults, but for the one admin choice serving host data needs: the root
    // the test's data dir lies below (none is allowed by default).
    let allowed_roots = format!(
        "agent.allowedDataDirRoots=[{}]",
        serde_json::Value::from(ringmaster_e2e::scratch_dir().to_str().unwrap())
    );
    let out = std::process::Command::new("helm")
        .args([
            "install",
            "ringmaster",
            chart.to_str().unwrap(),
            "-n",
            SYSTEM_NS,
            "--create-namespace",
            "--set-json",
            &allowed_roots,
            "--wait",
            "--timeout",
            "180s",
        ])
        .output()
        .expect("running helm");
    let uninstall = Uninstall;
    assert!(
        out.status.success(),
        "helm install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_sync(WAIT, "every operator replica Ready", || {
        let deploy = get_json(&[
            "deployment",
            "-n",
            SYSTEM_NS,
            "-l",
            "app.kubernetes.io/component=operator",
        ]);
        let d = &deploy["items"][0];
        anyhow::ensure!(
            d["status"]["readyReplicas"] == d["spec"]["replicas"],
            "{}",
            d["status"]
        );
        Ok(())
    });

    let ns = Ns::new("storage");
    let data = tempdir_with_file();
    let sc = format!(
        "apiVersion: ringmaster.io/v1alpha1\nkind: StorageCluster\nmetadata: {{name: storage}}\n\
         spec:\n  sysctl: {{restoreOnDelete: true}}\n  readService:\n    dataDirs: [{{name: data, hostPath: {}}}]\n",
        data.0.display()
    );
    kubectl_stdin(["apply", "-n", &ns.0, "-f", "-"], &sc).ok();

    // RuntimeDefault (the default): the agent pod runs both containers; the verdict is EPERM.
    let pod = wait_agent_pod_ready(&ns.0, &node, None);
    let stn = wait_verdict(&node, "unsupported");
    let io = &stn["status"]["ioUring"];
    assert_eq!(
        io["errno"], 1,
        "RuntimeDefault should refuse with EPERM: {io}"
    );
    assert!(
        aio_max_nr() >= 1_048_576,
        "the agent did not raise fs.aio-max-nr"
    );
    let profile = std::path::Path::new(KUBELET_SECCOMP_DIR).join(PROFILE);
    assert_eq!(
        std::fs::read_to_string(&profile).unwrap_or_default(),
        std::fs::read_to_string(root.join("deploy/seccomp/io-uring.json")).unwrap(),
        "the agent did not install {}",
        profile.display()
    );
    assert!(
        std::path::Path::new("/var/lib/ringmaster/aio.env").exists(),
        "the agent wrote no state in /var/lib/ringmaster"
    );
    let labels = node_labels(&node);
    assert_eq!(
        labels["ringmaster.io/io-uring"], "unsupported",
        "{labels:?}"
    );
    // The workload that needs io_uring is not placed here.
    kubectl_example("apply", &ns.0, "storage-workload.yaml", &[]);
    std::thread::sleep(Duration::from_secs(5));
    let ds = get_json(&["daemonset", "-n", &ns.0, "storage"]);
    assert_eq!(
        ds["status"]["desiredNumberScheduled"], 0,
        "storage-workload placed on an unsupported node: {}",
        ds["status"]
    );

    // Localhost ringmaster/io-uring.json: the DaemonSet rolls and io_uring works.
    kubectl_ok([
        "patch",
        "stc",
        "-n",
        &ns.0,
        "storage",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"seccomp":{"type":"Localhost","localhostProfile":"ringmaster/io-uring.json"}}}"#,
    ]);
    let new_pod = wait_agent_pod_ready(&ns.0, &node, Some(&pod));
    let stn = wait_verdict(&node, "supported");
    assert_eq!(stn["status"]["workerMode"], "io_uring", "{}", stn["status"]);
    // A range read through the reader's pod address.
    let ip = get_json(&["pod", "-n", &ns.0, &new_pod])["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://{ip}:7480/v1/files/data/blob");
    // Without the cluster's read token: 401 (the pod network here does not enforce
    // NetworkPolicy; the token is what keeps reads closed).
    let out = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-H", "Range: bytes=1000-1099", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.starts_with("HTTP/1.1 401"),
        "a read without the token via {url}: {text}"
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{text}"
    );
    assert!(
        !out.stdout.windows(100).any(|w| w == &data.1[1000..1100]),
        "a 401 carried the data"
    );
    // The operator created the token Secret; a client of the namespace mounts it, here
    // the test reads it as the admin would.
    let token = kubectl_ok([
        "get",
        "secret",
        "-n",
        &ns.0,
        "storage-read-token",
        "-o",
        "jsonpath={.data.token}",
    ]);
    use base64::Engine;
    let token = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .expect("the Secret's token is base64"),
    )
    .unwrap();
    assert_eq!(token.len(), 64, "{token}");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-H", "Range: bytes=1000-1099", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(&url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("206"), "range read via {url}: {text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-ringmaster-worker-mode: io_uring"),
        "{text}"
    );
    let body = &out.stdout[out.stdout.len() - 100..];
    assert_eq!(body, &data.1[1000..1100], "wrong bytes from {url}");

    // The workload now lands here and reads the verified settings from the host.
    let ds_pod = wait_for_sync(
        WAIT,
        "storage-workload pod Running on the real node",
        || {
            let p = first_pod(&ns.0, "app=storage")?;
            anyhow::ensure!(p["status"]["phase"] == "Running", "{}", p["status"]);
            Ok(p)
        },
    );
    assert_eq!(ds_pod["spec"]["nodeName"], node.as_str());
    let logs = kubectl_ok([
        "logs",
        "-n",
        &ns.0,
        ds_pod["metadata"]["name"].as_str().unwrap(),
    ]);
    assert!(logs.contains("io_uring=true max_events=512"), "{logs}");
    // examples/3fs: the init container renders storage_main.toml from the real hostPath file.
    kubectl_example("apply", &ns.0, "3fs/storage-main.yaml", &[]);
    let init_logs = wait_for_sync(WAIT, "the 3fs init container's output", || {
        let pod = first_pod(&ns.0, "app=storage-main")?;
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let l = kubectl(["logs", "-n", &ns.0, &name, "-c", "aio-settings"]);
        anyhow::ensure!(l.stdout.contains("render-aio-settings:"), "{l:?}");
        Ok(l.stdout)
    });
    eprintln!("3fs init container:\n{init_logs}");
    assert!(
        init_logs.contains("max_events=512") && init_logs.contains("enable_io_uring=true"),
        "{init_logs}"
    );
    kubectl_example("delete", &ns.0, "3fs/storage-main.yaml", &["--wait=false"]);
    kubectl_ok([
        "delete",
        "-n",
        &ns.0,
        "daemonset",
        "storage",
        "--wait=false",
    ]);

    // Delete the StorageCluster: the node is left as found.
    kubectl_ok(["delete", "stc", "-n", &ns.0, "storage", "--timeout=120s"]);
    wait_for_sync(WAIT, "the node's labels as before", || {
        let l = node_labels(&node);
        anyhow::ensure!(l == before_labels, "{l:?}");
        Ok(())
    });
    let taints = get_json(&["node", &node])["spec"]["taints"].clone();
    assert!(
        !taints.to_string().contains("ringmaster.io"),
        "taint left: {taints}"
    );
    wait_for_sync(Duration::from_secs(60), "fs.aio-max-nr put back", || {
        let now = aio_max_nr();
        anyhow::ensure!(now == before_aio, "{now}, was {before_aio}");
        Ok(())
    });
    drop(uninstall);
    wait_for_sync(WAIT, "no pod of the release left", || {
        let pods = get_json(&["pods", "-A", "-l", "app.kubernetes.io/instance=ringmaster"]);
        let n = pods["items"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(n == 0, "{n} pods left");
        let agents = get_json(&[
            "pods",
            "-A",
            "-l",
            "app.kubernetes.io/name=ringmaster-agent",
        ]);
        let n = agents["items"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(n == 0, "{n} agent pods left");
        Ok(())
    });
}

struct Uninstall;
impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = kubectl(["delete", "stc", "-A", "--all", "--timeout=120s"]);
        let _ = std::process::Command::new("helm")
            .args([
                "uninstall",
                "ringmaster",
                "-n",
                SYSTEM_NS,
                "--wait",
                "--timeout",
                "120s",
            ])
            .output();
    }
}

/// A host dir with one file of known bytes (removed on drop).
struct DataDir(std::path::PathBuf, Vec<u8>);
impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}
fn tempdir_with_file() -> DataDir {
    let parent = ringmaster_e2e::scratch_dir().join(unique_name("rm-real-node-data"));
    let dir = parent.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("blob"), &bytes).unwrap();
    // The reader runs as 65532: the parent and the file must be readable by others.
    for p in [&parent, &dir] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    DataDir(dir, bytes)
}

/// Waits for the agent pod on `node` with both containers Ready (another than `old`).
fn wait_agent_pod_ready(ns: &str, node: &str, old: Option<&str>) -> String {
    wait_for_sync(WAIT, "the agent pod with both containers Ready", || {
        let pods = get_json(&[
            "pods",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/name=ringmaster-agent",
            "--field-selector",
            &format!("spec.nodeName={node}"),
        ]);
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(items.len() == 1, "{} agent pods", items.len());
        let p = &items[0];
        let name = p["metadata"]["name"].as_str().unwrap().to_string();
        anyhow::ensure!(Some(name.as_str()) != old, "still the old pod {name}");
        let statuses = p["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ready = statuses.iter().filter(|c| c["ready"] == true).count();
        anyhow::ensure!(ready == 2, "{name}: {ready}/2 ready: {}", p["status"]);
        Ok(name)
    })
}

fn wait_verdict(node: &str, verdict: &str) -> Value {
    wait_for_sync(
        WAIT,
        &format!("StorageNode {node} verdict {verdict}"),
        || {
            let stn = get_json(&["storagenode", node]);
            let v = &stn["status"]["ioUring"]["verdict"];
            anyhow::ensure!(v == verdict, "verdict {v}");
            Ok(stn)
        },
    )
}

/// Only one real node per host: a second `up --real-node` is refused, saying why.
#[test]
fn real_node_a_second_one_on_this_host_is_refused() {
    let _ = real_node();
    let dir = std::env::temp_dir().join(unique_name("rm-second-node"));
    let out = std::process::Command::new(repo_root().join("hack/cluster.sh"))
        .args(["up", "--real-node"])
        .env("RINGMASTER_CLUSTER_DIR", &dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "a second real node came up:\n{err}");
    assert!(
        err.contains("already runs a real node") && err.contains("only one real node per host"),
        "{err}"
    );
}
