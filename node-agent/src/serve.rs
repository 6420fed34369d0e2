//! `ringmaster-agent serve`: the command line of the HTTP read service (the service itself is
//! the `ringmaster-serve` crate).

use std::net::SocketAddr;
use std::path::PathBuf;

use ringmaster_ring::io::Policy;
use ringmaster_serve::{
    break_ring_after_from_env, start, ServeConfig, DEFAULT_HEADER_READ_TIMEOUT_SECS,
    DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RANGE_BYTES,
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
    /// (preadv2 RWF_NOWAIT) first: measures or exercises the rings alone.
    #[arg(long)]
    pub no_cache_fast_path: bool,
}

/// `serve` until SIGINT/SIGTERM. Prints `listening on ADDR worker_mode=MODE reason=...` on stdout.
pub fn run(a: ServeArgs) -> i32 {
    crate::init_tracing();
    let Some(rt) = crate::async_runtime(None) else {
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
            break_ring_after: match break_ring_after_from_env() {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return 1;
                }
            },
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
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: cannot watch SIGTERM: {e}");
                    return 2;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: finishing in-flight reads");
        h.shutdown().await;
        0
    })
}
