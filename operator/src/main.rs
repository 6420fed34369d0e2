//! `ringmaster-operator`: turns each StorageCluster into an agent DaemonSet (plus its
//! ServiceAccount and RBAC binding) and aggregates the agents' StorageNode reports
//! into one status. See docs/operator.md.

mod controller;
mod finalizer;
#[cfg(test)]
mod fixtures;
mod leader;
mod metrics;
mod pacing;
mod read_access;
mod render;
mod scheduling;
mod staleness;
mod status;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use clap::{Parser, ValueEnum};
use kube::client::ClientBuilder;
use kube::Config;
use tracing::{error, info};

use crate::metrics::Metrics;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// Reconciles StorageClusters into a node-agent fleet and one honest status.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Watch StorageClusters only in this namespace (default: all namespaces).
    #[arg(long, env = "RINGMASTER_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "ringmaster-operator")]
    lease_name: String,
    /// Seconds a Lease stays valid without renewal (failover time after a crash).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    lease_duration: u64,
    /// Take part in leader election (`--leader-elect=false` for a single local replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// This replica's identity in the Lease and in Events (default: hostname-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Seconds the finalizer waits for agents to restore their nodes before it removes
    /// leftover labels and taints itself.
    #[arg(long, default_value_t = 60)]
    cleanup_timeout: u64,
    /// Seconds between safety-net resyncs of a steady StorageCluster (no writes when
    /// nothing changed).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    resync: u64,
    /// Seconds between re-checks of each cluster's read-token Secret (created again if
    /// deleted) and read NetworkPolicy (put back if edited), which the operator does not watch
    /// (it may not read Secrets). Each re-check is a write, so it is rarer than --resync.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    read_access_recheck: u64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Image of the agent pods (both containers), by digest where you can
    /// (`repo@sha256:...`). A StorageCluster cannot choose it: the agent runs as root.
    #[arg(long, env = "RINGMASTER_AGENT_IMAGE", default_value = ringmaster_api::DEFAULT_AGENT_IMAGE, value_parser = parse_image)]
    agent_image: String,
    /// Host directory below which data dirs may lie (repeat, or comma-separated). None by
    /// default: no StorageCluster may serve host data until the admin names a root.
    #[arg(long = "allowed-data-dir-root", value_delimiter = ',', value_parser = parse_root)]
    allowed_data_dir_roots: Vec<String>,
    /// Let StorageClusters run the reader with `spec.seccomp.type: Unconfined`.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    allow_unconfined_seccomp: bool,
    /// Let StorageClusters tolerate the control-plane taints (and so run agents there).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    allow_control_plane_tolerations: bool,
    /// The kubelet's seccomp dir on the nodes (`<kubelet root dir>/seccomp`): the agents
    /// install the Localhost profile ringmaster/io-uring.json there.
    #[arg(long, default_value = render::DEFAULT_HOST_SECCOMP_DIR, value_parser = parse_seccomp_dir)]
    agent_seccomp_dir: String,
}

fn parse_image(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return Err(format!(
            "{s:?} is not an image reference (e.g. ghcr.io/ringmaster-io/ringmaster-agent@sha256:...)"
        ));
    }
    Ok(s.into())
}

fn parse_root(s: &str) -> Result<String, String> {
    if !ringmaster_api::limits::is_clean_absolute(s) {
        return Err(format!(
            "{s:?} must be a clean absolute directory other than / (e.g. /srv/storage)"
        ));
    }
    Ok(s.into())
}

fn parse_seccomp_dir(s: &str) -> Result<String, String> {
    if !ringmaster_api::limits::is_clean_absolute(s) {
        return Err(format!(
            "{s:?} must be the kubelet's seccomp dir as a clean absolute host path (e.g. /var/lib/kubelet/seccomp)"
        ));
    }
    Ok(s.into())
}

#[derive(Clone)]
struct Http {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn metrics_handler(State(s): State<Http>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn readyz(State(s): State<Http>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn,kube_lease_manager=warn".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let metrics = Arc::new(Metrics::default());
    metrics.init_error_kinds(&controller::ERROR_KINDS);
    let ready = Arc::new(AtomicBool::new(false));

    let config = Config::infer()
        .await
        .context("no Kubernetes config: run in a pod or set KUBECONFIG")?;
    let client = ClientBuilder::try_from(config)
        .context("building the Kubernetes client")?
        .with_layer(&metrics.write_counter())
        .build();

    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Http {
            metrics: Arc::clone(&metrics),
            ready: Arc::clone(&ready),
        });
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("--metrics-addr {}: cannot listen", args.metrics_addr))?;
    info!(addr = %listener.local_addr()?, "serving /metrics /healthz /readyz");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let identity = args.identity.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "ringmaster-operator".into()),
            std::process::id()
        )
    });
    let settings = controller::Settings {
        namespace: args.namespace.clone(),
        cleanup_timeout: Duration::from_secs(args.cleanup_timeout),
        resync: Duration::from_secs(args.resync),
        read_access_recheck: Duration::from_secs(args.read_access_recheck),
        instance: identity.clone(),
        render: render::RenderSettings {
            agent_image: args.agent_image.clone(),
            host_seccomp_dir: args.agent_seccomp_dir.clone(),
        },
        policy: ringmaster_api::limits::AdminPolicy {
            allowed_data_dir_roots: args.allowed_data_dir_roots.clone(),
            allow_unconfined_seccomp: args.allow_unconfined_seccomp,
            allow_control_plane_tolerations: args.allow_control_plane_tolerations,
        },
    };
    info!(
        agent_image = %args.agent_image,
        allowed_data_dir_roots = ?args.allowed_data_dir_roots,
        allow_unconfined_seccomp = args.allow_unconfined_seccomp,
        allow_control_plane_tolerations = args.allow_control_plane_tolerations,
        agent_seccomp_dir = %args.agent_seccomp_dir,
        "admin settings"
    );

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    let mut election = None;
    if args.leader_elect {
        let lease = leader::LeaseSettings {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            duration: Duration::from_secs(args.lease_duration),
            grace: Duration::from_secs((args.lease_duration / 3).max(1)),
        };
        let mut e = leader::start(client.clone(), &lease)
            .await
            .with_context(|| {
                format!(
                    "leader election on Lease {}/{} (--lease-namespace, --lease-name)",
                    lease.namespace, lease.name
                )
            })?;
        // A standby replica is healthy and ready: it serves metrics and waits.
        ready.store(true, Ordering::Relaxed);
        info!(%identity, "waiting to become leader");
        tokio::select! {
            ok = e.acquired() => if !ok { anyhow::bail!("leader election stopped before acquiring the Lease") },
            _ = &mut shutdown => { e.release().await; return Ok(()) }
        }
        info!(%identity, "became leader");
        election = Some(e);
    }
    ready.store(true, Ordering::Relaxed);
    metrics.leader.set(1);

    let run = controller::run(
        client.clone(),
        settings,
        Arc::clone(&metrics),
        std::future::pending(),
    );
    tokio::pin!(run);
    let lost = async {
        match election.as_mut() {
            Some(e) => e.lost().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = &mut run => { error!("controller stopped unexpectedly"); }
        _ = lost => {
            metrics.leader.set(0);
            // Never keep writing beside a new leader.
            error!(%identity, "lost the leader Lease; exiting");
            std::process::exit(1);
        }
        _ = &mut shutdown => { info!("shutting down"); }
    }
    metrics.leader.set(0);
    if let Some(e) = election {
        e.release().await;
    }
    Ok(())
}
