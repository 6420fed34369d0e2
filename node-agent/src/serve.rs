//! `ringmaster-agent serve`: the command line of the HTTP read service (the service itself is
//! the `ringmaster-serve` crate).

use std::net::SocketAddr;
use std::path::PathBuf;

use ringmaster_ring::io::Policy;
use ringmaster_serve::Auth;
use ringmaster_serve::{
    break_ring_after_from_env, start, ServeConfig, DEFAULT_HEADER_READ_TIMEOUT_SECS,
    DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RANGE_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_OPEN_FILE_CACHE_ENTRIES, DEFAULT_OPEN_FILE_CACHE_VALID_MS,
    DEFAULT_SENDFILE_MIN_BYTES, DEFAULT_WRITE_TIMEOUT_SECS,
};

/// Parse `NAME=PATH`.
fn parse_data_dir(s: &str) -> Result<(String, PathBuf), String> {
    let (n, p) = s
        .split_once('=')
        .ok_or_else(|| format!("--data-dir '{s}': expected NAME=PATH"))?;
    if n.is_empty() || n.contains('/') || p.is_empty() {
        return Err(format!(
            "--data-dir '{s}': NAME must be non-empty without '/', PATH non-empty"
        ));
    }
    Ok((n.to_string(), PathBuf::from(p)))
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Data dir served under /v1/files/NAME/ (repeatable).
    #[arg(long = "data-dir", value_name = "NAME=PATH", required = true, num_args = 1.., value_parser = parse_data_dir)]
    pub data_dirs: Vec<(String, PathBuf)>,
    /// TCP port (0: any free port, printed at start).
    #[arg(long, default_value_t = ringmaster_api::keys::AGENT_HTTP_PORT)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen: std::net::IpAddr,
    /// Worker threads (one io_uring ring each).
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Reads in flight per ring (ring entries).
    #[arg(long, default_value_t = 128)]
    pub max_events: u32,
    /// io_uring policy: required (fail without it), preferred (fall back to pread), disabled.
    #[arg(long = "io-uring", value_enum, default_value_t = Policy::Preferred)]
    pub io_uring: Policy,
    /// Largest range served in one request, bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_RANGE_BYTES)]
    pub max_range_bytes: u64,
    /// Requests served at once (more get 503).
    #[arg(long, default_value_t = DEFAULT_MAX_CONCURRENT)]
    pub max_concurrent: u32,
    /// Connections open at once; more wait in the kernel's listen backlog.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: u32,
    /// Seconds a client has to send a complete request head before its connection is
    /// closed (slow clients); also the longest a keep-alive connection may sit idle.
    #[arg(long, default_value_t = DEFAULT_HEADER_READ_TIMEOUT_SECS)]
    pub header_read_timeout_secs: u64,
    /// Always queue reads to the workers, skipping the page-cache attempt
    /// (preadv2 RWF_NOWAIT) first and sendfile: measures or exercises the rings alone.
    #[arg(long)]
    pub no_cache_fast_path: bool,
    /// Async runtime threads that accept connections and serve page-cache hits (default: one
    /// per CPU). Benchmarks set it equal to the other server's worker count.
    #[arg(long)]
    pub runtime_threads: Option<usize>,
    /// Seconds a response write may make no progress (the client reads nothing) before the
    /// connection is reset.
    #[arg(long, default_value_t = DEFAULT_WRITE_TIMEOUT_SECS)]
    pub write_timeout_secs: u64,
    /// Bytes of response bodies held in memory at once; a request that does not fit gets 503.
    /// Responses over 1 MiB may hold half of it together.
    #[arg(long, default_value_t = DEFAULT_MAX_RESPONSE_BYTES)]
    pub max_response_bytes: u64,
    /// Open files kept for reuse across requests (0: open the file for every request).
    #[arg(long, default_value_t = DEFAULT_OPEN_FILE_CACHE_ENTRIES)]
    pub open_file_cache_entries: u32,
    /// Milliseconds a cached open file is reused before its path is opened again: the longest
    /// a replaced or deleted file is still served.
    #[arg(long, default_value_t = DEFAULT_OPEN_FILE_CACHE_VALID_MS)]
    pub open_file_cache_valid_ms: u64,
    /// Read files with O_DIRECT through the workers (no page cache).
    #[arg(long)]
    pub direct: bool,
    /// Ranges of at least this many bytes that are wholly in the page cache (cachestat) go
    /// from the page cache to the socket with sendfile, not through a buffer (0: never).
    #[arg(long, default_value_t = DEFAULT_SENDFILE_MIN_BYTES)]
    pub sendfile_min_bytes: u64,
    /// File holding the bearer token every read must send (`Authorization: Bearer <token>`;
    /// 401 otherwise). Read again every second, so a rotated token takes effect without a
    /// restart. /healthz, /readyz and /metrics stay open.
    #[arg(long, value_name = "FILE", conflicts_with = "allow_unauthenticated")]
    pub auth_token_file: Option<PathBuf>,
    /// Serve without authentication: anyone who reaches the port reads the data dirs
    /// (loopback tests and benchmarks). Without it, --auth-token-file is required.
    #[arg(long)]
    pub allow_unauthenticated: bool,
}

