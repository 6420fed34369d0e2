//! Data dirs the agents report unusable, grouped by the spec field a person fixes.

use std::collections::BTreeMap;

use ringmaster_api::{data_dir_reasons, DataDirReport, StorageCluster};

use super::name_list;

/// Data dirs the agents report unusable, grouped by spec field: a person fixes a field
/// (or the nodes it names), not one node at a time.
#[derive(Default)]
pub(super) struct DataDirProblems {
    /// (index in the current spec or `usize::MAX`, name, host path, reason) → nodes.
    by_field: BTreeMap<(usize, String, String, String), Vec<String>>,
}

impl DataDirProblems {
    pub(super) fn add(&mut self, sc: &StorageCluster, node: &str, d: &DataDirReport) {
        let index = sc
            .spec
            .read_service
            .data_dirs
            .iter()
            .position(|s| s.name == d.name)
            .unwrap_or(usize::MAX);
        let reason = d.reason.clone().unwrap_or_else(|| "Unavailable".into());
        self.by_field
            .entry((index, d.name.clone(), d.host_path.clone(), reason))
            .or_default()
            .push(node.to_string());
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_field.is_empty()
    }

    /// `spec.readService.dataDirs[1].hostPath`, or the name once it left the spec.
    fn field(index: usize, name: &str) -> String {
        ringmaster_api::data_dir_field((index != usize::MAX).then_some(index), name)
    }

    fn what(reason: &str) -> String {
        match reason {
            data_dir_reasons::NOT_FOUND => "missing".into(),
            data_dir_reasons::NOT_A_DIRECTORY => "not a directory".into(),
            data_dir_reasons::PERMISSION_DENIED => "not readable by the reader".into(),
            other => format!("unusable ({other})"),
        }
    }

    /// `n3 (spec.readService.dataDirs[1].hostPath missing)` for the Ready message.
    pub(super) fn on_node(&self, node: &str) -> Option<String> {
        let parts: Vec<String> = self
            .by_field
            .iter()
            .filter(|(_, nodes)| nodes.iter().any(|n| n == node))
            .map(|((i, name, _, reason), _)| {
                format!("{} {}", Self::field(*i, name), Self::what(reason))
            })
            .collect();
        (!parts.is_empty()).then(|| format!("{node} ({})", parts.join(", ")))
    }

    pub(super) fn message(&self, desired: i32) -> String {
        let parts: Vec<String> = self
            .by_field
            .iter()
            .map(|((i, name, host, reason), nodes)| {
                format!(
                    "{} {host:?} is {} on {} of {desired} nodes: {}",
                    Self::field(*i, name),
                    Self::what(reason),
                    nodes.len(),
                    name_list(nodes.iter().map(String::as_str))
                )
            })
            .collect();
        let all_missing = self
            .by_field
            .keys()
            .all(|k| k.3 == data_dir_reasons::NOT_FOUND);
        let fix = if all_missing {
            "create the directory on those nodes or narrow spec.nodeSelector"
        } else {
            "create or fix the directories on those nodes (Ringmaster never creates host directories; kubectl get stn <node> -o yaml shows why) or narrow spec.nodeSelector"
        };
        format!("{}; {fix}", parts.join("; "))
    }
}
