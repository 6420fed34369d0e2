//! The io_uring probe: set up a ring exactly as a read worker does (ring of `entries`,
//! a registered buffer of `entries × 4 KiB`), shrink by halves where the errno allows,
//! check the opcodes, then complete real reads of a scratch file through the ring and
//! compare the bytes. Only then is io_uring `supported`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use io_uring::{opcode, types, IoUring};

use super::errno::{classify_uring, errno_name, Step};
use super::{ProbeParams, UringProbe};
use crate::host::HostFacts;

/// Registered buffer bytes per ring entry: one 4 KiB block per in-flight read, the way
/// the read workers size their registered buffers.
pub const BUFFER_BYTES_PER_ENTRY: usize = 4096;

/// Opcodes the read workers use, by name.
pub const READ_OPCODES: [(&str, u8); 3] = [
    ("READ", opcode::Read::CODE),
    ("READ_FIXED", opcode::ReadFixed::CODE),
    ("READV", opcode::Readv::CODE),
];

/// Block size of the verification reads (covers 512 B and 4 KiB logical blocks).
const BLOCK: usize = 4096;
/// Scratch file: two blocks, read back at both offsets.
const SCRATCH_LEN: usize = 2 * BLOCK;

/// Page-aligned anonymous memory (aligned for O_DIRECT), unmapped on drop.
struct PageBuf {
    ptr: *mut u8,
    len: usize,
}

