# shellcheck shell=bash
# This host as a real Kubernetes node of a hack/cluster.sh cluster: containerd + runc, the CNI
# bridge plugin, a kubelet and kube-proxy. Sourced by hack/cluster.sh (`up --real-node`, `down`,
# `load-images`); uses its DIR, BIN, NODE_BIN, start/alive/fail/wait_until and the PKI in $DIR/pki.
#
# Everything stays on this host: the API server binds the bridge's gateway address (pods reach it
# through the `kubernetes` Service, implemented by kube-proxy), the kubelet serves on that address
# too, and pods get addresses on a bridge whose subnet exists only here (no masquerading, no
# egress). `down` puts the host back as `up` found it: sysctls, iptables/nftables rules, the
# bridge, netns, mounts, cgroups and every directory `up` created.

# One real node per host: this file names the cluster dir that owns it.
REAL_NODE_OWNER=/run/ringmaster-real-node
POD_BRIDGE=${RINGMASTER_POD_BRIDGE:-rmbr0}
POD_CIDR=${RINGMASTER_POD_CIDR:-10.241.0.0/24}
POD_GATEWAY=${POD_CIDR%.*}.1
KUBELET_ROOT=/var/lib/kubelet
CONTAINERD_STATE=/run/ringmaster-containerd
# Where containerd 2 puts shim sockets whatever its state dir is, and where the CNI plugins and
# containerd keep their state: created on demand, so `down` removes them when `up` created them.
HOST_DIRS=("$KUBELET_ROOT" /run/containerd /var/lib/cni /var/run/netns /etc/cni /opt/containerd /var/lib/ringmaster "$CONTAINERD_STATE")
# Every sysctl the kubelet (kernel tunables), kube-proxy, the CNI plugins or our agent may set.
HOST_SYSCTLS=(fs.aio-max-nr vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv6.conf.all.forwarding
  net.ipv4.conf.all.forwarding net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait
  net.ipv4.vs.conntrack net.ipv4.conf.all.arp_ignore net.ipv4.conf.all.arp_announce)

