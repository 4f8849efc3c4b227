#!/usr/bin/env bash
# End-to-end tests on real pods: the operator image installed with its Helm
# chart, the client emulator's images, and scenarios against them. Two cluster
# providers: kind (needs Docker, kind, kubectl, helm and internet access for
# base images) and local (the local control plane with a real node, images
# built here with no registry; needs root). See tests/e2e/README.md.
#
#   tests/e2e/run.sh [--provider kind|local] [--keep] [--reuse] [SCENARIO...]
#
#   --provider kind (default) or local
#   --keep     leave the cluster running afterwards (also after a failure)
#   --reuse    use the existing cluster of that name instead of creating one
#   SCENARIO   any of scale-webapp upgrade unpullable conflict partition
#              failover multiconnect (kind default: scale-webapp upgrade
#              conflict; local: all seven, in that order; unpullable needs
#              upgrade before it; partition and multiconnect are
#              local only: they freeze the node's kubelet and need
#              PostgreSQL); the HA number
#              is always brought to Ready first. local: smoke runs before them
#              (`smoke` alone: nothing else). Each stage's time is printed.
#
# Environment: E2E_CLUSTER_NAME (whatsapp-operator-e2e), E2E_TIMEOUT (seconds
# per wait, 300), E2E_NODE_IMAGE (kind node image, e.g. kindest/node:v1.34.0;
# empty: kind's default), KIND, KUBECTL, HELM, DOCKER (the binaries);
# E2E_LOCAL_DIR (cluster dir of the local provider, .cache/e2e-local),
# E2E_LOCAL_DB_DIR, E2E_LOCAL_MYSQL_PORT, E2E_LOCAL_POSTGRES_PORT (its MariaDB
# and PostgreSQL).
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

CLUSTER="${E2E_CLUSTER_NAME:-whatsapp-operator-e2e}"
TIMEOUT="${E2E_TIMEOUT:-300}"
NODE_IMAGE="${E2E_NODE_IMAGE:-}"
KIND="${KIND:-kind}"
KUBECTL_BIN="${KUBECTL:-kubectl}"
HELM="${HELM:-helm}"
DOCKER="${DOCKER:-docker}"
WORK="$REPO/.cache/e2e"
LOCAL_DIR="${E2E_LOCAL_DIR:-$REPO/.cache/e2e-local}"
# The local provider's MariaDB: its own directory and ports, apart from the
# test databases of hack/test.sh.
LOCAL_DB_DIR="${E2E_LOCAL_DB_DIR:-/tmp/wao-e2e-databases}"
# Fixed ports below 20000: the cluster scripts and test harnesses pick their
# random ports from 20000-31999, and the kernel its ephemeral ones above 32767.
LOCAL_MYSQL_PORT="${E2E_LOCAL_MYSQL_PORT:-14306}"
LOCAL_POSTGRES_PORT="${E2E_LOCAL_POSTGRES_PORT:-16432}"
DB_STARTED=0
KUBECONFIG_FILE="$WORK/kubeconfig"

# Two client versions the emulator's catalog knows, for the upgrade. The
# emulator's clock (WA_EMULATOR_NOW) is a date at which both builds are valid.
OLD=2.53.2
NEW=2.55.1
# A released version whose images exist nowhere: pulling them fails.
MISSING=2.57.2
EMULATOR_NOW=2024-05-01T00:00:00Z
NUMBER="+15550001234"
# The number baked into the images as registered (the HA number's).
BAKED_NUMBER="$NUMBER"
# The multiconnect scenario's own number, on PostgreSQL.
MC_NUMBER="+15550005678"
# Image names under a registry that does not exist, so nothing is pulled by
# mistake: every image is built here and loaded into the kind node.
OPERATOR_REPO=e2e.local/whatsapp-operator
OPERATOR_TAG=e2e
EMULATOR_BASE=e2e.local/wa-emulator-base
EMULATOR_REPO=e2e.local/wa-emulator

OPERATOR_NS=whatsapp-operator-system
GATEWAY_NS=wa-emulator
DB_NS=wa-e2e-db
NS_A=wa-e2e-a
NS_B=wa-e2e-b
NS_C=wa-e2e-c
NS_MC=wa-e2e-mc
NAME=e2e
DB_ROOT_PASSWORD="e2e-Root-Passw0rd"
# What the numbers use (kind: the MariaDB pod's root; local: see setup_local_db).
DB_HOST="mariadb.$DB_NS.svc"
DB_USER=root
DB_PASSWORD="$DB_ROOT_PASSWORD"
DB_ENGINE=MySQL
# PostgreSQL (local provider): see setup_local_db.
PG_HOST=""
# The layout of the number apply_number creates (a scenario may override
# NUMBER, DB_ENGINE, DB_HOST and SHARDS with locals of its own).
SHARDS=1
# Where the media volume's hostPath directories are, on the node.
MEDIA_ROOT=/var/local/wa-e2e-media


KEEP=0
REUSE=0
PROVIDER=kind
SCENARIOS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1 ;;
    --reuse) REUSE=1 ;;
    --provider) PROVIDER="${2:-}"; shift ;;
    --provider=*) PROVIDER="${1#--provider=}" ;;
    scale-webapp | upgrade | unpullable | conflict | partition | failover | multiconnect | smoke) SCENARIOS+=("$1") ;;
    -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$PROVIDER" in
  kind)
    [ "${#SCENARIOS[@]}" -gt 0 ] || SCENARIOS=(scale-webapp upgrade conflict)
    for s in "${SCENARIOS[@]}"; do
      case "$s" in smoke | partition | multiconnect)
        echo "the $s scenario is the local provider's (--provider local)" >&2; exit 2 ;;
      esac
    done ;;
  local)
    # smoke always runs first, then the number scenarios (all by default).
    rest=()
    for s in "${SCENARIOS[@]}"; do [ "$s" = smoke ] || rest+=("$s"); done
    # failover last: the killed coreapp's node row lingers in the shared database.
    [ "${#SCENARIOS[@]}" -gt 0 ] || rest=(scale-webapp upgrade unpullable conflict partition failover multiconnect)
    SCENARIOS=(smoke "${rest[@]}") ;;
  *) echo "unknown provider: $PROVIDER (kind or local)" >&2; exit 2 ;;
esac

