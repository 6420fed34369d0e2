//! The chart on its own: `helm lint --strict`, the values schema, what the templates render
//! (hardened operator Deployment, CRDs identical to crds/). No cluster needed, helm on PATH.

use crate::chart_support;

use chart_support::{
    chart_dir, find, helm, parse_docs, render, repo_root, rule_set, str_of, template,
};

/// Every combination users are told about lints clean: no [WARNING] or [ERROR], exit 0.
#[test]
fn helm_lint_strict_is_clean() {
    let chart = chart_dir();
    let variants: [&[&str]; 5] = [
        &[],
        &["storageCluster.create=true", "serviceMonitor.enabled=true"],
        &["monitoring.podMonitor.enabled=true", "monitoring.prometheusRule.enabled=true", "monitoring.grafanaDashboard.enabled=true"],
        &["crds.install=false", "admissionPolicy.enabled=false", "rbac.create=false"],
        &["operator.replicas=1", "operator.image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000"],
    ];
    for sets in variants {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = helm(&args).ok();
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint --strict {sets:?}:\n{out}"
        );
        for bad in ["[WARNING]", "[ERROR]"] {
            assert!(
                !out.contains(bad),
                "helm lint --strict {sets:?} reports {bad}:\n{out}"
            );
        }
    }
}

/// values.schema.json refuses wrong types, bad enums and unknown keys, naming the key.
#[test]
fn values_schema_refuses_wrong_types_and_unknown_keys() {
    let cases: [(&[&str], &str); 11] = [
        (&["--set", "operator.replicas=two"], "/operator/replicas"),
        (&["--set", "operatr.replicas=2"], "'operatr' not allowed"),
        (&["--set", "operator.image.tga=1"], "'tga' not allowed"),
        (&["--set", "crds.install=maybe"], "/crds/install"),
        (&["--set", "operator.logFormat=xml"], "/operator/logFormat"),
        (
            &["--set-string", "operator.metrics.port=80"],
            "/operator/metrics/port",
        ),
        (
            &["--set", "operator.metrics.port=70000"],
            "/operator/metrics/port",
        ),
        (
            &["--set", "admissionPolicy.validationActions={Block}"],
            "/admissionPolicy/validationActions/0",
        ),
        (
            &["--set", "storageCluster.name=Not_A_Name"],
            "/storageCluster/name",
        ),
        (
            &["--set", "operator.cleanupTimeoutSeconds=soon"],
            "/operator/cleanupTimeoutSeconds",
        ),
        (
            &["--set", "operator.readAccessRecheckSeconds=0"],
            "/operator/readAccessRecheckSeconds",
        ),
    ];
    for (sets, field) in cases {
        let err = template("t", None, sets).err();
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(field),
            "{sets:?}: expected a schema error naming {field:?}, got:\n{err}"
        );
    }
}

