//! Verified settings handed to the storage service on this node: `aio.toml` (a
//! `[server.aio_read_worker]` section with 3FS's key names, so a storage pod can include
//! it) and its `aio.env` twin, both in the agent's host state dir.
//!
//! The values are what was *verified* here, not what was asked for: the ring size that
//! worked, whether io_uring may be enabled under the reader's security context, and the
//! libaio events still free under `fs.aio-max-nr`. The same values go into the
//! StorageNode's `status.serviceSettings`.

use std::fmt::Write as _;
use std::path::Path;

use ringmaster_api::ServiceSettings;

pub const TOML_FILE: &str = "aio.toml";
pub const ENV_FILE: &str = "aio.env";

/// What the storage service may use on this node, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedSettings {
    /// Ring and libaio events per worker that worked (3FS `max_events`).
    pub max_events: u32,
    /// Worker threads (3FS `num_threads`).
    pub num_threads: u32,
    /// io_uring works under the reader's security context and the policy allows it.
    pub enable_io_uring: bool,
    /// `fs.aio-max-nr - fs.aio-nr`: libaio events that can still be set up now.
    pub aio_budget: u64,
    /// StorageCluster generation these settings were verified for.
    pub generation: i64,
    pub config_hash: String,
    /// `namespace/name` of the StorageCluster.
    pub cluster: String,
    pub node: String,
}

impl VerifiedSettings {
    /// The values as they appear in `StorageNode.status.serviceSettings`.
    pub fn service_settings(&self) -> ServiceSettings {
        ServiceSettings {
            max_events: self.max_events,
            num_threads: self.num_threads,
            enable_io_uring: self.enable_io_uring,
            aio_budget: self.aio_budget,
        }
    }

    /// `aio.toml`: 3FS's `[server.aio_read_worker]` keys, then Ringmaster's provenance.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Written by ringmaster-agent on node {} for StorageCluster {} (generation {}).\n\
             # Verified on this node; do not edit (the agent rewrites it when the cluster changes).",
            self.node, self.cluster, self.generation
        );
        let _ = writeln!(s, "[server.aio_read_worker]");
        let _ = writeln!(s, "num_threads = {}", self.num_threads);
        let _ = writeln!(s, "max_events = {}", self.max_events);
        let _ = writeln!(s, "enable_io_uring = {}", self.enable_io_uring);
        let _ = writeln!(s);
        let _ = writeln!(s, "[ringmaster]");
        let _ = writeln!(s, "aio_budget = {}", self.aio_budget);
        let _ = writeln!(s, "generation = {}", self.generation);
        let _ = writeln!(s, "config_hash = {:?}", self.config_hash);
        let _ = writeln!(s, "cluster = {:?}", self.cluster);
        let _ = writeln!(s, "node = {:?}", self.node);
        s
    }

    /// `aio.env`: the same values as shell-sourceable `KEY=value` lines.
    pub fn to_env(&self) -> String {
        format!(
            "RINGMASTER_AIO_NUM_THREADS={}\nRINGMASTER_AIO_MAX_EVENTS={}\n\
             RINGMASTER_AIO_ENABLE_IO_URING={}\nRINGMASTER_AIO_BUDGET={}\n\
             RINGMASTER_GENERATION={}\nRINGMASTER_CONFIG_HASH={}\n",
            self.num_threads,
            self.max_events,
            self.enable_io_uring,
            self.aio_budget,
            self.generation,
            self.config_hash
        )
    }

    /// Write both files atomically and durably into `dir` (created if missing). Unchanged files are
    /// not rewritten, so watchers of the files see changes only.
    pub fn write(&self, dir: &Path) -> std::io::Result<bool> {
        std::fs::create_dir_all(dir)?;
        let a = write_if_changed(dir, TOML_FILE, &self.to_toml())?;
        let b = write_if_changed(dir, ENV_FILE, &self.to_env())?;
        Ok(a || b)
    }
}

/// Remove both files (the cluster is gone: the storage service must not trust them).
pub fn remove(dir: &Path) -> std::io::Result<()> {
    for f in [TOML_FILE, ENV_FILE] {
        match std::fs::remove_file(dir.join(f)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn write_if_changed(dir: &Path, name: &str, body: &str) -> std::io::Result<bool> {
    let path = dir.join(name);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == body) {
        return Ok(false);
    }
    crate::safe_fs::write_atomic(&path, body.as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> VerifiedSettings {
        VerifiedSettings {
            max_events: 256,
            num_threads: 32,
            enable_io_uring: false,
            aio_budget: 1_000_000,
            generation: 4,
            config_hash: "0123abcd".into(),
            cluster: "storage/main".into(),
            node: "node-a".into(),
        }
    }

    #[test]
    fn toml_has_threefs_section_and_keys() {
        let t = s().to_toml();
        let sec = t.find("[server.aio_read_worker]\n").expect("section");
        let body = &t[sec..];
        assert!(body.contains("num_threads = 32\n"));
        assert!(body.contains("max_events = 256\n"));
        assert!(body.contains("enable_io_uring = false\n"));
        assert!(t.contains("aio_budget = 1000000\n"));
        assert!(t.contains("generation = 4\n"));
        assert!(t.contains("config_hash = \"0123abcd\"\n"));
    }

    #[test]
    fn env_twin_matches() {
        let e = s().to_env();
        for line in [
            "RINGMASTER_AIO_NUM_THREADS=32",
            "RINGMASTER_AIO_MAX_EVENTS=256",
            "RINGMASTER_AIO_ENABLE_IO_URING=false",
            "RINGMASTER_AIO_BUDGET=1000000",
            "RINGMASTER_GENERATION=4",
        ] {
            assert!(e.lines().any(|l| l == line), "{line} missing in {e}");
        }
    }

    #[test]
    fn write_is_idempotent_and_remove_cleans() {
        let dir = std::env::temp_dir().join(format!("rm-settings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(s().write(&dir).unwrap());
        assert!(!s().write(&dir).unwrap(), "unchanged settings rewritten");
        let mut changed = s();
        changed.generation = 5;
        assert!(changed.write(&dir).unwrap());
        assert!(std::fs::read_to_string(dir.join(ENV_FILE))
            .unwrap()
            .contains("RINGMASTER_GENERATION=5"));
        remove(&dir).unwrap();
        assert!(!dir.join(TOML_FILE).exists() && !dir.join(ENV_FILE).exists());
        remove(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
