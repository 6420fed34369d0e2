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

/// `helm template RELEASE CHART [--namespace NS] --kube-version V EXTRA...`.
pub fn template(release: &str, namespace: Option<&str>, extra: &[&str]) -> HelmOutput {
    let chart = chart_dir();
    let mut args = vec!["template", release, chart.as_str()];
    if let Some(ns) = namespace {
        args.extend(["--namespace", ns]);
    }
    args.extend(["--kube-version", TEMPLATE_KUBE_VERSION]);
    args.extend_from_slice(extra);
    helm(args)
}

/// `helm template` of the chart with `--set` pairs, as YAML documents.
pub fn render(release: &str, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let extra: Vec<&str> = sets.iter().flat_map(|s| ["--set", s]).collect();
    parse_docs(&template(release, Some(namespace), &extra).ok())
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

/// A chart release installs a StorageCluster policy that binds every StorageCluster in the
/// cluster: tests that install one take turns so one release's settings never judge another
/// release's objects.
pub static CHART_POLICIES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A Helm release installed for a test, uninstalled when dropped (also on a failed assert).
pub struct Release {
    pub name: String,
    pub namespace: String,
    uninstalled: bool,
}

impl Release {
    /// `helm install NAME charts/ringmaster -n NS --set ...`; panics with Helm's error.
    pub fn install(name: &str, namespace: &str, extra: &[&str]) -> Release {
        let chart = chart_dir();
        let mut args = vec!["install", name, chart.as_str(), "--namespace", namespace];
        args.extend_from_slice(extra);
        helm(&args).ok();
        Release {
            name: name.to_string(),
            namespace: namespace.to_string(),
            uninstalled: false,
        }
    }

    /// `helm upgrade NAME CHART -n NS ARGS`.
    pub fn upgrade(&self, chart: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "upgrade",
            self.name.as_str(),
            chart,
            "--namespace",
            self.namespace.as_str(),
        ];
        args.extend_from_slice(extra);
        helm(&args).ok()
    }

    /// `helm uninstall --wait`: returns Helm's output.
    pub fn uninstall(&mut self) -> String {
        self.uninstalled = true;
        helm([
            "uninstall",
            self.name.as_str(),
            "--namespace",
            self.namespace.as_str(),
            "--wait",
            "--timeout",
            "60s",
        ])
        .ok()
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.uninstalled && std::env::var_os("RINGMASTER_E2E_KEEP").is_none() {
            let out = helm([
                "uninstall",
                self.name.as_str(),
                "--namespace",
                self.namespace.as_str(),
            ]);
            if !out.success {
                eprintln!("helm uninstall {}: {}", self.name, out.stderr);
            }
        }
    }
}

/// `kubectl auth can-i` for `user` (`resource/sub` for a subresource, `resource/name` for one
/// object): true for "yes", false for "no"; panics on anything else.
pub fn can_i(user: &str, verb: &str, resource: &str, scope: &[&str]) -> bool {
    // kubectl reads `a/b` as resource/name: subresources go in --subresource.
    let (resource, sub) = match resource.split_once('/') {
        Some((r, s)) if ["status", "finalizers", "exec", "token", "eviction"].contains(&s) => {
            (r, Some(format!("--subresource={s}")))
        }
        _ => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
    if let Some(s) = &sub {
        args.push(s);
    }
    args.extend_from_slice(scope);
    let out = ringmaster_e2e::kubectl(&args);
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl {}: unexpected answer {other:?}: {}",
            args.join(" "),
            out.stderr
        ),
    }
}
