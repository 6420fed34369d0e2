//! The HTTP read service (`ringmaster-agent serve`, and the reader container): HTTP/1.1 range
//! reads over the worker pool. No Kubernetes here; the CLI lives in the agent binary.
//!
//! `GET /v1/files/{name}/{path}` with `Range: bytes=a-b` → 206 (416 unsatisfiable, 404 missing or
//! outside the data dir, 400 bad path or range, 503 over the concurrency cap), confined to the
//! named data dir. `/metrics` (Prometheus), `/healthz`, `/readyz`. `HEAD` answers the same
//! fields without a body; other methods get 405. Every response carries
//! `X-Ringmaster-Worker-Mode: io_uring|pread`. Every route but those three needs
//! `Authorization: Bearer <token>` (401 otherwise) unless the service runs
//! [`Auth::Unauthenticated`]; see `auth`. The HTTP/1.1 layer is our own (`http`, `conn`);
//! large ranges wholly in the page cache go out with sendfile (`zerocopy`).

pub mod auth;
pub mod budget;
pub mod bufpool;
mod conn;
pub mod filecache;
pub mod http;
pub mod metrics;
pub mod paths;
pub mod range;
mod zerocopy;

use std::borrow::Cow;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
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
use http::{ContentRange, Head, Method, ReplyHead};
use metrics::Metrics;
use zerocopy::ZeroCopy;

/// Header naming the worker mode on every response (written by `http::encode_head`).
pub const MODE_HEADER: &str = "x-ringmaster-worker-mode";

pub const DEFAULT_MAX_RANGE_BYTES: u64 = 16 << 20;
pub const DEFAULT_MAX_CONCURRENT: u32 = 256;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 128 << 20;
pub const DEFAULT_OPEN_FILE_CACHE_ENTRIES: u32 = 1024;
pub const DEFAULT_OPEN_FILE_CACHE_VALID_MS: u64 = 1000;
/// Smallest range sent with sendfile(2) when the page cache holds all of it (see
/// `ServeConfig::sendfile_min_bytes`). Measured: at 16 KiB sendfile already costs less CPU per
/// request than the copy (about 15 %), at 4 KiB it costs more (docs/benchmarks.md).
pub const DEFAULT_SENDFILE_MIN_BYTES: u64 = 16 << 10;

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
    /// Ranges of at least this many bytes that `cachestat(2)` finds wholly in the page cache
    /// go from the page cache to the socket with `sendfile(2)` (no copy through a buffer);
    /// 0 never does. Buffered files with the fast path on only (not `direct`, not
    /// `cache_fast_path: false`).
    pub sendfile_min_bytes: u64,
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
            sendfile_min_bytes: DEFAULT_SENDFILE_MIN_BYTES,
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
    mode: &'static str,
    ready: AtomicBool,
    /// None: unauthenticated (`Auth::Unauthenticated`).
    token: Option<Arc<TokenFile>>,
    /// See `ServeConfig::sendfile_min_bytes` (0: never).
    sendfile_min: u64,
    zero_copy: ZeroCopy,
    limits: conn::ConnLimits,
}

/// A running read service.
pub struct ServeHandle {
    addr: SocketAddr,
    mode: WorkerMode,
    reason: String,
    state: Arc<AppState>,
    stop: tokio::sync::watch::Sender<bool>,
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
        let _ = self.stop.send(true);
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
    // sendfile serves from the page cache too: off when reads must go to the workers.
    let sendfile_min = if cfg.direct || !cfg.cache_fast_path {
        0
    } else {
        cfg.sendfile_min_bytes
    };
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
        mode: mode.as_str(),
        ready: AtomicBool::new(true),
        token: token.clone(),
        sendfile_min,
        zero_copy: ZeroCopy::new(sendfile_min > 0),
        limits: conn::ConnLimits {
            max_connections: cfg.max_connections as usize,
            header_read_timeout: cfg.header_read_timeout,
            write_timeout: cfg.write_timeout,
        },
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(conn::serve(listener, state.clone(), stopped));
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

/// `Content-Type` of the text answers (errors, probes).
const TEXT: &str = "text/plain; charset=utf-8";

/// A response: its head fields and its body. `conn` writes it; what the body holds (buffer,
/// budget, admission) is released once the last byte is written or the connection is gone.
pub(crate) struct Reply {
    pub head: ReplyHead,
    pub body: ReplyBody,
}

pub(crate) enum ReplyBody {
    None,
    Static(&'static str),
    Text(String),
    /// Bytes `[start, start + len)` of a read buffer.
    Buf(HeldBody, usize, usize),
    /// A page-cache range sent with sendfile.
    File(FileBody),
}

/// A range of an open file whose pages were all in the page cache, sent with sendfile, and
/// the cache entry to forget if the file turns out shorter than its size said.
pub(crate) struct FileBody {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
    pub dir: usize,
    pub rel: Box<str>,
    /// Counted in the response budget like a buffered body: what a stalled client holds
    /// (its permit, the kernel's socket buffer) stays bounded the same way.
    _reserved: Reservation,
    _admitted: Admitted,
}

impl Reply {
    fn empty(status: u16) -> Reply {
        Reply {
            head: ReplyHead::new(status, 0),
            body: ReplyBody::None,
        }
    }

