//! `ringmaster-agent run`: the privileged node agent in a cluster. Kubernetes glue only —
//! it knows nothing of rings: the io_uring verdict comes from the unprivileged reader
//! process through the handoff files (a privileged process is never seccomp-filtered, so
//! only the reader can probe what the workload will get), the sysctl arithmetic from
//! `ringmaster_api::sizing`.
//!
//! - [`desired`]  what the StorageCluster asks of this node
//! - [`tuning`]   fs.aio-max-nr: raise/verify, drift, restore
//! - [`report`]   verdict → StorageNode status, conditions, settings (pure)
//! - [`labels`]   owned node labels and the taint (pure)
//! - [`node`]     writes to the Node and the StorageNode
//! - [`events`]   Kubernetes Events on transitions
//! - [`heartbeat`] renewing the StorageNode's heartbeat (pure)
//! - [`http`]     `/metrics`, `/healthz`, `/readyz`
//! - [`watched`]  one watch per object (StorageCluster, Node, StorageNode)
//! - [`agent`]    the loop tying them together

pub mod agent;
pub mod desired;
pub mod events;
pub mod heartbeat;
pub mod http;
pub mod labels;
pub mod node;
pub mod report;
pub mod seccomp;
pub mod tuning;
pub mod watched;

use std::path::PathBuf;

/// Flags of `ringmaster-agent run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Name of the Node this agent runs on (from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The StorageCluster to serve, as NAMESPACE/NAME.
    #[arg(long, env = "RINGMASTER_CLUSTER", value_parser = parse_cluster)]
    pub cluster: (String, String),
    /// Handoff root shared with the reader container: `agent/` (config.json, agent.addr;
    /// written here) and `reader/` (reader.json; read as untrusted input).
    #[arg(long, default_value = ringmaster_api::keys::POD_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Host dir for what must outlive the pod: the original fs.aio-max-nr, aio.toml, aio.env.
    #[arg(long, default_value = ringmaster_api::keys::HOST_STATE_DIR)]
    pub host_state_dir: PathBuf,
    /// Port of /metrics, /healthz, /readyz (0: any free port).
    #[arg(long, default_value_t = ringmaster_api::keys::AGENT_HTTP_PORT)]
    pub http_port: u16,
    /// Address the HTTP endpoint binds to.
    #[arg(long, default_value = "0.0.0.0")]
    pub http_addr: std::net::IpAddr,
    /// Seconds between local passes: fs.aio-max-nr drift, labels and taint against the
    /// watched Node, the StorageNode against the watched one. No API request unless
    /// something must be written (the Node and StorageNode come through their watches).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_seconds: u64,
    /// Seconds between renewals of the StorageNode's heartbeat, a steady agent's only
    /// write. The operator counts a report as stale after 3 × (this + --resync-seconds)
    /// without one: the default notices a silent agent within 31.5 minutes at 6 writes
    /// an hour per agent (docs/agent.md, "API footprint").
    #[arg(long, env = "RINGMASTER_HEARTBEAT_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_seconds: u64,
    /// Seconds the API server keeps each of the agent's three watches (StorageCluster,
    /// Node, StorageNode) open before the agent opens the next one; each agent adds up to
    /// half again at random so a fleet does not re-watch at once. A silently dropped
    /// connection is noticed only after this long.
    #[arg(long, env = "RINGMASTER_WATCH_TIMEOUT_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u32).range(10..))]
    pub watch_timeout_seconds: u32,
    /// Milliseconds between polls of the reader's report.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..))]
    pub reader_poll_ms: u64,
    /// Kubelet seccomp dir where the shipped Localhost profile is installed (as
    /// ringmaster/io-uring.json). Empty: do not install.
    #[arg(long, default_value = "/var/lib/kubelet/seccomp")]
    pub seccomp_profile_dir: PathBuf,
    /// Directory of the sysctl.d file written with `sysctl.persist`.
    #[arg(long, default_value = "/etc/sysctl.d")]
    pub sysctl_d_dir: PathBuf,
}

fn parse_cluster(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.into(), name.into()))
        }
        _ => Err(format!(
            "--cluster/RINGMASTER_CLUSTER must be NAMESPACE/NAME of a StorageCluster, got '{s}'"
        )),
    }
}

/// Entry point of `ringmaster-agent run`: exit 0 on SIGTERM, 1 on a fatal error.
pub fn run(args: RunArgs) -> i32 {
    crate::init_tracing();
    let Some(rt) = crate::async_runtime(Some(2)) else {
        return 1;
    };
    match rt.block_on(agent::run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_flag_is_namespace_slash_name() {
        assert_eq!(
            parse_cluster("storage/main").unwrap(),
            ("storage".into(), "main".into())
        );
        for bad in ["main", "/main", "storage/", "a/b/c"] {
            let e = parse_cluster(bad).unwrap_err();
            assert!(e.contains("NAMESPACE/NAME"), "{e}");
        }
    }
}
