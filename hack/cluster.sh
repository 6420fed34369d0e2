#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1, from binaries built out of Go modules
# (hack/build-tools.sh, cached by version outside the repo):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (simulated nodes).
#
#   eval "$(hack/cluster.sh up)"   start one; sets KUBECONFIG, RINGMASTER_CLUSTER_DIR,
#                                  RINGMASTER_APISERVER and puts kubectl/helm/kwok first on PATH
#   eval "$(hack/cluster.sh up --real-node)"
#                                  the same plus this host as a real node (kubelet, containerd,
#                                  runc, CNI bridge, kube-proxy; hack/real-node.sh; root only, one
#                                  per host); also sets RINGMASTER_REAL_NODE to the node's name
#   hack/cluster.sh env            print those lines again for the cluster in $RINGMASTER_CLUSTER_DIR
#   hack/cluster.sh load-images    import hack/images.sh's archives into the real node again
#   hack/cluster.sh down           stop what `up` started, remove its state (and for a real node
#                                  put the host back as `up` found it)
#
# State (PKI, kubeconfig, etcd data, logs, pids) lives in $RINGMASTER_CLUSTER_DIR, by default
# a new ~/.cache/ringmaster/clusters/<id>; every port is picked free, so clusters run side by side.
# Progress goes to stderr; only the shell lines go to stdout.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${RINGMASTER_CACHE:-$HOME/.cache/ringmaster}
CLAIMS=$CACHE/port-claims
SERVICE_CIDR=10.96.0.0/16
FIRST_SERVICE_IP=10.96.0.1
START_TIMEOUT=${RINGMASTER_START_TIMEOUT:-180}
# RINGMASTER_APF=false turns API Priority and Fairness off (on by default, as in Kubernetes:
# its per-FlowSchema request counters are how tests and benchmarks attribute API requests
# to one ServiceAccount).
# RINGMASTER_KWOK_LEASE_SECONDS (default 40, as a kubelet's): the simulated nodes' Lease
# duration; kwok renews each Lease every quarter of it. RINGMASTER_NODE_MONITOR_GRACE (default:
# the controller-manager's own): how long a node may go without a renewal before it turns
# Unknown. Benchmarks with thousands of kwok nodes raise both (hack/bench-operator.sh).
KWOK_LEASE_SECONDS=${RINGMASTER_KWOK_LEASE_SECONDS:-40}

log() { echo "cluster: $*" >&2; }
die() { echo "cluster: error: $*" >&2; exit 1; }
REAL_NODE=0
# shellcheck source=hack/real-node.sh
source "$HERE/real-node.sh"

# --- ports -----------------------------------------------------------------------------
# A port is ours when no socket uses it and no other cluster claimed it. Claims are
# files created with noclobber (atomic), so two `up`s racing never pick the same port;
# a claim whose cluster dir is gone is stale and reused.
# Ports come from below the kernel's ephemeral range: a port inside it can be taken as the
# local end of any outgoing connection between our check and the server's bind.
claim_port() {
  mkdir -p "$CLAIMS"
  local p i lo hi
  read -r lo _ < /proc/sys/net/ipv4/ip_local_port_range
  hi=$((lo > 12000 ? lo : 32768)); lo=10000
  for ((i = 0; i < 200; i++)); do
    p=$((lo + RANDOM % (hi - lo)))
    [[ -n $(ss -Htan "sport = :$p" 2>/dev/null) ]] && continue
    if [[ -e $CLAIMS/$p ]]; then
      [[ -d $(cat "$CLAIMS/$p" 2>/dev/null) ]] && continue
      rm -f "$CLAIMS/$p"
    fi
    if (set -o noclobber; echo "$DIR" > "$CLAIMS/$p") 2>/dev/null; then
      echo "$p" >> "$DIR/ports"
      echo "$p"; return
    fi
  done
  die "no free port found"
}

