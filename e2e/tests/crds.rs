//! The Ringmaster CRDs on the real API server: they install, every example applies,
//! defaults come from the server, invalid clusters are refused with a message naming the
//! field, and `kubectl get` shows the printer columns.

use std::time::Duration;

use ringmaster_e2e::{
    client, install_crds, kubectl, kubectl_ok, kubectl_stdin, repo_root, unique_name,
    wait_for_sync, TestNamespace,
};
use serde_json::{json, Value};

fn storage_cluster(name: &str, spec: Value) -> String {
    json!({
        "apiVersion": "ringmaster.io/v1alpha1",
        "kind": "StorageCluster",
        "metadata": {"name": name},
        "spec": spec,
    })
    .to_string()
}

fn get_json(args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&kubectl_ok(a)).expect("kubectl -o json prints JSON")
}

#[tokio::test]
async fn crds_install_with_short_names_and_scopes() {
    let c = client().await;
    install_crds(&c).await;
    let out = kubectl_ok(["api-resources", "--api-group=ringmaster.io", "--no-headers"]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("{name} missing from api-resources:\n{out}"))
            .clone()
    };
    // NAME SHORTNAMES APIVERSION NAMESPACED KIND
    assert_eq!(
        row("storageclusters"),
        [
            "storageclusters",
            "stc",
            "ringmaster.io/v1alpha1",
            "true",
            "StorageCluster"
        ]
    );
    assert_eq!(
        row("storagenodes"),
        [
            "storagenodes",
            "stn",
            "ringmaster.io/v1alpha1",
            "false",
            "StorageNode"
        ]
    );
    // Field docs reach `kubectl explain` (once the server republished its OpenAPI, a few
    // seconds after the CRD is Established).
    let explain = wait_for_sync(
        Duration::from_secs(30),
        "kubectl explain storagecluster",
        || {
            let out = kubectl(["explain", "storagecluster.spec.aio"]);
            anyhow::ensure!(out.success(), "{}", out.stderr);
            Ok(out.stdout)
        },
    );
    for needle in [
        "maxEvents",
        "minMaxEvents",
        "processesPerNode",
        "Ring entries",
    ] {
        assert!(
            explain.contains(needle),
            "explain lacks {needle:?}:\n{explain}"
        );
    }
}

/// Creating the CRDs prints no warning: their schemas use only formats the API server knows
/// (a `uint32` there made every first `kubectl apply` and `helm install` warn). The server
/// warns on create, not on an update that keeps a field (other tests installed them already),
/// so this creates them under another group, as a server-side dry run that stores nothing.
#[tokio::test]
async fn crds_create_without_warnings() {
    let text = std::fs::read_to_string(repo_root().join("crds/ringmaster.io.yaml"))
        .expect("crds/ringmaster.io.yaml");
    let renamed = text.replace("ringmaster.io", "warning-check.example.com");
    let out = kubectl_stdin(["create", "--dry-run=server", "-f", "-"], &renamed);
    let stderr = out.stderr.clone();
    let created = out.ok();
    assert_eq!(
        created.matches("created (server dry run)").count(),
        2,
        "both CRDs pass validation:\n{created}"
    );
    assert!(
        !stderr.to_lowercase().contains("warning"),
        "creating the CRDs of crds/ringmaster.io.yaml warned:\n{stderr}"
    );
}

#[tokio::test]
async fn every_example_applies_for_real() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "examples").await;
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected at least 4 examples, found {files:?}"
    );
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let doc: Value = serde_yaml::from_str(&text).expect("example is YAML");
        let kind = doc["kind"].as_str().expect("kind").to_lowercase();
        let name = doc["metadata"]["name"].as_str().expect("metadata.name");
        kubectl_ok([
            "apply",
            "-n",
            &ns.name,
            "--validate=strict",
            "-f",
            f.to_str().unwrap(),
        ]);
        // What the server stored is what the file says (defaults only fill what is absent).
        let got = get_json(&[&kind, name, "-n", &ns.name]);
        assert_subset(
            &doc["spec"],
            &got["spec"],
            &format!("{}: spec", f.display()),
        );
    }
}

