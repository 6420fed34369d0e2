#!/usr/bin/env bash
# The one-command demo: Ringmaster on a local control plane, with one real node agent.
#
#   hack/demo.sh          build, start a control plane (hack/cluster.sh), install the Helm chart,
#                         create three simulated nodes (kwok), run the operator and a real agent
#                         (privileged `run` + unprivileged `reader`) for demo-node-1 on this host,
#                         apply examples/storagecluster.yaml, wait, print what the cluster shows
#   hack/demo.sh status   print it again
#   hack/demo.sh down     stop everything, put back fs.aio-max-nr if the agent raised it,
#                         remove the control plane and the demo's state
# Env: RINGMASTER_DEMO_DIR (state, default ~/.cache/ringmaster/demo), RINGMASTER_BIN_DIR (use
# binaries built already instead of `cargo build`), RINGMASTER_DEMO_TIMEOUT (seconds per wait).
#
# The operator and agent run as local processes (no kubelet here: kwok simulates the nodes and
# marks their pods Running) under ServiceAccount tokens, so the chart's RBAC and admission
# policy apply to them exactly as in a real cluster: the agent's token is bound to its
# DaemonSet pod on demo-node-1 and may touch only that Node and its StorageNode.
# The agent is real: it probes io_uring on this kernel and raises this host's fs.aio-max-nr if
# it is below what the StorageCluster needs (needs root; `down` restores it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${RINGMASTER_CACHE:-$HOME/.cache/ringmaster}
DEMO=${RINGMASTER_DEMO_DIR:-$CACHE/demo}
SYSTEM_NS=ringmaster-system
DEMO_NS=ringmaster-demo
CLUSTER=storage # metadata.name in examples/storagecluster.yaml
AGENT_NODE=demo-node-1
NODES=(demo-node-1 demo-node-2 demo-node-3)
WAIT=${RINGMASTER_DEMO_TIMEOUT:-180}
export RINGMASTER_CLUSTER_DIR=$DEMO/cluster

say() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "demo: error: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME CMD...: a background process in its own session, log and pid in $DEMO.
start() {
  local name=$1; shift
  setsid "$@" >"$DEMO/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$DEMO/pids/$name"
}

