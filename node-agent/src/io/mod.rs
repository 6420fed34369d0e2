//! The read workers: an io_uring pool (one ring per thread), a pread pool with the same
//! interface, and a page-cache fast path. Knows nothing of Kubernetes.
