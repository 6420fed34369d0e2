//! The HTTP read service (`ringmaster-agent serve`, and the reader container): HTTP/1.1 range
//! reads over the worker pool. No Kubernetes here; the CLI lives in the agent binary.
//!
//! `GET /v1/files/{name}/{path}` with `Range: bytes=a-b` → 206 (416 unsatisfiable, 404 missing or
//! outside the data dir, 400 bad path or range, 503 over the concurrency cap), confined to the
//! named data dir. `/metrics` (Prometheus), `/healthz`, `/readyz`. Every response carries
//! `X-Ringmaster-Worker-Mode: io_uring|pread`. Every route but those three needs
//! `Authorization: Bearer <token>` (401 otherwise) unless the service runs
//! [`Auth::Unauthenticated`]; see `auth`.

pub mod auth;
pub mod budget;
pub mod bufpool;
mod conn;
pub mod filecache;
pub mod metrics;
pub mod paths;
pub mod range;
pub mod write_timeout;

use std::borrow::Cow;
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
use prometheus_client::metrics::gauge::Gauge;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use ringmaster_ring::io::{
    AlignedBuf, Policy, Pool, PoolConfig, ReadJob, ReadOutcome, SubmitError, WorkerMode,
};

pub use auth::Auth;
use auth::{TokenFile, Verdict};
use budget::{Reservation, ResponseBudget};
use bufpool::BufPool;
use filecache::{FileCache, OpenFile};
use metrics::Metrics;

/// Header naming the worker mode on every response.
pub const MODE_HEADER: &str = "x-ringmaster-worker-mode";

pub const DEFAULT_MAX_RANGE_BYTES: u64 = 16 << 20;
pub const DEFAULT_MAX_CONCURRENT: u32 = 256;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 128 << 20;
pub const DEFAULT_OPEN_FILE_CACHE_ENTRIES: u32 = 1024;
pub const DEFAULT_OPEN_FILE_CACHE_VALID_MS: u64 = 1000;

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
    /// A response write that makes no progress this long closes the connection.
    pub write_timeout: std::time::Duration,
    /// Bytes of response bodies held at once (more get 503); see `budget`.
    pub max_response_bytes: u64,
    /// Open files kept for reuse (0: open every request); see `filecache`.
    pub open_file_cache_entries: u32,
    /// How long a cached open file is reused before the path is opened again.
    pub open_file_cache_valid: std::time::Duration,
    /// Open files O_DIRECT and read through the workers (no page cache).
    pub direct: bool,
    /// Who may read: a bearer token from a file, or (explicitly) anyone.
    pub auth: Auth,
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
    pub fn new(data_dirs: Vec<(String, PathBuf)>, bind: SocketAddr, auth: Auth) -> Self {
        ServeConfig {
            auth,
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
            write_timeout: std::time::Duration::from_secs(DEFAULT_WRITE_TIMEOUT_SECS),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            open_file_cache_entries: DEFAULT_OPEN_FILE_CACHE_ENTRIES,
            open_file_cache_valid: std::time::Duration::from_millis(
                DEFAULT_OPEN_FILE_CACHE_VALID_MS,
            ),
            direct: false,
        }
    }
}

struct AppState {
    /// (name, O_PATH fd) of each data dir; the index keys the file cache.
    dirs: Vec<(String, OwnedFd)>,
    files: FileCache,
    budget: ResponseBudget,
    direct: bool,
    /// Serve page-cache hits inline (preadv2 RWF_NOWAIT on this thread, no job, no channel):
    /// the pool's own fast-path rule (buffered files, io_uring mode, fast path on).
    inline_hits: bool,
    bufs: Arc<BufPool>,
    pool: Arc<Pool>,
    metrics: Metrics,
    limit: Arc<Semaphore>,
    max_range: u64,
    mode: HeaderValue,
    ready: AtomicBool,
    /// None: unauthenticated (`Auth::Unauthenticated`).
    token: Option<Arc<TokenFile>>,
}

