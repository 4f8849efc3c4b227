#!/usr/bin/env bash
# The project's test command: everything CI runs, in order.
#   1. the pinned control-plane tools (built from Go modules once, then cached);
#   2. private MariaDB and PostgreSQL on loopback for the emulator tests;
#   3. format and lint checks (rustfmt, clippy), the chart (helm lint +
#      template, both scopes);
#   4. cargo test for the whole workspace: unit tests, the CRD drift check,
#      the emulator against both databases, and the integration suite on a
#      real control plane started by the suite itself (with an audit log);
#   5. the chart's RBAC against the operator's requests in that audit log;
#   6. the integration suite again on the lowest supported Kubernetes release;
#   7. with WAO_TEST_REAL_NODE=1 (root): the e2e suite on a real node
#      (tests/e2e/run.sh --provider local).
# Each stage prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[test] $*" >&2; }
STAGE_T=$SECONDS
# Free space with each stage: a full disk stops etcd and fails everything after.
free_disk() { df -h --output=avail . | tail -1 | tr -d ' '; }
stage_done() { log "$1 took $((SECONDS - STAGE_T))s ($(free_disk) free)"; STAGE_T=$SECONDS; }

TOOLS="$(hack/tools.sh ensure)"
export PATH="$TOOLS:$PATH"
log "tools in $TOOLS ($(hack/tools.sh versions))"
stage_done "tools"

log "starting the test databases"
eval "$(hack/databases.sh up >/dev/null && hack/databases.sh env)"
trap 'hack/databases.sh down >/dev/null 2>&1 || true' EXIT
stage_done "test databases"

log "checking formatting, lints and the chart"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
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
shellcheck hack/argocd-health.sh hack/check-tools.sh hack/chart-checks.sh hack/helm-docs.sh hack/chart-install-test.sh hack/heap-profile.sh
"$(hack/check-tools.sh actionlint)" .github/workflows/*.yaml
# The chart on a local control plane: CRD adoption, upgrade and keep,
# aggregated view/edit roles (about 20 s).
log "installing, upgrading and uninstalling the chart on a local control plane"
hack/chart-install-test.sh
# ------------------------------------------------------------------------------

stage_done "GitOps and chart checks"

log "running the test suites"
# The integration suite's control plane keeps an audit log of the operator's
# ServiceAccounts for the RBAC check below.
AUDIT_LOG="$PWD/target/rbac-audit/audit.log"
rm -f "$AUDIT_LOG"; mkdir -p "$(dirname "$AUDIT_LOG")"
WAO_CLUSTER_AUDIT_LOG="$AUDIT_LOG" cargo test --workspace --locked -- "$@"
stage_done "cargo test"

# --- RBAC as small as the code needs -----------------------------------------
# Every (group, resource, subresource, verb) the chart grants the operator was
# used by it during the integration suite, and nothing it did was refused.
# Only meaningful after the whole suite on the suite's own cluster.
if [ $# -eq 0 ] && [ -z "${WAO_IT_KUBECONFIG:-}" ]; then
  log "checking the chart's RBAC against the operator's requests (audit log)"
  helm template wao charts/whatsapp-operator --namespace whatsapp-operator-system \
    --set rbac.scope=cluster >"$PWD/target/rbac-audit/chart.yaml"
  hack/rbac-audit.py "$AUDIT_LOG" "$PWD/target/rbac-audit/chart.yaml" whatsapp-operator-system
  stage_done "RBAC audit"
else
  log "skipping the RBAC audit (it needs the whole integration suite on its own cluster)"
fi
# ------------------------------------------------------------------------------

# --- The lowest supported Kubernetes release ----------------------------------
# The integration suite again, on the control plane of KUBERNETES_FLOOR_VERSION
# (hack/tools.sh floor: three binaries built from Go modules once, ~16 min from
# empty Go caches on a busy 2-core machine, then cached): the CRD's CEL rules,
# server-side apply and the chart's RBAC there.
FLOOR_TOOLS="$(hack/tools.sh floor)"
FLOOR_VERSION="$("$FLOOR_TOOLS/kube-apiserver" --version | awk '{print $2}')"
stage_done "tools of Kubernetes $FLOOR_VERSION (floor)"
if [ -z "${WAO_IT_KUBECONFIG:-}" ]; then
  log "integration suite on Kubernetes $FLOOR_VERSION"
  # --workspace: the same feature set as above, so nothing is rebuilt.
  WAO_TOOLS_DIR="$FLOOR_TOOLS" cargo test --workspace --locked --test integration -- "$@"
  stage_done "integration suite on Kubernetes $FLOOR_VERSION"
fi
# ------------------------------------------------------------------------------

# --- Real pods: the e2e suite on a real node of the local cluster ----------
shellcheck -x hack/node.sh hack/images.sh hack/tools.sh hack/local-cluster.sh hack/demo.sh \
  hack/lib/real-pods.sh tests/e2e/run.sh
# Opt-in (CI turns it on): it needs root and builds images and node binaries.
if [ "${WAO_TEST_REAL_NODE:-0}" = 1 ]; then
  hack/databases.sh down >/dev/null 2>&1 || true
  # A real node left by a cluster whose processes are gone (a restarted
  # machine) must not hold the machine: one is planted, `node.sh holder`
  # must tell it from a running one, and the suite's `up` must take over.
  stale=""
  if [ ! -e /run/wao-real-node.owner ]; then
    stale="$(mktemp -d)"
    mkdir "$stale/node"
    echo "$stale" >/run/wao-real-node.owner
    ! hack/node.sh holder >/dev/null || { log "FAILED: a node that runs nothing holds the machine"; exit 1; }
    bash -c 'sleep 30; :' "$stale/node/kubelet" &
    sleeper=$!
    sleep 1
    [ "$(hack/node.sh holder || true)" = "$stale" ] || { log "FAILED: a running node does not hold the machine"; exit 1; }
    kill "$sleeper"; wait "$sleeper" 2>/dev/null || true
  fi
  log "e2e suite on a real node (tests/e2e/run.sh --provider local)"
  tests/e2e/run.sh --provider local
  if [ -n "$stale" ]; then
    [ ! -e "$stale/node" ] || { log "FAILED: the stale real node in $stale was not removed"; exit 1; }
    rm -rf "$stale"
  fi
  stage_done "e2e on a real node"
fi
