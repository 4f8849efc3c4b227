#!/usr/bin/env bash
# The local demo: a real control plane on this machine, the operator, the HA
# example and the emulated WhatsApp client, so the operator judges a running
# client's health before it calls the number Ready. Two modes:
#
#   real  (where the machine allows it: root, containerd and debootstrap
#         installed, the machine's one real node free) the example's pods run
#         on a real node of the local cluster, from images built here; the
#         operator is installed with its Helm chart, as users run it;
#   kwok  (the fallback) fake nodes, nothing pulled or built as images; the
#         operator and emulator processes standing in for the pods run on
#         this machine.
#
#   hack/demo.sh [--real|--kwok]  bring it all up (afresh if a demo runs already)
#   hack/demo.sh down     stop everything the demo started and delete its directory
#   hack/demo.sh coreapp  start one more emulated coreapp in the running demo (kwok mode)
#
# Afterwards: export KUBECONFIG=.cache/demo/cluster/kubeconfig
# Knobs: WAO_DEMO_MODE (auto, real or kwok; default auto: real where the
# machine allows it), WAO_DEMO_DIR (default .cache/demo), WAO_DEMO_NAMESPACE
# (default demo), WAO_DEMO_TIMEOUT (seconds per wait, default 180).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

DEMO_DIR="${WAO_DEMO_DIR:-$REPO/.cache/demo}"
case "$DEMO_DIR" in /*) ;; *) DEMO_DIR="$REPO/$DEMO_DIR" ;; esac
DEMO_DIR="${DEMO_DIR%/}"
export WAO_CLUSTER_DIR="$DEMO_DIR/cluster"
NAMESPACE="${WAO_DEMO_NAMESPACE:-demo}"
TIMEOUT="${WAO_DEMO_TIMEOUT:-180}"
MODE="${WAO_DEMO_MODE:-auto}"
# The real-node mode: the operator in the cluster, the client's pods on the node.
OPERATOR_NS=whatsapp-operator-system
GATEWAY_NS=wa-emulator
# shellcheck source=hack/lib/real-pods.sh
. hack/lib/real-pods.sh

# The emulated deployment matches this example: 2 masters, 1 shard + 1 standby.
EXAMPLE=examples/ha-mysql.yaml
NAME=ha-mysql
NUMBER="$(sed -n 's/^ *phoneNumber: *"\(.*\)".*/\1/p' "$EXAMPLE")"
VERSION="$(sed -n 's/^ *version: *"\(.*\)".*/\1/p' "$EXAMPLE")"
MASTERS=(127.88.0.2 127.88.0.3)
COREAPPS=(127.88.0.4 127.88.0.5)
# The database name prefix the operator gives this number (WA_DB_NAME_PREFIX):
# "wa" and the number's digits.
DB_PREFIX="wa${NUMBER//[!0-9]/}"

LOGS="$DEMO_DIR/logs"
# One line per process the demo started: "<name> <address> <pid> [<container id>]";
# an emulated node's id in /v1/health is "<host name>:<container id>".
PIDS="$DEMO_DIR/pids"
# The demo's own MariaDB and PostgreSQL (hack/databases.sh with its own data
# directory and ports, so it never touches the test suite's servers). Outside
# the demo directory: both servers run as unprivileged users when started as root.
DB_DIR="/tmp/wao-demo-databases-$(printf '%s' "$DEMO_DIR" | cksum | cut -d' ' -f1)"
# Every process the demo starts carries this variable, so `down` finds them all
# (also after an interrupted start) and never anything else.
OWNER_VAR="WAO_DEMO_OWNER=$DEMO_DIR"

log() { echo "[demo] $*" >&2; }

# fail MESSAGE [LOG...]: says what went wrong, shows the tail of each log, exits.
fail() {
  log "error: $1"
  shift
  local f
  for f in "$@"; do
    if [ -s "$f" ]; then
      echo "----- last lines of $f" >&2
      tail -n 25 "$f" >&2
    fi
  done
  log "everything started so far keeps running for inspection (logs: $LOGS);"
  log "KUBECONFIG=$WAO_CLUSTER_DIR/kubeconfig. Stop it all with: hack/demo.sh down"
  exit 1
}