/// The operator runs hardened: non-root, read-only root, no capabilities, RuntimeDefault
/// seccomp, probes on /healthz and /readyz, leader election on a Lease in its namespace.
#[test]
fn operator_deployment_is_hardened() {
    let docs = render("ringmaster", "ringmaster-system", &["operator.replicas=3"]);
    let dep = find(&docs, "Deployment", "ringmaster-operator");
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(dep["spec"]["replicas"], 3);
    assert_eq!(pod["serviceAccountName"], "ringmaster-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        c["image"],
        "ghcr.io/ringmaster-io/ringmaster-operator:0.1.0"
    );
    let args: Vec<String> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    for want in [
        "--lease-namespace=ringmaster-system",
        "--metrics-addr=0.0.0.0:8080",
        "--log-format=json",
        "--cleanup-timeout=60",
        "--read-access-recheck=3600",
        "--lease-name=ringmaster-operator",
        "--agent-image=ghcr.io/ringmaster-io/ringmaster-agent:0.1.0",
        "--allow-unconfined-seccomp=false",
        "--allow-control-plane-tolerations=false",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "operator args {args:?} lack {want}"
        );
    }
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--allowed-data-dir-root")),
        "no data dir root unless the admin names one: {args:?}"
    );
    assert!(
        c["resources"]["limits"]["memory"].is_string(),
        "operator has no memory limit"
    );
    let role = find(&docs, "ClusterRole", "ringmaster-operator-leader-election");
    assert_eq!(role["rules"][0]["resources"][0], "leases");
    let binding = find(&docs, "RoleBinding", "ringmaster-operator-leader-election");
    assert_eq!(binding["metadata"]["namespace"], "ringmaster-system");
    assert_eq!(
        binding["roleRef"]["name"],
        "ringmaster-operator-leader-election"
    );
    // An image digest wins over the tag.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let docs = render(
        "ringmaster",
        "x",
        &[&format!("operator.image.digest={digest}")],
    );
    let c = &find(&docs, "Deployment", "ringmaster-operator")["spec"]["template"]["spec"]
        ["containers"][0];
    assert_eq!(
        str_of(&c["image"]),
        format!("ghcr.io/ringmaster-io/ringmaster-operator@{digest}")
    );
}

/// The chart's CRDs are crds/ringmaster.io.yaml exactly, plus the keep policy and labels;
/// `crds.install=false` renders none.
#[test]
fn chart_crds_are_the_repository_crds() {
    let want = parse_docs(
        &std::fs::read_to_string(repo_root().join("crds/ringmaster.io.yaml")).expect("crds/"),
    );
    let docs = render("ringmaster", "default", &[]);
    let mut got: Vec<_> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .cloned()
        .collect();
    assert_eq!(
        got.len(),
        want.len(),
        "rendered {} CRDs, crds/ has {}",
        got.len(),
        want.len()
    );
    for crd in &mut got {
        let meta = crd["metadata"].as_mapping_mut().unwrap();
        let ann = meta.remove("annotations").expect("CRD annotations");
        assert_eq!(ann["helm.sh/resource-policy"], "keep");
        let labels = meta.remove("labels").expect("CRD labels");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
    }
    assert_eq!(
        got, want,
        "the chart's CRDs differ from crds/ringmaster.io.yaml: run hack/gen-crds.sh"
    );
    let docs = render("ringmaster", "default", &["crds.install=false"]);
    assert!(!docs.iter().any(|d| d["kind"] == "CustomResourceDefinition"));
    let docs = render("ringmaster", "default", &["crds.keep=false"]);
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "storagenodes.ringmaster.io",
    );
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "delete"
    );
}

/// Optional parts appear only when asked for: the ServiceMonitor only when its CRD is
/// served, the default StorageCluster as a post-install hook (with no agent image: that is
/// the operator's flag).
#[test]
fn optional_objects_render_only_when_enabled() {
    let docs = render("ringmaster", "rm", &[]);
    for kind in ["ServiceMonitor", "StorageCluster"] {
        assert!(
            !docs.iter().any(|d| d["kind"] == kind),
            "{kind} rendered by default"
        );
    }
    // Enabled, but the cluster serves no ServiceMonitor: none (NOTES warns).
    let docs = render("ringmaster", "rm", &["serviceMonitor.enabled=true"]);
    assert!(!docs.iter().any(|d| d["kind"] == "ServiceMonitor"));
    let out = template(
        "ringmaster",
        Some("rm"),
        &[
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
            "--set",
            "serviceMonitor.enabled=true",
        ],
    )
    .ok();
    let docs = parse_docs(&out);
    let sm = find(&docs, "ServiceMonitor", "ringmaster-operator");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    find(&docs, "Service", "ringmaster-operator-metrics");

    let docs = render(
        "ringmaster",
        "rm",
        &[
            "storageCluster.create=true",
            "storageCluster.spec.aio.workers=32",
            "agent.image.tag=9.9",
        ],
    );
    let stc = find(&docs, "StorageCluster", "default");
    assert_eq!(stc["metadata"]["namespace"], "rm");
    assert_eq!(
        stc["metadata"]["annotations"]["helm.sh/hook"],
        "post-install"
    );
    assert_eq!(stc["spec"]["aio"]["workers"], 32);
    assert!(
        stc["spec"].get("agent").is_none(),
        "a StorageCluster names no agent image: {:?}",
        stc["spec"]
    );
}

