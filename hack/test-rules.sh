#!/usr/bin/env bash
# The chart's alerting rules, tested without a cluster: render them from the chart
# (hack/render-rules.sh), `promtool check rules`, then `promtool test rules` on synthetic
# series (charts/ringmaster/tests/alerts.test.yaml). Needs helm and promtool (Debian's
# prometheus package; hack/deps.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
# helm of the project's version (hack/build-tools.sh caches it) unless one is on PATH.
command -v helm >/dev/null || PATH="$(hack/build-tools.sh helm):$PATH"
work=$(mktemp -d "${TMPDIR:-/tmp}/ringmaster-rules.XXXXXX")
trap 'rm -rf "$work"' EXIT
hack/render-rules.sh > "$work/rules.yaml"
promtool check rules "$work/rules.yaml"
# rule_files in the test are relative to the test file: put both side by side.
cp charts/ringmaster/tests/alerts.test.yaml "$work/"
promtool test rules "$work/alerts.test.yaml"