# wait_for SECONDS WHAT "LOG..." CMD...: runs CMD every second until it succeeds.
wait_for() {
  local seconds="$1" what="$2" logs="$3"
  shift 3
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    # shellcheck disable=SC2086 # a list of log files
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not done within ${seconds}s" $logs
    sleep 1
  done
}

free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 30000))
    if [ -z "$(ss -Htln "sport = :$port")" ]; then
      echo "$port"
      return
    fi
  done
  fail "no free TCP port found"
}

# ---------------------------------------------------------------------------
# Stopping

# Pids of live processes started by this demo (found by the marker variable).
demo_pids() {
  local environ pid
  for environ in /proc/[0-9]*/environ; do
    pid="${environ#/proc/}"
    pid="${pid%/environ}"
    if grep -qzxF -- "$OWNER_VAR" "$environ" 2>/dev/null; then
      echo "$pid"
    fi
  done
}

stop_processes() {
  local pids
  pids="$(demo_pids)"
  [ -n "$pids" ] || return 0
  log "stopping the operator and the emulators ($(echo "$pids" | wc -w) processes)"
  # SIGTERM first: emulated nodes remove themselves from the database.
  # shellcheck disable=SC2086 # a list of pids
  kill -TERM $pids 2>/dev/null || true
  local deadline=$((SECONDS + 10))
  while [ -n "$(demo_pids)" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
  pids="$(demo_pids)"
  if [ -n "$pids" ]; then
    log "killing what did not stop: $(echo "$pids" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
}

down() {
  stop_processes
  if [ -d "$WAO_CLUSTER_DIR" ]; then
    hack/local-cluster.sh down
  fi
  if [ -d "$DB_DIR" ]; then
    log "stopping the demo's databases"
    WAO_DB_DIR="$DB_DIR" hack/databases.sh down 2>&1 | sed 's/^/  /' >&2
  fi
  rm -rf "$DEMO_DIR"
}

# start NAME ADDRESS CONTAINER_ID CMD...: runs CMD in the background, marked as
# the demo's, with its output in $LOGS/NAME.log, and records it in the pids file.
start() {
  local name="$1" address="$2" container="$3"
  shift 3
  env "$OWNER_VAR" nohup "$@" </dev/null >"$LOGS/$name.log" 2>&1 &
  echo "$name $address $! $container" >>"$PIDS"
}

# node NAME ADDRESS [VAR=VALUE...]: one emulated master or coreapp, bound to its
# own loopback address, with its own container id.
node() {
  local name="$1" address="$2" container
  shift 2
  container="$(openssl rand -hex 6)"
  start "$name" "$address" "$container" env "${EMULATOR_ENV[@]}" "$@" "COREAPP_HOSTNAME=$address" \
    "WA_EMULATOR_CONTAINER_ID=$container" "$EMULATOR"
  wait_for 60 "$name listening on $address:6252" "$LOGS/$name.log" curl -s "http://$address:6252/control/status"
}

# One more coreapp on the next unused address, with the running demo's settings.
add_coreapp() {
  [ -s "$DEMO_DIR/emulator.env" ] || { log "no demo runs in $DEMO_DIR: start one with hack/demo.sh"; exit 1; }
  mapfile -t EMULATOR_ENV <"$DEMO_DIR/emulator.env"
  EMULATOR="$(cat "$DEMO_DIR/emulator.path")"
  local n
  n="$(grep -c '^coreapp-' "$PIDS" || true)"
  node "coreapp-$n" "127.88.0.$((4 + n))"
  log "started $(tail -n 1 "$PIDS")"
}

# ---------------------------------------------------------------------------
# Real-node mode: the example's pods on a real node (hack/lib/real-pods.sh,
# shared with the e2e suite's local provider).

up_real() {
  local t0=$SECONDS images released newer tier tiers="" patch
  log "starting the local control plane with a real node (containerd, kubelet, kube-proxy, CoreDNS on this machine)"
  KUBECONFIG="$(rp_cluster_up "$WAO_CLUSTER_DIR" 8 2>"$LOGS/cluster.log")" \
    || fail "the local cluster with a real node did not start" "$LOGS/cluster.log"
  export KUBECONFIG
  RP_KUBECTL="$KUBECTL" RP_HELM="$TOOLS/helm" RP_KUBECONFIG="$KUBECONFIG"

  # The emulator's images (the example's version and 2.55.1, to upgrade to)
  # bake in the gateway's Service, a clock at which both builds are valid, the
  # example's number as registered (no SMS step) and a 1 s heartbeat (a
  # coreapp silent for 8 s loses its shard).
  images="wao.local/wa-emulator"
  log "building the images (release binaries on a cached debootstrap base) and importing them into the node (log: $LOGS/images.log)"
  rp_images_load "$WAO_CLUSTER_DIR" wao.local wao.local/whatsapp-operator:dev "$images" "$VERSION 2.55.1" \
    "WA_EMULATOR_GATEWAY=wa-gateway.$GATEWAY_NS.svc:5222 WA_EMULATOR_NOW=2024-05-01T00:00:00Z WA_EMULATOR_REGISTERED_NUMBER=$NUMBER WA_EMULATOR_HEARTBEAT_INTERVAL=1 WA_EMULATOR_UNHEALTHY_INTERVAL=8" \
    "$DEMO_DIR/images" >"$LOGS/images.log" 2>&1 || fail "building or importing the images failed" "$LOGS/images.log"
  log "MariaDB for the pods: mariadb.wao-host.svc:3306 -> 127.0.0.1:$WAO_MYSQL_PORT"
  rp_expose "$WAO_CLUSTER_DIR" mariadb 3306 "127.0.0.1:$WAO_MYSQL_PORT" || fail "could not expose MariaDB to the pods"
  rp_install_gateway "$GATEWAY_NS" "$images/coreapp:v$VERSION"

  # The release catalog as the chart renders it: the example's build released
  # 165 days ago, so it expires in 15 days and BuildExpiring warns at once.
  released="$(date -u -d '165 days ago' +%F)"
  newer="$(date -u -d '20 days ago' +%F)"
  log "dating $VERSION in the release catalog (chart value releaseCatalog.entries): released $released, so it expires in 15 days"
  printf 'releaseCatalog:\n  entries:\n  - {version: "%s", releasedAt: "%s"}\n  - {version: "2.55.1", releasedAt: "%s"}\n' \
    "$VERSION" "$released" "$newer" >"$DEMO_DIR/operator-values.yaml"
  rp_install_operator "$OPERATOR_NS" wao.local/whatsapp-operator dev "$TIMEOUT" -f "$DEMO_DIR/operator-values.yaml" \
    2>"$LOGS/helm.log" || fail "helm install of the operator failed" "$LOGS/helm.log"
  "$KUBECTL" -n "$GATEWAY_NS" rollout status deployment/wa-gateway --timeout="${TIMEOUT}s" >/dev/null \
    || fail "the gateway did not become ready"

  # The example as written, but on the emulator's images, the demo's MariaDB
  # and this one small node: small requests, and a preferred anti-affinity
  # instead of the default required one (every pod is on the same node).
  for tier in master coreapp webapp; do
    tiers+=",\"$tier\":{\"resources\":{\"requests\":{\"cpu\":\"50m\",\"memory\":\"64Mi\"}},\"affinity\":{\"podAntiAffinity\":{\"preferredDuringSchedulingIgnoredDuringExecution\":[{\"weight\":1,\"podAffinityTerm\":{\"topologyKey\":\"kubernetes.io/hostname\",\"labelSelector\":{\"matchLabels\":{\"app.kubernetes.io/instance\":\"$NAME\"}}}}]}}}"
  done
  patch="{\"spec\":{\"images\":{\"coreapp\":\"$images/coreapp\",\"webapp\":\"$images/web\",\"pullPolicy\":\"Never\"},\"database\":{\"host\":\"mariadb.wao-host.svc\"},\"health\":{\"pollIntervalSeconds\":5}$tiers}}"
  "$KUBECTL" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
  log "applying $EXAMPLE in namespace $NAMESPACE: its Secret with the demo database's user, its WhatsAppNumber with"
  log "  the emulator's images, host mariadb.wao-host.svc, small requests, a preferred anti-affinity, health every 5 s"
  k create secret generic "$NAME-db" --from-literal=username="$WAO_MYSQL_USER" --from-literal=password="$WAO_MYSQL_PASSWORD" \
    --dry-run=client -o yaml | k apply -f - >&2
  sed -n '/^apiVersion: whatsapp.operators.dev/,$p' "$EXAMPLE" |
    "$KUBECTL" patch --local -f - --type merge -p "$patch" -o yaml | k apply -f - >&2

  log "waiting for $NAME to be Ready from the health of its pods (up to ${TIMEOUT}s)"
  if ! k wait --for=condition=Ready "wan/$NAME" --timeout="${TIMEOUT}s" >/dev/null; then
    k get wan "$NAME" -o jsonpath='{range .status.conditions[*]}  {.type}={.status}  {.reason}: {.message}{"\n"}{end}' >&2 || true
    k get pods -o wide >&2 || true
    "$KUBECTL" -n "$OPERATOR_NS" logs -l app.kubernetes.io/name=whatsapp-operator --prefix --tail=30 >"$LOGS/operator.log" 2>&1 || true
    fail "$NAME did not become Ready" "$LOGS/operator.log"
  fi

  echo
  k get wan -o wide
  echo
  echo "Conditions:"
  k get wan "$NAME" -o jsonpath='{range .status.conditions[*]}  {.type}={.status}  {.reason}: {.message}{"\n"}{end}'
  echo
  echo "The build and its expiry (.status.build, from the release catalog):"
  k get wan "$NAME" -o jsonpath='  {.status.build.version}: released {.status.build.releasedAt}, expires {.status.build.expiresAt}
'
  echo
  echo "Health, as the operator polled it from the webapp through its Service (.status.health):"
  k get wan "$NAME" -o jsonpath='  gateway: {.status.health.gateway}
  primary master: {.status.health.primaryMaster}
  shards: {.status.health.shards}, connected coreapps: {.status.health.connectedCoreapps}, standby: {.status.health.standbyCoreapps}
'
  printf '  %-32s %-18s %-14s %s\n' NODE ROLE GATEWAY POD
  k get wan "$NAME" -o jsonpath='{range .status.health.nodes[*]}{.id} {.role} {.gatewayStatus} {.pod}{"\n"}{end}' |
    while read -r id role status pod; do printf '  %-32s %-18s %-14s %s\n' "$id" "$role" "${status:-unreachable}" "$pod"; done
  echo
  echo "Pods (on the real node $(k get pods -o jsonpath='{.items[0].spec.nodeName}'); the operator's in $OPERATOR_NS):"
  k get pods -o wide
  "$KUBECTL" -n "$OPERATOR_NS" get pods -o wide

  local rel_dir="${DEMO_DIR#"$REPO"/}"
  cat <<MSG

The demo runs on a real node (up in $((SECONDS - t0))s after the databases); logs in $rel_dir/logs/.
Try this (from $REPO):
  export KUBECONFIG=$KUBECONFIG PATH=$TOOLS:\$PATH
  kubectl -n $NAMESPACE describe wan $NAME
  kubectl -n $NAMESPACE logs $NAME-coreapp-0          # the emulated client, started with the operator's environment
  kubectl -n $OPERATOR_NS logs deploy/whatsapp-operator

  # In another terminal, watch the verdict:
  kubectl -n $NAMESPACE get wan $NAME -w

  # Delete the pod of the coreapp that holds the shard: the standby takes over
  # and the StatefulSet's new pod becomes the standby.
  pod=\$(kubectl -n $NAMESPACE get wan $NAME -o jsonpath='{range .status.health.nodes[?(@.role=="coreapp")]}{.pod} {.gatewayStatus}{"\n"}{end}' | awk '\$2 == "connected" {print \$1; exit}')
  kubectl -n $NAMESPACE delete pod "\$pod"

  # Scale the webapps, or upgrade to 2.55.1 (its image is on the node): the
  # operator stops masters and coreapps, runs the schema Job, then starts the new ones.
  kubectl -n $NAMESPACE patch wan $NAME --type merge -p '{"spec":{"webapp":{"replicas":3}}}'
  kubectl -n $NAMESPACE patch wan $NAME --type merge -p '{"spec":{"version":"2.55.1"}}'

Start it afresh with: hack/demo.sh     Stop it all with: hack/demo.sh down
MSG
}

CMD=up
for arg in "$@"; do
  case "$arg" in
    --real) MODE=real ;;
    --kwok) MODE=kwok ;;
    *) CMD="$arg" ;;
  esac
