//! The chart's alerts against a real Prometheus (Debian's `prometheus`, listening on
//! 127.0.0.1, its own temp dir and free port, static loopback targets only): it scrapes a
//! real operator and a real agent on a kwok node and evaluates the rules the chart ships
//! (`hack/render-rules.sh`, short `for:` set through chart values). An io_uring verdict that
//! flips fires `RingmasterIoUringVerdictFlipped`; `fs.aio-max-nr` lowered for real (restored
//! afterwards) fires `RingmasterAioHeadroomExhausted`. Every metric the rules and the Grafana
//! dashboard use is in the real scrapes, and every dashboard query runs.
//!
//! Changes the host's `fs.aio-max-nr`: run under `flock /tmp/ringmaster-host.lock`.

use crate::agent_support;
use crate::operator_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agent_support::*;
use ringmaster_e2e::{repo_root, spawn_program, wait_for, Process, KWOK_TAINT_KEY};
use serde_json::{json, Value};

/// Chart values for the test: evaluate every second and fire at once, so the test waits
/// seconds, not minutes. The rules themselves are the shipped ones.
const RULE_VALUES: &[&str] = &[
    "monitoring.prometheusRule.interval=1s",
    "monitoring.prometheusRule.alerts.RingmasterIoUringVerdictFlipped.for=0s",
    "monitoring.prometheusRule.alerts.RingmasterIoUringVerdictFlipped.lookback=10m",
    "monitoring.prometheusRule.alerts.RingmasterAioHeadroomExhausted.for=0s",
    "monitoring.prometheusRule.alerts.RingmasterAioHeadroomLow.for=0s",
];

/// `aio.workers × aio.maxEvents` of the test's StorageCluster.
const PROCESS_EVENTS: u64 = 4 * 512;

/// The rule file the chart renders with `values` (`hack/render-rules.sh --set ...`).
fn render_rules(values: &[&str]) -> String {
    let mut cmd = Command::new(repo_root().join("hack/render-rules.sh"));
    for v in values {
        cmd.args(["--set", v]);
    }
    let out = cmd.output().expect(
        "running hack/render-rules.sh (needs helm on PATH: eval \"$(hack/cluster.sh up)\")",
    );
    assert!(
        out.status.success(),
        "hack/render-rules.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `ringmaster_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ringmaster_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Every series name a Prometheus text or OpenMetrics exposition offers: sample names,
/// and for each `# TYPE` the names its samples take (`_total`, `_bucket`, ...), so a
/// family with no sample yet (a labelled counter nothing has incremented) still counts.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut it = t.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus of the test's own: loopback listener, temp dir, static loopback targets,
/// no Alertmanager, no remote write. Stopped on drop.
struct Prometheus {
    _process: Process,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, &str)], rules: &str) -> Self {
        let version = Command::new("prometheus").arg("--version").output();
        assert!(
            version.is_ok_and(|o| o.status.success()),
            "prometheus is not installed: hack/deps.sh installs Debian's prometheus package"
        );
        let dir = TempDir::new("prometheus");
        let rules_file = dir.path().join("rules.yaml");
        std::fs::write(&rules_file, rules).unwrap();
        let scrape_configs: Vec<Value> = targets
            .iter()
            .map(|(job, addr)| {
                assert!(
                    addr.starts_with("127.0.0.1:"),
                    "the test's Prometheus scrapes loopback only, not {addr}"
                );
                json!({"job_name": job, "static_configs": [{"targets": [addr]}]})
            })
            .collect();
        // JSON is YAML.
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules_file],
            "scrape_configs": scrape_configs,
        });
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let port = operator_support::free_port();
        let data: PathBuf = dir.path().join("data");
        let process = spawn_program(
            Path::new("prometheus"),
            &[
                &format!("--config.file={}", config_file.display()),
                &format!("--storage.tsdb.path={}", data.display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ],
            &[],
        );
        Prometheus {
            _process: process,
            port,
            _dir: dir,
        }
    }

    /// GET an API path; the `data` of a successful answer.
    fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (code, body) = operator_support::http_get(self.port, path)?;
        anyhow::ensure!(code == 200, "GET {path}: {code} {body}");
        let v: Value = serde_json::from_str(&body)?;
        anyhow::ensure!(v["status"] == "success", "GET {path}: {body}");
        Ok(v["data"].clone())
    }

    /// An instant query's result vector.
    fn query(&self, q: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(q)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Alerts named `name` that are firing now.
    fn firing(&self, name: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api("/api/v1/alerts")?;
        Ok(data["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .collect())
    }
}

/// Waits until `name` fires for `node` of `cluster`; returns the alert.
async fn wait_firing(prom: &Prometheus, name: &str, cluster: &str, node: &str) -> Value {
    wait_for(
        Duration::from_secs(60),
        &format!("{name} firing for node {node}"),
        || async {
            let alerts = prom.firing(name)?;
            alerts
                .into_iter()
                .find(|a| a["labels"]["node"] == node && a["labels"]["cluster"] == cluster)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "not firing for {node}; all alerts: {:?}",
                        prom.api("/api/v1/alerts")
                    )
                })
        },
    )
    .await
}

