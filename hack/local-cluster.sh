#!/usr/bin/env bash
# A real, local Kubernetes control plane built from local binaries, for the
# integration tests and the demo: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok (fake nodes whose pods become Running/Ready at once),
# and with WAO_CLUSTER_REAL_NODE=1 a real node (hack/node.sh) whose pods run.
# Everything listens on 127.0.0.1 on free ports, with TLS and RBAC.
#
# Usage: hack/local-cluster.sh up|down|status|kubeconfig|smoke
#   up          start the cluster (idempotent); prints the kubeconfig path last
#   down        stop every process of the cluster and delete its directory
#   status      show which components run
#   kubeconfig  print the admin kubeconfig path
#   smoke       check a running cluster end to end (StatefulSet, PVCs, GC)
#
# See hack/README.md for the environment knobs.
set -Eeuo pipefail
trap 'echo "[local-cluster] error: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/hack/local-cluster.sh"
CONF_DIR="$REPO/hack/cluster"

DIR="${WAO_CLUSTER_DIR:-$REPO/.cache/cluster}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
DIR="${DIR%/}"

# Sizing of a new cluster; a running cluster records its own in cluster.env.
read_settings() {
  NODES="${WAO_CLUSTER_NODES:-6}"
  NODE_CPU="${WAO_CLUSTER_NODE_CPU:-32}"
  NODE_MEMORY="${WAO_CLUSTER_NODE_MEMORY:-128Gi}"
  NODE_PODS="${WAO_CLUSTER_NODE_PODS:-110}"
  PV_COUNT="${WAO_CLUSTER_PVS:-64}"
  PV_SIZE="${WAO_CLUSTER_PV_SIZE:-100Gi}"
  SERVICE_CIDR="${WAO_CLUSTER_SERVICE_CIDR:-10.96.0.0/16}"
  # Pod IPs are handed out by kwok from this range, starting at its first address.
  POD_CIDR="${WAO_CLUSTER_POD_CIDR:-10.244.0.1/16}"
  # 1: also a real node (containerd, kubelet, kube-proxy, CoreDNS; needs root).
  REAL_NODE="${WAO_CLUSTER_REAL_NODE:-0}"
}
read_settings
TIMEOUT="${WAO_CLUSTER_TIMEOUT:-120}"
VERBOSITY="${WAO_CLUSTER_VERBOSITY:-0}"
KEEP_ON_FAILURE="${WAO_CLUSTER_KEEP_ON_FAILURE:-0}"
SMOKE_TIMEOUT="${WAO_SMOKE_TIMEOUT:-120}"
# Opt-in audit log of the requests made by the service accounts of one
# namespace (Metadata level: who, verb, resource, response code; no bodies).
# The file is outside the cluster dir, so it outlives `down`.
AUDIT_LOG="${WAO_CLUSTER_AUDIT_LOG:-}"
AUDIT_NAMESPACE="${WAO_CLUSTER_AUDIT_NAMESPACE:-whatsapp-operator-system}"

MARKER="$DIR/.wao-local-cluster"
PKI="$DIR/pki"
RUN="$DIR/run"
LOGS="$DIR/logs"
KUBECONFIG_PATH="$DIR/kubeconfig"
PORTS_FILE="$DIR/cluster.env"
CLUSTER_NAME="wao-local"

# In start order.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok pv-recycler)

log() { echo "[local-cluster] $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------
# Processes

pid_of() { if [ -f "$RUN/$1.pid" ]; then cat "$RUN/$1.pid" 2>/dev/null || true; fi; }

# A pid belongs to this cluster when one of its arguments is one of the paths
# this script passes to its components (exact paths, so that a cluster in a
# sub-directory of another one is not mistaken for it).
owned() {
  local pid="$1"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | awk -v d="$DIR" '
    $0 == d "/" || $0 == d "/kubeconfigs/admin.kubeconfig" ||
    index($0, "--data-dir=" d "/etcd") == 1 ||
    index($0, "--cert-dir=" d "/certs-") == 1 ||
    index($0, "--kubeconfig=" d "/kubeconfigs/") == 1 { found = 1 }
    END { exit !found }'
}

alive() { owned "$(pid_of "$1")"; }

group_alive() { kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null; }

# start <name> <command...>: runs the command as the leader of a new session
# (so `down` can signal its whole process group) with output to logs/<name>.log.
start() {
  local name="$1"; shift
  rm -f "$RUN/$name.pid"
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" \
    </dev/null >>"$LOGS/$name.log" 2>&1 9<&- &
  local i
  for i in $(seq 1 50); do [ -s "$RUN/$name.pid" ] && return 0; sleep 0.1; done
  die "could not start $name"
}

# signal_and_wait <grace-seconds> <pid...>: SIGTERM the process groups, then
# SIGKILL whatever is left after the grace period, and wait until all are gone.
signal_and_wait() {
  local grace="$1"; shift
  local pid deadline left
  [ $# -gt 0 ] || return 0
  for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + grace))
  while :; do
    left=()
    for pid in "$@"; do group_alive "$pid" && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && return 0
    [ $SECONDS -ge $deadline ] && break
    sleep 0.2
  done
  log "killing ${left[*]} (still running after ${grace}s)"
  for pid in "${left[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + 10))
  while [ $SECONDS -lt $deadline ]; do
    left=()
    for pid in "$@"; do group_alive "$pid" && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 0.2
  done
  log "warning: processes ${left[*]} did not exit"
  return 1
}