/// The service's `Auth` from the two flags; neither is an error naming both.
pub fn auth_from_flags(
    token_file: Option<PathBuf>,
    allow_unauthenticated: bool,
) -> Result<Auth, String> {
    match (token_file, allow_unauthenticated) {
        (Some(f), false) => Ok(Auth::TokenFile(f)),
        (None, true) => Ok(Auth::Unauthenticated),
        (Some(_), true) => {
            Err("--auth-token-file and --allow-unauthenticated exclude each other: pick one".into())
        }
        (None, false) => Err(
            "refusing to serve the data dirs unauthenticated: pass --auth-token-file FILE (a \
             bearer token every read must send), or --allow-unauthenticated to let anyone who \
             reaches the port read"
                .into(),
        ),
    }
}

/// `serve` until SIGINT/SIGTERM. Prints `listening on ADDR worker_mode=MODE reason=...` on stdout.
pub fn run(a: ServeArgs) -> i32 {
    crate::init_tracing();
    let auth = match auth_from_flags(a.auth_token_file.clone(), a.allow_unauthenticated) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if a.runtime_threads == Some(0) {
        eprintln!("error: --runtime-threads must be at least 1 (or leave it out: one per CPU)");
        return 1;
    }
    let Some(rt) = crate::async_runtime(a.runtime_threads) else {
        return 2;
    };
    rt.block_on(async move {
        let cfg = ServeConfig {
            data_dirs: a.data_dirs,
            bind: SocketAddr::new(a.listen, a.port),
            workers: a.workers,
            max_events: a.max_events,
            policy: a.io_uring,
            max_range_bytes: a.max_range_bytes,
            max_concurrent: a.max_concurrent,
            max_connections: a.max_connections,
            header_read_timeout: std::time::Duration::from_secs(a.header_read_timeout_secs),
            cache_fast_path: !a.no_cache_fast_path,
            write_timeout: std::time::Duration::from_secs(a.write_timeout_secs),
            max_response_bytes: a.max_response_bytes,
            open_file_cache_entries: a.open_file_cache_entries,
            open_file_cache_valid: std::time::Duration::from_millis(a.open_file_cache_valid_ms),
            direct: a.direct,
            sendfile_min_bytes: a.sendfile_min_bytes,
            auth,
            break_ring_after: match break_ring_after_from_env() {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return 1;
                }
            },
        };
        // Watch SIGTERM and SIGINT before saying "listening": a signal sent right after that
        // line must shut down gracefully, not kill the process with the default action.
        use tokio::signal::unix::SignalKind;
        let (mut term, mut int) = match (
            watch_signal(SignalKind::terminate(), "SIGTERM"),
            watch_signal(SignalKind::interrupt(), "SIGINT"),
        ) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(code), _) | (_, Err(code)) => return code,
        };
        let h = match start(cfg).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {e:#}");
                return 1;
            }
        };
        println!(
            "listening on {} worker_mode={} reason={}",
            h.local_addr(),
            h.worker_mode(),
            h.worker_mode_reason()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: finishing in-flight reads");
        h.shutdown().await;
        0
    })
}

/// A stream of `kind` signals, or exit code 2 after saying which signal could not be watched.
fn watch_signal(
    kind: tokio::signal::unix::SignalKind,
    name: &str,
) -> Result<tokio::signal::unix::Signal, i32> {
    tokio::signal::unix::signal(kind).map_err(|e| {
        eprintln!("error: cannot watch {name}: {e}");
        2
    })
}
