//! Real-kernel tests of `ringmaster-agent check` and `tune` (issue 3). Every failure
//! mode is produced for real: seccomp filters, `kernel.io_uring_disabled`, dropped
//! capabilities, a lowered RLIMIT_MEMLOCK, a low `fs.aio-max-nr`, a read-only /proc/sys.
//!
//! They run as root. All tests of this binary take one static lock, because several
//! change global sysctls (restored by Drop guards) that the others depend on.

use std::ffi::CStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_ringmaster-agent");
const SECCOMP_EXEC: &str = env!("CARGO_BIN_EXE_seccomp-exec");

static GLOBAL_SYSCTLS: Mutex<()> = Mutex::new(());

/// Serialize with every other test of this binary; fail (never skip) unless root.
fn lock() -> MutexGuard<'static, ()> {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests change sysctls and capabilities: run them as root (sudo -E cargo test -p ringmaster-agent)"
    );
    GLOBAL_SYSCTLS.lock().unwrap_or_else(|e| e.into_inner())
}

fn sysctl_path(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(name.replace('.', "/"))
}

fn read_sysctl(name: &str) -> String {
    std::fs::read_to_string(sysctl_path(name))
        .unwrap_or_else(|e| panic!("cannot read {name}: {e}"))
        .trim()
        .to_string()
}

fn read_u64(name: &str) -> u64 {
    read_sysctl(name).parse().unwrap()
}

/// Sets a sysctl for the duration of a test and puts the original back on drop.
struct SysctlGuard {
    name: &'static str,
    original: String,
}

impl SysctlGuard {
    fn set(name: &'static str, value: impl ToString) -> Self {
        let original = read_sysctl(name);
        let g = Self { name, original };
        g.write(&value.to_string());
        g
    }

    fn write(&self, value: &str) {
        std::fs::write(sysctl_path(self.name), format!("{value}\n"))
            .unwrap_or_else(|e| panic!("cannot set {}={value}: {e}", self.name));
        assert_eq!(read_sysctl(self.name), value, "{} did not take", self.name);
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(sysctl_path(self.name), format!("{}\n", self.original)) {
            eprintln!("FAILED to restore {}={}: {e}", self.name, self.original);
        }
    }
}

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ringmaster-host-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        // Traversable by the unprivileged-user test whatever the umask.
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Self(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `seccomp-exec <wrap...> -- ringmaster-agent check --output json <args...>`:
/// (exit code, report).
fn check_json(wrap: &[&str], args: &[&str]) -> (i32, Value) {
    let mut cmd = if wrap.is_empty() {
        Command::new(AGENT)
    } else {
        let mut c = Command::new(SECCOMP_EXEC);
        c.args(wrap).arg("--").arg(AGENT);
        c
    };
    cmd.args(["check", "--output", "json"]).args(args);
    let out = run(&mut cmd);
    let code = out.status.code().expect("check exited normally");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check printed no JSON ({e}); exit {code}\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (code, report)
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    v.pointer(path)
        .unwrap_or_else(|| panic!("report has no {path}: {v:#}"))
}

fn tune(args: &[&str]) -> Output {
    run(Command::new(AGENT).arg("tune").args(args))
}

// ---------------------------------------------------------------- check: io_uring

#[test]
fn normal_host_is_supported_with_512_entries_and_a_verified_read() {
    let _l = lock();
    let (code, r) = check_json(&[], &[]);
    assert_eq!(at(&r, "/io_uring/supported"), true, "{r:#}");
    assert_eq!(at(&r, "/io_uring/ring_entries"), 512);
    assert_eq!(at(&r, "/io_uring/read_verified"), true);
    assert_eq!(at(&r, "/io_uring/errno"), &Value::Null);
    assert_eq!(at(&r, "/io_uring/reason"), &Value::Null);
    assert_eq!(
        at(&r, "/io_uring/opcodes"),
        &serde_json::json!(["READ", "READ_FIXED", "READV"])
    );
    assert_eq!(at(&r, "/libaio/ok"), true);
    assert_eq!(at(&r, "/process/seccomp_mode"), "disabled");
    let release = rustix::system::uname()
        .release()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(at(&r, "/kernel/release"), release.as_str());
    assert_eq!(at(&r, "/sysctl/aio_max_nr"), read_u64("fs.aio-max-nr"));
    assert_eq!(at(&r, "/ready"), true);
    assert_eq!(code, 0);

    // The text form: a table, the verdict line, exit 0.
    let out = run(Command::new(AGENT).arg("check"));
    let t = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("io_uring.setup") && t.contains("ok, 512 entries"),
        "{t}"
    );
    assert!(t.contains("io_uring.read") && t.contains("verified"), "{t}");
    assert!(t.contains("\nverdict: READY"), "{t}");
}

