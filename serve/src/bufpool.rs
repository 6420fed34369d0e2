//! Reused response buffers. A fresh buffer of 64 KiB or more comes from `mmap` and goes back
//! with `munmap`, and each of its pages is faulted in and cleared on first touch: for 1 MiB
//! ranges that cost more CPU than reading and sending the bytes. A fresh 4 KiB buffer costs a
//! `malloc`, a clear and a `free` per request, about 4 % of the CPU of a 4 KiB O_DIRECT answer.
//! Buffers from 4 KiB to 4 MiB are kept per power-of-two size class after use, up to `RETAINED`
//! bytes in all, and handed out again as they are (a reused buffer holds the old bytes until
//! the read overwrites them; only the filled part is ever sent).

use std::sync::Mutex;

use ringmaster_ring::io::AlignedBuf;

const MIN_CLASS: usize = AlignedBuf::ALIGN;
const MAX_CLASS: usize = 4 << 20;
const CLASSES: usize = (MAX_CLASS / MIN_CLASS).trailing_zeros() as usize + 1;
/// Bytes kept for reuse at most (on top of the response budget, which counts buffers in use).
pub const RETAINED: usize = 32 << 20;

pub struct BufPool {
    free: Mutex<([Vec<AlignedBuf>; CLASSES], usize)>,
}

/// The class of a request for `len` bytes, and its capacity; None outside the pooled sizes.
fn class(len: usize) -> Option<(usize, usize)> {
    if len > MAX_CLASS {
        return None;
    }
    let cap = len.next_power_of_two().max(MIN_CLASS);
    Some(((cap / MIN_CLASS).trailing_zeros() as usize, cap))
}

impl BufPool {
    pub fn new() -> Self {
        BufPool {
            free: Mutex::new((Default::default(), 0)),
        }
    }

    /// A buffer of at least `len` bytes, empty (`len() == 0`).
    pub fn take(&self, len: usize) -> AlignedBuf {
        let Some((c, cap)) = class(len) else {
            return AlignedBuf::new(len);
        };
        let mut free = self.free.lock().expect("buffer pool lock");
        if let Some(mut b) = free.0[c].pop() {
            free.1 -= b.capacity();
            b.set_len(0);
            return b;
        }
        drop(free);
        AlignedBuf::new(cap)
    }

    /// Keep `buf` for reuse if it is of a pooled size and the pool has room; else free it.
    pub fn give(&self, buf: AlignedBuf) {
        let Some((c, cap)) = class(buf.capacity()) else {
            return;
        };
        if cap != buf.capacity() {
            return;
        }
        let mut free = self.free.lock().expect("buffer pool lock");
        if free.1 + cap <= RETAINED {
            free.1 += cap;
            free.0[c].push(buf);
        }
    }

    /// Bytes held for reuse.
    pub fn retained(&self) -> usize {
        self.free.lock().expect("buffer pool lock").1
    }
}

impl Default for BufPool {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_by_class_and_stays_bounded() {
        let p = BufPool::new();
        let b = p.take(1 << 20);
        assert_eq!(b.capacity(), 1 << 20);
        let ptr = b.as_slice().as_ptr();
        p.give(b);
        assert_eq!(p.retained(), 1 << 20);
        let again = p.take(700 << 10);
        assert_eq!(again.as_slice().as_ptr(), ptr, "same class, same buffer");
        assert!(again.is_empty());
        assert_eq!(p.retained(), 0);
        // 4 KiB answers reuse their buffer too; huge ones are not pooled.
        let small = p.take(4096);
        assert_eq!(small.capacity(), 4096);
        let small_ptr = small.as_slice().as_ptr();
        p.give(small);
        assert_eq!(p.retained(), 4096);
        assert_eq!(
            p.take(100).as_slice().as_ptr(),
            small_ptr,
            "same 4 KiB class"
        );
        p.give(p.take(16 << 20));
        assert_eq!(p.retained(), 0);
        // At most RETAINED bytes are kept.
        let many: Vec<_> = (0..RETAINED / (1 << 20) + 4)
            .map(|_| p.take(1 << 20))
            .collect();
        for b in many {
            p.give(b);
        }
        assert_eq!(p.retained(), RETAINED);
    }
}
