//! Which boot of the host this is (`/proc/sys/kernel/random/boot_id`, a UUID the kernel
//! draws at every boot; the kubelet reports the same value as the Node's
//! `status.nodeInfo.bootID`). The agent stamps it on its tune state, the reader on its
//! report and the agent on its StorageNode, so anything from an earlier boot is known stale.

/// Where the kernel publishes the boot id.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Test-only hook: pretend the host booted again with this boot id. Read by the agent and
/// the reader alike; logged as a warning when set. Never set it in production.
pub const FAULT_BOOT_ID_ENV: &str = "RINGMASTER_FAULT_BOOT_ID";

/// This boot's id; `None` when the kernel does not say (no procfs).
pub fn boot_id() -> Option<String> {
    if let Some(fake) = std::env::var(FAULT_BOOT_ID_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        return Some(fake.trim().to_string());
    }
    std::fs::read_to_string(BOOT_ID_PATH)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Log once at start that the boot id is faked (a test hook must never pass unnoticed).
pub fn warn_if_faked() {
    if let Ok(v) = std::env::var(FAULT_BOOT_ID_ENV) {
        tracing::warn!(boot_id = %v, "{FAULT_BOOT_ID_ENV} is set: using a fake boot id (test hook)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_boot_id_is_a_uuid() {
        // The test binary does not set the hook.
        if std::env::var(FAULT_BOOT_ID_ENV).is_ok() {
            panic!("{FAULT_BOOT_ID_ENV} set in the test environment");
        }
        let id = boot_id().expect("/proc/sys/kernel/random/boot_id");
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.matches('-').count(), 4, "{id}");
        assert_eq!(boot_id().unwrap(), id, "stable within a boot");
    }
}
