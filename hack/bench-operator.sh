#!/usr/bin/env bash
# Operator benchmark (not a test): N kwok nodes (default 1000) whose StorageNode reports are
# written by a load driver (operator/examples/bench_load.rs) as fast as the API server takes
# them. For a StorageCluster's creation and for a spec change it prints the time until the
# operator's status is converged (observedGeneration current, desired = reporting = ready =
# upToDate = N) against the time the driver, a bare client, needed for the same writes, as a
# ratio (target <= 1.5), the operator's API writes, and its peak RSS (target <= 64 MiB).
#
#   hack/bench-operator.sh [N]        # starts (and stops) its own control plane
# Env: BENCH_PROFILE=release|debug (default release: the operator as shipped);
# BENCH_BIN_DIR=DIR: take ringmaster-operator and bench_load from DIR instead of building
# (to compare two commits back to back on one machine); the operator's log is kept as
# $BENCH_LOG (default $TMPDIR/bench-operator-N.log); BENCH_STEADY=0 skips the wait for the
# DaemonSet rollout and the steady window (minutes at N=1000 on a busy machine).
# Above 2000 nodes the simulated fleet's heartbeat is slowed so that two cores can hold it
# (kwok renews 4 Leases at a time; at a kubelet's 40 s Lease, every 10 s, 5000 nodes need 500
# renewals a second and fall behind): Lease 400 s (renewed every 100 s) and the node lifecycle
# controller's grace 5 min. BENCH_KWOK_LEASE_SECONDS and BENCH_NODE_MONITOR_GRACE override.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
PROFILE=${BENCH_PROFILE:-release}
NS=bench
POOL=bench
log() { echo "bench-operator: $*" >&2; }

if [[ -n ${BENCH_BIN_DIR:-} ]]; then
  OP_BIN=$(realpath "$BENCH_BIN_DIR/ringmaster-operator") LOAD=$BENCH_BIN_DIR/bench_load
else
  if [[ $PROFILE == release ]]; then FLAG=--release; else FLAG=; fi
  cargo build -q $FLAG -p ringmaster-operator --bin ringmaster-operator --example bench_load
  TARGET=${CARGO_TARGET_DIR:-target}/$PROFILE
  OP_BIN=$(realpath "$TARGET/ringmaster-operator") LOAD=$TARGET/examples/bench_load
fi
BENCH_LOG=${BENCH_LOG:-${TMPDIR:-/tmp}/bench-operator-$N.log}
log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

