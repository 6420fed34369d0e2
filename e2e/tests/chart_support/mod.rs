//! Helm and chart helpers shared by the chart_* and rbac_* tests (a module, not a test target).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_yaml::Value;

/// Kubernetes version `helm template`/`lint` render for when no cluster is asked (the chart
/// needs >= 1.30; a Helm built from Go modules defaults to 1.20).
pub const TEMPLATE_KUBE_VERSION: &str = "1.33.0";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

pub fn chart_dir() -> String {
    repo_root()
        .join("charts/ringmaster")
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

/// What a helm run printed and how it ended.
#[derive(Debug)]
pub struct HelmOutput {
    pub args: Vec<String>,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl HelmOutput {
    pub fn ok(self) -> String {
        assert!(
            self.success,
            "`helm {}` failed:\n{}{}",
            self.args.join(" "),
            self.stderr,
            self.stdout
        );
        self.stdout
    }

    pub fn err(self) -> String {
        assert!(
            !self.success,
            "`helm {}` succeeded but should have failed:\n{}",
            self.args.join(" "),
            self.stdout
        );
        self.stderr
    }
}

/// Runs `helm ARGS` (the helm that `hack/cluster.sh up` puts first on PATH).
pub fn helm<I, S>(args: I) -> HelmOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
    let out = Command::new("helm")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running helm: {e}: helm must be on PATH (eval \"$(hack/cluster.sh up)\" puts the \
                 one hack/build-tools.sh built there); chart tests never skip"
            )
        });
    HelmOutput {
        args,
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `helm template` of the chart with `--set` pairs, as YAML documents.
pub fn render(release: &str, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        release,
        chart.as_str(),
        "--namespace",
        namespace,
        "--kube-version",
        TEMPLATE_KUBE_VERSION,
    ];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    parse_docs(&helm(args).ok())
}

/// The non-empty YAML documents of a multi-document stream.
pub fn parse_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("helm printed valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// The one document of `kind` named `name`; panics listing what was rendered otherwise.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = docs
                .iter()
                .map(|d| format!("{}/{}", str_of(&d["kind"]), str_of(&d["metadata"]["name"])))
                .collect();
            panic!("no {kind} {name} rendered; have {have:?}")
        })
}

pub fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// RBAC rules as a comparable set: (apiGroup, resource, resourceName or "") -> verbs.
pub fn rule_set(rules: &Value) -> BTreeMap<(String, String, String), Vec<String>> {
    let mut set: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    let list = |v: &Value| -> Vec<String> {
        v.as_sequence()
            .map(|s| s.iter().map(str_of).collect())
            .unwrap_or_default()
    };
    for rule in rules.as_sequence().expect("rules is a list") {
        let names = {
            let n = list(&rule["resourceNames"]);
            if n.is_empty() {
                vec![String::new()]
            } else {
                n
            }
        };
        for g in list(&rule["apiGroups"]) {
            for r in list(&rule["resources"]) {
                for n in &names {
                    let verbs = set.entry((g.clone(), r.clone(), n.clone())).or_default();
                    verbs.extend(list(&rule["verbs"]));
                    verbs.sort();
                    verbs.dedup();
                }
            }
        }
    }
    set
}