impl PageBuf {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping, owned by this value.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }
        .map_err(io::Error::from)?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    fn slice(&self, len: usize) -> &[u8] {
        // SAFETY: ptr is valid for self.len bytes and len <= self.len is checked.
        assert!(len <= self.len);
        unsafe { std::slice::from_raw_parts(self.ptr, len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length; any ring that
        // registered it is dropped before (field order in `Ring`).
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// A ring with its registered buffer. Field order matters: the ring (and with it the
/// buffer registration) goes before the memory.
struct Ring {
    ring: IoUring,
    registered: PageBuf,
}

/// A failed step with its errno.
type StepErr = (Step, i32);

fn os_errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Set up a ring of `entries` and register its buffer, as a read worker does.
fn setup_ring(entries: u32) -> Result<Ring, StepErr> {
    let ring = IoUring::new(entries).map_err(|e| (Step::Setup, os_errno(&e)))?;
    let bytes = entries as usize * BUFFER_BYTES_PER_ENTRY;
    let registered = PageBuf::new(bytes).map_err(|e| (Step::RegisterBuffers, os_errno(&e)))?;
    let iov = libc::iovec {
        iov_base: registered.ptr.cast(),
        iov_len: bytes,
    };
    // SAFETY: the buffer outlives the registration (Ring drops `ring` first).
    unsafe { ring.submitter().register_buffers(&[iov]) }
        .map_err(|e| (Step::RegisterBuffers, os_errno(&e)))?;
    Ok(Ring { ring, registered })
}

/// Which of [`READ_OPCODES`] the kernel supports.
fn probe_opcodes(ring: &IoUring) -> Result<(Vec<String>, Vec<String>), StepErr> {
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| (Step::Opcodes, os_errno(&e)))?;
    let (have, missing): (Vec<_>, Vec<_>) = READ_OPCODES
        .iter()
        .partition(|(_, code)| probe.is_supported(*code));
    let names = |v: Vec<&(&str, u8)>| v.into_iter().map(|(n, _)| n.to_string()).collect();
    Ok((names(have), names(missing)))
}

/// The scratch file: known bytes on disk, opened for reading with O_DIRECT where the
/// filesystem allows, and already unlinked so nothing is left behind.
pub struct Scratch {
    file: File,
    expected: Vec<u8>,
    direct: bool,
}

impl Scratch {
    /// Create it in `dir`. Errors mean the check itself cannot run (no writable dir).
    pub fn create(dir: &Path) -> io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let path = dir.join(format!(".ringmaster-probe-{}-{nanos}", std::process::id()));
        // xorshift bytes seeded per run, so stale page-cache or zeroed pages cannot match.
        let mut x = nanos | 1;
        let expected: Vec<u8> = (0..SCRATCH_LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let result = (|| {
            let mut w = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            w.write_all(&expected)?;
            w.sync_all()?;
            let (file, direct) = match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
            {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (File::open(&path)?, false),
                Err(e) => return Err(e),
            };
            Ok(Self {
                file,
                expected,
                direct,
            })
        })();
        let _ = std::fs::remove_file(&path);
        result
            .map_err(|e| io::Error::new(e.kind(), format!("scratch file {}: {e}", path.display())))
    }

    /// Reopen without O_DIRECT (the filesystem accepted the flag but not the I/O).
    fn buffered(&mut self) -> io::Result<()> {
        let fd = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        self.file = File::open(fd)?;
        self.direct = false;
        Ok(())
    }
}

/// Read both blocks of the scratch file through the ring, once with each read opcode,
/// and compare with what was written. `Err((Read, EIO))` on wrong bytes.
fn verify_read(r: &mut Ring, s: &Scratch) -> Result<(), StepErr> {
    let fd = types::Fd(s.file.as_raw_fd());
    let plain = PageBuf::new(BLOCK).map_err(|e| (Step::Read, os_errno(&e)))?;
    let vec_buf = PageBuf::new(BLOCK).map_err(|e| (Step::Read, os_errno(&e)))?;
    let iov = libc::iovec {
        iov_base: vec_buf.ptr.cast(),
        iov_len: BLOCK,
    };
    let sqes = [
        opcode::Read::new(fd, plain.ptr, BLOCK as u32)
            .offset(BLOCK as u64)
            .build()
            .user_data(0),
        opcode::ReadFixed::new(fd, r.registered.ptr, BLOCK as u32, 0)
            .offset(0)
            .build()
            .user_data(1),
        opcode::Readv::new(fd, &iov, 1)
            .offset(BLOCK as u64)
            .build()
            .user_data(2),
    ];
    // One at a time, so even a 1-entry ring can run them.
    for sqe in &sqes {
        // SAFETY: buffers and the iovec live until the completion is reaped below.
        unsafe { r.ring.submission().push(sqe) }.map_err(|_| (Step::Read, libc::EBUSY))?;
        let res = loop {
            match r.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err((Step::Read, os_errno(&e))),
            }
            if let Some(cqe) = r.ring.completion().next() {
                break cqe.result();
            }
        };
        if res < 0 {
            return Err((Step::Read, -res));
        }
        if res as usize != BLOCK {
            return Err((Step::Read, libc::EIO));
        }
    }
    let (first, second) = s.expected.split_at(BLOCK);
    let ok = plain.slice(BLOCK) == second
        && r.registered.slice(BLOCK) == first
        && vec_buf.slice(BLOCK) == second;
    if ok {
        Ok(())
    } else {
        Err((Step::Read, libc::EIO))
    }
}

/// Entries to try: `max`, then halves while not below `min`.
pub fn shrink_sequence(max: u32, min: u32) -> Vec<u32> {
    let min = min.clamp(1, max.max(1));
    let mut v = vec![max];
    let mut e = max;
    while e / 2 >= min {
        e /= 2;
        v.push(e);
    }
    v
}

/// Probe io_uring for `p`, explaining failures with the facts `f` of this process.
pub fn probe(p: &ProbeParams, f: &HostFacts) -> UringProbe {
    let mut out = UringProbe {
        requested_entries: p.max_events,
        ..Default::default()
    };
    let mut scratch = match Scratch::create(&p.scratch_dir) {
        Ok(s) => s,
        Err(e) => {
            out.probe_error = Some(format!(
                "cannot create the probe's scratch file in {}: {e}",
                p.scratch_dir.display()
            ));
            out.message = out.probe_error.clone();
            return out;
        }
    };

    // Set up ring + registered buffer, shrinking by halves where the errno allows.
    let mut first_err: Option<StepErr> = None;
    let mut ring = None;
    for entries in shrink_sequence(p.max_events, p.min_max_events) {
        out.tried_entries.push(entries);
        match setup_with_retry(entries, first_err.is_some()) {
            Ok(r) => {
                out.ring_entries = entries;
                ring = Some(r);
                break;
            }
            Err(err) => {
                let shrinkable = classify_uring(err.1, err.0, entries, f).shrinkable;
                first_err.get_or_insert(err);
                if !shrinkable {
                    break;
                }
            }
        }
    }
    let Some(mut ring) = ring else {
        let (step, errno) = first_err.expect("no ring means an error was recorded");
        fail(&mut out, step, errno, p, f);
        return out;
    };
    // setup_flags stays 0: the read workers use a plain ring (no SQPOLL/IOPOLL).
    out.registered_buffer_bytes = ring.registered.len as u64;

    // Opcodes.
    match probe_opcodes(&ring.ring) {
        Ok((have, missing)) => {
            out.opcodes = have;
            if !missing.is_empty() {
                out.missing_opcodes = missing;
                fail(&mut out, Step::Opcodes, libc::EOPNOTSUPP, p, f);
                return out;
            }
        }
        Err((step, errno)) => {
            fail(&mut out, step, errno, p, f);
            return out;
        }
    }

    // One real read, O_DIRECT first.
    let mut res = verify_read(&mut ring, &scratch);
    if scratch.direct && matches!(res, Err((_, libc::EINVAL))) {
        // The filesystem took O_DIRECT at open but not the I/O: read buffered instead.
        if scratch.buffered().is_ok() {
            res = verify_read(&mut ring, &scratch);
        }
    }
    out.read_mode = Some(
        if scratch.direct {
            "O_DIRECT"
        } else {
            "buffered"
        }
        .into(),
    );
    match res {
        Ok(()) => out.read_verified = true,
        Err((step, errno)) => {
            fail(&mut out, step, errno, p, f);
            return out;
        }
    }

    out.supported = true;
    if let Some((step, errno)) = first_err {
        // Works, but only with a smaller ring: keep the errno of the requested size.
        let d = classify_uring(errno, step, p.max_events, f);
        out.errno = Some(errno);
        out.reason = Some(d.reason);
        out.failed_step = Some(step.as_str().into());
        out.message = Some(format!(
            "{} failed with {}: {}; the largest ring that works is {} entries",
            step_call(step, p.max_events),
            errno_name(errno),
            d.cause,
            out.ring_entries
        ));
        out.fix = Some(format!(
            "{}; meanwhile the read workers run with {} entries",
            d.fix, out.ring_entries
        ));
    }
    out
}

/// Setup; after a failed larger attempt, retry ENOMEM briefly, because the kernel frees
/// a closed ring's locked memory asynchronously.
fn setup_with_retry(entries: u32, after_failure: bool) -> Result<Ring, StepErr> {
    let mut tries = if after_failure { 5 } else { 1 };
    loop {
        match setup_ring(entries) {
            Err((_, libc::ENOMEM)) if tries > 1 => {
                tries -= 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// The call that failed, as people know it.
fn step_call(step: Step, entries: u32) -> String {
    match step {
        Step::Setup => format!("io_uring_setup({entries})"),
        Step::RegisterBuffers => format!(
            "IORING_REGISTER_BUFFERS ({entries} × {} KiB)",
            BUFFER_BYTES_PER_ENTRY / 1024
        ),
        Step::Opcodes => "IORING_REGISTER_PROBE".into(),
        Step::Read => "the verification read through the ring".into(),
    }
}

fn fail(out: &mut UringProbe, step: Step, errno: i32, p: &ProbeParams, f: &HostFacts) {
    let d = classify_uring(errno, step, p.max_events, f);
    let detail = match step {
        Step::Opcodes if !out.missing_opcodes.is_empty() => {
            format!(" (missing: {})", out.missing_opcodes.join(", "))
        }
        Step::Read if errno == libc::EIO => " (bytes read differ from the file)".into(),
        _ => String::new(),
    };
    let tried = if out.tried_entries.len() > 1 {
        format!(
            "; also tried {} entries, none worked",
            out.tried_entries[1..]
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else if d.shrinkable && p.min_max_events > p.max_events / 2 {
        format!(
            "; not shrunk: --min-max-events {} leaves no smaller ring to try",
            p.min_max_events
        )
    } else {
        String::new()
    };
    out.supported = false;
    out.errno = Some(errno);
    out.message = Some(format!(
        "{} failed with {}{detail}: {}{tried}",
        step_call(step, p.max_events),
        errno_name(errno),
        d.cause
    ));
    out.reason = Some(d.reason);
    out.fix = Some(d.fix);
    out.failed_step = Some(step.as_str().into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_by_halves_down_to_min() {
        assert_eq!(shrink_sequence(512, 64), vec![512, 256, 128, 64]);
        assert_eq!(shrink_sequence(512, 100), vec![512, 256, 128]);
        assert_eq!(shrink_sequence(65_536, 40_000), vec![65_536]);
        assert_eq!(shrink_sequence(65_536, 32_768), vec![65_536, 32_768]);
        assert_eq!(shrink_sequence(1, 1), vec![1]);
        // min above max: only max is tried.
        assert_eq!(shrink_sequence(64, 512), vec![64]);
    }
}
