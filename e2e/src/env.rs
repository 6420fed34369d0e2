//! Where the test environment is: kubeconfig, API server, project binaries, logs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const HOW_TO_START: &str =
    "start a control plane first: eval \"$(hack/cluster.sh up)\" (e2e tests never skip)";

/// The admin kubeconfig from `KUBECONFIG`; panics when it is unset or missing.
pub fn kubeconfig_path() -> PathBuf {
    let p = std::env::var_os("KUBECONFIG")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("KUBECONFIG is not set: {HOW_TO_START}"));
    let p = PathBuf::from(p);
    assert!(
        p.is_file(),
        "KUBECONFIG={} does not exist: is the cluster down? {HOW_TO_START}",
        p.display()
    );
    p
}

/// An admin client (`system:masters`, bypasses RBAC) from `KUBECONFIG`.
/// Run project binaries under ServiceAccount identities instead (see [`crate::pod_token`]).
pub async fn client() -> kube::Client {
    let path = kubeconfig_path();
    let kc = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("reading KUBECONFIG {}: {e}", path.display()));
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("KUBECONFIG {}: {e}", path.display()));
    kube::Client::try_from(cfg).expect("building the admin client")
}

/// `https://127.0.0.1:PORT` of the API server: `RINGMASTER_APISERVER`, else the
/// current cluster's server in `KUBECONFIG`.
pub fn apiserver_url() -> String {
    if let Some(u) = std::env::var("RINGMASTER_APISERVER")
        .ok()
        .filter(|u| !u.is_empty())
    {
        return u;
    }
    let path = kubeconfig_path();
    let kc = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("reading KUBECONFIG {}: {e}", path.display()));
    kc.clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .unwrap_or_else(|| panic!("KUBECONFIG {} names no server", path.display()))
}

/// The repository root (crds/, examples/, hack/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// Directory of the project's built binaries, `RINGMASTER_BIN_DIR`; panics when unset.
pub fn bin_dir() -> PathBuf {
    let d = std::env::var_os("RINGMASTER_BIN_DIR")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "RINGMASTER_BIN_DIR is not set: build the binaries (cargo build --workspace --bins) \
                 and point it at their dir, e.g. RINGMASTER_BIN_DIR=$PWD/target/debug"
            )
        });
    PathBuf::from(d)
}

/// Where process logs and token kubeconfigs go: `RINGMASTER_E2E_LOG_DIR`, else
/// `$TMPDIR/ringmaster-e2e`.
pub fn log_dir() -> PathBuf {
    let d = std::env::var_os("RINGMASTER_E2E_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ringmaster-e2e"));
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    d
}

/// Where tests put host directories that a StorageCluster names (data dirs, scratch state):
/// `$TMPDIR/ringmaster-e2e-scratch`, never the log dir. The log dir may sit below a home
/// directory (CI keeps it in the cargo target dir under ~/.cache), which the CRD refuses as a
/// data dir root and which another uid may not enter.
pub fn scratch_dir() -> PathBuf {
    let d = std::env::temp_dir().join("ringmaster-e2e-scratch");
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    d
}

/// `prefix-xxxxxx`: a DNS-1123 name unique across tests, runs and side-by-side clusters.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ u64::from(N.fetch_add(1, Ordering::Relaxed)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // splitmix64 finaliser: spreads the bits so names differ in their first characters.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    format!("{prefix}-{:06x}", x & 0xff_ffff)
}
