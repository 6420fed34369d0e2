//! A fleet of node agents for the agent e2e tests: simulated (kwok) nodes, one agent
//! DaemonSet pod per node scheduled by the real scheduler, and per node one
//! `ringmaster-agent run` (authenticated with a token bound to that node's pod, under the
//! agent ClusterRole the chart ships) plus one `ringmaster-agent reader` (under
//! `seccomp-exec --io-uring ERRNO` for a failing node), each with its own state dirs.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use ringmaster_api::{keys, StorageCluster, StorageNode, StorageNodeStatus};
use ringmaster_e2e::{
    bin_dir, client, install_crds, kubectl, kubectl_stdin, pod_token, repo_root, spawn_bin,
    unique_name, wait_for, write_token_kubeconfig, FakeNode, FakeNodeHandle, Process,
    TestNamespace,
};
use serde_json::json;

pub const T: Duration = Duration::from_secs(60);
pub const CLUSTER: &str = "main";
/// ClusterRole the chart ships for agents (the operator binds agent ServiceAccounts to it).
pub const AGENT_CLUSTER_ROLE: &str = "ringmaster-agent";
/// Label (not under `ringmaster.io/`) that puts a test's nodes under its DaemonSet.
pub const FLEET_LABEL: &str = "e2e.ringmaster.io/fleet";

/// Tests in this binary change the host's `fs.aio-max-nr`: one at a time.
static SYSCTL_LOCK: Mutex<()> = Mutex::new(());

const AIO_MAX_NR: &str = "/proc/sys/fs/aio-max-nr";

pub fn read_aio_max_nr() -> u64 {
    std::fs::read_to_string(AIO_MAX_NR)
        .expect("reading /proc/sys/fs/aio-max-nr")
        .trim()
        .parse()
        .expect("fs.aio-max-nr is a number")
}

pub fn write_aio_max_nr(v: u64) {
    std::fs::write(AIO_MAX_NR, format!("{v}\n"))
        .unwrap_or_else(|e| panic!("writing fs.aio-max-nr={v} (tests run as root): {e}"));
}

pub fn read_aio_nr() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/aio-nr")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The value of the first sample of `name` in a Prometheus text exposition, whatever its
/// labels (the agent labels every series with `node` and `cluster`).
pub fn sample(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let value = if rest.starts_with('{') {
            rest.split_once("} ")?.1
        } else {
            rest.strip_prefix(' ')?
        };
        value.trim().parse().ok()
    })
}

/// Holds the sysctl lock and puts `fs.aio-max-nr` back to what it was when dropped.
pub struct SysctlGuard {
    original: u64,
    _lock: MutexGuard<'static, ()>,
}

impl SysctlGuard {
    pub fn take() -> Self {
        let lock = SYSCTL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        SysctlGuard {
            original: read_aio_max_nr(),
            _lock: lock,
        }
    }
    pub fn original(&self) -> u64 {
        self.original
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        write_aio_max_nr(self.original);
    }
}

/// A directory under the e2e scratch dir (`ringmaster_e2e::scratch_dir`), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let p = ringmaster_e2e::scratch_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// How a node's reader is sandboxed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uring {
    Works,
    /// `seccomp-exec --io-uring <errno>`.
    Fails(&'static str),
}

/// One simulated node with its agent and reader processes.
pub struct NodeAgent {
    pub node: String,
    pub uring: Uring,
    pub pod: String,
    pub kubeconfig: PathBuf,
    pub state_dir: TempDir,
    pub host_state_dir: TempDir,
    pub seccomp_dir: TempDir,
    pub sysctl_d_dir: TempDir,
    pub agent: Option<Process>,
    pub reader: Option<Process>,
}

impl NodeAgent {
    pub fn start_reader(&mut self) {
        self.start_reader_with_env(&[]);
    }

    /// The reader with extra environment (test hooks such as `RINGMASTER_FAULT_BOOT_ID`).
    pub fn start_reader_with_env(&mut self, env: &[(&str, &str)]) {
        let agent_bin = bin_dir().join("ringmaster-agent");
        let agent_bin = agent_bin.to_str().unwrap();
        let state = self.state_dir.path().to_str().unwrap().to_string();
        let reader_args = [
            "reader",
            "--state-dir",
            &state,
            "--bind",
            "127.0.0.1:0",
            "--poll-ms",
            "200",
            // On loopback in a test: the bearer token is the operator-rendered pod's business.
            "--allow-unauthenticated",
        ];
        self.reader = Some(match self.uring {
            Uring::Works => spawn_bin("ringmaster-agent", &reader_args, env),
            Uring::Fails(errno) => {
                let mut args = vec!["--io-uring", errno, "--", agent_bin];
                args.extend(reader_args);
                spawn_bin("seccomp-exec", &args, env)
            }
        });
    }