/// The admin's settings reach the operator as flags and the StorageCluster admission policy
/// as CEL literals; the agent image is pinned by digest when one is given.
#[test]
fn admin_settings_reach_the_operator_and_the_policy() {
    let docs = render(
        "ringmaster",
        "rm",
        &[
            "agent.image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "agent.image.tag=9.9",
            "agent.allowedDataDirRoots={/srv/storage,/mnt/disks}",
            "agent.allowUnconfinedSeccomp=true",
            "agent.allowControlPlaneTolerations=true",
            "operator.readAccessRecheckSeconds=86400",
        ],
    );
    let dep = find(&docs, "Deployment", "ringmaster-operator");
    let args: Vec<String> = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    for want in [
        "--agent-image=ghcr.io/ringmaster-io/ringmaster-agent@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "--allowed-data-dir-root=/srv/storage",
        "--allowed-data-dir-root=/mnt/disks",
        "--allow-unconfined-seccomp=true",
        "--allow-control-plane-tolerations=true",
        "--read-access-recheck=86400",
    ] {
        assert!(args.iter().any(|a| a == want), "operator args {args:?} lack {want}");
    }
    let vap = find(
        &docs,
        "ValidatingAdmissionPolicy",
        "ringmaster-storagecluster-admin-settings",
    );
    let text = serde_yaml::to_string(vap).unwrap();
    assert!(text.contains(r#"["/srv/storage","/mnt/disks"]"#), "{text}");
    assert!(text.contains("/srv/storage, /mnt/disks"), "{text}");
    // A digest that is not one is refused by the values schema.
    let err = template("ringmaster", None, &["--set", "agent.image.digest=latest"]).err();
    assert!(err.contains("digest"), "{err}");
}

/// The monitoring parts: nothing by default; the PrometheusRule and PodMonitor only when
/// the cluster serves their CRDs; every alert links its own section of docs/monitoring.md;
/// the dashboard ConfigMap carries the repository's dashboard JSON as is.
#[test]
fn monitoring_objects_render_when_enabled_and_link_their_runbooks() {
    let kinds = ["PrometheusRule", "PodMonitor", "ConfigMap"];
    let docs = render("ringmaster", "rm", &[]);
    for kind in kinds {
        assert!(
            !docs.iter().any(|d| d["kind"] == kind),
            "{kind} rendered by default"
        );
    }
    let all = [
        "monitoring.podMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.grafanaDashboard.enabled=true",
    ];
    // Enabled, CRDs not served: only the dashboard ConfigMap (NOTES warns about the rest).
    let docs = render("ringmaster", "rm", &all);
    assert!(!docs
        .iter()
        .any(|d| d["kind"] == "PrometheusRule" || d["kind"] == "PodMonitor"));
    let cm = find(&docs, "ConfigMap", "ringmaster-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("charts/ringmaster/dashboards/ringmaster.json"))
            .unwrap(),
    )
    .expect("dashboards/ringmaster.json is valid JSON");
    let in_cm: serde_json::Value =
        serde_json::from_str(cm["data"]["ringmaster.json"].as_str().unwrap()).unwrap();
    assert_eq!(in_cm, shipped);

    let mut args = vec![
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
        "--api-versions",
        "monitoring.coreos.com/v1/PodMonitor",
    ];
    for s in all {
        args.extend(["--set", s]);
    }
    args.extend([
        "--set",
        "monitoring.prometheusRule.alerts.RingmasterAgentDown.enabled=false",
    ]);
    let docs = parse_docs(&template("ringmaster", Some("rm"), &args).ok());
    let pm = find(&docs, "PodMonitor", "ringmaster-agents");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "ringmaster-agent"
    );
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "agent-http");
    let rule = find(&docs, "PrometheusRule", "ringmaster");
    let rules = rule["spec"]["groups"][0]["rules"].as_sequence().unwrap();
    let doc = std::fs::read_to_string(repo_root().join("docs/monitoring.md")).unwrap();
    let names: Vec<String> = rules.iter().map(|r| str_of(&r["alert"])).collect();
    assert_eq!(names.len(), 10, "{names:?}");
    assert!(
        !names.contains(&"RingmasterAgentDown".to_string()),
        "disabled alert rendered"
    );
    for r in rules {
        let name = str_of(&r["alert"]);
        let url = str_of(&r["annotations"]["runbook_url"]);
        assert_eq!(
            url,
            format!(
                "https://github.com/ringmaster-io/ringmaster/blob/main/docs/monitoring.md#{}",
                name.to_lowercase()
            )
        );
        assert!(
            doc.contains(&format!("\n### {name}\n")),
            "docs/monitoring.md has no section {name}"
        );
        for key in ["summary", "description"] {
            assert!(
                !str_of(&r["annotations"][key]).is_empty(),
                "{name} has no {key}"
            );
        }
        assert!(
            !str_of(&r["labels"]["severity"]).is_empty(),
            "{name} has no severity"
        );
    }
}

