//! The libaio probe: one `io_setup(max_events)` + `io_destroy`, as each read worker
//! thread of the storage service does. The kernel charges `max_events` against
//! `fs.aio-max-nr` (EAGAIN when `fs.aio-nr + max_events > fs.aio-max-nr`).

use serde::{Deserialize, Serialize};

use super::errno::classify_aio;
use crate::host::HostFacts;

/// Result of one `io_setup(max_events)`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct AioProbe {
    pub max_events: u32,
    /// `io_setup` succeeded (and the context was destroyed again).
    pub ok: bool,
    pub errno: Option<i32>,
    /// errno name: `EAGAIN`, `ENOSYS`, ...
    pub reason: Option<String>,
    /// Cause, for people.
    pub message: Option<String>,
    pub fix: Option<String>,
}

/// `io_setup(max_events)` then `io_destroy` by raw syscall; `None` on success, else errno.
pub fn io_setup_errno(max_events: u32) -> Option<i32> {
    let mut ctx: libc::c_ulong = 0; // aio_context_t, must be 0 on entry
                                    // SAFETY: io_setup writes one aio_context_t to the pointer we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_setup,
            max_events as libc::c_long,
            &mut ctx as *mut libc::c_ulong,
        )
    };
    if r < 0 {
        return Some(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        );
    }
    // SAFETY: ctx is the context io_setup just created.
    unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    None
}

/// Probe libaio with `max_events`, explaining a failure with the facts `f`.
pub fn probe_libaio(max_events: u32, f: &HostFacts) -> AioProbe {
    match io_setup_errno(max_events) {
        None => AioProbe {
            max_events,
            ok: true,
            ..Default::default()
        },
        Some(errno) => {
            let d = classify_aio(errno, max_events, f);
            AioProbe {
                max_events,
                ok: false,
                errno: Some(errno),
                reason: Some(d.reason),
                message: Some(d.cause),
                fix: Some(d.fix),
            }
        }
    }
}
