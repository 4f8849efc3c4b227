#!/usr/bin/env bash
# The local demo: a real control plane on this machine (fake nodes, no images
# pulled), the CRD, the operator, and the HA example reconciled to Ready.
#   hack/demo.sh          bring it all up and show `kubectl get wan`
#   hack/demo.sh down     stop the operator and the control plane
# Afterwards: export KUBECONFIG=.cache/demo/cluster/kubeconfig
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR="${WAO_DEMO_DIR:-$PWD/.cache/demo}"
export WAO_CLUSTER_DIR="$DEMO_DIR/cluster"
NAMESPACE="${WAO_DEMO_NAMESPACE:-demo}"
EXAMPLE="${WAO_DEMO_EXAMPLE:-examples/ha-mysql.yaml}"
log() { echo "[demo] $*" >&2; }

stop_operator() {
  if [ -f "$DEMO_DIR/operator.pid" ]; then
    kill "$(cat "$DEMO_DIR/operator.pid")" 2>/dev/null || true
    rm -f "$DEMO_DIR/operator.pid"
  fi
}

if [ "${1:-up}" = "down" ]; then
  stop_operator
  hack/local-cluster.sh down
  exit 0
fi

mkdir -p "$DEMO_DIR"
TOOLS="$(hack/tools.sh ensure)"
KUBECTL="$TOOLS/kubectl"
log "starting the local control plane (first run builds the Kubernetes binaries from Go modules)"
KUBECONFIG="$(hack/local-cluster.sh up)"
export KUBECONFIG

log "building the operator"
cargo build --quiet --bin whatsapp-operator

log "installing the CRD"
"$KUBECTL" apply --server-side -f crds/ >/dev/null
"$KUBECTL" wait --for=condition=Established crd/whatsappnumbers.whatsapp.operators.dev --timeout=60s >/dev/null

stop_operator
log "running the operator (log: $DEMO_DIR/operator.log)"
nohup target/debug/whatsapp-operator --operator-namespace default --metrics-address 127.0.0.1:0 \
  >"$DEMO_DIR/operator.log" 2>&1 &
echo $! >"$DEMO_DIR/operator.pid"

"$KUBECTL" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
log "applying $EXAMPLE in namespace $NAMESPACE"
"$KUBECTL" -n "$NAMESPACE" apply -f "$EXAMPLE"
name="$("$KUBECTL" -n "$NAMESPACE" get wan -o jsonpath='{.items[0].metadata.name}')"
log "waiting for $name to be Ready"
"$KUBECTL" -n "$NAMESPACE" wait --for=condition=Ready "wan/$name" --timeout=180s >/dev/null

echo
"$KUBECTL" -n "$NAMESPACE" get wan -o wide
echo
"$KUBECTL" -n "$NAMESPACE" get wan "$name" \
  -o custom-columns='CONDITION:.status.conditions[*].type,STATUS:.status.conditions[*].status,REASON:.status.conditions[*].reason'
echo
"$KUBECTL" -n "$NAMESPACE" get statefulsets,deployments,pods,pvc -l "app.kubernetes.io/instance=$name"
cat <<MSG

The demo is running. Try:
  export KUBECONFIG=$KUBECONFIG PATH=$TOOLS:\$PATH
  kubectl -n $NAMESPACE describe wan $name
  kubectl -n $NAMESPACE patch wan $name --type merge -p '{"spec":{"multiconnect":{"shards":2}}}'
Stop it with: hack/demo.sh down
MSG
