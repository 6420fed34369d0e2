//! Open-file cache of the read service: a request for a file opened less than `valid_for` ago
//! reuses its fd and size, so a hit costs no `openat2`, `fcntl`, `statx` or `close`.
//!
//! What a cached entry may serve, and for how long:
//! - It is keyed by the data dir and the checked relative path, and only ever filled by an
//!   `openat2(RESOLVE_BENEATH)` open of that path: it never serves a file that open would not
//!   have reached at the time it was made.
//! - After `valid_for` the path is opened again (a hit older than that is a miss): a file that
//!   was replaced (renamed over) or deleted is served from the old inode for at most
//!   `valid_for`, never a mix of the two.
//! - The cached size may be stale for `valid_for` when the same file grows or shrinks in place;
//!   a read that comes back short (the file shrank) makes the caller drop the entry and answer
//!   from a fresh open, so no answer claims bytes beyond the file's current end.
//! - At most `max_entries` fds are held; inserting into a full cache drops expired entries,
//!   then an arbitrary one.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An open regular file and its size when it was opened.
#[derive(Clone, Debug)]
pub struct OpenFile {
    pub file: Arc<File>,
    pub size: u64,
}

struct Entry {
    open: OpenFile,
    opened: Instant,
}

/// Bounded, time-limited cache of open files, one map per data dir.
pub struct FileCache {
    dirs: Vec<Mutex<HashMap<Box<str>, Entry>>>,
    max_entries: usize,
    valid_for: Duration,
}

impl FileCache {
    /// `max_entries` 0 disables the cache (every lookup misses, nothing is kept).
    pub fn new(dirs: usize, max_entries: usize, valid_for: Duration) -> Self {
        FileCache {
            dirs: (0..dirs).map(|_| Mutex::new(HashMap::new())).collect(),
            // Spread over the dirs; at least one each when enabled.
            max_entries: if max_entries == 0 {
                0
            } else {
                max_entries.div_ceil(dirs.max(1))
            },
            valid_for,
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_entries > 0 && !self.valid_for.is_zero()
    }

    /// The entry for `rel` in dir `dir` if it was opened less than `valid_for` before `now`.
    pub fn get(&self, dir: usize, rel: &str, now: Instant) -> Option<OpenFile> {
        if !self.enabled() {
            return None;
        }
        let map = self.dirs[dir].lock().expect("file cache lock");
        let e = map.get(rel)?;
        (now.saturating_duration_since(e.opened) < self.valid_for).then(|| e.open.clone())
    }

    /// Remember `open` for `rel`, opened at `opened`.
    pub fn insert(&self, dir: usize, rel: &str, open: OpenFile, opened: Instant) {
        if !self.enabled() {
            return;
        }
        let mut map = self.dirs[dir].lock().expect("file cache lock");
        if map.len() >= self.max_entries && !map.contains_key(rel) {
            let valid_for = self.valid_for;
            map.retain(|_, e| opened.saturating_duration_since(e.opened) < valid_for);
            if map.len() >= self.max_entries {
                if let Some(k) = map.keys().next().cloned() {
                    map.remove(&k);
                }
            }
        }
        map.insert(rel.into(), Entry { open, opened });
    }

    /// Drop the entry for `rel` (its file shrank or went away).
    pub fn forget(&self, dir: usize, rel: &str) {
        if self.enabled() {
            self.dirs[dir].lock().expect("file cache lock").remove(rel);
        }
    }

    /// Entries held (fds kept open), for tests and metrics.
    pub fn len(&self) -> usize {
        self.dirs
            .iter()
            .map(|m| m.lock().expect("file cache lock").len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(size: u64) -> OpenFile {
        OpenFile {
            file: Arc::new(File::open("/dev/null").unwrap()),
            size,
        }
    }

    #[test]
    fn hit_until_valid_for_then_miss() {
        let c = FileCache::new(1, 8, Duration::from_millis(100));
        let t0 = Instant::now();
        c.insert(0, "a", open(5), t0);
        assert_eq!(c.get(0, "a", t0).unwrap().size, 5);
        assert_eq!(
            c.get(0, "a", t0 + Duration::from_millis(99)).unwrap().size,
            5
        );
        assert!(c.get(0, "a", t0 + Duration::from_millis(100)).is_none());
        assert!(c.get(0, "b", t0).is_none());
    }

    #[test]
    fn dirs_are_separate_and_forget_drops() {
        let c = FileCache::new(2, 8, Duration::from_secs(1));
        let t0 = Instant::now();
        c.insert(0, "a", open(1), t0);
        assert!(c.get(1, "a", t0).is_none());
        c.forget(0, "a");
        assert!(c.get(0, "a", t0).is_none());
    }

    #[test]
    fn bounded_expired_first() {
        let c = FileCache::new(1, 3, Duration::from_millis(10));
        let t0 = Instant::now();
        c.insert(0, "old", open(1), t0);
        let t1 = t0 + Duration::from_millis(50);
        c.insert(0, "b", open(2), t1);
        c.insert(0, "c", open(3), t1);
        c.insert(0, "d", open(4), t1);
        assert_eq!(c.len(), 3);
        assert!(c.get(0, "old", t1).is_none());
        for k in ["b", "c", "d"] {
            assert!(
                c.get(0, k, t1).is_some(),
                "{k} evicted instead of the expired entry"
            );
        }
        c.insert(0, "e", open(5), t1);
        assert_eq!(c.len(), 3);
        assert!(c.get(0, "e", t1).is_some());
    }

    #[test]
    fn zero_entries_or_zero_time_disables() {
        let t0 = Instant::now();
        for c in [
            FileCache::new(1, 0, Duration::from_secs(1)),
            FileCache::new(1, 8, Duration::ZERO),
        ] {
            c.insert(0, "a", open(1), t0);
            assert!(c.get(0, "a", t0).is_none());
            assert!(c.is_empty());
        }
    }
}