log() { echo "[e2e $(date +%H:%M:%S)] $*" >&2; }
# 1 while the partition scenario has the node's kubelet frozen.
FROZEN=0
# The faults the scenarios inject; a run that ends passed them all.
FAULTS=()
fault() { FAULTS+=("$1"); }
# The local cluster with a real node, images, the gateway and the operator's
# chart: shared with hack/demo.sh.
# shellcheck source=hack/lib/real-pods.sh
. hack/lib/real-pods.sh
START=$SECONDS
# Per stage: "NAME SECONDS", printed as it ends and summed up at the end.
TIMINGS=()
# timed NAME CMD...: runs CMD and records how long it took.
timed() {
  local name="$1" t=$SECONDS
  shift
  "$@"
  TIMINGS+=("$name $((SECONDS - t))")
  log "$name took $((SECONDS - t))s"
}
print_timings() {
  local line
  [ "${#TIMINGS[@]}" -gt 0 ] || return 0
  log "timings (s):"
  for line in "${TIMINGS[@]}"; do printf '    %-14s %5s\n' "${line% *}" "${line##* }" >&2; done
  printf '    %-14s %5s\n' total "$((SECONDS - START))" >&2
}
k() { "$KUBECTL_BIN" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
# gone NS KIND NAME: the API server says the object does not exist (an error
# reaching it says nothing).
gone() {
  local out
  out="$(k -n "$1" get "$2" "$3" --ignore-not-found -o name)" && [ -z "$out" ]
}

# ---------------------------------------------------------------------------
# Failure reporting and clean-up

CREATED=0
dump() {
  set +e
  echo "===== WhatsAppNumbers"
  k get wan -A -o yaml
  echo "===== pods"
  k get pods -A -o wide
  echo "===== events (latest 100)"
  k get events -A --sort-by=.lastTimestamp | tail -n 100
  echo "===== operator logs"
  k -n "$OPERATOR_NS" logs -l app.kubernetes.io/name=whatsapp-operator --all-containers --prefix --tail=200
  local ns pod
  for ns in "$NS_A" "$NS_B" "$NS_MC" "$GATEWAY_NS"; do
    for pod in $(k -n "$ns" get pods -o name 2>/dev/null); do
      echo "===== $ns/$pod (last 30 lines)"
      k -n "$ns" logs "$pod" --all-containers --tail=30
    done
  done
}

cleanup() {
  local rc=$? t=$SECONDS
  trap - EXIT
  [ "$FROZEN" = 0 ] || WAO_CLUSTER_DIR="$LOCAL_DIR" hack/node.sh thaw >&2 || true
  if [ "$rc" -ne 0 ] && [ -f "$KUBECONFIG_FILE" ]; then
    log "FAILED; diagnostics follow (also in $WORK/failure.txt)"
    dump 2>&1 | tee "$WORK/failure.txt" >&2 || true
  fi
  if [ "$KEEP" = 1 ]; then
    log "keeping cluster $CLUSTER: export KUBECONFIG=$KUBECONFIG_FILE"
  elif [ "$PROVIDER" = local ]; then
    if [ "$CREATED" = 1 ] || [ "$REUSE" = 1 ]; then
      log "removing the local cluster in $LOCAL_DIR"
      WAO_CLUSTER_DIR="$LOCAL_DIR" hack/local-cluster.sh down >&2 || true
    fi
    if [ "$DB_STARTED" = 1 ]; then
      WAO_DB_DIR="$LOCAL_DB_DIR" WAO_MYSQL_PORT="$LOCAL_MYSQL_PORT" WAO_POSTGRES_PORT="$LOCAL_POSTGRES_PORT" \
        hack/databases.sh down >&2 || true
    fi
  elif [ "$CREATED" = 1 ] || [ "$REUSE" = 1 ]; then
    log "deleting cluster $CLUSTER"
    "$KIND" delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" >&2 || true
  fi
  TIMINGS+=("teardown $((SECONDS - t))")
  print_timings
  if [ "$rc" -eq 0 ]; then
    if [ "$PROVIDER" = kind ]; then log "PASSED: ready ${SCENARIOS[*]}"
    elif [ "${#SCENARIOS[@]}" -gt 1 ]; then log "PASSED: smoke ready ${SCENARIOS[*]:1}"
    else log "PASSED: smoke"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  log "error: $*"
  exit 1
}

# wait_until SECONDS WHAT CMD...: runs CMD every 3 s until it succeeds.
wait_until() {
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  log "waiting for $what (up to ${seconds}s)"
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not within ${seconds}s"
    sleep 3
  done
}

# jp NS NAME JSONPATH: a field of a WhatsAppNumber.
jp() { k -n "$1" get wan "$2" -o "jsonpath=$3"; }
condition() { jp "$1" "$2" "{.status.conditions[?(@.type==\"$3\")].status}/{.status.conditions[?(@.type==\"$3\")].reason}"; }

# Ready for the newest generation (a stale Ready never counts).
ready_now() {
  local got gen status observed
  got="$(jp "$1" "$2" '{.metadata.generation} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].observedGeneration}')"
  read -r gen status observed <<<"$got"
  [ "$status" = True ] && [ "$gen" = "$observed" ]
}

# ---------------------------------------------------------------------------
# Prerequisites, cluster, images

setup_kind() {

  for tool in "$DOCKER" "$KIND" "$KUBECTL_BIN" "$HELM"; do
    command -v "$tool" >/dev/null || fail "$tool not found (prerequisites: Docker, kind, kubectl, helm)"
  done
  "$DOCKER" info >/dev/null 2>&1 || fail "the Docker daemon is not reachable ($DOCKER info)"
  mkdir -p "$WORK"

  if [ "$REUSE" = 1 ]; then
    "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER" || fail "--reuse: no kind cluster named $CLUSTER"
    "$KIND" get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"
  else
    if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
      fail "a kind cluster named $CLUSTER exists: pass --reuse, or delete it (kind delete cluster --name $CLUSTER)"
    fi
    log "creating kind cluster $CLUSTER"
    CREATED=1
    "$KIND" create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" --wait 180s \
      ${NODE_IMAGE:+--image "$NODE_IMAGE"} >&2
  fi
  minor="$(k version -o json | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | tail -n 1)"
  [ "${minor:-0}" -ge 33 ] || fail "the operator needs Kubernetes 1.33 or newer (server minor version: ${minor:-?}); set E2E_NODE_IMAGE=kindest/node:v1.34.0 or newer"

  log "building the operator image $OPERATOR_REPO:$OPERATOR_TAG"
  DOCKER_BUILDKIT=1 "$DOCKER" build -q -f Dockerfile -t "$OPERATOR_REPO:$OPERATOR_TAG" . >&2
  IMAGES=("$OPERATOR_REPO:$OPERATOR_TAG")
  for version in "$OLD" "$NEW"; do
    for image in coreapp web; do
      log "building the emulator image $EMULATOR_REPO/$image:v$version"
      # The shared build stage is cached: only the first build compiles.
      DOCKER_BUILDKIT=1 "$DOCKER" build -q -f emulator/Dockerfile \
        --build-arg "WA_EMULATOR_IMAGE=$image" --build-arg "WA_EMULATOR_VERSION=$version" \
        --build-arg "WA_EMULATOR_GATEWAY=wa-gateway.$GATEWAY_NS.svc:5222" \
        --build-arg "WA_EMULATOR_NOW=$EMULATOR_NOW" \
        -t "$EMULATOR_BASE/$image:v$version" . >&2
      # A test-only knob baked in a derived image: the number counts as registered.
      printf 'FROM %s\nENV WA_EMULATOR_REGISTERED_NUMBER=%s\n' "$EMULATOR_BASE/$image:v$version" "$NUMBER" |
        "$DOCKER" build -q -t "$EMULATOR_REPO/$image:v$version" - >&2
      IMAGES+=("$EMULATOR_REPO/$image:v$version")
    done
  done
  log "loading ${#IMAGES[@]} images into the kind node"
  "$KIND" load docker-image --name "$CLUSTER" "${IMAGES[@]}" >&2
}

# The local provider: the control plane of hack/local-cluster.sh with one real
# node and no fake ones, images built by hack/images.sh and imported into the
# node's containerd.
setup_local() {
  [ "$(id -u)" = 0 ] || fail "--provider local needs root (a real node: containerd, mounts, a bridge)"
  local tools t
  tools="$(hack/tools.sh ensure)"
  KUBECTL_BIN="$tools/kubectl"
  HELM="$tools/helm"
  mkdir -p "$WORK"
  export WAO_CLUSTER_DIR="$LOCAL_DIR"
  if [ "$REUSE" = 1 ]; then
    [ -f "$LOCAL_DIR/kubeconfig" ] || fail "--reuse: no local cluster in $LOCAL_DIR"
  else
    [ ! -e "$LOCAL_DIR" ] || fail "a local cluster exists in $LOCAL_DIR: pass --reuse, or remove it (WAO_CLUSTER_DIR=$LOCAL_DIR hack/local-cluster.sh down)"
    CREATED=1
  fi
  t=$SECONDS
  KUBECONFIG_FILE="$(rp_cluster_up "$LOCAL_DIR" 8)"
  TIMINGS+=("cluster $((SECONDS - t))")
  log "local cluster with a real node up ($((SECONDS - t))s)"
  t=$SECONDS
  # The same names and baked knobs as the kind images, from binaries built here.
  rp_images_load "$LOCAL_DIR" e2e.local "$OPERATOR_REPO:$OPERATOR_TAG" "$EMULATOR_REPO" "$OLD $NEW" \
    "WA_EMULATOR_GATEWAY=wa-gateway.$GATEWAY_NS.svc:5222 WA_EMULATOR_NOW=$EMULATOR_NOW WA_EMULATOR_REGISTERED_NUMBER=$NUMBER" \
    || fail "building or importing the images failed"
  TIMINGS+=("images $((SECONDS - t))")
  log "images built and imported ($((SECONDS - t))s)"
}

# The gateway and the operator's chart, as hack/lib/real-pods.sh installs them
# (the kind provider's cluster too).
install_gateway() {
  RP_KUBECTL="$KUBECTL_BIN" RP_KUBECONFIG="$KUBECONFIG_FILE" rp_install_gateway "$GATEWAY_NS" "$EMULATOR_REPO/coreapp:v$OLD"
}
install_operator() {
  RP_HELM="$HELM" RP_KUBECONFIG="$KUBECONFIG_FILE" rp_install_operator "$OPERATOR_NS" "$OPERATOR_REPO" "$OPERATOR_TAG" "$TIMEOUT"
}

# smoke (local provider): the operator's chart with its real RBAC and two
# replicas, running the image built here (probes answered, leader elected
# through the kubernetes Service), and the emulator's image serving the
# gateway, reached by a pod through Service DNS.
scenario_smoke() {
  log "scenario smoke: the operator and the emulator's image on the real node"
  install_gateway
  install_operator
  k -n "$GATEWAY_NS" rollout status deployment/wa-gateway --timeout="${TIMEOUT}s" >&2
  k get pods -A -o wide >&2

  local pods nodes leader restarts out
  pods="$(k -n "$OPERATOR_NS" get pods -l app.kubernetes.io/name=whatsapp-operator -o jsonpath='{range .items[*]}{.metadata.name}{" "}{end}')"
  [ "$(wc -w <<<"$pods")" = 2 ] || fail "expected 2 operator pods, got: $pods"
  nodes="$(k get pods -A -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u | tr '\n' ' ')"
  [ "$nodes" = "real-node-0 " ] || fail "pods ran on nodes other than the real one: $nodes"
  wait_until 120 "an operator pod holding the leader Lease" leader_elected
  leader="$(k -n "$OPERATOR_NS" get lease whatsapp-operator -o jsonpath='{.spec.holderIdentity}')"
  log "leader: $leader (of $pods)"
  restarts="$(k -n "$OPERATOR_NS" get pods -l app.kubernetes.io/name=whatsapp-operator -o jsonpath='{range .items[*]}{.status.containerStatuses[0].restartCount}{end}')"
  [ "$restarts" = 00 ] || fail "operator containers restarted ($restarts)"
  out="$(k -n "$OPERATOR_NS" logs "${leader%%_*}" --tail=20 2>&1)" || fail "kubectl logs of the operator: $out"
  log "operator log (last lines):"
  tail -n 5 <<<"$out" | sed 's/^/    /' >&2

  # shellcheck disable=SC2016 # expanded in the container
  out="$(k -n "$GATEWAY_NS" exec deploy/wa-gateway -- sh -c 'ls /opt/whatsapp/bin; echo "$WA_EMULATOR_IMAGE $WA_EMULATOR_VERSION $WA_EMULATOR_GATEWAY"')" \
    || fail "kubectl exec into the gateway failed"
  if ! grep -q launch_within_docker.sh <<<"$out" || ! grep -q "coreapp $OLD wa-gateway" <<<"$out"; then
    fail "the emulator image lacks its scripts or baked environment: $out"
  fi
  log "emulator image: ${out//$'\n'/ }"

  # A client pod from the web image: DNS of the Service, then the gateway's admin API.
  k -n "$GATEWAY_NS" delete pod dns-probe --ignore-not-found --wait=true >&2
  k -n "$GATEWAY_NS" run dns-probe --image="$EMULATOR_REPO/web:v$NEW" --image-pull-policy=Never --restart=Never \
    --command -- bash -c "getent hosts wa-gateway.$GATEWAY_NS.svc.cluster.local && exec 3<>/dev/tcp/wa-gateway/5222 &&
      printf 'GET /admin/numbers HTTP/1.0\r\nHost: wa-gateway\r\n\r\n' >&3 && cat <&3" >&2
  wait_until 120 "the probe pod to finish" probe_done
  out="$(k -n "$GATEWAY_NS" logs dns-probe)"
  if [ "$(k -n "$GATEWAY_NS" get pod dns-probe -o jsonpath='{.status.phase}')" != Succeeded ] \
    || ! grep -q '^HTTP/1.[01] 200' <<<"$out"; then
    fail "the probe pod could not reach the gateway through its Service: $out"
  fi
  log "probe pod: ${out//$'\n'/ | }"
}
leader_elected() {
  local holder
  holder="$(k -n "$OPERATOR_NS" get lease whatsapp-operator -o jsonpath='{.spec.holderIdentity}')"
  [ -n "$holder" ] && k -n "$OPERATOR_NS" get pod "${holder%%_*}" >/dev/null
}
probe_done() { [[ "$(k -n "$GATEWAY_NS" get pod dns-probe -o jsonpath='{.status.phase}')" =~ ^(Succeeded|Failed)$ ]]; }

# MariaDB in the cluster (kind): the official image.
setup_kind_db() {
  if [ "$REUSE" = 1 ]; then
    log "removing what a previous run left"
    k delete wan -A --all --wait=true --timeout=120s >&2 || true
    k delete namespace "$NS_A" "$NS_B" "$DB_NS" "$GATEWAY_NS" --ignore-not-found --wait=true --timeout=180s >&2
    k delete pv -l e2e.whatsapp.operators.dev/media --ignore-not-found >&2
  fi

  log "installing MariaDB (mariadb:11) in $DB_NS"
  k apply -f - >&2 <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $DB_NS}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: mariadb, namespace: $DB_NS}
