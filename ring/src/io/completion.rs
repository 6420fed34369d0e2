//! What to do after one read returned: the short-read rule shared by both pools.
//!
//! 3FS clamps a short read and reports it as complete; we resubmit the rest at offset + result
//! until the file says EOF (0), so a reader never gets a silently truncated buffer.

use std::io;

/// Transient errors retried in place (a regular file rarely returns them; a pipe or a
/// non-blocking attempt may).
const MAX_RETRIES: u32 = 64;

/// Progress of one request across resubmissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Offset of the request's first byte.
    pub offset: u64,
    /// Bytes wanted.
    pub len: usize,
    /// Bytes read so far.
    pub filled: usize,
    /// Transient-error retries so far.
    pub retries: u32,
    /// File opened with O_DIRECT: a short read ending off a 512-byte boundary is EOF.
    pub direct: bool,
}

/// Next step for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Finished: bytes read (short only at EOF), or the request's own error.
    Done(Result<usize, i32>),
    /// Read again at `offset` for `len` bytes into the buffer at `filled`.
    Again {
        offset: u64,
        len: usize,
        filled: usize,
    },
}

impl Progress {
    pub fn new(offset: u64, len: usize, direct: bool) -> Self {
        Progress {
            offset,
            len,
            filled: 0,
            retries: 0,
            direct,
        }
    }

    /// Where the next read goes (used for the first submission too).
    pub fn next_read(&self) -> Step {
        if self.filled >= self.len {
            return Step::Done(Ok(self.filled));
        }
        Step::Again {
            offset: self.offset + self.filled as u64,
            len: self.len - self.filled,
            filled: self.filled,
        }
    }

    /// Account a read result: `res` bytes (>= 0) or `-errno`.
    pub fn after_read(&mut self, res: i64) -> Step {
        if res < 0 {
            let errno = (-res) as i32;
            if matches!(errno, libc::EAGAIN | libc::EINTR) && self.retries < MAX_RETRIES {
                self.retries += 1;
                return self.next_read();
            }
            return Step::Done(Err(errno));
        }
        if res == 0 {
            return Step::Done(Ok(self.filled));
        }
        self.filled = (self.filled + res as usize).min(self.len);
        if self.filled >= self.len {
            return Step::Done(Ok(self.filled));
        }
        if self.direct && !(self.offset + self.filled as u64).is_multiple_of(512) {
            // O_DIRECT cannot continue from an unaligned offset; the device returned the file's tail.
            return Step::Done(Ok(self.filled));
        }
        self.next_read()
    }
}

/// An errno as an `io::Error`.
pub fn errno_error(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_read_resubmits_the_rest() {
        let mut p = Progress::new(4096, 8192, false);
        assert_eq!(
            p.after_read(100),
            Step::Again {
                offset: 4196,
                len: 8092,
                filled: 100
            }
        );
        assert_eq!(
            p.after_read(8000),
            Step::Again {
                offset: 12196,
                len: 92,
                filled: 8100
            }
        );
        assert_eq!(p.after_read(92), Step::Done(Ok(8192)));
    }

    #[test]
    fn eof_ends_a_short_request() {
        let mut p = Progress::new(0, 8192, false);
        assert!(matches!(p.after_read(10), Step::Again { .. }));
        assert_eq!(p.after_read(0), Step::Done(Ok(10)));
    }

    #[test]
    fn direct_unaligned_tail_is_eof() {
        let mut p = Progress::new(0, 8192, true);
        assert_eq!(p.after_read(4096 + 7), Step::Done(Ok(4103)));
        let mut p = Progress::new(0, 8192, true);
        assert!(matches!(
            p.after_read(4096),
            Step::Again { offset: 4096, .. }
        ));
    }

    #[test]
    fn errors_end_the_request_and_transients_retry_boundedly() {
        let mut p = Progress::new(0, 10, false);
        assert_eq!(
            p.after_read(-(libc::EINVAL as i64)),
            Step::Done(Err(libc::EINVAL))
        );
        let mut p = Progress::new(0, 10, false);
        for _ in 0..MAX_RETRIES {
            assert!(matches!(
                p.after_read(-(libc::EAGAIN as i64)),
                Step::Again { .. }
            ));
        }
        assert_eq!(
            p.after_read(-(libc::EAGAIN as i64)),
            Step::Done(Err(libc::EAGAIN))
        );
    }

    #[test]
    fn overlong_result_is_clamped() {
        let mut p = Progress::new(0, 10, false);
        assert_eq!(p.after_read(4096), Step::Done(Ok(10)));
    }
}
