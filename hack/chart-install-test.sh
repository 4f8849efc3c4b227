#!/usr/bin/env bash
# Installs the chart on a local control plane (hack/local-cluster.sh, fake
# nodes) and checks what GitOps and platform teams rely on:
#   - a CRD installed without Helm (an earlier chart's crds/ directory, or by
#     hand) is adopted with the commands of docs/upgrading.md, then installed;
#   - `helm upgrade` changes the CRD (it is a template of the release);
#   - namespace users with `edit` may manage WhatsAppNumbers and users with
#     `view` may only read them (aggregated ClusterRoles);
#   - `helm uninstall` keeps the CRD.
# The cluster lives in .cache/chart-install-cluster and is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="$(hack/tools.sh ensure)"
HELM="$TOOLS/helm"
KUBECTL="$TOOLS/kubectl"
CRD=whatsappnumbers.whatsapp.operators.dev
RELEASE=whatsapp-operator
NS=whatsapp-operator
export WAO_CLUSTER_DIR="${WAO_CHART_CLUSTER_DIR:-$PWD/.cache/chart-install-cluster}"
log() { echo "[chart-install] $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

trap 'hack/local-cluster.sh down >/dev/null 2>&1 || true' EXIT
KUBECONFIG="$(hack/local-cluster.sh up 2>/dev/null | tail -n 1)"
export KUBECONFIG
k() { "$KUBECTL" "$@"; }
helm() { "$HELM" "$@"; }

log "a CRD installed without Helm, as an earlier chart did"
k create namespace "$NS" >/dev/null
k apply --server-side -f "crds/$CRD.yaml" >/dev/null
if out="$(helm install "$RELEASE" charts/whatsapp-operator -n "$NS" 2>&1)"; then
  fail "helm install took over a CRD it does not own"
fi
grep -q "invalid ownership metadata" <<<"$out" || fail "unexpected error: $out"

log "adoption as docs/upgrading.md says, then install"
k label crd "$CRD" app.kubernetes.io/managed-by=Helm --overwrite >/dev/null
k annotate crd "$CRD" --overwrite \
  meta.helm.sh/release-name="$RELEASE" \
  meta.helm.sh/release-namespace="$NS" >/dev/null
helm install "$RELEASE" charts/whatsapp-operator -n "$NS" >/dev/null
[ "$(k get crd "$CRD" -o jsonpath='{.metadata.annotations.helm\.sh/resource-policy}')" = keep ] \
  || fail "the CRD is not kept on uninstall"

log "helm upgrade upgrades the CRD"
helm upgrade "$RELEASE" charts/whatsapp-operator -n "$NS" --reuse-values \
  --set crds.annotations.example\\.dev/upgraded=yes >/dev/null
[ "$(k get crd "$CRD" -o jsonpath='{.metadata.annotations.example\.dev/upgraded}')" = yes ] \
  || fail "helm upgrade did not change the CRD"

log "namespace users: edit manages WhatsAppNumbers, view reads them"
k create namespace team-a >/dev/null
k create rolebinding alice-edit -n team-a --clusterrole=edit --user=alice >/dev/null
k create rolebinding bob-view -n team-a --clusterrole=view --user=bob >/dev/null
can() { k auth can-i "$1" "$CRD" -n team-a --as "$2" 2>/dev/null || true; }
for _ in $(seq 1 30); do # the aggregation controller fills the roles in
  [ "$(can create alice)" = yes ] && [ "$(can list bob)" = yes ] && break
  sleep 1
done
[ "$(can create alice)" = yes ] || fail "edit may not create WhatsAppNumbers"
[ "$(can delete alice)" = yes ] || fail "edit may not delete WhatsAppNumbers"
[ "$(can list bob)" = yes ] || fail "view may not list WhatsAppNumbers"
[ "$(can create bob)" = no ] || fail "view may create WhatsAppNumbers"
[ "$(k auth can-i patch "$CRD" --subresource=status -n team-a --as alice 2>/dev/null || true)" = no ] \
  || fail "edit may write the status, which is the operator's"

log "helm uninstall keeps the CRD"
helm uninstall "$RELEASE" -n "$NS" >/dev/null
k get crd "$CRD" >/dev/null 2>&1 || fail "the CRD went with the release"
log "ok"
