//! What a StorageCluster may ask of a node. Creating one is a namespaced right, but its
//! agent runs privileged on every node it selects, so the dangerous choices belong to the
//! cluster admin: the static limits below (the CRD's CEL rules say the same, so the API
//! server refuses first) and [`AdminPolicy`] (operator flags; the chart's admission policy
//! says the same). The operator checks both again and renders nothing for a spec that
//! breaks them. Pure: no I/O.

use crate::{SeccompType, StorageClusterSpec};

/// Largest `spec.sysctl.aioMaxNr` (2^30 events; each pins at least 32 bytes of ring
/// memory in the kernel, so 32 GiB). The CRD schema has the same maximum.
pub const MAX_AIO_MAX_NR: u64 = 1 << 30;
/// Largest libaio demand a spec may compute (`workers × maxEvents × processesPerNode`).
pub const MAX_STORAGE_EVENTS: u64 = 1 << 30;

/// Host directories a data dir's parent may not be, lie under, or contain: the reader is
/// given the parent, read-only, with every mount below it. `/` is refused too (a data dir
/// needs a parent other than `/`).
pub const FORBIDDEN_HOST_PATHS: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/opt/cni",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/var/lib/docker",
    "/var/lib/etcd",
    "/var/lib/kubelet",
    "/var/lib/ringmaster",
    "/var/log",
    "/var/run",
];

/// The CRD's CEL rule on `hostPath` for [`FORBIDDEN_HOST_PATHS`]: the parent is not `/`
/// and is not, lies not under and contains no forbidden directory.
pub fn host_path_parent_rule() -> String {
    let list = FORBIDDEN_HOST_PATHS
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    // The parent is, or lies under, p exactly when the path lies strictly under p; the
    // parent contains p when p starts with "<parent>/". Kept this small so the API server's
    // cost estimate (64 data dirs × maxLength) fits its budget.
    format!(
        "self.lastIndexOf('/') > 0 && ![{list}].exists(p, self.startsWith(p + '/') || p.startsWith(self.substring(0, self.lastIndexOf('/') + 1)))"
    )
}

/// The message of [`host_path_parent_rule`].
pub fn host_path_parent_message() -> String {
    format!(
        "spec.readService.dataDirs[].hostPath: the reader is given this directory's parent, read-only, so the parent may not be / nor be, lie under or contain a system directory ({}): put data dirs under a directory of their own, e.g. /srv/storage/data0",
        FORBIDDEN_HOST_PATHS.join(", ")
    )
}

/// Taint keys of control-plane nodes; tolerating them needs the admin's opt-in.
pub const CONTROL_PLANE_TAINTS: &[&str] = &[
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

/// The admin's settings (operator flags, chart values of the same names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminPolicy {
    /// Data dirs must lie strictly below one of these (empty: no data dirs at all).
    pub allowed_data_dir_roots: Vec<String>,
    /// `spec.seccomp.type: Unconfined` is allowed.
    pub allow_unconfined_seccomp: bool,
    /// Tolerations of the control-plane taints (or of every taint) are allowed.
    pub allow_control_plane_tolerations: bool,
}