#[test]
fn seccomp_enosys_is_reported_as_enosys_with_the_profile_as_cause() {
    let _l = lock();
    let (code, r) = check_json(&["--io-uring", "ENOSYS"], &[]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(at(&r, "/ready"), false);
    assert_eq!(at(&r, "/io_uring/supported"), false);
    assert_eq!(at(&r, "/io_uring/errno"), 38);
    assert_eq!(at(&r, "/io_uring/reason"), "ENOSYS");
    assert_eq!(at(&r, "/io_uring/ring_entries"), 0);
    assert_eq!(at(&r, "/io_uring/read_verified"), false);
    assert_eq!(at(&r, "/process/seccomp_mode"), "filter");
    let msg = at(&r, "/io_uring/message").as_str().unwrap();
    assert!(
        msg.contains("io_uring_setup(512) failed with ENOSYS"),
        "{msg}"
    );
    assert!(msg.contains("seccomp"), "{msg}");
    let advice = at(&r, "/advice").as_array().unwrap();
    assert!(advice[0].as_str().unwrap().contains("Fix:"), "{advice:?}");
    // ENOSYS is not shrinkable: only the requested size was tried.
    assert_eq!(at(&r, "/io_uring/tried_entries"), &serde_json::json!([512]));
}

#[test]
fn seccomp_eperm_is_reported_as_eperm_with_runtime_default_as_cause() {
    let _l = lock();
    let (code, r) = check_json(&["--io-uring", "EPERM"], &[]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(at(&r, "/io_uring/supported"), false);
    assert_eq!(at(&r, "/io_uring/errno"), 1);
    assert_eq!(at(&r, "/io_uring/reason"), "EPERM");
    let msg = at(&r, "/io_uring/message").as_str().unwrap();
    assert!(msg.contains("Docker >= 25"), "{msg}");
    let verdict = at(&r, "/verdict").as_str().unwrap();
    assert!(
        verdict.starts_with("NOT READY") && verdict.contains("EPERM"),
        "{verdict}"
    );
}

#[test]
fn libaio_denied_by_seccomp_is_not_ready_even_with_io_uring_working() {
    let _l = lock();
    let (code, r) = check_json(&["--libaio", "ENOSYS"], &[]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(at(&r, "/io_uring/supported"), true);
    assert_eq!(at(&r, "/libaio/ok"), false);
    assert_eq!(at(&r, "/libaio/reason"), "ENOSYS");
    let msg = at(&r, "/libaio/message").as_str().unwrap();
    assert!(msg.contains("seccomp"), "{msg}");
}

#[test]
fn io_uring_disabled_2_gives_eperm_naming_the_sysctl() {
    let _l = lock();
    assert!(
        sysctl_path("kernel.io_uring_disabled").exists(),
        "kernel.io_uring_disabled is missing: this test needs Linux >= 6.6"
    );
    let (code, r) = {
        let _g = SysctlGuard::set("kernel.io_uring_disabled", 2);
        check_json(&[], &[])
    };
    assert_eq!(
        read_sysctl("kernel.io_uring_disabled"),
        "0",
        "guard restored it"
    );
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(at(&r, "/sysctl/io_uring_disabled"), 2);
    assert_eq!(at(&r, "/io_uring/reason"), "EPERM");
    let msg = at(&r, "/io_uring/message").as_str().unwrap();
    assert!(msg.contains("kernel.io_uring_disabled=2"), "{msg}");
    let fix = at(&r, "/io_uring/fix").as_str().unwrap();
    assert!(
        fix.contains("sysctl -w kernel.io_uring_disabled=0"),
        "{fix}"
    );
}

#[test]
fn io_uring_disabled_1_denies_only_processes_without_cap_sys_admin() {
    let _l = lock();
    assert!(
        sysctl_path("kernel.io_uring_disabled").exists(),
        "kernel.io_uring_disabled is missing: this test needs Linux >= 6.6"
    );
    assert_eq!(read_sysctl("kernel.io_uring_group"), "-1");
    let ((code, r), (admin_code, admin)) = {
        let _g = SysctlGuard::set("kernel.io_uring_disabled", 1);
        (
            check_json(&["--drop-cap", "SYS_ADMIN"], &[]),
            check_json(&[], &[]),
        )
    };
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(at(&r, "/process/cap_sys_admin"), false);
    assert_eq!(at(&r, "/io_uring/reason"), "EPERM");
    let msg = at(&r, "/io_uring/message").as_str().unwrap();
    assert!(
        msg.contains("kernel.io_uring_disabled=1") && msg.contains("CAP_SYS_ADMIN"),
        "{msg}"
    );
    // Control: the same sysctl with CAP_SYS_ADMIN works, so the capability is the cause.
    assert_eq!(at(&admin, "/process/cap_sys_admin"), true);
    assert_eq!(at(&admin, "/io_uring/supported"), true, "{admin:#}");
    assert_eq!(admin_code, 0);
}

#[test]
fn more_than_32768_entries_shrinks_to_the_largest_ring_that_works() {
    let _l = lock();
    // 1 worker so libaio (65536 events) does not decide the verdict.
    let (_, r) = check_json(&[], &["--max-events", "65536", "--workers", "1"]);
    assert_eq!(at(&r, "/io_uring/supported"), true, "{r:#}");
    assert_eq!(at(&r, "/io_uring/requested_entries"), 65536);
    assert_eq!(at(&r, "/io_uring/ring_entries"), 32768);
    assert_eq!(
        at(&r, "/io_uring/tried_entries"),
        &serde_json::json!([65536, 32768])
    );
    assert_eq!(at(&r, "/io_uring/errno"), 22);
    assert_eq!(at(&r, "/io_uring/reason"), "EINVAL");
    assert_eq!(at(&r, "/io_uring/read_verified"), true);
    let msg = at(&r, "/io_uring/message").as_str().unwrap();
    assert!(msg.contains("largest ring that works is 32768"), "{msg}");
}

#[test]
fn more_than_32768_entries_fails_clearly_when_min_forbids_shrinking() {
    let _l = lock();
    let (code, r) = check_json(
        &[],
        &[
            "--max-events",
            "65536",
            "--min-max-events",
            "40000",
            "--workers",
            "1",
        ],
    );
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(at(&r, "/io_uring/supported"), false);
    assert_eq!(at(&r, "/io_uring/ring_entries"), 0);
    assert_eq!(at(&r, "/io_uring/reason"), "EINVAL");
    let msg = at(&r, "/io_uring/message").as_str().unwrap();
    assert!(
        msg.contains("1..=32768") && msg.contains("--min-max-events 40000"),
        "{msg}"
    );
    let fix = at(&r, "/io_uring/fix").as_str().unwrap();
    assert!(fix.contains("32768 or less"), "{fix}");
}

#[test]
fn registered_buffers_over_memlock_without_cap_ipc_lock_give_enomem() {
    let _l = lock();
    // 64 KiB: not even a 64-entry ring with its 256 KiB buffer fits.
    let (code, r) = check_json(&["--memlock", "65536", "--drop-cap", "IPC_LOCK"], &[]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(at(&r, "/process/memlock_bytes"), 65536);
    assert_eq!(at(&r, "/process/cap_ipc_lock"), false);
    assert_eq!(at(&r, "/io_uring/supported"), false);
    assert_eq!(at(&r, "/io_uring/errno"), 12);
    assert_eq!(at(&r, "/io_uring/reason"), "ENOMEM");
    assert_eq!(
        at(&r, "/io_uring/tried_entries"),
        &serde_json::json!([512, 256, 128, 64])
    );
    let msg = at(&r, "/io_uring/message").as_str().unwrap();
    assert!(msg.contains("RLIMIT_MEMLOCK is 65536 bytes"), "{msg}");
    assert!(msg.contains("lacks CAP_IPC_LOCK"), "{msg}");

    // 1.5 MiB: 512 entries (2 MiB of buffers) fail, 256 (1 MiB) work.
    let (_, r) = check_json(&["--memlock", "1572864", "--drop-cap", "IPC_LOCK"], &[]);
    assert_eq!(at(&r, "/io_uring/supported"), true, "{r:#}");
    assert_eq!(at(&r, "/io_uring/ring_entries"), 256);
    assert_eq!(at(&r, "/io_uring/reason"), "ENOMEM");
    assert_eq!(at(&r, "/io_uring/failed_step"), "register_buffers");
    assert_eq!(at(&r, "/io_uring/registered_buffer_bytes"), 1048576);
    assert_eq!(at(&r, "/io_uring/read_verified"), true);

    // Control: the same limit WITH CAP_IPC_LOCK is not charged, so 512 works.
    let (_, r) = check_json(&["--memlock", "65536"], &[]);
    assert_eq!(at(&r, "/process/cap_ipc_lock"), true);
    assert_eq!(at(&r, "/io_uring/ring_entries"), 512, "{r:#}");
}

#[test]
fn check_cannot_run_exits_2_with_the_reason() {
    let _l = lock();
    let out = run(Command::new(AGENT)
        .arg("check")
        .env("TMPDIR", "/nonexistent/ringmaster"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("scratch file") && err.contains("TMPDIR"),
        "{err}"
    );

    let out = run(Command::new(AGENT).args(["check", "--min-max-events", "1024"]));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("--min-max-events 1024") && err.contains("--max-events 512"),
        "{err}"
    );
}

// ---------------------------------------------------------------- libaio + tune

#[test]
fn low_aio_max_nr_fails_io_setup_with_eagain_and_tune_fixes_it() {
    let _l = lock();
    let dir = TempDir::new("aio");
    let state = dir.path().join("state.json");
    let state_s = state.to_str().unwrap();
    let guard = SysctlGuard::set("fs.aio-max-nr", 256);

    let (code, r) = check_json(&[], &[]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(at(&r, "/libaio/ok"), false);
    assert_eq!(at(&r, "/libaio/errno"), 11);
    assert_eq!(at(&r, "/libaio/reason"), "EAGAIN");
    assert_eq!(at(&r, "/sysctl/aio_max_nr"), 256);
    assert_eq!(at(&r, "/io_uring/supported"), true);
    let advice: Vec<&str> = at(&r, "/advice")
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        advice.iter().any(|a| a.contains("ringmaster-agent tune")),
        "{advice:?}"
    );
    let required = at(&r, "/sysctl/aio_max_nr_required").as_u64().unwrap();
    let aio_nr = read_u64("fs.aio-nr");
    assert_eq!(required, (4096 + aio_nr + 65_536).max(1_048_576));

    let out = tune(&["--state", state_s]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(read_u64("fs.aio-max-nr"), required);
    let (code, r) = check_json(&[], &[]);
    assert_eq!(at(&r, "/libaio/ok"), true, "{r:#}");
    assert_eq!(code, 0);

    // The state recorded the original: restore puts back exactly 256.
    let out = tune(&["--restore", state_s]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(read_u64("fs.aio-max-nr"), 256);
    drop(guard);
}

#[test]
fn tune_never_lowers_a_higher_value() {
    let _l = lock();
    let dir = TempDir::new("never-lowers");
    let state = dir.path().join("state.json");
    let _g = SysctlGuard::set("fs.aio-max-nr", 2_000_003);
    let out = tune(&["--state", state.to_str().unwrap()]);
    let o = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(o.contains("never lowered"), "{o}");
    assert_eq!(read_u64("fs.aio-max-nr"), 2_000_003);
    assert!(!state.exists(), "nothing changed, so nothing is recorded");
    // Also with a floor below it and a big demand below it.
    let out = tune(&[
        "--state",
        state.to_str().unwrap(),
        "--aio-max-nr-floor",
        "65536",
        "--workers",
        "64",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(read_u64("fs.aio-max-nr"), 2_000_003);
}

#[test]
fn tune_then_restore_returns_the_exact_original_and_removes_the_persist_file() {
    let _l = lock();
    let dir = TempDir::new("restore");
    let state = dir.path().join("state.json");
    let persist = dir.path().join("60-ringmaster.conf");
    let (state_s, persist_s) = (state.to_str().unwrap(), persist.to_str().unwrap());
    let _g = SysctlGuard::set("fs.aio-max-nr", 65_537);

    let out = tune(&["--state", state_s, "--persist", persist_s]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(read_u64("fs.aio-max-nr"), 1_048_576);
    let st: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(st["original"], 65_537);
    assert_eq!(st["applied"], 1_048_576);
    assert_eq!(st["sysctl"], "fs.aio-max-nr");
    let conf = std::fs::read_to_string(&persist).unwrap();
    assert!(conf.contains("\nfs.aio-max-nr = 1048576\n"), "{conf}");

    // A second apply with a bigger need keeps the FIRST original.
    let out = tune(&[
        "--state",
        state_s,
        "--workers",
        "1024",
        "--max-events",
        "1024",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let raised = read_u64("fs.aio-max-nr");
    assert!(raised > 1_048_576);
    let st: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(st["original"], 65_537);
    assert_eq!(st["applied"], raised);

    let out = tune(&["--restore", state_s]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(read_u64("fs.aio-max-nr"), 65_537);
    assert!(!state.exists(), "state file removed");
    assert!(!persist.exists(), "sysctl.d file removed");

    // Restoring again: nothing recorded, nothing changes.
    let out = tune(&["--restore", state_s]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("nothing to restore"));
    assert_eq!(read_u64("fs.aio-max-nr"), 65_537);
}

#[test]
fn restore_leaves_a_value_someone_else_raised_further() {
    let _l = lock();
    let dir = TempDir::new("left-alone");
    let state = dir.path().join("state.json");
    let state_s = state.to_str().unwrap();
    let g = SysctlGuard::set("fs.aio-max-nr", 65_538);
    assert_eq!(tune(&["--state", state_s]).status.code(), Some(0));
    assert_eq!(read_u64("fs.aio-max-nr"), 1_048_576);
    g.write("3000001"); // someone else
    let out = tune(&["--restore", state_s]);
    let o = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(o.contains("someone else"), "{o}");
    assert_eq!(read_u64("fs.aio-max-nr"), 3_000_001);
}

#[test]
fn dry_run_changes_nothing() {
    let _l = lock();
    let dir = TempDir::new("dry-run");
    let state = dir.path().join("state.json");
    let persist = dir.path().join("60-ringmaster.conf");
    let state_s = state.to_str().unwrap();
    let _g = SysctlGuard::set("fs.aio-max-nr", 65_539);
    let out = tune(&[
        "--state",
        state_s,
        "--persist",
        persist.to_str().unwrap(),
        "--dry-run",
    ]);
    let o = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        o.contains("would raise fs.aio-max-nr 65539 -> 1048576"),
        "{o}"
    );
    assert_eq!(read_u64("fs.aio-max-nr"), 65_539);
    assert!(!state.exists() && !persist.exists());

    // Restore in dry-run mode changes nothing either.
    assert_eq!(tune(&["--state", state_s]).status.code(), Some(0));
    let out = tune(&["--restore", state_s, "--dry-run"]);
    assert!(text(&out.stdout).contains("would put back the original 65539"));
    assert_eq!(read_u64("fs.aio-max-nr"), 1_048_576);
    assert!(state.exists());
    assert_eq!(tune(&["--restore", state_s]).status.code(), Some(0));
    assert_eq!(read_u64("fs.aio-max-nr"), 65_539);
}

/// Run `tune` in a private mount namespace where /proc/sys is a read-only bind mount.
fn tune_with_read_only_proc_sys(args: &[&str]) -> Output {
    fn mount(src: &CStr, dst: &CStr, flags: libc::c_ulong) -> std::io::Result<()> {
        // SAFETY: mount(2) with valid C strings; called between fork and exec.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    let mut cmd = Command::new(AGENT);
    cmd.arg("tune").args(args);
    // SAFETY: only async-signal-safe syscalls in the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            mount(c"none", c"/", libc::MS_REC | libc::MS_PRIVATE)?;
            mount(c"/proc/sys", c"/proc/sys", libc::MS_BIND)?;
            mount(
                c"none",
                c"/proc/sys",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            )
        });
    }
    run(&mut cmd)
}

#[test]
fn read_only_proc_sys_gives_one_line_error_and_changes_nothing() {
    let _l = lock();
    let dir = TempDir::new("ro");
    let state = dir.path().join("state.json");
    let _g = SysctlGuard::set("fs.aio-max-nr", 65_541);
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut args = vec!["--state", state.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = tune_with_read_only_proc_sys(&args);
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "stdout: {}\nstderr: {err}",
            text(&out.stdout)
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("read-only") && err.contains("privileged"),
            "{err}"
        );
        assert_eq!(read_u64("fs.aio-max-nr"), 65_541);
        assert!(!state.exists(), "nothing recorded");
    }
}

#[test]
fn missing_privilege_gives_one_line_error_and_changes_nothing() {
    let _l = lock();
    let dir = TempDir::new("unpriv");
    let state = dir.path().join("state.json");
    let _g = SysctlGuard::set("fs.aio-max-nr", 65_543);
    // The build dir may sit under a 0700 home: give uid 65534 its own link to the binary.
    let agent = dir.path().join("ringmaster-agent");
    if std::fs::hard_link(AGENT, &agent).is_err() {
        std::fs::copy(AGENT, &agent).expect("copy the agent binary for uid 65534");
    }
    let out = run(Command::new(&agent)
        .args(["tune", "--state", state.to_str().unwrap()])
        .uid(65534)
        .gid(65534));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("permission denied") && err.contains("run as root"),
        "{err}"
    );
    assert_eq!(read_u64("fs.aio-max-nr"), 65_543);
    assert!(!state.exists());
}

#[test]
fn sysctl_value_above_kernel_max_is_a_clear_error() {
    let _l = lock();
    assert!(
        sysctl_path("kernel.io_uring_disabled").exists(),
        "kernel.io_uring_disabled is missing: this test needs Linux >= 6.6"
    );
    let before = read_sysctl("kernel.io_uring_disabled");
    let e = ringmaster_ring::host::sysctl::write_str("kernel.io_uring_disabled", "3").unwrap_err();
    assert!(
        matches!(
            e,
            ringmaster_ring::host::sysctl::SysctlError::OutOfRange { .. }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("kernel.io_uring_disabled=3") && e.to_string().contains("EINVAL")
    );
    assert_eq!(read_sysctl("kernel.io_uring_disabled"), before);
}

// ---------------------------------------------------------------- library API

#[test]
fn tuner_library_writes_the_original_before_the_sysctl_and_verify_reports() {
    use ringmaster_agent::tune::{AioMaxNrTuner, Sizing};
    let _l = lock();
    let dir = TempDir::new("lib");
    let t = AioMaxNrTuner::new(dir.path().join("state.json"));
    let _g = SysctlGuard::set("fs.aio-max-nr", 65_545);
    let s = Sizing::default();
    let plan = t.verify(&s).unwrap();
    assert!(!plan.satisfied && plan.would_change);
    assert_eq!((plan.current, plan.target), (65_545, 1_048_576));

    // A tuner "killed" after recording but before writing: the state says what to restore,
    // and restore sees the value is still the original.
    let o = t.apply(&s, None).unwrap();
    assert!(o.changed);
    assert_eq!(o.original, Some(65_545));
    let st = t.state().unwrap().unwrap();
    assert_eq!((st.original, st.applied), (65_545, 1_048_576));
    std::fs::write("/proc/sys/fs/aio-max-nr", "65545\n").unwrap();
    assert_eq!(
        t.restore().unwrap(),
        ringmaster_agent::tune::RestoreOutcome::AlreadyOriginal { value: 65_545 }
    );
    assert!(t.state().unwrap().is_none());

    // A persisted value follows later raises, and an unchanged apply writes nothing.
    let conf = dir.path().join("60-ringmaster.conf");
    let o = t.apply(&s, Some(&conf)).unwrap();
    assert_eq!(o.persisted.as_deref(), Some(conf.as_path()));
    let stamp = std::fs::metadata(t.state_path())
        .unwrap()
        .modified()
        .unwrap();
    let again = t.apply(&s, Some(&conf)).unwrap();
    assert!(!again.changed);
    assert_eq!(
        std::fs::metadata(t.state_path())
            .unwrap()
            .modified()
            .unwrap(),
        stamp,
        "no-op apply must not rewrite the state"
    );
    let bigger = Sizing {
        workers: 1024,
        max_events: 1024,
        ..s
    };
    let o = t.apply(&bigger, None).unwrap();
    assert!(o.changed && o.current > 1_048_576);
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(
        text.contains(&format!("fs.aio-max-nr = {}\n", o.current)),
        "{text}"
    );
    assert_eq!(t.state().unwrap().unwrap().original, 65_545);
    t.restore().unwrap();
    assert_eq!(read_u64("fs.aio-max-nr"), 65_545);
    assert!(!conf.exists());
}
