//! Pure rendering: a StorageCluster in, the objects that run its agent fleet out
//! (ServiceAccount, ClusterRoleBinding, DaemonSet, the read-token Secret, the read
//! NetworkPolicy). No I/O, so every detail of the
//! agent contract (what the agent binary expects of its pod) is unit-tested here.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
    DownwardAPIVolumeFile, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    HostPathVolumeSource, KeyToPath, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SeccompProfile, Secret, SecretVolumeSource, SecurityContext,
    ServiceAccount, ServiceAccountTokenProjection, Toleration, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};
use ringmaster_api::keys;
use ringmaster_api::{SeccompType, StorageCluster};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Value of `app.kubernetes.io/name` on the agent pods and their objects.
pub const AGENT_APP_NAME: &str = "ringmaster-agent";
/// Container names (the agent engineers and the chart rely on them).
pub const AGENT_CONTAINER: &str = "agent";
pub const READER_CONTAINER: &str = "reader";
/// The reader's unprivileged uid/gid ("nonroot" in distroless images).
pub const READER_UID: i64 = 65532;
/// Host directories the agent writes.
pub const HOST_SYSCTL_DIR: &str = "/etc/sysctl.d";
/// The kubelet's seccomp dir (`<kubelet root dir>/seccomp`) on a default install; k0s,
/// microk8s and others root the kubelet elsewhere (`--agent-seccomp-dir`).
pub const DEFAULT_HOST_SECCOMP_DIR: &str = "/var/lib/kubelet/seccomp";
/// Where the agent container sees the host's /proc/sys (read-only; `fs/` writable):
/// `ringmaster-agent run` reads and writes sysctls there (`RINGMASTER_PROC_SYS`).
pub const HOST_PROC_SYS_MOUNT: &str = "/host/proc/sys";
/// Where the agent container sees the host's seccomp dir (`ringmaster-agent run`'s default
/// `--seccomp-profile-dir`), whatever its host path.
pub const AGENT_SECCOMP_MOUNT: &str = "/var/lib/kubelet/seccomp";
/// Where the reader container sees each data dir's PARENT: `/data-parents/<name>`, so
/// dir `<name>` is `/data-parents/<name>/<basename(hostPath)>` (`reader --data-root`).
pub const DATA_PARENTS_ROOT: &str = "/data-parents";

/// Where the `agent` container (only it) finds its ServiceAccount token, as in-cluster
/// clients expect it.
pub const AGENT_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Key of the token in the read-token Secret (and the file name in the reader).
pub const READ_TOKEN_KEY: &str = "token";
/// Where the `reader` container (only it) finds the read-token Secret.
pub const READ_TOKEN_DIR: &str = "/etc/ringmaster/read-token";
/// Volume of the read-token Secret.
pub const READ_TOKEN_VOLUME: &str = "read-token";

/// What the admin decides about the rendered pods (operator flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderSettings {
    /// Image of both containers (`--agent-image`): a StorageCluster never names the image
    /// of a privileged container.
    pub agent_image: String,
    /// The kubelet's seccomp dir on the nodes (`--agent-seccomp-dir`), where the agent
    /// installs the Localhost profile.
    pub host_seccomp_dir: String,
}

/// Identity of one StorageCluster as the renderer needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterId {
    pub namespace: String,
    pub name: String,
}

impl ClusterId {
    /// Namespace and name of a StorageCluster; `None` for an object without a namespace
    /// (the API server never hands us one, StorageCluster is namespaced).
    pub fn of(sc: &StorageCluster) -> Option<Self> {
        Some(Self {
            namespace: sc.namespace()?,
            name: sc.name_any(),
        })
    }
    /// `namespace/name`, as agents get it in `--cluster` and `RINGMASTER_CLUSTER`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    /// Name of the DaemonSet and of the ServiceAccount.
    pub fn agent_name(&self) -> String {
        format!("{}-agent", self.name)
    }
    /// Name of the Secret holding the read service's bearer token (clients in the
    /// namespace mount it).
    pub fn read_token_name(&self) -> String {
        format!("{}-read-token", self.name)
    }
    /// Name of the ClusterRoleBinding (cluster-scoped, so the namespace is part of it).
    pub fn binding_name(&self) -> String {
        format!("ringmaster-agent-{}-{}", self.namespace, self.name)
    }
}

/// Labels on every object rendered for a cluster. The cluster namespace/name labels
/// are the same keys the agent puts on StorageNodes, so one selector finds everything.
pub fn object_labels(id: &ClusterId) -> BTreeMap<String, String> {
    let mut l = selector_labels(id);
    l.insert(keys::LABEL_COMPONENT.into(), "agent".into());
    l.insert(keys::LABEL_MANAGED_BY.into(), keys::MANAGER_OPERATOR.into());
    l.insert(
        keys::LABEL_STORAGENODE_CLUSTER_NAMESPACE.into(),
        id.namespace.clone(),
    );
    l.insert(keys::LABEL_STORAGENODE_CLUSTER_NAME.into(), id.name.clone());
    l
}

