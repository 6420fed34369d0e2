//! ServiceAccount identities for the processes under test: `system:masters` bypasses RBAC,
//! so the operator and agents run with pod-bound tokens and their RBAC is what is tested.

use std::path::{Path, PathBuf};

use base64::Engine;

use crate::env::{apiserver_url, kubeconfig_path, log_dir};
use crate::kubectl::kubectl;

/// A token for ServiceAccount `ns/sa`, bound to pod `ns/pod` (`kubectl create token
/// --bound-object-kind Pod`): it dies with the pod and carries the pod's node in the
/// `kubernetes.io.node.name` and `authentication.kubernetes.io/node-name` claims once the
/// pod is scheduled. Valid for one hour.
pub fn pod_token(ns: &str, sa: &str, pod: &str) -> String {
    let out = kubectl([
        "create",
        "token",
        sa,
        "-n",
        ns,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        pod,
        "--duration",
        "1h",
    ])
    .ok();
    out.trim().to_string()
}

/// Writes a kubeconfig that talks to the test API server as `token` and returns its path
/// (`<log dir>/<name>.kubeconfig`). Pass it to a process as `KUBECONFIG`.
pub fn write_token_kubeconfig(name: &str, token: &str) -> PathBuf {
    let path = log_dir().join(format!("{name}.kubeconfig"));
    write_kubeconfig(&path, token);
    path
}

fn write_kubeconfig(path: &Path, token: &str) {
    let admin = kube::config::Kubeconfig::read_from(kubeconfig_path()).expect("admin kubeconfig");
    let ca = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .expect("admin kubeconfig embeds certificate-authority-data (hack/cluster.sh writes it)");
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ringmaster", "cluster": {
            "server": apiserver_url(),
            "certificate-authority-data": ca,
        }}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "ringmaster", "user": "sa"}}],
        "current-context": "sa",
    });
    std::fs::write(path, serde_yaml::to_string(&doc).expect("yaml"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The claims of a JWT (no signature check: for asserting what the server put in).
pub fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {token:.20}…"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}