spec:
  selector: {matchLabels: {app: mariadb}}
  template:
    metadata: {labels: {app: mariadb}}
    spec:
      containers:
      - name: mariadb
        image: mariadb:11
        env:
        - {name: MARIADB_ROOT_PASSWORD, value: "$DB_ROOT_PASSWORD"}
        ports: [{containerPort: 3306}]
        # The image's initialisation runs without networking: TCP means ready.
        readinessProbe:
          tcpSocket: {port: 3306}
          periodSeconds: 2
        volumeMounts: [{name: data, mountPath: /var/lib/mysql}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: mariadb, namespace: $DB_NS}
spec:
  selector: {app: mariadb}
  ports: [{port: 3306}]
EOF
  k -n "$DB_NS" rollout status deployment/mariadb --timeout="${TIMEOUT}s" >&2
}

# MariaDB and PostgreSQL on the local provider: private servers of
# hack/databases.sh on this machine (no database image is built), exposed to
# pods by the node as mariadb.wao-host.svc:3306 and postgres.wao-host.svc:5432.
setup_local_db() {
  if [ "$REUSE" = 1 ]; then
    log "removing what a previous run left"
    k delete wan -A --all --wait=true --timeout=120s >&2 || true
    k delete namespace "$NS_A" "$NS_B" "$NS_MC" --ignore-not-found --wait=true --timeout=180s >&2
    k delete pv -l e2e.whatsapp.operators.dev/media --ignore-not-found >&2
  fi
  log "starting MariaDB on this machine for the pods (hack/databases.sh, $LOCAL_DB_DIR)"
  # Always empty: a schema or admin password left by an earlier run would not fit.
  WAO_DB_DIR="$LOCAL_DB_DIR" WAO_MYSQL_PORT="$LOCAL_MYSQL_PORT" WAO_POSTGRES_PORT="$LOCAL_POSTGRES_PORT" \
    hack/databases.sh down >&2 || true
  WAO_DB_DIR="$LOCAL_DB_DIR" WAO_MYSQL_PORT="$LOCAL_MYSQL_PORT" WAO_POSTGRES_PORT="$LOCAL_POSTGRES_PORT" \
    hack/databases.sh up >&2 || fail "hack/databases.sh up failed"
  DB_STARTED=1
  rp_expose "$LOCAL_DIR" mariadb 3306 "127.0.0.1:$LOCAL_MYSQL_PORT" || fail "could not expose MariaDB to the pods"
  rp_expose "$LOCAL_DIR" postgres 5432 "127.0.0.1:$LOCAL_POSTGRES_PORT" \
    || fail "could not expose PostgreSQL to the pods"
  DB_HOST=mariadb.wao-host.svc
  PG_HOST=postgres.wao-host.svc
  DB_USER="${WAO_DB_USER:-wao}"
  DB_PASSWORD="${WAO_DB_PASSWORD:-wao-Passw0rd}"
  MEDIA_ROOT="$LOCAL_DIR/media"
}

if [ "$PROVIDER" = local ]; then
  setup_local
  timed smoke scenario_smoke
  [ "${#SCENARIOS[@]}" -gt 1 ] || exit 0
  timed databases setup_local_db
else
  timed cluster setup_kind
  timed databases setup_kind_db
  install_gateway
  install_operator
  k -n "$GATEWAY_NS" rollout status deployment/wa-gateway --timeout="${TIMEOUT}s" >&2
fi

# ---------------------------------------------------------------------------
# A WhatsAppNumber on the emulator images

# prepare NS: the namespace, the database Secret and the media claim. kind's
# storage is ReadWriteOnce only: a hostPath PersistentVolume offered as
# ReadWriteMany, pre-bound to the claim, stands in for NFS (one node, so
# every pod sees the same directory).
prepare() {
  local ns="$1"
  k apply -f - >&2 <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $ns}
