#!/usr/bin/env bash
# The one-command demo: Ringmaster's Helm release running on this host as a real Kubernetes node.
#
#   hack/demo.sh          build the binaries and images, start a local control plane with this host
#                         as a real node (hack/cluster.sh up --real-node: kubelet, containerd, runc,
#                         CNI bridge, kube-proxy), `helm install` the chart (the operator runs as
#                         pods), add two simulated nodes (kwok) beside it, apply
#                         examples/storagecluster.yaml serving a small demo data dir, wait for the
#                         agent pod on this host, print what the cluster shows, and read a file
#                         through the reader: without the cluster's token (401), then with it
#   hack/demo.sh status   print it again
#   hack/demo.sh down     stop everything and remove the demo's state; hack/cluster.sh down puts the
#                         host back as it was (fs.aio-max-nr and the other sysctls, iptables/nftables,
#                         the pod bridge, mounts, cgroups, the kubelet's and containerd's dirs)
# Env: RINGMASTER_DEMO_DIR (state, default ~/.cache/ringmaster/demo), RINGMASTER_BIN_DIR (use
# binaries built already instead of `cargo build`), RINGMASTER_DEMO_TIMEOUT (seconds per wait).
#
# Needs root: the kubelet and containerd run on this host, and the agent pod raises its
# fs.aio-max-nr. The agent is real: its reader container probes io_uring under the
# StorageCluster's seccomp profile, so the verdict is the one containerd's RuntimeDefault gives
# (EPERM: containerd >= 2.0 removed io_uring from it); the Localhost profile the agent installs
# turns it supported (see "Explore" at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${RINGMASTER_CACHE:-$HOME/.cache/ringmaster}
DEMO=${RINGMASTER_DEMO_DIR:-$CACHE/demo}
SYSTEM_NS=ringmaster-system
DEMO_NS=ringmaster-demo
CLUSTER=storage # metadata.name in examples/storagecluster.yaml
# The data dir the demo serves (its parent is the one root the demo's admin allows; the chart
# allows none by default, and never system dirs or anything under /root).
DATA_ROOT=/srv/ringmaster-demo
SIM_NODES=(demo-node-2 demo-node-3)
WAIT=${RINGMASTER_DEMO_TIMEOUT:-180}
export RINGMASTER_CLUSTER_DIR=$DEMO/cluster

say() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "demo: error: $*" >&2; exit 1; }