done
case "$CMD" in
  up) ;;
  down)
    down
    log "stopped"
    exit 0
    ;;
  coreapp)
    if [ "$(cat "$DEMO_DIR/mode" 2>/dev/null)" = real ]; then
      log "the demo runs on a real node: the coreapps are the operator's pods; for one more standby:"
      log "  kubectl -n $NAMESPACE patch wan $NAME --type merge -p '{\"spec\":{\"multiconnect\":{\"standbyCoreapps\":2}}}'"
      exit 1
    fi
    add_coreapp
    exit 0
    ;;
  *)
    echo "usage: $0 [up|down|coreapp] [--real|--kwok]" >&2
    exit 2
    ;;
esac

# ---------------------------------------------------------------------------
# Starting

if [ -z "$NUMBER" ] || [ -z "$VERSION" ]; then fail "cannot read phoneNumber and version from $EXAMPLE"; fi
case "$MODE" in
  auto)
    if why="$(rp_unavailable)"; then
      MODE=kwok
      log "mode: kwok (fake nodes, emulator processes on this machine): no real node here, $why"
    else
      MODE=real
      log "mode: real (the example's pods on a real node of the local cluster; WAO_DEMO_MODE=kwok for the fallback)"
    fi ;;
  real)
    why="$(rp_unavailable)" && fail "WAO_DEMO_MODE=real: no real node here: $why"
    log "mode: real (the example's pods on a real node of the local cluster)" ;;
  kwok) log "mode: kwok (fake nodes, emulator processes on this machine)" ;;
  *) fail "WAO_DEMO_MODE must be auto, real or kwok (not $MODE)" ;;