---
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: $ns}
stringData: {username: "$DB_USER", password: "$DB_PASSWORD"}
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: wa-e2e-media-$ns
  labels: {e2e.whatsapp.operators.dev/media: "true"}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: $MEDIA_ROOT/$ns, type: DirectoryOrCreate}
  claimRef: {namespace: $ns, name: media}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: media, namespace: $ns}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: wa-e2e-media-$ns
  resources: {requests: {storage: 1Gi}}
EOF
}

# apply_number NS VERSION: the WhatsAppNumber NUMBER with SHARDS shards on
# DB_ENGINE at DB_HOST. Small requests and a preferred (not required)
# anti-affinity, since kind has one node. A number other than the one baked
# into the images is pre-registered through the tiers' env (the schema Job,
# first on the database, records it).
apply_number() {
  local ns="$1" version="$2" tier overrides="" env=""
  [ "$NUMBER" = "$BAKED_NUMBER" ] || env="
    env: [{name: WA_EMULATOR_REGISTERED_NUMBER, value: \"$NUMBER\"}]"
  for tier in master coreapp; do
    overrides+="
  $tier:$env
    resources: {requests: {cpu: 50m, memory: 64Mi}}
    affinity:
      podAntiAffinity:
        preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 1
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector: {matchLabels: {app.kubernetes.io/instance: $NAME}}"
  done
  k apply -f - >&2 <<EOF
apiVersion: whatsapp.operators.dev/v1alpha1
kind: WhatsAppNumber
metadata: {name: $NAME, namespace: $ns}
spec:
  phoneNumber: "$NUMBER"
  version: "$version"
  images:
    coreapp: $EMULATOR_REPO/coreapp
    webapp: $EMULATOR_REPO/web
    pullPolicy: Never
  multiconnect: {shards: $SHARDS, standbyCoreapps: 1, masters: 2}
  database:
    engine: $DB_ENGINE
    host: $DB_HOST
    credentialsSecretRef: {name: db}
  media: {existingClaim: media}
  # Room for the ready scenario's failed attempts (a wrong password first):
  # the Job's back-off doubles from 10 s, so 6 retries span about 10 minutes.
  upgrade: {schemaUpgradeRetries: 6}
  health:
    pollIntervalSeconds: 5
    # The emulator's webapp serves a self-signed certificate in the cluster.
    insecureSkipTLSVerify: true
  webapp:
    replicas: 2
    resources: {requests: {cpu: 50m, memory: 64Mi}}
    affinity:
      podAntiAffinity:
        preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 1
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector: {matchLabels: {app.kubernetes.io/instance: $NAME}}$overrides
EOF
}

# health_ok NS: the operator's view of the client is one healthy deployment
# of SHARDS shards: gateway connected, a primary master, every shard on its
# coreapp, 1 standby, 2 masters + SHARDS + 1 coreapps listed (stopped nodes of
# an earlier rollout are gone). By the client's rules the primary master is
# connected in multiconnect and disconnected in HA (1 shard).
health_ok() {
  local got gateway connected standby shards primary nodes primary_status=disconnected
  got="$(jp "$1" "$NAME" '{.status.health.gateway} {.status.health.connectedCoreapps} {.status.health.standbyCoreapps} {.status.health.shards} {.status.health.primaryMaster} {.status.health.nodes[*].id}')"
  read -r gateway connected standby shards primary nodes <<<"$got"
  [ "$SHARDS" = 1 ] || primary_status=connected
  [ "$gateway" = connected ] && [ "$connected" = "$SHARDS" ] && [ "$standby" = 1 ] && [ "$shards" = "$SHARDS" ] &&
    [ -n "$primary" ] && [ "$(wc -w <<<"$nodes")" = $((SHARDS + 3)) ] &&
    [ "$(jp "$1" "$NAME" '{.status.health.nodes[?(@.role=="primary_master")].gatewayStatus}')" = "$primary_status" ]
}

check_health() {
  local ns="$1"
  wait_until 120 "$ns/$NAME health: gateway connected, $SHARDS of $SHARDS shards connected, 1 standby, $((SHARDS + 3)) nodes" health_ok "$ns"
  log "$ns/$NAME .status.health:"
  jp "$ns" "$NAME" '  gateway={.status.health.gateway} primaryMaster={.status.health.primaryMaster} shards={.status.health.shards} connected={.status.health.connectedCoreapps} standby={.status.health.standbyCoreapps}{"\n"}{range .status.health.nodes[*]}    {.id} {.role} {.gatewayStatus} {.pod}{"\n"}{end}' >&2
}

blocked_on_secret() {
  [ "$(condition "$1" "$NAME" Ready)" = False/SecretNotFound ] && [ "$(condition "$1" "$NAME" Stalled)" = True/SecretNotFound ]
}

# The first schema Job's failed attempt, as the Ready condition tells it:
# MariaDB's refusal, read from the attempt's log.
refused_password() {
  local message
  message="$(jp "$1" "$NAME" '{.status.conditions[?(@.type=="Ready")].reason} {.status.conditions[?(@.type=="Ready")].message}')"
  [[ "$message" == "InitializingDatabase "*" failed"*" exit code 1: "*"Access denied for user"* ]]
}

# The first schema Job's failed attempt, as the Ready condition tells it:
# the wait script's words, after its 120 tries a second apart.
unreachable_database() {
  local message
  message="$(jp "$1" "$NAME" '{.status.conditions[?(@.type=="Ready")].reason} {.status.conditions[?(@.type=="Ready")].message}')"
  [[ "$message" == "InitializingDatabase "*" failed"*" exit code 1: database at $2:3306 is not reachable"* ]]
}

# The pods of NS/NAME's schema Jobs that have not ended: "NAME PHASE" lines.
unfinished_schema_pods() {
  k -n "$1" get pods -l "app.kubernetes.io/instance=$NAME,app.kubernetes.io/component=schema-upgrade" \
    -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}' | grep -Ev ' (Succeeded|Failed)$' || true
}

schema_attempt_at_work() { [ -n "$(unfinished_schema_pods "$1")" ]; }

# The number's claim (cluster-scoped), if it exists.
number_claim() { k get whatsappnumberclaims "whatsapp-number-${NUMBER#+}" --ignore-not-found -o name; }

# A database host that does not exist: the schema Job's attempts say so, and
# deleting the number while an attempt runs stops it before the number is
# released (the claim outlives every pod of the Job).
unreachable_then_deleted() {
  local ns="$1" DB_HOST="nowhere.wao-host.svc" deadline claim pods
  apply_number "$ns" "$OLD"
  wait_until 240 "$ns/$NAME InitializingDatabase naming the unreachable $DB_HOST" unreachable_database "$ns" "$DB_HOST"
  log "$ns/$NAME Ready: $(jp "$ns" "$NAME" '{.status.conditions[?(@.type=="Ready")].message}')"
  no_workloads "$ns" || fail "workloads were created while the database could not be reached"
  # The Job tries again 10 s after the failure: delete while that attempt runs.
  wait_until 60 "an attempt of the schema Job at work" schema_attempt_at_work "$ns"
  k -n "$ns" delete wan "$NAME" --wait=false >&2
  deadline=$((SECONDS + 120))
  until gone "$ns" wan "$NAME"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$ns/$NAME was not deleted within 120s"
    # The claim is read first: a pod seen after the claim was gone outlived the release.
    sleep 1
    claim="$(number_claim)" || continue
    if [ -z "$claim" ]; then
      pods="$(unfinished_schema_pods "$ns")"
      [ -z "$pods" ] || fail "the number was released while a schema pod still ran: $pods"
    fi
  done
  [ -z "$(unfinished_schema_pods "$ns")" ] || fail "a schema pod outlived $ns/$NAME: $(unfinished_schema_pods "$ns")"
  [ -z "$(number_claim)" ] || fail "the claim of $NUMBER outlived $ns/$NAME"
  gone "$ns" job "$NAME-schema-${OLD//./-}" || fail "the schema Job outlived $ns/$NAME"
  log "$ns/$NAME deleted once its schema Job was stopped; the number is released"
}

invalid_spec() {
  [ "$(condition "$1" "$NAME" Ready)" = False/InvalidSpec ] && [ "$(condition "$1" "$NAME" Stalled)" = True/InvalidSpec ]
}

# The pods of NS/NAME's masters, coreapps and webapps: "NAME UID" lines, and
# the time a pod's deletion was asked for (a pod on its way out keeps its uid).
number_pods() {
  k -n "$1" get pods -l "app.kubernetes.io/instance=$NAME,app.kubernetes.io/component!=schema-upgrade" \
    -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.uid} {.metadata.deletionTimestamp}{"\n"}{end}' | sort
}