# wait_until WHAT CMD...: retry CMD for up to $WAIT seconds.
wait_until() {
  local what=$1; shift
  local deadline=$((SECONDS + WAIT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "demo: timed out waiting for $what" >&2; show_logs; exit 1; }
    sleep 1
  done
}

show_logs() {
  local p
  kubectl get pods -A -o wide >&2 || true
  for p in $(kubectl get pods -n "$SYSTEM_NS" -o name 2>/dev/null); do
    echo "---- kubectl logs -n $SYSTEM_NS $p --all-containers (last lines)" >&2
    kubectl logs -n "$SYSTEM_NS" "$p" --all-containers --tail=20 >&2 || true
  done
  for p in $(kubectl get pods -n "$DEMO_NS" -o name 2>/dev/null); do
    echo "---- kubectl logs -n $DEMO_NS $p --all-containers (last lines)" >&2
    kubectl logs -n "$DEMO_NS" "$p" --all-containers --tail=20 >&2 || true
  done
  echo "control-plane, kubelet and containerd logs: $RINGMASTER_CLUSTER_DIR/logs" >&2
}

node_name() { cat "$DEMO/node"; }

status() {
  # shellcheck disable=SC1091
  source "$DEMO/env"
  echo
  echo "\$ kubectl get storageclusters,storagenodes -A"
  kubectl get stc,stn -A
  echo
  echo "\$ kubectl get nodes -L ringmaster.io/io-uring,ringmaster.io/io-uring-reason,ringmaster.io/aio-tuned,ringmaster.io/ready"
  kubectl get nodes -L ringmaster.io/io-uring,ringmaster.io/io-uring-reason,ringmaster.io/aio-tuned,ringmaster.io/ready
  echo
  echo "\$ kubectl get pods -n $SYSTEM_NS -o wide"
  kubectl get pods -n "$SYSTEM_NS" -o wide
  echo
  echo "\$ kubectl get pods -n $DEMO_NS -o wide"
  kubectl get pods -n "$DEMO_NS" -o wide
}

# read_demo_file [TOKEN]: GET a range of the demo file through the reader's pod address.
read_demo_file() {
  local n ip; n=$(node_name)
  ip=$(kubectl get pods -n "$DEMO_NS" --field-selector "spec.nodeName=$n" -o jsonpath='{.items[0].status.podIP}')
  curl -sS -m 5 -D - ${1:+-H "Authorization: Bearer $1"} -H 'Range: bytes=0-40' \
    "http://$ip:7480/v1/files/data/hello.txt"
}

read_token() {
  kubectl get secret -n "$DEMO_NS" "$CLUSTER-read-token" -o jsonpath='{.data.token}' | base64 -d
}

demo_read_ok() { read_demo_file "$(read_token)" 2>/dev/null | grep -q '^HTTP/1.1 206'; }

show_reads() {
  echo
  echo "\$ curl -H 'Range: bytes=0-40' http://<agent pod IP>:7480/v1/files/data/hello.txt   # no token"
  read_demo_file || true
  echo
  echo
  echo "\$ curl -H \"Authorization: Bearer \$(kubectl get secret -n $DEMO_NS $CLUSTER-read-token -o jsonpath='{.data.token}' | base64 -d)\" \\"
  echo "       -H 'Range: bytes=0-40' http://<agent pod IP>:7480/v1/files/data/hello.txt"
  local answer mode
  answer=$(read_demo_file "$(read_token)") || true
  echo "$answer"
  echo
  # The answer says how the reader read: through its io_uring rings, or its pread fallback.
  mode=$(sed -n 's/^x-ringmaster-worker-mode: *\([a-z_]*\).*/\1/Ip' <<<"$answer")
  case $mode in
    io_uring) echo "# x-ringmaster-worker-mode: io_uring: reads that miss the page cache go through" \
      "the reader's io_uring rings" ;;
    pread) echo "# x-ringmaster-worker-mode: pread: this runtime's RuntimeDefault seccomp profile refuses" \
      "io_uring, so reads that miss the page cache go to the reader's pread fallback; the Localhost" \
      "profile below lets io_uring through" ;;
  esac
}

explore() {
  local n; n=$(node_name)
  cat <<EOF

Ringmaster runs on a local control plane with this host as the real node $n (state in $DEMO):
  - the operator: Deployment $SYSTEM_NS/ringmaster-operator (helm release ringmaster), pods on $n
  - the agent: DaemonSet $DEMO_NS/$CLUSTER-agent; on $n its pod runs for real (containers
    agent and reader); on ${SIM_NODES[*]} (kwok, simulated) its pods only look Running.

Explore:
  source $DEMO/env                                   # KUBECONFIG and PATH (kubectl, helm, crictl)
  kubectl get stn $n -o yaml                         # this host's io_uring verdict, fs.aio-max-nr, worker mode
  kubectl logs -n $DEMO_NS ds/$CLUSTER-agent -c reader     # the reader's probe under RuntimeDefault
  kubectl patch stc -n $DEMO_NS $CLUSTER --type merge \\
    -p '{"spec":{"seccomp":{"type":"Localhost","localhostProfile":"ringmaster/io-uring.json"}}}'
                                                     # the DaemonSet rolls; the verdict turns supported
  kubectl get stc -n $DEMO_NS $CLUSTER -o yaml           # status: counts, conditions, unsupportedNodes
  kubectl get secret,networkpolicy -n $DEMO_NS           # the read token (clients in $DEMO_NS mount it) and
                                                     # the NetworkPolicy (the bridge CNI here ignores it:
                                                     # the token is what keeps reads closed)
  crictl ps                                          # the containers containerd runs on this host
  helm -n $SYSTEM_NS get values ringmaster

Tear down (stops every pod, restores fs.aio-max-nr and the host, removes the control plane):
  hack/demo.sh down
EOF
}