esac
if [ -d "$DEMO_DIR" ] || [ -d "$DB_DIR" ]; then
  log "a demo exists in $DEMO_DIR: stopping it to start afresh"
fi
down
mkdir -p "$LOGS"
: >"$PIDS"
echo "$MODE" >"$DEMO_DIR/mode"

TOOLS="$(hack/tools.sh ensure)"
KUBECTL="$TOOLS/kubectl"
k() { "$KUBECTL" -n "$NAMESPACE" "$@"; }

WAO_MYSQL_PORT="$(free_port)"
WAO_POSTGRES_PORT="$(free_port)"
[ "$WAO_MYSQL_PORT" != "$WAO_POSTGRES_PORT" ] || WAO_POSTGRES_PORT="$(free_port)"
export WAO_DB_DIR="$DB_DIR" WAO_MYSQL_PORT WAO_POSTGRES_PORT
log "starting the demo's MariaDB on 127.0.0.1:$WAO_MYSQL_PORT (hack/databases.sh up, data in $DB_DIR)"
hack/databases.sh up >"$LOGS/databases.log" 2>&1 || fail "hack/databases.sh up failed" "$LOGS/databases.log"
eval "$(hack/databases.sh env)"

if [ "$MODE" = real ]; then
  up_real
  exit 0
