#!/usr/bin/env bash
# The crates that must not know Kubernetes: ringmaster-ring (host core: probes, sysctls, read
# workers) and ringmaster-serve (HTTP read service). Fails if kube, k8s-openapi or any kube-*
# crate is anywhere in their normal (non-dev) dependency tree, naming the path that pulls it in.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for crate in ringmaster-ring ringmaster-serve; do
  tree=$(cargo tree --locked -q -p "$crate" -e normal --prefix none --no-dedupe)
  if bad=$(grep -E '^(kube|kube-[a-z-]+|k8s-openapi) ' <<<"$tree" | sort -u) && [[ -n $bad ]]; then
    echo "check-boundaries: $crate depends on Kubernetes crates:" >&2
    sed 's/^/  /' <<<"$bad" >&2
    first=$(head -1 <<<"$bad" | awk '{print $1}')
    echo "  how $first gets in (cargo tree -i):" >&2
    cargo tree --locked -q -p "$crate" -e normal -i "$first" --depth 4 | sed 's/^/    /' >&2
    echo "  keep Kubernetes in the agent's cluster/ module or the operator; $crate must stay kube-free" >&2
    status=1
  else
    echo "check-boundaries: $crate: no kube / k8s-openapi in its dependency tree"
  fi
done
exit $status
