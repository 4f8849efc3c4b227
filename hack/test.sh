#!/usr/bin/env bash
# The project's test command: everything CI runs, in order.
#   1. the pinned control-plane tools (built from Go modules once, then cached);
#   2. private MariaDB and PostgreSQL on loopback for the emulator tests;
#   3. format and lint checks, the chart (helm lint + template, both scopes);
#   4. cargo test for the whole workspace: unit tests, the CRD drift check,
#      the emulator against both databases, and the integration suite on a
#      real control plane started by the suite itself;
#   5. with WAO_TEST_REAL_NODE=1 (root): the e2e suite on a real node
#      (tests/e2e/run.sh --provider local).
# Each stage prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[test] $*" >&2; }
STAGE_T=$SECONDS
stage_done() { log "$1 took $((SECONDS - STAGE_T))s"; STAGE_T=$SECONDS; }

TOOLS="$(hack/tools.sh ensure)"
export PATH="$TOOLS:$PATH"
log "tools in $TOOLS ($(hack/tools.sh versions))"
stage_done "tools"

log "starting the test databases"
eval "$(hack/databases.sh up >/dev/null && hack/databases.sh env)"
trap 'hack/databases.sh down >/dev/null 2>&1 || true' EXIT
stage_done "test databases"

log "checking formatting and the chart"
cargo fmt --all -- --check
helm lint --strict charts/whatsapp-operator
for values in charts/whatsapp-operator/ci/*.yaml; do
  helm lint --strict charts/whatsapp-operator -f "$values" >/dev/null
  helm template wao charts/whatsapp-operator -f "$values" >/dev/null
done
helm template wao charts/whatsapp-operator >/dev/null
stage_done "format and chart checks"

# --- GitOps status contract -------------------------------------------------
# The Argo CD health check over its fixtures (Lua 5.1 and 5.4), then kstatus
# and the same check in Argo CD's own Lua interpreter over the same fixtures.
log "checking the GitOps status contract (Argo CD health, kstatus)"
hack/argocd-health.sh | grep -v '^ok '
(cd hack/kstatus && go test ./...)
# ------------------------------------------------------------------------------

# --- Chart: CRD template, alerts, dashboard, values table ---------------------
# promtool and helm-docs are built from Go modules once (hack/check-tools.sh).
log "checking the chart's CRD, alerts (promtool), dashboard and values table"
hack/chart-checks.sh
shellcheck hack/argocd-health.sh hack/check-tools.sh hack/chart-checks.sh hack/helm-docs.sh hack/chart-install-test.sh
"$(hack/check-tools.sh actionlint)" .github/workflows/*.yaml
# The chart on a local control plane: CRD adoption, upgrade and keep,
# aggregated view/edit roles (about 20 s).
log "installing, upgrading and uninstalling the chart on a local control plane"
hack/chart-install-test.sh
# ------------------------------------------------------------------------------

stage_done "GitOps and chart checks"

log "running the test suites"
cargo test --workspace --locked -- "$@"
stage_done "cargo test"

# --- Real pods: the e2e suite on a real node of the local cluster ----------
shellcheck -x hack/node.sh hack/images.sh hack/tools.sh hack/local-cluster.sh hack/demo.sh \
  hack/lib/real-pods.sh tests/e2e/run.sh
# Opt-in (CI turns it on): it needs root and builds images and node binaries.
if [ "${WAO_TEST_REAL_NODE:-0}" = 1 ]; then
  hack/databases.sh down >/dev/null 2>&1 || true
  log "e2e suite on a real node (tests/e2e/run.sh --provider local)"
  tests/e2e/run.sh --provider local
  stage_done "e2e on a real node"
fi
