//! `kubectl` against the test cluster (the one `hack/cluster.sh up` put first on PATH).

use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};

use crate::env::kubeconfig_path;

/// What a kubectl run printed and how it ended.
#[derive(Debug)]
pub struct KubectlOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout, or a panic showing the command and its stderr.
    pub fn ok(self) -> String {
        assert!(
            self.success(),
            "`kubectl {}` failed ({}):\n{}{}",
            self.args.join(" "),
            self.status,
            self.stderr,
            self.stdout
        );
        self.stdout
    }

    /// stderr of a command that must fail, or a panic showing what it printed.
    pub fn err(self) -> String {
        assert!(
            !self.success(),
            "`kubectl {}` succeeded but should have failed:\n{}",
            self.args.join(" "),
            self.stdout
        );
        self.stderr
    }
}

/// Runs `kubectl ARGS` with the admin `KUBECONFIG`.
pub fn kubectl<I, S>(args: I) -> KubectlOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    run(args, None)
}

/// Runs `kubectl ARGS` with `stdin` piped in (e.g. `apply -f -`).
pub fn kubectl_stdin<I, S>(args: I, stdin: &str) -> KubectlOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    run(args, Some(stdin))
}

/// Runs `kubectl ARGS` and returns stdout; panics with stderr when it fails.
pub fn kubectl_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    kubectl(args).ok()
}

fn run<I, S>(args: I, stdin: Option<&str>) -> KubectlOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
    let mut cmd = Command::new("kubectl");
    cmd.args(&args)
        .env("KUBECONFIG", kubeconfig_path())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("running kubectl: {e} (is the cluster's bin dir on PATH? eval \"$(hack/cluster.sh up)\")")
    });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .expect("writing kubectl stdin");
    }
    let out = child.wait_with_output().expect("waiting for kubectl");
    KubectlOutput {
        args,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
