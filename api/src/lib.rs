//! Ringmaster API: the `StorageCluster` and `StorageNode` custom resources, the label,
//! annotation, taint and finalizer keys, and the pure sizing rules both binaries share.
//!
//! This crate does no I/O: it is types, constants and arithmetic, so the operator and
//! the agent agree on them and `crdgen` can print the CRDs.

pub mod cluster;
pub mod keys;
pub mod limits;
pub mod node;
pub mod reasons;
pub mod sizing;

pub use cluster::*;
pub use node::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// API group of every Ringmaster resource.
pub const GROUP: &str = "ringmaster.io";
/// API version of every Ringmaster resource.
pub const VERSION: &str = "v1alpha1";

/// The CRDs as they are applied: the derived schemas, except that the formats schemars gives
/// Rust's unsigned integers (`uint8` … `uint64`), which the API server does not know and warns
/// about whenever a CRD is created, become `int32`/`int64`, with a minimum of 0 and, where the
/// field has none, the type's maximum, so the server refuses what the agent and operator could
/// not read.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt;
    [StorageCluster::crd(), StorageNode::crd()]
        .into_iter()
        .map(|crd| {
            let mut v = serde_json::to_value(&crd).expect("a CRD serializes");
            kubernetes_integer_formats(&mut v);
            serde_json::from_value(v).expect("a CRD with other integer formats parses")
        })
        .collect()
}

/// Rewrites unsigned integer formats in every schema below `v` (see [`crds`]).
fn kubernetes_integer_formats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            let bounds = match m.get("format").and_then(|f| f.as_str()) {
                Some("uint8") => Some(("int32", Some(u8::MAX as u64))),
                Some("uint16") => Some(("int32", Some(u16::MAX as u64))),
                Some("uint32") => Some(("int64", Some(u32::MAX as u64))),
                // int64 is the API server's widest integer: it bounds these already.
                Some("uint64") => Some(("int64", None)),
                _ => None,
            };
            if let Some((format, max)) = bounds {
                m.insert("format".into(), format.into());
                let min = m.get("minimum").and_then(|x| x.as_f64());
                if min.is_none_or(|x| x < 0.0) {
                    m.insert("minimum".into(), 0.0.into());
                }
                if let (Some(max), None) = (max, m.get("maximum")) {
                    m.insert("maximum".into(), (max as f64).into());
                }
            }
            m.values_mut().for_each(kubernetes_integer_formats);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(kubernetes_integer_formats),
        _ => {}
    }
}

#[cfg(test)]
mod crd_tests {
    use super::*;

    /// Every integer format in the CRDs is one the API server knows.
    #[test]
    fn crds_use_only_integer_formats_the_api_server_knows() {
        let text = serde_json::to_string(&crds()).unwrap();
        for unknown in ["uint8", "uint16", "uint32", "uint64"] {
            assert!(
                !text.contains(&format!("\"{unknown}\"")),
                "format {unknown} is still in the CRDs"
            );
        }
        let v: serde_json::Value = serde_json::to_value(crds()).unwrap();
        let spec = &v[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        // A bounded spec field keeps its own bounds.
        let max_events = &spec["aio"]["properties"]["maxEvents"];
        assert_eq!(max_events["format"], "int64");
        assert_eq!(max_events["minimum"], 1.0);
        assert_eq!(max_events["maximum"], 32768.0);
        assert_eq!(spec["readService"]["properties"]["port"]["format"], "int32");
        // A status field without bounds gets its type's.
        let ring = &v[1]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["status"]["properties"]["ioUring"]["properties"]["ringEntries"];
        assert_eq!(ring["format"], "int64");
        assert_eq!(ring["minimum"], 0.0);
        assert_eq!(ring["maximum"], u32::MAX as f64);
    }
}