stop_all() {
  local f pid
  for f in "$DEMO"/pids/*; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 1
  for f in "$DEMO"/pids/*; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

# wait_until WHAT CMD...: retry CMD for up to $WAIT seconds.
wait_until() {
  local what=$1; shift
  local deadline=$((SECONDS + WAIT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "demo: timed out waiting for $what" >&2; show_logs; exit 1; }
    check_alive
    sleep 1
  done
}

check_alive() {
  local f
  for f in "$DEMO"/pids/*; do
    [[ -e $f ]] || continue
    kill -0 "$(cat "$f")" 2>/dev/null || { echo "demo: $(basename "$f") exited" >&2; show_logs; exit 1; }
  done
}

show_logs() {
  local f
  for f in "$DEMO"/logs/*.log; do
    [[ -e $f ]] || continue
    echo "---- last lines of $f" >&2; tail -n 20 "$f" >&2
  done
}

# A kubeconfig that talks to the demo API server as a ServiceAccount token.
token_kubeconfig() { # file token
  local ca server
  ca=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  server=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: demo, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: sa, user: {token: "$2"}}]
contexts: [{name: sa, context: {cluster: demo, user: sa}}]
current-context: sa
EOF
  chmod 600 "$1"
}

status() {
  # shellcheck disable=SC1091
  source "$DEMO/env"
  echo
  echo "\$ kubectl get storageclusters,storagenodes -A"
  kubectl get stc,stn -A
  echo
  echo "\$ kubectl get nodes -L ringmaster.io/io-uring,ringmaster.io/io-uring-reason,ringmaster.io/aio-tuned,ringmaster.io/ready"
  kubectl get nodes -L ringmaster.io/io-uring,ringmaster.io/io-uring-reason,ringmaster.io/aio-tuned,ringmaster.io/ready
}

explore() {
  cat <<EOF

Ringmaster is running on a local control plane (state in $DEMO):
  - operator (local process, ServiceAccount $SYSTEM_NS/ringmaster-operator)   log: $DEMO/logs/operator.log
  - agent for $AGENT_NODE (local, root; token bound to its DaemonSet pod)             log: $DEMO/logs/agent.log
  - reader for $AGENT_NODE (local, unprivileged uid 65534)                            log: $DEMO/logs/reader.log
  demo-node-2 and demo-node-3 are simulated: their agent pods "run" but no agent reports for them.

Explore:
  source $DEMO/env                                   # KUBECONFIG and PATH (kubectl, helm, kwok)
  kubectl get stc -n $DEMO_NS $CLUSTER -o yaml           # status: counts, conditions, unsupportedNodes
  kubectl get stn $AGENT_NODE -o yaml                      # this host's io_uring verdict, fs.aio-max-nr, worker mode
  kubectl describe node $AGENT_NODE                        # ringmaster.io/ labels, events
  kubectl patch stc -n $DEMO_NS $CLUSTER --type merge -p '{"spec":{"aio":{"maxEvents":256}}}'
  kubectl apply -n $DEMO_NS -f examples/threefs.yaml       # more examples in examples/
  curl -s http://127.0.0.1:$(cat "$DEMO/reader-port" 2>/dev/null || echo PORT)/readyz   # the reader's read service
  helm -n $SYSTEM_NS get values ringmaster

Tear down (stops everything, restores fs.aio-max-nr, removes the control plane):
  hack/demo.sh down
EOF
}

up() {
  [[ $(id -u) == 0 ]] || die "the agent tunes fs.aio-max-nr on this host: run as root"
  if [[ -e $DEMO/env ]]; then
    die "a demo is already up (state in $DEMO): hack/demo.sh status, or hack/demo.sh down first"
  fi
  mkdir -p "$DEMO"/{logs,pids,state,host,sysctl.d,seccomp}
  trap 'echo "demo: failed; logs in $DEMO/logs; clean up with: hack/demo.sh down" >&2' ERR

  local bin=${RINGMASTER_BIN_DIR:-}
  if [[ -z $bin ]]; then
    say "build ringmaster-operator and ringmaster-agent"
    cargo build --locked -p ringmaster-operator -p ringmaster-agent
    bin=${CARGO_TARGET_DIR:-$ROOT/target}/debug
  fi
  echo "$bin" >"$DEMO/bin-dir"

  say "start a local control plane (hack/cluster.sh up; the first run builds it: 15-30 min)"
  # One retry: a port found free can be taken by someone else before the server binds it.
  if ! hack/cluster.sh up >"$DEMO/env.tmp"; then
    echo "demo: retrying the control plane once" >&2
    hack/cluster.sh down >/dev/null 2>&1 || true
    hack/cluster.sh up >"$DEMO/env.tmp"
  fi
  mv "$DEMO/env.tmp" "$DEMO/env"
  # shellcheck disable=SC1091
  source "$DEMO/env"

  say "install the Helm chart (release ringmaster in $SYSTEM_NS)"
  # No kubelet: the operator runs as a local process below, under the chart's ServiceAccount.
  # (grep: the API server warns about the integer formats in the CRD schemas.)
  helm install ringmaster charts/ringmaster -n "$SYSTEM_NS" --create-namespace \
    --set operator.replicas=0 2> >(grep -v 'unrecognized format' >&2) | sed -n '1,6p'

  say "create simulated nodes: ${NODES[*]}"
  local n
  for n in "${NODES[@]}"; do
    kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $n
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: $n, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
EOF
  done
  for n in "${NODES[@]}"; do
    wait_until "node $n Ready" kubectl wait --for=condition=Ready "node/$n" --timeout=5s
  done

  say "run the operator (local process, ServiceAccount $SYSTEM_NS/ringmaster-operator)"
  token_kubeconfig "$DEMO/operator.kubeconfig" "$(kubectl create token ringmaster-operator -n "$SYSTEM_NS" --duration 24h)"
  local op_port; op_port=$(free_port)
  start operator env KUBECONFIG="$DEMO/operator.kubeconfig" POD_NAME=demo-operator \
    "$bin/ringmaster-operator" --lease-namespace "$SYSTEM_NS" --lease-name ringmaster-operator \
    --metrics-addr "127.0.0.1:$op_port" --log-format text
  wait_until "operator /readyz" curl -sf "http://127.0.0.1:$op_port/readyz"

  say "kubectl apply -n $DEMO_NS -f examples/storagecluster.yaml"
  kubectl create namespace "$DEMO_NS" >/dev/null
  kubectl apply -n "$DEMO_NS" -f examples/storagecluster.yaml

  say "wait for the operator's agent DaemonSet pod on $AGENT_NODE"
  local pod_of_node="kubectl get pods -n $DEMO_NS --field-selector spec.nodeName=$AGENT_NODE,status.phase=Running -o jsonpath={.items[0].metadata.name}"
  wait_until "an agent pod Running on $AGENT_NODE" bash -c "test -n \"\$($pod_of_node)\""
  local pod sa
  pod=$($pod_of_node)
  sa=$(kubectl get pod -n "$DEMO_NS" "$pod" -o jsonpath='{.spec.serviceAccountName}')
  echo "agent pod $DEMO_NS/$pod (ServiceAccount $sa)"

  say "run the real agent for $AGENT_NODE: privileged 'run' and unprivileged 'reader'"
  token_kubeconfig "$DEMO/agent.kubeconfig" \
    "$(kubectl create token "$sa" -n "$DEMO_NS" --bound-object-kind Pod --bound-object-name "$pod" --duration 24h)"
  local agent_port reader_port; agent_port=$(free_port); reader_port=$(free_port)
  echo "$reader_port" >"$DEMO/reader-port"
  chown 65534:65534 "$DEMO/state"
  start agent env KUBECONFIG="$DEMO/agent.kubeconfig" \
    "$bin/ringmaster-agent" run --node-name "$AGENT_NODE" --cluster "$DEMO_NS/$CLUSTER" \
    --state-dir "$DEMO/state" --host-state-dir "$DEMO/host" --sysctl-d-dir "$DEMO/sysctl.d" \
    --seccomp-profile-dir "$DEMO/seccomp" --http-addr 127.0.0.1 --http-port "$agent_port"
  start reader setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$bin/ringmaster-agent" reader --state-dir "$DEMO/state" --bind "127.0.0.1:$reader_port"

  say "wait for the StorageNode of $AGENT_NODE and the StorageCluster's status"
  wait_until "StorageNode $AGENT_NODE with an io_uring verdict" \
    bash -c "test -n \"\$(kubectl get stn $AGENT_NODE -o jsonpath='{.status.ioUring.verdict}')\""
  wait_until "label ringmaster.io/io-uring on $AGENT_NODE" \
    bash -c "test -n \"\$(kubectl get node $AGENT_NODE -o jsonpath='{.metadata.labels.ringmaster\\.io/io-uring}')\""
  wait_until "StorageCluster status counting the report" \
    bash -c "test \"\$(kubectl get stc -n $DEMO_NS $CLUSTER -o jsonpath='{.status.reporting}')\" -ge 1"

  status
  explore
}

down() {
  if [[ ! -d $DEMO ]]; then
    echo "demo: nothing to tear down ($DEMO does not exist)" >&2
    return 0
  fi
  say "stop the operator, the agent and the reader"
  stop_all
  if [[ -e $DEMO/host/aio-max-nr.json ]]; then
    say "restore fs.aio-max-nr (only if it still holds the value the agent set)"
    "$(cat "$DEMO/bin-dir")/ringmaster-agent" tune --restore "$DEMO/host/aio-max-nr.json" || true
  fi
  say "stop the control plane"
  hack/cluster.sh down || true
  rm -rf "$DEMO"
  echo "demo: torn down" >&2
}

case ${1:-up} in
  up) up ;;
  status) [[ -e $DEMO/env ]] || die "no demo is up (hack/demo.sh)"; status; explore ;;
  down) down ;;
  *) echo "usage: $0 [up|status|down]" >&2; exit 2 ;;
esac