    pub fn start_agent(&mut self, ns: &str) {
        self.start_agent_with_env(ns, &[]);
    }

    /// The agent with extra environment (`RINGMASTER_HEARTBEAT_SECONDS`, test hooks).
    pub fn start_agent_with_env(&mut self, ns: &str, extra: &[(&str, &str)]) {
        let args = self.agent_args(ns);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let kc = self.kubeconfig.to_str().unwrap().to_string();
        let mut env = vec![("KUBECONFIG", kc.as_str()), ("RUST_LOG", "info")];
        env.extend_from_slice(extra);
        self.agent = Some(spawn_bin("ringmaster-agent", &args, &env));
    }

    /// The agent's handoff dir (`<state>/agent`: config.json, agent.addr).
    pub fn agent_dir(&self) -> PathBuf {
        self.state_dir.path().join("agent")
    }

    /// The reader's handoff dir (`<state>/reader`: reader.json).
    pub fn reader_dir(&self) -> PathBuf {
        self.state_dir.path().join("reader")
    }

    /// The agent in a private mount namespace whose /proc/sys is read-only (as in an
    /// unprivileged container), through `unshare` and `mount`.
    pub fn start_agent_read_only_proc_sys(&mut self, ns: &str) -> std::process::Child {
        let agent_bin = bin_dir().join("ringmaster-agent");
        let script =
            "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec \"$@\"";
        let log = std::fs::File::create(self.state_dir.path().join("agent-ro.log")).unwrap();
        std::process::Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(&agent_bin)
            .args(self.agent_args(ns))
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare (util-linux) to run the agent with a read-only /proc/sys")
    }

    fn agent_args(&self, ns: &str) -> Vec<String> {
        let cluster = format!("{ns}/{CLUSTER}");
        [
            "run",
            "--node-name",
            &self.node,
            "--cluster",
            &cluster,
            "--state-dir",
            self.state_dir.path().to_str().unwrap(),
            "--host-state-dir",
            self.host_state_dir.path().to_str().unwrap(),
            "--http-port",
            "0",
            "--http-addr",
            "127.0.0.1",
            "--resync-seconds",
            "3",
            "--reader-poll-ms",
            "200",
            "--seccomp-profile-dir",
            self.seccomp_dir.path().to_str().unwrap(),
            "--sysctl-d-dir",
            self.sysctl_d_dir.path().to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// The agent's HTTP address (it writes it to the state dir once bound).
    pub async fn agent_addr(&self) -> String {
        let f = self.agent_dir().join("agent.addr");
        wait_for(T, "agent.addr in the state dir", || async {
            let text = std::fs::read_to_string(&f)?;
            text.parse::<std::net::SocketAddr>()?;
            Ok(text)
        })
        .await
    }

    pub fn settings_toml(&self) -> Option<String> {
        std::fs::read_to_string(self.host_state_dir.path().join("aio.toml")).ok()
    }
}

/// `GET path` on `addr`: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_exchange(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
    )
}

/// `GET path` with `Range: bytes=<range>` on `addr`: (status code, body).
pub fn http_range(addr: &str, path: &str, range: &str) -> (u16, String) {
    http_exchange(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nRange: bytes={range}\r\nConnection: close\r\n\r\n"
        ),
    )
}

/// Send `request` to `addr`, read until the server closes: (status code, body).
fn http_exchange(addr: &str, request: &str) -> (u16, String) {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (code, body)
}

/// The reader's read-service address from its last report (`reader.json`).
pub fn reader_listen_addr(state_dir: &Path) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("reader/reader.json")).ok()?).ok()?;
    v["listen_addr"].as_str().map(String::from)
}

/// The agent ClusterRole the operator ships (operator/rbac/agent-clusterrole.yaml, which the
/// chart installs as is), applied server-side.
fn apply_agent_cluster_role() {
    let file = repo_root().join("operator/rbac/agent-clusterrole.yaml");
    let yaml = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    assert!(
        yaml.contains(&format!("name: {AGENT_CLUSTER_ROLE}")),
        "the agent ClusterRole is not named {AGENT_CLUSTER_ROLE}:\n{yaml}"
    );
    kubectl_stdin(
        [
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=ringmaster-e2e",
            "-f",
            "-",
        ],
        &yaml,
    )
    .ok();
}

/// A test's fleet; dropping it stops the processes and deletes what it created.
pub struct Fleet {
    pub client: Client,
    pub ns: TestNamespace,
    pub nodes: Vec<FakeNodeHandle>,
    pub agents: Vec<NodeAgent>,
    pub data_dir: TempDir,
    binding: String,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Processes first (their Drop stops them), then the cluster-scoped binding.
        for a in &mut self.agents {
            a.agent.take();
            a.reader.take();
        }
        let _ = kubectl([
            "delete",
            "clusterrolebinding",
            &self.binding,
            "--wait=false",
        ]);
    }
}

