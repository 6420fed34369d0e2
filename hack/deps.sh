#!/usr/bin/env bash
# Installs what the tests and benchmarks need, once: Debian packages from
# hack/apt-packages.txt and the Go-built control-plane and node tools (hack/build-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
while read -r pkg bin; do
  [[ -z $pkg || $pkg == \#* ]] && continue
  # The second field is a binary on PATH or, for libraries and headers, an absolute path.
  if [[ $bin == /* ]]; then [[ -e $bin ]] || missing+=("$pkg")
  else command -v "${bin:-$pkg}" >/dev/null 2>&1 || missing+=("$pkg"); fi
done < hack/apt-packages.txt
if ((${#missing[@]})); then
  echo "deps: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Go builds the control plane (hack/build-tools.sh); Debian's golang is too old for it.
command -v go >/dev/null || { echo "deps: Go (>= the go line of k8s.io/kubernetes's go.mod, 1.26 for 1.36) is needed to build the control plane" >&2; exit 1; }
hack/build-tools.sh all >/dev/null
# The real node's tools (kubelet, kube-proxy, containerd, runc, CNI plugins, crictl, pause image).
hack/build-tools.sh node >/dev/null
