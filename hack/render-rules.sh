#!/usr/bin/env bash
# Prints the alerting rules the chart ships, as a plain Prometheus rule file: `helm template`
# of templates/prometheusrule.yaml with the rules enabled, keeping the PrometheusRule's
# `spec` (its `groups:`). Extra arguments go to helm (e.g. `--set
# monitoring.prometheusRule.alerts.RingmasterAioHeadroomLow.for=0s`), so tests run the
# shipped rules with their own values, never a copy.
#   hack/render-rules.sh [helm template args...] > rules.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
command -v helm >/dev/null || PATH="$(hack/build-tools.sh helm):$PATH"
rendered=$(helm template ringmaster charts/ringmaster --namespace ringmaster-system --kube-version 1.33.0 \
  --api-versions monitoring.coreos.com/v1/PrometheusRule \
  --set monitoring.prometheusRule.enabled=true \
  --show-only templates/prometheusrule.yaml "$@")
# The spec, de-indented: everything after the top-level `spec:` line.
rules=$(awk 'found { print substr($0, 3) } /^spec:$/ { found = 1 }' <<<"$rendered")
if [[ $rules != groups:* ]]; then
  echo "render-rules: no spec.groups in the rendered PrometheusRule:" >&2
  echo "$rendered" >&2
  exit 1
fi
printf '%s\n' "$rules"
