//! Load driver for hack/bench-operator.sh (not a test): creates kwok nodes and writes
//! StorageNode reports the way N agents would, as fast as the API server takes them, and
//! prints how long the writes took (the "bare client" time the operator is compared with).
//!
//!   bench_load nodes  --count N --pool P
//!   bench_load report --count N --pool P --namespace NS --cluster C --generation G
//!   bench_load wait   --namespace NS --cluster C --count N --generation G

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use ringmaster_api::{keys, StorageCluster, StorageNode};
use serde_json::json;

const CONCURRENCY: usize = 32;

fn arg(args: &[String], name: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("missing {name}"))
}

fn node_name(pool: &str, i: usize) -> String {
    format!("{pool}-{i:04}")
}

fn cond(t: &str) -> Condition {
    Condition {
        type_: t.into(),
        status: "True".into(),
        reason: "Bench".into(),
        message: "written by bench_load".into(),
        observed_generation: None,
        last_transition_time: Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap()),
    }
}

/// Wall-clock seconds, to line the driver up with the operator's log.
fn unix_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let client = Client::try_default().await?;
    let count: usize = arg(&args, "--count").parse()?;
    match args.get(1).map(String::as_str) {
        Some("nodes") => {
            let pool = arg(&args, "--pool");
            let api: Api<Node> = Api::all(client);
            let t = Instant::now();
            stream::iter(0..count)
                .map(|i| {
                    let api = api.clone();
                    let name = node_name(&pool, i);
                    let pool = pool.clone();
                    async move {
                        let node: Node = serde_json::from_value(json!({
                            "metadata": {"name": name, "labels": {"ringmaster-bench/pool": pool, "type": "kwok"},
                                         "annotations": {"kwok.x-k8s.io/node": "fake"}},
                            "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
                        }))
                        .unwrap();
                        match api.create(&PostParams::default(), &node).await {
                            Ok(_) => Ok(()),
                            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            println!("nodes: {count} in {:.2}s", t.elapsed().as_secs_f64());
        }
        Some("report") => {
            let pool = arg(&args, "--pool");
            let ns = arg(&args, "--namespace");
            let cluster = arg(&args, "--cluster");
            let generation: i64 = arg(&args, "--generation").parse()?;
            let api: Api<StorageNode> = Api::all(client);
            let pp = PatchParams::apply(keys::MANAGER_AGENT).force();
            let t = Instant::now();
            // One status write per node (the StorageNode object itself is created once,
            // before the timed part, when it does not exist yet).
            stream::iter(0..count)
                .map(|i| {
                    let (api, pp) = (api.clone(), pp.clone());
                    let (name, ns, cluster) = (node_name(&pool, i), ns.clone(), cluster.clone());
                    async move {
                        if generation == 1 {
                            let obj = json!({
                                "apiVersion": "ringmaster.io/v1alpha1", "kind": "StorageNode",
                                "metadata": {"name": name, "labels": {
                                    keys::LABEL_STORAGENODE_CLUSTER_NAMESPACE: ns,
                                    keys::LABEL_STORAGENODE_CLUSTER_NAME: cluster}},
                                "spec": {"nodeName": name, "cluster": format!("{ns}/{cluster}")},
                            });
                            api.patch(&name, &pp, &Patch::Apply(&obj)).await?;
                        }
                        let status = json!({
                            "apiVersion": "ringmaster.io/v1alpha1", "kind": "StorageNode",
                            "status": {
                                "kernel": "6.8.0-bench",
                                "ioUring": {"verdict": "supported", "supported": true, "requestedEntries": 512, "ringEntries": 512},
                                "appliedGeneration": generation,
                                "conditions": [cond("Tuned"), cond("IoUringSupported"), cond("Ready")],
                            },
                        });
                        api.patch_status(&name, &pp, &Patch::Apply(&status)).await?;
                        Ok::<_, kube::Error>(())
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            println!(
                "writes: {} in {:.3}s",
                if generation == 1 { 2 * count } else { count },
                t.elapsed().as_secs_f64()
            );
            println!("last write done at {}", unix_now());
        }
        Some("wait") => {
            let ns = arg(&args, "--namespace");
            let cluster = arg(&args, "--cluster");
            let generation: i64 = arg(&args, "--generation").parse()?;
            let api: Api<StorageCluster> = Api::namespaced(client, &ns);
            let t = Instant::now();
            loop {
                let sc = api.get(&cluster).await?;
                let s = sc.status.unwrap_or_default();
                let n = count as i32;
                if s.observed_generation == Some(generation)
                    && s.desired == n
                    && s.reporting == n
                    && s.ready == n
                    && s.up_to_date == n
                {
                    println!("converged after {:.3}s", t.elapsed().as_secs_f64());
                    println!("converged at {}", unix_now());
                    return Ok(());
                }
                anyhow::ensure!(
                    t.elapsed() < Duration::from_secs(900),
                    "not converged: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        _ => anyhow::bail!("usage: bench_load nodes|report|wait --count N ..."),
    }
    Ok(())
}
