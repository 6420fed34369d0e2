//! The HTTP read service (`ringmaster-agent serve`, and the reader container): HTTP/1.1 range
//! reads over the worker pool. No Kubernetes here; the CLI lives in the agent binary.
//!
//! `GET /v1/files/{name}/{path}` with `Range: bytes=a-b` → 206 (416 unsatisfiable, 404 missing or
//! outside the data dir, 400 bad path or range, 503 over the concurrency cap), confined to the
//! named data dir. `/metrics` (Prometheus), `/healthz`, `/readyz`. Every response carries
//! `X-Ringmaster-Worker-Mode: io_uring|pread`.

mod conn;
pub mod metrics;
pub mod paths;
pub mod range;

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use tokio::sync::{oneshot, Semaphore};

use ringmaster_ring::io::{
    AlignedBuf, Policy, Pool, PoolConfig, ReadJob, ReadOutcome, SubmitError, WorkerMode,
};

use metrics::Metrics;

/// Header naming the worker mode on every response.
pub const MODE_HEADER: &str = "x-ringmaster-worker-mode";

pub const DEFAULT_MAX_RANGE_BYTES: u64 = 16 << 20;
pub const DEFAULT_MAX_CONCURRENT: u32 = 256;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;

/// What the read service serves and how.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// (name, dir) pairs served under `/v1/files/{name}/...`.
    pub data_dirs: Vec<(String, PathBuf)>,
    pub bind: SocketAddr,
    pub workers: u32,
    pub max_events: u32,
    pub policy: Policy,
    /// Largest range served in one request (bigger ones get 400).
    pub max_range_bytes: u64,
    /// Requests served at once (more get 503).
    pub max_concurrent: u32,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: u32,
    /// Time a client has to send a complete request head (and most a keep-alive
    /// connection may sit idle) before it is closed.
    pub header_read_timeout: std::time::Duration,
    /// Try the page cache before queueing a read to the workers.
    pub cache_fast_path: bool,
    /// Fault injection for tests (`RINGMASTER_FAULT_BREAK_RING_AFTER`): see `PoolConfig`.
    pub break_ring_after: Option<u64>,
}

/// Environment variable that arms the ring fault hook of `serve` (tests only): after N reads
/// reached the rings, one worker's ring fd becomes /dev/null and the kernel fails its next
/// `io_uring_enter`; the worker must replace the ring without losing reads.
pub const FAULT_BREAK_RING_ENV: &str = "RINGMASTER_FAULT_BREAK_RING_AFTER";

/// `RINGMASTER_FAULT_BREAK_RING_AFTER` as a read count; a bad value is an error naming it.
pub fn break_ring_after_from_env() -> anyhow::Result<Option<u64>> {
    match std::env::var(FAULT_BREAK_RING_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
            anyhow::anyhow!(
                "{FAULT_BREAK_RING_ENV}={v:?}: expected a read count (e.g. 5000), or unset it"
            )
        }),
        Err(e) => anyhow::bail!("{FAULT_BREAK_RING_ENV}: {e}"),
    }
}

impl ServeConfig {
    pub fn new(data_dirs: Vec<(String, PathBuf)>, bind: SocketAddr) -> Self {
        ServeConfig {
            data_dirs,
            bind,
            workers: 2,
            max_events: 128,
            policy: Policy::Preferred,
            max_range_bytes: DEFAULT_MAX_RANGE_BYTES,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: std::time::Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            cache_fast_path: true,
            break_ring_after: None,
        }
    }
}

struct AppState {
    dirs: HashMap<String, OwnedFd>,
    pool: Arc<Pool>,
    metrics: Metrics,
    limit: Arc<Semaphore>,
    max_range: u64,
    mode: HeaderValue,
    ready: AtomicBool,
}

/// A running read service.
pub struct ServeHandle {
    addr: SocketAddr,
    mode: WorkerMode,
    reason: String,
    state: Arc<AppState>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServeHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `IoUring` or `Pread` (a running pool is never `Off`).
    pub fn worker_mode(&self) -> WorkerMode {
        self.mode
    }

    pub fn worker_mode_reason(&self) -> &str {
        &self.reason
    }

    /// Stop accepting, let in-flight requests finish, then drain and join the worker pool.
    pub async fn shutdown(self) {
        self.state.ready.store(false, Ordering::SeqCst);
        let _ = self.stop.send(());
        match self.server.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "read service ended with an error"),
            Err(e) => tracing::warn!(error = %e, "read service task failed"),
            Ok(Ok(())) => {}
        }
        let pool = self.state.pool.clone();
        let _ = tokio::task::spawn_blocking(move || pool.shutdown()).await;
    }
}