fn assert_runbook(alert: &Value, anchor: &str) {
    let url = alert["annotations"]["runbook_url"].as_str().unwrap_or("");
    assert!(
        url.ends_with(&format!("docs/monitoring.md#{anchor}")),
        "runbook_url {url:?}"
    );
    let doc = std::fs::read_to_string(repo_root().join("docs/monitoring.md")).unwrap();
    let heading = alert["labels"]["alertname"].as_str().unwrap();
    assert_eq!(heading.to_lowercase(), anchor);
    assert!(
        doc.contains(&format!("\n### {heading}\n")),
        "docs/monitoring.md has no section {heading}"
    );
}

#[tokio::test]
async fn prometheus_fires_the_charts_alerts_on_a_verdict_flip_and_low_aio_headroom() {
    let guard = SysctlGuard::take();
    let mut f = Fleet::create("monitoring", &[Uring::Works]).await;
    let node = f.agents[0].node.clone();
    let ns = f.ns().to_string();
    let cluster = format!("{ns}/{CLUSTER}");
    let id = operator_support::OperatorIdentity::create(&f.ns);
    // The fleet's data dir lies below the e2e scratch dir: the admin allows that root.
    let root = ringmaster_e2e::scratch_dir();
    let op = operator_support::start_operator(
        &id,
        "monitoring-op",
        &["--allowed-data-dir-root", root.to_str().unwrap()],
    );

    let sc = f
        .create_cluster_spec(json!({
            "nodeSelector": {FLEET_LABEL: &ns},
            "tolerations": [{"key": KWOK_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "aio": {"maxEvents": 512, "workers": 4},
            "sysctl": {"aioMaxNr": 65536},
            "readService": {"dataDirs": [{"name": "d0", "hostPath": f.data_dir.path()}]},
        }))
        .await;
    let gen = sc.metadata.generation.unwrap();
    f.start_all();
    f.wait_applied(&node, gen).await;
    let agent_addr = f.agents[0].agent_addr().await;
    let op_addr = format!("127.0.0.1:{}", op.port);

    let rules = render_rules(RULE_VALUES);
    let prom = Prometheus::start(
        &[
            ("ringmaster-operator", &op_addr),
            ("ringmaster-agent", &agent_addr),
        ],
        &rules,
    );

    // Only the two loopback targets, both up.
    wait_for(T, "both targets scraped and up", || async {
        let targets = prom.api("/api/v1/targets")?;
        let active = targets["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        anyhow::ensure!(active.len() == 2, "targets {active:?}");
        for t in &active {
            let url = t["scrapeUrl"].as_str().unwrap_or("");
            assert!(
                url.starts_with("http://127.0.0.1:"),
                "non-loopback target {url}"
            );
            anyhow::ensure!(t["health"] == "up", "target {t}");
        }
        Ok(())
    })
    .await;

    // Every metric the rules and the dashboard name is exported by the operator or agent.
    let mut exported = exported_names(&op.metrics());
    exported.extend(exported_names(&http_get(&agent_addr, "/metrics").1));
    let rule_file: Value = serde_yaml::from_str(&rules).unwrap();
    let rule_exprs: Vec<String> = rule_file["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rule_exprs.len(), 11, "{rules}");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("charts/ringmaster/dashboards/ringmaster.json"))
            .expect("the dashboard"),
    )
    .expect("the dashboard is valid JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    let dash_exprs: Vec<(String, Vec<String>)> = panels
        .iter()
        .filter(|p| p["type"] != "row")
        .map(|p| {
            let exprs = p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string())
                .collect();
            (p["title"].as_str().unwrap().to_string(), exprs)
        })
        .collect();
    let var_query = dashboard["templating"]["list"][1]["definition"]
        .as_str()
        .unwrap()
        .to_string();
    let mut used = BTreeSet::new();
    for e in rule_exprs
        .iter()
        .chain(dash_exprs.iter().flat_map(|(_, e)| e))
        .chain([&var_query])
    {
        used.extend(metric_names(e));
    }
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "rules or dashboard use metrics nobody exports: {missing:?}\nexported: {exported:?}"
    );
    eprintln!(
        "{} metric names used by {} rules and {} dashboard panels, all exported",
        used.len(),
        rule_exprs.len(),
        dash_exprs.len()
    );

    // 1. The verdict flips: the reader is restarted under a seccomp filter that denies
    // io_uring (what a container runtime upgrade does to RuntimeDefault).
    let supported =
        format!("ringmaster_agent_io_uring_verdict{{node=\"{node}\",verdict=\"supported\"}} == 1");
    wait_for(T, "Prometheus has the supported verdict", || async {
        anyhow::ensure!(!prom.query(&supported)?.is_empty(), "no sample yet");
        Ok(())
    })
    .await;
    assert!(
        prom.firing("RingmasterIoUringVerdictFlipped")
            .unwrap()
            .is_empty(),
        "fires before any flip"
    );
    {
        let a = f.agent(&node);
        a.reader.take();
        a.uring = Uring::Fails("EPERM");
        a.start_reader();
    }
    let alert = wait_firing(&prom, "RingmasterIoUringVerdictFlipped", &cluster, &node).await;
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_runbook(&alert, "ringmasteriouringverdictflipped");
    eprintln!("RingmasterIoUringVerdictFlipped: {alert}");

    // 2. Headroom: Verify mode so the agent leaves the sysctl as the test sets it; then
    // fs.aio-max-nr lowered to fs.aio-nr + half a storage process, for real.
    let gen = f
        .patch_cluster(json!({"sysctl": {"mode": "Verify"}}))
        .await
        .metadata
        .generation
        .unwrap();
    f.wait_applied(&node, gen).await;
    assert!(
        prom.firing("RingmasterAioHeadroomExhausted")
            .unwrap()
            .is_empty(),
        "fires before fs.aio-max-nr is lowered"
    );
    let before = read_aio_max_nr();
    let lowered = read_aio_nr() + PROCESS_EVENTS / 2;
    assert!(
        lowered < before,
        "fs.aio-max-nr {before} already at or below {lowered}"
    );
    write_aio_max_nr(lowered);
    let fired = async {
        let alert = wait_firing(&prom, "RingmasterAioHeadroomExhausted", &cluster, &node).await;
        let scraped = prom
            .query(&format!("ringmaster_agent_aio_max_nr{{node=\"{node}\"}}"))
            .unwrap();
        (alert, scraped)
    }
    .await;
    // Restore at once: other processes on this host need their libaio events.
    write_aio_max_nr(before);
    let (alert, scraped) = fired;
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_runbook(&alert, "ringmasteraioheadroomexhausted");
    let free: f64 = alert["value"].as_str().unwrap().parse().unwrap();
    assert!(free < PROCESS_EVENTS as f64, "{alert}");
    assert_eq!(
        scraped[0]["value"][1].as_str().unwrap().parse::<u64>().ok(),
        Some(lowered),
        "the agent reports fs.aio-max-nr as it is now: {scraped:?}"
    );
    eprintln!("RingmasterAioHeadroomExhausted: {alert}");
    wait_for(
        T,
        "RingmasterAioHeadroomExhausted resolved once restored",
        || async {
            let a = prom.firing("RingmasterAioHeadroomExhausted")?;
            anyhow::ensure!(a.is_empty(), "still firing: {a:?}");
            Ok(())
        },
    )
    .await;

    // 3. Every dashboard query runs on the real Prometheus, and every panel shows data.
    for (title, exprs) in &dash_exprs {
        let mut any = false;
        for e in exprs {
            let q = e.replace("$cluster", ".*");
            let r = prom
                .query(&q)
                .unwrap_or_else(|err| panic!("panel {title:?}: query {q} fails: {err}"));
            any |= !r.is_empty();
        }
        assert!(any, "panel {title:?} shows no data: {exprs:?}");
    }
    drop(prom);
    drop(guard);
}