fi

log "building the operator and the emulator"
cargo build --quiet -p whatsapp-operator -p whatsapp-emulator --bin whatsapp-operator --bin whatsapp-emulator
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
OPERATOR="$TARGET_DIR/debug/whatsapp-operator"
EMULATOR="$TARGET_DIR/debug/whatsapp-emulator"

log "starting the local control plane (first run builds the Kubernetes binaries from Go modules)"
KUBECONFIG="$(hack/local-cluster.sh up)"
export KUBECONFIG

# ---------------------------------------------------------------------------
# The emulated client: what the pods would run, as local processes on MariaDB.

GATEWAY="127.0.0.1:$(free_port)"
EMULATOR_ENV=(
  WA_DB_ENGINE=MYSQL
  "WA_DB_HOSTNAME=$WAO_MYSQL_HOST"
  "WA_DB_PORT=$WAO_MYSQL_PORT"
  "WA_DB_USERNAME=$WAO_MYSQL_USER"
  "WA_DB_PASSWORD=$WAO_MYSQL_PASSWORD"
  WA_APP_MULTICONNECT=1
  "WA_DB_NAME_PREFIX=$DB_PREFIX"
  "WA_EMULATOR_VERSION=$VERSION"
  # The built-in catalog dates every build; this clock keeps the version valid.
  WA_EMULATOR_NOW=2024-03-01T00:00:00Z
  "WA_EMULATOR_GATEWAY=$GATEWAY"
  # Skips the SMS/voice registration for the demo.
  "WA_EMULATOR_REGISTERED_NUMBER=$NUMBER"
  # Heartbeat every second; a coreapp silent for 8 s loses its shard.
  WA_EMULATOR_HEARTBEAT_INTERVAL=1
  WA_EMULATOR_UNHEALTHY_INTERVAL=8
  "RUST_LOG=info,sqlx=warn"
)

