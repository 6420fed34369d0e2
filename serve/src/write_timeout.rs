//! A connection whose writes fail with `TimedOut` once they have made no progress for the write
//! timeout: a client that stops reading its response cannot hold the connection, its buffers
//! and its concurrency permit forever. Reads pass through (hyper's header read timeout bounds
//! those). The timer is armed only when a write would block, so a client that keeps up costs no
//! timer at all. On a timeout the socket is set to reset on close (SO_LINGER 0), so the bytes
//! still queued for the stalled client are dropped at once instead of lingering in the kernel.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

pub struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Deadline of the write that is waiting, if one is.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Socket to reset on a timeout.
    reset_fd: Option<std::os::fd::RawFd>,
}

impl<T> WriteTimeout<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled: None,
            reset_fd: None,
        }
    }

    /// On a timeout, make closing `fd` (the socket `inner` wraps) send a reset.
    pub fn reset_on_timeout(mut self, fd: std::os::fd::RawFd) -> Self {
        self.reset_fd = Some(fd);
        self
    }

    /// After the inner write returned `r`: progress disarms the timer; Pending arms it (once)
    /// and turns into `TimedOut` when it fires.
    fn watch<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    if let Some(fd) = self.reset_fd {
                        let linger = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        // SAFETY: fd is the socket `inner` owns (open while self lives);
                        // linger is a valid struct of the size passed.
                        unsafe {
                            libc::setsockopt(
                                fd,
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                (&linger as *const libc::linger).cast(),
                                std::mem::size_of::<libc::linger>() as libc::socklen_t,
                            );
                        }
                    }
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "client read nothing for {} s (--write-timeout-secs)",
                            timeout.as_secs()
                        ),
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T> WriteTimeout<T> {
    #[cfg(test)]
    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.stalled.as_ref().map(|s| s.deadline())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    /// A peer that never reads: writes fill the duplex buffer, then block, then time out.
    #[tokio::test]
    async fn a_stalled_write_times_out_and_progress_disarms() {
        let (a, _b) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(a, Duration::from_millis(300));
        w.write_all(&[0u8; 64]).await.unwrap();
        assert!(
            w.deadline().is_none(),
            "a write that made progress armed the timer"
        );
        let t0 = Instant::now();
        let e = w.write_all(&[1u8; 1]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(Instant::now() - t0 >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(a, Duration::from_millis(500));
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 16];
            while got < 512 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                got += b.read(&mut buf).await.unwrap();
            }
            got
        });
        // 512 bytes through a 64-byte pipe read 16 bytes per 50 ms: ~1.6 s in all, never
        // 500 ms without progress.
        w.write_all(&[2u8; 512]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 512);
    }
}