/// A running read service.
pub struct ServeHandle {
    addr: SocketAddr,
    mode: WorkerMode,
    reason: String,
    state: Arc<AppState>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    reloader: Option<tokio::task::JoinHandle<()>>,
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
        if let Some(r) = &self.reloader {
            r.abort();
        }
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
    if cfg.write_timeout.is_zero() {
        anyhow::bail!("--write-timeout-secs must be at least 1");
    }
    // The largest response (a range rounded out to 4 KiB blocks for O_DIRECT) must fit.
    let largest = cfg.max_range_bytes + 2 * AlignedBuf::ALIGN as u64;
    if cfg.max_response_bytes < largest || cfg.max_response_bytes > (1 << 40) {
        anyhow::bail!(
            "--max-response-bytes {} must be at least --max-range-bytes + 8192 ({largest}) and at \
             most 1 TiB: raise it or lower --max-range-bytes",
            cfg.max_response_bytes
        );
    }
    if cfg.max_range_bytes > budget::LARGE && cfg.max_response_bytes / 2 < largest {
        anyhow::bail!(
            "--max-response-bytes {}: responses over 1 MiB may use half of it, which is less than \
             --max-range-bytes + 8192 ({largest}): raise it to at least {}",
            cfg.max_response_bytes,
            2 * largest
        );
    }
    let mut dirs: Vec<(String, OwnedFd)> = Vec::new();
    for (name, path) in &cfg.data_dirs {
        if name.is_empty() || name.contains('/') {
            anyhow::bail!(
                "--data-dir {name}={}: NAME must be non-empty without '/'",
                path.display()
            );
        }
        let fd = open_root(name, path)?;
        if dirs.iter().any(|(n, _)| n == name) {
            anyhow::bail!("--data-dir {name}: the name is given twice");
        }
        dirs.push((name.clone(), fd));
    }
    let token = match &cfg.auth {
        Auth::TokenFile(p) => Some(Arc::new(TokenFile::load(p)?)),
        Auth::Unauthenticated => {
            tracing::warn!(
                "--allow-unauthenticated: anyone who reaches the port reads the data dirs"
            );
            None
        }
    };
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
        files: FileCache::new(
            dirs.len(),
            cfg.open_file_cache_entries as usize,
            cfg.open_file_cache_valid,
        ),
        dirs,
        budget: ResponseBudget::new(cfg.max_response_bytes),
        direct: cfg.direct,
        bufs: Arc::new(BufPool::new()),
        inline_hits: cfg.cache_fast_path && !cfg.direct && pool.mode() == WorkerMode::IoUring,
        pool: Arc::new(pool),
        metrics,
        limit: Arc::new(Semaphore::new(cfg.max_concurrent as usize)),
        max_range: cfg.max_range_bytes,
        mode: HeaderValue::from_static(mode.as_str()),
        ready: AtomicBool::new(true),
        token: token.clone(),
    });
    let app = Router::new()
        .route("/v1/files/{name}/{*path}", get(read_file_routed))
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
        write_timeout: cfg.write_timeout,
    };
    let open = state.metrics.connections.clone();
    let svc = ReadService {
        st: state.clone(),
        app: hyper_util::service::TowerToHyperService::new(app),
    };
    let server = tokio::spawn(conn::serve(listener, svc, limits, open, stopped));
    let reloader = token.map(TokenFile::spawn_reloader);
    tracing::info!(%addr, mode = %mode, reason = %reason, "read service listening");
    Ok(ServeHandle {
        addr,
        mode,
        reason,
        state,
        stop,
        server,
        reloader,
    })
}

/// Opens data dir root `path` (O_PATH) without following a symlink at its last component:
/// a link there could point the service anywhere the reader can see, after the dir was
/// checked and allowed by its path.
fn open_root(name: &str, path: &std::path::Path) -> anyhow::Result<OwnedFd> {
    // No O_DIRECTORY: with it a symlink fails as ENOTDIR; without it O_PATH|O_NOFOLLOW opens
    // the link itself, and fstat tells a link from a directory for a clear error.
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty()).with_context(|| {
        format!(
            "--data-dir {name}={}: cannot open the directory",
            path.display()
        )
    })?;
    let st = rustix::fs::fstat(&fd)
        .with_context(|| format!("--data-dir {name}={}: fstat", path.display()))?;
    match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::Directory => Ok(fd),
        rustix::fs::FileType::Symlink => anyhow::bail!(
            "--data-dir {name}={}: is a symbolic link; a data dir's last component is never \
             followed: name the directory itself (its real path)",
            path.display()
        ),
        _ => anyhow::bail!("--data-dir {name}={}: not a directory", path.display()),
    }
}