printf '%s\n' "${EMULATOR_ENV[@]}" >"$DEMO_DIR/emulator.env"
echo "$EMULATOR" >"$DEMO_DIR/emulator.path"

log "starting the gateway (the stand-in for WhatsApp's servers) on $GATEWAY"
start gateway "$GATEWAY" "" env "${EMULATOR_ENV[@]}" "$EMULATOR" gateway --listen "$GATEWAY"
wait_for 30 "the gateway answering on $GATEWAY" "$LOGS/gateway.log" curl -sf "http://$GATEWAY/admin/connections"

log "creating the client's databases (WA_DB_UPGRADE=1) with prefix $DB_PREFIX"
timeout 120 env "$OWNER_VAR" "${EMULATOR_ENV[@]}" WA_DB_UPGRADE=1 "$EMULATOR" </dev/null >"$LOGS/upgrade.log" 2>&1 ||
  fail "the schema creation failed" "$LOGS/upgrade.log"

log "starting masters on ${MASTERS[*]} and coreapps on ${COREAPPS[*]} (ports 6250-6253 each)"
for i in "${!MASTERS[@]}"; do node "master-$i" "${MASTERS[$i]}" WA_MASTER_NODE=1; done
for i in "${!COREAPPS[@]}"; do node "coreapp-$i" "${COREAPPS[$i]}"; done

# ---------------------------------------------------------------------------
# The operator and the example

log "installing the CRD"
"$KUBECTL" apply --server-side -f crds/ >/dev/null
wait_for 60 "the CRD established" "" \
  "$KUBECTL" wait --for=condition=Established crd/whatsappnumbers.whatsapp.operators.dev --timeout=5s

# Every build expires 180 days after its release. The demo dates the example's
# build 165 days back, so its expiry (in 15 days) and the warning show at once;
# examples/release-catalog.yaml is the same ConfigMap with fixed dates.
RELEASED="$(date -u -d '165 days ago' +%F)"
NEWER="$(date -u -d '20 days ago' +%F)"
log "dating $VERSION in the release catalog: released $RELEASED, so it expires in 15 days"
"$KUBECTL" -n default create configmap whatsapp-operator-release-catalog --dry-run=client -o yaml \
  --from-literal=catalog.yaml="$(printf -- '- {version: "%s", releasedAt: "%s"}\n- {version: "2.55.1", releasedAt: "%s"}\n' \
    "$VERSION" "$RELEASED" "$NEWER")" | "$KUBECTL" apply -f - >/dev/null

