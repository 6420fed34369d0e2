//! Harness for end-to-end tests: they need `KUBECONFIG` pointing at the control plane
//! that `hack/cluster.sh up` started, and fail (never skip) without it.