/// The 401 for a request the token check refused, counted in the metrics.
fn unauthorized(st: &AppState, verdict: Verdict, file_route: bool) -> Response {
    st.metrics.count_unauthorized(verdict.label(), file_route);
    let msg = match verdict {
        Verdict::Invalid => "wrong bearer token\n",
        _ => {
            "missing bearer token: send Authorization: Bearer <token> (the StorageCluster's \
              <name>-read-token Secret, key token)\n"
        }
    };
    let mut resp = (StatusCode::UNAUTHORIZED, msg).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(verdict.challenge()),
    );
    h.insert(MODE_HEADER, st.mode.clone());
    resp
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

/// `GET /v1/files/{name}/{*path}` through the router (HEAD, and what `file_route` leaves).
async fn read_file_routed(
    State(st): State<Arc<AppState>>,
    Path((name, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    read_file(&st, &name, &path, &headers).await
}

/// Data dir name and relative path of a file request, percent-decoded.
type FileRoute<'a> = (Cow<'a, str>, Cow<'a, str>);

/// `(name, path)` of `/v1/files/{name}/{path}`, percent-decoded as the router would, when both
/// are non-empty; `Some(Err)` when one is not UTF-8 once decoded.
fn file_route(uri_path: &str) -> Option<Result<FileRoute<'_>, ()>> {
    let rest = uri_path.strip_prefix("/v1/files/")?;
    let (name, path) = rest.split_once('/')?;
    if name.is_empty() || path.is_empty() {
        return None;
    }
    Some(percent_decode(name).and_then(|n| Ok((n, percent_decode(path)?))))
}

/// `%XX` → byte (other `%` stay as they are, like the router's decoder), then UTF-8.
fn percent_decode(s: &str) -> Result<Cow<'_, str>, ()> {
    if !s.contains('%') {
        return Ok(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| ())
}

/// The service hyper calls for each request: file reads go straight to `read_file` (no router,
/// no extractor allocations on the hot path); everything else goes through the router.
#[derive(Clone)]
struct ReadService {
    st: Arc<AppState>,
    app: hyper_util::service::TowerToHyperService<Router>,
}

impl hyper::service::Service<axum::extract::Request<hyper::body::Incoming>> for ReadService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn call(&self, req: axum::extract::Request<hyper::body::Incoming>) -> Self::Future {
        let st = self.st.clone();
        if let Some(token) = &st.token {
            let path = req.uri().path();
            if !auth::is_open_path(path) {
                let verdict = token.check(req.headers().get(header::AUTHORIZATION));
                if verdict != Verdict::Allowed {
                    let resp = unauthorized(&st, verdict, path.starts_with("/v1/files/"));
                    return Box::pin(async move { Ok(resp) });
                }
            }
        }
        if req.method() == axum::http::Method::GET {
            if let Some(route) = file_route(req.uri().path()) {
                let (name, path) = match route {
                    Ok((n, p)) => (n.into_owned(), p.into_owned()),
                    Err(()) => {
                        let mut resp = error(
                            StatusCode::BAD_REQUEST,
                            "Invalid URL: the path is not UTF-8",
                        );
                        resp.headers_mut().insert(MODE_HEADER, st.mode.clone());
                        return Box::pin(async move { Ok(resp) });
                    }
                };
                return Box::pin(async move {
                    let mut resp = read_file(&st, &name, &path, req.headers()).await;
                    resp.headers_mut().insert(MODE_HEADER, st.mode.clone());
                    Ok(resp)
                });
            }
        }
        Box::pin(hyper::service::Service::call(&self.app, req))
    }
}