/// The DaemonSet's immutable pod selector: keep it small and stable.
pub fn selector_labels(id: &ClusterId) -> BTreeMap<String, String> {
    BTreeMap::from([
        (keys::LABEL_APP_NAME.into(), AGENT_APP_NAME.into()),
        (keys::LABEL_CLUSTER_NAME.into(), id.name.clone()),
    ])
}

fn owner_ref(sc: &StorageCluster) -> Option<OwnerReference> {
    sc.controller_owner_ref(&())
}

fn meta(sc: &StorageCluster, id: &ClusterId, name: String, namespaced: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: namespaced.then(|| id.namespace.clone()),
        labels: Some(object_labels(id)),
        // A cluster-scoped object cannot have a namespaced owner (the garbage collector
        // would treat it as dangling): the finalizer deletes the binding instead.
        owner_references: if namespaced {
            owner_ref(sc).map(|o| vec![o])
        } else {
            None
        },
        ..Default::default()
    }
}

/// Hash of an object as rendered, stored in [`keys::RENDERED_HASH_ANNOTATION`]; the
/// controller applies only when the live object's annotation differs.
pub fn rendered_hash<T: Serialize>(obj: &T) -> String {
    let bytes = serde_json::to_vec(obj).expect("k8s objects serialize");
    Sha256::digest(&bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sets the rendered-hash annotation (computed over the object without it).
fn stamp<T: Resource + Serialize>(mut obj: T) -> T {
    let h = rendered_hash(&obj);
    obj.annotations_mut()
        .insert(keys::RENDERED_HASH_ANNOTATION.into(), h);
    obj
}

/// The hash a live object carries (None: never applied by us, or edited away).
pub fn live_hash<T: Resource>(obj: &T) -> Option<&str> {
    obj.annotations()
        .get(keys::RENDERED_HASH_ANNOTATION)
        .map(String::as_str)
}

/// ServiceAccount `<cluster>-agent` the agent pods run as.
pub fn service_account(sc: &StorageCluster, id: &ClusterId) -> ServiceAccount {
    stamp(ServiceAccount {
        metadata: meta(sc, id, id.agent_name(), true),
        ..Default::default()
    })
}

/// ClusterRoleBinding `ringmaster-agent-<ns>-<name>` of the agent ServiceAccount to the
/// shipped ClusterRole `ringmaster-agent` (the operator only needs `bind` on that role).
pub fn cluster_role_binding(sc: &StorageCluster, id: &ClusterId) -> ClusterRoleBinding {
    stamp(ClusterRoleBinding {
        metadata: meta(sc, id, id.binding_name(), false),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: keys::AGENT_CLUSTER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: id.agent_name(),
            namespace: Some(id.namespace.clone()),
            ..Default::default()
        }]),
    })
}

/// The read-token Secret `<cluster>-read-token` holding `token` (hex; the controller draws
/// the bytes). Owned by the StorageCluster, so the garbage collector removes it with it. The
/// operator only ever creates it (it may not read Secrets): an existing one is left alone,
/// which is how an admin's rotation (`kubectl patch`) survives.
pub fn read_token_secret(sc: &StorageCluster, id: &ClusterId, token: &str) -> Secret {
    Secret {
        metadata: meta(sc, id, id.read_token_name(), true),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            READ_TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// Hex of `bytes` (the token the controller draws is 32 random bytes, sent as 64 hex chars).
pub fn hex_token(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// NetworkPolicy `<cluster>-agent` on the cluster's agent pods: the read port only from
/// `spec.readService.allowedClients` (none listed: pods of the StorageCluster's namespace),
/// the agent's metrics port (`agent-http`, what the PodMonitor scrapes) from anywhere.
/// The kubelet's probes come from the node, which NetworkPolicy never blocks.
pub fn network_policy(sc: &StorageCluster, id: &ClusterId) -> NetworkPolicy {
    let rs = &sc.spec.read_service;
    let from: Vec<NetworkPolicyPeer> = if rs.allowed_clients.is_empty() {
        vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..Default::default()
        }]
    } else {
        rs.allowed_clients
            .iter()
            .map(|c| NetworkPolicyPeer {
                namespace_selector: c.namespace_selector.clone(),
                pod_selector: c.pod_selector.clone(),
                ip_block: None,
            })
            .collect()
    };
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        end_port: None,
    };
    stamp(NetworkPolicy {
        metadata: meta(sc, id, id.agent_name(), true),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(id)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(from),
                    ports: Some(vec![port(i32::from(rs.port))]),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![port(i32::from(keys::AGENT_HTTP_PORT))]),
                },
            ]),
            egress: None,
        }),
    })
}

/// Tolerations of the agent pods: the user's, plus Ringmaster's own taint (the agent
/// must keep running on a node it tainted, or nobody could ever clear the taint).
pub fn tolerations(sc: &StorageCluster) -> Vec<Toleration> {
    let mut t = sc.spec.tolerations.clone();
    let own = Toleration {
        key: Some(keys::TAINT_IO_URING_UNSUPPORTED.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    };
    if !t.contains(&own) {
        t.push(own);
    }
    t
}

fn http_probe(path: &str, port: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn host_path_volume(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(type_.into()),
        }),
        ..Default::default()
    }
}

