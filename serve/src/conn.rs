//! Accepting connections with bounds, so slow or idle clients cannot exhaust the service:
//! at most `max_connections` open at once (the rest wait in the kernel's listen backlog),
//! and a header read timeout that closes a connection which does not deliver a complete
//! request head in time (slowloris) or sits idle between keep-alive requests, and a write
//! timeout that closes (resets) a connection whose client stops reading its response.
//! Graceful shutdown lets requests in progress finish.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

use super::write_timeout::WriteTimeout;
use super::ReadService;

/// Connection bounds of the read service.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
}

/// Serve `svc` on `listener` until `stop` fires, then wait for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    svc: ReadService,
    limits: ConnLimits,
    open: Gauge,
    mut stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // Over the cap, stop accepting: new clients wait in the backlog, no fd is spent.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = &mut stop => break,
        };
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // EMFILE/ENFILE/ECONNABORTED: transient; back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        // Small range responses must not wait for Nagle + delayed ACK (nginx sets it too).
        let _ = tcp.set_nodelay(true);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
        let io = WriteTimeout::new(tcp, limits.write_timeout).reset_on_timeout(fd);
        let conn = http.serve_connection(TokioIo::new(io), svc.clone());
        let conn = graceful.watch(conn);
        let open = open.clone();
        open.inc();
        tokio::spawn(async move {
            // Errors here are the client's (reset, header timeout): nothing to report.
            let _ = conn.await;
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
