# shellcheck shell=bash
# Real pods on this machine, shared by tests/e2e/run.sh (--provider local) and
# hack/demo.sh (real-node mode): the local control plane with one real node
# (hack/local-cluster.sh, hack/node.sh), the operator's and the emulator's
# images built here and imported into the node (hack/images.sh), services of
# this machine exposed to the pods, the emulator's gateway and the operator
# installed with its Helm chart. Sourced; the caller defines `log` and `fail`
# and sets RP_KUBECTL, RP_HELM and RP_KUBECONFIG before installing anything.

RP_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# rp_unavailable: prints why this machine cannot run a real node and
# succeeds; fails (prints nothing) when it can. A real node needs root, the
# node's Debian packages and debootstrap for the image base, and the one real
# node of the machine must be free (or be the one of $WAO_CLUSTER_DIR).
rp_unavailable() {
  local c owner
  if [ "$(id -u)" != 0 ]; then echo "not root"; return 0; fi
  for c in containerd runc ctr debootstrap socat conntrack iptables; do
    command -v "$c" >/dev/null || { echo "$c is not installed"; return 0; }
  done
  [ -x "${WAO_CNI_BIN_DIR:-/usr/lib/cni}/bridge" ] || { echo "the CNI plugins (containernetworking-plugins) are not in ${WAO_CNI_BIN_DIR:-/usr/lib/cni}"; return 0; }
  if owner="$(WAO_CLUSTER_DIR="${WAO_CLUSTER_DIR:-$RP_REPO/.cache/cluster}" "$RP_REPO/hack/node.sh" holder)"; then
    echo "the machine's real node belongs to the cluster in $owner"
    return 0
  fi
  return 1
}

# rp_cluster_up DIR PVS: the control plane with the real node and no fake
# nodes, in DIR with a pool of PVS volumes; prints the kubeconfig path.
rp_cluster_up() {
  WAO_CLUSTER_DIR="$1" WAO_CLUSTER_REAL_NODE=1 WAO_CLUSTER_NODES=0 WAO_CLUSTER_PVS="$2" \
    "$RP_REPO/hack/local-cluster.sh" up
}

# rp_images_load DIR PREFIX OPERATOR_IMAGE EMULATOR_REPO "VERSIONS" "ENV" [IMAGES_DIR]:
# release binaries, the images (the emulator's for each version, with ENV's
# NAME=value words baked in) and their import into the node of cluster DIR.
rp_images_load() {
  WAO_IMAGE_PREFIX="$2" WAO_OPERATOR_IMAGE="$3" WAO_EMULATOR_REPO="$4" WAO_EMULATOR_VERSIONS="$5" \
    WAO_EMULATOR_ENV="$6" WAO_IMAGES_DIR="${7:-$RP_REPO/.cache/images}" \
    WAO_CONTAINERD_ADDRESS="$1/node/containerd/containerd.sock" \
    "$RP_REPO/hack/images.sh" load
}

# rp_expose DIR NAME PORT HOST:PORT: a service of this machine (a database on
# loopback) for the pods of cluster DIR, as NAME.wao-host.svc:PORT.
rp_expose() {
  WAO_CLUSTER_DIR="$1" "$RP_REPO/hack/node.sh" expose "$2" "$3" "$4"
}

rp_kubectl() { "$RP_KUBECTL" --kubeconfig "$RP_KUBECONFIG" "$@"; }

# rp_install_gateway NAMESPACE IMAGE: the emulator's gateway (the stand-in for
# WhatsApp's servers) as a Deployment and the Service wa-gateway.NAMESPACE.svc:5222.
# The emulator's images have no default command: the pod names it.
rp_install_gateway() {
  log "installing the gateway (the stand-in for WhatsApp's servers) in $1"
  rp_kubectl apply -f - >&2 <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: wa-gateway, namespace: $1}
spec:
  selector: {matchLabels: {app: wa-gateway}}
  template:
    metadata: {labels: {app: wa-gateway}}
    spec:
      containers:
      - name: gateway
        image: $2
        imagePullPolicy: Never
        command: ["/opt/whatsapp/bin/whatsapp-emulator", "gateway"]
        ports: [{containerPort: 5222}]
        readinessProbe:
          tcpSocket: {port: 5222}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {name: wa-gateway, namespace: $1}
spec:
  selector: {app: wa-gateway}
  ports: [{port: 5222}]
EOF
}

# rp_install_operator NAMESPACE IMAGE_REPO IMAGE_TAG TIMEOUT [HELM_ARG...]: the
# operator as users install it, `helm upgrade --install` of the chart (two
# replicas, leader election, cluster-wide RBAC) with the image built here.
rp_install_operator() {
  local ns="$1" repo="$2" tag="$3" timeout="$4"
  shift 4
  log "installing the operator with Helm (charts/whatsapp-operator, image $repo:$tag)"
  "$RP_HELM" --kubeconfig "$RP_KUBECONFIG" upgrade --install whatsapp-operator "$RP_REPO/charts/whatsapp-operator" \
    --namespace "$ns" --create-namespace --set "image.repository=$repo" --set "image.tag=$tag" \
    --set image.pullPolicy=Never "$@" --wait --timeout "${timeout}s" >&2
}
