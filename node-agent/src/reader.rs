//! `ringmaster-agent reader`: the unprivileged reader process (container `reader`).
//!
//! It runs under the cluster's seccomp setting, so its io_uring probe is the truth for the
//! storage service (a privileged process is never seccomp-filtered). Loop:
//! wait for `config.json` from the agent, probe io_uring with that sizing, start the read
//! workers and HTTP read service per policy (`Required` + unsupported → worker mode
//! `none`, nothing serves, on purpose), and write `reader.json`. When `config.json`
//! changes (new generation), probe again and restart the workers with the new sizing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::datadirs;
use crate::handoff::{self, DataDirCheck, Policy, ReaderConfig, ReaderReport, WorkerMode};
use ringmaster_ring::host;
use ringmaster_ring::probe::{self, ProbeParams, UringProbe};
use ringmaster_serve as serve;

/// Flags of `ringmaster-agent reader`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReaderArgs {
    /// Handoff root shared with the agent container: config.json is read from `agent/`
    /// (read-only here), reader.json written to `reader/`.
    #[arg(long, default_value = ringmaster_api::keys::POD_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Address of the read service (default 0.0.0.0:<readService.port from the config>).
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Where the pod mounts the data dirs' parents: dir `NAME` with host path `/a/b` is
    /// served from `<data-root>/NAME/b` instead of `/a/b` (the operator mounts the host's
    /// `/a` read-only at `/data-parents/NAME`, so a missing `b` is reported, not a pod
    /// that cannot start). Reports and messages keep naming the host path.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// File holding the bearer token reads must send (the StorageCluster's read-token
    /// Secret, mounted into this container only); read again every second.
    #[arg(long, value_name = "FILE", conflicts_with = "allow_unauthenticated")]
    pub auth_token_file: Option<PathBuf>,
    /// Serve reads without authentication (local tests only); without it,
    /// --auth-token-file is required.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Milliseconds between checks of config.json.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..))]
    pub poll_ms: u64,
}

/// How the workers will run for a probe result under a policy, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeDecision {
    pub mode: WorkerMode,
    /// For people: names the policy and, when io_uring is out, the errno.
    pub reason: String,
}

/// How the workers will run for a probe result under a policy, and why.
pub fn decide_mode(policy: Policy, probe: &UringProbe) -> ModeDecision {
    let why = || {
        format!(
            "io_uring unavailable ({}{})",
            probe.reason.as_deref().unwrap_or("unknown"),
            probe
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )
    };
    let (mode, reason) = match (policy, probe.supported) {
        (Policy::Disabled, _) => (
            WorkerMode::Pread,
            "aio.ioUring is Disabled: pread thread pool".into(),
        ),
        (_, true) => (
            WorkerMode::IoUring,
            format!(
                "io_uring works with {} ring entries per worker",
                probe.ring_entries
            ),
        ),
        (Policy::Preferred, false) => (
            WorkerMode::Pread,
            format!("{}; aio.ioUring is Preferred: pread thread pool", why()),
        ),
        (Policy::Required, false) => (
            WorkerMode::Off,
            format!(
                "{}; aio.ioUring is Required: not serving (fix io_uring or set Preferred)",
                why()
            ),
        ),
    };
    ModeDecision { mode, reason }
}

/// What the reader runs for the current config.
enum Running {
    /// The read workers and HTTP read service (which serves /healthz and /readyz too).
    Service(serve::ServeHandle),
    /// No read service on purpose (worker mode `none`, or no data dirs): only
    /// /healthz and /readyz, so the container's probes pass.
    Idle(tokio::sync::oneshot::Sender<()>),
}

impl Running {
    async fn stop(self) {
        match self {
            Running::Service(h) => h.shutdown().await,
            Running::Idle(stop) => {
                let _ = stop.send(());
            }
        }
    }
}

