//! Files in directories somebody else may write to, and the one durable atomic write.
//!
//! The privileged agent shares directories with the unprivileged reader (the handoff) and
//! keeps its state in host dirs. Everything here works on an open directory fd with the
//! `*at` calls, so a name is looked up in that directory and nowhere else:
//!
//! - [`Dir::write_atomic`]: a fresh temporary opened `O_CREAT|O_EXCL|O_NOFOLLOW` (a name
//!   planted in advance, symlink or not, makes the open fail instead of being followed),
//!   written, `fsync`ed, renamed over the target (a rename replaces a symlink, FIFO or
//!   device node at the target; it never writes through it), then the directory `fsync`ed.
//!   This is the only way the agent writes a file: handoff, tune state, sysctl.d file,
//!   settings, seccomp profile.
//! - [`Dir::read_untrusted`]: `lstat` by name first (a symlink, FIFO, device or directory
//!   is refused before anything opens it), then `O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_NOCTTY`
//!   (a FIFO swapped in after the check cannot block the open), `fstat` of what was opened
//!   (must be a regular file), and at most `max_bytes` read (a file that is or grows larger
//!   is refused, so `/dev/zero`-like input cannot exhaust memory).
//!
//! A refusal is an `InvalidData` error whose message names the path and what was found.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// How many fresh temporary names a write tries before giving up (each collision means
/// somebody planted that name; the names are unpredictable, so one retry is already rare).
const TEMP_ATTEMPTS: u32 = 16;

/// An open directory; every name is resolved in it, never through a symlink.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a name in a directory is, for messages.
fn describe(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of unknown type",
    }
}

fn refused(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: refused: {what}", path.display()),
    )
}

fn with_path(path: &Path, e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// A temporary name nobody can guess ahead of the write: pid, time and a counter.
fn temp_name(name: &str, attempt: u32) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mix = nanos ^ (n.rotate_left(32)) ^ u64::from(attempt).rotate_left(48);
    format!(".{name}.{}.{mix:016x}.tmp", std::process::id())
}