/// Open the data dirs, start the pool (io_uring or pread per policy), bind and serve.
/// Errors under `Policy::Required` when io_uring cannot be set up (the message names the errno).
pub async fn start(cfg: ServeConfig) -> anyhow::Result<ServeHandle> {
    if cfg.data_dirs.is_empty() {
        anyhow::bail!("no data dirs: pass at least one --data-dir NAME=PATH");
    }
    if cfg.max_concurrent == 0 {
        anyhow::bail!("--max-concurrent must be at least 1");
    }
    if cfg.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    if cfg.header_read_timeout.is_zero() {
        anyhow::bail!("--header-read-timeout-secs must be at least 1");
    }
    if cfg.max_range_bytes == 0 || cfg.max_range_bytes > (1 << 30) {
        anyhow::bail!("--max-range-bytes must be between 1 and 1073741824");
    }
    let mut dirs = HashMap::new();
    for (name, path) in &cfg.data_dirs {
        if name.is_empty() || name.contains('/') {
            anyhow::bail!(
                "--data-dir {name}={}: NAME must be non-empty without '/'",
                path.display()
            );
        }
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| {
            format!(
                "--data-dir {name}={}: cannot open the directory",
                path.display()
            )
        })?;
        if dirs.insert(name.clone(), fd).is_some() {
            anyhow::bail!("--data-dir {name}: the name is given twice");
        }
    }
    let mut pc = PoolConfig::new(cfg.workers, cfg.max_events, cfg.policy);
    pc.queue_depth = pc.queue_depth.max(cfg.max_concurrent as usize);
    pc.cache_fast_path = cfg.cache_fast_path;
    pc.break_ring_after = cfg.break_ring_after;
    let pool = tokio::task::spawn_blocking(move || Pool::start(&pc)).await??;
    let mode = pool.mode();
    let reason = pool.reason().to_string();
    let metrics = Metrics::new(mode, &reason, pool.ring_entries(), cfg.workers);
    let listener = tokio::net::TcpListener::bind(cfg.bind)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.bind))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        dirs,
        pool: Arc::new(pool),
        metrics,
        limit: Arc::new(Semaphore::new(cfg.max_concurrent as usize)),
        max_range: cfg.max_range_bytes,
        mode: HeaderValue::from_static(mode.as_str()),
        ready: AtomicBool::new(true),
    });
    let app = Router::new()
        .route("/v1/files/{name}/{*path}", get(read_file))
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            add_mode_header,
        ))
        .with_state(state.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let limits = conn::ConnLimits {
        max_connections: cfg.max_connections as usize,
        header_read_timeout: cfg.header_read_timeout,
    };
    let open = state.metrics.connections.clone();
    let server = tokio::spawn(conn::serve(listener, app, limits, open, stopped));
    tracing::info!(%addr, mode = %mode, reason = %reason, "read service listening");
    Ok(ServeHandle {
        addr,
        mode,
        reason,
        state,
        stop,
        server,
    })
}

async fn add_mode_header(State(st): State<Arc<AppState>>, mut resp: Response) -> Response {
    resp.headers_mut().insert(MODE_HEADER, st.mode.clone());
    resp
}

async fn metrics_page(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.pool_in_flight.set(st.pool.in_flight() as i64);
    let replaced = st.pool.ring_replacements();
    let shown = st.metrics.ring_replacements.get();
    if replaced > shown {
        st.metrics.ring_replacements.inc_by(replaced - shown);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, format!("{msg}\n")).into_response()
}

async fn read_file(
    State(st): State<Arc<AppState>>,
    Path((name, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Ok(_permit) = st.limit.clone().try_acquire_owned() else {
        st.metrics.count(503);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many concurrent reads (--max-concurrent)\n",
        )
            .into_response();
    };
    st.metrics.in_flight.inc();
    let t0 = Instant::now();
    let (resp, bytes) = serve_range(&st, &name, &path, &headers).await;
    st.metrics.in_flight.dec();
    st.metrics.count(resp.status().as_u16());
    if bytes > 0 {
        st.metrics.bytes.inc_by(bytes);
        st.metrics.latency.observe(t0.elapsed().as_secs_f64());
    }
    resp
}

/// Open `path` beneath the data dir `root` without following anything out of it. Opened
/// non-blocking so a FIFO cannot stall the open; the flag is cleared again for regular files
/// (io_uring would otherwise answer EAGAIN instead of waiting for the disk).
fn open_beneath(root: &OwnedFd, path: &str) -> std::io::Result<File> {
    let fd = rustix::fs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )?;
    rustix::fs::fcntl_setfl(&fd, OFlags::RDONLY)?;
    Ok(File::from(fd))
}