/// Every field of `want` is in `got` with the same value.
fn assert_subset(want: &Value, got: &Value, at: &str) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                let gv = g
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} missing in {got}"));
                assert_subset(v, gv, &format!("{at}.{k}"));
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            assert_eq!(w.len(), g.len(), "{at}: {want} vs {got}");
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                assert_subset(a, b, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(want, got, "{at}"),
    }
}

#[tokio::test]
async fn empty_spec_gets_every_default_from_the_server() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "defaults").await;
    kubectl_stdin(
        ["apply", "-n", &ns.name, "-f", "-"],
        &storage_cluster("empty", json!({})),
    )
    .ok();
    let got = get_json(&["stc", "empty", "-n", &ns.name]);
    let spec = &got["spec"];
    assert!(
        spec["agent"].get("image").is_none(),
        "the server must not default an agent image into the spec: {spec}"
    );
    let expect = [
        ("/aio/maxEvents", json!(512)),
        ("/aio/minMaxEvents", json!(64)),
        ("/aio/workers", json!(8)),
        ("/aio/processesPerNode", json!(1)),
        ("/aio/ioUring", json!("Preferred")),
        ("/sysctl/aioMaxNr", json!(1048576)),
        ("/sysctl/mode", json!("Enforce")),
        ("/sysctl/persist", json!(false)),
        ("/sysctl/restoreOnDelete", json!(false)),
        ("/unsupportedNodes", json!("Label")),
        ("/readService/port", json!(7480)),
        ("/readService/limits/maxRangeBytes", json!(16 << 20)),
        ("/readService/limits/maxConcurrent", json!(256)),
        ("/readService/limits/maxConnections", json!(1024)),
        ("/readService/limits/maxResponseBytes", json!(128 << 20)),
        ("/readService/limits/headerReadTimeoutSeconds", json!(30)),
        ("/readService/limits/writeTimeoutSeconds", json!(30)),
        ("/readService/limits/openFileCache/entries", json!(1024)),
        (
            "/readService/limits/openFileCache/validMilliseconds",
            json!(1000),
        ),
        ("/seccomp/type", json!("RuntimeDefault")),
    ];
    for (ptr, want) in expect {
        assert_eq!(
            spec.pointer(ptr),
            Some(&want),
            "spec{} not defaulted by the server; stored spec: {spec}",
            ptr.replace('/', ".")
        );
    }
    assert!(
        spec.pointer("/seccomp/localhostProfile").is_none(),
        "{spec}"
    );
    // The server's defaults are the Rust defaults, so the operator and agent agree.
    let parsed: ringmaster_api::StorageClusterSpec =
        serde_json::from_value(spec.clone()).expect("stored spec parses");
    assert_eq!(parsed, ringmaster_api::StorageClusterSpec::default());
}

/// An invalid spec and what the refusal must name.
struct Invalid {
    what: &'static str,
    spec: Value,
    field: &'static str,
    also: &'static str,
}