impl Fleet {
    pub fn ns(&self) -> &str {
        self.ns.name()
    }

    pub fn clusters(&self) -> Api<StorageCluster> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    pub fn storage_nodes(&self) -> Api<StorageNode> {
        Api::all(self.client.clone())
    }

    pub fn node_api(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Nodes, the agent DaemonSet and its pods, tokens; no processes yet.
    pub async fn create(prefix: &str, urings: &[Uring]) -> Fleet {
        let client = client().await;
        install_crds(&client).await;
        apply_agent_cluster_role();
        let ns = TestNamespace::create(&client, prefix).await;
        let nsn = ns.name().to_string();

        // ServiceAccount and its binding to the chart's ClusterRole.
        let sa = "ringmaster-agent";
        Api::<ServiceAccount>::namespaced(client.clone(), &nsn)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
            )
            .await
            .expect("creating the agent ServiceAccount");
        let binding = format!("ringmaster-agent-{nsn}");
        let crb: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": binding},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AGENT_CLUSTER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": nsn}],
        }))
        .unwrap();
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &crb)
            .await
            .expect("creating the agent ClusterRoleBinding");

        // Simulated nodes.
        let mut nodes = Vec::new();
        for (i, _) in urings.iter().enumerate() {
            let name = unique_name(&format!("{prefix}-n{i}"));
            nodes.push(
                FakeNode::new(&name)
                    .label(FLEET_LABEL, &nsn)
                    .create(&client)
                    .await,
            );
        }

        // The agent DaemonSet, placed by the real controller-manager and scheduler.
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": {"app": "ringmaster-agent"}},
                "template": {
                    "metadata": {"labels": {"app": "ringmaster-agent"}},
                    "spec": {
                        "serviceAccountName": sa,
                        "nodeSelector": {FLEET_LABEL: nsn},
                        "tolerations": [
                            {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"},
                            {"key": keys::TAINT_IO_URING_UNSUPPORTED, "operator": "Exists", "effect": "NoSchedule"},
                        ],
                        "containers": [{"name": "agent", "image": "ringmaster-agent:e2e"}],
                    },
                },
            },
        }))
        .unwrap();
        Api::<DaemonSet>::namespaced(client.clone(), &nsn)
            .create(&PostParams::default(), &ds)
            .await
            .expect("creating the agent DaemonSet");
        let pods: Api<Pod> = Api::namespaced(client.clone(), &nsn);
        let node_names: Vec<String> = nodes.iter().map(|n| n.name().to_string()).collect();
        let placed: BTreeMap<String, String> =
            wait_for(T, "one scheduled, running agent pod per node", || async {
                let mut m = BTreeMap::new();
                for p in pods.list(&Default::default()).await? {
                    let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                    let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                    if let (Some(node), Some("Running")) = (node, phase.as_deref()) {
                        m.insert(node, p.name_any());
                    }
                }
                anyhow::ensure!(
                    node_names.iter().all(|n| m.contains_key(n)),
                    "pods placed: {m:?}, nodes: {node_names:?}"
                );
                Ok(m)
            })
            .await;

        let data_dir = TempDir::new("agent-data");
        std::fs::write(
            data_dir.path().join("hello.txt"),
            b"hello from ringmaster\n",
        )
        .unwrap();
        let mut agents = Vec::new();
        for (node, uring) in node_names.iter().zip(urings) {
            let pod = placed[node].clone();
            let token = pod_token(&nsn, sa, &pod);
            let kubeconfig = write_token_kubeconfig(&unique_name(&format!("agent-{node}")), &token);
            agents.push(NodeAgent {
                node: node.clone(),
                uring: *uring,
                pod,
                kubeconfig,
                state_dir: TempDir::new("agent-state"),
                host_state_dir: TempDir::new("agent-host-state"),
                seccomp_dir: TempDir::new("agent-seccomp"),
                sysctl_d_dir: TempDir::new("agent-sysctl-d"),
                agent: None,
                reader: None,
            });
        }
        Fleet {
            client,
            ns,
            nodes,
            agents,
            data_dir,
            binding,
        }
    }

    /// Creates the StorageCluster `main` with `spec` (YAML), data dir added.
    pub async fn create_cluster(&self, spec_yaml: &str) -> StorageCluster {
        let mut spec: serde_json::Value = serde_yaml::from_str(spec_yaml).unwrap();
        spec["readService"] =
            json!({"dataDirs": [{"name": "d0", "hostPath": self.data_dir.path()}]});
        self.create_cluster_spec(spec).await
    }

    /// [`Self::create_cluster`], returning the generation the agents will apply.
    pub async fn create_cluster_generation(&self, spec_yaml: &str) -> i64 {
        self.create_cluster(spec_yaml)
            .await
            .metadata
            .generation
            .expect("a created StorageCluster has a generation")
    }

    /// Creates the StorageCluster `main` with exactly `spec`.
    pub async fn create_cluster_spec(&self, spec: serde_json::Value) -> StorageCluster {
        let sc: StorageCluster = serde_json::from_value(json!({
            "apiVersion": "ringmaster.io/v1alpha1",
            "kind": "StorageCluster",
            "metadata": {"name": CLUSTER, "namespace": self.ns()},
            "spec": spec,
        }))
        .unwrap();
        self.clusters()
            .create(&PostParams::default(), &sc)
            .await
            .expect("creating the StorageCluster")
    }

    /// Puts the operator's finalizer on the StorageCluster, standing in for the operator,
    /// so a deletion waits for the agent's cleanup.
    pub async fn hold_finalizer(&self) {
        self.clusters()
            .patch(
                CLUSTER,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": [keys::FINALIZER]}})),
            )
            .await
            .expect("adding the finalizer to the StorageCluster");
    }

    /// Takes the finalizer off again (what the operator does when cleanup is done).
    pub async fn release_finalizer(&self) {
        self.clusters()
            .patch(
                CLUSTER,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .expect("releasing the finalizer of the StorageCluster");
    }

    /// Creates the StorageCluster from `spec_yaml`, starts every agent and reader, and
    /// waits until each node applied it; returns its generation.
    pub async fn start_and_wait_applied(&mut self, spec_yaml: &str) -> i64 {
        let gen = self.create_cluster_generation(spec_yaml).await;
        self.start_all();
        let nodes: Vec<String> = self.agents.iter().map(|a| a.node.clone()).collect();
        for n in &nodes {
            self.wait_applied(n, gen).await;
        }
        gen
    }

    /// Waits until the StorageNode of `node` says `Restored=True` (its agent cleaned up).
    pub async fn wait_restored(&self, node: &str) {
        wait_for(T, &format!("StorageNode {node} Restored=True"), || async {
            let st = self.node_status(node).await?;
            let c = st
                .conditions
                .iter()
                .find(|c| c.type_ == ringmaster_api::node_conditions::RESTORED);
            anyhow::ensure!(
                c.is_some_and(|c| c.status == "True"),
                "conditions {:?}",
                st.conditions
            );
            Ok(())
        })
        .await
    }

    pub async fn patch_cluster(&self, spec_patch: serde_json::Value) -> StorageCluster {
        self.clusters()
            .patch(
                CLUSTER,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec_patch })),
            )
            .await
            .expect("patching the StorageCluster")
    }

    pub fn start_all(&mut self) {
        let ns = self.ns().to_string();
        for a in &mut self.agents {
            a.start_reader();
            a.start_agent(&ns);
        }
    }

    pub fn agent(&mut self, node: &str) -> &mut NodeAgent {
        self.agents.iter_mut().find(|a| a.node == node).unwrap()
    }

    /// Waits until the StorageNode of `node` reports generation `gen` applied.
    pub async fn wait_applied(&self, node: &str, gen: i64) -> StorageNode {
        let api = self.storage_nodes();
        wait_for(
            T,
            &format!("StorageNode {node} at generation {gen}"),
            || async {
                let sn = api.get(node).await?;
                let st = sn.status.clone().unwrap_or_default();
                anyhow::ensure!(
                    st.applied_generation == Some(gen),
                    "appliedGeneration {:?}, status {:?}",
                    st.applied_generation,
                    st.conditions
                );
                Ok(sn)
            },
        )
        .await
    }

    /// The StorageNode status of `node` now (empty when it has none yet).
    pub async fn node_status(&self, node: &str) -> anyhow::Result<StorageNodeStatus> {
        Ok(self
            .storage_nodes()
            .get(node)
            .await?
            .status
            .unwrap_or_default())
    }

    pub async fn node(&self, name: &str) -> Node {
        self.node_api().get(name).await.unwrap()
    }

    pub async fn delete_cluster(&self) {
        let _ = self
            .clusters()
            .delete(CLUSTER, &DeleteParams::default())
            .await;
    }
}

/// The Node's labels under `ringmaster.io/`.
pub fn ringmaster_labels(n: &Node) -> BTreeMap<String, String> {
    n.labels()
        .iter()
        .filter(|(k, _)| k.starts_with(keys::PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The Node's taints with our key.
pub fn ringmaster_taints(n: &Node) -> usize {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map_or(0, |t| {
            t.iter()
                .filter(|t| t.key == keys::TAINT_IO_URING_UNSUPPORTED)
                .count()
        })
}

pub fn has_kwok_taint(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == "kwok.x-k8s.io/node"))
}
