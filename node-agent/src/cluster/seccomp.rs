//! The shipped `Localhost` seccomp profile (the container runtime's default allow-list plus
//! io_uring_setup/enter/register), installed by the privileged agent into the kubelet's
//! seccomp dir so the reader container can run under `seccomp.type: Localhost`.

use std::path::{Path, PathBuf};

/// `deploy/seccomp/io-uring.json`, compiled in so the agent image needs no extra file.
pub const PROFILE: &str = include_str!("../../../deploy/seccomp/io-uring.json");

/// Install [`PROFILE`] as `<kubelet_seccomp_dir>/ringmaster/io-uring.json` (only rewritten
/// when different). Returns the path.
pub fn install(kubelet_seccomp_dir: &Path) -> std::io::Result<PathBuf> {
    let path = kubelet_seccomp_dir.join(ringmaster_api::SHIPPED_SECCOMP_PROFILE);
    if std::fs::read_to_string(&path).is_ok_and(|b| b == PROFILE) {
        return Ok(path);
    }
    crate::safe_fs::write_atomic(&path, PROFILE.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_allows_io_uring_and_denies_by_default() {
        let v: serde_json::Value = serde_json::from_str(PROFILE).expect("profile is JSON");
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed: Vec<&str> = v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().unwrap().iter())
            .map(|n| n.as_str().unwrap())
            .collect();
        for s in [
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "read",
            "io_setup",
            "openat",
        ] {
            assert!(allowed.contains(&s), "{s} not allowed");
        }
        // What RuntimeDefault denies stays denied.
        for s in [
            "mount",
            "kexec_load",
            "bpf",
            "ptrace",
            "init_module",
            "reboot",
            "swapon",
        ] {
            assert!(!allowed.contains(&s), "{s} must not be allowed");
        }
    }

    #[test]
    fn install_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("rm-seccomp-{}", std::process::id()));
        let p = install(&dir).unwrap();
        assert!(p.ends_with("ringmaster/io-uring.json"));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), PROFILE);
        install(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
