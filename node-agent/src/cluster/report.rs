//! The node's verdict from what the agent observed (tuning pass, reader report), as
//! StorageNode status, conditions and node labels. Pure; no I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use ringmaster_api::node_conditions as cond;
use ringmaster_api::reasons;
use ringmaster_api::{
    data_dir_reasons, AioReport, DataDirReport, IoUringReport, StorageNodeStatus,
    UnsupportedNodesPolicy,
};

use super::desired::Desired;
use super::events::DataDirsVerdict;
use super::labels::NodeVerdict;
use super::tuning::TuneOutcome;
use crate::handoff::{ReaderReport, WorkerMode};
use crate::settings::VerifiedSettings;

/// What one agent pass observed.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    pub node: &'a str,
    pub desired: &'a Desired,
    pub tune: &'a TuneOutcome,
    /// Latest reader report (possibly for an older config while the reader catches up).
    pub report: Option<&'a ReaderReport>,
    /// `reader.json` exists but cannot be read/parsed.
    pub reader_error: Option<&'a str>,
    /// `config.json` could not be written for the reader (it keeps its last config).
    pub config_error: Option<&'a str>,
    pub kernel: &'a str,
    pub io_uring_disabled: Option<i64>,
}

impl Observation<'_> {
    /// The reader answered the current config.
    pub fn report_current(&self) -> bool {
        self.report
            .is_some_and(|r| self.desired.reader.answered_by(r))
    }

    pub fn verdict(&self) -> NodeVerdict {
        NodeVerdict {
            io_uring_supported: self.report.map(|r| r.io_uring.supported),
            io_uring_reason: self
                .report
                .filter(|r| !r.io_uring.supported)
                .and_then(|r| r.io_uring.reason.clone()),
            aio_tuned: self.tune.tuned,
            ready: self.node_ready(),
        }
    }

    /// The node can run the storage service: tuned, probed, the reader serving, and
    /// every configured data dir usable.
    pub fn node_ready(&self) -> bool {
        self.tune.tuned
            && self
                .report
                .is_some_and(|r| r.usable() && r.data_dirs_available())
    }

    /// Where data dir `name` is in the current spec, as a field path.
    fn data_dir_field(&self, name: &str) -> String {
        let index = self
            .desired
            .reader
            .data_dirs
            .iter()
            .position(|(n, _)| n == name);
        ringmaster_api::data_dir_field(index, name)
    }

    /// What to announce about the data dirs (`None` until the reader checked them).
    pub fn data_dirs_verdict(&self) -> Option<DataDirsVerdict> {
        let r = self.report?;
        if r.data_dirs.is_empty() && !self.desired.reader.data_dirs.is_empty() {
            return None;
        }
        let c = self.data_dirs_condition();
        let mut unavailable: Vec<String> =
            self.data_dir_problems().into_iter().map(|p| p.0).collect();
        unavailable.sort();
        Some(DataDirsVerdict {
            unavailable,
            message: c.message,
        })
    }

    /// The unusable data dirs: (name, condition reason, message naming the field).
    pub fn data_dir_problems(&self) -> Vec<(String, &'static str, String)> {
        let Some(r) = self.report else {
            return Vec::new();
        };
        let node = self.node;
        r.data_dirs
            .iter()
            .filter(|d| !d.available)
            .map(|d| {
                let at = format!(
                    "{} {:?} (name {})",
                    self.data_dir_field(&d.name),
                    d.path.display().to_string(),
                    d.name
                );
                let fix = "remove the entry, or narrow spec.nodeSelector";
                let (reason, msg) = match d.reason.as_deref() {
                    Some(data_dir_reasons::NOT_FOUND) => (
                        reasons::DATA_DIR_MISSING,
                        format!(
                            "{at} does not exist on node {node}: create it (Ringmaster never creates host directories), {fix}"
                        ),
                    ),
                    Some(data_dir_reasons::NOT_A_DIRECTORY) => (
                        reasons::DATA_DIR_NOT_A_DIRECTORY,
                        format!(
                            "{at} is not a directory on node {node}: make it one, {fix}"
                        ),
                    ),
                    Some(data_dir_reasons::PERMISSION_DENIED) => (
                        reasons::DATA_DIR_PERMISSION_DENIED,
                        format!(
                            "{at} cannot be opened by the reader on node {node} ({}): let the reader's uid/gid read and search it, {fix}",
                            d.message.as_deref().unwrap_or("permission denied")
                        ),
                    ),
                    other => (
                        reasons::DATA_DIR_UNAVAILABLE,
                        format!(
                            "{at} is unusable on node {node} ({}: {}): fix it on the node, {fix}",
                            other.unwrap_or("unknown"),
                            d.message.as_deref().unwrap_or("no detail")
                        ),
                    ),
                };
                (d.name.clone(), reason, msg)
            })
            .collect()
    }

    /// The agent did its job (`/readyz`): tuning pass done (tuned, or only verified),
    /// the reader answered the current config, and it serves or deliberately does not.
    pub fn agent_ready(&self) -> bool {
        let tuning_done = self.tune.error.is_none();
        tuning_done && self.report_current() && self.report.is_some_and(|r| r.settled())
    }

    /// The taint belongs on the node (policy Taint and io_uring unsupported).
    pub fn want_taint(&self) -> bool {
        self.desired.unsupported_nodes == UnsupportedNodesPolicy::Taint
            && self.report.is_some_and(|r| !r.io_uring.supported)
    }

    /// Settings for the storage service, once the reader answered the current config.
    pub fn settings(&self) -> Option<VerifiedSettings> {
        let r = self.report.filter(|_| self.report_current())?;
        let io_uring = r.io_uring.supported && r.worker_mode == WorkerMode::IoUring;
        Some(VerifiedSettings {
            max_events: if io_uring && r.io_uring.ring_entries > 0 {
                r.io_uring.ring_entries
            } else {
                self.desired.reader.max_events
            },
            num_threads: self.desired.reader.workers,
            enable_io_uring: io_uring,
            aio_budget: self.tune.current.saturating_sub(self.tune.aio_nr),
            generation: self.desired.generation,
            config_hash: self.desired.config_hash.clone(),
            cluster: self.desired.cluster.clone(),
            node: self.node.to_string(),
        })
    }

    /// StorageNode status. `previous` supplies condition transition times so that they
    /// move only when a condition's status does; `applied` is the generation/hash last
    /// fully applied (kept while the reader catches up with a new config).
    pub fn status(
        &self,
        previous: Option<&StorageNodeStatus>,
        applied: Option<&(i64, String)>,
        now: Timestamp,
    ) -> StorageNodeStatus {
        let r = self.report;
        let mut conditions = vec![
            self.tuned_condition(),
            self.io_uring_condition(),
            self.data_dirs_condition(),
            self.ready_condition(),
        ];
        let prev = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
        let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
        for c in &mut conditions {
            c.last_transition_time = prev
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
        }
        StorageNodeStatus {
            kernel: Some(self.kernel.to_string()).filter(|k| !k.is_empty()),
            io_uring: r.map(|r| IoUringReport {
                verdict: if r.io_uring.supported {
                    ringmaster_api::keys::SUPPORTED.into()
                } else {
                    ringmaster_api::keys::UNSUPPORTED.into()
                },
                supported: r.io_uring.supported,
                reason: r.io_uring.reason.clone(),
                errno: r.io_uring.errno,
                message: uring_message(r),
                requested_entries: r.io_uring.requested_entries,
                ring_entries: r.io_uring.ring_entries,
                setup_flags: r.io_uring.setup_flags,
                opcodes: r.io_uring.opcodes.clone(),
                read_verified: r.io_uring.read_verified,
            }),
            aio: (self.tune.error.is_none() || self.tune.current > 0).then_some(AioReport {
                original: self.tune.original,
                required: self.tune.required,
                current: self.tune.current,
                aio_nr: self.tune.aio_nr,
                tuned: self.tune.tuned,
            }),
            io_uring_disabled: self.io_uring_disabled,
            memlock_bytes: r.and_then(|r| r.host.memlock_bytes),
            seccomp_mode: r
                .map(|r| r.host.seccomp_mode.clone())
                .filter(|m| !m.is_empty()),
            worker_mode: r.map(|r| r.worker_mode.as_str().to_string()),
            worker_mode_reason: r
                .map(|r| r.worker_mode_reason.clone())
                .filter(|m| !m.is_empty()),
            applied_generation: applied.map(|a| a.0),
            applied_config_hash: applied.map(|a| a.1.clone()),
            service_settings: self.settings().map(|s| s.service_settings()),
            data_dirs: r
                .map(|r| {
                    r.data_dirs
                        .iter()
                        .map(|d| DataDirReport {
                            name: d.name.clone(),
                            host_path: d.path.display().to_string(),
                            available: d.available,
                            reason: d.reason.clone(),
                            message: d.message.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            conditions,
            last_probe_time: r
                .and_then(|r| r.probed_at.parse::<Timestamp>().ok())
                .and_then(|t| Timestamp::from_second(t.as_second()).ok())
                .map(Time),
            // Stamped by the agent loop (`heartbeat::stamp`).
            boot_id: None,
            heartbeat_time: None,
            heartbeat_seconds: None,
        }
    }

    fn tuned_condition(&self) -> Condition {
        let t = self.tune;
        let (status, reason, message) = if let Some(e) = &t.error {
            let reason = if e.contains("read-only") {
                reasons::READ_ONLY_SYSCTL
            } else {
                reasons::TUNE_FAILED
            };
            (false, reason, e.clone())
        } else if t.tuned {
            (
                true,
                reasons::SUFFICIENT,
                format!(
                    "fs.aio-max-nr={} >= required {} (fs.aio-nr={})",
                    t.current, t.required, t.aio_nr
                ),
            )
        } else {
            (
                false,
                reasons::BELOW_REQUIRED,
                format!(
                    "fs.aio-max-nr={} < required {} and sysctl.mode is Verify: raise it on the node \
                     (sysctl -w fs.aio-max-nr={}) or set sysctl.mode: Enforce",
                    t.current, t.required, t.required
                ),
            )
        };
        condition(cond::TUNED, status, reason, message)
    }

    fn io_uring_condition(&self) -> Condition {
        match (self.report, self.reader_error) {
            (None, reader_error) if self.config_error.is_some() => Condition {
                status: "Unknown".into(),
                ..condition(
                    cond::IO_URING_SUPPORTED,
                    false,
                    reasons::CONFIG_HANDOFF_FAILED,
                    format!(
                        "{}{}",
                        self.config_error.unwrap_or_default(),
                        reader_error
                            .map(|e| format!("; cannot read the reader's report: {e}"))
                            .unwrap_or_default()
                    ),
                )
            },
            (Some(r), _) if r.io_uring.supported => condition(
                cond::IO_URING_SUPPORTED,
                true,
                reasons::SUPPORTED,
                format!(
                    "io_uring_setup with {} entries works under the reader's security context \
                     (seccomp {}); read through the ring verified: {}",
                    r.io_uring.ring_entries, r.host.seccomp_mode, r.io_uring.read_verified
                ),
            ),
            (Some(r), _) => condition(
                cond::IO_URING_SUPPORTED,
                false,
                r.io_uring.reason.as_deref().unwrap_or(reasons::UNSUPPORTED),
                uring_message(r).unwrap_or_else(|| "io_uring_setup failed".into()),
            ),
            (None, Some(e)) => Condition {
                status: "Unknown".into(),
                ..condition(
                    cond::IO_URING_SUPPORTED,
                    false,
                    reasons::READER_REPORT_INVALID,
                    format!("cannot read the reader's report: {e}"),
                )
            },
            (None, None) => Condition {
                status: "Unknown".into(),
                ..condition(
                    cond::IO_URING_SUPPORTED,
                    false,
                    reasons::WAITING_FOR_READER,
                    "the reader container has not reported its io_uring probe yet".into(),
                )
            },
        }
    }

    fn data_dirs_condition(&self) -> Condition {
        let unknown = |reason: &str, message: String| Condition {
            status: "Unknown".into(),
            ..condition(cond::DATA_DIRS_READY, false, reason, message)
        };
        let configured = self.desired.reader.data_dirs.len();
        let Some(r) = self.report else {
            return unknown(
                reasons::WAITING_FOR_READER,
                "the reader container has not checked the data dirs yet".into(),
            );
        };
        if configured == 0 {
            return condition(
                cond::DATA_DIRS_READY,
                true,
                reasons::NO_DATA_DIRS,
                "spec.readService.dataDirs is empty: nothing to serve".into(),
            );
        }
        if r.data_dirs.is_empty() {
            return unknown(
                reasons::WAITING_FOR_READER,
                format!(
                    "the reader has not checked the {configured} data dirs of generation {} yet",
                    self.desired.generation
                ),
            );
        }
        let problems = self.data_dir_problems();
        if problems.is_empty() {
            let list: Vec<String> = r
                .data_dirs
                .iter()
                .map(|d| format!("{} ({})", d.name, d.path.display()))
                .collect();
            return condition(
                cond::DATA_DIRS_READY,
                true,
                reasons::ALL_AVAILABLE,
                format!(
                    "all {} data dirs exist and the reader can open them: {}",
                    list.len(),
                    list.join(", ")
                ),
            );
        }
        let first = problems[0].1;
        let reason = if problems.iter().all(|p| p.1 == first) {
            first
        } else {
            reasons::DATA_DIR_UNAVAILABLE
        };
        condition(
            cond::DATA_DIRS_READY,
            false,
            reason,
            self.data_dirs_message(&problems),
        )
    }

    /// The problems in one message; the other dirs are still served.
    fn data_dirs_message(&self, problems: &[(String, &'static str, String)]) -> String {
        let served = self
            .report
            .map_or(0, |r| r.data_dirs.iter().filter(|d| d.available).count());
        let every = crate::reader::RETRY_AFTER.as_secs();
        let mut msg = problems
            .iter()
            .map(|p| p.2.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        msg.push_str(&match served {
            0 => format!(" (no data dir is served; the reader checks again every {every}s)"),
            1 => format!(" (1 data dir is still served; the reader checks again every {every}s)"),
            n => {
                format!(" ({n} data dirs are still served; the reader checks again every {every}s)")
            }
        });
        msg
    }

    fn ready_condition(&self) -> Condition {
        if !self.tune.tuned {
            return condition(
                cond::READY,
                false,
                reasons::NOT_TUNED,
                "fs.aio-max-nr is below what the storage processes need (see Tuned)".into(),
            );
        }
        match self.report {
            None => condition(
                cond::READY,
                false,
                reasons::WAITING_FOR_READER,
                "the reader container has not reported yet".into(),
            ),
            Some(r) if r.worker_mode != WorkerMode::Off && !r.data_dirs_available() => condition(
                cond::READY,
                false,
                reasons::DATA_DIR_UNAVAILABLE,
                self.data_dirs_message(&self.data_dir_problems()),
            ),
            Some(r) if r.usable() => condition(
                cond::READY,
                true,
                if r.serving {
                    reasons::SERVING
                } else {
                    reasons::NO_READ_SERVICE
                },
                format!(
                    "read workers in {} mode: {}",
                    r.worker_mode, r.worker_mode_reason
                ),
            ),
            Some(r) if r.worker_mode == WorkerMode::Off => condition(
                cond::READY,
                false,
                reasons::IO_URING_REQUIRED,
                format!(
                    "aio.ioUring is Required and io_uring is unavailable: {}",
                    r.worker_mode_reason
                ),
            ),
            Some(r) => condition(
                cond::READY,
                false,
                reasons::NOT_SERVING,
                r.error
                    .clone()
                    .unwrap_or_else(|| "the read service is not listening".into()),
            ),
        }
    }
}

/// The probe's cause and fix in one sentence.
fn uring_message(r: &ReaderReport) -> Option<String> {
    match (&r.io_uring.message, &r.io_uring.fix) {
        (Some(m), Some(f)) => Some(format!("{m}; fix: {f}")),
        (Some(m), None) => Some(m.clone()),
        (None, Some(f)) => Some(format!("fix: {f}")),
        (None, None) => None,
    }
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: condition_reason(reason),
        message: message.chars().take(32_000).collect(),
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// Condition reasons must match `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`.
fn condition_reason(s: &str) -> String {
    let r: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(1024)
        .collect();
    if r.starts_with(|c: char| c.is_ascii_alphabetic()) {
        r
    } else {
        format!("R{r}")
    }
}

/// The `Restored` condition set when the agent cleaned up for a deleted cluster.
pub fn restored_condition(message: String, now: Timestamp) -> Condition {
    Condition {
        last_transition_time: Time(Timestamp::from_second(now.as_second()).unwrap_or(now)),
        ..condition(cond::RESTORED, true, reasons::RESTORED, message)
    }
}

/// The status fields that differ between `prev` and `next` (a condition by its type, e.g.
/// `conditions.Ready`), so the log says why the agent wrote its StorageNode status again.
pub fn changed_fields(prev: Option<&StorageNodeStatus>, next: &StorageNodeStatus) -> Vec<String> {
    let as_map = |s: Option<&StorageNodeStatus>| -> serde_json::Map<String, serde_json::Value> {
        let mut m = match s.map(serde_json::to_value) {
            Some(Ok(serde_json::Value::Object(m))) => m,
            _ => Default::default(),
        };
        for c in s.map(|s| s.conditions.as_slice()).unwrap_or(&[]) {
            m.insert(
                format!("conditions.{}", c.type_),
                serde_json::to_value(c).unwrap_or_default(),
            );
        }
        m.remove("conditions");
        m
    };
    let (a, b) = (as_map(prev), as_map(Some(next)));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::DataDirCheck;
    use ringmaster_api::StorageCluster;
    use ringmaster_ring::host::HostFacts;
    use ringmaster_ring::probe::UringProbe;

    fn desired(policy: &str) -> Desired {
        let mut sc = StorageCluster::new(
            "main",
            serde_yaml::from_str(&format!("unsupportedNodes: {policy}")).unwrap(),
        );
        sc.metadata.namespace = Some("ns".into());
        sc.metadata.generation = Some(2);
        Desired::from_cluster(&sc)
    }

    fn report(d: &Desired, supported: bool, mode: WorkerMode, serving: bool) -> ReaderReport {
        ReaderReport {
            generation: d.generation,
            config_hash: d.config_hash.clone(),
            host: HostFacts {
                seccomp_mode: "filter".into(),
                ..Default::default()
            },
            io_uring: UringProbe {
                supported,
                errno: (!supported).then_some(38),
                reason: (!supported).then(|| "ENOSYS".into()),
                message: (!supported).then(|| "io_uring_setup: ENOSYS".into()),
                requested_entries: 512,
                ring_entries: if supported { 256 } else { 0 },
                ..Default::default()
            },
            worker_mode: mode,
            worker_mode_reason: "why".into(),
            serving,
            service_configured: true,
            listen_addr: None,
            error: None,
            data_dirs: d
                .reader
                .data_dirs
                .iter()
                .map(|(name, path)| DataDirCheck {
                    name: name.clone(),
                    path: path.clone(),
                    available: true,
                    reason: None,
                    message: None,
                })
                .collect(),
            probed_at: "2026-01-02T03:04:05.678Z".into(),
            boot_id: None,
        }
    }

    fn tuned() -> TuneOutcome {
        TuneOutcome {
            required: 100,
            current: 150,
            aio_nr: 10,
            tuned: true,
            ..Default::default()
        }
    }

    fn obs<'a>(d: &'a Desired, t: &'a TuneOutcome, r: Option<&'a ReaderReport>) -> Observation<'a> {
        Observation {
            node: "n1",
            desired: d,
            tune: t,
            report: r,
            reader_error: None,
            config_error: None,
            kernel: "6.8.0",
            io_uring_disabled: Some(0),
        }
    }

    #[test]
    fn unsupported_under_taint_policy() {
        let d = desired("Taint");
        let t = tuned();
        let r = report(&d, false, WorkerMode::Pread, true);
        let o = obs(&d, &t, Some(&r));
        assert!(o.want_taint());
        let v = o.verdict();
        assert_eq!(v.io_uring_supported, Some(false));
        assert_eq!(v.io_uring_reason.as_deref(), Some("ENOSYS"));
        assert!(v.ready, "pread pool serving under Preferred is ready");
        let s = o.settings().unwrap();
        assert!(!s.enable_io_uring);
        assert_eq!(s.max_events, 512, "libaio keeps the asked size");
        assert_eq!(s.aio_budget, 140);
        let st = o.status(None, Some(&(2, d.config_hash.clone())), Timestamp::now());
        let io = st.io_uring.unwrap();
        assert_eq!((io.verdict.as_str(), io.errno), ("unsupported", Some(38)));
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == "IoUringSupported")
            .unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "ENOSYS"));
        assert_eq!(st.applied_generation, Some(2));
    }

    #[test]
    fn supported_uses_ring_that_worked_and_no_taint() {
        let d = desired("Taint");
        let t = tuned();
        let r = report(&d, true, WorkerMode::IoUring, true);
        let o = obs(&d, &t, Some(&r));
        assert!(!o.want_taint());
        let s = o.settings().unwrap();
        assert!(s.enable_io_uring);
        assert_eq!(s.max_events, 256);
        assert!(o.agent_ready());
    }

    #[test]
    fn label_policy_never_taints() {
        let d = desired("Label");
        let t = tuned();
        let r = report(&d, false, WorkerMode::Pread, true);
        assert!(!obs(&d, &t, Some(&r)).want_taint());
    }

    #[test]
    fn failed_config_handoff_has_its_own_reason() {
        let d = desired("Label");
        let t = tuned();
        let io_uring = |o: &Observation| {
            o.status(None, None, Timestamp::UNIX_EPOCH)
                .conditions
                .into_iter()
                .find(|c| c.type_ == cond::IO_URING_SUPPORTED)
                .unwrap()
        };
        let mut o = obs(&d, &t, None);
        o.config_error = Some("cannot hand config.json to the reader in /state/agent: EROFS");
        let c = io_uring(&o);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("Unknown", reasons::CONFIG_HANDOFF_FAILED)
        );
        assert!(
            c.message.contains("config.json") && c.message.contains("EROFS"),
            "{}",
            c.message
        );
        // An unreadable report alone keeps its own reason.
        o.config_error = None;
        o.reader_error = Some("reader.json: refused: it is a FIFO");
        let c = io_uring(&o);
        assert_eq!(c.reason, reasons::READER_REPORT_INVALID);
    }

    #[test]
    fn stale_report_is_not_applied() {
        let d = desired("Label");
        let t = tuned();
        let mut r = report(&d, true, WorkerMode::IoUring, true);
        r.generation = 1;
        let o = obs(&d, &t, Some(&r));
        assert!(!o.report_current());
        assert!(o.settings().is_none());
        assert!(!o.agent_ready());
        // Labels still follow the last verdict rather than flapping.
        assert_eq!(o.verdict().io_uring_supported, Some(true));
    }

    #[test]
    fn required_and_unsupported_is_deliberately_not_serving() {
        let d = desired("Label");
        let t = tuned();
        let r = report(&d, false, WorkerMode::Off, false);
        let o = obs(&d, &t, Some(&r));
        assert!(!o.node_ready());
        assert!(o.agent_ready());
        let st = o.status(None, None, Timestamp::now());
        let c = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(c.reason, reasons::IO_URING_REQUIRED);
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let d = desired("Label");
        let t = tuned();
        let r = report(&d, true, WorkerMode::IoUring, true);
        let o = obs(&d, &t, Some(&r));
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let first = o.status(None, None, t0);
        let later = o.status(
            Some(&first),
            None,
            Timestamp::from_second(2_000_000).unwrap(),
        );
        assert_eq!(
            first, later,
            "same verdict, same status (no spurious writes)"
        );
        let t2 = TuneOutcome {
            tuned: false,
            ..tuned()
        };
        let o2 = obs(&d, &t2, Some(&r));
        let changed = o2.status(
            Some(&first),
            None,
            Timestamp::from_second(3_000_000).unwrap(),
        );
        let tc = changed
            .conditions
            .iter()
            .find(|c| c.type_ == "Tuned")
            .unwrap();
        assert_eq!(tc.last_transition_time.0.as_second(), 3_000_000);
        let ic = changed
            .conditions
            .iter()
            .find(|c| c.type_ == "IoUringSupported")
            .unwrap();
        assert_eq!(ic.last_transition_time.0.as_second(), 1_000_000);
    }

    fn with_dirs() -> Desired {
        let mut sc = StorageCluster::new(
            "main",
            serde_yaml::from_str(
                "readService: {dataDirs: [{name: d0, hostPath: /storage/data0}, {name: d1, hostPath: /storage/data1}]}",
            )
            .unwrap(),
        );
        sc.metadata.namespace = Some("ns".into());
        sc.metadata.generation = Some(4);
        Desired::from_cluster(&sc)
    }

    fn get<'a>(st: &'a StorageNodeStatus, t: &str) -> &'a Condition {
        st.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn missing_data_dir_names_the_field_and_makes_the_node_not_ready() {
        let d = with_dirs();
        let t = tuned();
        let mut r = report(&d, true, WorkerMode::IoUring, true);
        r.data_dirs[1].available = false;
        r.data_dirs[1].reason = Some("NotFound".into());
        r.data_dirs[1].message = Some("/storage/data1 does not exist".into());
        let o = obs(&d, &t, Some(&r));
        assert!(!o.node_ready());
        assert!(!o.verdict().ready, "label ringmaster.io/ready=false");
        assert!(o.agent_ready(), "the agent did its job: it reports the dir");
        let st = o.status(None, None, Timestamp::now());
        let c = get(&st, "DataDirsReady");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::DATA_DIR_MISSING)
        );
        assert!(
            c.message.starts_with(
                "spec.readService.dataDirs[1].hostPath \"/storage/data1\" (name d1) does not exist on node n1: create it (Ringmaster never creates host directories), remove the entry, or narrow spec.nodeSelector"
            ),
            "{}",
            c.message
        );
        assert!(
            c.message.contains("1 data dir is still served"),
            "{}",
            c.message
        );
        let ready = get(&st, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reasons::DATA_DIR_UNAVAILABLE)
        );
        assert_eq!(ready.message, c.message);
        assert_eq!(st.data_dirs.len(), 2);
        assert!(st.data_dirs[0].available && !st.data_dirs[1].available);
        assert_eq!(st.data_dirs[1].host_path, "/storage/data1");
        assert_eq!(st.data_dirs[1].reason.as_deref(), Some("NotFound"));
        let v = o.data_dirs_verdict().unwrap();
        assert_eq!(v.unavailable, vec!["d1".to_string()]);

        // Other reasons, and an entry that left the spec (index unknown).
        r.data_dirs[0].available = false;
        r.data_dirs[0].reason = Some("PermissionDenied".into());
        r.data_dirs[0].message = Some("the reader (uid 65532, gid 65532) may not".into());
        let o = obs(&d, &t, Some(&r));
        let c = get(&o.status(None, None, Timestamp::now()), "DataDirsReady").clone();
        assert_eq!(c.reason, reasons::DATA_DIR_UNAVAILABLE, "mixed reasons");
        assert!(
            c.message.contains("spec.readService.dataDirs[0].hostPath"),
            "{}",
            c.message
        );
        assert!(c.message.contains("uid 65532"), "{}", c.message);
        assert!(c.message.contains("no data dir is served"), "{}", c.message);
        r.data_dirs[0].available = true;
        r.data_dirs[1].name = "gone".into();
        let o = obs(&d, &t, Some(&r));
        let c = get(&o.status(None, None, Timestamp::now()), "DataDirsReady").clone();
        assert!(
            c.message.contains("no longer in spec.readService.dataDirs"),
            "{}",
            c.message
        );
    }

    #[test]
    fn data_dirs_ready_when_all_available_or_none_configured() {
        let d = with_dirs();
        let t = tuned();
        let r = report(&d, true, WorkerMode::IoUring, true);
        let o = obs(&d, &t, Some(&r));
        assert!(o.node_ready());
        let st = o.status(None, None, Timestamp::now());
        let c = get(&st, "DataDirsReady");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::ALL_AVAILABLE)
        );
        assert_eq!(get(&st, "Ready").status, "True");
        assert_eq!(o.data_dirs_verdict().unwrap().unavailable.len(), 0);

        let none = desired("Label");
        let r = report(&none, true, WorkerMode::IoUring, true);
        let st = obs(&none, &t, Some(&r)).status(None, None, Timestamp::now());
        assert_eq!(get(&st, "DataDirsReady").reason, reasons::NO_DATA_DIRS);
        // A reader that predates the check: Unknown, not a failure.
        let mut old = report(&d, true, WorkerMode::IoUring, true);
        old.data_dirs.clear();
        let o = obs(&d, &t, Some(&old));
        let c = get(&o.status(None, None, Timestamp::now()), "DataDirsReady").clone();
        assert_eq!(c.status, "Unknown");
        assert!(o.data_dirs_verdict().is_none());
    }

    #[test]
    fn reasons_are_valid() {
        assert_eq!(condition_reason("ENOSYS"), "ENOSYS");
        assert_eq!(condition_reason("errno-5"), "errno5");
        assert_eq!(condition_reason("95"), "R95");
    }

    #[test]
    fn changed_fields_names_fields_and_conditions_by_type() {
        let cond = |t: &str, status: &str| Condition {
            type_: t.into(),
            status: status.into(),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            message: String::new(),
            observed_generation: None,
            reason: "R".into(),
        };
        let a = StorageNodeStatus {
            kernel: Some("6.1".into()),
            conditions: vec![cond("Ready", "True"), cond("Tuned", "True")],
            ..Default::default()
        };
        assert!(changed_fields(Some(&a), &a).is_empty());
        let mut b = a.clone();
        b.kernel = Some("6.2".into());
        b.conditions[0].status = "False".into();
        assert_eq!(changed_fields(Some(&a), &b), ["conditions.Ready", "kernel"]);
        assert!(changed_fields(None, &a).contains(&"conditions.Tuned".to_string()));
    }
}
