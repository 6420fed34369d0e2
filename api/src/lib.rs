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

/// API group of every Ringmaster resource.
pub const GROUP: &str = "ringmaster.io";
/// API version of every Ringmaster resource.
pub const VERSION: &str = "v1alpha1";