/// The chart ships the operator's and the agent's RBAC exactly as operator/rbac/ defines it
/// (a verbatim copy, rendered under the release's names); the agent role adds only the
/// marker verb the admission policy recognises agents by.
#[test]
fn chart_rbac_is_the_operator_rbac() {
    let root = repo_root();
    for file in ["operator-clusterrole.yaml", "agent-clusterrole.yaml"] {
        let src =
            std::fs::read_to_string(root.join("operator/rbac").join(file)).expect("operator/rbac");
        let copy = std::fs::read_to_string(root.join("charts/ringmaster/files/rbac").join(file))
            .unwrap_or_default();
        assert_eq!(
            copy, src,
            "charts/ringmaster/files/rbac/{file} differs from operator/rbac/{file}: run hack/gen-crds.sh"
        );
    }
    let source = |file: &str| {
        parse_docs(&std::fs::read_to_string(root.join("operator/rbac").join(file)).unwrap())
    };
    let docs = render("ringmaster", "ringmaster-system", &[]);
    for want in source("operator-clusterrole.yaml") {
        let name = str_of(&want["metadata"]["name"]);
        let got = find(&docs, "ClusterRole", &name);
        assert_eq!(
            rule_set(&got["rules"]),
            rule_set(&want["rules"]),
            "ClusterRole {name}"
        );
    }
    let want = &source("agent-clusterrole.yaml")[0];
    let got = find(&docs, "ClusterRole", "ringmaster-agent");
    let mut want_rules = rule_set(&want["rules"]);
    want_rules.insert(
        ("ringmaster.io".into(), "storagenodes".into(), String::new()),
        {
            let mut v = want_rules
                .get(&("ringmaster.io".into(), "storagenodes".into(), String::new()))
                .cloned()
                .unwrap_or_default();
            v.push("ringmaster-agent".into());
            v.sort();
            v
        },
    );
    assert_eq!(
        rule_set(&got["rules"]),
        want_rules,
        "ClusterRole ringmaster-agent"
    );
    // The operator may bind the agent role and nothing else.
    let op = find(&docs, "ClusterRole", "ringmaster-operator");
    let binds: Vec<_> = rule_set(&op["rules"])
        .into_iter()
        .filter(|(_, verbs)| {
            verbs
                .iter()
                .any(|v| v == "bind" || v == "escalate" || v == "*")
        })
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        binds,
        vec![(
            "rbac.authorization.k8s.io".to_string(),
            "clusterroles".to_string(),
            "ringmaster-agent".to_string()
        )]
    );
}