/// The read service `cfg` asks for, serving `dirs` (the usable ones). Limits that break
/// the CRD's rules (a spec the API server did not check) are an error naming the field.
pub fn serve_config(
    cfg: &ReaderConfig,
    dirs: Vec<(String, PathBuf)>,
    bind: SocketAddr,
    auth: serve::Auth,
) -> anyhow::Result<serve::ServeConfig> {
    let limits = &cfg.limits;
    limits.check().map_err(|e| anyhow::anyhow!(e))?;
    let mut sc = serve::ServeConfig::new(dirs, bind, auth);
    sc.workers = cfg.workers;
    sc.max_events = cfg.max_events;
    sc.policy = cfg.policy;
    sc.max_range_bytes = limits.max_range_bytes;
    sc.max_concurrent = limits.max_concurrent;
    sc.max_connections = limits.max_connections;
    sc.max_response_bytes = limits.max_response_bytes;
    sc.header_read_timeout = Duration::from_secs(limits.header_read_timeout_seconds);
    sc.write_timeout = Duration::from_secs(limits.write_timeout_seconds);
    sc.open_file_cache_entries = limits.open_file_cache.entries;
    sc.open_file_cache_valid = Duration::from_millis(limits.open_file_cache.valid_milliseconds);
    Ok(sc)
}

/// Start the read workers and HTTP service for `cfg`, serving `dirs` (the usable ones).
async fn start_service(
    cfg: &ReaderConfig,
    dirs: Vec<(String, PathBuf)>,
    bind: SocketAddr,
    auth: serve::Auth,
) -> anyhow::Result<serve::ServeHandle> {
    serve::start(serve_config(cfg, dirs, bind, auth)?).await
}

/// Check the configured data dirs as this process sees them (blocking syscalls: a hung
/// network mount must not stall the runtime).
async fn check_data_dirs(
    cfg: &ReaderConfig,
    data_root: Option<&Path>,
) -> (Vec<DataDirCheck>, Vec<(String, PathBuf)>) {
    let dirs = cfg.data_dirs.clone();
    let root = data_root.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || datadirs::check_all(&dirs, root.as_deref()))
        .await
        .unwrap_or_default()
}

/// Health endpoints only, for a reader that deliberately serves no reads.
async fn start_idle(bind: SocketAddr, reason: String) -> anyhow::Result<Running> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
    let ready = format!("ready, not serving reads: {reason}\n");
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || async move { ready }));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(Running::Idle(tx))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Probe under this process's security context (blocking: rings, a temp file read).
async fn probe(cfg: &ReaderConfig, scratch: &Path) -> (host::HostFacts, UringProbe) {
    let params = ProbeParams {
        max_events: cfg.max_events,
        min_max_events: cfg.min_max_events,
        scratch_dir: scratch.to_path_buf(),
    };
    tokio::task::spawn_blocking(move || (host::gather(), probe::probe_io_uring(&params)))
        .await
        .unwrap_or_default()
}

/// Probe, check the data dirs, and start what `cfg` asks for with the usable dirs; the
/// report says what runs and which dirs are left out, and why.
async fn apply_config(
    args: &ReaderArgs,
    cfg: &ReaderConfig,
    auth: &serve::Auth,
) -> (ReaderReport, Option<Running>) {
    let scratch = args.state_dir.join(handoff::READER_DIR);
    let (facts, uring) = probe(cfg, &scratch).await;
    let (checks, usable) = check_data_dirs(cfg, args.data_root.as_deref()).await;
    let ModeDecision { mode, mut reason } = decide_mode(cfg.policy, &uring);
    let mut worker_mode = mode;
    let service_configured = !cfg.data_dirs.is_empty();
    let bind = args
        .bind
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], cfg.port)));
    let mut serving = false;
    let mut listen_addr = None;
    let mut error = None;
    let running = if mode != WorkerMode::Off && !usable.is_empty() {
        match start_service(cfg, usable, bind, auth.clone()).await {
            Ok(h) => {
                serving = true;
                listen_addr = Some(h.local_addr().to_string());
                worker_mode = h.worker_mode();
                reason = h.worker_mode_reason().to_string();
                Some(Running::Service(h))
            }
            Err(e) => {
                error = Some(format!("read service did not start on {bind}: {e:#}"));
                None
            }
        }
    } else {
        if mode != WorkerMode::Off {
            reason = if service_configured {
                format!("{reason}; no data dir is usable: read service off")
            } else {
                format!("{reason}; no readService.dataDirs: read service off")
            };
        }
        match start_idle(bind, reason.clone()).await {
            Ok(r) => Some(r),
            Err(e) => {
                error = Some(format!("health endpoint: {e:#}"));
                None
            }
        }
    };
    for c in checks.iter().filter(|c| !c.available) {
        tracing::warn!(
            name = %c.name,
            reason = ?c.reason,
            message = ?c.message,
            "data dir unusable: not served (checked again every {}s)",
            RETRY_AFTER.as_secs()
        );
    }
    let report = ReaderReport {
        generation: cfg.generation,
        config_hash: cfg.config_hash.clone(),
        host: facts,
        io_uring: uring,
        worker_mode,
        worker_mode_reason: reason,
        serving,
        service_configured,
        listen_addr,
        error,
        data_dirs: checks,
        probed_at: now_rfc3339(),
        boot_id: crate::boot::boot_id(),
    };
    (report, running)
}

