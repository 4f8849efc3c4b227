#!/usr/bin/env bash
# Tests the Argo CD health checks under deploy/argocd/resource_customizations
# the way Argo CD tests its own: every case of health_test.yaml runs health.lua
# over its fixture, and status and message must match. Runs under every Lua
# interpreter found among lua5.1 (Argo CD embeds a Lua 5.1) and lua5.4; needs
# at least one, and python3 with PyYAML to read the fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."

interpreters=()
for lua in lua5.1 lua5.4; do
  command -v "$lua" >/dev/null && interpreters+=("$lua")
done
if [ "${#interpreters[@]}" -eq 0 ]; then
  echo "argocd-health: no Lua interpreter (apt-get install lua5.1 lua5.4)" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

status=0
while IFS= read -r test; do
  dir="$(dirname "$test")"
  echo "== ${dir#deploy/argocd/resource_customizations/}"
  # Every fixture must be exercised by a case.
  for fixture in "$dir"/testdata/*.yaml; do
    if ! grep -q "inputPath: testdata/$(basename "$fixture")\$" "$test"; then
      echo "FAIL $fixture is not used by $test"
      status=1
    fi
  done
  python3 hack/argocd-health/cases.py "$test" > "$work/cases.lua"
  for lua in "${interpreters[@]}"; do
    "$lua" hack/argocd-health/run.lua "$dir/health.lua" "$work/cases.lua" || status=1
  done
done < <(find deploy/argocd/resource_customizations -name health_test.yaml | sort)
exit "$status"