    fn fixed(status: u16, msg: &'static str) -> Reply {
        let mut head = ReplyHead::new(status, msg.len() as u64);
        head.content_type = Some(TEXT);
        Reply {
            head,
            body: ReplyBody::Static(msg),
        }
    }

    fn text(status: u16, msg: String) -> Reply {
        let mut head = ReplyHead::new(status, msg.len() as u64);
        head.content_type = Some(TEXT);
        Reply {
            head,
            body: ReplyBody::Text(msg),
        }
    }

    fn busy(msg: &'static str) -> Reply {
        let mut r = Reply::fixed(503, msg);
        r.head.retry_after = true;
        r
    }

    /// The answer to a head that cannot be served (the connection is then closed).
    pub(crate) fn refused(e: http::HeadError) -> Reply {
        Reply::fixed(e.status(), e.message())
    }
}

fn error(status: u16, msg: impl std::fmt::Display) -> Reply {
    Reply::text(status, format!("{msg}\n"))
}

/// The 401 for a request the token check refused, counted in the metrics.
fn unauthorized(st: &AppState, verdict: Verdict, file_route: bool) -> Reply {
    st.metrics.count_unauthorized(verdict.label(), file_route);
    let msg = match verdict {
        Verdict::Invalid => "wrong bearer token\n",
        _ => {
            "missing bearer token: send Authorization: Bearer <token> (the StorageCluster's \
              <name>-read-token Secret, key token)\n"
        }
    };
    let mut r = Reply::fixed(401, msg);
    r.head.www_authenticate = Some(verdict.challenge());
    r
}

fn metrics_page(st: &AppState) -> Reply {
    st.metrics.pool_in_flight.set(st.pool.in_flight() as i64);
    let replaced = st.pool.ring_replacements();
    let shown = st.metrics.ring_replacements.get();
    if replaced > shown {
        st.metrics.ring_replacements.inc_by(replaced - shown);
    }
    let mut r = Reply::text(200, st.metrics.encode());
    r.head.content_type = Some("application/openmetrics-text; version=1.0.0; charset=utf-8");
    r
}

/// The answer to one request head (a GET's or a HEAD's: `conn` leaves out a HEAD's body).
pub(crate) async fn respond(st: &AppState, req: &Head<'_>) -> Reply {
    let path = req.path;
    if let Some(token) = &st.token {
        if !auth::is_open_path(path) {
            let verdict = token.check(req.authorization);
            if verdict != Verdict::Allowed {
                return unauthorized(st, verdict, path.starts_with("/v1/files/"));
            }
        }
    }
    if req.method == Method::Other {
        let mut r = Reply::fixed(405, "method not allowed: GET or HEAD\n");
        r.head.allow = true;
        return r;
    }
    if let Some(route) = file_route(path) {
        let Ok((name, rel)) = route else {
            return error(400, "Invalid URL: the path is not UTF-8");
        };
        return read_file(st, &name, &rel, req).await;
    }
    match path {
        "/metrics" => metrics_page(st),
        "/healthz" => Reply::fixed(200, "ok\n"),
        "/readyz" if st.ready.load(Ordering::SeqCst) => Reply::fixed(200, "ready\n"),
        "/readyz" => Reply::fixed(503, "shutting down\n"),
        _ => Reply::empty(404),
    }
}

async fn read_file(st: &AppState, name: &str, path: &str, req: &Head<'_>) -> Reply {
    let Ok(permit) = st.limit.clone().try_acquire_owned() else {
        st.metrics.count(503);
        return Reply::busy("too many concurrent reads (--max-concurrent)\n");
    };
    let admitted = Admitted::new(permit, &st.metrics.in_flight);
    let t0 = Instant::now();
    let (reply, bytes) = serve_range(st, name, path, req, admitted).await;
    st.metrics.count(reply.head.status);
    if bytes > 0 {
        st.metrics.bytes.inc_by(bytes);
        st.metrics.latency.observe(t0.elapsed().as_secs_f64());
    }
    reply
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
/// and the request's admission. Dropped when the last byte has been written (or the
/// connection is gone).
pub(crate) struct HeldBody {
    /// Always Some until dropped (then it goes back to `bufs`).
    buf: Option<AlignedBuf>,
    bufs: Arc<BufPool>,
    _reserved: Reservation,
    _admitted: Admitted,
}

impl HeldBody {
    pub(crate) fn bytes(&self) -> &[u8] {
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
) -> Result<(OpenFile, bool), Box<Reply>> {
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
            404,
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
                404,
                format!("{name}/{rel}: not found in the data dir"),
            )))
        }
        Err(e) => Err(Box::new(error(500, format!("{name}/{rel}: {e}")))),
    }
}