# Processes of this cluster that have no (valid) pid file, e.g. after an
# interrupted `up`: our binaries whose command line mentions the cluster dir.
stray_pids() {
  local p pid argv0
  for p in /proc/[0-9]*; do
    pid="${p#/proc/}"
    [ "$pid" = "$$" ] && continue
    argv0="$(tr '\0' '\n' 2>/dev/null <"$p/cmdline" | head -n1)" || continue
    case "$(basename -- "${argv0:-x}")" in
      etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kwok|kubectl) ;;
      bash) tr '\0' '\n' 2>/dev/null <"$p/cmdline" | grep -qx -- "_pv-recycler" || continue ;;
      *) continue ;;
    esac
    owned "$pid" && echo "$pid"
  done
  return 0
}

stop_all() {
  local name pid pids=()
  # A real node goes first: its pods and mounts live under the cluster dir.
  if [ -d "$DIR/node" ]; then
    WAO_CLUSTER_DIR="$DIR" "$REPO/hack/node.sh" down || log "warning: the real node did not come down cleanly"
  fi
  # The cluster state is thrown away afterwards, so all components are told to
  # stop at once; whatever has not exited after a short grace period is killed.
  for name in "${COMPONENTS[@]}"; do
    pid="$(pid_of "$name")"
    if owned "$pid"; then pids+=("$pid"); log "stopping $name (pid $pid)"; fi
  done
  signal_and_wait "${WAO_CLUSTER_STOP_GRACE:-5}" "${pids[@]}" || true
  rm -f "$RUN"/*.pid 2>/dev/null || true
  pids=()
  while read -r pid; do [ -n "$pid" ] && pids+=("$pid"); done < <(stray_pids)
  if [ ${#pids[@]} -gt 0 ]; then
    log "stopping leftover processes ${pids[*]}"
    signal_and_wait 10 "${pids[@]}" || true
  fi
}

# ---------------------------------------------------------------------------
# Ports

port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

pick_ports() {
  local names=(ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHEDULER_PORT KWOK_PORT)
  local chosen=" " n p tries
  : >"$PORTS_FILE"
  for n in "${names[@]}"; do
    tries=0
    while :; do
      p=$((20000 + RANDOM % 12000))
      tries=$((tries + 1))
      [ $tries -gt 200 ] && die "no free port found on 127.0.0.1"
      case "$chosen" in *" $p "*) continue ;; esac
      port_free "$p" && break
    done
    chosen+="$p "
    echo "$n=$p" >>"$PORTS_FILE"
  done
}

# Ports and the sizing knobs of a running cluster are recorded in its dir, so
# that status/smoke/down see what `up` chose.
# shellcheck disable=SC1090 # written by save_settings/pick_ports
load_ports() { [ -f "$PORTS_FILE" ] && . "$PORTS_FILE"; }

save_settings() {
  {
    echo "NODES=$NODES"
    echo "NODE_CPU=$NODE_CPU"
    echo "NODE_MEMORY=$NODE_MEMORY"
    echo "NODE_PODS=$NODE_PODS"
    echo "PV_COUNT=$PV_COUNT"
    echo "PV_SIZE=$PV_SIZE"
    echo "SERVICE_CIDR=$SERVICE_CIDR"
    echo "POD_CIDR=$POD_CIDR"
    echo "REAL_NODE=$REAL_NODE"
  } >>"$PORTS_FILE"
}

# ---------------------------------------------------------------------------
# PKI

b64() { base64 -w0 <"$1"; }

new_ca() { # <name> <cn>
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$1.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/$1.crt" 2>/dev/null
}

# new_cert <ca> <name> <subject> <serverAuth,clientAuth...> [subjectAltName]
new_cert() {
  local ca="$1" name="$2" subj="$3" eku="$4" sans="${5:-}"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$eku"
    [ -z "$sans" ] || echo "subjectAltName=$sans"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -CAcreateserial -CAserial "$PKI/$ca.srl" -days 3650 -sha256 \
    -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

first_service_ip() { # 10.96.0.0/16 -> 10.96.0.1 (IPv4 only)
  local net="${SERVICE_CIDR%/*}" a b c d
  IFS=. read -r a b c d <<<"$net"
  echo "$a.$b.$c.$((d + 1))"
}

gen_pki() {
  mkdir -p "$PKI"
  local local_sans="IP:127.0.0.1,DNS:localhost"
  new_ca ca "$CLUSTER_NAME-ca"
  new_ca front-proxy-ca "$CLUSTER_NAME-front-proxy-ca"
  new_cert ca etcd-server "/CN=etcd" "serverAuth,clientAuth" "$local_sans"
  new_cert ca apiserver-etcd-client "/CN=kube-apiserver-etcd-client" "clientAuth"
  new_cert ca apiserver "/CN=kube-apiserver" "serverAuth" \
    "$local_sans,IP:$(first_service_ip),DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  new_cert ca admin "/O=system:masters/CN=$CLUSTER_NAME-admin" "clientAuth"
  new_cert ca kube-controller-manager "/CN=system:kube-controller-manager" "serverAuth,clientAuth" "$local_sans"
  new_cert ca kube-scheduler "/CN=system:kube-scheduler" "serverAuth,clientAuth" "$local_sans"
  # kwok plays the kubelet of many nodes at once, which the Node authorizer
  # cannot express; it runs as a cluster admin.
  new_cert ca kwok "/O=system:masters/CN=system:kwok-controller" "serverAuth,clientAuth" "$local_sans"
  new_cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" "clientAuth"
  # How the apiserver authenticates to a real node's kubelet (logs, exec).
  new_cert ca apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "clientAuth"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
}

write_kubeconfig() { # <path> <cert-name> <user>
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $CLUSTER_NAME
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(b64 "$PKI/$2.crt")
    client-key-data: $(b64 "$PKI/$2.key")
contexts:
- name: $CLUSTER_NAME
  context:
    cluster: $CLUSTER_NAME
    user: $3
    namespace: default
current-context: $CLUSTER_NAME
preferences: {}
EOF
  chmod 600 "$1"
}

# ---------------------------------------------------------------------------
# Health checks

https_ok() { # <url> [cert-name]: GET with the cluster CA (and a client cert)
  local url="$1" cert="${2:-}" args=(-fsS --max-time 3 --cacert "$PKI/ca.crt")
  [ -z "$cert" ] || args+=(--cert "$PKI/$cert.crt" --key "$PKI/$cert.key")
  curl "${args[@]}" "$url" >/dev/null 2>&1
}

etcd_ok() { https_ok "https://127.0.0.1:$ETCD_PORT/health" apiserver-etcd-client; }
apiserver_ok() { https_ok "https://127.0.0.1:$API_PORT/readyz" admin; }
kcm_ok() { https_ok "https://127.0.0.1:$KCM_PORT/healthz"; }
scheduler_ok() { https_ok "https://127.0.0.1:$SCHEDULER_PORT/healthz"; }
kwok_ok() { https_ok "https://127.0.0.1:$KWOK_PORT/healthz"; }

kubectl() { "$TOOLS/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

nodes_ready() {
  local n
  n="$(kubectl get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"/"}{.spec.taints}{"\n"}{end}' 2>/dev/null \
    | grep -c '^True/$')" || true
  [ "${n:-0}" -ge "$NODES" ]
}

default_sa_ok() { kubectl -n default get serviceaccount default >/dev/null 2>&1; }

pvs_available() {
  local n
  n="$(kubectl get pv -l wao.local/pool=true -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' 2>/dev/null | grep -c '^Available$')" || true
  [ "${n:-0}" -ge "${1:-$PV_COUNT}" ]
}

# healthy [component...]: the cluster is complete, the given components (all
# by default) run and the apiserver is ready.
healthy() {
  local c comps=("$@")
  [ ${#comps[@]} -gt 0 ] || comps=("${COMPONENTS[@]}")
  [ -f "$MARKER" ] && [ -f "$KUBECONFIG_PATH" ] && load_ports || return 1
  for c in "${comps[@]}"; do alive "$c" || return 1; done
  apiserver_ok
}

# ---------------------------------------------------------------------------
# up

UP_DONE=0

fail() { # <component> <message>
  local comp="$1"; shift
  log "FAILED: $*"
  if [ -n "$comp" ] && [ -f "$LOGS/$comp.log" ]; then
    log "last lines of $LOGS/$comp.log:"
    tail -n 40 "$LOGS/$comp.log" | sed 's/^/    /' >&2
  fi
  exit 1
}

on_up_exit() {
  local rc=$?
  [ "$UP_DONE" = 1 ] && return 0
  if [ "$KEEP_ON_FAILURE" = 1 ]; then
    log "start-up failed (rc=$rc); WAO_CLUSTER_KEEP_ON_FAILURE=1 keeps $DIR for inspection (run 'down' to clean up)"
  else
    log "start-up failed (rc=$rc); tearing down"
    stop_all
    remove_dir
  fi
}

# wait_for <component> <description> <check...>: polls the check until it
# succeeds; fails early if the component process exits, or after $TIMEOUT s.
wait_for() {
  local comp="$1" what="$2"; shift 2
  local deadline=$((SECONDS + TIMEOUT)) t0=$SECONDS
  until "$@"; do
    if [ -n "$comp" ] && ! alive "$comp"; then fail "$comp" "$comp exited while waiting for $what"; fi
    [ $SECONDS -lt $deadline ] || fail "$comp" "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.5
  done
  log "$what ($((SECONDS - t0))s)"
}

start_etcd() {
  start etcd "$TOOLS/etcd" \
    --name="$CLUSTER_NAME" \
    --data-dir="$DIR/etcd" \
    --listen-client-urls="https://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="https://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="https://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="https://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="$CLUSTER_NAME=https://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state=new \
    --cert-file="$PKI/etcd-server.crt" --key-file="$PKI/etcd-server.key" \
    --trusted-ca-file="$PKI/ca.crt" --client-cert-auth \
    --peer-cert-file="$PKI/etcd-server.crt" --peer-key-file="$PKI/etcd-server.key" \
    --peer-trusted-ca-file="$PKI/ca.crt" --peer-client-cert-auth \
    --unsafe-no-fsync \
    --quota-backend-bytes=2147483648 \
    --log-level=warn
}

write_audit_policy() {
  cat <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts:$AUDIT_NAMESPACE"]
  - level: None
EOF
}

# OwnerReferencesPermissionEnforcement, as hardened clusters run it: writing a
# child with a blockOwnerDeletion owner reference needs `update` on the
# owner's finalizers, so the suite notices a role without it.
start_apiserver() {
  local audit=()
  if [ -n "$AUDIT_LOG" ]; then
    case "$AUDIT_LOG" in /*) ;; *) AUDIT_LOG="$PWD/$AUDIT_LOG" ;; esac
    mkdir -p "$(dirname "$AUDIT_LOG")"
    write_audit_policy >"$DIR/audit-policy.yaml"
    audit=(--audit-policy-file="$DIR/audit-policy.yaml" --audit-log-path="$AUDIT_LOG"
      --audit-log-format=json --audit-log-mode=blocking --audit-log-maxsize=0)
    log "audit log of the service accounts of $AUDIT_NAMESPACE: $AUDIT_LOG"
  fi
  start kube-apiserver "$TOOLS/kube-apiserver" \
    "${audit[@]}" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --cert-dir="$DIR/certs-apiserver" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --etcd-servers="https://127.0.0.1:$ETCD_PORT" \
    --etcd-cafile="$PKI/ca.crt" \
    --etcd-certfile="$PKI/apiserver-etcd-client.crt" --etcd-keyfile="$PKI/apiserver-etcd-client.key" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement \
    --allow-privileged=true \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-username-headers=X-Remote-User \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --endpoint-reconciler-type=none \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --enable-priority-and-fairness=false \
    --profiling=false \
    --v="$VERBOSITY"
}

start_controller_manager() {
  local kc="$DIR/kubeconfigs/kube-controller-manager.kubeconfig"
  start kube-controller-manager "$TOOLS/kube-controller-manager" \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --cert-dir="$DIR/certs-kube-controller-manager" \
    --tls-cert-file="$PKI/kube-controller-manager.crt" --tls-private-key-file="$PKI/kube-controller-manager.key" \
    --client-ca-file="$PKI/ca.crt" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --controllers='*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --cluster-name="$CLUSTER_NAME" \
    --leader-elect=false \
    --profiling=false \
    --v="$VERBOSITY"
}

start_scheduler() {
  local kc="$DIR/kubeconfigs/kube-scheduler.kubeconfig"
  start kube-scheduler "$TOOLS/kube-scheduler" \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" \
    --cert-dir="$DIR/certs-kube-scheduler" \
    --tls-cert-file="$PKI/kube-scheduler.crt" --tls-private-key-file="$PKI/kube-scheduler.key" \
    --client-ca-file="$PKI/ca.crt" \
    --leader-elect=false \
    --profiling=false \
    --v="$VERBOSITY"
}

start_kwok() {
  # HOME points into the cluster dir so that no ~/.kwok/kwok.yaml is picked up.
  mkdir -p "$DIR/kwok-home"
  start kwok env HOME="$DIR/kwok-home" "$TOOLS/kwok" \
    --config="$CONF_DIR/kwok.yaml" \
    --kubeconfig="$DIR/kubeconfigs/kwok.kubeconfig" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 \
    --cidr="$POD_CIDR" \
    --server-address="127.0.0.1:$KWOK_PORT" \
    --node-port="$KWOK_PORT" \
    --tls-cert-file="$PKI/kwok.crt" --tls-private-key-file="$PKI/kwok.key"
}

start_pv_recycler() {
  start pv-recycler env WAO_CLUSTER_DIR="$DIR" WAO_TOOLS_DIR="$TOOLS" bash "$SELF" _pv-recycler "$DIR/"
}

write_nodes() {
  local i zones=(zone-a zone-b zone-c)
  for ((i = 0; i < NODES; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/worker: ""
    topology.kubernetes.io/zone: ${zones[$((i % 3))]}
status:
  addresses:
  # Where the apiserver reaches the node's kubelet API (pods/log): kwok.
  - type: InternalIP
    address: 127.0.0.1
  - type: Hostname
    address: kwok-node-$i
  allocatable: &res$i
    cpu: "$NODE_CPU"
    memory: $NODE_MEMORY
    pods: "$NODE_PODS"
    ephemeral-storage: 1Ti
  capacity: *res$i
EOF
  done
}

write_pvs() {
  local i name
  for ((i = 0; i < PV_COUNT; i++)); do
    name="$(printf 'wao-pv-%03d' "$i")"
    cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $name
  labels:
    wao.local/pool: "true"
spec:
  storageClassName: standard
  capacity:
    storage: $PV_SIZE
  accessModes: [ReadWriteOnce, ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  volumeMode: Filesystem
  hostPath:
    # Created on first use, so pods on a real node can mount it too.
    path: $DIR/volumes/$name
    type: DirectoryOrCreate
EOF
  done
}

remove_dir() {
  if [ -f "$MARKER" ]; then
    rm -rf "$DIR"
  elif [ -d "$DIR" ] && [ -z "$(ls -A "$DIR")" ]; then
    rmdir "$DIR"
  fi
}

resolve_tools() {
  TOOLS="$("$REPO/hack/tools.sh" ensure)" || die "hack/tools.sh ensure failed"
  [ -x "$TOOLS/kubectl" ] || die "no kubectl in $TOOLS"
}

validate_settings() {
  local v
  for v in NODES NODE_PODS PV_COUNT TIMEOUT SMOKE_TIMEOUT VERBOSITY; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a number (got '${!v}')"
  done
  [[ "$REAL_NODE" =~ ^[01]$ ]] || die "WAO_CLUSTER_REAL_NODE must be 0 or 1 (got '$REAL_NODE')"
  # With a real node the fake ones are optional.
  { [ "$NODES" -ge $((1 - REAL_NODE)) ] && [ "$NODES" -le 250 ]; } \
    || die "WAO_CLUSTER_NODES must be between $((1 - REAL_NODE)) and 250"
  [[ "$SERVICE_CIDR" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/[0-9]+$ ]] \
    || die "WAO_CLUSTER_SERVICE_CIDR must be an IPv4 CIDR such as 10.96.0.0/16 (got '$SERVICE_CIDR')"
  [[ "$POD_CIDR" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/[0-9]+$ ]] \
    || die "WAO_CLUSTER_POD_CIDR must be an IPv4 CIDR such as 10.244.0.1/16 (got '$POD_CIDR')"
}

cmd_up() {
  local t0=$SECONDS
  validate_settings
  if healthy etcd kube-apiserver kube-controller-manager kube-scheduler kwok; then
    if ! alive pv-recycler; then
      log "restarting the volume recycler"
      TOOLS="$(cat "$DIR/tools-dir")"
      start_pv_recycler
    fi
    local want
    if [ "$(read_settings; echo "$REAL_NODE")" = 1 ]; then
      WAO_CLUSTER_DIR="$DIR" "$REPO/hack/node.sh" up || die "could not add the real node"
    fi
    want="$(read_settings; echo "$NODES $NODE_CPU $NODE_MEMORY $NODE_PODS $PV_COUNT $PV_SIZE $SERVICE_CIDR $POD_CIDR")"
    if [ "$want" != "$NODES $NODE_CPU $NODE_MEMORY $NODE_PODS $PV_COUNT $PV_SIZE $SERVICE_CIDR $POD_CIDR" ]; then
      log "warning: the running cluster was started with other WAO_CLUSTER_* settings; run 'down' first to apply new ones"
    fi
    log "cluster in $DIR is already running"
    echo "$KUBECONFIG_PATH"
    return 0
  fi
  if [ -d "$DIR" ] && [ ! -f "$MARKER" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR exists and was not created by this script; choose another WAO_CLUSTER_DIR"
  fi
  if [ -f "$MARKER" ]; then
    log "cleaning up a stale or partial cluster in $DIR"
    stop_all
    remove_dir
  fi
  read_settings

  local tb=$SECONDS
  resolve_tools
  [ $((SECONDS - tb)) -le 2 ] || log "tools ready in $((SECONDS - tb))s"

  trap on_up_exit EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$DIR"
  touch "$MARKER"
  mkdir -p "$RUN" "$LOGS" "$DIR/kubeconfigs" "$DIR/manifests"
  echo "$TOOLS" >"$DIR/tools-dir"
  pick_ports
  save_settings
  load_ports
  log "starting cluster in $DIR (apiserver https://127.0.0.1:$API_PORT)"

  gen_pki
  write_kubeconfig "$KUBECONFIG_PATH.tmp" admin "$CLUSTER_NAME-admin"
  write_kubeconfig "$DIR/kubeconfigs/kube-controller-manager.kubeconfig" kube-controller-manager system:kube-controller-manager
  write_kubeconfig "$DIR/kubeconfigs/kube-scheduler.kubeconfig" kube-scheduler system:kube-scheduler
  write_kubeconfig "$DIR/kubeconfigs/kwok.kubeconfig" kwok system:kwok-controller
  # Components use their own kubeconfigs; the admin one is used by this script.
  mv "$KUBECONFIG_PATH.tmp" "$DIR/kubeconfigs/admin.kubeconfig"
  KUBECONFIG_PATH="$DIR/kubeconfigs/admin.kubeconfig"

  start_etcd
  wait_for etcd "etcd healthy" etcd_ok
  start_apiserver
  wait_for kube-apiserver "kube-apiserver ready" apiserver_ok
  start_controller_manager
  start_scheduler
  kubectl apply -f "$CONF_DIR/kwok-logs.yaml" >/dev/null || fail kube-apiserver "could not create the kwok Logs kind"
  start_kwok

  write_nodes >"$DIR/manifests/nodes.yaml"
  write_pvs >"$DIR/manifests/pvs.yaml"
  if [ "$NODES" -gt 0 ]; then
    kubectl apply -f "$DIR/manifests/nodes.yaml" >/dev/null || fail kube-apiserver "could not create the nodes"
  fi
  kubectl apply -f "$CONF_DIR/storage.yaml" -f "$DIR/manifests/pvs.yaml" >/dev/null \
    || fail kube-apiserver "could not create the StorageClass and the volumes"

  wait_for kube-controller-manager "kube-controller-manager healthy" kcm_ok
  wait_for kube-scheduler "kube-scheduler healthy" scheduler_ok
  wait_for kwok "kwok healthy" kwok_ok
  wait_for kwok "$NODES nodes Ready and untainted" nodes_ready
  wait_for kube-controller-manager "default ServiceAccount present" default_sa_ok
  wait_for kube-controller-manager "$PV_COUNT volumes Available" pvs_available
  start_pv_recycler
  if [ "$REAL_NODE" = 1 ]; then
    WAO_CLUSTER_DIR="$DIR" "$REPO/hack/node.sh" up || fail "" "could not add the real node (logs: $LOGS/node-*.log)"
  fi

  cp "$KUBECONFIG_PATH" "$DIR/kubeconfig.tmp"
  chmod 600 "$DIR/kubeconfig.tmp"
  mv "$DIR/kubeconfig.tmp" "$DIR/kubeconfig"
  KUBECONFIG_PATH="$DIR/kubeconfig"
  UP_DONE=1
  trap - EXIT INT TERM
  log "cluster up in $((SECONDS - t0))s: $NODES fake nodes, $REAL_NODE real, $PV_COUNT volumes; KUBECONFIG=$KUBECONFIG_PATH"
  echo "$KUBECONFIG_PATH"
}

# ---------------------------------------------------------------------------
# down / status / kubeconfig

cmd_down() {
  local t0=$SECONDS
  if [ ! -e "$DIR" ]; then
    stop_all
    log "no cluster in $DIR"
    return 0
  fi
  if [ ! -f "$MARKER" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR was not created by this script; not touching it"
  fi
  stop_all
  remove_dir
  log "cluster in $DIR stopped and removed ($((SECONDS - t0))s)"
}

cmd_status() {
  local c pid rc=0 nodes
  if [ ! -f "$MARKER" ]; then
    echo "no cluster in $DIR"
    return 1
  fi
  load_ports || true
  echo "cluster dir: $DIR"
  for c in "${COMPONENTS[@]}"; do
    pid="$(pid_of "$c")"
    if owned "$pid"; then printf '  %-24s running (pid %s)\n' "$c" "$pid"
    else printf '  %-24s not running\n' "$c"; rc=1; fi
  done
  if [ -n "${API_PORT:-}" ] && [ -f "$PKI/admin.crt" ] && apiserver_ok; then
    echo "  apiserver:               https://127.0.0.1:$API_PORT (ready)"
    if [ -f "$DIR/tools-dir" ] && [ -f "$DIR/kubeconfig" ]; then
      TOOLS="$(cat "$DIR/tools-dir")"
      KUBECONFIG_PATH="$DIR/kubeconfig"
      nodes="$(kubectl get nodes --no-headers 2>/dev/null | awk '$2=="Ready"' | wc -l)"
      echo "  nodes Ready:             $nodes"
    fi
  else
    echo "  apiserver:               not ready"; rc=1
  fi
  [ ! -f "$DIR/kubeconfig" ] || echo "  kubeconfig:              $DIR/kubeconfig"
  WAO_CLUSTER_DIR="$DIR" "$REPO/hack/node.sh" status || rc=1
  return $rc
}

cmd_kubeconfig() {
  [ -f "$DIR/kubeconfig" ] || die "no cluster in $DIR (run: hack/local-cluster.sh up)"
  echo "$DIR/kubeconfig"
}

# ---------------------------------------------------------------------------
# PV recycler: a volume of the pool whose claim was deleted (Released) is made
# Available again by dropping its claimRef, so that the pool never runs dry
# across test runs. Pods are simulated, so no data needs to be wiped.

cmd_pv_recycler() {
  TOOLS="${WAO_TOOLS_DIR:?}"
  KUBECONFIG_PATH="$DIR/kubeconfigs/admin.kubeconfig"
  local name phase
  while [ -f "$RUN/kube-apiserver.pid" ]; do
    kubectl get pv -l wao.local/pool=true --watch \
      -o jsonpath='{.metadata.name}{" "}{.status.phase}{"\n"}' 2>&1 |
      while read -r name phase; do
        [ "$phase" = Released ] || continue
        if kubectl patch pv "$name" --type=json \
          -p='[{"op":"remove","path":"/spec/claimRef"}]' >/dev/null 2>&1; then
          echo "$(date -u +%FT%TZ) recycled $name"
        fi
      done || true
    sleep 2
  done
}

# ---------------------------------------------------------------------------
# smoke

cmd_smoke() {
  local t0=$SECONDS ns=wao-smoke
  healthy || die "no healthy cluster in $DIR (run: hack/local-cluster.sh up)"
  TOOLS="$(cat "$DIR/tools-dir")"
  KUBECONFIG_PATH="$DIR/kubeconfig"

  smoke_fail() {
    log "SMOKE FAILED: $*"
    kubectl -n "$ns" get statefulset,pods,pvc -o wide >&2 2>/dev/null || true
    kubectl -n "$ns" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 20 >&2 || true
    exit 1
  }
  smoke_wait() { # <description> <check...>
    local what="$1"; shift
    local deadline=$((SECONDS + SMOKE_TIMEOUT)) t=$SECONDS
    until "$@"; do
      [ $SECONDS -lt $deadline ] || smoke_fail "timed out after ${SMOKE_TIMEOUT}s waiting for $what"
      sleep 1
    done
    log "smoke: $what ($((SECONDS - t))s)"
  }
  pods_ready() {
    local n
    n="$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=wao-smoke \
      -o jsonpath='{range .items[*]}{.status.phase}/{.status.conditions[?(@.type=="Ready")].status}/{.status.podIP}{"\n"}{end}' \
      2>/dev/null | grep -cE '^Running/True/[0-9.]+$')" || true
    [ "${n:-0}" -eq 3 ]
  }
  pvcs_bound() {
    local n
    n="$(kubectl -n "$ns" get pvc -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' 2>/dev/null | grep -c '^Bound$')" || true
    [ "${n:-0}" -eq 4 ]
  }
  endpoints_ready() {
    local n
    n="$(kubectl -n "$ns" get endpointslices -l kubernetes.io/service-name=smoke \
      -o jsonpath='{range .items[*].endpoints[*]}{.conditions.ready}{"\n"}{end}' 2>/dev/null | grep -c '^true$')" || true
    [ "${n:-0}" -eq 3 ]
  }
  pods_gone() { [ -z "$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=wao-smoke -o name 2>/dev/null)" ]; }
  ns_gone() { ! kubectl get namespace "$ns" >/dev/null 2>&1; }
  sts_gone() { ! kubectl -n "$ns" get statefulset smoke >/dev/null 2>&1; }

  if ! ns_gone; then
    log "smoke: removing a leftover $ns namespace"
    kubectl delete namespace "$ns" --wait=false >/dev/null
    smoke_wait "old namespace removed" ns_gone
  fi
  kubectl apply -f "$CONF_DIR/smoke.yaml" >/dev/null || smoke_fail "kubectl apply failed"
  smoke_wait "3 pods Running and Ready with pod IPs" pods_ready
  smoke_wait "4 PVCs Bound (3 RWO from the template, 1 shared RWX)" pvcs_bound
  local distinct
  distinct="$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=wao-smoke -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u | grep -c .)" || true
  [ "$distinct" -eq 3 ] || smoke_fail "pods share nodes despite the required anti-affinity ($distinct distinct nodes)"
  log "smoke: pods on 3 distinct nodes"
  smoke_wait "EndpointSlice with 3 ready endpoints" endpoints_ready
  kubectl -n "$ns" get pods -o wide >&2

  kubectl -n "$ns" delete statefulset smoke --cascade=background --wait=false >/dev/null
  smoke_wait "StatefulSet deleted" sts_gone
  smoke_wait "pods removed by the garbage collector" pods_gone

  kubectl delete namespace "$ns" --wait=false >/dev/null
  smoke_wait "namespace deleted (namespace controller, PVC protection)" ns_gone
  smoke_wait "all $PV_COUNT volumes Available again (recycler)" pvs_available
  log "smoke: OK ($((SECONDS - t0))s)"
}

# ---------------------------------------------------------------------------

# up and down of one cluster dir must not run concurrently (e.g. from parallel
# test processes): they hold a lock on the parent directory (fd 9, which the
# components do not inherit).
lock() {
  local parent
  parent="$(dirname "$DIR")"
  mkdir -p "$parent"
  exec 9<"$parent"
  if ! flock -n 9; then
    log "waiting for another up/down under $parent"
    flock -w 1800 9 || die "timed out waiting for the lock on $parent"
  fi
}

case "${1:-}" in
  up) lock; cmd_up ;;
  down) lock; cmd_down ;;
  status) rc=0; cmd_status || rc=$?; exit $rc ;;
  kubeconfig) cmd_kubeconfig ;;
  smoke) cmd_smoke ;;
  _pv-recycler) cmd_pv_recycler ;;
  *) echo "usage: $0 up|down|status|kubeconfig|smoke" >&2; exit 2 ;;
esac
