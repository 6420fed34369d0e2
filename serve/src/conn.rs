//! The read port's connections, HTTP/1.1 over tokio's `TcpStream` (no hyper): one task per
//! connection with one reusable read buffer ([`HEAD_BUF`]) and one reusable Vec for response
//! heads, so a request on a kept-alive connection allocates nothing here.
//!
//! Bounds, so slow or idle clients cannot exhaust the service:
//! - at most `max_connections` open at once; over the cap the accept loop stops accepting
//!   (new clients wait in the kernel's listen backlog, costing no fd);
//! - a complete request head must arrive within the header read timeout, counted from the
//!   moment the connection waits for it (so it is also the idle keep-alive limit): slowloris
//!   clients are closed;
//! - a response write that makes no progress for the write timeout resets the connection
//!   (SO_LINGER 0: the bytes still queued for a client that stopped reading are dropped);
//! - a head over [`HEAD_BUF`] bytes gets 431, a malformed one 400, and the connection closes.
//!
//! Requests pipelined in one read are answered in order. Graceful shutdown: the accept loop
//! stops, connections waiting for a head close, a response in progress is finished (with
//! `Connection: close`), and `serve` returns once every connection is gone.
//!
//! Bodies come three ways: bytes in memory (one `writev` of head and body), or a range of a
//! file wholly in the page cache (`send` of the head with MSG_MORE, then `sendfile` from the
//! file's fd). If sendfile finds the file shorter than the head promised (it was truncated
//! after the answer began), the connection is reset: the client sees a short body and a reset,
//! never other bytes in their place.

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::http::{self, Method, Persist, HEAD_BUF};
use super::{zerocopy, AppState, FileBody, Reply, ReplyBody};

/// Connection bounds of the read service.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
}

/// How long, and how many bytes, a closing connection still reads (and drops) after its last
/// answer, so a client still sending does not get a reset that destroys the answer unread.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 << 10;

/// Serve on `listener` until `stop` turns true, then wait for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    st: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let max = st.limits.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    loop {
        // Over the cap, stop accepting: new clients wait in the backlog, no fd is spent.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = stop.changed() => break,
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
            _ = stop.changed() => break,
        };
        // Small range responses must not wait for Nagle + delayed ACK (nginx sets it too).
        let _ = tcp.set_nodelay(true);
        let st = st.clone();
        let stop = stop.clone();
        st.metrics.connections.inc();
        tokio::spawn(async move {
            Connection::new(tcp).run(&st, stop).await;
            st.metrics.connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    // Each connection holds a slot until it is gone: all slots back, all connections done.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// How a response write ended, when it did not end well.
enum WriteEnd {
    /// The client went away (reset, broken pipe): nothing more to do.
    Gone,
    /// No progress for the write timeout, or a file shorter than its head said: reset.
    Reset,
}

struct Connection {
    tcp: TcpStream,
    buf: Box<[u8]>,
    /// Unparsed request bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The response head being written.
    out: Vec<u8>,
    date_secs: u64,
    date: [u8; 29],
}

impl Connection {
    fn new(tcp: TcpStream) -> Self {
        Connection {
            tcp,
            buf: vec![0u8; HEAD_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            out: Vec::with_capacity(512),
            date_secs: 0,
            date: http::http_date(0),
        }
    }

    /// The `Date` of an answer now (formatted once a second).
    fn date(&mut self) -> [u8; 29] {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs != self.date_secs {
            self.date_secs = secs;
            self.date = http::http_date(secs);
        }
        self.date
    }

    async fn run(mut self, st: &AppState, mut stop: watch::Receiver<bool>) {
        let limits = st.limits;
        // One timer for the connection's life: moved only when it fires before the deadline
        // (the deadline itself is a plain Instant, set per head).
        let sleep = tokio::time::sleep(limits.header_read_timeout);
        tokio::pin!(sleep);
        loop {
            let mut deadline: Option<Instant> = None;
            let parsed = loop {
                match http::parse_head(&self.buf[self.start..self.end]) {
                    Ok(Some(h)) => break Ok(h),
                    Ok(None) => {}
                    Err(e) => break Err(e),
                }
                if self.end - self.start == HEAD_BUF {
                    break Err(http::HeadError::TooLarge);
                }
                if self.end == HEAD_BUF {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                }
                if *stop.borrow() {
                    return;
                }
                let due =
                    *deadline.get_or_insert_with(|| Instant::now() + limits.header_read_timeout);
                tokio::select! {
                    biased;
                    r = self.tcp.read(&mut self.buf[self.end..]) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => self.end += n,
                    },
                    _ = &mut sleep => {
                        if Instant::now() >= due {
                            // Slow (or idle) past the header read timeout.
                            return;
                        }
                        sleep.as_mut().reset(due);
                    }
                    _ = stop.changed() => return,
                }
            };
            let (reply, is_head, keep_alive, minor, used) = match parsed {
                Ok((head, used)) => {
                    let reply = super::respond(st, &head).await;
                    (
                        reply,
                        head.method == Method::Head,
                        head.keep_alive,
                        head.minor,
                        used,
                    )
                }
                Err(e) => {
                    let reply = Reply::refused(e);
                    let _ = self.write(st, reply, false, Persist::Close).await;
                    self.linger().await;
                    return;
                }
            };
            self.start += used;
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            }
            let persist = Persist::of(keep_alive, minor, *stop.borrow());
            match self.write(st, reply, is_head, persist).await {
                Ok(()) if persist.keeps_open() => {}
                Ok(()) => {
                    self.linger().await;
                    return;
                }
                Err(WriteEnd::Gone) => return,
                Err(WriteEnd::Reset) => {
                    zerocopy::reset_on_close(self.tcp.as_raw_fd());
                    return;
                }
            }
        }
    }

    /// Writes `reply` (its head only for HEAD), then drops what it held.
    async fn write(
        &mut self,
        st: &AppState,
        reply: Reply,
        is_head: bool,
        persist: Persist,
    ) -> Result<(), WriteEnd> {
        let date = self.date();
        http::encode_head(&mut self.out, &reply.head, st.mode, &date, persist);
        let timeout = st.limits.write_timeout;
        let body: &[u8] = match &reply.body {
            _ if is_head => &[],
            ReplyBody::None => &[],
            ReplyBody::Static(s) => s.as_bytes(),
            ReplyBody::Text(s) => s.as_bytes(),
            ReplyBody::Buf(held, at, len) => &held.bytes()[*at..*at + *len],
            ReplyBody::File(f) => {
                st.metrics.sendfile.inc();
                return send_file(&self.tcp, &self.out, f, timeout, st).await;
            }
        };
        write_all(&self.tcp, &self.out, body, timeout).await
    }

    /// Close after the last answer: FIN first, then read and drop what the client still sends
    /// (for at most `LINGER`), so its unread answer is not destroyed by a reset.
    async fn linger(mut self) {
        zerocopy::shutdown_write(self.tcp.as_raw_fd());
        let _ = tokio::time::timeout(LINGER, async {
            let mut dropped = 0;
            while dropped < LINGER_BYTES {
                match self.tcp.read(&mut self.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => dropped += n,
                }
            }
        })
        .await;
    }
}

/// Waits until `tcp` takes more bytes, for at most `timeout`.
async fn writable(tcp: &TcpStream, timeout: Duration) -> Result<(), WriteEnd> {
    match tokio::time::timeout(timeout, tcp.writable()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteEnd::Gone),
        Err(_) => Err(WriteEnd::Reset),
    }
}