/// Size of the open file now (one fstat).
fn current_size(file: &File) -> std::io::Result<u64> {
    Ok(rustix::fs::fstat(file)?.st_size as u64)
}

async fn serve_range(
    st: &AppState,
    name: &str,
    path: &str,
    req: &Head<'_>,
    admitted: Admitted,
) -> (Reply, u64) {
    let Some(dir) = st.dirs.iter().position(|(n, _)| n == name) else {
        return (error(404, format!("no data dir named '{name}'")), 0);
    };
    let rel = match paths::check_relative(path) {
        Ok(p) => p,
        Err(e) => return (error(400, e), 0),
    };
    let range = match req.range {
        None => None,
        Some(v) => {
            let Ok(v) = std::str::from_utf8(v) else {
                return (error(400, "Range header is not ASCII"), 0);
            };
            match range::parse_range(v) {
                Ok(s) => Some((v, s)),
                Err(e) => return (error(400, e), 0),
            }
        }
    };
    let head_only = req.method == Method::Head;
    // A cached entry may be stale (the file shrank, grew or was replaced in place): an answer
    // that depends on its size (416, a short read) is checked again from a fresh open.
    let mut use_cache = true;
    loop {
        let (open, from_cache) = match lookup(st, dir, name, rel, use_cache) {
            Ok(f) => f,
            Err(reply) => return (*reply, 0),
        };
        use_cache = false;
        let size = open.size;
        let (first, last, partial) = match range {
            None => {
                if size > st.max_range {
                    return (error(400, format!(
                        "file is {size} bytes, over the {} byte cap (--max-range-bytes): send a Range header", st.max_range)), 0);
                }
                if size == 0 {
                    let mut r = Reply::empty(200);
                    r.head.accept_ranges = true;
                    return (r, 0);
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
                    let mut r = Reply::text(
                        416,
                        format!("range {v} is outside the file ({size} bytes)\n"),
                    );
                    r.head.content_range = Some(ContentRange::Unsatisfied { size });
                    return (r, 0);
                }
            },
        };
        let len = last - first + 1;
        if len > st.max_range {
            return (error(400, format!(
                "range of {len} bytes is over the {} byte cap (--max-range-bytes): request smaller ranges", st.max_range)), 0);
        }
        let mut head = ReplyHead::new(if partial { 206 } else { 200 }, len);
        head.accept_ranges = true;
        head.content_type = Some("application/octet-stream");
        if partial {
            head.content_range = Some(ContentRange::Bytes { first, last, size });
        }
        if head_only {
            // The size the head states was checked by the open (or is at most VALID old).
            return (
                Reply {
                    head,
                    body: ReplyBody::None,
                },
                0,
            );
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
                Reply::busy("response memory budget spent (--max-response-bytes)\n"),
                0,
            );
        };
        if st.zero_copy.usable() && len >= st.sendfile_min {
            use std::os::fd::AsRawFd;
            if st.zero_copy.all_cached(open.file.as_raw_fd(), first, len) {
                // A cached size may be stale: a file that shrank since would come up short in
                // the middle of the answer, so compare with its size now (one fstat).
                if from_cache && current_size(&open.file).ok() != Some(size) {
                    st.files.forget(dir, rel);
                    continue;
                }
                let body = ReplyBody::File(FileBody {
                    file: open.file,
                    offset: first,
                    len,
                    dir,
                    rel: rel.into(),
                    _reserved: reserved,
                    _admitted: admitted,
                });
                return (Reply { head, body }, len);
            }
        }
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
                return (Reply::busy("read queue full\n"), 0)
            }
            Err(e) => return (error(500, format!("{name}/{rel}: read failed: {e}")), 0),
        };
        if (buf.len() as u64) < skip + len {
            // The file is shorter than its size said: it shrank. Never answer with bytes past
            // its end; a cached size gets one fresh look.
            let got = (buf.len() as u64).saturating_sub(skip);
            st.bufs.give(buf);
            st.files.forget(dir, rel);
            if from_cache {
                continue;
            }
            return (
                error(
                    500,
                    format!("{name}/{rel}: file shrank while reading ({got} of {len} bytes)"),
                ),
                0,
            );
        }
        let held = HeldBody {
            buf: Some(buf),
            bufs: st.bufs.clone(),
            _reserved: reserved,
            _admitted: admitted,
        };
        let body = ReplyBody::Buf(held, skip as usize, len as usize);
        return (Reply { head, body }, len);
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