fn invalid_cases() -> Vec<Invalid> {
    let case = |what, spec, field, also| Invalid {
        what,
        spec,
        field,
        also,
    };
    vec![
        case(
            "maxEvents 0",
            json!({"aio": {"maxEvents": 0}}),
            "spec.aio.maxEvents",
            "greater than or equal to 1",
        ),
        case(
            "maxEvents above 32768",
            json!({"aio": {"maxEvents": 40000}}),
            "spec.aio.maxEvents",
            "less than or equal to 32768",
        ),
        case(
            "workers 0",
            json!({"aio": {"workers": 0}}),
            "spec.aio.workers",
            "greater than or equal to 1",
        ),
        case(
            "processesPerNode 0",
            json!({"aio": {"processesPerNode": 0}}),
            "spec.aio.processesPerNode",
            "greater than or equal to 1",
        ),
        case(
            "workers as a string",
            json!({"aio": {"workers": "eight"}}),
            "spec.aio.workers",
            "integer",
        ),
        case(
            "persist as a string",
            json!({"sysctl": {"persist": "yes"}}),
            "spec.sysctl.persist",
            "boolean",
        ),
        case(
            "negative aioMaxNr",
            json!({"sysctl": {"aioMaxNr": -1}}),
            "spec.sysctl.aioMaxNr",
            "greater than or equal to 0",
        ),
        case(
            "bad ioUring enum",
            json!({"aio": {"ioUring": "Sometimes"}}),
            "spec.aio.ioUring",
            "Unsupported value",
        ),
        case(
            "bad sysctl mode",
            json!({"sysctl": {"mode": "Fix"}}),
            "spec.sysctl.mode",
            "Unsupported value",
        ),
        case(
            "bad unsupportedNodes policy",
            json!({"unsupportedNodes": "Drain"}),
            "spec.unsupportedNodes",
            "Unsupported value",
        ),
        case(
            "bad seccomp type",
            json!({"seccomp": {"type": "Strict"}}),
            "spec.seccomp.type",
            "Unsupported value",
        ),
        case(
            "minMaxEvents above maxEvents",
            json!({"aio": {"maxEvents": 256, "minMaxEvents": 512}}),
            "spec.aio.minMaxEvents",
            "must not exceed spec.aio.maxEvents",
        ),
        case(
            "default minMaxEvents above a small maxEvents",
            json!({"aio": {"maxEvents": 32}}),
            "spec.aio.minMaxEvents",
            "lower minMaxEvents",
        ),
        case(
            "Localhost without localhostProfile",
            json!({"seccomp": {"type": "Localhost"}}),
            "spec.seccomp.localhostProfile",
            "required when spec.seccomp.type is Localhost",
        ),
        case(
            "localhostProfile with RuntimeDefault",
            json!({"seccomp": {"type": "RuntimeDefault", "localhostProfile": "x.json"}}),
            "spec.seccomp.localhostProfile",
            "must be unset otherwise",
        ),
        case(
            "relative hostPath",
            json!({"readService": {"dataDirs": [{"name": "d0", "hostPath": "data/0"}]}}),
            "spec.readService.dataDirs[0].hostPath",
            "absolute path",
        ),
        case(
            "'..' in hostPath",
            json!({"readService": {"dataDirs": [{"name": "d0", "hostPath": "/var/lib/../../etc"}]}}),
            "spec.readService.dataDirs[0].hostPath",
            "without '..'",
        ),
        case(
            "bad dataDir name",
            json!({"readService": {"dataDirs": [{"name": "Data_0", "hostPath": "/data"}]}}),
            "spec.readService.dataDirs[0].name",
            "should match",
        ),
        case(
            "duplicate dataDir names",
            json!({"readService": {"dataDirs": [{"name": "d0", "hostPath": "/a"}, {"name": "d0", "hostPath": "/b"}]}}),
            "spec.readService.dataDirs[1]",
            "Duplicate value",
        ),
        case(
            "dataDir without hostPath",
            json!({"readService": {"dataDirs": [{"name": "d0"}]}}),
            "spec.readService.dataDirs[0].hostPath",
            "Required value",
        ),
        case(
            "port 0",
            json!({"readService": {"port": 0}}),
            "spec.readService.port",
            "greater than or equal to 1",
        ),
        case(
            "port 70000",
            json!({"readService": {"port": 70000}}),
            "spec.readService.port",
            "less than or equal to 65535",
        ),
        case(
            "an agent image",
            json!({"agent": {"image": "example.invalid/evil:1"}}),
            "spec.agent.image",
            "no longer accepted",
        ),
        case(
            "aioMaxNr above 2^30",
            json!({"sysctl": {"aioMaxNr": 1073741825u64}}),
            "spec.sysctl.aioMaxNr",
            "less than or equal to",
        ),
        case(
            "libaio need above 2^30",
            json!({"aio": {"workers": 1024, "maxEvents": 32768, "processesPerNode": 64}}),
            "spec.aio",
            "workers × maxEvents × processesPerNode",
        ),
        case(
            "hostPath /",
            json!({"readService": {"dataDirs": [{"name": "d0", "hostPath": "/"}]}}),
            "spec.readService.dataDirs[0].hostPath",
            "clean absolute path below a parent other than /",
        ),
        case(
            "hostPath directly below / (parent /)",
            json!({"readService": {"dataDirs": [{"name": "d0", "hostPath": "/srv"}]}}),
            "spec.readService.dataDirs[0].hostPath",
            "the reader is given this directory's parent",
        ),
        case(
            "hostPath /etc",
            json!({"readService": {"dataDirs": [{"name": "d0", "hostPath": "/etc"}]}}),
            "spec.readService.dataDirs[0].hostPath",
            "the reader is given this directory's parent",
        ),
        case(
            "hostPath under /etc",
            json!({"readService": {"dataDirs": [{"name": "ok", "hostPath": "/srv/storage/d0"}, {"name": "d1", "hostPath": "/etc/ssl/private"}]}}),
            "spec.readService.dataDirs[1].hostPath",
            "may not be / nor be, lie under or contain a system directory",
        ),
        case(
            "hostPath under /var/lib/kubelet",
            json!({"readService": {"dataDirs": [{"name": "d0", "hostPath": "/var/lib/kubelet/pods"}]}}),
            "spec.readService.dataDirs[0].hostPath",
            "/var/lib/kubelet",
        ),
        case(
            "hostPath whose parent contains /var/lib/kubelet",
            json!({"readService": {"dataDirs": [{"name": "d0", "hostPath": "/var/lib/data"}]}}),
            "spec.readService.dataDirs[0].hostPath",
            "the reader is given this directory's parent",
        ),
        case(
            "hostPath under /proc",
            json!({"readService": {"dataDirs": [{"name": "d0", "hostPath": "/proc/1/root"}]}}),
            "spec.readService.dataDirs[0].hostPath",
            "the reader is given this directory's parent",
        ),
        case(
            "maxResponseBytes below maxRangeBytes + 8192",
            json!({"readService": {"limits": {"maxRangeBytes": 1048576, "maxResponseBytes": 1048576}}}),
            "spec.readService.limits.maxResponseBytes",
            "must be at least spec.readService.limits.maxRangeBytes + 8192",
        ),
        case(
            "maxRangeBytes over 1 MiB with maxResponseBytes under twice it",
            json!({"readService": {"limits": {"maxRangeBytes": 67108864}}}),
            "spec.readService.limits.maxResponseBytes",
            "2 × (spec.readService.limits.maxRangeBytes + 8192) when maxRangeBytes is over 1048576",
        ),
        case(
            "maxRangeBytes above 1 GiB",
            json!({"readService": {"limits": {"maxRangeBytes": 2147483648_u64, "maxResponseBytes": 4294983680_u64}}}),
            "spec.readService.limits.maxRangeBytes",
            "less than or equal to 1073741824",
        ),
        case(
            "maxConnections 0",
            json!({"readService": {"limits": {"maxConnections": 0}}}),
            "spec.readService.limits.maxConnections",
            "greater than or equal to 1",
        ),
        case(
            "writeTimeoutSeconds 0",
            json!({"readService": {"limits": {"writeTimeoutSeconds": 0}}}),
            "spec.readService.limits.writeTimeoutSeconds",
            "greater than or equal to 1",
        ),
        case(
            "hostPath with a trailing slash",
            json!({"readService": {"dataDirs": [{"name": "d0", "hostPath": "/srv/storage/d0/"}]}}),
            "spec.readService.dataDirs[0].hostPath",
            "no '.', '//' or trailing '/'",
        ),
    ]
}

