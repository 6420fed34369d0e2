//! Prints the Ringmaster CRDs as YAML: `cargo run -p ringmaster-api --bin crdgen > crds/ringmaster.io.yaml`.

fn main() {
    for crd in ringmaster_api::crds() {
        print!(
            "---\n{}",
            serde_yaml::to_string(&crd).expect("CRD serializes")
        );
    }
}