# Bad input to a running number: what the schema can express (an unsupported
# shard count, a phone number not in E.164 form) the API server refuses with
# the field's message; what it cannot (a database prefix other than the one
# the databases were made with) is InvalidSpec, and what runs keeps running
# untouched until the spec is put right.
bad_input() {
  local ns="$1" out shards before
  for shards in 0 64; do
    if out="$(k -n "$ns" patch wan "$NAME" --type=merge --dry-run=server \
      -p "{\"spec\":{\"multiconnect\":{\"shards\":$shards}}}" 2>&1)"; then
      fail "shards $shards was accepted: $out"
    fi
    grep -q 'spec\.multiconnect\.shards' <<<"$out" || fail "the refusal of shards $shards names no field: $out"
    log "shards $shards refused: $out"
  done
  if out="$(k -n "$ns" apply --dry-run=server -f - 2>&1 <<EOF
apiVersion: whatsapp.operators.dev/v1alpha1
kind: WhatsAppNumber
metadata: {name: $NAME-bad, namespace: $ns}
spec:
  phoneNumber: "+0123"
  version: "$OLD"
  database: {engine: $DB_ENGINE, host: $DB_HOST, credentialsSecretRef: {name: db}}
  media: {existingClaim: media}
EOF
  )"; then
    fail "the phone number +0123 was accepted: $out"
  fi
  grep -q 'E.164' <<<"$out" || fail "the refusal of +0123 does not say the form: $out"
  log "phone number +0123 refused: $out"

  before="$(number_pods "$ns")"
  [ -n "$before" ] || fail "no pod of $ns/$NAME runs"
  k -n "$ns" patch wan "$NAME" --type=merge -p '{"spec":{"database":{"namePrefix":"moved"}}}' >&2
  wait_until 60 "$ns/$NAME Ready=False/InvalidSpec and Stalled" invalid_spec "$ns"
  log "$ns/$NAME Ready: $(jp "$ns" "$NAME" '{.status.conditions[?(@.type=="Ready")].message}')"
  sleep 5
  [ "$(number_pods "$ns")" = "$before" ] || fail "pods changed under InvalidSpec: $before -> $(number_pods "$ns")"
  k -n "$ns" patch wan "$NAME" --type=merge -p '{"spec":{"database":{"namePrefix":null}}}' >&2
  wait_until "$TIMEOUT" "$ns/$NAME Ready again" ready_now "$ns" "$NAME"
  [ "$(number_pods "$ns")" = "$before" ] || fail "pods changed once the spec was put right: $before -> $(number_pods "$ns")"
  fault "bad input: shards 0 and 64, phone number +0123, a changed database prefix (InvalidSpec)"
}

scenario_ready() {
  log "scenario ready: $NS_A/$NAME on the emulator's $OLD images, its database Secret created late"
  prepare "$NS_A"
  unreachable_then_deleted "$NS_A"
  # The credentials Secret is missing at first: a clear condition, nothing
  # deployed; once it exists the number becomes Ready without a touch.
  k -n "$NS_A" delete secret db >&2
  apply_number "$NS_A" "$OLD"
  wait_until 60 "$NS_A/$NAME Ready=False/SecretNotFound and Stalled" blocked_on_secret "$NS_A"
  no_workloads "$NS_A" || fail "workloads were created while the database Secret was missing"
  # A wrong password first: the schema Job's attempts fail, and the status
  # says why (the database's own words, from the attempt's log) while the Job
  # tries again; the right password is taken at its next attempt.
  k -n "$NS_A" create secret generic db --from-literal=username="$DB_USER" --from-literal=password="not-$DB_PASSWORD" >&2
  wait_until 120 "$NS_A/$NAME InitializingDatabase naming the refused password" refused_password "$NS_A"
  log "$NS_A/$NAME Ready: $(jp "$NS_A" "$NAME" '{.status.conditions[?(@.type=="Ready")].message}')"
  no_workloads "$NS_A" || fail "workloads were created before the schema Job succeeded"
  k -n "$NS_A" create secret generic db --from-literal=username="$DB_USER" --from-literal=password="$DB_PASSWORD" \
    --dry-run=client -o yaml | k replace -f - >&2
  wait_until "$TIMEOUT" "$NS_A/$NAME Ready" ready_now "$NS_A" "$NAME"
  k -n "$NS_A" get wan "$NAME" -o wide >&2
  check_health "$NS_A"
  [ "$(condition "$NS_A" "$NAME" GatewayConnected)" = True/GatewayConnected ] || fail "GatewayConnected is not True"
  # What really ran: the coreapp's own log names the role, version and mode
  # that the operator's environment gave it.
  local out
  out="$(k -n "$NS_A" logs "$NAME-coreapp-0" 2>&1)" || fail "kubectl logs $NAME-coreapp-0: $out"
  grep -q "role=Coreapp version=$OLD multiconnect=true" <<<"$out" \
    || fail "$NAME-coreapp-0 did not start as a multiconnect coreapp at $OLD: $(head -n 5 <<<"$out")"
  log "$NAME-coreapp-0 log: $(grep -m1 'role=Coreapp' <<<"$out")"
  bad_input "$NS_A"
}

