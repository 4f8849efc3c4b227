#!/usr/bin/env bash
# hack/bench.sh N: what the operator costs per WhatsAppNumber, measured in one
# run on a local control plane of its own (docs/performance.md has the results).
#
# Phases, in order:
#   cluster    hack/local-cluster.sh with max(20, N/10) kwok nodes (at most 250),
#              2N+8 pool volumes (every number has a media claim), room (pods,
#              CPU and memory) for the pods of both sets below, whatever the
#              nodes they land on, and the apiserver's audit log on for the
#              ServiceAccounts of whatsapp-operator-system (Metadata level).
#   build      cargo build --release of the operator and the emulator.
#   floor      the same children applied by a bare client: `whatsapp-operator
#              render` of the same N numbers (namespace bench-floor), applied
#              with `kubectl apply --server-side` in 16 parallel chunks
#              (kubectl sends at most 5 requests a second each); floor_s
#              is the time until every StatefulSet and Deployment has all its
#              replicas ready and updated and every schema Job succeeded. All
#              children go in at once at running size: the operator instead
#              starts the masters, coreapps and webapps only once the schema
#              Job succeeded, so that wait is part of what the ratio charges to
#              the operator (the real client cannot start before its schema).
#              The floor runs first, while no operator runs, and its namespace
#              is deleted (and gone), and every volume it bound recycled and
#              Available again, before the operator starts, so both sets meet
#              the same cluster; its writes are not in the audit log (only
#              the operator's ServiceAccount is logged, in blocking mode, which
#              adds the log's latency to the operator's requests only).
#   idle       the operator (release binary, the chart's ServiceAccount and
#              RBAC through a token, leader election on) with no number:
#              resident memory (VmRSS of /proc/PID/status) 10 s after it leads.
#   create     N numbers shaped like examples/ha-mysql.yaml (2 masters, 1
#              shard + 1 standby coreapp, 2 webapps, a 1Gi media claim, a
#              credentials Secret each, created beforehand) with health polling
#              off (spec.health.enabled=false: Ready follows the workloads, as
#              in the integration suite on kwok), applied at once in 16
#              parallel chunks. ready_s: until the bench sees every number Ready=True
#              with observedGeneration == generation (polled every second, like
#              the floor); p50_s/p99_s: Ready's lastTransitionTime minus
#              creationTimestamp per number (1 s resolution). Over this window:
#              writes_per_number (audit log: the operator's create, update,
#              patch, delete, deletecollection; its leader election Lease and
#              Events left out and reported apart, the per-number claim Leases
#              counted), reconciles_per_number (the operator's
#              whatsapp_operator_reconciles counter), cpu_s_per_reconcile
#              (utime+stime of /proc/PID/stat over the window divided by the
#              reconciles in it). rss_loaded_mib once all are Ready;
#              bytes_per_number = (loaded - idle) / N.
#   rest       once all are Ready and the operator wrote nothing for 15 s
#              (rest_settle_s: how long that took; the last numbers' first
#              admin results are written by then; a write every few seconds
#              fails the run), every request of the operator in the
#              next 60 s (its Lease included): idle_requests_per_min_polling_off;
#              at its end rss_rest_mib, and the heap's bytes in use and freed
#              but kept by the allocator after the operator's last trim
#              (heap_rest_in_use_mib, heap_rest_free_mib; the
#              whatsapp_operator_heap_* metrics): what the numbers keep, and
#              what the allocator holds beside it.
#   settled    RSS_SETTLE_S (510) s after all were Ready, when no Event was
#              published for longer than the event series window (6 minutes)
#              and the operator dropped its last series (checked every minute):
#              rss_settled_mib, the memory of N Ready numbers once the
#              rollout's leftovers are given back (WAO_BENCH_SETTLED=skip
#              leaves it out).
#   restart    SIGTERM, then the same operator again: its writes (Lease and
#              Events apart) and all its requests in the 60 s after the start;
#              rss_restarted_mib and the heap's figures
#              (heap_restarted_in_use_mib, heap_restarted_free_mib) at the end
#              of those 60 s.
#   polling    health polling on against emulated webapps: one emulated client
#              (gateway, schema, 2 masters, 2 coreapps, one webapp, on MariaDB
#              from hack/databases.sh) serves every number: each number's key
#              Secret is given the same API key and admin password, the
#              operator is restarted with --webapp-url for every number
#              pointing at that webapp, and spec.health is turned on (every
#              30 s, the default). Once all are Ready again and nothing was
#              written for 15 s, its requests over 60 s:
#              idle_requests_per_min_polling_on.
#              Where the emulated client cannot be started, the same is
#              measured against an unreachable webapp (numbers then stay not
#              Ready) and the summary says so (polling_target=unreachable).
#
# The last line is `bench: n=N ready_s=...`, after a PASS/FAIL line per goal.
# Everything is torn down on exit; .cache/bench/ keeps bench-N.txt (the
# summary) and, on failure or with WAO_BENCH_KEEP=1, the logs, the audit log,
# and the cluster's logs.
#
# Knobs: WAO_BENCH_DIR (.cache/bench), WAO_BENCH_TIMEOUT (seconds per wait,
# default 300 + N), WAO_BENCH_KEEP (1: keep logs on success),
# WAO_BENCH_POLLING (emulated|unreachable|skip, default emulated),
# WAO_BENCH_SETTLED (run|skip, default run: skip saves the wait of the
# settled phase), WAO_BENCH_FLOOR (run|skip, default run: skip leaves the floor and the ratio
# out, to measure the operator alone in less time), WAO_BENCH_OPERATOR (the
# command run as the operator, default the release binary: a wrapper that
# runs it under a heap profiler, for example).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

