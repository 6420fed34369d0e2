//! Ringmaster's host core: everything that touches rings and the host, nothing that knows
//! Kubernetes (no kube, no k8s-openapi, no async runtime; `hack/test.sh` checks the dependency
//! tree so it stays that way).
//!
//! - [`host`]  facts about this host (kernel, sysctls, seccomp mode, rlimits, capabilities) and
//!   sysctl reads/writes
//! - [`probe`] the io_uring and libaio probes with errno classification (the verdict)
//! - [`io`]    the read workers: io_uring pool (one ring per thread), pread pool, page-cache
//!   fast path

pub mod host;
pub mod io;
pub mod probe;