unset RINGMASTER_CLUSTER_DIR
if ((N > 2000)); then LEASE_DEFAULT=400 GRACE_DEFAULT=5m; else LEASE_DEFAULT=40 GRACE_DEFAULT=; fi
export RINGMASTER_KWOK_LEASE_SECONDS=${BENCH_KWOK_LEASE_SECONDS:-$LEASE_DEFAULT}
export RINGMASTER_NODE_MONITOR_GRACE=${BENCH_NODE_MONITOR_GRACE:-$GRACE_DEFAULT}
log "kwok Lease ${RINGMASTER_KWOK_LEASE_SECONDS}s, node monitor grace ${RINGMASTER_NODE_MONITOR_GRACE:-default}"
eval "$(hack/cluster.sh up)"
OP_PID=
cleanup() {
  if [[ -n $OP_PID ]]; then kill "$OP_PID" 2>/dev/null || true; fi
  cp "$RINGMASTER_CLUSTER_DIR/logs/operator.log" "$BENCH_LOG" 2>/dev/null || true
  hack/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

kubectl apply --server-side -f crds/ >/dev/null
kubectl create namespace $NS >/dev/null
log "creating $N kwok nodes"
"$LOAD" nodes --count "$N" --pool $POOL
# Wait by polling the nodes' Ready states (not `kubectl wait`: it waits on one node after the
# other, minutes at 5,000 nodes). Where a fleet too big for the machine breaks shows here: the
# states are logged every 30 s.
ready_states() {
  kubectl get nodes -l ringmaster-bench/pool=$POOL --no-headers \
    -o custom-columns='R:.status.conditions[?(@.type=="Ready")].status' | sort | uniq -c | tr -s ' \n' ' '
}
deadline=$((SECONDS + (N < 3000 ? 600 : N / 5))) logged=$SECONDS
while states=$(ready_states); [[ $states != " $N True " ]]; do
  ((SECONDS < deadline)) || { log "not all $N nodes Ready:$states"; exit 1; }
  if ((SECONDS - logged >= 30)); then
    log "nodes by Ready status:$states load $(cut -d' ' -f1 /proc/loadavg)"
    logged=$SECONDS
  fi
  sleep 5
done
log "all $N nodes Ready"

PORT=$((20000 + RANDOM % 20000))
RINGMASTER_OPERATOR_BIN=$OP_BIN RINGMASTER_OPERATOR_METRICS_ADDR=127.0.0.1:$PORT \
  hack/run-operator.sh --namespace $NS --leader-elect=false --log-format json >"$RINGMASTER_CLUSTER_DIR/logs/operator.log" 2>&1 &
RUN_PID=$!
for _ in $(seq 300); do OP_PID=$(pgrep -P $RUN_PID -f -- "^$OP_BIN " || true); [[ -n $OP_PID ]] && break; sleep 0.2; done
[[ -n $OP_PID ]] || { log "operator did not start"; cat "$RINGMASTER_CLUSTER_DIR/logs/operator.log"; exit 1; }
until curl -sf 127.0.0.1:$PORT/readyz >/dev/null; do sleep 0.2; done
writes() { curl -s 127.0.0.1:$PORT/metrics | awk '/^ringmaster_operator_api_writes_total/ && !/leases/ {s+=$NF} END {print s+0}'; }

phase() { # name generation  (the StorageCluster change was just made)
  local name=$1 gen=$2 t0 w0 out conv wr
  log "$name: change made at $(date +%s.%3N)"
  w0=$(writes)
  "$LOAD" wait --namespace $NS --cluster bench --count "$N" --generation "$gen" > /tmp/bench-wait.$$ &
  local wait_pid=$!
  out=$("$LOAD" report --count "$N" --pool $POOL --namespace $NS --cluster bench --generation "$gen")
  wait $wait_pid
  log "$name: $(grep -h ' at ' /tmp/bench-wait.$$ <(echo "$out") | tr '\n' ' ')"
  local conv_at last_at tail=
  conv_at=$(sed -n 's/converged at //p' /tmp/bench-wait.$$); last_at=$(echo "$out" | sed -n 's/last write done at //p')
  [[ -n $conv_at && -n $last_at ]] && tail=$(printf ' tail=%.2fs' "$(echo "$conv_at - $last_at" | bc -l)")
  conv=$(sed -n 's/converged after \(.*\)s/\1/p' /tmp/bench-wait.$$); rm -f /tmp/bench-wait.$$
  wr=$(echo "$out" | sed -n 's/writes: \([0-9]*\) in \(.*\)s/\2/p')
  local nwrites; nwrites=$(echo "$out" | sed -n 's/writes: \([0-9]*\) in .*/\1/p')
  printf '%s: nodes=%d driver_writes=%d bare_client=%.2fs converged=%.2fs ratio=%.2f operator_writes=%d%s\n' \
    "$name" "$N" "$nwrites" "$wr" "$conv" "$(echo "$conv / $wr" | bc -l)" "$(( $(writes) - w0 ))" "$tail"
}

cat <<YAML | kubectl apply -f - >/dev/null
apiVersion: ringmaster.io/v1alpha1
kind: StorageCluster
metadata: {name: bench, namespace: $NS}
spec:
  nodeSelector: {ringmaster-bench/pool: $POOL}
  tolerations: [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]
YAML
phase "create" 1
kubectl -n $NS patch stc bench --type merge -p '{"spec":{"aio":{"maxEvents":1024}}}' >/dev/null
phase "spec change" 2
rss() { awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$OP_PID/status; }
if [[ ${BENCH_STEADY:-1} == 0 ]]; then
  echo "operator peak RSS: $(rss) (profile $PROFILE; rollout not waited for)"
  log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
  exit 0
fi
log "waiting for the DaemonSet rollout to finish before the steady window"
kubectl -n $NS rollout status ds/bench-agent --timeout=900s >/dev/null
sleep 5
w0=$(writes); sleep 30
echo "steady 30s: operator_writes=$(( $(writes) - w0 ))"
echo "operator peak RSS: $(rss) (profile $PROFILE)"
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
