#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what tests need (cached), checks
# formatting, lints, CRD freshness, runs unit and real-kernel tests, then starts a local
# control plane and runs the end-to-end tests against it. Exit non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${RINGMASTER_CACHE:-$HOME/.cache/ringmaster}/target}
export CARGO_TERM_COLOR=never
step() { echo; echo "=== $* ($(date +%T))"; }

step deps
hack/deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "host core and read service know no Kubernetes (hack/check-boundaries.sh)"
hack/check-boundaries.sh

step "CRDs up to date (cargo run -p ringmaster-api --bin crdgen)"
cargo run -q --locked -p ringmaster-api --bin crdgen > "$CARGO_TARGET_DIR/crds.yaml"
if ! diff -u crds/ringmaster.io.yaml "$CARGO_TARGET_DIR/crds.yaml"; then
  echo "crds/ringmaster.io.yaml is stale: run 'hack/gen-crds.sh' and commit" >&2; exit 1
fi
if ! diff -u crds/ringmaster.io.yaml charts/ringmaster/files/crds/ringmaster.io.yaml; then
  echo "charts/ringmaster/files/crds/ringmaster.io.yaml is stale: run 'hack/gen-crds.sh' and commit" >&2; exit 1
fi

step "alerting rules: promtool on the rules the chart renders (hack/test-rules.sh)"
hack/test-rules.sh

step "unit and real-kernel tests"
cargo test --workspace --locked --exclude ringmaster-e2e

step "fuzz the read service parsers (hack/fuzz.sh, bounded)"
FUZZ_SECONDS=${FUZZ_SECONDS:-20} hack/fuzz.sh

step "build binaries for the end-to-end tests"
cargo build --locked --workspace --bins
cargo test --locked -p ringmaster-e2e --no-run

step "OCI images without a container engine (hack/images.sh)"
RINGMASTER_BIN_DIR="$CARGO_TARGET_DIR/debug" hack/images.sh

# Three e2e stages, each on clusters of its own: the kwok tests (fleets, scale, failure modes on
# simulated nodes) never see the real node, so their agent DaemonSets cannot land on it and
# change their counts or this host's sysctls; the real-node tests share one real node; the
# tests that bring up (and tear down) a real node of their own run last, alone. All are in one
# binary (e2e/tests/main.rs); the stages pick by name: every real-node test is named
# `real_node_*` (own_real_node::* too), and `real_node::real_node_` is not a substring of
# `own_real_node::own_real_node_*`.
E2E_ENV=(RINGMASTER_BIN_DIR="$CARGO_TARGET_DIR/debug" RINGMASTER_E2E_LOG_DIR="$CARGO_TARGET_DIR/e2e-logs")
# A cluster of our own, whatever the caller's shell has set.
unset RINGMASTER_CLUSTER_DIR KUBECONFIG RINGMASTER_REAL_NODE
# On failure keep the control plane's logs (the cluster dir itself is removed).
cluster_down() {
  local rc=$?
  if [[ -n ${RINGMASTER_CLUSTER_DIR:-} ]]; then
    if ((rc != 0)) && [[ -d $RINGMASTER_CLUSTER_DIR/logs ]]; then
      rm -rf "$CARGO_TARGET_DIR/cluster-logs" && cp -r "$RINGMASTER_CLUSTER_DIR/logs" "$CARGO_TARGET_DIR/cluster-logs"
      echo "control-plane logs: $CARGO_TARGET_DIR/cluster-logs" >&2
    fi
    hack/cluster.sh down || true
    unset RINGMASTER_CLUSTER_DIR KUBECONFIG RINGMASTER_REAL_NODE
  fi
  return "$rc"
}
trap 'cluster_down; echo "test.sh: exit $? after $((SECONDS / 60))m$((SECONDS % 60))s" >&2' EXIT

step "control plane up (hack/cluster.sh up)"
eval "$(hack/cluster.sh up)"

step "end-to-end tests on kwok nodes"
env "${E2E_ENV[@]}" cargo test --locked -p ringmaster-e2e --test e2e -- --test-threads=1 --skip real_node_
cluster_down

step "control plane up with this host as a real node (hack/cluster.sh up --real-node)"
t0=$SECONDS
eval "$(RINGMASTER_IMAGES_DIR="$CARGO_TARGET_DIR/images" hack/cluster.sh up --real-node)"
echo "up --real-node took $((SECONDS - t0))s"

step "end-to-end tests on the real node"
env "${E2E_ENV[@]}" cargo test --locked -p ringmaster-e2e --test e2e -- --test-threads=1 real_node::real_node_
cluster_down

step "end-to-end tests that bring up a real node of their own (demo, lifecycle)"
env "${E2E_ENV[@]}" RINGMASTER_IMAGES_DIR="$CARGO_TARGET_DIR/images" \
  cargo test --locked -p ringmaster-e2e --test e2e -- --test-threads=1 demo:: own_real_node::

step done
