//! Kernel calls of the zero-copy path: `cachestat(2)` (is a range wholly in the page cache?),
//! `send(MSG_MORE)` of a response head and `sendfile(2)` of its body, and the reset of a
//! connection (SO_LINGER 0). Each is one small function; the decisions live in `lib`/`conn`.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// `cachestat(2)`'s number: new syscalls share one number on every architecture (451 on
/// x86_64 and aarch64 alike); the libc crate does not name it yet.
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// What `cachestat` said of a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached {
    /// Every page of the range is in the page cache.
    All,
    /// Some page is not (or the range lies past the end of the file).
    NotAll,
    /// The kernel has no `cachestat` (before 6.5: ENOSYS) or a seccomp profile refuses it
    /// (EPERM): the errno.
    Unsupported(i32),
}

fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no memory effects.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    })
}

/// Whether bytes `[first, first + len)` of `fd` are all in the page cache. `len` > 0.
pub fn cached(fd: RawFd, first: u64, len: u64) -> Cached {
    let page = page_size();
    let range = CachestatRange { off: first, len };
    let mut cs = Cachestat::default();
    // SAFETY: cachestat reads `range` and writes `cs`, both live structs of the layout the
    // kernel expects (struct cachestat_range, struct cachestat); flags must be 0.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd,
            &range as *const CachestatRange,
            &mut cs as *mut Cachestat,
            0u32,
        )
    };
    if r != 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return match errno {
            libc::ENOSYS | libc::EPERM | libc::EOPNOTSUPP => Cached::Unsupported(errno),
            _ => Cached::NotAll,
        };
    }
    let pages = (first + len - 1) / page - first / page + 1;
    if cs.nr_cache >= pages {
        Cached::All
    } else {
        Cached::NotAll
    }
}

/// Whether the zero-copy path is still tried: cleared for good (and said once) the first
/// time `cachestat` turns out to be missing or forbidden.
pub struct ZeroCopy {
    usable: AtomicBool,
}

impl ZeroCopy {
    pub fn new(enabled: bool) -> Self {
        ZeroCopy {
            usable: AtomicBool::new(enabled),
        }
    }

    pub fn usable(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }

    /// `cached`, turning the path off on `Unsupported`.
    pub fn all_cached(&self, fd: RawFd, first: u64, len: u64) -> bool {
        self.judge(cached(fd, first, len))
    }

    /// Whether to send with sendfile after `cachestat` said `c`.
    fn judge(&self, c: Cached) -> bool {
        match c {
            Cached::All => true,
            Cached::NotAll => false,
            Cached::Unsupported(errno) => {
                if self.usable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %std::io::Error::from_raw_os_error(errno),
                        "cachestat(2) is not available (kernel before 6.5, or a seccomp \
                         profile without it): large ranges are copied, not sent with sendfile"
                    );
                }
                false
            }
        }
    }
}

/// `send(fd, buf, MSG_MORE)`: the head waits for the body that follows it in the same segment.
pub fn send_more(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes; fd is the caller's open socket.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_MORE | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `sendfile(sock, file, &offset, len)`: bytes sent (0 at the end of the file), `offset`
/// advanced by the kernel.
pub fn sendfile(sock: RawFd, file: RawFd, offset: &mut u64, len: usize) -> std::io::Result<usize> {
    let mut off = *offset as libc::off_t;
    // SAFETY: both fds are open for the call; off is a live off_t the kernel updates.
    let n = unsafe { libc::sendfile(sock, file, &mut off, len) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    *offset = off as u64;
    Ok(n as usize)
}

/// Make the next close of `fd` reset the connection (RST) and drop what is still queued,
/// instead of a FIN after the queued bytes.
pub fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: fd is the caller's open socket; linger is a valid struct of the size passed.
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

/// `shutdown(fd, SHUT_WR)`: send FIN after what is queued; reading stays possible.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: fd is the caller's open socket; shutdown has no memory effects.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_missing_or_forbidden_cachestat_turns_sendfile_off_for_good() {
        for errno in [libc::ENOSYS, libc::EPERM] {
            let z = ZeroCopy::new(true);
            assert!(z.judge(Cached::All));
            assert!(!z.judge(Cached::NotAll));
            assert!(z.usable(), "a range not cached keeps the path");
            assert!(!z.judge(Cached::Unsupported(errno)));
            assert!(!z.usable(), "errno {errno} turns it off");
            assert!(!z.judge(Cached::Unsupported(errno)), "and it stays off");
        }
        assert!(!ZeroCopy::new(false).usable());
    }

    #[test]
    fn cachestat_sees_a_file_just_written() {
        let path = std::env::temp_dir().join(format!("rm-cachestat-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![7u8; 256 << 10]).unwrap();
        let fd = f.as_raw_fd();
        match cached(fd, 0, 256 << 10) {
            Cached::Unsupported(e) => eprintln!("cachestat unsupported here (errno {e})"),
            c => {
                assert_eq!(c, Cached::All, "a file just written is in the page cache");
                assert_eq!(cached(fd, 200 << 10, 1 << 20), Cached::NotAll, "past EOF");
            }
        }
        std::fs::remove_file(&path).unwrap();
    }
}
