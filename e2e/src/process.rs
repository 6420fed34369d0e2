//! Project binaries run as real processes, killed when the test ends, with their output
//! in a log file that is printed when the test fails.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::env::{bin_dir, log_dir, unique_name};

/// Lines of the log printed when a test fails while the process guard is alive.
const LOG_TAIL_LINES: usize = 150;

/// A running project binary. Dropping it stops the process group (SIGTERM, then SIGKILL
/// after 5 s); if the test is failing (panicking), the log tail is printed to stderr.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

/// Starts `$RINGMASTER_BIN_DIR/<name> args...` with `env` added to the test's
/// environment, minus `KUBECONFIG`: a process gets a cluster identity only when the
/// test passes one (e.g. from [`crate::write_token_kubeconfig`]), so none runs as admin
/// by accident. stdout and stderr go to `<log dir>/<name>-xxxxxx.log`.
/// Panics when the binary is missing.
pub fn spawn_bin(name: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
    let bin = bin_dir().join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build it (cargo build --bins -p <package>) or fix RINGMASTER_BIN_DIR",
        bin.display()
    );
    spawn_program(&bin, args, env)
}

/// [`spawn_bin`] for any program (`prometheus` from `PATH`, …), with the same guard, log
/// and environment rules.
pub fn spawn_program(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Process {
    let name = bin
        .file_name()
        .map_or("program".into(), |n| n.to_string_lossy().into_owned());
    let name = name.as_str();
    let log = log_dir().join(format!("{}.log", unique_name(name)));
    let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    let err = out.try_clone().expect("dup log fd");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    eprintln!(
        "started {name} (pid {}) {}; log {}",
        child.id(),
        args.join(" "),
        log.display()
    );
    Process {
        name: name.to_string(),
        child,
        log,
        exited: None,
    }
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status once it exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Panics, showing the log, when the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.try_exit_status() {
            panic!(
                "{} exited early ({st}); log {}:\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_exit_status() {
                return Some(st);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls the log until it contains `needle`; panics with the log on timeout or exit.
    pub async fn wait_for_log(&mut self, timeout: Duration, needle: &str) {
        let start = Instant::now();
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Some(st) = self.try_exit_status() {
                panic!(
                    "{} exited ({st}) before logging {needle:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "{} did not log {needle:?} within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `signal` to the process group.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's process group; no memory involved.
        unsafe { libc::kill(-(self.child.id() as i32), signal) };
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(st) = self.try_exit_status() {
            return st;
        }
        self.signal(libc::SIGTERM);
        if let Some(st) = self.wait_exit(Duration::from_secs(5)) {
            return st;
        }
        self.kill()
    }

    /// SIGKILL at once (a crash, as far as the cluster can tell).
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(st) = self.try_exit_status() {
            return st;
        }
        self.signal(libc::SIGKILL);
        let st = self.child.wait().expect("wait");
        self.exited = Some(st);
        st
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let st = self.stop();
        if std::thread::panicking() || std::env::var_os("RINGMASTER_E2E_SHOW_LOGS").is_some() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!(
                "---- {} ({st}) log {} (last {} lines)\n{}\n----",
                self.name,
                self.log.display(),
                lines.len() - from,
                lines[from..].join("\n")
            );
        }
    }
}
