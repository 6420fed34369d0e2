//! Kubernetes Events for the node's transitions (io_uring became unsupported/supported,
//! fs.aio-max-nr raised, tuning failed, a data dir unusable/usable again, restored), regarding the Node so
//! `kubectl describe node` shows them. Publishing is best effort: a failed event is logged,
//! never fatal.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use ringmaster_api::reasons;

use super::labels::NodeVerdict;
use super::tuning::TuneOutcome;

/// What the last published transition was, so each is announced once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announced {
    pub io_uring_supported: Option<bool>,
    pub tune_error: Option<String>,
    /// Names of the data dirs last announced unusable (`None`: nothing announced yet).
    pub data_dirs_unavailable: Option<Vec<String>>,
}

/// The data dirs' verdict for [`transitions`]: unusable names (sorted) and the message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataDirsVerdict {
    pub unavailable: Vec<String>,
    pub message: String,
}

/// A transition to announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

/// Transitions between what was announced and what is observed now; updates `announced`.
pub fn transitions(
    announced: &mut Announced,
    verdict: &NodeVerdict,
    io_uring_message: Option<&str>,
    tune: &TuneOutcome,
    data_dirs: Option<&DataDirsVerdict>,
) -> Vec<Transition> {
    let mut out = Vec::new();
    if let Some(d) = data_dirs {
        let before = announced.data_dirs_unavailable.as_ref();
        if before != Some(&d.unavailable) {
            if !d.unavailable.is_empty() {
                out.push(Transition {
                    warning: true,
                    reason: reasons::DATA_DIR_UNAVAILABLE,
                    action: "CheckDataDirs",
                    note: d.message.clone(),
                });
            } else if before.is_some_and(|b| !b.is_empty()) {
                out.push(Transition {
                    warning: false,
                    reason: reasons::DATA_DIRS_AVAILABLE,
                    action: "CheckDataDirs",
                    note: d.message.clone(),
                });
            }
            announced.data_dirs_unavailable = Some(d.unavailable.clone());
        }
    }
    if verdict.io_uring_supported.is_some()
        && verdict.io_uring_supported != announced.io_uring_supported
    {
        if verdict.io_uring_supported == Some(false) {
            out.push(Transition {
                warning: true,
                reason: reasons::IO_URING_UNSUPPORTED,
                action: "Probe",
                note: format!(
                    "io_uring unsupported ({}): {}",
                    verdict.io_uring_reason.as_deref().unwrap_or("unknown"),
                    io_uring_message.unwrap_or("io_uring_setup failed")
                ),
            });
        } else {
            out.push(Transition {
                warning: false,
                reason: reasons::IO_URING_SUPPORTED,
                action: "Probe",
                note: "io_uring works under the read workers' security context".into(),
            });
        }
        announced.io_uring_supported = verdict.io_uring_supported;
    }
    if tune.changed {
        out.push(Transition {
            warning: false,
            reason: reasons::TUNED,
            action: "Tune",
            note: format!(
                "raised fs.aio-max-nr to {} (required {}, original {})",
                tune.current,
                tune.required,
                tune.original.map_or("unknown".into(), |o| o.to_string())
            ),
        });
    }
    if tune.error != announced.tune_error {
        if let Some(e) = &tune.error {
            out.push(Transition {
                warning: true,
                reason: reasons::TUNE_FAILED,
                action: "Tune",
                note: e.clone(),
            });
        }
        announced.tune_error = tune.error.clone();
    }
    out
}

/// Publishes events about one Node.
#[derive(Clone)]
pub struct NodeEvents {
    recorder: Recorder,
    node: ObjectReference,
}

impl NodeEvents {
    pub fn new(client: Client, node_name: &str) -> Self {
        let reporter = Reporter {
            controller: ringmaster_api::keys::MANAGER_AGENT.into(),
            instance: Some(format!(
                "{}-{node_name}",
                ringmaster_api::keys::MANAGER_AGENT
            )),
        };
        NodeEvents {
            recorder: Recorder::new(client, reporter),
            node: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node_name.into()),
                ..Default::default()
            },
        }
    }

    /// Set the Node's uid once known (events then link to this incarnation of the Node).
    pub fn set_uid(&mut self, uid: Option<String>) {
        self.node.uid = uid;
    }

    pub async fn publish(&self, t: &Transition) {
        self.publish_about(&self.node, t).await
    }

    pub async fn publish_about(&self, regarding: &ObjectReference, t: &Transition) {
        let ev = Event {
            type_: if t.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason.into(),
            note: Some(t.note.chars().take(1000).collect()),
            action: t.action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, regarding).await {
            tracing::warn!(error = %e, reason = t.reason, "cannot publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_transition_once() {
        let mut a = Announced::default();
        let bad = NodeVerdict {
            io_uring_supported: Some(false),
            io_uring_reason: Some("EPERM".into()),
            ..Default::default()
        };
        let t = TuneOutcome::default();
        let first = transitions(&mut a, &bad, Some("seccomp"), &t, None);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].reason, reasons::IO_URING_UNSUPPORTED);
        assert!(first[0].note.contains("EPERM"));
        assert!(transitions(&mut a, &bad, Some("seccomp"), &t, None).is_empty());
        let good = NodeVerdict {
            io_uring_supported: Some(true),
            ..Default::default()
        };
        let back = transitions(&mut a, &good, None, &t, None);
        assert_eq!(back[0].reason, reasons::IO_URING_SUPPORTED);
        // No report: nothing to say.
        assert!(transitions(&mut a, &NodeVerdict::default(), None, &t, None).is_empty());
        let raised = TuneOutcome {
            changed: true,
            current: 10,
            required: 10,
            original: Some(5),
            ..Default::default()
        };
        let r = transitions(&mut a, &good, None, &raised, None);
        assert_eq!(r[0].reason, reasons::TUNED);
        assert!(r[0].note.contains("original 5"));
        let failed = TuneOutcome {
            error: Some("read-only".into()),
            ..Default::default()
        };
        assert_eq!(
            transitions(&mut a, &good, None, &failed, None)[0].reason,
            reasons::TUNE_FAILED
        );
        assert!(transitions(&mut a, &good, None, &failed, None).is_empty());
    }

    #[test]
    fn data_dir_transitions_once_each_way() {
        let mut a = Announced::default();
        let t = TuneOutcome::default();
        let v = NodeVerdict::default();
        let ok = DataDirsVerdict {
            unavailable: vec![],
            message: "all 2 data dirs".into(),
        };
        // Fine from the start: nothing to say.
        assert!(transitions(&mut a, &v, None, &t, Some(&ok)).is_empty());
        let bad = DataDirsVerdict {
            unavailable: vec!["d1".into()],
            message: "spec.readService.dataDirs[1].hostPath ... does not exist".into(),
        };
        let w = transitions(&mut a, &v, None, &t, Some(&bad));
        assert_eq!(w.len(), 1);
        assert!(w[0].warning && w[0].reason == reasons::DATA_DIR_UNAVAILABLE);
        assert!(w[0].note.contains("dataDirs[1]"));
        assert!(transitions(&mut a, &v, None, &t, Some(&bad)).is_empty());
        // No report this pass: no change either way.
        assert!(transitions(&mut a, &v, None, &t, None).is_empty());
        let back = transitions(&mut a, &v, None, &t, Some(&ok));
        assert_eq!(back.len(), 1);
        assert!(!back[0].warning && back[0].reason == reasons::DATA_DIRS_AVAILABLE);
    }
}