node_name() { local h; h=$(hostname -s | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9.\n-' '-'); echo "${RINGMASTER_NODE_NAME:-$h}"; }

# --- preconditions ---------------------------------------------------------------------------
real_node_claim() {
  [[ $(id -u) == 0 ]] || die "--real-node runs a kubelet and containerd: run as root"
  local owner
  owner=$(cat "$REAL_NODE_OWNER" 2>/dev/null || true)
  if [[ -n $owner && -d $owner/node ]]; then
    die "this host already runs a real node (cluster $owner); only one real node per host: 'RINGMASTER_CLUSTER_DIR=$owner hack/cluster.sh down' first, or use plain 'up' (kwok nodes)"
  fi
  local n; n=$(node_name)
  [[ $n =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] || die "node name '$n' is not a DNS subdomain: set RINGMASTER_NODE_NAME"
  if ip link show "$POD_BRIDGE" >/dev/null 2>&1; then die "interface $POD_BRIDGE exists already: set RINGMASTER_POD_BRIDGE to another name"; fi
  # The pod subnet must exist only here: no route of this host may overlap it.
  python3 - "$POD_CIDR" <<'PY' || die "pod CIDR $POD_CIDR overlaps a route of this host (ip route): set RINGMASTER_POD_CIDR"
import ipaddress, subprocess, sys
pods = ipaddress.ip_network(sys.argv[1])
for line in subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout.splitlines():
    dst = line.split()[0]
    if dst in ("default", "broadcast", "local", "unreachable", "multicast"):
        dst = line.split()[1] if dst != "default" else None
    if not dst: continue
    try: net = ipaddress.ip_network(dst, strict=False)
    except ValueError: continue
    if net.prefixlen > 0 and net.overlaps(pods): sys.exit(1)
PY
  if ! (set -o noclobber; echo "$DIR" > "$REAL_NODE_OWNER") 2>/dev/null; then
    owner=$(cat "$REAL_NODE_OWNER" 2>/dev/null || true)
    if [[ -n $owner && -d $owner/node ]]; then
      die "this host already runs a real node (cluster $owner); only one real node per host: 'RINGMASTER_CLUSTER_DIR=$owner hack/cluster.sh down' first, or use plain 'up' (kwok nodes)"
    fi
    # The owner's dir is gone: its `down` ran (or it never got far); take over.
    echo "$DIR" > "$REAL_NODE_OWNER"
  fi
  mkdir -p "$DIR/node"
}

# --- the host before us ------------------------------------------------------------------------
snapshot_host() {
  local s=$DIR/node/host-before; mkdir -p "$s"
  local k
  for k in "${HOST_SYSCTLS[@]}"; do
    [[ -r /proc/sys/${k//.//} ]] && printf '%s %s\n' "$k" "$(tr '\t' ' ' < "/proc/sys/${k//.//}")"
  done > "$s/sysctls"
  for k in "${HOST_DIRS[@]}"; do [[ -e $k ]] || echo "$k"; done > "$s/absent-dirs"
  iptables-save > "$s/iptables" 2>/dev/null || true
  ip6tables-save > "$s/ip6tables" 2>/dev/null || true
  if command -v nft >/dev/null; then nft list ruleset > "$s/nft"; fi
  ls /var/run/netns 2>/dev/null > "$s/netns" || true
  findmnt -no PROPAGATION / > "$s/root-propagation"
}

restore_host() {
  local s=$DIR/node/host-before
  [[ -d $s ]] || return 0
  if [[ -f $s/nft ]] && command -v nft >/dev/null; then
    if ! diff -q <(nft list ruleset) "$s/nft" >/dev/null; then
      nft flush ruleset && nft -f "$s/nft" && log "restored the nftables ruleset"
    fi
  else
    local t
    for t in filter nat mangle raw; do iptables -t $t -F 2>/dev/null; iptables -t $t -X 2>/dev/null; done
    iptables-restore < "$s/iptables" 2>/dev/null || true
    for t in filter nat mangle raw; do ip6tables -t $t -F 2>/dev/null; ip6tables -t $t -X 2>/dev/null; done
    ip6tables-restore < "$s/ip6tables" 2>/dev/null || true
  fi
  # Sysctls under the host lock the other sysctl-changing commands of this project hold.
  local k v now changed=()
  while read -r k v; do
    now=$(tr '\t' ' ' < "/proc/sys/${k//.//}" 2>/dev/null) || continue
    if [[ $now != "$v" ]]; then
      flock /tmp/ringmaster-host.lock sysctl -qw "$k=$v" && changed+=("$k=$v")
    fi
  done < "$s/sysctls"
  ((${#changed[@]} == 0)) || log "restored sysctls: ${changed[*]}"
  if [[ $(cat "$s/root-propagation" 2>/dev/null) == private && $(findmnt -no PROPAGATION /) != private ]]; then
    mount --make-private / && log "made / a private mount again"
  fi
}

# --- PKI for the node ---------------------------------------------------------------------------
node_pki() {
  local d=$DIR/pki n; n=$(node_name); cd "$d"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes) # what `leaf` uses
  leaf kubelet "/O=system:nodes/CN=system:node:$n" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth,serverAuth
subjectAltName=DNS:$n,IP:$POD_GATEWAY"
  leaf kube-proxy "/CN=system:kube-proxy" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  leaf apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  chmod 600 ./*.key
  cd - >/dev/null
}

client_kubeconfig() { # server cert-name user
  local d=$DIR/pki
  cat <<EOF
apiVersion: v1
kind: Config
clusters: [{name: ringmaster, cluster: {server: "$1", certificate-authority: "$d/ca.crt"}}]
users: [{name: "$3", user: {client-certificate: "$d/$2.crt", client-key: "$d/$2.key"}}]
contexts: [{name: ringmaster, context: {cluster: ringmaster, user: "$3"}}]
current-context: ringmaster
EOF
}

# --- bring-up --------------------------------------------------------------------------------------
pod_bridge_up() {
  ip link add "$POD_BRIDGE" type bridge
  ip addr add "$POD_GATEWAY/${POD_CIDR#*/}" dev "$POD_BRIDGE"
  ip link set "$POD_BRIDGE" up
  echo "$POD_BRIDGE" > "$DIR/node/bridge"
}

# Pods get one route, the Service CIDR via the bridge (kube-proxy DNATs it to the API server):
# no default route, so nothing a pod sends leaves this host.
write_node_configs() {
  local N=$DIR/node n; n=$(node_name)
  mkdir -p "$N/cni/net.d" "$N/cni/ipam" "$N/containerd"
  cat > "$N/cni/net.d/10-ringmaster.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "ringmaster-pods",
  "plugins": [
    {"type": "bridge", "bridge": "$POD_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$N/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
              "routes": [{"dst": "$SERVICE_CIDR", "gw": "$POD_GATEWAY"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  local pause; pause=$(cat "$NODE_BIN/pause.ref")
  cat > "$N/containerd/config.toml" <<EOF
version = 3
root = "$N/containerd/root"
state = "$CONTAINERD_STATE"

[grpc]
  address = "$N/containerd.sock"

# (Its default is /opt/containerd on the host.)
[plugins.'io.containerd.internal.v1.opt']
  path = "$N/containerd/opt"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  # No registry here: every image is imported (hack/cluster.sh load-images).
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$pause"

[plugins.'io.containerd.cri.v1.runtime']
  # root in this kind of VM lacks CAP_SYS_RESOURCE: it cannot lower oom_score_adj, and the
  # sandbox asks for -998. Without this every sandbox fails ("can't get final child's PID").
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$NODE_BIN/cni"]
    conf_dir = "$N/cni/net.d"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "$NODE_BIN/runc"
      SystemdCgroup = false
EOF
  cat > "$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host is cgroup v1 (with a cgroup2 hierarchy at /sys/fs/cgroup/unified); kubelet >= 1.35
# refuses cgroup v1 unless told not to. See docs/local-control-plane.md.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$N/containerd.sock
address: $POD_GATEWAY
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $DIR/pki/kubelet.crt
tlsPrivateKeyFile: $DIR/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization:
  mode: Webhook
enforceNodeAllocatable: []
# Imported images cannot be pulled again: never garbage-collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
EOF
  client_kubeconfig "$APISERVER" kubelet "system:node:$n" > "$N/kubelet.kubeconfig"
  client_kubeconfig "$APISERVER" kube-proxy system:kube-proxy > "$N/kube-proxy.kubeconfig"
  cat > "$N/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $N/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: $n
clusterCIDR: $POD_CIDR
bindAddress: $POD_GATEWAY
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: ["$POD_GATEWAY/32"]
# Leave the host's conntrack sysctls alone (0 = do not set).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
}

# Imports the chart's images (hack/images.sh archives) into containerd's k8s.io namespace under
# the names the chart uses by default. Without archives, builds them (cargo + buildah).
load_images() {
  local dir=${RINGMASTER_IMAGES_DIR:-${CARGO_TARGET_DIR:-$HERE/../target}/images} f
  if [[ ! -s $dir/ringmaster-operator.oci.tar || ! -s $dir/ringmaster-agent.oci.tar ]]; then
    log "no image archives in $dir: building them (hack/images.sh)"
    "$HERE/images.sh" --out "$dir" >&2
  fi
  log "importing the chart's images from $dir into containerd (k8s.io)"
  for f in "$dir/ringmaster-operator.oci.tar" "$dir/ringmaster-agent.oci.tar"; do
    ctr_k8s images import "$f" >/dev/null 2>&1 || die "importing $f into containerd failed"
  done
}

ctr_k8s() { "$NODE_BIN/ctr" --address "$DIR/node/containerd.sock" -n k8s.io "$@"; }

real_node_up() {
  local N=$DIR/node n t0=$SECONDS; n=$(node_name)
  KUBELET_PORT=$(claim_port); KUBELET_HEALTHZ_PORT=$(claim_port)
  PROXY_HEALTHZ_PORT=$(claim_port); PROXY_METRICS_PORT=$(claim_port)
  node_pki
  write_node_configs
  local KC=$DIR/admin.kubeconfig
  # The API server dials kubelets with this identity; the kubelet's webhook authorizer asks RBAC.
  "$BIN/kubectl" --kubeconfig="$KC" create clusterrolebinding ringmaster:apiserver-kubelet-client \
    --clusterrole=system:kubelet-api-admin --user=kube-apiserver-kubelet-client >/dev/null

  # (PATH: containerd finds containerd-shim-runc-v2 there.)
  PATH="$NODE_BIN:$PATH" start containerd "$NODE_BIN/containerd" --config "$N/containerd/config.toml"
  wait_until containerd "containerd's socket" "$NODE_BIN/ctr" --address "$N/containerd.sock" version
  ctr_k8s images import "$NODE_BIN/pause.oci.tar" >/dev/null 2>&1 || die "importing the pause image failed"
  ctr_k8s images import "$NODE_BIN/busybox.oci.tar" >/dev/null 2>&1 || die "importing the busybox image failed"
  load_images

  # The agent's reader mounts data dirs with HostToContainer propagation, which containerd
  # allows only from a shared or slave mount. systemd makes / shared; without systemd it is
  # private here: share it (this mount only) like a systemd host; `down` makes it private again.
  if [[ $(findmnt -no PROPAGATION /) == private ]]; then mount --make-shared /; fi
  start kubelet "$BIN/kubelet" --config="$N/kubelet.yaml" --kubeconfig="$N/kubelet.kubeconfig" \
    --hostname-override="$n" --node-ip="$POD_GATEWAY" --root-dir="$KUBELET_ROOT" --v=1
  wait_until kubelet "Node $n Ready" \
    "$BIN/kubectl" --kubeconfig="$KC" wait --for=condition=Ready "node/$n" --timeout=2s
  # `kubectl logs/exec` go API server -> kubelet (InternalIP, our client cert): check that path.
  # (The API server's very first dial to a new kubelet fails here now and then with "use of
  # closed network connection"; the retry absorbs it.)
  wait_until kubelet "the API server reaching the kubelet (nodes/$n/proxy/healthz)" \
    "$BIN/kubectl" --kubeconfig="$KC" get --raw "/api/v1/nodes/$n/proxy/healthz"
  start kube-proxy "$BIN/kube-proxy" --config="$N/kube-proxy.yaml"
  wait_until kube-proxy "kube-proxy /healthz" curl -sf "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
  # Pods find the API server through the `kubernetes` Service: wait until kube-proxy programs it.
  wait_until kube-proxy "the kubernetes Service's iptables rules" \
    bash -c "iptables-save -t nat | grep -q 'default/kubernetes:https'"
  echo "$n" > "$N/name"
  log "real node $n Ready in $((SECONDS - t0))s (pods on $POD_BRIDGE $POD_CIDR; kubelet, containerd, kube-proxy logs in $DIR/logs)"
}

# --- tear-down ---------------------------------------------------------------------------------------
mounts_under() { # prefixes... -> mount points below them, deepest first
  awk '{print $5}' /proc/self/mountinfo | while read -r m; do
    local p; for p in "$@"; do [[ $m == "$p" || $m == "$p"/* ]] && echo "$m"; done
  done | awk '{print length, $0}' | sort -rn | cut -d' ' -f2- | uniq
}

kill_procs_with_exe() { # path : every process whose executable is that file (our shims)
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    [[ $exe == "$1" ]] && kill -KILL "${p#/proc/}" 2>/dev/null
  done
  return 0
}

remove_cgroups() { # our pods' cgroups in every hierarchy: kill what is left, rmdir deepest first
  local root d
  for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d $root ]] || continue
    find "$root" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  sleep 0.2
  for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d $root ]] || continue
    find "$root" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ -d $root ]] && log "warning: could not remove cgroup $root"
  done
  return 0
}

real_node_down() {
  local N=$DIR/node
  [[ -d $N ]] || return 0
  local KC=$DIR/admin.kubeconfig
  # Let our agents release the node first (labels, taint, fs.aio-max-nr, their state) while
  # the API server and the kubelet still run.
  if alive kube-apiserver && alive kubelet; then
    "$BIN/kubectl" --kubeconfig="$KC" delete storageclusters.ringmaster.io -A --all --wait=true --timeout=60s >/dev/null 2>&1 || true
  fi
  local name pid
  for name in kube-proxy kubelet; do
    alive "$name" || continue
    pid=$(cat "$DIR/pids/$name"); kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$name" || break; sleep 0.1; done
    alive "$name" && kill -KILL "$pid" 2>/dev/null || true
  done
  # Every pod sandbox: stop its containers, tear down its network (CNI DEL), remove it.
  if alive containerd; then
    timeout 60 "$NODE_BIN/crictl" --runtime-endpoint "unix://$N/containerd.sock" rmp -fa >/dev/null 2>&1 || true
    pid=$(cat "$DIR/pids/containerd"); kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive containerd || break; sleep 0.1; done
    alive containerd && kill -KILL "$pid" 2>/dev/null || true
  fi
  kill_procs_with_exe "$NODE_BIN/containerd-shim-runc-v2"
  remove_cgroups
  local m
  while read -r m; do [[ -n $m ]] && umount -l "$m" 2>/dev/null; done \
    < <(mounts_under "$KUBELET_ROOT" "$N" "$CONTAINERD_STATE" /run/containerd /var/run/netns /run/netns)
  # Network namespaces the CNI made for our pods (not in the snapshot).
  local ns
  for ns in $(ls /var/run/netns 2>/dev/null); do
    grep -qxF "$ns" "$N/host-before/netns" 2>/dev/null || rm -f "/var/run/netns/$ns"
  done
  [[ -f $N/bridge ]] && ip link del "$(cat "$N/bridge")" 2>/dev/null
  # kube-proxy's and the CNI plugins' rules, then the host's own as they were.
  [[ -x $BIN/kube-proxy ]] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1
  restore_host
  local d
  while read -r d; do
    [[ -n $d ]] || continue
    # Our agents' host state dir may be shared with other users of this host: remove only
    # the files our agents write there, then the dir if that leaves it empty.
    if [[ $d == /var/lib/ringmaster ]]; then
      rm -f "$d"/aio-max-nr.json "$d"/aio.env "$d"/aio.toml; rmdir "$d" 2>/dev/null || true
    else rm -rf "$d"; fi
  done < "$N/host-before/absent-dirs"
  rm -rf "$N/containerd/root" 2>/dev/null || true
  [[ $(cat "$REAL_NODE_OWNER" 2>/dev/null) == "$DIR" ]] && rm -f "$REAL_NODE_OWNER"
  log "real node down: host restored"
}