/// `head` then `body`, in one `writev` when the socket takes them.
async fn write_all(
    tcp: &TcpStream,
    mut head: &[u8],
    mut body: &[u8],
    timeout: Duration,
) -> Result<(), WriteEnd> {
    while !head.is_empty() || !body.is_empty() {
        let r = if head.is_empty() {
            tcp.try_write(body)
        } else {
            tcp.try_write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
        };
        match r {
            Ok(mut n) => {
                let h = n.min(head.len());
                head = &head[h..];
                n -= h;
                body = &body[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(tcp, timeout).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(WriteEnd::Gone),
        }
    }
    Ok(())
}

/// The head (MSG_MORE: it leaves with the first body bytes), then the file range with
/// sendfile. A file that ends early resets the connection and drops its cache entry.
async fn send_file(
    tcp: &TcpStream,
    mut head: &[u8],
    f: &FileBody,
    timeout: Duration,
    st: &AppState,
) -> Result<(), WriteEnd> {
    let sock = tcp.as_raw_fd();
    while !head.is_empty() {
        match tcp.try_io(Interest::WRITABLE, || zerocopy::send_more(sock, head)) {
            Ok(n) => head = &head[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(tcp, timeout).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(WriteEnd::Gone),
        }
    }
    let file = f.file.as_raw_fd();
    let end = f.offset + f.len;
    let mut at = f.offset;
    while at < end {
        // sendfile moves at most 0x7ffff000 bytes a call.
        let chunk = (end - at).min(1 << 30) as usize;
        match tcp.try_io(Interest::WRITABLE, || {
            zerocopy::sendfile(sock, file, &mut at, chunk)
        }) {
            Ok(0) => {
                // The file ended before the range did: it was truncated after the head went
                // out. Never pad or go on with other bytes: reset.
                st.files.forget(f.dir, &f.rel);
                tracing::debug!(file = %f.rel, at, end, "file shrank while sending: connection reset");
                return Err(WriteEnd::Reset);
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(tcp, timeout).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(WriteEnd::Gone),
        }
    }
    Ok(())
}
