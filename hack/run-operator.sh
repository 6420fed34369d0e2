#!/usr/bin/env bash
# Runs ringmaster-operator as a local process against the cluster in $KUBECONFIG, under its
# own ServiceAccount token and the RBAC from operator/rbac/ (the files the chart ships), the
# way the e2e tests do. Extra arguments go to the operator.
#
#   eval "$(hack/cluster.sh up)"
#   hack/run-operator.sh --log-format text            # Ctrl-C stops it
#
# Env: RINGMASTER_OPERATOR_NAMESPACE (default ringmaster-system: its ServiceAccount and
# Lease), RINGMASTER_OPERATOR_BIN (default target/debug/ringmaster-operator, built if missing),
# RINGMASTER_OPERATOR_METRICS_ADDR (default 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KUBECONFIG:?KUBECONFIG is not set: run eval \"\$(hack/cluster.sh up)\" first}"
NS=${RINGMASTER_OPERATOR_NAMESPACE:-ringmaster-system}
BIN=${RINGMASTER_OPERATOR_BIN:-${CARGO_TARGET_DIR:-target}/debug/ringmaster-operator}
[[ -x $BIN ]] || cargo build -q -p ringmaster-operator

apply() { kubectl apply --server-side --force-conflicts --field-manager=ringmaster-dev -f - >/dev/null; }
kubectl apply --server-side --force-conflicts --field-manager=ringmaster-dev -f crds/ -f operator/rbac/ >/dev/null
kubectl create namespace "$NS" --dry-run=client -o yaml | apply
kubectl -n "$NS" create serviceaccount ringmaster-operator --dry-run=client -o yaml | apply
kubectl create clusterrolebinding ringmaster-operator --clusterrole=ringmaster-operator \
  --serviceaccount="$NS:ringmaster-operator" --dry-run=client -o yaml | apply
kubectl -n "$NS" create rolebinding ringmaster-operator-leader-election \
  --clusterrole=ringmaster-operator-leader-election \
  --serviceaccount="$NS:ringmaster-operator" --dry-run=client -o yaml | apply

TOKEN=$(kubectl -n "$NS" create token ringmaster-operator --duration 24h)
SERVER=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
CA=$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
KC=$(mktemp --suffix .kubeconfig)
trap 'rm -f "$KC"' EXIT
cat > "$KC" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "$SERVER", certificate-authority-data: "$CA"}}]
users: [{name: ringmaster-operator, user: {token: "$TOKEN"}}]
contexts: [{name: c, context: {cluster: c, user: ringmaster-operator}}]
current-context: c
KUBECONFIG
echo "run-operator: as system:serviceaccount:$NS:ringmaster-operator on $SERVER" >&2
KUBECONFIG=$KC "$BIN" --lease-namespace "$NS" --metrics-addr "${RINGMASTER_OPERATOR_METRICS_ADDR:-127.0.0.1:8080}" "$@"
