#!/usr/bin/env bash
# Builds the local control-plane tools from Go modules into a cache outside the repo.
# Idempotent: each tool is rebuilt only when its versioned binary is missing.
#   hack/build-tools.sh            -> prints the bin dir
# Versions can be overridden by env: K8S_VERSION, ETCD_VERSION, KWOK_VERSION, HELM_VERSION.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.36.3}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
KWOK_VERSION=${KWOK_VERSION:-0.8.0}
HELM_VERSION=${HELM_VERSION:-3.22.0}
CACHE=${RINGMASTER_CACHE:-$HOME/.cache/ringmaster}
BIN="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
mkdir -p "$BIN"
# One build at a time per cache (two clusters may start at once on a fresh machine).
exec 9>"$BIN.lock"
flock 9

log() { echo "build-tools: $*" >&2; }

# Wrapper module: k8s.io/kubernetes pins its staging modules at v0.0.0 with local
# replaces, so `go install` refuses it; we replace each with the matching v0.MINOR.PATCH.
build_kube() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  local missing=0; for b in "${want[@]}"; do [[ -x $BIN/$b ]] || missing=1; done
  [[ $missing == 0 ]] && return
  log "building kubernetes v$K8S_VERSION (cold: 15-30 min)"
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

build_simple() { # name module pkg version ldflags
  local name=$1 mod=$2 pkg=$3 ver=$4 ld=${5:-}
  [[ -x $BIN/$name ]] && return
  log "building $name $ver"
  local W; W=$(mktemp -d); pushd "$W" >/dev/null
  go mod init "local/$name" >/dev/null 2>&1
  go get "$pkg@$ver" >&2
  go build -trimpath -ldflags "-s -w $ld" -o "$W/$name" "$pkg" >&2
  mv "$W/$name" "$BIN/$name"
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

what=${1:-all}
case $what in
  all) build_etcd; build_kwok; build_helm; build_kube ;;
  kube) build_kube ;; etcd) build_etcd ;; kwok) build_kwok ;; helm) build_helm ;;
  *) echo "usage: $0 [all|kube|etcd|kwok|helm]" >&2; exit 2 ;;
esac
echo "$BIN"