WEBAPP_PORT="$(free_port)"
WEBAPP_URL="https://127.0.0.1:$WEBAPP_PORT"
METRICS="127.0.0.1:$(free_port)"
log "running the operator (log: $LOGS/operator.log); it reaches $NAMESPACE/$NAME's webapp at $WEBAPP_URL"
start operator "$METRICS" "" "$OPERATOR" --operator-namespace default --metrics-address "$METRICS" \
  --webapp-url "$NAMESPACE/$NAME=$WEBAPP_URL"
wait_for 60 "the operator answering on http://$METRICS/readyz" "$LOGS/operator.log" curl -sf "http://$METRICS/readyz"

"$KUBECTL" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
log "applying $EXAMPLE in namespace $NAMESPACE"
k apply -f "$EXAMPLE" >&2
log "polling the webapp's health every 5 s"
k patch wan "$NAME" --type merge -p '{"spec":{"health":{"pollIntervalSeconds":5}}}' >&2

log "waiting for the operator's Secret $NAME-keys"
wait_for 60 "Secret $NAME-keys" "$LOGS/operator.log" k get secret "$NAME-keys"
secret_value() { k get secret "$NAME-keys" -o "jsonpath={.data.$1}" | base64 -d; }
API_KEY="$(secret_value WA_API_KEY)"
JWT_KEY="$(secret_value WA_WEB_JWT_CRYPTO_KEY)"
[ -n "$API_KEY" ] || fail "Secret $NAME-keys has no WA_API_KEY" "$LOGS/operator.log"

# The webapp serves the client's own certificate; the operator reads its CA
# once (GET /v1/certificates/external/ca) and verifies every call with it.
log "starting the webapp on $WEBAPP_URL with the operator's API key"
start webapp "127.0.0.1:$WEBAPP_PORT" "" env "${EMULATOR_ENV[@]}" WA_EMULATOR_IMAGE=web \
  "WA_EMULATOR_WEB_LISTEN=127.0.0.1:$WEBAPP_PORT" "WA_API_KEY=$API_KEY" "WA_WEB_JWT_CRYPTO_KEY=$JWT_KEY" "$EMULATOR"
# The last answer (or curl's error) is kept in $LOGS/webapp-health.txt. This
# local check skips verification: nothing but the demo's processes listen here.
webapp_healthy() {
  local code
  code="$(curl -sS --insecure -H "Authorization: Apikey $API_KEY" -o "$LOGS/webapp-health.body" \
    -w '%{http_code}' "$WEBAPP_URL/v1/health" 2>"$LOGS/webapp-health.err")" || true
  { echo "HTTP $code"; cat "$LOGS/webapp-health.body" "$LOGS/webapp-health.err" 2>/dev/null; echo; } >"$LOGS/webapp-health.txt"
  [ "$code" = 200 ]
}
wait_for 60 "the webapp answering on $WEBAPP_URL/v1/health" "$LOGS/webapp.log $LOGS/webapp-health.txt" webapp_healthy

conditions() {
  k get wan "$NAME" -o jsonpath='{range .status.conditions[*]}  {.type}={.status}  {.reason}: {.message}{"\n"}{end}'
}

log "waiting for $NAME to be Ready (up to ${TIMEOUT}s)"
has_conditions() { [ -n "$(k get wan "$NAME" -o jsonpath='{.status.conditions}')" ]; }
wait_for 60 "the operator reporting $NAME's status" "$LOGS/operator.log" has_conditions
if ! k wait --for=condition=Ready "wan/$NAME" --timeout="${TIMEOUT}s" >/dev/null; then
  log "conditions:"
  conditions >&2 || true
  dead=""
  while read -r name _ pid _; do
    kill -0 "$pid" 2>/dev/null || dead="$dead $LOGS/$name.log"
  done <"$PIDS"
  [ -z "$dead" ] || log "processes that exited:$dead"
  # shellcheck disable=SC2086
  fail "$NAME did not become Ready" "$LOGS/operator.log" "$LOGS/webapp.log" $dead
