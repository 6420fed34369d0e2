//! Ringmaster node agent as a library, so integration tests and benches reach the parts.
//!
//! The host core (host facts, sysctls, probes, read workers) is the `ringmaster-ring` crate and
//! the HTTP read service the `ringmaster-serve` crate; neither knows Kubernetes. Here, one
//! module per concern:
//! - [`tune`]    the fs.aio-max-nr tuner with its state file (never lowers, restorable)
//! - [`check`]   the `check` report (text/JSON) built from host + probe
//! - [`serve`]   the `serve` command line over `ringmaster-serve`
//! - [`bench`]   random-read benchmark
//! - [`handoff`] files the privileged agent and the unprivileged reader exchange
//! - [`datadirs`] checks of the data dirs as the reader uses them (exists, dir, searchable)
//! - [`reader`]  the reader process: config → probe → pool → serve, report back
//! - [`cluster`] Kubernetes glue: watch StorageCluster, StorageNode, labels, events
//! - [`settings`] verified aio settings for the storage service (aio.toml, aio.env)
//! - [`safe_fs`] the one durable atomic write, and bounded reads of untrusted files
//! - [`boot`]    this boot's id, to tell state and reports from an earlier boot

pub mod bench;
pub mod boot;
pub mod check;
pub mod cluster;
pub mod datadirs;
pub mod handoff;
pub mod reader;
pub mod safe_fs;
pub mod serve;
pub mod settings;
pub mod tune;

/// Initialise tracing from `RUST_LOG` (default `info`), text or JSON (`RINGMASTER_LOG_FORMAT=json`).
/// A multi-threaded tokio runtime (`worker_threads`: tokio's default when `None`), or
/// `None` after printing why it could not start; the caller exits with its own code.
pub fn async_runtime(worker_threads: Option<usize>) -> Option<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        b.worker_threads(n);
    }
    match b.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("RINGMASTER_LOG_FORMAT").is_ok_and(|v| v == "json");
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = b.json().try_init();
    } else {
        let _ = b.try_init();
    }
}