N="${1:-}"
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N   (N WhatsAppNumbers; see the header for what is measured)" >&2
  exit 2
fi
BENCH_DIR="${WAO_BENCH_DIR:-$REPO/.cache/bench}"
case "$BENCH_DIR" in /*) ;; *) BENCH_DIR="$REPO/$BENCH_DIR" ;; esac
LOGS="$BENCH_DIR/logs"
AUDIT_LOG="$BENCH_DIR/audit/audit.log"
RESULTS="$BENCH_DIR/bench-$N.txt"
TIMEOUT="${WAO_BENCH_TIMEOUT:-$((300 + N))}"
POLLING_MODE="${WAO_BENCH_POLLING:-emulated}"
FLOOR_MODE="${WAO_BENCH_FLOOR:-run}"
SETTLED_MODE="${WAO_BENCH_SETTLED:-run}"
# The event series window (6 minutes, src/controller/publish.rs), the minute
# between the operator's looks at its series, and a minute and a half more.
RSS_SETTLE_S=510

OPERATOR_NS=whatsapp-operator-system
NS=bench
FLOOR_NS=bench-floor
RELEASE=wao
VERSION=2.53.2
# kubectl sends at most 5 requests a second per process (client-go's default
# rate limit; the operator's client has none), so the bare client applies in
# 16 parallel processes.
CHUNKS=16

export WAO_CLUSTER_DIR="$BENCH_DIR/cluster"
export WAO_CLUSTER_AUDIT_LOG="$AUDIT_LOG" WAO_CLUSTER_AUDIT_NAMESPACE="$OPERATOR_NS"
NODES=$((N / 10 > 20 ? N / 10 : 20))
NODES=$((NODES > 250 ? 250 : NODES))
export WAO_CLUSTER_NODES="$NODES"
export WAO_CLUSTER_PVS=$((2 * N + 8))
# 7 pods per number (4 node pods, 2 webapps, the schema Job's), twice over
# (the floor's namespace may still be draining), with room to spare.
PODS_PER_NODE=$((14 * N / NODES + 20))
export WAO_CLUSTER_NODE_PODS=$((PODS_PER_NODE > 110 ? PODS_PER_NODE : 110))
# The tiers request 2 CPU and 4Gi a pod by default: every pod must fit.
export WAO_CLUSTER_NODE_CPU=$((2 * WAO_CLUSTER_NODE_PODS + 8))
export WAO_CLUSTER_NODE_MEMORY="$((4 * WAO_CLUSTER_NODE_PODS + 16))Gi"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
OPERATOR_BIN="${WAO_BENCH_OPERATOR:-$CARGO_TARGET_DIR/release/whatsapp-operator}"
EMULATOR_BIN="$CARGO_TARGET_DIR/release/whatsapp-emulator"
# The bench's own MariaDB for the emulated client (outside the bench dir: the
# servers run as unprivileged users when started as root).
DB_DIR="/tmp/wao-bench-databases-$(printf '%s' "$BENCH_DIR" | cksum | cut -d' ' -f1)"

# Processes started here, killed by pid on exit.
OPERATOR_PID=""
EMULATOR_PIDS=()
DB_STARTED=0
OK=0

log() { echo "[bench] $(date +%T) $*" >&2; }
now() { date +%s.%N; }
# seconds between two `now` values, one decimal
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
div() { awk -v a="$1" -v b="$2" -v p="${3:-2}" 'BEGIN { if (b + 0 == 0) print "nan"; else printf "%.*f", p, a / b }'; }

fail() {
  log "error: $1"
  shift
  local f
  for f in "$@"; do
    if [ -s "$f" ]; then
      echo "----- last lines of $f" >&2
      tail -n 30 "$f" >&2
    fi
  done
  exit 1
}

# poll SECONDS CMD...: runs CMD every second until it succeeds (status 0) or
# SECONDS have passed (status 1).
poll() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 1
  done
}

# wait_for SECONDS WHAT CMD...: poll, or fail saying WHAT did not happen.
wait_for() {
  local seconds="$1" what="$2"
  shift 2
  poll "$seconds" "$@" || fail "$what: not done within ${seconds}s" "$LOGS/operator.log"
}

free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 12000))
    if [ -z "$(ss -Htln "sport = :$port")" ]; then
      echo "$port"
      return
    fi
  done
  fail "no free TCP port found"
}

# ---------------------------------------------------------------------------
# Teardown

stop_pid() { # PID: SIGTERM, SIGKILL after 20 s
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

teardown() {
  local rc=$?
  set +e
  [ -z "$OPERATOR_PID" ] || stop_pid "$OPERATOR_PID"
  local i
  # The webapp and the nodes before the gateway they are connected to.
  for ((i = ${#EMULATOR_PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${EMULATOR_PIDS[$i]}"; done
  if [ "$DB_STARTED" = 1 ]; then
    WAO_DB_DIR="$DB_DIR" hack/databases.sh down >>"$LOGS/databases.log" 2>&1
  fi
  if [ -d "$WAO_CLUSTER_DIR" ]; then
    if [ "$OK" != 1 ] || [ "${WAO_BENCH_KEEP:-0}" = 1 ]; then
      cp -r "$WAO_CLUSTER_DIR/logs" "$LOGS/cluster" 2>/dev/null
    fi
    hack/local-cluster.sh down >>"$LOGS/cluster-down.log" 2>&1
  fi
  if [ "$OK" = 1 ] && [ "${WAO_BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$LOGS" "$BENCH_DIR/audit" "$BENCH_DIR/work"
  else
    log "logs kept in $LOGS (audit log: $AUDIT_LOG)"
  fi
  exit "$rc"
}

# ---------------------------------------------------------------------------
# Helpers

k() { "$KUBECTL" "$@"; }
py() { python3 hack/bench.py "$@"; }

metric() { # NAME: sum of a metric family of the running operator
  curl -sf "http://$METRICS/metrics" | awk -v n="$1" '
    $1 !~ /^#/ && (index($1, n "{") == 1 || $1 == n) { s += $NF } END { printf "%.0f", s }'
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$OPERATOR_PID/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$OPERATOR_PID/stat"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
mib_b() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
# heap_now: resident KiB, and the heap's bytes in use and free after the
# operator's last trim (it trims and reports every 30 s).
heap_now() {
  echo "$(rss_kib) $(metric whatsapp_operator_heap_in_use_bytes) $(metric whatsapp_operator_heap_free_bytes)"
}

# apply_chunks DIR NAME...: `kubectl apply --server-side` of DIR/NAME*.yaml, in parallel.
apply_chunks() {
  local dir="$1" prefix="$2"
  find "$dir" -name "$prefix*.yaml" -print0 |
    xargs -0 -P "$CHUNKS" -I{} "$KUBECTL" apply --server-side --force-conflicts -f {} >>"$LOGS/apply.log" 2>&1
}

# audit START END: the operator's requests in [START, END) as JSON.
audit() {
  # The apiserver writes the log in blocking mode: an event is in the file
  # before its response is sent, so a window that ended is complete.
  py audit "$AUDIT_LOG" "$OPERATOR_USER" "$1" "$2"
}
field() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# ---------------------------------------------------------------------------
# Phases

cluster_up() {
  log "local control plane: $NODES kwok nodes, $WAO_CLUSTER_NODE_PODS pods each, $WAO_CLUSTER_PVS volumes, audit log of $OPERATOR_NS"
  TOOLS="$(hack/tools.sh ensure)"
  KUBECTL="$TOOLS/kubectl"
  KUBECONFIG="$(hack/local-cluster.sh up 2>"$LOGS/cluster-up.log" | tail -n 1)" ||
    fail "hack/local-cluster.sh up failed" "$LOGS/cluster-up.log"
  export KUBECONFIG
}

build() {
  log "cargo build --release (operator and emulator)"
  cargo build --release -p whatsapp-operator -p whatsapp-emulator --bin whatsapp-operator --bin whatsapp-emulator \
    2>"$LOGS/build.log" || fail "cargo build --release failed" "$LOGS/build.log"
}

install_operator_prerequisites() {
  log "the CRD, the chart's ServiceAccount and RBAC, the release catalog"
  k apply --server-side -f crds/ >/dev/null
  wait_for 60 "the CRD established" k wait --for=condition=Established crd/whatsappnumbers.whatsapp.operators.dev --timeout=5s
  k create namespace "$OPERATOR_NS" >/dev/null
  "$TOOLS/helm" template "$RELEASE" charts/whatsapp-operator --namespace "$OPERATOR_NS" --set rbac.scope=cluster |
    py rbac >"$WORK/rbac.yaml"
  k apply -f "$WORK/rbac.yaml" >/dev/null
  local sa token
  sa="$(py service-account <"$WORK/rbac.yaml")"
  OPERATOR_USER="system:serviceaccount:$OPERATOR_NS:$sa"
  # A kubeconfig with the ServiceAccount's token and nothing of the admin's.
  token="$(k -n "$OPERATOR_NS" create token "$sa" --duration=6h)"
  OPERATOR_KUBECONFIG="$WORK/operator.kubeconfig"
  local server ca
  server="$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  ca="$(k config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
  local kc=(--kubeconfig "$OPERATOR_KUBECONFIG")
  (umask 077 && : >"$OPERATOR_KUBECONFIG")
  k "${kc[@]}" config set-cluster bench --server="$server" >/dev/null
  k "${kc[@]}" config set clusters.bench.certificate-authority-data "$ca" >/dev/null
  k "${kc[@]}" config set-credentials "$sa" --token="$token" >/dev/null
  k "${kc[@]}" config set-context bench --cluster=bench --user="$sa" >/dev/null
  k "${kc[@]}" config use-context bench >/dev/null
  # The example's build released 10 days ago: valid, not expiring.
  k -n "$OPERATOR_NS" create configmap whatsapp-operator-release-catalog \
    --from-literal=catalog.yaml="- {version: \"$VERSION\", releasedAt: \"$(date -u -d '10 days ago' +%F)\"}" >/dev/null
}

# start_operator: the release binary with the chart's ServiceAccount (webapp
# URLs, when set, come from the WEBAPP_URLS environment variable).
start_operator() {
  METRICS="127.0.0.1:$(free_port)"
  STARTS=$((${STARTS:-0} + 1))
  env -u WATCH_NAMESPACE KUBECONFIG="$OPERATOR_KUBECONFIG" RUST_LOG="${WAO_BENCH_LOG:-info}" nohup "$OPERATOR_BIN" \
    --metrics-address "$METRICS" --operator-namespace "$OPERATOR_NS" --identity bench-operator \
    </dev/null >"$LOGS/operator-$STARTS.log" 2>&1 &
  OPERATOR_PID=$!
  disown
  ln -sf "operator-$STARTS.log" "$LOGS/operator.log"
  wait_for 60 "the operator leading (http://$METRICS/metrics)" leading
}
leading() { [ "$(metric whatsapp_operator_leader)" = 1 ]; }

stop_operator() {
  stop_pid "$OPERATOR_PID"
  OPERATOR_PID=""
}

numbers_file() { # NAMESPACE FILE
  py numbers "$N" "$1" >"$2"
}

# until_done WHAT COUNT_CMD...: waits until COUNT_CMD prints "done total" with
# done == total, and sets DONE_AT to that time. Status 2 (and no wait) when
# the operator, if one was started, exits meanwhile. Runs in the main shell,
# so that a signal stops it.
until_done() {
  local what="$1" deadline=$((SECONDS + TIMEOUT)) counts last="" finished total next_report=$((SECONDS + 10))
  shift
  while :; do
    counts="$("$@" 2>/dev/null || echo "0 ?")"
    read -r finished total <<<"$counts"
    if [ "$finished" = "$total" ]; then
      DONE_AT="$(now)"
      return 0
    fi
    if [ -n "$OPERATOR_PID" ] && ! kill -0 "$OPERATOR_PID" 2>/dev/null; then
      log "$what: the operator exited ($finished of $total); last lines of its log:"
      tail -n 5 "$LOGS/operator.log" >&2
      return 2
    fi
    if [ "$counts" != "$last" ] && [ "$SECONDS" -ge "$next_report" ]; then
      log "  $what: $finished of $total"
      last="$counts" next_report=$((SECONDS + 10))
    fi
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: $counts after ${TIMEOUT}s" "$LOGS/operator.log"
    sleep 1
  done
}

floor_counts() { k -n "$FLOOR_NS" get statefulsets,deployments,jobs -o json | py workloads; }

# Pool volumes Available, of all: the floor's come back through the cluster's
# recycler one patch at a time, after its namespace is gone.
pool_counts() {
  local available
  available="$(k get pv -l wao.local/pool=true -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c '^Available$')" || true
  echo "${available:-0} $WAO_CLUSTER_PVS"
}

floor() {
  log "floor: rendering the children of $N numbers (whatsapp-operator render)"
  k create namespace "$FLOOR_NS" >/dev/null
  numbers_file "$FLOOR_NS" "$WORK/floor-numbers.yaml"
  "$OPERATOR_BIN" render "$WORK/floor-numbers.yaml" >"$WORK/floor-children.yaml"
  python3 -c 'import sys, yaml; yaml.safe_dump_all([d for d in yaml.safe_load_all(open(sys.argv[1])) if d["kind"] == "Secret"], sys.stdout)' \
    "$WORK/floor-numbers.yaml" | k apply --server-side -f - >/dev/null
  mkdir -p "$WORK/floor"
  py split "$WORK/floor-children.yaml" "$CHUNKS" "$WORK/floor/children-"
  local objects
  objects="$(grep -c '^kind:' "$WORK/floor-children.yaml")"
  FLOOR_OBJECTS="$objects"
  if [ "$FLOOR_MODE" = skip ]; then
    FLOOR_S=nan
    log "floor: skipped (WAO_BENCH_FLOOR=skip); $objects children counted"
    k delete namespace "$FLOOR_NS" --wait=true --timeout="${TIMEOUT}s" >/dev/null || fail "namespace $FLOOR_NS not deleted"
    return 0
  fi
  log "floor: applying $objects children in $CHUNKS parallel chunks (kubectl apply --server-side)"
  local t0 t1
  t0="$(now)"
  apply_chunks "$WORK/floor" children- || fail "kubectl apply of the floor failed" "$LOGS/apply.log"
  log "floor: applied in $(elapsed "$t0" "$(now)")s; waiting for every workload ready and every Job succeeded"
  until_done "floor workloads" floor_counts
  t1="$DONE_AT"
  FLOOR_S="$(elapsed "$t0" "$t1")"
  log "floor: $FLOOR_S s"
  log "floor: deleting $FLOOR_NS and waiting until it is gone"
  k delete namespace "$FLOOR_NS" --wait=true --timeout="${TIMEOUT}s" >/dev/null || fail "namespace $FLOOR_NS not deleted"
  # The operator meets the cluster the floor met: every volume Available, no
  # recycling under way (its patches and the binds they race with slowed the
  # operator's first minutes otherwise).
  log "floor: waiting until the floor's volumes are Available again"
  t0="$(now)"
  until_done "volumes Available" pool_counts
  log "floor: volumes Available after $(elapsed "$t0" "$DONE_AT")s"
}

idle() {
  log "operator: starting (health polling is per number: off in the numbers created below)"
  start_operator
  sleep 10
  RSS_IDLE_KIB="$(rss_kib)"
  log "operator: idle, VmRSS $(mib "$RSS_IDLE_KIB") MiB"
}

wan_json() { k -n "$NS" get whatsappnumbers -o json; }
ready_counts() { echo "$(wan_json | py ready "$N" "${1:-0}") $N"; }

create() {
  k create namespace "$NS" >/dev/null
  numbers_file "$NS" "$WORK/numbers.yaml"
  python3 -c 'import sys, yaml; yaml.safe_dump_all([d for d in yaml.safe_load_all(open(sys.argv[1])) if d["kind"] == "Secret"], sys.stdout)' \
    "$WORK/numbers.yaml" | k apply --server-side -f - >/dev/null
  python3 -c 'import sys, yaml; yaml.safe_dump_all([d for d in yaml.safe_load_all(open(sys.argv[1])) if d["kind"] != "Secret"], sys.stdout)' \
    "$WORK/numbers.yaml" >"$WORK/wans.yaml"
  mkdir -p "$WORK/wans"
  py split "$WORK/wans.yaml" "$CHUNKS" "$WORK/wans/wans-"
  local r0 c0 t1
  r0="$(metric whatsapp_operator_reconciles_total)"
  c0="$(cpu_ticks)"
  log "create: $N WhatsAppNumbers in $CHUNKS parallel chunks"
  T_CREATE="$(now)"
  apply_chunks "$WORK/wans" wans- || fail "kubectl apply of the numbers failed" "$LOGS/apply.log"
  log "create: applied in $(elapsed "$T_CREATE" "$(now)")s; waiting for all Ready"
  until_done "numbers Ready" ready_counts || fail "the operator exited while the numbers were created"
  t1="$DONE_AT"
  T_READY="$t1"
  READY_S="$(elapsed "$T_CREATE" "$t1")"
  local r1 c1 hz
  r1="$(metric whatsapp_operator_reconciles_total)"
  c1="$(cpu_ticks)"
  hz="$(getconf CLK_TCK)"
  RSS_LOADED_KIB="$(rss_kib)"
  RECONCILES=$((r1 - r0))
  read -r P50 P99 LAST <<<"$(wan_json | py latency "$T_CREATE")"
  read -r FIRST_P50 FIRST_P99 FIRST_MAX FIRST_MISSING <<<"$(wan_json | py first-status "$AUDIT_LOG" "$OPERATOR_USER")"
  CPU_PER_RECONCILE="$(div "$(div $((c1 - c0)) "$hz" 3)" "$RECONCILES" 4)"
  CREATE_AUDIT="$(audit "$T_CREATE" "$T_READY")"
  echo "$CREATE_AUDIT" >"$LOGS/audit-create.json"
  WRITES="$(field "$CREATE_AUDIT" writes)"
  log "create: all Ready after ${READY_S}s (last Ready transition at ${LAST}s), p50 ${P50}s, p99 ${P99}s"
  log "create: first status write (end of the first reconcile) p50 ${FIRST_P50}s, p99 ${FIRST_P99}s, max ${FIRST_MAX}s after creation; $FIRST_MISSING numbers without one"
  log "create: $WRITES writes ($(field "$CREATE_AUDIT" lease_writes) Lease, $(field "$CREATE_AUDIT" event_writes) Event writes apart), $RECONCILES reconciles, VmRSS $(mib "$RSS_LOADED_KIB") MiB"
  log "create: the operator's own write counter: $(metric whatsapp_operator_kube_writes_total)"
}

# Waits until the operator's write counter has stood still for QUIET_S
# seconds (at most TIMEOUT): the numbers' last first results (an admin
# session tried once after Ready, off the reconcile path) are written, and
# what follows is rest. A write every few seconds never settles and fails
# here; a rarer one shows in the window measured next. Sets SETTLE_S.
QUIET_S=15
settle() {
  local what="$1" t0 last current still=0 deadline=$((SECONDS + TIMEOUT))
  t0="$(now)"
  last="$(metric whatsapp_operator_kube_writes_total)"
  while [ "$still" -lt "$QUIET_S" ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: the operator still writes after ${TIMEOUT}s" "$LOGS/operator.log"
    sleep 5
    current="$(metric whatsapp_operator_kube_writes_total)"
    if [ "$current" = "$last" ]; then still=$((still + 5)); else still=0 last="$current"; fi
  done
  SETTLE_S="$(elapsed "$t0" "$(now)")"
  log "$what: no write for ${QUIET_S} s, after ${SETTLE_S} s"
}

rest() { # polling-off rest: settled, then 60 s
  log "rest: waiting for ${QUIET_S} s without a write, then the operator's requests over 60 s (health polling off)"
  settle rest
  REST_SETTLE_S="$SETTLE_S"
  local t0
  t0="$(now)"
  sleep 60
  REST_AUDIT="$(audit "$t0" "$(now)")"
  echo "$REST_AUDIT" >"$LOGS/audit-rest-polling-off.json"
  IDLE_OFF="$(field "$REST_AUDIT" requests)"
  log "rest: $IDLE_OFF requests in 60 s ($(field "$REST_AUDIT" lease_requests) on the Lease, $(field "$REST_AUDIT" writes) writes)"
  read -r RSS_REST_KIB HEAP_REST_IN_USE HEAP_REST_FREE <<<"$(heap_now)"
  log "rest: VmRSS $(mib "$RSS_REST_KIB") MiB; heap after the last trim: $(mib_b "$HEAP_REST_IN_USE") MiB in use, $(mib_b "$HEAP_REST_FREE") MiB free"
}

settled() {
  if [ "$SETTLED_MODE" = skip ]; then
    RSS_SETTLED_KIB=""
    log "settled: skipped (WAO_BENCH_SETTLED=skip)"
    return 0
  fi
  local wait
  wait="$(awk -v a="$T_READY" -v b="$(now)" -v s="$RSS_SETTLE_S" 'BEGIN { w = s - (b - a); printf "%.0f", w < 0 ? 0 : w }')"
  log "settled: ${wait} s more, until ${RSS_SETTLE_S} s after all were Ready"
  sleep "$wait"
  RSS_SETTLED_KIB="$(rss_kib)"
  log "settled: VmRSS $(mib "$RSS_SETTLED_KIB") MiB"
}

restart() {
  log "restart: SIGTERM, then the operator again; its requests over the next 60 s"
  stop_operator
  local t0
  t0="$(now)"
  start_operator
  sleep "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { s = 60 - (b - a); printf "%.1f", s < 0 ? 0 : s }')"
  RESTART_AUDIT="$(audit "$t0" "$(now)")"
  echo "$RESTART_AUDIT" >"$LOGS/audit-restart.json"
  read -r RSS_RESTARTED_KIB HEAP_RESTARTED_IN_USE HEAP_RESTARTED_FREE <<<"$(heap_now)"
  RESTART_WRITES="$(field "$RESTART_AUDIT" writes)"
  RESTART_REQUESTS="$(field "$RESTART_AUDIT" requests)"
  log "restart: $RESTART_WRITES writes (Lease $(field "$RESTART_AUDIT" lease_writes), Events $(field "$RESTART_AUDIT" event_writes) apart), $RESTART_REQUESTS requests, VmRSS $(mib "$RSS_RESTARTED_KIB") MiB"
  log "restart: heap after the last trim: $(mib_b "$HEAP_RESTARTED_IN_USE") MiB in use, $(mib_b "$HEAP_RESTARTED_FREE") MiB free"
}

# One emulated client on MariaDB, serving every number's health probes.
start_emulated_client() {
  [ -x "$EMULATOR_BIN" ] || return 1
  local mysql_port pg_port
  mysql_port="$(free_port)"
  pg_port="$(free_port)"
  export WAO_DB_DIR="$DB_DIR" WAO_MYSQL_PORT="$mysql_port" WAO_POSTGRES_PORT="$pg_port"
  DB_STARTED=1
  hack/databases.sh up >"$LOGS/databases.log" 2>&1 || return 1
  eval "$(hack/databases.sh env)"
  GATEWAY="127.0.0.1:$(free_port)"
  EMULATOR_ENV=(
    WA_DB_ENGINE=MYSQL "WA_DB_HOSTNAME=$WAO_MYSQL_HOST" "WA_DB_PORT=$WAO_MYSQL_PORT"
    "WA_DB_USERNAME=$WAO_MYSQL_USER" "WA_DB_PASSWORD=$WAO_MYSQL_PASSWORD"
    WA_APP_MULTICONNECT=1 "WA_DB_NAME_PREFIX=bench$$" "WA_EMULATOR_VERSION=$VERSION"
    WA_EMULATOR_NOW=2024-03-01T00:00:00Z "WA_EMULATOR_GATEWAY=$GATEWAY"
    WA_EMULATOR_REGISTERED_NUMBER=+15550000000 "RUST_LOG=warn"
  )
  env "${EMULATOR_ENV[@]}" "$EMULATOR_BIN" gateway --listen "$GATEWAY" </dev/null >"$LOGS/emulator-gateway.log" 2>&1 &
  EMULATOR_PIDS+=($!)
  disown
  poll 30 curl -sf "http://$GATEWAY/admin/connections" || return 1
  env "${EMULATOR_ENV[@]}" WA_DB_UPGRADE=1 timeout 120 "$EMULATOR_BIN" </dev/null >"$LOGS/emulator-upgrade.log" 2>&1 || return 1
  local i address master
  for i in 0 1 2 3; do
    address="127.89.0.$((i + 2))"
    master=()
    [ "$i" -ge 2 ] || master=(WA_MASTER_NODE=1)
    env "${EMULATOR_ENV[@]}" "${master[@]}" "COREAPP_HOSTNAME=$address" "$EMULATOR_BIN" </dev/null >"$LOGS/emulator-node-$i.log" 2>&1 &
    EMULATOR_PIDS+=($!)
    disown
    poll 60 curl -s "http://$address:6252/control/status" || return 1
  done
  WEBAPP_URL="https://127.0.0.1:$(free_port)"
  env "${EMULATOR_ENV[@]}" WA_EMULATOR_IMAGE=web "WA_EMULATOR_WEB_LISTEN=${WEBAPP_URL#https://}" \
    "WA_API_KEY=$SHARED_API_KEY" "$EMULATOR_BIN" </dev/null >"$LOGS/emulator-webapp.log" 2>&1 &
  EMULATOR_PIDS+=($!)
  disown
  poll 60 curl -sfk -H "Authorization: Apikey $SHARED_API_KEY" "$WEBAPP_URL/v1/health"
}

polling() {
  local target="$POLLING_MODE"
  SHARED_API_KEY="bench$(openssl rand -hex 24)"
  if [ "$target" = emulated ]; then
    log "polling: starting one emulated client (gateway, 2 masters, 2 coreapps, a webapp on MariaDB)"
    start_emulated_client || {
      log "polling: the emulated client did not start (logs: $LOGS/emulator-*.log, databases.log); measuring against an unreachable webapp"
      target=unreachable
    }
  fi
  [ "$target" = emulated ] || WEBAPP_URL="https://127.0.0.1:$(free_port)"
  POLLING_TARGET="$target"
  # Every number's key Secret gets the webapp's API key and one admin password.
  local password names i urls=()
  password="Bench-$(openssl rand -hex 8)!1"
  mapfile -t names < <(k -n "$NS" get whatsappnumbers -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
  log "polling: giving ${#names[@]} key Secrets the webapp's API key and an admin password"
  printf '%s\n' "${names[@]}" | xargs -P "$CHUNKS" -I{} "$KUBECTL" -n "$NS" patch secret "{}-keys" --type merge \
    -p "{\"stringData\":{\"WA_API_KEY\":\"$SHARED_API_KEY\",\"admin-password\":\"$password\"}}" >>"$LOGS/apply.log"
  for i in "${names[@]}"; do urls+=("$NS/$i=$WEBAPP_URL"); done
  log "polling: restarting the operator with --webapp-url for every number ($target: $WEBAPP_URL)"
  stop_operator
  WEBAPP_URLS="$(IFS=,; echo "${urls[*]}")"
  export WEBAPP_URLS
  start_operator
  log "polling: spec.health on (every 30 s) for every number"
  printf '%s\n' "${names[@]}" | xargs -P "$CHUNKS" -I{} "$KUBECTL" -n "$NS" patch whatsappnumber {} --type merge \
    -p '{"spec":{"health":{"enabled":true}}}' >>"$LOGS/apply.log"
  if [ "$target" = emulated ]; then
    local t0
    t0="$(now)"
    if ! until_done "numbers Ready with health polling" ready_counts 2; then
      # A finding, not a broken bench: the other figures stand.
      POLLING_TARGET="$target webapps, but the operator exited before all numbers were Ready again: $(grep -m1 -o 'ERROR.*' "$LOGS/operator.log" | sed 's/\x1b\[[0-9;]*m//g')"
      IDLE_ON=nan INCOMPLETE=1
      return
    fi
    log "polling: all Ready from their health after $(elapsed "$t0" "$DONE_AT")s"
  else
    sleep 30
  fi
  log "polling: waiting for ${QUIET_S} s without a write, then the operator's requests over 60 s"
  settle polling
  local s0
  s0="$(now)"
  sleep 60
  POLL_AUDIT="$(audit "$s0" "$(now)")"
  echo "$POLL_AUDIT" >"$LOGS/audit-rest-polling-on.json"
  IDLE_ON="$(field "$POLL_AUDIT" requests)"
  log "polling: $IDLE_ON requests in 60 s ($(field "$POLL_AUDIT" writes) writes, $(field "$POLL_AUDIT" lease_requests) on the Lease)"
}

# goal NAME VALUE OP LIMIT: a PASS/FAIL line (never an exit status); OP
# "info" prints the figure without a numeric goal, LIMIT then says why.
goal() {
  local verdict
  verdict="$(awk -v v="$2" -v l="$4" -v op="$3" 'BEGIN {
    if (op == "info") { print "info"; exit }
    if (v == "nan" || v == "") { print "n/a"; exit }
    ok = (op == "<=") ? (v + 0 <= l + 0) : (v + 0 == l + 0); print ok ? "PASS" : "FAIL" }')"
  if [ "$3" = info ]; then
    printf '  %-5s %-44s %10s   %s\n' "$verdict" "$1" "$2" "$4"
  else
    printf '  %-5s %-44s %10s   goal %s %s\n' "$verdict" "$1" "$2" "$3" "$4"
  fi
}

# Requests at rest that are neither the Lease's nor list-watches: reads and
# writes a periodic reconcile or a probe caused.
busy() { python3 -c 'import json, sys; a = json.loads(sys.argv[1]); print(a["gets"] + a["writes"] + a["event_writes"])' "$1"; }

# top AUDIT [VERBS]: the most frequent requests of an audit summary (only
# those verbs, a regular expression, when given), on one line.
top() {
  python3 -c 'import json, re, sys
a = json.loads(sys.argv[1])["by_verb_resource"]
keep = [(k, v) for k, v in a.items() if re.match(sys.argv[2], k)]
print(", ".join(f"{k}: {v}" for k, v in keep[:10]))' "$1" "${2:-.}"
}

summary() {
  local ratio bytes_per writes_per reconciles_per restart_limit children settled
  children=$((FLOOR_OBJECTS / N))
  ratio="$(div "$READY_S" "$FLOOR_S")"
  bytes_per="$(div $(((RSS_LOADED_KIB - RSS_IDLE_KIB) * 1024)) "$N" 0)"
  settled=nan
  [ -z "$RSS_SETTLED_KIB" ] || settled="$(mib "$RSS_SETTLED_KIB")"
  writes_per="$(div "$WRITES" "$N")"
  reconciles_per="$(div "$RECONCILES" "$N")"
  # A list and a watch for each watch the operator keeps (some kinds have two,
  # with other selectors), a list's further pages, the Lease's requests and
  # the API server's version, asked once at the start.
  restart_limit=$((2 * $(field "$RESTART_AUDIT" watches) + $(field "$RESTART_AUDIT" list_pages) + $(field "$RESTART_AUDIT" lease_requests) + 1))
  {
    echo
    echo "bench: $N numbers, $NODES kwok nodes, $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); floor: $FLOOR_OBJECTS children"
    echo "writes while creating: $(top "$CREATE_AUDIT" '(create|update|patch|delete)')"
    echo "requests after the restart: $(top "$RESTART_AUDIT")"
    [ -z "${POLL_AUDIT:-}" ] || echo "requests at rest, polling on: $(top "$POLL_AUDIT")"
    echo "goals (issue #13):"
    goal "ratio (ready_s $READY_S / floor_s $FLOOR_S)" "$ratio" "<=" 1.2
    goal "p50_s / p99_s" "$P50/$P99" info "no goal of their own: every number promptly"
    goal "first_status p50/p99/max s (first reconcile)" "$FIRST_P50/$FIRST_P99/$FIRST_MAX" info "every new number promptly"
    goal "writes_per_number ($children children + 3)" "$writes_per" "<=" $((children + 3))
    goal "reconciles_per_number" "$reconciles_per" info "bounded and explained"
    goal "rss_idle_mib" "$(mib "$RSS_IDLE_KIB")" "<=" 15
    goal "bytes_per_number (goal at 1,000 numbers)" "$bytes_per" "<=" 40960
    goal "restart_writes_60s (Lease, Events apart)" "$RESTART_WRITES" "==" 0
    goal "restart_requests_60s (one list-watch a watch)" "$RESTART_REQUESTS" "<=" "$restart_limit"
    goal "reads+writes at rest, polling off, 60 s" "$(busy "$REST_AUDIT")" "==" 0
    if [ -n "${POLL_AUDIT:-}" ]; then
      goal "reads+writes at rest, polling on, 60 s" "$(busy "$POLL_AUDIT")" "==" 0
    fi
    goal "idle_requests_per_min_polling_off" "$IDLE_OFF" info "the Lease's renewals and list-watches included"
    goal "idle_requests_per_min_polling_on" "$IDLE_ON" info "webapps: $POLLING_TARGET"
    goal "cpu_s_per_reconcile" "$CPU_PER_RECONCILE" info ""
    echo "bench: n=$N ready_s=$READY_S floor_s=$FLOOR_S ratio=$ratio p50_s=$P50 p99_s=$P99" \
      "first_status_p50_s=$FIRST_P50 first_status_p99_s=$FIRST_P99 first_status_max_s=$FIRST_MAX" \
      "rss_idle_mib=$(mib "$RSS_IDLE_KIB") rss_loaded_mib=$(mib "$RSS_LOADED_KIB") bytes_per_number=$bytes_per" \
      "rss_settled_mib=$settled rss_restarted_mib=$(mib "$RSS_RESTARTED_KIB") rest_settle_s=$REST_SETTLE_S" \
      "rss_rest_mib=$(mib "$RSS_REST_KIB") heap_rest_in_use_mib=$(mib_b "$HEAP_REST_IN_USE") heap_rest_free_mib=$(mib_b "$HEAP_REST_FREE")" \
      "heap_restarted_in_use_mib=$(mib_b "$HEAP_RESTARTED_IN_USE") heap_restarted_free_mib=$(mib_b "$HEAP_RESTARTED_FREE")" \
      "writes_per_number=$writes_per reconciles_per_number=$reconciles_per" \
      "idle_requests_per_min_polling_off=$IDLE_OFF idle_requests_per_min_polling_on=$IDLE_ON" \
      "restart_writes_60s=$RESTART_WRITES restart_requests_60s=$RESTART_REQUESTS cpu_s_per_reconcile=$CPU_PER_RECONCILE"
  } | tee "$RESULTS"
}

main() {
  if [ -d "$BENCH_DIR" ]; then
    [ ! -d "$WAO_CLUSTER_DIR" ] || hack/local-cluster.sh down >/dev/null 2>&1 || true
    rm -rf "$LOGS" "$BENCH_DIR/audit" "$BENCH_DIR/work"
  fi
  WORK="$BENCH_DIR/work"
  mkdir -p "$LOGS" "$WORK" "$(dirname "$AUDIT_LOG")"
  trap teardown EXIT
  trap 'exit 130' INT TERM
  build
  cluster_up
  install_operator_prerequisites
  floor
  idle
  create
  rest
  settled
  restart
  if [ "$POLLING_MODE" = skip ]; then
    POLLING_TARGET=skipped IDLE_ON=nan
  else
    polling
  fi
  summary
  if [ "${INCOMPLETE:-0}" = 1 ]; then
    log "a phase could not be measured (see above): logs kept"
    exit 1
  fi
  OK=1
}

main
