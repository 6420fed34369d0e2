#!/usr/bin/env bash
# The agents' API footprint (a benchmark, not a test): N node agents (default 20) with
# their readers as local processes on N kwok nodes, each agent under its own token of the
# agent ServiceAccount and the agent ClusterRole the chart ships. Once every agent applied
# the StorageCluster and a settling minute passed, it counts for WINDOW seconds (default
# 600) every request the agents send, as the API server counts them: FlowSchemas matching
# the agents' ServiceAccount, one per verb, read from
# apiserver_flowcontrol_dispatched_requests_total (apiserver_request_total has no user
# label). Prints requests per agent per hour by verb, and the single-object watches held.
#
#   hack/bench-agents.sh [N] [WINDOW] [agent flags...]   # starts (and stops) its own control plane
#   hack/bench-agents.sh 20 300 --heartbeat-seconds 20 --watch-timeout-seconds 60 --resync-seconds 5
#
# The StorageCluster asks `sysctl.mode: Verify`, so the agents change nothing on the host.
# Their reports follow the host's fs.aio-nr: on a host where other processes open and close
# aio contexts meanwhile, the extra status writes are real, and the agents' logs name them
# (`StorageNode status applied ... changed=[aio, ...]`).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
WINDOW=${2:-600}
shift $(($# > 2 ? 2 : $#))
EXTRA=("$@")
NS=bench-agents
SA=ringmaster-agent
log() { echo "bench-agents: $*" >&2; }

cargo build -q -p ringmaster-agent --bins
BIN=$(realpath "${CARGO_TARGET_DIR:-target}/debug/ringmaster-agent")
WORK=$(mktemp -d)
PIDS=()
unset RINGMASTER_CLUSTER_DIR
eval "$(hack/cluster.sh up)"
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  hack/cluster.sh down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
log "load before: $(cut -d' ' -f1-3 /proc/loadavg); agent flags: ${EXTRA[*]:-(defaults)}"

kubectl apply --server-side -f crds/ -f operator/rbac/agent-clusterrole.yaml >/dev/null
kubectl create namespace $NS >/dev/null
kubectl -n $NS create serviceaccount $SA >/dev/null
kubectl create clusterrolebinding $NS --clusterrole=ringmaster-agent --serviceaccount=$NS:$SA >/dev/null

VERBS=(get list watch patch create other)
for i in "${!VERBS[@]}"; do
  v=${VERBS[$i]}; [[ $v == other ]] && rv='*' || rv=$v
  cat <<YAML | kubectl apply -f - >/dev/null
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {name: $NS-$v}
spec:
  matchingPrecedence: $((500 + i))
  priorityLevelConfiguration: {name: workload-low}
  distinguisherMethod: {type: ByUser}
  rules:
  - subjects: [{kind: ServiceAccount, serviceAccount: {namespace: $NS, name: $SA}}]
    resourceRules: [{verbs: ["$rv"], apiGroups: ["*"], resources: ["*"], clusterScope: true, namespaces: ["*"]}]
    nonResourceRules: [{verbs: ["$rv"], nonResourceURLs: ["*"]}]
YAML
done
for v in "${VERBS[@]}"; do
  until kubectl get flowschema "$NS-$v" -o jsonpath='{.status.conditions[?(@.type=="Dangling")].status}' | grep -q .; do sleep 0.2; done
done

for i in $(seq 0 $((N - 1))); do
  cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: quiet-$i
  labels: {ringmaster-bench/pool: quiet, type: kwok}
  annotations: {kwok.x-k8s.io/node: fake}
spec:
  taints: [{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}]
YAML
done | kubectl apply -f - >/dev/null
mkdir -p "$WORK/data"
cat <<YAML | kubectl apply -f - >/dev/null
apiVersion: ringmaster.io/v1alpha1
kind: StorageCluster
metadata: {name: main, namespace: $NS}
spec:
  nodeSelector: {ringmaster-bench/pool: quiet}
  sysctl: {mode: Verify}
  readService: {dataDirs: [{name: d0, hostPath: "$WORK/data"}]}
YAML

SERVER=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
CA=$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
for i in $(seq 0 $((N - 1))); do
  d=$WORK/n$i; mkdir -p "$d"/{state,host,seccomp,sysctl}
  token=$(kubectl -n $NS create token $SA --duration 4h)
  cat > "$d/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "$SERVER", certificate-authority-data: "$CA"}}]
users: [{name: agent, user: {token: "$token"}}]
contexts: [{name: c, context: {cluster: c, user: agent}}]
current-context: c
KC
  "$BIN" reader --state-dir "$d/state" --bind 127.0.0.1:0 >"$d/reader.log" 2>&1 &
  PIDS+=($!)
  KUBECONFIG=$d/kubeconfig RINGMASTER_LOG_FORMAT=json "$BIN" run --node-name quiet-$i --cluster $NS/main \
    --state-dir "$d/state" --host-state-dir "$d/host" --http-port 0 --http-addr 127.0.0.1 \
    --seccomp-profile-dir "$d/seccomp" --sysctl-d-dir "$d/sysctl" "${EXTRA[@]}" >"$d/agent.log" 2>&1 &
  PIDS+=($!)
done

log "waiting for $N agents to apply generation 1"
for _ in $(seq 600); do
  applied=$(kubectl get storagenodes -o jsonpath='{range .items[*]}{.status.appliedGeneration}{"\n"}{end}' | grep -c '^1$' || true)
  ((applied == N)) && break
  sleep 1
done
((applied == N)) || { log "only $applied of $N applied"; exit 1; }
sleep 60

counts() { # verb -> requests the agents' FlowSchemas dispatched
  kubectl get --raw /metrics | awk -v ns=$NS '
    /^apiserver_flowcontrol_dispatched_requests_total\{/ {
      if (match($0, "flow_schema=\"" ns "-[a-z]+\"")) {
        v = substr($0, RSTART + 13 + length(ns) + 1, RLENGTH - 14 - length(ns) - 1); c[v] += $NF
      }
    }
    END { for (v in c) print v, c[v] }'
}
watches() {
  kubectl get --raw /metrics | awk '/^apiserver_longrunning_requests\{/ && /scope="resource"/ && /verb="WATCH"/ {
    match($0, /resource="[a-z]+"/); printf "%s=%s ", substr($0, RSTART + 10, RLENGTH - 11), $NF }'
}
before=$(counts)
marks=()
for i in $(seq 0 $((N - 1))); do marks+=("$(wc -l < "$WORK/n$i/agent.log")"); done
log "steady window: ${WINDOW}s"
sleep "$WINDOW"
after=$(counts)
echo "agents=$N window=${WINDOW}s flags=${EXTRA[*]:-(defaults)} load_after=$(cut -d' ' -f1-3 /proc/loadavg)"
echo "single-object watches held: $(watches)"
echo "agents' content writes in the window, by the fields they changed (the agents' logs; heartbeats are not logged):"
for i in $(seq 0 $((N - 1))); do tail -n +$((marks[i] + 1)) "$WORK/n$i/agent.log"; done |
  grep 'StorageNode status applied' | grep -o '"changed":"[^"]*\(\\"[^"]*\)*"' | sort | uniq -c || true
total=0
for v in "${VERBS[@]}"; do
  b=$(awk -v v=$v '$1 == v {print $2}' <<<"$before"); a=$(awk -v v=$v '$1 == v {print $2}' <<<"$after")
  d=$(( ${a:-0} - ${b:-0} )); total=$((total + d))
  printf '%-6s %5d requests  %7.2f per agent per hour\n' "$v" "$d" "$(echo "$d * 3600 / $N / $WINDOW" | bc -l)"
done
printf 'total  %5d requests  %7.2f per agent per hour  %5.2f per agent per 5 minutes\n' "$total" \
  "$(echo "$total * 3600 / $N / $WINDOW" | bc -l)" "$(echo "$total * 300 / $N / $WINDOW" | bc -l)"