/// One refused field: `field` is its path (`spec.readService.dataDirs[0].hostPath`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A clean absolute path: `/a/b`, no empty, `.` or `..` component, no trailing `/`.
pub fn is_clean_absolute(path: &str) -> bool {
    path.len() > 1
        && path.starts_with('/')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Parent of a clean absolute path (`/` for `/x`).
pub fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// `path` is `root` or lies below it (both clean, or `/`).
pub fn is_within(path: &str, root: &str) -> bool {
    root == "/" || path == root || path.starts_with(&format!("{root}/"))
}

/// Why a data dir's host path is refused whatever the admin allows, if it is.
pub fn forbidden_host_path(host_path: &str) -> Option<String> {
    if !is_clean_absolute(host_path) {
        return Some(format!(
            "{host_path:?} must be a clean absolute path (no '.', '..', '//' or trailing '/'), e.g. /srv/storage/data0"
        ));
    }
    let parent = parent_of(host_path);
    let hit = FORBIDDEN_HOST_PATHS
        .iter()
        .find(|p| parent == "/" || is_within(parent, p) || is_within(p, parent))?;
    Some(format!(
        "the reader is given the parent {parent:?} read-only, and a parent that is, lies under or contains a system directory ({hit}; refused: / and {}) exposes the host: put data dirs under a directory of their own, e.g. /srv/storage/data0",
        FORBIDDEN_HOST_PATHS.join(", ")
    ))
}

/// Every way `spec` breaks the static limits or the admin's settings, field by field.
pub fn violations(spec: &StorageClusterSpec, admin: &AdminPolicy) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut refuse = |field: String, message: String| out.push(Violation { field, message });
    if spec.agent.image.is_some() {
        refuse(
            "spec.agent.image".into(),
            "is no longer accepted: the cluster admin sets the agent image (chart value agent.image, operator flag --agent-image); remove the field".into(),
        );
    }
    if spec.sysctl.aio_max_nr > MAX_AIO_MAX_NR {
        refuse(
            "spec.sysctl.aioMaxNr".into(),
            format!(
                "{} is above the maximum {MAX_AIO_MAX_NR}",
                spec.sysctl.aio_max_nr
            ),
        );
    }
    let need = crate::sizing::storage_events(
        spec.aio.processes_per_node.into(),
        spec.aio.workers.into(),
        spec.aio.max_events.into(),
    );
    if need > MAX_STORAGE_EVENTS {
        refuse(
            "spec.aio".into(),
            format!("workers × maxEvents × processesPerNode = {need} libaio events is above the maximum {MAX_STORAGE_EVENTS}: lower spec.aio.workers, spec.aio.maxEvents or spec.aio.processesPerNode"),
        );
    }
    for (i, d) in spec.read_service.data_dirs.iter().enumerate() {
        let field = format!("spec.readService.dataDirs[{i}].hostPath");
        if let Some(why) = forbidden_host_path(&d.host_path) {
            refuse(field, why);
            continue;
        }
        let parent = parent_of(&d.host_path);
        if !admin
            .allowed_data_dir_roots
            .iter()
            .any(|r| is_within(parent, r))
        {
            let allowed = if admin.allowed_data_dir_roots.is_empty() {
                "none: the admin allows no data dirs (chart value agent.allowedDataDirRoots, operator flag --allowed-data-dir-root)".to_string()
            } else {
                admin.allowed_data_dir_roots.join(", ")
            };
            refuse(
                field,
                format!(
                    "{:?} is not below a data dir root the admin allows ({allowed}); a data dir must lie strictly below an allowed root",
                    d.host_path
                ),
            );
        }
    }
    if spec.seccomp.type_ == SeccompType::Unconfined && !admin.allow_unconfined_seccomp {
        refuse(
            "spec.seccomp.type".into(),
            "Unconfined is not allowed by the admin (chart value agent.allowUnconfinedSeccomp, operator flag --allow-unconfined-seccomp): use RuntimeDefault or Localhost with ringmaster/io-uring.json".into(),
        );
    }
    if !admin.allow_control_plane_tolerations {
        for (i, t) in spec.tolerations.iter().enumerate() {
            if tolerates_control_plane(t) {
                refuse(
                    format!("spec.tolerations[{i}]"),
                    "tolerates the control-plane taints, which the admin does not allow (chart value agent.allowControlPlaneTolerations, operator flag --allow-control-plane-tolerations): name the storage nodes' own taint instead".into(),
                );
            }
        }
    }
    out
}