impl Dir {
    /// Open `path` as a directory. The path itself is trusted (it comes from a flag or a
    /// constant); only names looked up in it afterwards are not.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| with_path(path, e))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Create `path` (and its parents) when missing, then open it.
    pub fn create(path: &Path) -> io::Result<Dir> {
        std::fs::create_dir_all(path).map_err(|e| with_path(path, e))?;
        Self::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Open the subdirectory `name` without following a symlink at it; with `create`,
    /// make it first (with that mode) when it does not exist.
    pub fn subdir(&self, name: &str, create: Option<u32>) -> io::Result<Dir> {
        let path = self.path.join(name);
        if let Some(mode) = create {
            match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(with_path(&path, e)),
            }
        }
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            // O_DIRECTORY|O_NOFOLLOW on a symlink is ENOTDIR (or ELOOP): say which it was.
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => match self.file_type(name) {
                Ok(Some(FileType::Symlink)) => {
                    refused(&path, "it is a symbolic link (never followed)")
                }
                Ok(Some(t)) => refused(&path, format!("it is {}, not a directory", describe(t))),
                _ => with_path(&path, e),
            },
            e => with_path(&path, e),
        })?;
        Ok(Dir { fd, path })
    }

    /// Set the directory's permission bits (the agent makes its own handoff dir 0755 so
    /// nobody but root can add names to it, whatever the volume was created with).
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode))
            .map_err(|e| with_path(&self.path, e))
    }

    /// What `name` is, without following it; `None` when it does not exist.
    pub fn file_type(&self, name: &str) -> io::Result<Option<FileType>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(with_path(&self.path.join(name), e)),
        }
    }

    /// Write `bytes` as `name` atomically and durably (see the module docs). Whatever was
    /// at `name` (a planted symlink, FIFO, device node) is replaced, never written through;
    /// a directory there is an error.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let target = self.path.join(name);
        let (tmp, fd) = self.create_temp(name)?;
        let result = (|| {
            let mut f = File::from(fd);
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            if let Some(t) = self.file_type(name)? {
                if t != FileType::RegularFile {
                    tracing::warn!(
                        path = %target.display(),
                        found = describe(t),
                        "replacing a non-regular file without following it"
                    );
                }
            }
            rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
            rustix::fs::fsync(&self.fd)?;
            Ok::<(), io::Error>(())
        })();
        if let Err(e) = result {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
            return Err(with_path(&target, e));
        }
        Ok(())
    }

    fn create_temp(&self, name: &str) -> io::Result<(String, OwnedFd)> {
        for attempt in 0..TEMP_ATTEMPTS {
            let tmp = temp_name(name, attempt);
            match rustix::fs::openat(
                &self.fd,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(fd) => return Ok((tmp, fd)),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(with_path(&self.path.join(tmp), e)),
            }
        }
        Err(refused(
            &self.path.join(name),
            format!("{TEMP_ATTEMPTS} fresh temporary names were all taken"),
        ))
    }

    /// Read `name`, a regular file of at most `max_bytes`, that somebody else may have
    /// put there (see the module docs). `Ok(None)` when it does not exist.
    pub fn read_untrusted(&self, name: &str, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
        let path = self.path.join(name);
        let check = |st: &rustix::fs::Stat| -> io::Result<()> {
            let t = FileType::from_raw_mode(st.st_mode);
            if t != FileType::RegularFile {
                let hint = if t == FileType::Symlink {
                    " (never followed)"
                } else {
                    ""
                };
                return Err(refused(
                    &path,
                    format!("it is {}{hint}, not a regular file", describe(t)),
                ));
            }
            if st.st_size as u64 > max_bytes {
                return Err(refused(
                    &path,
                    format!("{} bytes, over the cap of {max_bytes}", st.st_size),
                ));
            }
            Ok(())
        };
        let st = match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(with_path(&path, e)),
        };
        check(&st)?;
        let fd = match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => {
                return Err(refused(
                    &path,
                    "it is a symbolic link (never followed), not a regular file",
                ))
            }
            Err(e) => return Err(with_path(&path, e)),
        };
        // Swapped between the check and the open? What was opened is what counts.
        check(&rustix::fs::fstat(&fd).map_err(|e| with_path(&path, e))?)?;
        let mut buf = Vec::new();
        File::from(fd)
            .take(max_bytes + 1)
            .read_to_end(&mut buf)
            .map_err(|e| with_path(&path, e))?;
        if buf.len() as u64 > max_bytes {
            return Err(refused(
                &path,
                format!("it grew past the cap of {max_bytes} bytes while being read"),
            ));
        }
        Ok(Some(buf))
    }

    /// Remove `name` (a symlink is removed itself, never its target); false when absent.
    pub fn remove(&self, name: &str) -> io::Result<bool> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(with_path(&self.path.join(name), e)),
        }
    }
}

fn split(path: &Path) -> io::Result<(&Path, &str)> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// Write `bytes` to `path` atomically and durably, creating the parent directory: the
/// one write every file of the agent goes through ([`Dir::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, name) = split(path)?;
    Dir::create(dir)?.write_atomic(name, bytes)
}

