//! Harness for end-to-end tests against the real control plane that `hack/cluster.sh up`
//! started. Tests need `KUBECONFIG` (and, to run project binaries, `RINGMASTER_BIN_DIR`)
//! and fail, never skip, without them. See e2e/README.md.
//!
//! Everything panics with a message that says what was expected and what happened, so a
//! test reads as a list of steps with no error plumbing.

mod control_plane;
mod env;
mod kubectl;
mod namespace;
mod nodes;
mod process;
mod resources;
mod token;
mod wait;

pub use control_plane::restart_control_plane_component;
pub use env::{
    apiserver_url, bin_dir, client, kubeconfig_path, log_dir, repo_root, scratch_dir, unique_name,
};
pub use kubectl::{kubectl, kubectl_ok, kubectl_stdin, KubectlOutput};
pub use namespace::TestNamespace;
pub use nodes::{
    delete_node, wait_node_ready, FakeNode, FakeNodeHandle, KWOK_ANNOTATION, KWOK_TAINT_KEY,
};
pub use process::{spawn_bin, spawn_program, Process};
pub use resources::{install_crds, wait_crd_established, CRD_NAMES};
pub use token::{jwt_claims, pod_token, write_token_kubeconfig};
pub use wait::{wait_for, wait_for_sync};