async fn serve_range(
    st: &AppState,
    name: &str,
    path: &str,
    headers: &HeaderMap,
) -> (Response, u64) {
    let Some(root) = st.dirs.get(name) else {
        return (
            error(StatusCode::NOT_FOUND, format!("no data dir named '{name}'")),
            0,
        );
    };
    let rel = match paths::check_relative(path) {
        Ok(p) => p,
        Err(e) => return (error(StatusCode::BAD_REQUEST, e), 0),
    };
    let file = match open_beneath(root, rel) {
        Ok(f) => f,
        // EXDEV: the path leaves the data dir (symlink or magic link); same answer as missing.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::EXDEV) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
            ) =>
        {
            return (
                error(
                    StatusCode::NOT_FOUND,
                    format!("{name}/{rel}: not found in the data dir"),
                ),
                0,
            )
        }
        Err(e) => {
            return (
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{name}/{rel}: {e}"),
                ),
                0,
            )
        }
    };
    let size = match file.metadata() {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => {
            return (
                error(
                    StatusCode::NOT_FOUND,
                    format!("{name}/{rel}: not a regular file"),
                ),
                0,
            )
        }
        Err(e) => return (error(StatusCode::INTERNAL_SERVER_ERROR, e), 0),
    };
    let (first, last, partial) = match headers.get(header::RANGE) {
        None => {
            if size > st.max_range {
                return (error(StatusCode::BAD_REQUEST, format!(
                    "file is {size} bytes, over the {} byte cap (--max-range-bytes): send a Range header", st.max_range)), 0);
            }
            if size == 0 {
                return (
                    (
                        StatusCode::OK,
                        [(header::ACCEPT_RANGES, "bytes")],
                        Body::empty(),
                    )
                        .into_response(),
                    0,
                );
            }
            (0, size - 1, false)
        }
        Some(v) => {
            let Ok(v) = v.to_str() else {
                return (
                    error(StatusCode::BAD_REQUEST, "Range header is not ASCII"),
                    0,
                );
            };
            let spec = match range::parse_range(v) {
                Ok(s) => s,
                Err(e) => return (error(StatusCode::BAD_REQUEST, e), 0),
            };
            match range::resolve(spec, size) {
                Some((a, b)) => (a, b, true),
                None => {
                    return (
                        (
                            StatusCode::RANGE_NOT_SATISFIABLE,
                            [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                            format!("range {v} is outside the file ({size} bytes)\n"),
                        )
                            .into_response(),
                        0,
                    )
                }
            }
        }
    };
    let len = last - first + 1;
    if len > st.max_range {
        return (error(StatusCode::BAD_REQUEST, format!(
            "range of {len} bytes is over the {} byte cap (--max-range-bytes): request smaller ranges", st.max_range)), 0);
    }
    let buf = match read_async(&st.pool, Arc::new(file), first, len as usize, false).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            return (
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    "read queue full\n",
                )
                    .into_response(),
                0,
            )
        }
        Err(e) => {
            return (
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{name}/{rel}: read failed: {e}"),
                ),
                0,
            )
        }
    };
    if (buf.len() as u64) < len {
        return (
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "{name}/{rel}: file shrank while reading ({} of {len} bytes)",
                    buf.len()
                ),
            ),
            0,
        );
    }
    let status = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut resp = Response::new(Body::from(Bytes::from_owner(buf)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if partial {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")).expect("ASCII"),
        );
    }
    (resp, len)
}

/// Read `len` bytes at `offset` through the pool (fast path first), awaiting the result on the
/// caller's runtime. Ok is the buffer with `len()` = bytes read (short only at EOF).
pub async fn read_async(
    pool: &Pool,
    file: Arc<File>,
    offset: u64,
    len: usize,
    direct: bool,
) -> std::io::Result<AlignedBuf> {
    use std::io;
    let (tx, rx) = oneshot::channel::<ReadOutcome>();
    let job = ReadJob::new(
        file,
        offset,
        len,
        AlignedBuf::new(len),
        direct,
        Box::new(move |o| {
            let _ = tx.send(o);
        }),
    );
    pool.read(job).map_err(|e| match e {
        SubmitError::Full(_) => io::Error::new(io::ErrorKind::WouldBlock, "read queue full"),
        SubmitError::ShutDown(_) => {
            io::Error::new(io::ErrorKind::BrokenPipe, "read pool shutting down")
        }
    })?;
    let out = rx
        .await
        .map_err(|_| io::Error::other("read completion dropped"))?;
    out.result.map(|_| out.buf)
}
