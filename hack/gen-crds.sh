#!/usr/bin/env bash
# Regenerates crds/ringmaster.io.yaml from the Rust types in api/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p ringmaster-api --bin crdgen > crds/ringmaster.io.yaml
cp crds/ringmaster.io.yaml charts/ringmaster/crds/ringmaster.io.yaml 2>/dev/null || true
echo "wrote crds/ringmaster.io.yaml"