up() {
  [[ $(id -u) == 0 ]] || die "this host becomes a real node (kubelet, containerd): run as root"
  if [[ -e $DEMO/env ]]; then
    die "a demo is already up (state in $DEMO): hack/demo.sh status, or hack/demo.sh down first"
  fi
  mkdir -p "$DEMO"
  trap 'echo "demo: failed; clean up with: hack/demo.sh down" >&2' ERR

  local bin=${RINGMASTER_BIN_DIR:-}
  if [[ -z $bin ]]; then
    say "build ringmaster-operator and ringmaster-agent"
    cargo build --locked -p ringmaster-operator -p ringmaster-agent
    bin=${CARGO_TARGET_DIR:-$ROOT/target}/debug
  fi
  say "build their OCI images (hack/images.sh)"
  RINGMASTER_BIN_DIR=$bin hack/images.sh --out "$DEMO/images" >/dev/null

  say "start a local control plane with this host as a real node (hack/cluster.sh up --real-node; the first run builds it: 15-30 min)"
  RINGMASTER_IMAGES_DIR=$DEMO/images hack/cluster.sh up --real-node >"$DEMO/env.tmp"
  mv "$DEMO/env.tmp" "$DEMO/env"
  # shellcheck disable=SC1091
  source "$DEMO/env"
  echo "$RINGMASTER_REAL_NODE" >"$DEMO/node"
  local n=$RINGMASTER_REAL_NODE

  say "helm install ringmaster charts/ringmaster -n $SYSTEM_NS --create-namespace"
  helm install ringmaster charts/ringmaster -n "$SYSTEM_NS" --create-namespace \
    --set-json "agent.allowedDataDirRoots=[\"$DATA_ROOT\"]" | sed -n '1,6p'
  wait_until "the operator Deployment Available" \
    kubectl wait -n "$SYSTEM_NS" --for=condition=Available deployment -l app.kubernetes.io/component=operator --timeout=5s

  say "add simulated nodes beside $n: ${SIM_NODES[*]}"
  for s in "${SIM_NODES[@]}"; do
    kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $s
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: $s, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
EOF
  done
  for s in "${SIM_NODES[@]}"; do
    wait_until "node $s Ready" kubectl wait --for=condition=Ready "node/$s" --timeout=5s
  done

  say "a demo data dir $DATA_ROOT/data (the reader, uid 65532, reads it)"
  mkdir -p "$DATA_ROOT/data"
  echo "hello from $n, read by the Ringmaster read service" >"$DATA_ROOT/data/hello.txt"
  chmod 755 "$DATA_ROOT" "$DATA_ROOT/data" && chmod 644 "$DATA_ROOT/data/hello.txt"

  say "kubectl apply -n $DEMO_NS -f examples/storagecluster.yaml, serving $DATA_ROOT/data"
  kubectl create namespace "$DEMO_NS" >/dev/null
  kubectl apply -n "$DEMO_NS" -f examples/storagecluster.yaml
  kubectl patch stc -n "$DEMO_NS" "$CLUSTER" --type merge \
    -p "{\"spec\":{\"readService\":{\"dataDirs\":[{\"name\":\"data\",\"hostPath\":\"$DATA_ROOT/data\"}]}}}"

  say "wait for the agent pod on $n (containers agent and reader Ready) and its report"
  wait_until "the agent pod on $n Ready" bash -c "kubectl get pods -n $DEMO_NS --field-selector spec.nodeName=$n \
    -o jsonpath='{.items[0].status.containerStatuses[*].ready}' | grep -qx 'true true'"
  wait_until "StorageNode $n with an io_uring verdict" \
    bash -c "test -n \"\$(kubectl get stn $n -o jsonpath='{.status.ioUring.verdict}')\""
  wait_until "label ringmaster.io/io-uring on $n" \
    bash -c "test -n \"\$(kubectl get node $n -o jsonpath='{.metadata.labels.ringmaster\\.io/io-uring}')\""
  wait_until "StorageCluster status counting the report" \
    bash -c "test \"\$(kubectl get stc -n $DEMO_NS $CLUSTER -o jsonpath='{.status.reporting}')\" -ge 1"

  wait_until "the reader serving the demo file (with the token)" demo_read_ok

  status
  show_reads
  explore
}

down() {
  if [[ ! -d $DEMO ]]; then
    echo "demo: nothing to tear down ($DEMO does not exist)" >&2
    return 0
  fi
  say "stop the real node and the control plane (hack/cluster.sh down)"
  if [[ -d $RINGMASTER_CLUSTER_DIR ]]; then hack/cluster.sh down || true; fi
  rm -rf "$DEMO" "$DATA_ROOT"
  echo "demo: torn down" >&2
}

case ${1:-up} in
  up) up ;;
  status) [[ -e $DEMO/env ]] || die "no demo is up (hack/demo.sh)"; status; show_reads; explore ;;
  down) down ;;
  *) echo "usage: $0 [up|status|down]" >&2; exit 2 ;;
esac