async fn read_file(st: &Arc<AppState>, name: &str, path: &str, headers: &HeaderMap) -> Response {
    let Ok(permit) = st.limit.clone().try_acquire_owned() else {
        st.metrics.count(503);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many concurrent reads (--max-concurrent)\n",
        )
            .into_response();
    };
    let admitted = Admitted::new(permit, &st.metrics.in_flight);
    let t0 = Instant::now();
    let (resp, bytes) = serve_range(st, name, path, headers, admitted).await;
    st.metrics.count(resp.status().as_u16());
    if bytes > 0 {
        st.metrics.bytes.inc_by(bytes);
        st.metrics.latency.observe(t0.elapsed().as_secs_f64());
    }
    resp
}

/// A request let in under `--max-concurrent`: the permit and the in-flight gauge are held
/// until the response body has been written (they travel inside the body), not only until the
/// handler returns, so clients that do not read their answers count against the cap.
struct Admitted {
    _permit: OwnedSemaphorePermit,
    in_flight: Gauge,
}

impl Admitted {
    fn new(permit: OwnedSemaphorePermit, in_flight: &Gauge) -> Self {
        in_flight.inc();
        Admitted {
            _permit: permit,
            in_flight: in_flight.clone(),
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// A response body's bytes with what they hold: the buffer, its share of the response budget
/// and the request's admission. Dropped when hyper has written the last byte (or the
/// connection is gone).
struct HeldBody {
    /// Always Some until dropped (then it goes back to `bufs`).
    buf: Option<AlignedBuf>,
    bufs: Arc<BufPool>,
    _reserved: Reservation,
    _admitted: Admitted,
}

impl AsRef<[u8]> for HeldBody {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| b.as_slice())
    }
}

impl Drop for HeldBody {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.bufs.give(b);
        }
    }
}

/// Open `path` beneath the data dir `root` without following anything out of it. Opened
/// non-blocking so a FIFO cannot stall the open; the flag is cleared again for regular files
/// (io_uring would otherwise answer EAGAIN instead of waiting for the disk). `Ok(None)` for
/// anything but a regular file.
fn open_beneath(root: &OwnedFd, path: &str, direct: bool) -> std::io::Result<Option<OpenFile>> {
    let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    if direct {
        flags |= OFlags::DIRECT;
    }
    let fd = rustix::fs::openat2(
        root,
        path,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Ok(None);
    }
    rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
    Ok(Some(OpenFile {
        file: Arc::new(File::from(fd)),
        size: st.st_size as u64,
    }))
}

/// The file for `rel` in data dir `dir`: from the open-file cache when fresh, else opened (and
/// cached). Err is the response to send.
fn lookup(
    st: &AppState,
    dir: usize,
    name: &str,
    rel: &str,
    cached: bool,
) -> Result<(OpenFile, bool), Box<Response>> {
    let now = Instant::now();
    if cached {
        if let Some(f) = st.files.get(dir, rel, now) {
            return Ok((f, true));
        }
    }
    match open_beneath(&st.dirs[dir].1, rel, st.direct) {
        Ok(Some(f)) => {
            st.files.insert(dir, rel, f.clone(), now);
            Ok((f, false))
        }
        Ok(None) => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("{name}/{rel}: not a regular file"),
        ))),
        // EXDEV: the path leaves the data dir (symlink or magic link); same answer as missing.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::EXDEV) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
            ) =>
        {
            st.files.forget(dir, rel);
            Err(Box::new(error(
                StatusCode::NOT_FOUND,
                format!("{name}/{rel}: not found in the data dir"),
            )))
        }
        Err(e) => Err(Box::new(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{name}/{rel}: {e}"),
        ))),
    }
}

/// The whole range from the page cache in one `preadv2(RWF_NOWAIT)` into `buf`; Err gives the
/// buffer back on a miss, part of it, EOF or an error (the pool then reads it and reports what
/// happened).
fn read_hit(
    file: &File,
    at: u64,
    len: usize,
    mut buf: AlignedBuf,
) -> Result<AlignedBuf, AlignedBuf> {
    use std::os::fd::AsRawFd;
    // SAFETY: the buffer holds at least len bytes (BufPool::take).
    let n = unsafe {
        ringmaster_ring::io::cached::read_nowait(file.as_raw_fd(), buf.as_mut_ptr(), len, at)
    };
    if n == Some(len) {
        buf.set_len(len);
        Ok(buf)
    } else {
        Err(buf)
    }
}