/// Read `path` as [`Dir::read_untrusted`] does; `Ok(None)` when it (or its directory)
/// does not exist.
pub fn read_bounded(path: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    let (dir, name) = split(path)?;
    match Dir::open(dir) {
        Ok(d) => d.read_untrusted(name, max_bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!(
                "rm-safefs-{tag}-{}-{}",
                std::process::id(),
                temp_name("t", 0)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_replaces_a_planted_symlink_and_leaves_its_target_alone() {
        let t = Tmp::new("symlink-write");
        let outside = t.0.join("outside");
        std::fs::write(&outside, b"host file").unwrap();
        let shared = t.0.join("shared");
        std::fs::create_dir(&shared).unwrap();
        symlink(&outside, shared.join("agent.addr")).unwrap();
        let d = Dir::open(&shared).unwrap();
        d.write_atomic("agent.addr", b"127.0.0.1:9464").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"host file");
        let meta = std::fs::symlink_metadata(shared.join("agent.addr")).unwrap();
        assert!(meta.file_type().is_file(), "{meta:?}");
        assert_eq!(
            std::fs::read(shared.join("agent.addr")).unwrap(),
            b"127.0.0.1:9464"
        );
        assert_eq!(names(&shared), vec!["agent.addr"], "no temporary left");
    }

    #[test]
    fn write_never_opens_a_planted_temporary_name() {
        // Plant a symlink at every name an old-style writer would use; none is followed.
        let t = Tmp::new("temp-write");
        let outside = t.0.join("outside");
        std::fs::write(&outside, b"host file").unwrap();
        let shared = t.0.join("shared");
        std::fs::create_dir(&shared).unwrap();
        let pid = std::process::id();
        for n in [
            format!(".config.json.{pid}.tmp"),
            format!(".config.json.tmp.{pid}"),
            ".config.json.tmp".to_string(),
        ] {
            symlink(&outside, shared.join(n)).unwrap();
        }
        Dir::open(&shared)
            .unwrap()
            .write_atomic("config.json", b"{}")
            .unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"host file");
        assert_eq!(std::fs::read(shared.join("config.json")).unwrap(), b"{}");
        assert_eq!(names(&shared).len(), 4, "{:?}", names(&shared));
    }

    #[test]
    fn write_over_a_fifo_does_not_block_and_a_directory_is_an_error() {
        let t = Tmp::new("fifo-write");
        let d = Dir::open(&t.0).unwrap();
        rustix::fs::mknodat(&d.fd, "f", FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        d.write_atomic("f", b"x").unwrap();
        assert_eq!(std::fs::read(t.0.join("f")).unwrap(), b"x");
        std::fs::create_dir(t.0.join("dir")).unwrap();
        let e = d.write_atomic("dir", b"x").unwrap_err();
        assert!(e.to_string().contains("dir"), "{e}");
        assert_eq!(
            names(&t.0),
            vec!["dir", "f"],
            "temporary removed on failure"
        );
    }

    #[test]
    fn read_refuses_symlink_fifo_device_and_huge_file_without_blocking() {
        let t = Tmp::new("read");
        let outside = t.0.join("outside.json");
        std::fs::write(&outside, b"{\"secret\":1}").unwrap();
        let d = Dir::create(&t.0.join("shared")).unwrap();
        let p = d.path().to_path_buf();
        symlink(&outside, p.join("link")).unwrap();
        symlink("/dev/zero", p.join("zero-link")).unwrap();
        rustix::fs::mknodat(&d.fd, "fifo", FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        // A device node: what a bind mount of /dev/zero looks like by fstat.
        rustix::fs::mknodat(
            &d.fd,
            "zero",
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o644),
            rustix::fs::makedev(1, 5),
        )
        .unwrap();
        let huge = File::create(p.join("huge")).unwrap();
        huge.set_len(1 << 30).unwrap();
        std::fs::create_dir(p.join("dir")).unwrap();
        for (name, what) in [
            ("link", "symbolic link"),
            ("zero-link", "symbolic link"),
            ("fifo", "FIFO"),
            ("zero", "character device"),
            ("huge", "over the cap of 65536"),
            ("dir", "a directory"),
        ] {
            let e = d.read_untrusted(name, 65536).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{name}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(what) && msg.contains(name), "{name}: {msg}");
        }
        std::fs::write(p.join("ok"), b"{}").unwrap();
        assert_eq!(d.read_untrusted("ok", 2).unwrap().unwrap(), b"{}");
        assert!(
            d.read_untrusted("ok", 1).is_err(),
            "cap is inclusive of size"
        );
        assert_eq!(d.read_untrusted("absent", 2).unwrap(), None);
        assert_eq!(read_bounded(&t.0.join("nowhere/x"), 2).unwrap(), None);
    }

    #[test]
    fn subdir_refuses_a_symlink_and_creates_with_mode() {
        let t = Tmp::new("subdir");
        let d = Dir::open(&t.0).unwrap();
        let elsewhere = t.0.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        symlink(&elsewhere, t.0.join("agent")).unwrap();
        let e = d.subdir("agent", Some(0o755)).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let r = d.subdir("reader", Some(0o700)).unwrap();
        r.chmod(0o755).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.0.join("reader"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(d.subdir("missing", None).is_err());
    }

    #[test]
    fn write_atomic_by_path_creates_the_parent_and_is_whole() {
        let t = Tmp::new("path");
        let p = t.0.join("a/b/state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(names(&t.0.join("a/b")), vec!["state.json"]);
        assert_eq!(read_bounded(&p, 3).unwrap().unwrap(), b"two");
    }
}
