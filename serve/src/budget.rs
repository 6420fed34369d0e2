//! Response memory budget: the bytes of response bodies the service holds at once, bounded
//! in bytes (`--max-response-bytes`), so clients that ask for large ranges and never read them
//! cannot pin more memory than that. A body's reservation lives as long as its buffer does:
//! until the last byte is written to the socket (or the connection dies), not only until the
//! handler returns.
//!
//! Large responses (over `LARGE`) may hold at most half of the budget together, so clients
//! that stall on 16 MiB answers cannot starve small range reads; a request that does not fit
//! gets 503 at once rather than waiting.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Responses above this size count as large.
pub const LARGE: u64 = 1 << 20;

pub struct ResponseBudget {
    all: Arc<Semaphore>,
    large: Arc<Semaphore>,
    bytes: u64,
}

/// Bytes reserved for one response; released on drop.
#[derive(Debug)]
pub struct Reservation {
    _all: OwnedSemaphorePermit,
    _large: Option<OwnedSemaphorePermit>,
}

/// Budget units are KiB so a budget of several GiB fits the semaphore's u32 acquire.
fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

impl ResponseBudget {
    pub fn new(bytes: u64) -> Self {
        ResponseBudget {
            all: Arc::new(Semaphore::new(units(bytes) as usize)),
            large: Arc::new(Semaphore::new((units(bytes) / 2).max(1) as usize)),
            bytes,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reserve `len` bytes now, or `None` when the budget (or its large half) is spent.
    pub fn try_reserve(&self, len: u64) -> Option<Reservation> {
        let n = units(len);
        let large = if len > LARGE {
            match self.large.clone().try_acquire_many_owned(n) {
                Ok(p) => Some(p),
                Err(TryAcquireError::NoPermits) | Err(TryAcquireError::Closed) => return None,
            }
        } else {
            None
        };
        let all = self.all.clone().try_acquire_many_owned(n).ok()?;
        Some(Reservation {
            _all: all,
            _large: large,
        })
    }

    /// Bytes reserved right now (rounded to KiB).
    pub fn in_use(&self) -> u64 {
        (units(self.bytes) as u64 - self.all.available_permits() as u64) * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_released_on_drop() {
        let b = ResponseBudget::new(4 << 20);
        let r1 = b.try_reserve(1 << 20).unwrap();
        let r2 = b.try_reserve(1 << 20).unwrap();
        let r3 = b.try_reserve(1 << 20).unwrap();
        let r4 = b.try_reserve(1 << 20).unwrap();
        assert!(b.try_reserve(1).is_none(), "over the budget");
        assert_eq!(b.in_use(), 4 << 20);
        drop((r1, r2, r3));
        assert!(
            b.try_reserve(3 << 20).is_none(),
            "large responses over half"
        );
        assert!(b.try_reserve(1 << 20).is_some());
        drop(r4);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn large_responses_leave_half_for_small_ones() {
        let b = ResponseBudget::new(64 << 20);
        let big: Vec<_> = std::iter::from_fn(|| b.try_reserve(16 << 20)).collect();
        assert_eq!(big.len(), 2, "large responses hold at most half");
        let small: Vec<_> = std::iter::from_fn(|| b.try_reserve(64 << 10))
            .take(1000)
            .collect();
        assert_eq!(
            small.len(),
            512,
            "the other half is left to small responses"
        );
    }
}