/// A toleration that lets pods onto control-plane nodes: their taint key, or any key.
pub fn tolerates_control_plane(t: &k8s_openapi::api::core::v1::Toleration) -> bool {
    let key = t.key.as_deref().unwrap_or("");
    let effect_hits = matches!(t.effect.as_deref(), None | Some("") | Some("NoSchedule"));
    effect_hits && (key.is_empty() || CONTROL_PLANE_TAINTS.contains(&key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataDir;
    use k8s_openapi::api::core::v1::Toleration;

    fn admin(roots: &[&str]) -> AdminPolicy {
        AdminPolicy {
            allowed_data_dir_roots: roots.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }
    }

    fn with_dirs(paths: &[&str]) -> StorageClusterSpec {
        let mut s = StorageClusterSpec::default();
        s.read_service.data_dirs = paths
            .iter()
            .enumerate()
            .map(|(i, p)| DataDir {
                name: format!("d{i}"),
                host_path: p.to_string(),
            })
            .collect();
        s
    }

    fn fields(v: &[Violation]) -> Vec<&str> {
        v.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn default_spec_breaks_nothing() {
        assert!(violations(&StorageClusterSpec::default(), &AdminPolicy::default()).is_empty());
    }

    #[test]
    fn system_directories_are_refused_even_when_allowed() {
        let everything = admin(&["/"]);
        for p in [
            "/",
            "/etc",
            "/etc/data",
            "/srv",
            "/proc/1",
            "/var/lib/kubelet",
            "/var/lib/kubelet/pods",
            "/var/data",
            "/var/lib/data",
            "/run/x",
            "/var/run/x",
            "/root/data",
            "/boot/x",
            "/usr/share/x",
            "/srv/a/",
            "/srv//a",
            "/srv/./a",
            "relative/a",
        ] {
            let v = violations(&with_dirs(&[p]), &everything);
            assert_eq!(
                fields(&v),
                ["spec.readService.dataDirs[0].hostPath"],
                "{p} must be refused"
            );
        }
        assert!(violations(&with_dirs(&["/srv/storage/d0"]), &everything).is_empty());
        assert!(violations(&with_dirs(&["/var/lib/storage/d0"]), &everything).is_empty());
    }

    #[test]
    fn data_dirs_must_lie_strictly_below_an_allowed_root() {
        let a = admin(&["/srv/storage", "/mnt/disks"]);
        assert!(violations(&with_dirs(&["/srv/storage/d0", "/mnt/disks/x/y"]), &a).is_empty());
        // Equal to the root: its parent (what the reader gets) is outside it.
        let v = violations(&with_dirs(&["/srv/ok/d0", "/srv/storage"]), &a);
        assert_eq!(
            fields(&v),
            [
                "spec.readService.dataDirs[0].hostPath",
                "spec.readService.dataDirs[1].hostPath"
            ]
        );
        assert!(v[0].message.contains("/srv/storage, /mnt/disks"));
        // A sibling sharing a prefix is not below the root.
        let v = violations(&with_dirs(&["/srv/storage2/d0"]), &a);
        assert_eq!(v.len(), 1);
        // No roots: no data dirs.
        let v = violations(&with_dirs(&["/srv/storage/d0"]), &AdminPolicy::default());
        assert!(v[0].message.contains("allows no data dirs"), "{}", v[0]);
    }

    #[test]
    fn unconfined_and_control_plane_tolerations_need_the_admin() {
        let mut s = StorageClusterSpec::default();
        s.seccomp.type_ = SeccompType::Unconfined;
        s.tolerations = vec![
            Toleration {
                key: Some("dedicated".into()),
                operator: Some("Equal".into()),
                value: Some("storage".into()),
                ..Default::default()
            },
            Toleration {
                key: Some("node-role.kubernetes.io/control-plane".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            },
            Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            },
        ];
        let v = violations(&s, &AdminPolicy::default());
        assert_eq!(
            fields(&v),
            [
                "spec.seccomp.type",
                "spec.tolerations[1]",
                "spec.tolerations[2]"
            ]
        );
        let open = AdminPolicy {
            allow_unconfined_seccomp: true,
            allow_control_plane_tolerations: true,
            ..Default::default()
        };
        assert!(violations(&s, &open).is_empty());
    }

    #[test]
    fn image_and_aio_limits_are_refused_naming_the_field() {
        let mut s = StorageClusterSpec::default();
        s.agent.image = Some("example.invalid/evil:1".into());
        s.sysctl.aio_max_nr = MAX_AIO_MAX_NR + 1;
        s.aio.workers = 1024;
        s.aio.max_events = 32768;
        s.aio.processes_per_node = 64;
        let v = violations(&s, &AdminPolicy::default());
        assert_eq!(
            fields(&v),
            ["spec.agent.image", "spec.sysctl.aioMaxNr", "spec.aio"]
        );
        s.aio.processes_per_node = 32; // exactly 2^30
        s.sysctl.aio_max_nr = MAX_AIO_MAX_NR;
        s.agent.image = None;
        assert!(violations(&s, &AdminPolicy::default()).is_empty());
    }
}
