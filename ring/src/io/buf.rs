//! A heap buffer aligned to 4 KiB, so the same buffer works for O_DIRECT and buffered reads.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Owned, 4 KiB-aligned byte buffer with a capacity (rounded up to 4 KiB) and a filled length.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// The buffer is plain owned memory; moving it between threads is safe.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Alignment of the start and granularity of the capacity (O_DIRECT needs the logical block size).
    pub const ALIGN: usize = 4096;

    /// A zeroed buffer of at least `cap` bytes (at least one 4 KiB block).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1).div_ceil(Self::ALIGN) * Self::ALIGN;
        let layout = Layout::from_size_align(cap, Self::ALIGN).expect("buffer size overflows");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes filled by the last read.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Set the filled length (clamped to the capacity).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.cap);
    }

    /// The filled bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap bytes, initialised (zeroed at allocation), len <= cap.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Raw pointer to the start, for the kernel to fill.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe {
            dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.cap, Self::ALIGN),
            )
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("cap", &self.cap)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_and_aligns() {
        let mut b = AlignedBuf::new(5000);
        assert_eq!(b.capacity(), 8192);
        assert_eq!(b.as_mut_ptr() as usize % AlignedBuf::ALIGN, 0);
        b.set_len(100_000);
        assert_eq!(b.len(), 8192);
        assert_eq!(AlignedBuf::new(0).capacity(), 4096);
    }
}
