//! A fresh namespace per test, deleted when the test ends.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::env::unique_name;
use crate::kubectl::kubectl;
use crate::wait::wait_for;

/// A namespace named `e2e-<prefix>-xxxxxx`, deleted on Drop (without waiting; set
/// `RINGMASTER_E2E_KEEP=1` to keep it for debugging).
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates it and waits for its `default` ServiceAccount (pods need it).
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = unique_name(&format!("e2e-{prefix}"));
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("ringmaster.io/e2e".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for(
            Duration::from_secs(30),
            &format!("ServiceAccount {name}/default (made by kube-controller-manager)"),
            || async { Ok(sas.get("default").await?) },
        )
        .await;
        TestNamespace { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("RINGMASTER_E2E_KEEP").is_some() {
            eprintln!("keeping namespace {} (RINGMASTER_E2E_KEEP)", self.name);
            return;
        }
        let out = kubectl(["delete", "namespace", &self.name, "--wait=false"]);
        if !out.success() {
            eprintln!("deleting namespace {}: {}", self.name, out.stderr);
        }
    }
}
