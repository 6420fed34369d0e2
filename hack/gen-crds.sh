#!/usr/bin/env bash
# Regenerates crds/ringmaster.io.yaml from the Rust types in api/, and the Helm chart's copy
# (charts/ringmaster/files/crds/, templated so `helm upgrade` carries schema changes).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p ringmaster-api --bin crdgen > crds/ringmaster.io.yaml
cp crds/ringmaster.io.yaml charts/ringmaster/files/crds/ringmaster.io.yaml
# The chart ships the operator's RBAC files as they are (e2e chart_lint checks the copy).
cp operator/rbac/*.yaml charts/ringmaster/files/rbac/
echo "wrote crds/ringmaster.io.yaml and charts/ringmaster/files/crds/ringmaster.io.yaml"