/// N from docs/reliability.md's row for this test, `| N invalid StorageCluster specs ... | N/N refused`.
fn documented_invalid_cases() -> usize {
    let doc = std::fs::read_to_string(repo_root().join("docs/reliability.md")).unwrap();
    let row = doc
        .lines()
        .find(|l| l.contains("invalid_storage_clusters_are_refused_naming_the_field"))
        .expect("docs/reliability.md has a row for invalid_storage_clusters_are_refused_naming_the_field");
    let n: usize = row
        .trim_start_matches(['|', ' '])
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the row does not start with the number of cases: {row}"));
    assert!(
        row.contains(&format!("{n}/{n} refused")),
        "the row does not claim {n}/{n} refused: {row}"
    );
    n
}

#[tokio::test]
async fn invalid_storage_clusters_are_refused_naming_the_field() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "invalid").await;
    let cases = invalid_cases();
    let claimed = documented_invalid_cases();
    assert_eq!(
        cases.len(),
        claimed,
        "docs/reliability.md claims {claimed} invalid specs refused; this test has {}: update one",
        cases.len()
    );
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("bad-{i}");
        let out = kubectl_stdin(
            ["apply", "-n", &ns.name, "-f", "-"],
            &storage_cluster(&name, case.spec.clone()),
        );
        if out.success() {
            failures.push(format!("{}: accepted: {}", case.what, out.stdout));
            continue;
        }
        if !(out.stderr.contains(case.field) && out.stderr.contains(case.also)) {
            failures.push(format!(
                "{}: message does not name {:?} with {:?}: {}",
                case.what, case.field, case.also, out.stderr
            ));
        }
        let get = kubectl(["get", "stc", &name, "-n", &ns.name]);
        if get.success() {
            failures.push(format!("{}: refused but stored anyway", case.what));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn unknown_fields_are_refused_under_strict_validation() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "strict").await;
    for (spec, field) in [
        (json!({"aio": {"maxEvent": 64}}), "spec.aio.maxEvent"),
        (
            json!({"readService": {"dataDirs": [{"name": "d0", "hostPath": "/d", "mode": "ro"}]}}),
            "spec.readService.dataDirs[0].mode",
        ),
        (json!({"sysctls": {}}), "spec.sysctls"),
    ] {
        let err = kubectl_stdin(
            ["apply", "-n", &ns.name, "--validate=strict", "-f", "-"],
            &storage_cluster("strict", spec),
        )
        .err();
        assert!(
            err.contains(&format!("unknown field \"{field}\"")),
            "expected `unknown field \"{field}\"`, got: {err}"
        );
    }
    // Without strict validation the server drops the unknown field instead (pruning).
    kubectl_stdin(
        ["apply", "-n", &ns.name, "--validate=false", "-f", "-"],
        &storage_cluster("pruned", json!({"aio": {"maxEvent": 64}})),
    )
    .ok();
    let got = get_json(&["stc", "pruned", "-n", &ns.name]);
    assert!(got["spec"]["aio"].get("maxEvent").is_none(), "{got}");
}