# failover: the pod of the connected coreapp is deleted; the standby takes the
# shard over and the StatefulSet's new pod becomes the standby, nothing done
# by hand.
scenario_failover() {
  local ns before pod deadline seen="" c
  ns="$(holder_namespace)"
  before="$(connected_coreapp "$ns")"
  [ -n "$before" ] || fail "no connected coreapp in $ns/$NAME"
  pod="${before%%:*}"
  log "scenario failover: deleting $ns/$pod, the connected coreapp ($before)"
  k -n "$ns" delete pod "$pod" --wait=false >&2
  deadline=$((SECONDS + TIMEOUT))
  # The operator's view, every second, until another node holds the shard.
  until c="$(connected_coreapp "$ns")" && [ -n "$c" ] && [ "$c" != "$before" ] && health_ok "$ns" && ready_now "$ns" "$NAME"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the standby did not take over within ${TIMEOUT}s"
    case "$(condition "$ns" "$NAME" Degraded)" in True/*) seen="$(condition "$ns" "$NAME" Degraded)" ;; esac
    sleep 1
  done
  log "failover: $c took over from $before${seen:+ (Degraded seen: $seen)}"
  check_health "$ns"
  [ "$PROVIDER" = local ] || return 0

  # A crash (local provider: the node is this machine): SIGKILL of the
  # connected coreapp's process, so that no node row is removed on the way
  # out. The operator must report it, then the standby takes over.
  local cid hostpid
  before="$c"; pod="${before%%:*}"; seen=""
  cid="$(k -n "$ns" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].containerID}')"
  hostpid="$(ctr --address "$LOCAL_DIR/node/containerd/containerd.sock" -n k8s.io tasks ls | awk -v id="${cid#containerd://}" '$1 == id { print $2 }')"
  [ -n "$hostpid" ] || fail "no process found for $ns/$pod ($cid)"
  log "scenario failover: SIGKILL of $ns/$pod (pid $hostpid on this machine)"
  kill -KILL "$hostpid"
  fault "the connected coreapp killed (SIGKILL)"
  deadline=$((SECONDS + TIMEOUT))
  # The dead node's row stays listed (unreachable) until it has been silent for
  # 5 unhealthy intervals, so only the takeover and Ready are awaited here.
  until c="$(connected_coreapp "$ns")" && [ -n "$c" ] && [ "$c" != "$before" ] && ready_now "$ns" "$NAME"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the standby did not take over from the killed coreapp within ${TIMEOUT}s"
    case "$(condition "$ns" "$NAME" Degraded)" in True/*) seen="$(condition "$ns" "$NAME" Degraded)" ;; esac
    sleep 1
  done
  [ -n "$seen" ] || fail "the operator never reported Degraded while a shard's coreapp was dead"
  log "failover: $c took over from the killed $before (Degraded seen: $seen); the node list now:"
  jp "$ns" "$NAME" '{range .status.health.nodes[*]}    {.id} {.role} {.gatewayStatus}{"\n"}{end}' >&2
}
connected_coreapp() {
  jp "$1" "$NAME" '{range .status.health.nodes[?(@.role=="coreapp")]}{.id}{" "}{.gatewayStatus}{"\n"}{end}' | awk '$2 == "connected" { print $1 }'
}

scenario_scale_webapp() {
  log "scenario scale-webapp: 2 -> 3 -> 2 webapp replicas"
  local replicas
  for replicas in 3 2; do
    k -n "$NS_A" patch wan "$NAME" --type merge -p "{\"spec\":{\"webapp\":{\"replicas\":$replicas}}}" >&2
    wait_until "$TIMEOUT" "$NS_A/$NAME Ready with $replicas webapps" ready_now "$NS_A" "$NAME"
    local got
    got="$(k -n "$NS_A" get deployment "$NAME-webapp" -o jsonpath='{.spec.replicas} {.status.readyReplicas}')"
    [ "$got" = "$replicas $replicas" ] || fail "webapp Deployment replicas/ready = $got, expected $replicas"
    [ "$(jp "$NS_A" "$NAME" '{.status.webapps.ready}')" = "$replicas" ] || fail "status.webapps.ready is not $replicas"
  done
  check_health "$NS_A"
}

upgrading() {
  local step
  step="$(jp "$1" "$NAME" '{.status.upgrade.step}')"
  [ -n "$step" ] && [ "$step" != Complete ]
}
upgraded() {
  ready_now "$1" "$NAME" && [ "$(jp "$1" "$NAME" '{.status.currentVersion}')" = "$2" ]
}

scenario_upgrade() {
  log "scenario upgrade: $OLD -> $NEW (the operator runs the schema upgrade Job)"
  # A watch on the pods records every container's start and end as the
  # kubelet reports them (pod, image, container, start, end, separated by |).
  local watch_log="$WORK/upgrade-pods.watch" watch_pid
  # A Go template: kubectl's JSONPath printer fails on ranges in watch mode.
  k -n "$NS_A" get pods --watch -o go-template='{{.metadata.name}}|{{(index .spec.containers 0).image}}|{{range .status.containerStatuses}}{{.containerID}}|{{with .state.running}}{{.startedAt}}{{end}}{{with .state.terminated}}{{.startedAt}}{{end}}|{{with .state.terminated}}{{.finishedAt}}{{end}}{{end}}{{"\n"}}' \
    >"$watch_log" 2>"$watch_log.err" &
  watch_pid=$!
  sleep 1
  # As many webapps as nodes they may run on, with the default anti-affinity:
  # the webapps' rollout in the upgrade must finish without a spare node.
  local nodes
  nodes="$(schedulable_nodes)"
  [ "$nodes" -ge 1 ] || fail "no schedulable node for the webapps"
  k -n "$NS_A" patch wan "$NAME" --type merge \
    -p "{\"spec\":{\"webapp\":{\"replicas\":$nodes,\"affinity\":null}}}" >&2
  wait_until "$TIMEOUT" "$NS_A/$NAME Ready with $nodes webapps on $nodes nodes" webapps_ready "$NS_A" "$nodes"
  log "upgrade: $nodes webapps on $nodes schedulable nodes, default affinity"
  local leader new_leader
  leader="$(k -n "$OPERATOR_NS" get lease whatsapp-operator -o jsonpath='{.spec.holderIdentity}')"
  k -n "$NS_A" patch wan "$NAME" --type merge -p "{\"spec\":{\"version\":\"$NEW\"}}" >&2
  # The leading operator is killed in the middle of the upgrade; the other
  # replica takes the lease and finishes it from status.upgrade.
  wait_until 60 "$NS_A/$NAME upgrade under way" upgrading "$NS_A"
  log "upgrade: killing the leading operator ${leader%%_*} at step $(jp "$NS_A" "$NAME" '{.status.upgrade.step}')"
  k -n "$OPERATOR_NS" delete pod "${leader%%_*}" --grace-period=0 --force >&2 2>/dev/null || true
  fault "the leading operator killed during an upgrade"
  wait_until "$TIMEOUT" "$NS_A/$NAME Ready at $NEW" upgraded "$NS_A" "$NEW"
  new_leader="$(k -n "$OPERATOR_NS" get lease whatsapp-operator -o jsonpath='{.spec.holderIdentity}')"
  [ "${new_leader%%_*}" != "${leader%%_*}" ] || fail "the killed operator ${leader%%_*} still holds the lease"
  log "upgrade: finished by ${new_leader%%_*} after ${leader%%_*} was killed"
  kill "$watch_pid" 2>/dev/null || true
  wait "$watch_pid" 2>/dev/null || true
  k -n "$NS_A" get jobs >&2
  check_upgrade_order "$watch_log"
  local image
  for sts in master coreapp; do
    image="$(k -n "$NS_A" get statefulset "$NAME-$sts" -o jsonpath='{.spec.template.spec.containers[0].image}')"
    [ "$image" = "$EMULATOR_REPO/coreapp:v$NEW" ] || fail "$NAME-$sts runs $image"
  done
  image="$(k -n "$NS_A" get deployment "$NAME-webapp" -o jsonpath='{.spec.template.spec.containers[0].image}')"
  [ "$image" = "$EMULATOR_REPO/web:v$NEW" ] || fail "$NAME-webapp runs $image"
  [ "$(k -n "$NS_A" get deployment "$NAME-webapp" -o jsonpath='{.status.updatedReplicas}')" = "$nodes" ] \
    || fail "$NAME-webapp did not roll all $nodes webapps"
  check_health "$NS_A"
  # Back to two webapps, kept apart where they can be, as the number started.
  k -n "$NS_A" patch wan "$NAME" --type merge -p "{\"spec\":{\"webapp\":{\"replicas\":2,\"affinity\":$(preferred_apart)}}}" >&2
  wait_until "$TIMEOUT" "$NS_A/$NAME Ready with 2 webapps" webapps_ready "$NS_A" 2
}

# schedulable_nodes: Ready nodes that take ordinary pods (not cordoned, no
# NoSchedule or NoExecute taint).
schedulable_nodes() {
  k get nodes -o jsonpath='{range .items[*]}{.spec.unschedulable}|{.spec.taints[*].effect}|{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    awk -F'|' '$1 != "true" && $2 !~ /(^| )(NoSchedule|NoExecute)( |$)/ && $3 == "True"' | wc -l
}

# preferred_apart: the webapps' affinity of the e2e numbers, as JSON.
preferred_apart() {
  printf '{"podAntiAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":1,"podAffinityTerm":{"topologyKey":"kubernetes.io/hostname","labelSelector":{"matchLabels":{"app.kubernetes.io/instance":"%s"}}}}]}}' "$NAME"
}

# webapps_ready NS N: Ready for the newest generation with N webapps ready.
webapps_ready() {
  ready_now "$1" "$NAME" && [ "$(jp "$1" "$NAME" '{.status.webapps.ready}')" = "$2" ]
}

unpullable_stalled() {
  [ "$(condition "$NS_A" "$NAME" Stalled)" = True/UpgradeStalled ] &&
    jp "$NS_A" "$NAME" '{.status.conditions[?(@.type=="Stalled")].message}' | grep -q "coreapp:v$MISSING"
}
job_gone() { gone "$1" job "$2"; }
rolled_back() {
  upgraded "$NS_A" "$NEW" && [ "$(jp "$NS_A" "$NAME" '{.status.upgrade.step}')" = RolledBack ]
}

# A version whose image cannot be had, on a real kubelet: the schema Job's
# pod cannot get it (ErrImageNeverPull with the local provider's pull policy,
# ErrImagePull elsewhere), the upgrade stalls naming the image (masters and
# coreapps stopped, since the procedure stops them first), and setting the
# version back brings the running version up again with nothing by hand.
scenario_unpullable() {
  log "scenario unpullable: $NEW -> $MISSING (no image anywhere), then set back"
  k -n "$NS_A" patch wan "$NAME" --type merge -p "{\"spec\":{\"version\":\"$MISSING\"}}" >&2
  fault "a client version whose image cannot be pulled"
  wait_until "$TIMEOUT" "$NS_A/$NAME stalled on the image coreapp:v$MISSING" unpullable_stalled
  log "unpullable: $(jp "$NS_A" "$NAME" '{.status.conditions[?(@.type=="Stalled")].message}')"
  local job="$NAME-schema-${MISSING//./-}"
  k -n "$NS_A" get job "$job" >/dev/null || fail "no schema Job $job"
  k -n "$NS_A" patch wan "$NAME" --type merge -p "{\"spec\":{\"version\":\"$NEW\"}}" >&2
  wait_until "$TIMEOUT" "$NS_A/$NAME back at $NEW" rolled_back
  wait_until 60 "the schema Job $job to go" job_gone "$NS_A" "$job"
  local image
  for sts in master coreapp; do
    image="$(k -n "$NS_A" get statefulset "$NAME-$sts" -o jsonpath='{.spec.template.spec.containers[0].image}')"
    [ "$image" = "$EMULATOR_REPO/coreapp:v$NEW" ] || fail "$NAME-$sts runs $image after the rollback"
  done
  k -n "$NS_A" get events --field-selector reason=UpgradeRolledBack -o name | grep -q . ||
    fail "no UpgradeRolledBack event"
  check_health "$NS_A"
}

# check_upgrade_order WATCH_LOG: no old and new master/coreapp container ran at
# the same time, the schema Job's container ran in between, and the window
# without a connected coreapp (last old coreapp stopped, first new one
# connected to the gateway, from its own log) is printed.
check_upgrade_order() {
  local old_end new_start job_start job_end connected pod window
  # Per container: the latest start and end seen (RFC 3339, second precision, UTC).
  # The upgrade's schema Job is named after the target version (e2e-schema-2-55-1-...).
  read -r old_end new_start job_start job_end < <(awk -F'|' -v name="$NAME" -v old="v$OLD" -v new="v$NEW" \
    -v job="^$NAME-schema-${NEW//./-}-" '
    NF >= 5 && $3 ~ /^containerd:/ {
      id = $3; pod[id] = $1; img[id] = $2
      if ($4 != "") start[id] = $4
      if ($5 != "") end[id] = $5
    }
    END {
      oe = ""; ns = "~"; js = "~"; je = ""
      for (id in pod) {
        tier = (pod[id] ~ "^" name "-(master|coreapp)-[0-9]+$")
        if (pod[id] ~ job) {
          if (start[id] != "" && start[id] < js) js = start[id]
          if (end[id] > je) je = end[id]
        } else if (tier && img[id] ~ ":" old "$") {
          e = (end[id] == "") ? "~running" : end[id]
          if (e > oe) oe = e
        } else if (tier && img[id] ~ ":" new "$" && start[id] != "" && start[id] < ns) ns = start[id]
      }
      print (oe == "" ? "-" : oe), ns, js, (je == "" ? "-" : je)
    }' "$1")
  log "upgrade: last old master/coreapp container ended $old_end; schema Job ran $job_start .. $job_end; first new one started $new_start"
  [ "$old_end" != "-" ] || fail "no old master/coreapp container was seen (watch: $1)"
  [ "$old_end" != "~running" ] || fail "an old master/coreapp container never stopped (watch: $1)"
  [ "$job_end" != "-" ] || fail "the schema Job's container was not seen to end (watch: $1)"
  [ "$new_start" != "~" ] || fail "no new master/coreapp container was seen starting (watch: $1)"
  [[ "$old_end" < "$new_start" || "$old_end" == "$new_start" ]] \
    || fail "old and new master/coreapp containers ran at the same time ($old_end > $new_start; watch: $1)"
  if [ "$job_start" != "~" ]; then
    if [[ "$job_start" < "$old_end" || "$new_start" < "$job_end" ]]; then
      fail "the schema Job did not run between the old and the new containers (watch: $1)"
    fi
  else
    fail "no schema Job container was seen (watch: $1)"
  fi
  connected="~"
  for pod in $(k -n "$NS_A" get pods -o name | grep -E "/$NAME-coreapp-[0-9]+$"); do
    local t
    t="$(k -n "$NS_A" logs "$pod" 2>/dev/null | grep -m1 'connected to WhatsApp servers' | cut -c1-19)" || true
    [ -z "$t" ] || [[ ! "${t}Z" < "$connected" ]] || connected="${t}Z"
  done
  if [ "$connected" != "~" ] && [ "$old_end" != "-" ]; then
    window=$(($(date -d "$connected" +%s) - $(date -d "$old_end" +%s)))
    log "upgrade: gateway-down window about ${window}s (last old container end $old_end, first new coreapp connected $connected)"
  fi
}

deleted() { gone "$NS_A" wan "$NAME"; }
# An API error is no answer: neither "gone" nor "no workloads".
no_workloads() {
  local out
  out="$(k -n "$1" get statefulsets,deployments -o name)" && [ -z "$out" ]
}

scenario_conflict() {
  local version
  version="$(jp "$NS_A" "$NAME" '{.spec.version}')"
  log "scenario conflict: the same number in $NS_B waits while $NS_A holds it"
  prepare "$NS_B"
  migrate_admin_password "$NS_A" "$NS_B"
  apply_number "$NS_B" "$version"
  k -n "$NS_B" patch wan "$NAME" --type merge \
    -p '{"spec":{"webapp":{"adminPasswordSecretRef":{"name":"migrated-admin","key":"password"}}}}' >&2
  wait_until 120 "$NS_B/$NAME Conflict=True/PhoneNumberInUse" conflict_now "$NS_B"
  [ "$(condition "$NS_B" "$NAME" Ready)" = False/PhoneNumberInUse ] || fail "Ready of the duplicate is not False/PhoneNumberInUse"
  no_workloads "$NS_B" || fail "the duplicate deployed workloads"
  ready_now "$NS_A" "$NAME" || fail "the holder lost Ready"

  log "scenario conflict: deleting the holder; the duplicate takes the number over"
  k -n "$NS_A" delete wan "$NAME" --wait=false >&2
  wait_until 120 "$NS_A/$NAME deleted" deleted
  wait_until "$TIMEOUT" "$NS_B/$NAME Ready" ready_now "$NS_B" "$NAME"
  [ "$(condition "$NS_B" "$NAME" Conflict | cut -d/ -f1)" = False ] || fail "Conflict of the new holder is not False"
  check_health "$NS_B"
}
# migrate_admin_password FROM TO: the admin password the holder set in the
# shared database goes along with the deployment, as a real migration takes
# its credentials along: a Secret of the user's in TO, named by the number's
# spec.webapp.adminPasswordSecretRef (the operator never adopts a NAME-keys
# Secret it did not create).
migrate_admin_password() {
  local pw ref
  # The holder's own source: its spec.webapp.adminPasswordSecretRef (a number
  # that was migrated before), else the password the operator generated.
  ref="$(jp "$1" "$NAME" '{.spec.webapp.adminPasswordSecretRef.name}/{.spec.webapp.adminPasswordSecretRef.key}')"
  if [ "$ref" != / ]; then
    pw="$(k -n "$1" get secret "${ref%/*}" -o go-template="{{index .data \"${ref#*/}\" | base64decode}}")"
  else
    pw="$(k -n "$1" get secret "$NAME-keys" -o go-template='{{index .data "admin-password" | base64decode}}')"
  fi
  [ -n "$pw" ] || fail "no admin password found for $1/$NAME"
  k -n "$2" create secret generic migrated-admin --from-literal=password="$pw" >&2
}
conflict_now() { [ "$(condition "$1" "$NAME" Conflict)" = True/PhoneNumberInUse ]; }
# The namespace whose WhatsAppNumber NAME holds the number after the scenarios so far.
holder_namespace() {
  local ns
  for ns in "$NS_A" "$NS_B" "$NS_C"; do
    k -n "$ns" get wan "$NAME" >/dev/null 2>&1 && ready_now "$ns" "$NAME" && { echo "$ns"; return 0; }
  done
  fail "no namespace holds $NAME Ready"
}

