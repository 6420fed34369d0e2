//! The shipped Localhost profile (deploy/seccomp/io-uring.json) loaded for real: its rules
//! are compiled to BPF (seccompiler) and installed in a child process that then runs
//! `ringmaster-agent check`. Under the profile io_uring works end to end (a real read through
//! the ring); the same profile without the three io_uring syscalls gives EPERM, as the
//! runtimes' RuntimeDefault does. So the profile is neither too tight for the read path nor
//! a no-op.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Command;

use seccompiler::{BpfProgram, TargetArch};
use serde_json::{json, Value};

const PROFILE: &str = include_str!("../../deploy/seccomp/io-uring.json");
const IO_URING: [&str; 3] = ["io_uring_setup", "io_uring_enter", "io_uring_register"];

fn arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    {
        TargetArch::x86_64
    }
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
}

fn compile(filter: Value) -> Result<BpfProgram, String> {
    let doc = json!({ "f": filter }).to_string();
    seccompiler::compile_from_json(doc.as_bytes(), arch())
        .map_err(|e| e.to_string())
        .map(|mut m| m.remove("f").unwrap())
}

/// Whether this architecture's syscall table knows `name` (the profile also lists 32-bit
/// names such as `mmap2`, which the runtimes skip on 64-bit hosts; so do we).
fn known(name: &str) -> bool {
    compile(
        json!({"mismatch_action": {"errno": 1}, "match_action": "allow",
                   "filter": [{"syscall": name}]}),
    )
    .is_ok()
}

/// One OCI argument condition in seccompiler's terms.
fn condition(a: &Value) -> Value {
    let index = a["index"].as_u64().unwrap();
    let value = a["value"].as_u64().unwrap();
    match a["op"].as_str().unwrap() {
        "SCMP_CMP_EQ" => json!({"index": index, "type": "dword", "op": "eq", "val": value}),
        // OCI: (arg & value) == valueTwo.
        "SCMP_CMP_MASKED_EQ" => json!({"index": index, "type": "dword",
            "op": {"masked_eq": value}, "val": a["valueTwo"].as_u64().unwrap_or(0)}),
        other => panic!("profile uses {other}: extend this test"),
    }
}

/// The profile as BPF programs to stack: the allow-list (default errno) and the rules
/// with their own errno (clone3 → ENOSYS). `without` drops syscalls from the allow-list.
fn programs(without: &[&str]) -> Vec<BpfProgram> {
    let p: Value = serde_json::from_str(PROFILE).unwrap();
    assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
    let default_errno = p["defaultErrnoRet"].as_u64().unwrap_or(1);
    let mut allow = Vec::new();
    let mut errno_rules: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for rule in p["syscalls"].as_array().unwrap() {
        for name in rule["names"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            if without.contains(&name) || !known(name) {
                continue;
            }
            let args: Vec<Value> = rule
                .get("args")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(condition).collect())
                .unwrap_or_default();
            let entry = if args.is_empty() {
                json!({"syscall": name})
            } else {
                json!({"syscall": name, "args": args})
            };
            match rule["action"].as_str().unwrap() {
                "SCMP_ACT_ALLOW" => allow.push(entry),
                "SCMP_ACT_ERRNO" => {
                    let e = rule["errnoRet"].as_u64().unwrap_or(default_errno);
                    errno_rules.entry(e).or_default().push(entry.clone());
                    // Let it through the allow-list: the errno program decides it.
                    allow.push(json!({"syscall": name}));
                }
                other => panic!("profile uses action {other}: extend this test"),
            }
        }
    }
    let mut out = vec![compile(json!({
        "mismatch_action": {"errno": default_errno},
        "match_action": "allow",
        "filter": allow,
    }))
    .unwrap()];
    for (errno, rules) in errno_rules {
        out.push(
            compile(json!({
                "mismatch_action": "allow",
                "match_action": {"errno": errno},
                "filter": rules,
            }))
            .unwrap(),
        );
    }
    out
}

/// `ringmaster-agent check --output json` in a child under the profile.
fn check_under(name: &str, programs: Vec<BpfProgram>) -> Value {
    // One scratch dir per test: tests of this binary run in parallel.
    let scratch = std::env::temp_dir().join(format!("rm-profile-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmaster-agent"));
    cmd.args([
        "check",
        "--output",
        "json",
        "--max-events",
        "64",
        "--workers",
        "1",
        "--aio-max-nr-floor",
        "0",
    ])
    .env("TMPDIR", &scratch)
    .current_dir(&scratch);
    // SAFETY: between fork and exec only prctl/seccomp syscalls on prebuilt programs.
    unsafe {
        cmd.pre_exec(move || {
            for p in &programs {
                seccompiler::apply_filter(p).map_err(std::io::Error::other)?;
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("running ringmaster-agent check");
    let _ = std::fs::remove_dir_all(&scratch);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check under the profile printed no JSON ({e}); status {}; stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn io_uring_and_the_read_path_work_under_the_shipped_profile() {
    let v = check_under("allowed", programs(&[]));
    assert_eq!(v["process"]["seccomp_mode"], "filter", "{v}");
    assert_eq!(v["io_uring"]["supported"], true, "{v}");
    assert_eq!(v["io_uring"]["read_verified"], true, "{v}");
}

#[test]
fn without_the_io_uring_rule_the_profile_denies_io_uring_with_eperm() {
    let v = check_under("denied", programs(&IO_URING));
    assert_eq!(v["io_uring"]["supported"], false, "{v}");
    assert_eq!(v["io_uring"]["reason"], "EPERM", "{v}");
}