#[tokio::test]
async fn kubectl_get_shows_printer_columns() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "columns").await;

    kubectl_stdin(
        ["apply", "-n", &ns.name, "-f", "-"],
        &storage_cluster("cols", json!({})),
    )
    .ok();
    let status = json!({"status": {
        "desired": 5, "reporting": 5, "tuned": 5, "ready": 3, "ioUringSupported": 4,
        "ioUringUnsupported": 1, "upToDate": 2,
        "conditions": [{"type": "Ready", "status": "False", "reason": "NodesUnsupported",
                        "message": "1 node lacks io_uring", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }});
    kubectl_ok([
        "patch",
        "stc",
        "cols",
        "-n",
        &ns.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    let table = kubectl_ok(["get", "stc", "cols", "-n", &ns.name]);
    assert_table(
        &table,
        &[
            "NAME",
            "DESIRED",
            "READY",
            "SUPPORTED",
            "UNSUPPORTED",
            "UP-TO-DATE",
            "STATUS",
            "AGE",
        ],
        &["cols", "5", "3", "4", "1", "2", "NodesUnsupported"],
    );

    let stn = unique_name("e2e-stn");
    let node = json!({
        "apiVersion": "ringmaster.io/v1alpha1", "kind": "StorageNode",
        "metadata": {"name": stn},
        "spec": {"nodeName": stn, "cluster": format!("{}/cols", ns.name)},
    });
    kubectl_stdin(["apply", "-f", "-"], &node.to_string()).ok();
    let _cleanup = DeleteOnDrop(vec!["stn".into(), stn.clone()]);
    let status = json!({"status": {
        "kernel": "6.8.0-test",
        "ioUring": {"verdict": "unsupported", "supported": false, "reason": "EPERM", "errno": 1},
        "aio": {"required": 1048576, "current": 1048576, "aioNr": 0, "tuned": true},
        "workerMode": "pread",
        "appliedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving",
                        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }});
    kubectl_ok([
        "patch",
        "stn",
        &stn,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    let cluster = format!("{}/cols", ns.name);
    let header = [
        "NAME",
        "CLUSTER",
        "IO_URING",
        "REASON",
        "MODE",
        "AIO-MAX-NR",
        "READY",
        "GEN",
        "AGE",
    ];
    let row = [
        stn.as_str(),
        cluster.as_str(),
        "unsupported",
        "EPERM",
        "pread",
        "1048576",
        "True",
        "1",
    ];
    let table = kubectl_ok(["get", "stn", &stn]);
    assert_table(&table, &header, &row);
    assert!(
        !table.contains("KERNEL"),
        "KERNEL is a wide column:\n{table}"
    );
    let wide = kubectl_ok(["get", "stn", &stn, "-o", "wide"]);
    assert!(
        wide.contains("KERNEL") && wide.contains("6.8.0-test"),
        "{wide}"
    );

    // The status subresource is separate: a spec apply does not reset it.
    kubectl_stdin(["apply", "-f", "-"], &node.to_string()).ok();
    let got = get_json(&["stn", &stn]);
    assert_eq!(got["status"]["workerMode"], "pread", "{got}");
}

/// Splits the header and the first row on whitespace and compares them.
fn assert_table(table: &str, header: &[&str], row_prefix: &[&str]) {
    let mut lines = table.lines();
    let head: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(head, header, "header of:\n{table}");
    let row: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert!(
        row.len() == header.len(),
        "row has {} cells, header {}:\n{table}",
        row.len(),
        header.len()
    );
    assert_eq!(&row[..row_prefix.len()], row_prefix, "row of:\n{table}");
}

/// `kubectl delete <args>` when dropped (cluster-scoped objects outlive namespaces).
struct DeleteOnDrop(Vec<String>);
impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let mut a = vec![
            "delete".to_string(),
            "--ignore-not-found".into(),
            "--wait=false".into(),
        ];
        a.extend(self.0.iter().cloned());
        let _ = kubectl(a);
    }
}

#[tokio::test]
async fn status_writes_do_not_touch_spec_and_spec_writes_bump_generation() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "gen").await;
    kubectl_stdin(
        ["apply", "-n", &ns.name, "-f", "-"],
        &storage_cluster("g", json!({})),
    )
    .ok();
    let g1 = get_json(&["stc", "g", "-n", &ns.name])["metadata"]["generation"]
        .as_i64()
        .unwrap();
    kubectl_ok([
        "patch",
        "stc",
        "g",
        "-n",
        &ns.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"desired":1}}"#,
    ]);
    let after_status = get_json(&["stc", "g", "-n", &ns.name]);
    assert_eq!(
        after_status["metadata"]["generation"].as_i64(),
        Some(g1),
        "status write bumped generation"
    );
    kubectl_ok([
        "patch",
        "stc",
        "g",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"aio":{"workers":4}}}"#,
    ]);
    let g2 = wait_for_sync(Duration::from_secs(5), "generation bump", || {
        let g = get_json(&["stc", "g", "-n", &ns.name])["metadata"]["generation"]
            .as_i64()
            .unwrap();
        anyhow::ensure!(g > g1, "generation still {g}");
        Ok(g)
    });
    assert_eq!(g2, g1 + 1);
    // A status in the main resource's body is ignored.
    kubectl_ok([
        "patch",
        "stc",
        "g",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"status":{"desired":9}}"#,
    ]);
    assert_eq!(
        get_json(&["stc", "g", "-n", &ns.name])["status"]["desired"],
        1
    );
}
