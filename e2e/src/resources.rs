//! Installing the Ringmaster CRDs.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};

use crate::env::repo_root;
use crate::kubectl::kubectl;
use crate::wait::wait_for;

/// The CRDs in crds/ringmaster.io.yaml.
pub const CRD_NAMES: [&str; 2] = [
    "storageclusters.ringmaster.io",
    "storagenodes.ringmaster.io",
];

/// Applies crds/ringmaster.io.yaml (server-side, so re-applying from other tests is
/// harmless) and waits until every CRD is Established.
pub async fn install_crds(client: &Client) {
    let file = repo_root().join("crds/ringmaster.io.yaml");
    let file = file.to_str().expect("utf-8 path");
    kubectl([
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=ringmaster-e2e",
        "-f",
        file,
    ])
    .ok();
    for name in CRD_NAMES {
        wait_crd_established(client, name).await;
    }
}

/// Waits until the CRD `name` has condition Established=True.
pub async fn wait_crd_established(client: &Client, name: &str) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for(
        Duration::from_secs(30),
        &format!("CRD {name} Established"),
        || async {
            let crd = api.get(name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            anyhow::ensure!(established, "not Established yet");
            Ok(())
        },
    )
    .await
}
