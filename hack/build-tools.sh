#!/usr/bin/env bash
# Builds the local control-plane tools from Go modules into a cache outside the repo.
# Idempotent: each tool is rebuilt only when its versioned binary is missing, and each lands
# under its final name only once complete (built in a scratch dir, then mv).
#   hack/build-tools.sh            -> prints the control-plane bin dir
#   hack/build-tools.sh node       -> builds what a real node needs (kubelet and kube-proxy into
#                                     the control-plane bin dir; containerd, runc, CNI plugins,
#                                     crictl and a pause image into a node dir) and prints the node dir
# Versions can be overridden by env: K8S_VERSION, ETCD_VERSION, KWOK_VERSION, HELM_VERSION,
# CONTAINERD_VERSION, RUNC_VERSION, CNI_VERSION, CRICTL_VERSION.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.36.3}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
KWOK_VERSION=${KWOK_VERSION:-0.8.0}
HELM_VERSION=${HELM_VERSION:-3.22.0}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-2.4.2}
RUNC_VERSION=${RUNC_VERSION:-1.3.3}
CNI_VERSION=${CNI_VERSION:-1.10.0}
CRICTL_VERSION=${CRICTL_VERSION:-1.37.0}
# The sandbox ("pause") image is built here from a few lines of C; bump when pause.c changes.
PAUSE_VERSION=1
CACHE=${RINGMASTER_CACHE:-$HOME/.cache/ringmaster}
BIN="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
NODE_BIN="$CACHE/bin/node-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-cni-$CNI_VERSION-crictl-$CRICTL_VERSION-pause-$PAUSE_VERSION"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
mkdir -p "$BIN" "$NODE_BIN"
# One build at a time per bin dir (two clusters may start at once on a fresh machine).
lock_bin() { exec 9>"$BIN.lock"; flock 9; }
lock_node_bin() { exec 8>"$NODE_BIN.lock"; flock 8; }

log() { echo "build-tools: $*" >&2; }