# partition (local provider): the holder is deleted while its node does not
# answer. The kubelet is frozen (SIGSTOP), so the holder's containers go on
# running and nothing can confirm its pods gone: the number stays held, the
# duplicate waiting in NS_C starts nothing and names the pods it waits for.
# Once the node answers again its pods go, the number is released, and the
# duplicate takes it over and becomes Ready.
scenario_partition() {
  local holder version message
  holder="$(holder_namespace)"
  version="$(jp "$holder" "$NAME" '{.spec.version}')"
  log "scenario partition: the same number in $NS_C waits while $holder holds it"
  prepare "$NS_C"
  migrate_admin_password "$holder" "$NS_C"
  apply_number "$NS_C" "$version"
  k -n "$NS_C" patch wan "$NAME" --type merge \
    -p '{"spec":{"webapp":{"adminPasswordSecretRef":{"name":"migrated-admin","key":"password"}}}}' >&2
  wait_until 120 "$NS_C/$NAME Conflict=True/PhoneNumberInUse" conflict_now "$NS_C"

  log "scenario partition: freezing the node's kubelet, then deleting $holder/$NAME"
  FROZEN=1
  WAO_CLUSTER_DIR="$LOCAL_DIR" hack/node.sh freeze >&2
  fault "the node partitioned (kubelet frozen) while the holder is deleted"
  k -n "$holder" delete wan "$NAME" --wait=false >&2
  wait_until 120 "$holder/$NAME's masters and coreapps Terminating" holder_pods_terminating "$holder"
  # While the node does not answer, the duplicate deploys nothing, the holder
  # keeps the number, and the duplicate says which pods it waits for.
  for _ in $(seq 1 30); do
    no_workloads "$NS_C" || fail "the duplicate deployed workloads while the holder's pods may still run"
    conflict_now "$NS_C" || fail "the duplicate left Conflict while the holder's pods may still run: $(condition "$NS_C" "$NAME" Conflict)"
    k -n "$holder" get wan "$NAME" >/dev/null 2>&1 || fail "the holder was released while its pods may still run"
    sleep 1
  done
  message="$(jp "$NS_C" "$NAME" '{.status.conditions[?(@.type=="Conflict")].message}')"
  grep -q "Terminating" <<<"$message" || fail "the duplicate does not name the pods it waits for: $message"
  log "partition: $NS_C/$NAME waits: $message"

  log "scenario partition: the kubelet answers again"
  WAO_CLUSTER_DIR="$LOCAL_DIR" hack/node.sh thaw >&2
  FROZEN=0
  wait_until "$TIMEOUT" "$holder/$NAME deleted" holder_deleted "$holder"
  wait_until "$TIMEOUT" "$NS_C/$NAME Ready" ready_now "$NS_C" "$NAME"
  check_health "$NS_C"
}
holder_deleted() { gone "$1" wan "$NAME"; }
# Every master and coreapp pod of NAME in NS has a deletion timestamp.
holder_pods_terminating() {
  local pods
  pods="$(k -n "$1" get pods -l "app.kubernetes.io/instance=$NAME,app.kubernetes.io/component in (master,coreapp)" \
    -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.deletionTimestamp}{"\n"}{end}')"
  [ -n "$pods" ] && ! grep -q '=$' <<<"$pods"
}