/// emptyDir the agent writes (config.json), read-only in the reader.
pub const HANDOFF_AGENT_VOLUME: &str = "handoff-agent";
/// emptyDir the reader writes (reader.json), read-only in the agent.
pub const HANDOFF_READER_VOLUME: &str = "handoff-reader";

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The host directory mounted for a data dir: its parent (`/` for `/` itself).
pub fn data_dir_parent(host_path: &str) -> String {
    let p = std::path::Path::new(host_path);
    match (p.file_name(), p.parent()) {
        (Some(_), Some(parent)) => parent.display().to_string(),
        _ => host_path.to_string(),
    }
}

/// Volume name of a data dir (data dir names are DNS labels, so this is one too).
pub fn data_volume_name(dir: &str) -> String {
    format!("data-{dir}")
}

/// The reader's seccomp profile, from `spec.seccomp`.
pub fn seccomp_profile(sc: &StorageCluster) -> SeccompProfile {
    let s = &sc.spec.seccomp;
    match s.type_ {
        SeccompType::RuntimeDefault => SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        },
        SeccompType::Unconfined => SeccompProfile {
            type_: "Unconfined".into(),
            localhost_profile: None,
        },
        SeccompType::Localhost => SeccompProfile {
            type_: "Localhost".into(),
            localhost_profile: s.localhost_profile.clone(),
        },
    }
}

/// The agent's ServiceAccount token, projected like the kubelet's automount (a token bound
/// to the pod, the cluster CA, the namespace) but mounted into the `agent` container only:
/// the reader serves the network and must not hold the agent's identity.
fn agent_token_volume() -> Volume {
    Volume {
        name: "agent-token".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3607),
                        audience: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.namespace".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
            default_mode: Some(0o444),
        }),
        ..Default::default()
    }
}