/// Whether two configs ask for the same probe and read service (they may differ in
/// generation and hash only).
pub fn same_service(a: &ReaderConfig, b: &ReaderConfig) -> bool {
    a.max_events == b.max_events
        && a.min_max_events == b.min_max_events
        && a.workers == b.workers
        && a.policy == b.policy
        && a.data_dirs == b.data_dirs
        && a.port == b.port
        && a.limits == b.limits
}

/// After a failed start, try again this much later (not every poll: each attempt is a
/// new report and so a StorageNode write). Also how often the data dirs are checked
/// again, so a dir created (or a disk mounted) later is served without a config change,
/// and one that vanished is reported.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

async fn reader_loop(args: ReaderArgs) -> anyhow::Result<()> {
    crate::boot::warn_if_faked();
    let auth =
        crate::serve::auth_from_flags(args.auth_token_file.clone(), args.allow_unauthenticated)
            .map_err(|e| anyhow::anyhow!(e))?;
    let handoff_dirs = handoff::Handoff::open(&args.state_dir)?;
    let out = handoff_dirs.reader_dir(true)?.ok_or_else(|| {
        anyhow::anyhow!("--state-dir {}: no reader/ dir", args.state_dir.display())
    })?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut current: Option<ReaderConfig> = None;
    let mut last_report: Option<ReaderReport> = None;
    let mut running: Option<Running> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut dirs_check_at: Option<tokio::time::Instant> = None;
    let mut last_error: Option<String> = None;
    let mut waiting_logged = false;
    loop {
        let config = handoff_dirs.agent_dir(false).and_then(|d| match d {
            Some(d) => handoff::read_json::<ReaderConfig>(&d, handoff::CONFIG_FILE),
            None => Ok(None),
        });
        let mut next = match config {
            Ok(None) => {
                if !waiting_logged {
                    tracing::info!(dir = %args.state_dir.display(), "waiting for config.json from the agent");
                    waiting_logged = true;
                }
                None
            }
            Err(e) => {
                // Keep running the last good config; say so once.
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!(error = %msg, "cannot read config.json; keeping the current config");
                    last_error = Some(msg);
                }
                None
            }
            Ok(Some(cfg)) => {
                last_error = None;
                let changed = Some(&cfg) != current.as_ref();
                let retry = retry_at.is_some_and(|t| tokio::time::Instant::now() >= t);
                (changed || retry).then_some(cfg)
            }
        };
        // The data dirs again: restart the service when the usable set changed (a dir
        // created, a disk mounted or gone), without a config change.
        let mut dirs_changed = false;
        if next.is_none() && dirs_check_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
            if let (Some(cfg), Some(last)) = (&current, &last_report) {
                let (checks, _) = check_data_dirs(cfg, args.data_root.as_deref()).await;
                if checks != last.data_dirs {
                    tracing::info!(before = ?last.data_dirs, now = ?checks, "data dirs changed: restarting the read service");
                    dirs_changed = true;
                    next = Some(cfg.clone());
                }
            }
            dirs_check_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
        }
        if let Some(cfg) = next {
            let unchanged = !dirs_changed
                && retry_at.is_none()
                && current.as_ref().is_some_and(|c| same_service(c, &cfg));
            let report = match last_report.clone().filter(|_| unchanged) {
                // Only fields the reader does not use changed (e.g. unsupportedNodes):
                // answer the new generation without re-probing or restarting the workers.
                Some(mut r) => {
                    r.generation = cfg.generation;
                    r.config_hash = cfg.config_hash.clone();
                    r
                }
                None => {
                    if let Some(r) = running.take() {
                        r.stop().await;
                    }
                    let (report, r) = apply_config(&args, &cfg, &auth).await;
                    running = r;
                    retry_at = report
                        .error
                        .is_some()
                        .then(|| tokio::time::Instant::now() + RETRY_AFTER);
                    dirs_check_at = (!cfg.data_dirs.is_empty())
                        .then(|| tokio::time::Instant::now() + RETRY_AFTER);
                    report
                }
            };
            if last_report
                .as_ref()
                .is_some_and(|l| l.same_content(&report))
            {
                // A retry that found what the last report says: no new reader.json, so
                // no StorageNode write either.
                current = Some(cfg);
            } else {
                tracing::info!(
                    generation = report.generation,
                    supported = report.io_uring.supported,
                    reason = ?report.io_uring.reason,
                    mode = %report.worker_mode,
                    serving = report.serving,
                    error = ?report.error,
                    data_dirs_unusable = report.data_dirs.iter().filter(|d| !d.available).count(),
                    "reporting to the agent"
                );
                match handoff::write_json(&out, handoff::READER_FILE, &report) {
                    Ok(()) => {
                        current = Some(cfg);
                        last_report = Some(report);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write reader.json; retrying");
                        retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                        current = Some(cfg);
                    }
                }
            }
        }
        tokio::select! {
            _ = sigterm.recv() => {
                if let Some(r) = running.take() {
                    r.stop().await;
                }
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_millis(args.poll_ms)) => {}
        }
    }
}