# multiconnect (local provider): a second number, 2 shards on PostgreSQL, in
# its own namespace. The images pre-register it, so the operator cannot tell
# how long ago it was registered: the change from the client's initial 1 shard
# first waits for a person's confirmation, then goes through the client's API
# with the number's certificate. Ready then comes from the health of the real
# pods (both shards' coreapps and the primary master connected), and what ran
# is checked in the pods and in PostgreSQL.
scenario_multiconnect() {
  local ns="$NS_MC" NUMBER="$MC_NUMBER" DB_ENGINE=PostgreSQL DB_HOST="$PG_HOST" SHARDS=2
  [ -n "$DB_HOST" ] || fail "the multiconnect scenario needs the local provider's PostgreSQL"
  log "scenario multiconnect: $ns/$NAME ($NUMBER) with $SHARDS shards on PostgreSQL ($DB_HOST)"
  prepare "$ns"
  apply_number "$ns" "$OLD"
  wait_until "$TIMEOUT" "$ns/$NAME Stalled=True/ShardChangeNeedsConfirmation (the client starts with 1 shard)" \
    shard_change_unconfirmed "$ns"
  [ "$(jp "$ns" "$NAME" '{.status.health.shards}')" = 1 ] || fail "the shard count changed before the confirmation"

  log "multiconnect: confirming $SHARDS shards and giving the number's certificate"
  local cert
  cert="$(k -n "$GATEWAY_NS" exec deploy/wa-gateway -- whatsapp-emulator cert --number "$NUMBER")" \
    || fail "no certificate from the gateway's emulator"
  k -n "$ns" create secret generic registration --from-literal=cert="$cert" >&2
  k -n "$ns" patch wan "$NAME" --type merge -p \
    "{\"spec\":{\"multiconnect\":{\"confirmShardChange\":$SHARDS},\"registration\":{\"secretRef\":{\"name\":\"registration\"}}}}" >&2
  wait_until "$TIMEOUT" "$ns/$NAME Ready with $SHARDS shards" ready_now "$ns" "$NAME"
  k -n "$ns" get wan "$NAME" -o wide >&2
  check_health "$ns"
  local got
  got="$(jp "$ns" "$NAME" '{.status.sharding.phase} {.status.sharding.current} {.status.sharding.lastRequest.outcome}')"
  [[ "$got" == "InSync $SHARDS "* ]] || fail "status.sharding is not in sync at $SHARDS shards: $got"
  log "multiconnect: status.sharding: $got"
  got="$(k -n "$ns" get statefulset "$NAME-coreapp" -o jsonpath='{.spec.replicas} {.status.readyReplicas}')"
  [ "$got" = "$((SHARDS + 1)) $((SHARDS + 1))" ] || fail "coreapp StatefulSet replicas/ready = $got, expected $((SHARDS + 1))"

  # What really ran: each connected coreapp has the operator's PostgreSQL
  # environment and its own log says which shard it connected for.
  local pod env served="" shard
  for pod in $(jp "$ns" "$NAME" '{range .status.health.nodes[?(@.role=="coreapp")]}{.pod} {.gatewayStatus}{"\n"}{end}' |
    awk '$2 == "connected" { print $1 }'); do
    # shellcheck disable=SC2016 # expanded in the container
    env="$(k -n "$ns" exec "$pod" -- sh -c 'echo "$WA_DB_ENGINE $WA_DB_HOSTNAME $WA_DB_PORT $WA_DB_NAME_PREFIX $WA_APP_MULTICONNECT"')" \
      || fail "kubectl exec into $ns/$pod failed"
    [ "$env" = "PGSQL $DB_HOST 5432 wa${NUMBER//[!0-9]/} 1" ] || fail "$ns/$pod runs with $env, not the operator's PostgreSQL environment"
    shard="$(k -n "$ns" logs "$pod" | grep 'connected to WhatsApp servers' | tail -n 1 | grep -o 'shard=[^ ]*' | tr -dc '0-9')" || true
    [ -n "$shard" ] || fail "$ns/$pod is reported connected but its log shows no connected shard"
    log "multiconnect: $pod: env $env; its log: connected to WhatsApp servers for shard $shard"
    served+="$shard"$'\n'
  done
  got="$(sort -n <<<"${served%$'\n'}" | tr '\n' ' ')"
  [ "$got" = "0 1 " ] || fail "the connected coreapps serve shards '$got', not 0 and 1"
  # The client's node table in PostgreSQL lists the pods (their IPs).
  got="$(PGPASSWORD="$DB_PASSWORD" psql -h 127.0.0.1 -p "$LOCAL_POSTGRES_PORT" -U "$DB_USER" -d "wa${NUMBER//[!0-9]/}_waent" \
    -Atc "SELECT role || ' ' || address FROM wa_nodes ORDER BY role, address")" || fail "cannot read the client's nodes from PostgreSQL"
  log "multiconnect: nodes in PostgreSQL (wa${NUMBER//[!0-9]/}_waent.wa_nodes): ${got//$'\n'/, }"
  [ "$(grep -c . <<<"$got")" = $((SHARDS + 3)) ] || fail "expected $((SHARDS + 3)) nodes in PostgreSQL, got: $got"
}
shard_change_unconfirmed() { [ "$(condition "$1" "$NAME" Stalled)" = True/ShardChangeNeedsConfirmation ]; }

timed ready scenario_ready
for s in "${SCENARIOS[@]}"; do
  case "$s" in
    scale-webapp) timed "$s" scenario_scale_webapp ;;
    upgrade) timed "$s" scenario_upgrade ;;
    unpullable) timed "$s" scenario_unpullable ;;
    conflict) timed "$s" scenario_conflict ;;
    partition) timed "$s" scenario_partition ;;
    failover) timed "$s" scenario_failover ;;
    multiconnect) timed "$s" scenario_multiconnect ;;
  esac
done
log "faults injected and survived: ${#FAULTS[@]}"
for f in "${FAULTS[@]}"; do log "  $f"; done
# A child the API server does not return as the operator applied it would be
# written at every reconcile (src/controller/drift.rs says why). This reads
# the operators running now: a leader deleted on the way took its log along.
operator_logs="$(k -n "$OPERATOR_NS" logs -l app.kubernetes.io/name=whatsapp-operator --all-containers --prefix --tail=-1 2>&1)" ||
  fail "kubectl logs of the operators: $operator_logs"
[ -n "$operator_logs" ] || fail "the operators' logs are empty"
rewritten="$(grep 'does not read back as applied' <<<"$operator_logs" || true)"
[ -z "$rewritten" ] || fail "children that do not read back as applied: $rewritten"
log "no child failed to read back as applied ($(wc -l <<<"$operator_logs") log lines read)"
