//! Polling until something holds, with a failure message that says what and why not.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Ok`, and returns that value. `Err` means "not yet":
/// its message is kept, and on timeout the panic reads
/// `timed out after 30s waiting for <what>; last: <message>`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut tries = 0u32;
    loop {
        tries += 1;
        match check().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() >= timeout => panic!(
                "timed out after {:.0?} waiting for {what} ({tries} tries); last: {e:#}",
                start.elapsed()
            ),
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// [`wait_for`] for a blocking check (e.g. one that runs kubectl).
pub fn wait_for_sync<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut tries = 0u32;
    loop {
        tries += 1;
        match check() {
            Ok(v) => return v,
            Err(e) if start.elapsed() >= timeout => panic!(
                "timed out after {:.0?} waiting for {what} ({tries} tries); last: {e:#}",
                start.elapsed()
            ),
            Err(_) => {}
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}