fi

# ---------------------------------------------------------------------------
# What it shows

echo
k get wan -o wide
echo
echo "Conditions:"
conditions
echo
echo "The build and its expiry (.status.build, from the release catalog):"
k get wan "$NAME" -o jsonpath='  {.status.build.version}: released {.status.build.releasedAt}, expires {.status.build.expiresAt}
'
echo
echo "Health, as the operator polled it from the webapp (.status.health):"
k get wan "$NAME" -o jsonpath='  gateway: {.status.health.gateway}
  primary master: {.status.health.primaryMaster}
  shards: {.status.health.shards}, connected coreapps: {.status.health.connectedCoreapps}, standby: {.status.health.standbyCoreapps}
'
printf '  %-22s %-18s %-14s %s\n' NODE ROLE GATEWAY PROCESS
k get wan "$NAME" -o jsonpath='{range .status.health.nodes[*]}{.id} {.role} {.gatewayStatus}{"\n"}{end}' |
  while read -r id role status; do
    process="$(awk -v c="${id##*:}" '$4 == c {print $1 " on " $2 " (pid " $3 ")"}' "$PIDS")"
    printf '  %-22s %-18s %-14s %s\n' "$id" "$role" "${status:-unreachable}" "$process"
  done
echo
echo "Workloads (pods run on kwok's fake nodes; the processes above stand in for them):"
k get statefulsets,deployments,pods,pvc -l "app.kubernetes.io/instance=$NAME"

REL_DIR="${DEMO_DIR#"$REPO"/}"
cat <<MSG

The demo is running: processes and addresses in $REL_DIR/pids, logs in $REL_DIR/logs/.
Try this (from $REPO):
  export KUBECONFIG=$KUBECONFIG PATH=$TOOLS:\$PATH
  kubectl -n $NAMESPACE describe wan $NAME

  # In another terminal, watch the verdict:
  kubectl -n $NAMESPACE get wan $NAME -w

  # Kill (SIGKILL) the coreapp that holds the shard, as if its pod died:
  id=\$(kubectl -n $NAMESPACE get wan $NAME -o jsonpath='{range .status.health.nodes[?(@.role=="coreapp")]}{.id} {.gatewayStatus}{"\n"}{end}' | awk '\$2 == "connected" {print \$1; exit}')
  kill -9 "\$(awk -v c="\${id##*:}" '\$4 == c {print \$3}' $REL_DIR/pids)"
  # Degraded/ShardsNotConnected until the standby takes the shard (~8 s), then
  # NodeUnreachable while the dead node is still listed (~40 s), then Ready again.

  # Start one more coreapp process (a new standby):
  hack/demo.sh coreapp

  # Two shards: the change goes through the client's API. The number was
  # registered before the operator watched it, so the change first waits for a
  # confirmation (Stalled/ShardChangeNeedsConfirmation: after 7 days the call
  # disconnects a number), then needs the number's certificate, here from the
  # emulated WhatsApp. Both shards connect only if two coreapp processes are
  # alive (else ShardsNotConnected).
  kubectl -n $NAMESPACE patch wan $NAME --type merge -p '{"spec":{"multiconnect":{"shards":2}}}'
  kubectl -n $NAMESPACE patch wan $NAME --type merge -p '{"spec":{"multiconnect":{"confirmShardChange":2}}}'
  kubectl -n $NAMESPACE create secret generic registration --from-literal=cert="\$($EMULATOR cert --number $NUMBER)"
  kubectl -n $NAMESPACE patch wan $NAME --type merge -p '{"spec":{"registration":{"secretRef":{"name":"registration"}}}}'

Start it afresh with: hack/demo.sh     Stop it all with: hack/demo.sh down
MSG
