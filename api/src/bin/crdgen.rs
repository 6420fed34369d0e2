//! Prints the Ringmaster CRDs as YAML: `cargo run -p ringmaster-api --bin crdgen > crds/ringmaster.io.yaml`.

use kube::CustomResourceExt;
use ringmaster_api::{StorageCluster, StorageNode};

fn main() {
    for crd in [StorageCluster::crd(), StorageNode::crd()] {
        print!(
            "---\n{}",
            serde_yaml::to_string(&crd).expect("CRD serializes")
        );
    }
}