async fn serve_range(
    st: &AppState,
    name: &str,
    path: &str,
    headers: &HeaderMap,
    admitted: Admitted,
) -> (Response, u64) {
    let Some(dir) = st.dirs.iter().position(|(n, _)| n == name) else {
        return (
            error(StatusCode::NOT_FOUND, format!("no data dir named '{name}'")),
            0,
        );
    };
    let rel = match paths::check_relative(path) {
        Ok(p) => p,
        Err(e) => return (error(StatusCode::BAD_REQUEST, e), 0),
    };
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(v) => {
            let Ok(v) = v.to_str() else {
                return (
                    error(StatusCode::BAD_REQUEST, "Range header is not ASCII"),
                    0,
                );
            };
            match range::parse_range(v) {
                Ok(s) => Some((v, s)),
                Err(e) => return (error(StatusCode::BAD_REQUEST, e), 0),
            }
        }
    };
    // A cached entry may be stale (the file shrank, grew or was replaced in place): an answer
    // that depends on its size (416, a short read) is checked again from a fresh open.
    let mut use_cache = true;
    loop {
        let (open, from_cache) = match lookup(st, dir, name, rel, use_cache) {
            Ok(f) => f,
            Err(resp) => return (*resp, 0),
        };
        use_cache = false;
        let size = open.size;
        let (first, last, partial) = match range {
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
            Some((v, spec)) => match range::resolve(spec, size) {
                Some((a, b)) => (a, b, true),
                None if from_cache => {
                    st.files.forget(dir, rel);
                    continue;
                }
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
            },
        };
        let len = last - first + 1;
        if len > st.max_range {
            return (error(StatusCode::BAD_REQUEST, format!(
                "range of {len} bytes is over the {} byte cap (--max-range-bytes): request smaller ranges", st.max_range)), 0);
        }
        // O_DIRECT reads whole 4 KiB blocks: read the blocks around the range, send the range.
        let align = AlignedBuf::ALIGN as u64;
        let (at, skip) = if st.direct {
            (first / align * align, first % align)
        } else {
            (first, 0)
        };
        let read_len = if st.direct {
            (skip + len).div_ceil(align) * align
        } else {
            len
        };
        let Some(reserved) = st.budget.try_reserve(read_len) else {
            return (
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    "response memory budget spent (--max-response-bytes)\n",
                )
                    .into_response(),
                0,
            );
        };
        let buf = st.bufs.take(read_len as usize);
        let hit = if st.inline_hits {
            read_hit(&open.file, at, read_len as usize, buf)
        } else {
            Err(buf)
        };
        let read = match hit {
            Ok(b) => Ok(b),
            Err(buf) => {
                read_async(&st.pool, open.file, at, read_len as usize, buf, st.direct).await
            }
        };
        let buf = match read {
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
        if (buf.len() as u64) < skip + len {
            // The file is shorter than its size said: it shrank. Never answer with bytes past
            // its end; a cached size gets one fresh look.
            st.files.forget(dir, rel);
            if from_cache {
                continue;
            }
            return (
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "{name}/{rel}: file shrank while reading ({} of {len} bytes)",
                        (buf.len() as u64).saturating_sub(skip)
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
        let held = HeldBody {
            buf: Some(buf),
            bufs: st.bufs.clone(),
            _reserved: reserved,
            _admitted: admitted,
        };
        let body = Bytes::from_owner(held).slice(skip as usize..(skip + len) as usize);
        let mut resp = Response::new(Body::from(body));
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
        return (resp, len);
    }
}

/// Read `len` bytes at `offset` into `buf` (at least `len` bytes) through the pool (fast path
/// first), awaiting the result on the
/// caller's runtime. Ok is the buffer with `len()` = bytes read (short only at EOF).
pub async fn read_async(
    pool: &Pool,
    file: Arc<File>,
    offset: u64,
    len: usize,
    buf: AlignedBuf,
    direct: bool,
) -> std::io::Result<AlignedBuf> {
    use std::io;
    let (tx, rx) = oneshot::channel::<ReadOutcome>();
    let job = ReadJob::new(
        file,
        offset,
        len,
        buf,
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