# Wrapper module: k8s.io/kubernetes pins its staging modules at v0.0.0 with local
# replaces, so `go install` refuses it; we replace each with the matching v0.MINOR.PATCH.
# One wrapper module for every k8s binary, so the kubelet and kube-proxy reuse the control
# plane's warm Go cache; only the missing binaries are built.
KUBE_CONTROL_PLANE=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
KUBE_NODE=(kubelet kube-proxy)
build_kube() { # binary names
  local want=() b
  for b in "$@"; do [[ -x $BIN/$b ]] || want+=("$b"); done
  ((${#want[@]})) || return 0
  log "building kubernetes v$K8S_VERSION: ${want[*]} (cold: 15-30 min)"
  local MIN PATCH W MOD
  MIN=$(echo "$K8S_VERSION" | cut -d. -f2); PATCH=${K8S_VERSION##*.}
  W=$(mktemp -d); pushd "$W" >/dev/null
  go mod init local/k8sbin >/dev/null 2>&1
  MOD=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  if grep -qE '^godebug' "$MOD"; then
    while read -r kv; do go mod edit -godebug="$kv"; done < <(sed -n 's/^godebug \(.*=.*\)$/\1/p' "$MOD")
  fi
  for m in $(awk '$2=="v0.0.0"{print $1}' "$MOD"); do go mod edit -replace="$m=$m@v0.$MIN.$PATCH"; done
  local pkgs=(); for b in "${want[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  go get "${pkgs[@]/%/@v$K8S_VERSION}" >&2
  local LD="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LD="$LD -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MIN -X $p.gitTreeState=clean"
  done
  # Into a scratch dir first: a half-written binary must never look like a built one.
  mkdir -p "$W/out"
  go build -trimpath -ldflags "$LD" -o "$W/out/" "${pkgs[@]}" >&2
  for b in "${want[@]}"; do mv "$W/out/$b" "$BIN/$b"; done
  popd >/dev/null; rm -rf "$W"
}

build_simple() { # name module pkg version ldflags [dest-dir] [go build flags...]
  local name=$1 mod=$2 pkg=$3 ver=$4 ld=${5:-} dest=${6:-$BIN}
  shift $(($# < 6 ? $# : 6))
  [[ -x $dest/$name ]] && return
  log "building $name $ver"
  local W; W=$(mktemp -d); pushd "$W" >/dev/null
  go mod init "local/$name" >/dev/null 2>&1
  go get "$pkg@$ver" >&2
  go build -trimpath "$@" -ldflags "-s -w $ld" -o "$W/$name" "$pkg" >&2
  mv "$W/$name" "$dest/$name"
  popd >/dev/null; rm -rf "$W"
}

build_etcd() {
  build_simple etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 "v$ETCD_VERSION"
}
build_kwok() {
  build_simple kwok sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok "v$KWOK_VERSION" \
    "-X sigs.k8s.io/kwok/pkg/consts.Version=v$KWOK_VERSION"
  # kwok stage definitions live in the module source; join the ones we use into one file.
  # (Named files only: the stage dirs also hold kustomization.yaml, which is no Stage.)
  if [[ ! -s $BIN/kwok-stages.yaml ]] || grep -q '^kind: Kustomization' "$BIN/kwok-stages.yaml"; then
    local dir; dir=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kwok@v$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
    local s=$dir/kustomize/stage
    { for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
               pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
        echo "---"; cat "$s/$f.yaml"; done; } > "$BIN/kwok-stages.yaml.tmp"
    mv "$BIN/kwok-stages.yaml.tmp" "$BIN/kwok-stages.yaml"
  fi
}
build_helm() {
  build_simple helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "v$HELM_VERSION" \
    "-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
}

# --- a real node ------------------------------------------------------------------------
build_containerd() {
  local want=(containerd containerd-shim-runc-v2 ctr) b missing=0
  for b in "${want[@]}"; do [[ -x $NODE_BIN/$b ]] || missing=1; done
  ((missing)) || return 0
  log "building containerd v$CONTAINERD_VERSION"
  local W M=github.com/containerd/containerd/v2; W=$(mktemp -d); pushd "$W" >/dev/null
  go mod init local/containerd >/dev/null 2>&1
  local pkgs=("$M/cmd/containerd" "$M/cmd/containerd-shim-runc-v2" "$M/cmd/ctr")
  go get "${pkgs[@]/%/@v$CONTAINERD_VERSION}" >&2
  mkdir -p out
  go build -trimpath -tags "no_btrfs urfave_cli_no_docs" \
    -ldflags "-s -w -X $M/version.Version=v$CONTAINERD_VERSION" -o out/ "${pkgs[@]}" >&2
  for b in "${want[@]}"; do mv "out/$b" "$NODE_BIN/$b"; done
  popd >/dev/null; rm -rf "$W"
}
build_runc() { # cgo + libseccomp: runc applies the pods' seccomp profiles itself
  [[ -f /usr/include/seccomp.h ]] || { echo "build-tools: runc needs libseccomp-dev (hack/apt-packages.txt; run hack/deps.sh)" >&2; exit 1; }
  CGO_ENABLED=1 build_simple runc github.com/opencontainers/runc github.com/opencontainers/runc "v$RUNC_VERSION" \
    "-X main.version=$RUNC_VERSION" "$NODE_BIN" -tags seccomp
}
build_cni() {
  local want=(bridge host-local loopback portmap) b missing=0
  for b in "${want[@]}"; do [[ -x $NODE_BIN/cni/$b ]] || missing=1; done
  ((missing)) || return 0
  log "building CNI plugins v$CNI_VERSION"
  local W M=github.com/containernetworking/plugins/plugins; W=$(mktemp -d); pushd "$W" >/dev/null
  go mod init local/cni >/dev/null 2>&1
  local pkgs=("$M/main/bridge" "$M/ipam/host-local" "$M/main/loopback" "$M/meta/portmap")
  go get "${pkgs[@]/%/@v$CNI_VERSION}" >&2
  mkdir -p out "$NODE_BIN/cni"
  go build -trimpath -ldflags "-s -w" -o out/ "${pkgs[@]}" >&2
  for b in "${want[@]}"; do mv "out/$b" "$NODE_BIN/cni/$b"; done
  popd >/dev/null; rm -rf "$W"
}
build_crictl() {
  build_simple crictl sigs.k8s.io/cri-tools sigs.k8s.io/cri-tools/cmd/crictl "v$CRICTL_VERSION" \
    "-X sigs.k8s.io/cri-tools/pkg/version.Version=v$CRICTL_VERSION" "$NODE_BIN"
}
# The sandbox image: no registry here, so a static pause (sleeps until SIGTERM/SIGINT) in an
# OCI archive that the node imports into containerd. Its name is in $NODE_BIN/pause.ref.
build_pause() {
  [[ -s $NODE_BIN/pause.oci.tar && -s $NODE_BIN/pause.ref ]] && return
  log "building the pause image"
  command -v buildah >/dev/null || { echo "build-tools: the pause image needs buildah (hack/apt-packages.txt)" >&2; exit 1; }
  local W ref=localhost/ringmaster/pause:$PAUSE_VERSION; W=$(mktemp -d)
  cat > "$W/pause.c" <<'C'
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
static void bye(int sig) { (void)sig; _exit(0); }
int main(void) {
  signal(SIGINT, bye); signal(SIGTERM, bye);
  for (;;) pause();
}
C
  gcc -static -Os -s -o "$W/pause" "$W/pause.c"
  local B=(buildah --root "$W/storage" --runroot "$W/run" --storage-driver vfs) c
  c=$("${B[@]}" from --quiet scratch)
  "${B[@]}" copy --quiet "$c" "$W/pause" /pause >/dev/null
  "${B[@]}" config --entrypoint '["/pause"]' --cmd '' --user 65535:65535 "$c"
  "${B[@]}" commit --quiet --format oci "$c" "oci-archive:$W/pause.oci.tar:$ref" >/dev/null
  "${B[@]}" rm --all >/dev/null 2>&1 || true
  mv "$W/pause.oci.tar" "$NODE_BIN/pause.oci.tar"
  echo "$ref" > "$NODE_BIN/pause.ref.tmp" && mv "$NODE_BIN/pause.ref.tmp" "$NODE_BIN/pause.ref"
  rm -rf "$W"
}
# The examples' workloads use busybox:1.36; with no registry, the node gets Debian's static
# busybox under that name (docker.io/library/busybox:1.36), built the same way as pause.
build_busybox() {
  [[ -s $NODE_BIN/busybox.oci.tar ]] && return
  log "building the busybox image (Debian busybox-static)"
  [[ -x /bin/busybox ]] && /bin/busybox --list >/dev/null 2>&1 \
    || { echo "build-tools: the busybox image needs busybox-static (hack/apt-packages.txt)" >&2; exit 1; }
  local W ref=docker.io/library/busybox:1.36; W=$(mktemp -d)
  local B=(buildah --root "$W/storage" --runroot "$W/run" --storage-driver vfs) c m a
  c=$("${B[@]}" from --quiet scratch)
  m=$("${B[@]}" mount "$c")
  install -D -m 0755 /bin/busybox "$m/bin/busybox"
  for a in $(/bin/busybox --list); do [[ $a == busybox ]] || ln -s busybox "$m/bin/$a"; done
  mkdir -p "$m/etc" "$m/tmp"; chmod 1777 "$m/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$m/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' > "$m/etc/group"
  "${B[@]}" umount "$c" >/dev/null
  "${B[@]}" config --cmd '["sh"]' --env PATH=/bin \
    --label org.opencontainers.image.version="$(/bin/busybox | sed -n '1s/^BusyBox \(v[^ ]*\).*/\1/p') (Debian busybox-static)" "$c"
  "${B[@]}" commit --quiet --format oci "$c" "oci-archive:$W/busybox.oci.tar:$ref" >/dev/null
  "${B[@]}" rm --all >/dev/null 2>&1 || true
  mv "$W/busybox.oci.tar" "$NODE_BIN/busybox.oci.tar"
  rm -rf "$W"
}
what=${1:-all}
case $what in
  node) # the node tools first: they need not wait for a control-plane build holding $BIN's lock
    lock_node_bin; build_containerd; build_runc; build_cni; build_crictl; build_pause; build_busybox
    lock_bin; build_kube "${KUBE_NODE[@]}"
    echo "$NODE_BIN"; exit 0 ;;
  all) lock_bin; build_etcd; build_kwok; build_helm; build_kube "${KUBE_CONTROL_PLANE[@]}" ;;
  kube) lock_bin; build_kube "${KUBE_CONTROL_PLANE[@]}" "${KUBE_NODE[@]}" ;;
  etcd) lock_bin; build_etcd ;; kwok) lock_bin; build_kwok ;; helm) lock_bin; build_helm ;;
  *) echo "usage: $0 [all|node|kube|etcd|kwok|helm]" >&2; exit 2 ;;
esac
echo "$BIN"