# --- PKI -------------------------------------------------------------------------------
pki() {
  local d=$DIR/pki; mkdir -p "$d"; cd "$d"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 3650 -subj "/CN=ringmaster-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  # leaf NAME SUBJ EXTFILE-CONTENT
  leaf() {
    openssl req -new "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  }
  leaf apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$FIRST_SERVICE_IP,IP:$API_ADDRESS"
  leaf admin "/O=system:masters/CN=ringmaster-admin" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  # Service-account token signing key pair.
  openssl ecparam -name prime256v1 -genkey -noout -out sa.key.ec 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in sa.key.ec -out sa.key && rm sa.key.ec
  openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
  chmod 600 ./*.key
  cd - >/dev/null
}

kubeconfig() { # server -> admin kubeconfig on stdout (certs embedded so it can be copied)
  local d=$DIR/pki
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ringmaster
  cluster:
    server: $1
    certificate-authority-data: $(base64 -w0 < "$d/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 < "$d/admin.crt")
    client-key-data: $(base64 -w0 < "$d/admin.key")
contexts:
- name: ringmaster
  context: {cluster: ringmaster, user: admin}
current-context: ringmaster
EOF
}

# --- processes -------------------------------------------------------------------------
start() { # name binary args... : runs detached, logs to $DIR/logs/name.log
  local name=$1 bin=$2; shift 2
  mkdir -p "$DIR/logs" "$DIR/pids"
  setsid "$bin" "$@" </dev/null >"$DIR/logs/$name.log" 2>&1 &
  echo $! > "$DIR/pids/$name"
  readlink -f "$bin" > "$DIR/pids/$name.bin"
}

alive() { # name -> true while the process we started is running
  local f=$DIR/pids/$1 pid
  [[ -f $f ]] || return 1
  pid=$(cat "$f")
  [[ -d /proc/$pid ]] && [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$(cat "$f.bin")" ]]
}

fail() { # name message : print the component's log tail, stop everything, exit 1
  echo "cluster: error: $2" >&2
  if [[ -f $DIR/logs/$1.log ]]; then
    echo "---- last lines of $DIR/logs/$1.log" >&2
    tail -n 40 "$DIR/logs/$1.log" >&2
    echo "----" >&2
  fi
  stop_all
  release_ports
  find "$DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
  echo "cluster: logs kept in $DIR/logs" >&2
  # A port taken between our check and the bind: worth another try with new ports.
  grep -qs 'address already in use' "$DIR/logs/$1.log" && exit 3
  exit 1
}

wait_until() { # name what command... : poll until the command succeeds, the process dies or time runs out
  local name=$1 what=$2; shift 2
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    alive "$name" || fail "$name" "$name exited while waiting for $what"
    ((SECONDS < deadline)) || fail "$name" "timed out after ${START_TIMEOUT}s waiting for $what"
    sleep 0.5
  done
}

stop_all() {
  [[ -d $DIR/pids ]] || return 0
  # A real node goes first: its agents release the node while the API server still runs.
  if [[ -d $DIR/node ]]; then real_node_down; fi
  local name pid order=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)
  for name in "${order[@]}"; do
    alive "$name" || continue
    pid=$(cat "$DIR/pids/$name")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$name" || break; sleep 0.1; done
    alive "$name" && kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$DIR/pids"
}

release_ports() {
  [[ -f $DIR/ports ]] || return 0
  local p
  while read -r p; do
    [[ $(cat "$CLAIMS/$p" 2>/dev/null) == "$DIR" ]] && rm -f "$CLAIMS/$p"
  done < "$DIR/ports"
}

env_lines() {
  # shellcheck disable=SC1091
  source "$DIR/cluster.env"
  printf 'export KUBECONFIG=%q\n' "$DIR/admin.kubeconfig"
  printf 'export RINGMASTER_CLUSTER_DIR=%q\n' "$DIR"
  printf 'export RINGMASTER_APISERVER=%q\n' "$APISERVER"
  printf 'export PATH=%q:"$PATH"\n' "$BIN"
  if [[ -n ${NODE_BIN:-} ]]; then
    printf 'export RINGMASTER_REAL_NODE=%q\n' "$REAL_NODE_NAME"
    printf 'export CONTAINER_RUNTIME_ENDPOINT=%q\n' "unix://$DIR/node/containerd.sock"
    printf 'export PATH=%q:"$PATH"\n' "$NODE_BIN"
  else
    printf 'unset RINGMASTER_REAL_NODE\n'
  fi
}

# --- commands --------------------------------------------------------------------------
up() {
  if [[ -n ${RINGMASTER_CLUSTER_DIR:-} ]]; then
    DIR=$RINGMASTER_CLUSTER_DIR
    if [[ -d $DIR/pids ]]; then
      for n in etcd kube-apiserver; do
        alive "$n" && die "a cluster is already running in $DIR: 'hack/cluster.sh down' first (or unset RINGMASTER_CLUSTER_DIR for a second one)"
      done
    fi
    # Reuse only an empty dir or a dead cluster's: never wipe anything else.
    if [[ -d $DIR && -n $(ls -A "$DIR") && ! -f $DIR/cluster.env && ! -d $DIR/logs ]]; then
      die "RINGMASTER_CLUSTER_DIR=$DIR is not empty and holds no cluster; pick another dir"
    fi
    rm -rf "$DIR"
  else
    DIR=$CACHE/clusters/$(date +%Y%m%d-%H%M%S)-$$-$RANDOM
  fi
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)

  local t0=$SECONDS
  log "tools (first run builds them from Go modules: 15-30 min)"
  BIN=$("$HERE/build-tools.sh" all) || die "hack/build-tools.sh failed"
  NODE_BIN=
  if ((REAL_NODE)); then
    NODE_BIN=$("$HERE/build-tools.sh" node) || die "hack/build-tools.sh node failed"
  fi
  log "tools ready in $((SECONDS - t0))s: $BIN${NODE_BIN:+ $NODE_BIN}"

  # The API server's address: loopback, or for a real node the pod bridge's gateway, the
  # address pods reach it at through the `kubernetes` Service.
  API_ADDRESS=127.0.0.1
  if ((REAL_NODE)); then
    real_node_claim
    snapshot_host
    pod_bridge_up
    API_ADDRESS=$POD_GATEWAY
  fi
  pki
  local etcd_port etcd_peer api_port kcm_port sched_port kwok_port
  etcd_port=$(claim_port); etcd_peer=$(claim_port); api_port=$(claim_port)
  kcm_port=$(claim_port); sched_port=$(claim_port); kwok_port=$(claim_port)
  APISERVER=https://$API_ADDRESS:$api_port
  kubeconfig "$APISERVER" > "$DIR/admin.kubeconfig"
  REAL_NODE_NAME=
  if ((REAL_NODE)); then REAL_NODE_NAME=$(node_name); fi
  printf 'BIN=%q\nNODE_BIN=%q\nREAL_NODE_NAME=%q\nAPISERVER=%q\n' "$BIN" "$NODE_BIN" "$REAL_NODE_NAME" "$APISERVER" > "$DIR/cluster.env"
  local P=$DIR/pki KC=$DIR/admin.kubeconfig

  start etcd "$BIN/etcd" --name=ringmaster --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
    --initial-cluster="ringmaster=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --log-level=warn
  wait_until etcd "etcd health" curl -sf "http://127.0.0.1:$etcd_port/health"

  local api_node_flags=(--endpoint-reconciler-type=none)
  if ((REAL_NODE)); then
    # Pods reach us through the `kubernetes` Service: its endpoint is the advertise address.
    # We reach the kubelet at the node's InternalIP (no DNS here) as a client RBAC allows.
    api_node_flags=(--kubelet-preferred-address-types=InternalIP
      --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key"
      --kubelet-certificate-authority="$P/ca.crt")
  fi
  if ((REAL_NODE)); then node_pki; fi
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$API_ADDRESS" --advertise-address="$API_ADDRESS" --secure-port="$api_port" \
    "${api_node_flags[@]}" \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
    --client-ca-file="$P/ca.crt" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --service-cluster-ip-range=$SERVICE_CIDR \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
    --enable-priority-and-fairness="${RINGMASTER_APF:-true}" --profiling=false
  wait_until kube-apiserver "kube-apiserver /readyz" \
    curl -sf --cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key" "$APISERVER/readyz"

  local common=(--kubeconfig="$KC" --authentication-kubeconfig="$KC" --authorization-kubeconfig="$KC"
    --leader-elect=false --bind-address=127.0.0.1 --profiling=false)
  start kube-controller-manager "$BIN/kube-controller-manager" "${common[@]}" --secure-port="$kcm_port" \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
    --use-service-account-credentials=true --service-cluster-ip-range=$SERVICE_CIDR \
    --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
    ${RINGMASTER_NODE_MONITOR_GRACE:+--node-monitor-grace-period="$RINGMASTER_NODE_MONITOR_GRACE"}
  start kube-scheduler "$BIN/kube-scheduler" "${common[@]}" --secure-port="$sched_port"
  start kwok "$BIN/kwok" --kubeconfig="$KC" --config="$BIN/kwok-stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds="$KWOK_LEASE_SECONDS" --cidr=10.244.0.0/16 --node-ip=127.0.0.1 \
    --server-address="127.0.0.1:$kwok_port"

  wait_until kube-controller-manager "kube-controller-manager /healthz" curl -skf "https://127.0.0.1:$kcm_port/healthz"
  wait_until kube-scheduler "kube-scheduler /readyz" curl -skf "https://127.0.0.1:$sched_port/readyz"
  wait_until kwok "kwok /healthz" curl -sf "http://127.0.0.1:$kwok_port/healthz"
  # The service-account controller works once the default namespace has its ServiceAccount.
  wait_until kube-controller-manager "ServiceAccount default/default" \
    "$BIN/kubectl" --kubeconfig="$KC" get serviceaccount default -n default
  if ((REAL_NODE)); then real_node_up; fi
  log "up in $((SECONDS - t0))s: $APISERVER (state and logs in $DIR)"
  env_lines
}

down() {
  DIR=${RINGMASTER_CLUSTER_DIR:-}
  [[ -n $DIR ]] || die "RINGMASTER_CLUSTER_DIR is not set: run 'eval \"\$(hack/cluster.sh up)\"' first, or set it to the cluster's dir"
  [[ -d $DIR ]] || { log "nothing at $DIR"; return 0; }
  [[ -f $DIR/cluster.env || -d $DIR/pids ]] || die "$DIR does not look like a cluster dir; not removing it"
  # shellcheck disable=SC1091
  [[ -f $DIR/cluster.env ]] && source "$DIR/cluster.env"
  stop_all
  release_ports
  rm -rf "$DIR"
  log "down: removed $DIR"
}

case ${1:-} in
  up)
    case ${2:-} in
      --real-node) REAL_NODE=1 ;;
      "") ;;
      *) echo "usage: $0 up [--real-node]" >&2; exit 2 ;;
    esac
    # On failure print a line that makes `eval "$(hack/cluster.sh up)"` fail too.
    for attempt in 1 2 3; do
      # (Not `(up) || ...`: errexit is ignored inside the left side of || .)
      # Any failing step stops what this attempt started (fail() does it for waits).
      set +e; (set -eE; trap 'rc=$?; log "error: up failed at line $LINENO (exit $rc)"; [[ -n ${DIR:-} ]] && { stop_all; release_ports; }; exit $rc' ERR; up); rc=$?; set -e
      ((rc == 3 && attempt < 3)) && { log "port clash, retrying with other ports"; continue; }
      break
    done
    ((rc == 0)) || { echo "echo 'hack/cluster.sh up failed (see above)' >&2; false"; exit 1; } ;;
  down) down ;;
  env)
    DIR=${RINGMASTER_CLUSTER_DIR:?RINGMASTER_CLUSTER_DIR is not set}
    [[ -f $DIR/cluster.env ]] || die "no cluster in $DIR"
    env_lines ;;
  load-images)
    DIR=${RINGMASTER_CLUSTER_DIR:?RINGMASTER_CLUSTER_DIR is not set}
    [[ -f $DIR/cluster.env ]] || die "no cluster in $DIR"
    # shellcheck disable=SC1091
    source "$DIR/cluster.env"
    [[ -n $NODE_BIN ]] || die "the cluster in $DIR has no real node ('up --real-node')"
    load_images ;;
  *) echo "usage: $0 up [--real-node]|down|env|load-images   (eval \"\$($0 up)\")" >&2; exit 2 ;;
esac