/// Keeps the pods off `excluded` nodes (served by an older StorageCluster): two agents on
/// one node would share its state, sysctl and files. `metadata.name` is what the DaemonSet
/// controller itself matches nodes by.
pub fn exclusion_affinity(excluded: &BTreeSet<String>) -> Option<Affinity> {
    (!excluded.is_empty()).then(|| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                // One requirement per node (ANDed): the API server allows a single
                // value for In/NotIn on a node field.
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(
                        excluded
                            .iter()
                            .map(|n| NodeSelectorRequirement {
                                key: "metadata.name".into(),
                                operator: "NotIn".into(),
                                values: Some(vec![n.clone()]),
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The agent DaemonSet `<cluster>-agent`: a root but unprivileged `agent` container (tunes sysctls,
/// installs the seccomp profile, labels the node, writes the StorageNode) and an
/// unprivileged `reader` container under `spec.seccomp` (probes io_uring, serves reads).
/// The pod template carries `spec.pod_hash()`: only changes that need new pods roll them;
/// sizing changes reach the agents through their StorageCluster watch. Nodes in
/// `excluded` get no pod.
pub fn daemon_set(
    sc: &StorageCluster,
    id: &ClusterId,
    settings: &RenderSettings,
    excluded: &BTreeSet<String>,
) -> DaemonSet {
    let spec = &sc.spec;
    let state_dir = keys::POD_STATE_DIR;
    let handoff_agent = format!("{state_dir}/{}", keys::HANDOFF_AGENT_DIR);
    let handoff_reader = format!("{state_dir}/{}", keys::HANDOFF_READER_DIR);
    let agent_port = i32::from(keys::AGENT_HTTP_PORT);
    let read_port = i32::from(spec.read_service.port);

    let pod_labels = object_labels(id);
    let pod_annotations =
        BTreeMap::from([(keys::CONFIG_HASH_ANNOTATION.to_string(), spec.pod_hash())]);

    let agent = Container {
        name: AGENT_CONTAINER.into(),
        image: Some(settings.agent_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["ringmaster-agent".into()]),
        args: Some(
            [
                "run",
                "--node-name",
                "$(NODE_NAME)",
                "--cluster",
                &id.key(),
                "--state-dir",
                state_dir,
                "--host-state-dir",
                keys::HOST_STATE_DIR,
                "--http-port",
                &keys::AGENT_HTTP_PORT.to_string(),
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: Some(vec![
            EnvVar {
                name: "NODE_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "spec.nodeName".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            env("RINGMASTER_CLUSTER", &id.key()),
            env("RINGMASTER_PROC_SYS", HOST_PROC_SYS_MOUNT),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("agent-http".into()),
            container_port: agent_port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", agent_port, 10)),
        readiness_probe: Some(http_probe("/readyz", agent_port, 5)),
        resources: spec.agent.resources.clone(),
        // Least privilege, proven on a real node (kubelet + containerd + runc): not privileged,
        // no capabilities, the runtime's default seccomp profile. uid 0 (the image's user is
        // 65532) because what it writes is owned by root with mode 0644/0755: the host's
        // fs.aio-max-nr (through a mount of the host's /proc/sys/fs, its own /proc/sys is
        // read-only), /etc/sysctl.d, the kubelet's seccomp dir, its host state dir. Owner
        // permissions need no capability. It never probes io_uring (the reader does, under the
        // workload's profile).
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount(HANDOFF_AGENT_VOLUME, &handoff_agent, false),
            mount(HANDOFF_READER_VOLUME, &handoff_reader, true),
            mount("host-state", keys::HOST_STATE_DIR, false),
            mount("sysctl-d", HOST_SYSCTL_DIR, false),
            mount("seccomp", AGENT_SECCOMP_MOUNT, false),
            mount("host-proc-sys", HOST_PROC_SYS_MOUNT, true),
            mount(
                "host-proc-sys-fs",
                &format!("{HOST_PROC_SYS_MOUNT}/fs"),
                false,
            ),
            mount("agent-token", AGENT_TOKEN_DIR, true),
        ]),
        ..Default::default()
    };

    // One emptyDir per direction, read-only on the receiving side: the reader (network
    // facing) can never plant anything where the privileged agent writes.
    let mut reader_mounts = vec![
        mount(HANDOFF_AGENT_VOLUME, &handoff_agent, true),
        mount(HANDOFF_READER_VOLUME, &handoff_reader, false),
        // The read token: the reader's alone (the agent has no mount of it).
        mount(READ_TOKEN_VOLUME, READ_TOKEN_DIR, true),
    ];
    let empty_dir = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    let mut volumes = vec![
        empty_dir(HANDOFF_AGENT_VOLUME),
        empty_dir(HANDOFF_READER_VOLUME),
        host_path_volume("host-state", keys::HOST_STATE_DIR, "DirectoryOrCreate"),
        host_path_volume("sysctl-d", HOST_SYSCTL_DIR, "DirectoryOrCreate"),
        host_path_volume("seccomp", &settings.host_seccomp_dir, "DirectoryOrCreate"),
        host_path_volume("host-proc-sys", "/proc/sys", "Directory"),
        host_path_volume("host-proc-sys-fs", "/proc/sys/fs", "Directory"),
        agent_token_volume(),
        Volume {
            name: READ_TOKEN_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(id.read_token_name()),
                // Root-owned, group fsGroup (the reader's gid): readable by the reader only.
                default_mode: Some(0o440),
                items: Some(vec![KeyToPath {
                    key: READ_TOKEN_KEY.into(),
                    path: READ_TOKEN_KEY.into(),
                    mode: None,
                }]),
                optional: None,
            }),
            ..Default::default()
        },
    ];
    for d in &spec.read_service.data_dirs {
        let vol = data_volume_name(&d.name);
        // The data dir's parent, not the dir: a hostPath of type `Directory` that is
        // missing fails the whole pod (FailedMount) and nothing could report it. The
        // parent must exist (we never create host directories); a missing data dir under
        // it becomes the reader's DataDirsReady=False naming the field, the other dirs
        // keep serving, and HostToContainer propagation shows a dir or disk mounted there
        // later. Trade-off: the reader sees the parent's other entries, read-only.
        volumes.push(host_path_volume(
            &vol,
            &data_dir_parent(&d.host_path),
            "Directory",
        ));
        let mut m = mount(&vol, &format!("{DATA_PARENTS_ROOT}/{}", d.name), true);
        m.mount_propagation = Some("HostToContainer".into());
        reader_mounts.push(m);
    }

    let reader = Container {
        name: READER_CONTAINER.into(),
        image: Some(settings.agent_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["ringmaster-agent".into()]),
        args: Some(
            [
                "reader",
                "--state-dir",
                state_dir,
                "--data-root",
                DATA_PARENTS_ROOT,
                "--auth-token-file",
                &format!("{READ_TOKEN_DIR}/{READ_TOKEN_KEY}"),
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: Some(vec![env("RINGMASTER_CLUSTER", &id.key())]),
        ports: Some(vec![ContainerPort {
            name: Some("read".into()),
            container_port: read_port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", read_port, 10)),
        readiness_probe: Some(http_probe("/readyz", read_port, 5)),
        resources: spec.agent.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(READER_UID),
            run_as_group: Some(READER_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(seccomp_profile(sc)),
            ..Default::default()
        }),
        volume_mounts: Some(reader_mounts),
        ..Default::default()
    };

    let node_selector = (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone());
    let mut metadata = meta(sc, id, id.agent_name(), true);
    metadata.annotations = Some(pod_annotations.clone());

    stamp(DaemonSet {
        metadata,
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(id)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(id.agent_name()),
                    // No automount: it would put the token into the reader too.
                    automount_service_account_token: Some(false),
                    node_selector,
                    affinity: exclusion_affinity(excluded),
                    tolerations: Some(tolerations(sc)),
                    // The shared state dir is written by both containers: make it
                    // group-writable for the reader's gid.
                    security_context: Some(PodSecurityContext {
                        fs_group: Some(READER_UID),
                        ..Default::default()
                    }),
                    termination_grace_period_seconds: Some(30),
                    containers: vec![agent, reader],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmaster_api::{DataDir, SeccompSpec, StorageClusterSpec};

    fn cluster(spec: StorageClusterSpec) -> StorageCluster {
        let mut sc = StorageCluster::new("fast", spec);
        sc.metadata.namespace = Some("storage".into());
        sc.metadata.uid = Some("uid-1".into());
        sc
    }

    fn id() -> ClusterId {
        ClusterId {
            namespace: "storage".into(),
            name: "fast".into(),
        }
    }

    fn settings() -> RenderSettings {
        RenderSettings {
            agent_image: "registry.local/ringmaster-agent@sha256:0123".into(),
            host_seccomp_dir: DEFAULT_HOST_SECCOMP_DIR.into(),
        }
    }

    fn render_ds(sc: &StorageCluster) -> DaemonSet {
        daemon_set(sc, &id(), &settings(), &BTreeSet::new())
    }

    fn pod(ds: &DaemonSet) -> &PodSpec {
        ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn container<'a>(ds: &'a DaemonSet, name: &str) -> &'a Container {
        pod(ds).containers.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn names_follow_the_contract() {
        let id = id();
        assert_eq!(id.agent_name(), "fast-agent");
        assert_eq!(id.binding_name(), "ringmaster-agent-storage-fast");
        assert_eq!(id.key(), "storage/fast");
        let sc = cluster(StorageClusterSpec::default());
        let ds = render_ds(&sc);
        assert_eq!(ds.metadata.name.as_deref(), Some("fast-agent"));
        assert_eq!(ds.metadata.namespace.as_deref(), Some("storage"));
        assert_eq!(pod(&ds).service_account_name.as_deref(), Some("fast-agent"));
        let sa = service_account(&sc, &id);
        assert_eq!(sa.metadata.name.as_deref(), Some("fast-agent"));
    }

    #[test]
    fn owned_objects_point_at_the_cluster_except_the_cluster_scoped_binding() {
        let sc = cluster(StorageClusterSpec::default());
        let ds = render_ds(&sc);
        let o = &ds.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(o.kind, "StorageCluster");
        assert_eq!(o.uid, "uid-1");
        assert_eq!(o.controller, Some(true));
        assert!(service_account(&sc, &id())
            .metadata
            .owner_references
            .is_some());
        let crb = cluster_role_binding(&sc, &id());
        assert!(crb.metadata.owner_references.is_none());
        assert_eq!(crb.role_ref.name, "ringmaster-agent");
        let s = &crb.subjects.unwrap()[0];
        assert_eq!(
            (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
            ("ServiceAccount", "fast-agent", Some("storage"))
        );
    }

    #[test]
    fn agent_seccomp_host_dir_is_the_one_given() {
        let ds = daemon_set(
            &cluster(StorageClusterSpec::default()),
            &id(),
            &RenderSettings {
                host_seccomp_dir: "/var/lib/k0s/kubelet/seccomp".into(),
                ..settings()
            },
            &BTreeSet::new(),
        );
        let vol = pod(&ds)
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "seccomp")
            .unwrap();
        assert_eq!(
            vol.host_path.as_ref().unwrap().path,
            "/var/lib/k0s/kubelet/seccomp"
        );
        // Inside the container it stays where `ringmaster-agent run` looks by default.
        let m = container(&ds, "agent")
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "seccomp")
            .unwrap();
        assert_eq!(m.mount_path, AGENT_SECCOMP_MOUNT);
    }

    #[test]
    fn agent_container_is_uid_0_without_privileges_with_host_paths_and_downward_node_name() {
        let ds = render_ds(&cluster(StorageClusterSpec::default()));
        let a = container(&ds, "agent");
        let sc = a.security_context.as_ref().unwrap();
        // The image's user is 65532, who owns none of what the agent writes: uid 0, but
        // nothing more (no privileged, no capabilities, RuntimeDefault).
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.run_as_non_root, Some(false));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(caps.add, None);
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let proc_sys = a
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "RINGMASTER_PROC_SYS")
            .unwrap();
        assert_eq!(proc_sys.value.as_deref(), Some("/host/proc/sys"));
        let args = a.args.as_ref().unwrap().join(" ");
        assert_eq!(
            args,
            "run --node-name $(NODE_NAME) --cluster storage/fast --state-dir /run/ringmaster \
             --host-state-dir /var/lib/ringmaster --http-port 9464"
        );
        let envs = a.env.as_ref().unwrap();
        let node = envs.iter().find(|e| e.name == "NODE_NAME").unwrap();
        let field = &node
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(field.field_path, "spec.nodeName");
        let cl = envs
            .iter()
            .find(|e| e.name == "RINGMASTER_CLUSTER")
            .unwrap();
        assert_eq!(cl.value.as_deref(), Some("storage/fast"));
        let mounts: Vec<_> = a
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(
            mounts,
            [
                "/run/ringmaster/agent",
                "/run/ringmaster/reader",
                "/var/lib/ringmaster",
                "/etc/sysctl.d",
                "/var/lib/kubelet/seccomp",
                "/host/proc/sys",
                "/host/proc/sys/fs",
                "/var/run/secrets/kubernetes.io/serviceaccount"
            ]
        );
        // Only the host's fs sysctls are writable.
        let ro: Vec<_> = a
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.mount_path.starts_with("/host/proc/sys"))
            .map(|m| (m.mount_path.as_str(), m.read_only == Some(true)))
            .collect();
        assert_eq!(ro, [("/host/proc/sys", true), ("/host/proc/sys/fs", false)]);
        let probe = a
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        assert_eq!(probe.port, IntOrString::Int(9464));
        assert_eq!(pod(&ds).host_pid, None);
    }

    #[test]
    fn handoff_dirs_are_one_emptydir_per_direction_read_only_where_received() {
        let ds = render_ds(&cluster(StorageClusterSpec::default()));
        let view = |c: &str| -> Vec<(String, String, bool)> {
            container(&ds, c)
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .filter(|m| m.name.starts_with("handoff-"))
                .map(|m| {
                    (
                        m.name.clone(),
                        m.mount_path.clone(),
                        m.read_only == Some(true),
                    )
                })
                .collect()
        };
        let rw = |n: &str, p: &str, ro: bool| (n.to_string(), p.to_string(), ro);
        assert_eq!(
            view("agent"),
            [
                rw("handoff-agent", "/run/ringmaster/agent", false),
                rw("handoff-reader", "/run/ringmaster/reader", true)
            ]
        );
        assert_eq!(
            view("reader"),
            [
                rw("handoff-agent", "/run/ringmaster/agent", true),
                rw("handoff-reader", "/run/ringmaster/reader", false)
            ]
        );
        let vols = pod(&ds).volumes.as_ref().unwrap();
        for v in ["handoff-agent", "handoff-reader"] {
            let vol = vols.iter().find(|x| x.name == v).unwrap();
            assert!(vol.empty_dir.is_some(), "{v} is an emptyDir");
        }
        assert!(
            !vols.iter().any(|x| x.name == "state"),
            "no shared rw dir left"
        );
    }

    #[test]
    fn reader_is_unprivileged_under_the_cluster_seccomp_profile() {
        let spec = StorageClusterSpec {
            seccomp: SeccompSpec {
                type_: SeccompType::Localhost,
                localhost_profile: Some("ringmaster/io-uring.json".into()),
            },
            ..Default::default()
        };
        let ds = render_ds(&cluster(spec));
        let r = container(&ds, "reader");
        let sc = r.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(65532));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        let p = sc.seccomp_profile.as_ref().unwrap();
        assert_eq!(p.type_, "Localhost");
        assert_eq!(
            p.localhost_profile.as_deref(),
            Some("ringmaster/io-uring.json")
        );
        assert_eq!(
            r.args.as_ref().unwrap().join(" "),
            "reader --state-dir /run/ringmaster --data-root /data-parents --auth-token-file /etc/ringmaster/read-token/token"
        );
        let probe = r
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.port, IntOrString::Int(7480));
    }

    #[test]
    fn data_dirs_mount_their_parents_read_only_under_data_parents() {
        let mut spec = StorageClusterSpec::default();
        spec.read_service.port = 8080;
        spec.read_service.data_dirs = vec![
            DataDir {
                name: "d0".into(),
                host_path: "/srv/storage/d0".into(),
            },
            DataDir {
                name: "root".into(),
                host_path: "/".into(),
            },
        ];
        let ds = render_ds(&cluster(spec));
        let r = container(&ds, "reader");
        let args = r.args.as_ref().unwrap();
        let i = args.iter().position(|a| a == "--data-root").unwrap();
        assert_eq!(args[i + 1], "/data-parents");
        let mounts = r.volume_mounts.as_ref().unwrap();
        let m = mounts.iter().find(|m| m.name == "data-d0").unwrap();
        assert_eq!(m.mount_path, "/data-parents/d0");
        assert_eq!(m.read_only, Some(true));
        assert_eq!(m.mount_propagation.as_deref(), Some("HostToContainer"));
        let vols = pod(&ds).volumes.as_ref().unwrap();
        let hp = |name: &str| {
            vols.iter()
                .find(|v| v.name == name)
                .unwrap()
                .host_path
                .clone()
                .unwrap()
        };
        // The parent, which must exist (type Directory: never created by us); the
        // reader finds d0 at /data-parents/d0/d0 and reports it if missing.
        assert_eq!(hp("data-d0").path, "/srv/storage");
        assert_eq!(hp("data-d0").type_.as_deref(), Some("Directory"));
        assert_eq!(hp("data-root").path, "/");
        assert_eq!(
            r.ports.as_ref().unwrap()[0].container_port,
            8080,
            "read port from spec.readService.port"
        );
        // The agent container never sees the data.
        let a = container(&ds, "agent");
        assert!(a
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .all(|m| !m.name.starts_with("data-")));
    }

    #[test]
    fn read_token_secret_is_owned_by_the_cluster_and_holds_the_token() {
        let sc = cluster(StorageClusterSpec::default());
        let s = read_token_secret(&sc, &id(), "00ff");
        assert_eq!(s.metadata.name.as_deref(), Some("fast-read-token"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("storage"));
        let o = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (o.kind.as_str(), o.uid.as_str()),
            ("StorageCluster", "uid-1")
        );
        assert_eq!(o.controller, Some(true));
        let data = s.data.as_ref().unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data["token"].0, b"00ff");
        assert_eq!(hex_token(&[0, 0xab, 0xff, 7]), "00abff07");
        assert_eq!(hex_token(&[0x5a; 32]).len(), 64);
    }

    #[test]
    fn only_the_reader_mounts_the_read_token_and_serves_with_it() {
        let ds = render_ds(&cluster(StorageClusterSpec::default()));
        let vol = pod(&ds)
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == READ_TOKEN_VOLUME)
            .expect("read-token volume");
        let secret = vol.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("fast-read-token"));
        assert_eq!(secret.default_mode, Some(0o440));
        let mounts = |c: &str| {
            container(&ds, c)
                .volume_mounts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.name == READ_TOKEN_VOLUME)
                .collect::<Vec<_>>()
        };
        assert!(
            mounts(AGENT_CONTAINER).is_empty(),
            "the agent must not see the read token"
        );
        let m = mounts(READER_CONTAINER);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_path, READ_TOKEN_DIR);
        assert_eq!(m[0].read_only, Some(true));
        let args = container(&ds, READER_CONTAINER).args.clone().unwrap();
        let i = args
            .iter()
            .position(|a| a == "--auth-token-file")
            .expect("flag");
        assert_eq!(args[i + 1], format!("{READ_TOKEN_DIR}/token"));
        assert!(!args.iter().any(|a| a == "--allow-unauthenticated"));
        // The probes the kubelet runs against the reader hit the open paths.
        let r = container(&ds, READER_CONTAINER);
        for p in [&r.liveness_probe, &r.readiness_probe] {
            let path = p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
            assert!(
                matches!(path.as_deref(), Some("/healthz") | Some("/readyz")),
                "{path:?}"
            );
        }
    }

    #[test]
    fn network_policy_opens_the_read_port_to_allowed_clients_only() {
        use k8s_openapi::api::networking::v1::NetworkPolicyIngressRule as Rule;
        use ringmaster_api::ReadClient;
        let port_of = |r: &Rule| r.ports.as_ref().unwrap()[0].port.clone();
        // Default: the read port from pods of the cluster's namespace (a podSelector `{}`
        // peer without namespaceSelector), the metrics port from anywhere.
        let sc = cluster(StorageClusterSpec::default());
        let np = network_policy(&sc, &id());
        assert_eq!(np.metadata.name.as_deref(), Some("fast-agent"));
        assert_eq!(np.metadata.namespace.as_deref(), Some("storage"));
        assert_eq!(
            np.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        let spec = np.spec.as_ref().unwrap();
        assert_eq!(
            spec.pod_selector.as_ref().unwrap().match_labels,
            Some(selector_labels(&id()))
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let rules = spec.ingress.as_ref().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(port_of(&rules[0]), Some(IntOrString::Int(7480)));
        let from = rules[0].from.as_ref().unwrap();
        assert_eq!(from.len(), 1);
        assert_eq!(from[0].pod_selector, Some(LabelSelector::default()));
        assert_eq!(from[0].namespace_selector, None);
        assert_eq!(port_of(&rules[1]), Some(IntOrString::Int(9464)));
        assert_eq!(
            rules[1].from, None,
            "the metrics port is open to Prometheus"
        );

        // allowedClients replace the default, peer for peer; the port follows the spec.
        let mut spec = StorageClusterSpec::default();
        spec.read_service.port = 9000;
        let app = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "storage".into())])),
            ..Default::default()
        };
        let team = LabelSelector {
            match_labels: Some(BTreeMap::from([("team".into(), "db".into())])),
            ..Default::default()
        };
        spec.read_service.allowed_clients = vec![
            ReadClient {
                namespace_selector: None,
                pod_selector: Some(app.clone()),
            },
            ReadClient {
                namespace_selector: Some(team.clone()),
                pod_selector: Some(app.clone()),
            },
        ];
        let np2 = network_policy(&cluster(spec), &id());
        let rules = np2.spec.as_ref().unwrap().ingress.clone().unwrap();
        assert_eq!(port_of(&rules[0]), Some(IntOrString::Int(9000)));
        let from = rules[0].from.clone().unwrap();
        assert_eq!(from.len(), 2);
        assert_eq!(
            (
                from[0].namespace_selector.clone(),
                from[0].pod_selector.clone()
            ),
            (None, Some(app.clone()))
        );
        assert_eq!(
            (
                from[1].namespace_selector.clone(),
                from[1].pod_selector.clone()
            ),
            (Some(team), Some(app))
        );
        // A change of allowedClients is a new hash: the controller applies it.
        assert_ne!(live_hash(&np), live_hash(&np2));
    }

    #[test]
    fn data_dir_parent_of_paths() {
        assert_eq!(data_dir_parent("/srv/storage/d0"), "/srv/storage");
        assert_eq!(data_dir_parent("/srv/storage/d0/"), "/srv/storage");
        assert_eq!(data_dir_parent("/d0"), "/");
        assert_eq!(data_dir_parent("/"), "/");
    }

    #[test]
    fn selector_and_tolerations_come_from_the_spec_plus_our_taint() {
        let mut spec = StorageClusterSpec::default();
        spec.node_selector.insert("tier".into(), "storage".into());
        spec.tolerations.push(Toleration {
            key: Some("kwok.x-k8s.io/node".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        });
        let ds = render_ds(&cluster(spec));
        let p = pod(&ds);
        assert_eq!(
            p.node_selector
                .as_ref()
                .unwrap()
                .get("tier")
                .map(String::as_str),
            Some("storage")
        );
        let keys: Vec<_> = p
            .tolerations
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| t.key.clone().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["kwok.x-k8s.io/node", "ringmaster.io/io-uring-unsupported"]
        );
        // An empty selector renders as none (every node).
        let ds = render_ds(&cluster(StorageClusterSpec::default()));
        assert!(pod(&ds).node_selector.is_none());
    }

    #[test]
    fn only_pod_relevant_changes_change_the_pod_template() {
        let base = cluster(StorageClusterSpec::default());
        let template = |sc: &StorageCluster| {
            serde_json::to_value(&render_ds(sc).spec.unwrap().template).unwrap()
        };
        let mut sizing = base.clone();
        sizing.spec.aio.max_events = 2048;
        sizing.spec.aio.workers = 32;
        sizing.spec.sysctl.aio_max_nr = 4_000_000;
        sizing.spec.read_service.limits.max_range_bytes = 4096;
        sizing.spec.read_service.limits.open_file_cache.entries = 0;
        assert_eq!(
            template(&base),
            template(&sizing),
            "sizing and read limits are hot-reloaded"
        );
        assert_eq!(
            rendered_hash(&render_ds(&base)),
            rendered_hash(&render_ds(&sizing)),
            "a sizing change writes nothing"
        );
        let mut image = base.clone();
        image.spec.agent.image = Some("registry.local/ringmaster-agent:2".into());
        assert_eq!(
            template(&base),
            template(&image),
            "spec.agent.image is ignored"
        );
        image.spec.seccomp.type_ = SeccompType::Unconfined;
        assert_ne!(template(&base), template(&image));
        let hash = |sc: &StorageCluster| {
            render_ds(sc)
                .spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[keys::CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_eq!(hash(&base), base.spec.pod_hash());
        assert_ne!(hash(&base), hash(&image));
    }

    #[test]
    fn both_containers_run_the_admins_image_whatever_the_spec_names() {
        let mut sc = cluster(StorageClusterSpec::default());
        sc.spec.agent.image = Some("example.invalid/evil:1".into());
        let ds = render_ds(&sc);
        for c in &pod(&ds).containers {
            assert_eq!(
                c.image.as_deref(),
                Some("registry.local/ringmaster-agent@sha256:0123"),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn only_the_agent_container_gets_the_service_account_token() {
        let ds = render_ds(&cluster(StorageClusterSpec::default()));
        let p = pod(&ds);
        // Automount would put the token into every container, the reader included.
        assert_eq!(p.automount_service_account_token, Some(false));
        let token_mount = |c: &Container| {
            c.volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path == AGENT_TOKEN_DIR)
                .cloned()
        };
        let m = token_mount(container(&ds, "agent")).expect("agent has the token");
        assert_eq!((m.name.as_str(), m.read_only), ("agent-token", Some(true)));
        let reader = container(&ds, "reader");
        assert!(token_mount(reader).is_none());
        assert!(reader
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != "agent-token" && !m.mount_path.starts_with("/var/run/secrets")));
        let v = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "agent-token")
            .unwrap();
        let sources = v.projected.as_ref().unwrap().sources.as_ref().unwrap();
        let t = sources[0].service_account_token.as_ref().unwrap();
        assert_eq!((t.path.as_str(), t.audience.as_deref()), ("token", None));
        assert_eq!(
            sources[1].config_map.as_ref().unwrap().name,
            "kube-root-ca.crt"
        );
    }

    #[test]
    fn excluded_nodes_get_no_pod() {
        let sc = cluster(StorageClusterSpec::default());
        assert!(pod(&render_ds(&sc)).affinity.is_none());
        let excluded = BTreeSet::from(["n1".to_string(), "n2".to_string()]);
        let d = daemon_set(&sc, &id(), &settings(), &excluded);
        let terms = &pod(&d)
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        let fields: Vec<_> = terms[0]
            .match_fields
            .iter()
            .flatten()
            .map(|f| (f.key.as_str(), f.operator.as_str(), f.values.clone()))
            .collect();
        // One value per requirement: the API server refuses more for a node field.
        assert_eq!(
            fields,
            [
                ("metadata.name", "NotIn", Some(vec!["n1".to_string()])),
                ("metadata.name", "NotIn", Some(vec!["n2".to_string()]))
            ]
        );
    }

    #[test]
    fn rendered_hash_is_stamped_and_stable() {
        let sc = cluster(StorageClusterSpec::default());
        let a = render_ds(&sc);
        let b = render_ds(&sc);
        assert_eq!(live_hash(&a), live_hash(&b));
        assert_eq!(live_hash(&a).unwrap().len(), 16);
        let mut moved = sc.clone();
        moved.spec.read_service.port = 9000;
        assert_ne!(live_hash(&a), live_hash(&render_ds(&moved)));
    }
}
