//! Page-cache fast path: `preadv2(RWF_NOWAIT)` on the caller's thread before queueing, so hot
//! data does not pay the hand-off to a worker and the ring round trip.

use super::{ReadJob, Step};

/// Try to serve the job from the page cache without blocking. `Some(result)` when finished
/// (all bytes, EOF, or a hard error is left to the worker: `None`); on a partial hit the job's
/// progress moves on and the rest goes to the queue.
pub fn try_read_cached(job: &mut ReadJob) -> Option<Result<usize, i32>> {
    use std::os::fd::AsRawFd;
    let Step::Again {
        offset,
        len,
        filled,
    } = job.progress.next_read()
    else {
        return Some(Ok(job.progress.filled));
    };
    // SAFETY: filled + len <= capacity (ReadJob::new clamps len to the capacity).
    let ptr = unsafe { job.buf.as_mut_ptr().add(filled) };
    // SAFETY: ptr points into the job's own buffer, valid for len bytes.
    let n = unsafe { read_nowait(job.file.as_raw_fd(), ptr, len, offset) }?;
    match job.progress.after_read(n as i64) {
        Step::Done(r) => Some(r),
        Step::Again { .. } => None,
    }
}

/// `preadv2(fd, [ptr, len), offset, RWF_NOWAIT)`: `Some(bytes)` when the page cache could answer,
/// `None` when it would block (EAGAIN) or the file cannot do it (the worker reports real errors).
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
pub unsafe fn read_nowait(fd: i32, ptr: *mut u8, len: usize, offset: u64) -> Option<usize> {
    let iov = libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    };
    let n = libc::preadv2(fd, &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT);
    (n >= 0).then_some(n as usize)
}