/// Entry point of `ringmaster-agent reader`: exit 0 on SIGTERM, 1 on a fatal error.
pub fn run(args: ReaderArgs) -> i32 {
    crate::init_tracing();
    if let Err(e) = std::fs::create_dir_all(&args.state_dir) {
        eprintln!(
            "error: --state-dir {}: {e} (mount the emptyDir shared with the agent there)",
            args.state_dir.display()
        );
        return 1;
    }
    let Some(rt) = crate::async_runtime(None) else {
        return 1;
    };
    match rt.block_on(reader_loop(args)) {
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

    fn probe(supported: bool) -> UringProbe {
        UringProbe {
            supported,
            errno: (!supported).then_some(1),
            reason: (!supported).then(|| "EPERM".into()),
            ring_entries: if supported { 512 } else { 0 },
            ..Default::default()
        }
    }

    #[test]
    fn only_service_fields_restart_the_workers() {
        let a = ReaderConfig {
            generation: 1,
            config_hash: "a".into(),
            max_events: 512,
            min_max_events: 64,
            workers: 8,
            policy: Policy::Preferred,
            data_dirs: vec![],
            port: 7480,
            limits: Default::default(),
        };
        let mut b = a.clone();
        b.generation = 2;
        b.config_hash = "b".into();
        assert!(same_service(&a, &b));
        b.max_events = 256;
        assert!(!same_service(&a, &b));
        let mut c = a.clone();
        c.policy = Policy::Required;
        assert!(!same_service(&a, &c));
        let mut d = a.clone();
        d.limits.max_range_bytes = 4096;
        assert!(!same_service(&a, &d), "a new limit restarts the service");
        let mut e = a.clone();
        e.limits.open_file_cache.valid_milliseconds = 0;
        assert!(!same_service(&a, &e));
    }

    fn reader_config(limits: ringmaster_api::ReadServiceLimits) -> ReaderConfig {
        ReaderConfig {
            generation: 1,
            config_hash: "a".into(),
            max_events: 256,
            min_max_events: 64,
            workers: 4,
            policy: Policy::Disabled,
            data_dirs: vec![],
            port: 7480,
            limits,
        }
    }

    fn bind() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn limits_reach_the_serve_config() {
        use ringmaster_api::{OpenFileCacheSpec, ReadServiceLimits};
        let limits = ReadServiceLimits {
            max_range_bytes: 3 << 20,
            max_concurrent: 17,
            max_connections: 33,
            max_response_bytes: 64 << 20,
            header_read_timeout_seconds: 7,
            write_timeout_seconds: 9,
            open_file_cache: OpenFileCacheSpec {
                entries: 5,
                valid_milliseconds: 250,
            },
        };
        let dirs = vec![("d0".to_string(), PathBuf::from("/srv/d0"))];
        let sc = serve_config(
            &reader_config(limits),
            dirs.clone(),
            bind(),
            serve::Auth::Unauthenticated,
        )
        .unwrap();
        assert_eq!(sc.data_dirs, dirs);
        assert_eq!((sc.workers, sc.max_events), (4, 256));
        assert_eq!(sc.policy, Policy::Disabled);
        assert_eq!(sc.max_range_bytes, 3 << 20);
        assert_eq!(sc.max_concurrent, 17);
        assert_eq!(sc.max_connections, 33);
        assert_eq!(sc.max_response_bytes, 64 << 20);
        assert_eq!(sc.header_read_timeout, Duration::from_secs(7));
        assert_eq!(sc.write_timeout, Duration::from_secs(9));
        assert_eq!(sc.open_file_cache_entries, 5);
        assert_eq!(sc.open_file_cache_valid, Duration::from_millis(250));
    }

    #[test]
    fn default_limits_are_the_read_services_defaults() {
        // The CRD's defaults are written in the API crate (no dependency on the service):
        // they must be exactly what `serve` defaults to, and its rule's constants the same.
        let sc = serve_config(
            &reader_config(Default::default()),
            vec![],
            bind(),
            serve::Auth::Unauthenticated,
        )
        .unwrap();
        let want = serve::ServeConfig::new(vec![], bind(), serve::Auth::Unauthenticated);
        assert_eq!(sc.max_range_bytes, want.max_range_bytes);
        assert_eq!(sc.max_range_bytes, serve::DEFAULT_MAX_RANGE_BYTES);
        assert_eq!(sc.max_concurrent, serve::DEFAULT_MAX_CONCURRENT);
        assert_eq!(sc.max_connections, serve::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(sc.max_response_bytes, serve::DEFAULT_MAX_RESPONSE_BYTES);
        assert_eq!(
            sc.header_read_timeout,
            Duration::from_secs(serve::DEFAULT_HEADER_READ_TIMEOUT_SECS)
        );
        assert_eq!(
            sc.write_timeout,
            Duration::from_secs(serve::DEFAULT_WRITE_TIMEOUT_SECS)
        );
        assert_eq!(
            sc.open_file_cache_entries,
            serve::DEFAULT_OPEN_FILE_CACHE_ENTRIES
        );
        assert_eq!(
            sc.open_file_cache_valid,
            Duration::from_millis(serve::DEFAULT_OPEN_FILE_CACHE_VALID_MS)
        );
        assert_eq!(
            ringmaster_api::RANGE_ROUNDING_BYTES,
            2 * ringmaster_ring::io::AlignedBuf::ALIGN as u64
        );
        assert_eq!(ringmaster_api::LARGE_RESPONSE_BYTES, serve::budget::LARGE);
    }

    #[test]
    fn limits_that_break_the_crd_rules_are_refused_naming_the_field() {
        let limits = ringmaster_api::ReadServiceLimits {
            max_range_bytes: 1 << 20,
            max_response_bytes: 1 << 20,
            ..Default::default()
        };
        let e = serve_config(
            &reader_config(limits),
            vec![],
            bind(),
            serve::Auth::Unauthenticated,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("spec.readService.limits.maxResponseBytes (1048576)")
                && e.contains("spec.readService.limits.maxRangeBytes"),
            "{e}"
        );
    }

    #[test]
    fn policy_decides_mode() {
        assert_eq!(
            decide_mode(Policy::Preferred, &probe(true)).mode.as_str(),
            "io_uring"
        );
        assert_eq!(
            decide_mode(Policy::Required, &probe(true)).mode.as_str(),
            "io_uring"
        );
        assert_eq!(
            decide_mode(Policy::Disabled, &probe(true)).mode.as_str(),
            "pread"
        );
        let ModeDecision {
            mode: m,
            reason: why,
        } = decide_mode(Policy::Preferred, &probe(false));
        assert_eq!(m.as_str(), "pread");
        assert!(why.contains("EPERM"), "{why}");
        let ModeDecision {
            mode: m,
            reason: why,
        } = decide_mode(Policy::Required, &probe(false));
        assert_eq!(m.as_str(), "none");
        assert!(why.contains("Required") && why.contains("EPERM"), "{why}");
    }
}
