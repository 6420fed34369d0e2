//! Restarting control-plane components started by `hack/cluster.sh`, for fault tests.

use std::time::Duration;

use crate::{kubectl, wait_for_sync};

/// Restarts a control plane component that hack/cluster.sh started (same command line,
/// same log file, pid file updated), then waits until the API server is ready again.
pub fn restart_control_plane_component(name: &str) {
    let dir = std::env::var("RINGMASTER_CLUSTER_DIR").expect(
        "RINGMASTER_CLUSTER_DIR (set by eval \"$(hack/cluster.sh up)\") is needed to restart the control plane",
    );
    let pid_file = format!("{dir}/pids/{name}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{pid_file}: {e}"))
        .trim()
        .parse()
        .unwrap();
    let cmdline =
        std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    };
    let wait = |tenths: u32| {
        (0..tenths).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            stopped()
        })
    };
    // SAFETY: signalling a process the cluster script started. After 5 s it is killed.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let gone = wait(50) || {
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait(100)
    };
    assert!(gone, "{name} {pid} did not stop");
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(format!("{dir}/logs/{name}.log"))
        .unwrap();
    let child = std::process::Command::new("setsid")
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("restarting {name}: {e}"));
    // setsid execs the program in place: the child pid is the component's.
    std::fs::write(&pid_file, format!("{}\n", child.id())).unwrap();
    std::mem::forget(child);
    wait_for_sync(
        Duration::from_secs(120),
        &format!("kube-apiserver /readyz after restarting {name}"),
        || {
            let out = kubectl(["get", "--raw", "/readyz"]);
            anyhow::ensure!(out.success(), "{}", out.stderr);
            Ok(())
        },
    );
}
