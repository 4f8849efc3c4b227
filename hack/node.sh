#!/usr/bin/env bash
# A real node for the local control plane of hack/local-cluster.sh: containerd,
# kubelet, kube-proxy and CoreDNS as host processes, pods on a CNI bridge. The
# node's address is on the bridge (never loopback), so that `kubectl logs/exec`
# work; pods reach the apiserver through the `kubernetes` Service and resolve
# cluster.local names (and nothing else).
#
# Usage: hack/node.sh up|down|status|smoke|expose|freeze|thaw|holder
#        (WAO_CLUSTER_DIR as for local-cluster.sh)
#   up      add the node to the running cluster (idempotent); needs root
#   down    stop it and remove every process, mount, interface and rule it made
#   status  which node processes run
#   smoke   a pod on the node: DNS, the apiserver through its Service, logs, exec
#   expose NAME PORT HOST:HOSTPORT
#           a service of this machine (e.g. a database on loopback) for pods,
#           as the Service NAME.wao-host.svc on PORT
#   freeze  stop the kubelet with SIGSTOP: the node stops answering the
#           control plane while its containers go on running, as behind a
#           network partition (fault tests)
#   thaw    let the kubelet go on (SIGCONT)
#   holder  print the cluster dir of another cluster whose running real node
#           holds this machine; fail (printing nothing) when the node is free
#
# One real node per machine: the bridge, its addresses and the iptables rules
# are machine-wide. See hack/README.md.
set -Eeuo pipefail
trap 'echo "[node] error: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${WAO_CLUSTER_DIR:-$REPO/.cache/cluster}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
DIR="${DIR%/}"
N="$DIR/node"
RUN="$DIR/run"
LOGS="$DIR/logs"
PKI="$DIR/pki"

NODE_NAME="${WAO_NODE_NAME:-real-node-0}"
BRIDGE="${WAO_NODE_BRIDGE:-wao0}"
# The pod subnet of the bridge; its first address is the node's address.
POD_SUBNET="${WAO_NODE_POD_SUBNET:-10.246.0.0/24}"
NET="${POD_SUBNET%/*}"
NODE_IP="${NET%.*}.$((${NET##*.} + 1))"
TIMEOUT="${WAO_NODE_TIMEOUT:-${WAO_CLUSTER_TIMEOUT:-120}}"
VERBOSITY="${WAO_CLUSTER_VERBOSITY:-0}"
CNI_BIN="${WAO_CNI_BIN_DIR:-/usr/lib/cni}"
PAUSE_IMAGE="${WAO_PAUSE_IMAGE:-wao.local/pause:1}"
SOCK="$N/containerd/containerd.sock"
CHAIN=WAO-NODE
# Machine-wide: which cluster dir owns the real node, and the state to restore.
OWNER_FILE=/run/wao-real-node.owner
NODE_PROCS=(containerd kubelet kube-proxy coredns apiserver-proxy)

log() { echo "[node] $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------
# Processes (same conventions as local-cluster.sh: pid files in run/, logs in logs/)

pid_of() { if [ -f "$RUN/node-$1.pid" ]; then cat "$RUN/node-$1.pid" 2>/dev/null || true; fi; }

# Whether pid $1's command line names a path under the node dir $2.
names_node() {
  local pid="$1"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$2/"
}
# A pid is this node's when its command line names a path under the node dir.
owned() { names_node "$1" "$N"; }
alive() { owned "$(pid_of "$1")"; }

start() { # <name> <command...>
  local name="$1"; shift
  rm -f "$RUN/node-$name.pid"
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/node-$name.pid" "$@" \
    </dev/null >>"$LOGS/node-$name.log" 2>&1 9<&- &
  for _ in $(seq 1 50); do [ -s "$RUN/node-$name.pid" ] && return 0; sleep 0.1; done
  die "could not start $name"
}

stop() { # <grace-seconds> <pid...>: SIGTERM, then SIGKILL after the grace period
  local grace="$1" pid deadline left; shift
  [ $# -gt 0 ] || return 0
  # A frozen process (freeze) handles SIGTERM only once it runs again.
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; kill -CONT "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + grace))
  while :; do
    left=()
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && return 0
    [ $SECONDS -lt $deadline ] || break
    sleep 0.2
  done
  for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  sleep 0.5
}

# Every process naming the node dir: the components, containerd's shims and
# whatever runs in their pods' cgroups is reached through the shims.
node_pids() {
  local p pid
  for p in /proc/[0-9]*; do
    pid="${p#/proc/}"
    [ "$pid" = "$$" ] || [ "$pid" = "$BASHPID" ] && continue
    owned "$pid" && echo "$pid"
  done
  return 0
}

fail() { # <component> <message>
  local comp="$1"; shift
  log "FAILED: $*"
  if [ -f "$LOGS/node-$comp.log" ]; then
    log "last lines of $LOGS/node-$comp.log:"
    tail -n 30 "$LOGS/node-$comp.log" | sed 's/^/    /' >&2
  fi
  exit 1
}

wait_for() { # <component> <description> <check...>
  local comp="$1" what="$2"; shift 2
  local deadline=$((SECONDS + TIMEOUT)) t0=$SECONDS
  until "$@"; do
    alive "$comp" || fail "$comp" "$comp exited while waiting for $what"
    [ $SECONDS -lt $deadline ] || fail "$comp" "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.5
  done
  log "$what ($((SECONDS - t0))s)"
}

# ---------------------------------------------------------------------------
# Prerequisites

# Debian packages a real node needs, installed when missing (CI machines are fresh).
ensure_packages() {
  local need=()
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x "$CNI_BIN/bridge" ] && [ -x "$CNI_BIN/host-local" ] && [ -x "$CNI_BIN/loopback" ] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  command -v conntrack >/dev/null || need+=(conntrack)
  command -v socat >/dev/null || need+=(socat)
  command -v ip >/dev/null || need+=(iproute2)
  command -v mount >/dev/null || need+=(mount)
  [ ${#need[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing: ${need[*]} (and no apt-get to install them)"
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } \
    || die "apt-get install ${need[*]} failed"
}

load_cluster() {
  if [ ! -f "$DIR/.wao-local-cluster" ] || [ ! -f "$DIR/cluster.env" ] || [ ! -f "$DIR/tools-dir" ]; then
    die "no cluster in $DIR (run: hack/local-cluster.sh up)"
  fi
  # shellcheck disable=SC1091 # written by local-cluster.sh
  . "$DIR/cluster.env"
  TOOLS="$(cat "$DIR/tools-dir")"
}

kubectl() { "$TOOLS/kubectl" --kubeconfig "$DIR/kubeconfigs/admin.kubeconfig" "$@"; }

port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
free_port() {
  local p
  while :; do p=$((20000 + RANDOM % 12000)); port_free "$p" && { echo "$p"; return; }; done
}

# ---------------------------------------------------------------------------
# PKI and configuration, signed by the cluster's CA

new_cert() { # <name> <subject> <eku> [subjectAltName]
  local name="$1" subj="$2" eku="$3" sans="${4:-}"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$N/pki/$name.key" 2>/dev/null
  openssl req -new -key "$N/pki/$name.key" -subj "$subj" -out "$N/pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$eku"
    [ -z "$sans" ] || echo "subjectAltName=$sans"
  } >"$N/pki/$name.ext"
  openssl x509 -req -in "$N/pki/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -CAserial "$PKI/ca.srl" -days 3650 -sha256 \
    -extfile "$N/pki/$name.ext" -out "$N/pki/$name.crt" 2>/dev/null
  rm -f "$N/pki/$name.csr" "$N/pki/$name.ext"
  chmod 600 "$N/pki/$name.key"
}

node_kubeconfig() { # <cert-name> <user>
  cat >"$N/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: wao-local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $N/pki/$1.crt
    client-key: $N/pki/$1.key
contexts:
- name: wao-local
  context: {cluster: wao-local, user: $2}
current-context: wao-local
EOF
  chmod 600 "$N/$1.kubeconfig"
}

write_config() {
  mkdir -p "$N/pki" "$N/containerd" "$N/cni/net.d" "$N/cni/ipam" "$N/kubelet" "$N/pod-logs"
  new_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  new_cert kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
  new_cert kube-proxy "/CN=system:kube-proxy" clientAuth
  new_cert coredns "/CN=system:wao-coredns" clientAuth
  node_kubeconfig kubelet "system:node:$NODE_NAME"
  node_kubeconfig kube-proxy system:kube-proxy
  node_kubeconfig coredns system:wao-coredns

  cat >"$N/containerd/config.toml" <<EOF
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
# The snapshotters this machine cannot use only add noise to the log.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$N/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which sandboxes may lack.
  restrict_oom_score_adj = true
  disable_apparmor = true
  # Pod network namespaces under the node dir, so that teardown finds them all.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$N/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$N/cni/net.d"
    max_conf_num = 1
EOF

  # No ipMasq and no default route: pods reach the pod subnet (the node address
  # included) and Service IPs, nothing beyond this machine.
  cat >"$N/cni/net.d/10-wao.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "wao",
  "plugins": [{
    "type": "bridge",
    "bridge": "$BRIDGE",
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP"}]],
      "routes": [{"dst": "$SERVICE_CIDR", "gw": "$NODE_IP"}],
      "dataDir": "$N/cni/ipam"
    }
  }]
}
EOF

  # Pods get the cluster's DNS and nothing of this machine's resolver.
  : >"$N/resolv.conf"
  cat >"$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $N/pki/kubelet-serving.crt
tlsPrivateKeyFile: $N/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
# This machine has cgroup v1 only.
failCgroupV1: false
failSwapOn: false
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $N/resolv.conf
podLogsDir: $N/pod-logs
# A shared development disk must not make the node evict pods or images.
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
shutdownGracePeriod: 0s
EOF

  cat >"$N/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $N/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
clusterCIDR: $POD_SUBNET
nodePortAddresses: ["$NODE_IP/32"]
iptables: {localhostNodePorts: false, syncPeriod: 30s, minSyncPeriod: 0s}
# 0: leave the machine's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF

  # cluster.local only: no forward plugin, so nothing leaves this machine.
  cat >"$N/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$DNS_HEALTH_PORT
    ready 127.0.0.1:$DNS_READY_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $N/coredns.kubeconfig wao-local
        pods insecure
        ttl 5
    }
    cache 5
}
EOF
}

# What CoreDNS reads, and the kubernetes Service's endpoint: the node address,
# where a proxy forwards to the apiserver (which listens on loopback only).
apply_cluster_objects() {
  kubectl apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "wao:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "wao:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "wao:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:wao-coredns"}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: wao.local-node
addressType: IPv4
endpoints:
- addresses: [$NODE_IP]
  conditions: {ready: true}
ports: [{name: https, port: $API_PORT, protocol: TCP}]
EOF
}

# ---------------------------------------------------------------------------
# Network: the bridge with the node address, and a guard that keeps pod
# traffic on the bridge (the bridge plugin turns on IPv4 forwarding).

network_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/${POD_SUBNET#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  [ -f "$N/ip_forward.orig" ] || cat /proc/sys/net/ipv4/ip_forward >"$N/ip_forward.orig"
  # Directories of this machine the kubelet and libcni create: removed at
  # teardown (when empty) only if they were not there before.
  local d
  for d in /var/log/containers /var/lib/cni/results /var/lib/cni; do
    [ -e "$d" ] || echo "$d" >>"$N/made-dirs"
  done
  iptables -w -N "$CHAIN" 2>/dev/null || iptables -w -F "$CHAIN"
  iptables -w -A "$CHAIN" -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  iptables -w -A "$CHAIN" -i "$BRIDGE" -j DROP
  iptables -w -A "$CHAIN" -o "$BRIDGE" -j DROP
  iptables -w -C FORWARD -j "$CHAIN" 2>/dev/null || iptables -w -I FORWARD 1 -j "$CHAIN"
}

# The kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...), which
# `kube-proxy --cleanup` leaves: with one real node per machine every KUBE-
# chain is this node's.
kube_chains_down() { # <iptables|ip6tables>
  local ipt="$1" table rule chain
  command -v "$ipt" >/dev/null || return 0
  for table in filter nat mangle raw; do
    while read -r rule; do
      eval "\"\$ipt\" -w -t \"\$table\" ${rule/#-A/-D}" 2>/dev/null || true
    done < <("$ipt" -w -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' || true)
    for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[A-Z0-9-]*\)$/\1/p'); do
      "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[A-Z0-9-]*\)$/\1/p'); do
      "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

network_down() {
  kube_chains_down iptables
  kube_chains_down ip6tables
  while iptables -w -D FORWARD -j "$CHAIN" 2>/dev/null; do :; done
  iptables -w -F "$CHAIN" 2>/dev/null || true
  iptables -w -X "$CHAIN" 2>/dev/null || true
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE" || true; fi
  if [ -f "$N/ip_forward.orig" ]; then
    cat "$N/ip_forward.orig" >/proc/sys/net/ipv4/ip_forward || true
  fi
}

# ---------------------------------------------------------------------------
# up

containerd_ok() { ctr --address "$SOCK" version >/dev/null 2>&1; }
kubelet_ok() { curl -fsS --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" >/dev/null 2>&1; }
node_ready() {
  [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
proxy_ok() { curl -fsS --max-time 2 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" >/dev/null 2>&1; }
dns_ok() { curl -fsS --max-time 2 "http://127.0.0.1:$DNS_READY_PORT/ready" >/dev/null 2>&1; }
# Any HTTP answer will do: the apiserver's certificate names the Service, not the node.
apiproxy_ok() { [ "$(curl -sk --max-time 2 -o /dev/null -w '%{http_code}' "https://$NODE_IP:$API_PORT/livez" 2>/dev/null)" != 000 ]; }

healthy() {
  [ -f "$N/node.env" ] || return 1
  # shellcheck disable=SC1091 # written by cmd_up
  . "$N/node.env"
  local c
  for c in "${NODE_PROCS[@]}"; do alive "$c" || return 1; done
  node_ready
}

# Whether a process of the real node in cluster dir $1 runs.
node_runs_in() {
  local p
  for p in /proc/[0-9]*; do
    names_node "${p#/proc/}" "$1/node" && return 0
  done
  return 1
}

# Another cluster dir recorded as having the real node, whose node dir is
# still there.
recorded_other() {
  local owner
  owner="$(cat "$OWNER_FILE" 2>/dev/null || true)"
  [ -n "$owner" ] && [ "$owner" != "$DIR" ] && [ -d "$owner/node" ] || return 1
  echo "$owner"
}

# The cluster dir of another cluster whose real node holds this machine, if
# any. A node whose processes are all gone (its machine restarted, its
# cluster dir copied elsewhere) holds nothing: `up` removes what it left.
other_holder() {
  local owner
  owner="$(recorded_other)" || return 1
  node_runs_in "$owner" || return 1
  echo "$owner"
}

claim_machine() {
  local owner
  if owner="$(recorded_other)"; then
    if node_runs_in "$owner"; then
      die "the real node of this machine belongs to the cluster in $owner (hack/local-cluster.sh down there first)"
    fi
    log "the real node of the cluster in $owner runs no process: removing what it left"
    WAO_CLUSTER_DIR="$owner" "$REPO/hack/node.sh" down \
      || die "could not remove the stale real node of $owner (WAO_CLUSTER_DIR=$owner hack/node.sh down)"
  fi
  echo "$DIR" >"$OWNER_FILE"
}

UP_DONE=0
on_up_exit() {
  [ "$UP_DONE" = 1 ] && return 0
  if [ "${WAO_CLUSTER_KEEP_ON_FAILURE:-0}" = 1 ]; then
    log "start-up failed; WAO_CLUSTER_KEEP_ON_FAILURE=1 keeps the node for inspection"
  else
    log "start-up failed; removing the node"
    cmd_down || true
  fi
}

cmd_up() {
  local t0=$SECONDS
  [ "$(id -u)" = 0 ] || die "a real node needs root (containerd, mounts, the bridge, iptables)"
  load_cluster
  if healthy; then log "node $NODE_NAME is already up"; return 0; fi
  [ ! -d "$N" ] || { log "removing a stale node"; cmd_down; }
  claim_machine
  ensure_packages
  local tb=$SECONDS node_tools
  node_tools="$("$REPO/hack/tools.sh" node)" || die "hack/tools.sh node failed"
  [ $((SECONDS - tb)) -le 2 ] || log "node tools ready in $((SECONDS - tb))s"

  trap on_up_exit EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$N" "$RUN" "$LOGS"
  KUBELET_PORT="$(free_port)"; KUBELET_HEALTHZ_PORT="$(free_port)"
  PROXY_HEALTHZ_PORT="$(free_port)"; PROXY_METRICS_PORT="$(free_port)"
  DNS_HEALTH_PORT="$(free_port)"; DNS_READY_PORT="$(free_port)"
  {
    for v in KUBELET_PORT KUBELET_HEALTHZ_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT DNS_HEALTH_PORT DNS_READY_PORT; do
      echo "$v=${!v}"
    done
    echo "NODE_TOOLS=$node_tools"
  } >"$N/node.env"
  write_config
  log "adding node $NODE_NAME ($NODE_IP on $BRIDGE, pods in $POD_SUBNET)"

  network_up
  start containerd containerd --config "$N/containerd/config.toml" --log-level warn
  wait_for containerd "containerd ready" containerd_ok

  local tp=$SECONDS archive
  archive="$("$REPO/hack/images.sh" pause)" || die "hack/images.sh pause failed"
  ctr --address "$SOCK" -n k8s.io images import "$archive" >/dev/null || fail containerd "could not import $archive"
  log "pause image imported ($((SECONDS - tp))s)"

  apply_cluster_objects || die "could not create the node's cluster objects"
  # The lock file (removed by socat on exit) also marks the process as this node's.
  start apiserver-proxy socat -L "$N/apiserver-proxy.lock" \
    "TCP-LISTEN:$API_PORT,bind=$NODE_IP,fork,reuseaddr" "TCP:127.0.0.1:$API_PORT"
  # kubelet: the node labels tell it from kwok's (type=kwok).
  start kubelet "$node_tools/kubelet" \
    --config="$N/kubelet.yaml" \
    --kubeconfig="$N/kubelet.kubeconfig" \
    --root-dir="$N/kubelet" \
    --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" \
    --node-labels="type=real,wao.local/node=real" \
    --v="$VERBOSITY"
  start kube-proxy "$node_tools/kube-proxy" --config="$N/kube-proxy.yaml" --v="$VERBOSITY"
  start coredns "$node_tools/coredns" -conf "$N/Corefile"
  wait_for apiserver-proxy "apiserver reachable on $NODE_IP:$API_PORT" apiproxy_ok
  wait_for kubelet "kubelet healthy" kubelet_ok
  wait_for kubelet "node $NODE_NAME Ready" node_ready
  wait_for kube-proxy "kube-proxy healthy" proxy_ok
  wait_for coredns "CoreDNS ready" dns_ok
  UP_DONE=1
  trap - EXIT INT TERM
  log "node $NODE_NAME up in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------
# down: everything up made, in reverse, whether or not the cluster still runs.

node_mounts() { # mount points under the node dir, deepest first
  awk -v d="$N/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

cmd_down() {
  local t0=$SECONDS pid pids=() c t d
  [ -d "$N" ] || { [ "$(cat "$OWNER_FILE" 2>/dev/null)" != "$DIR" ] || rm -f "$OWNER_FILE"; return 0; }
  # The kubelet goes first, so that nothing restarts what is torn down next.
  for c in kubelet kube-proxy coredns apiserver-proxy; do
    pid="$(pid_of "$c")"; owned "$pid" && pids+=("$pid")
  done
  [ ${#pids[@]} -eq 0 ] || stop 5 "${pids[@]}"
  if alive containerd && containerd_ok; then
    # Containers are killed outright: the node is going away with its pods.
    for t in $(ctr --address "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$SOCK" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
    for t in $(ctr --address "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      for _ in 1 2 3 4 5 6 7 8 9 10; do
        ctr --address "$SOCK" -n k8s.io tasks rm -f "$t" >/dev/null 2>&1 && break
        sleep 0.3
      done
    done
    for c in $(ctr --address "$SOCK" -n k8s.io containers ls -q 2>/dev/null); do
      ctr --address "$SOCK" -n k8s.io containers rm "$c" >/dev/null 2>&1 || true
      # No CNI DEL ran for the sandboxes: their cached results go by hand.
      rm -f /var/lib/cni/results/*-"$c"-* 2>/dev/null || true
    done
  fi
  pid="$(pid_of containerd)"
  ! owned "$pid" || stop 10 "$pid"
  # Leftovers: shims of a containerd that died, and anything else of this node.
  mapfile -t pids < <(node_pids)
  [ ${#pids[@]} -eq 0 ] || { log "stopping leftover processes ${pids[*]}"; stop 5 "${pids[@]}"; }
  local m
  while read -r m; do
    [ -n "$m" ] || continue
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: could not unmount $m"
  done < <(node_mounts)
  # Rules and chains of kube-proxy (it removes only its own).
  if [ -f "$N/node.env" ]; then
    # shellcheck disable=SC1091 # written by cmd_up
    . "$N/node.env"
    [ -z "${NODE_TOOLS:-}" ] || [ ! -x "$NODE_TOOLS/kube-proxy" ] \
      || "$NODE_TOOLS/kube-proxy" --cleanup --v=0 >>"$LOGS/node-kube-proxy.log" 2>&1 || true
  fi
  network_down
  # Container processes outlive a killed shim: they are found by their pod cgroups.
  mapfile -t pids < <(cat /sys/fs/cgroup/pids/kubepods/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/cgroup.procs \
    /sys/fs/cgroup/pids/kubepods/*/*/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/*/*/cgroup.procs 2>/dev/null || true)
  [ ${#pids[@]} -eq 0 ] || { log "killing leftover container processes ${pids[*]}"; kill -KILL "${pids[@]}" 2>/dev/null || true; sleep 0.5; }
  # Pod cgroups the kubelet made (cgroupfs driver), deepest first.
  for c in /sys/fs/cgroup/*/kubepods; do
    if [ -d "$c" ]; then find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
  # The kubelet links container logs here.
  find /var/log/containers -maxdepth 1 -type l -lname "$N/*" -delete 2>/dev/null || true
  if [ -f "$N/made-dirs" ]; then
    while read -r d; do rmdir "$d" 2>/dev/null || true; done <"$N/made-dirs"
  fi
  # containerd 1.6 keeps shim sockets in /run/containerd/s whatever its state
  # dir: remove the directories it made there once they are empty.
  rmdir /run/containerd/s /run/containerd/fifo /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd 2>/dev/null || true
  if [ -n "$(node_mounts)" ]; then
    die "mounts remain under $N: $(node_mounts | tr '\n' ' ')"
  fi
  rm -rf --one-file-system "$N"
  rm -f "$RUN"/node-*.pid
  [ "$(cat "$OWNER_FILE" 2>/dev/null)" != "$DIR" ] || rm -f "$OWNER_FILE"
  log "node removed ($((SECONDS - t0))s)"
}

cmd_status() {
  local c pid rc=0
  [ -d "$N" ] || { echo "  real node:               none"; return 0; }
  for c in "${NODE_PROCS[@]}"; do
    pid="$(pid_of "$c")"
    if owned "$pid"; then printf '  %-24s running (pid %s)\n' "node $c" "$pid"
    else printf '  %-24s not running\n' "node $c"; rc=1; fi
  done
  return $rc
}

# ---------------------------------------------------------------------------
# smoke: one pod from the pause image (a Debian base with a shell) proves the
# sandbox, the bridge, DNS, the kubernetes Service, logs and exec.

cmd_smoke() {
  local t0=$SECONDS ns=wao-node-smoke out
  load_cluster
  healthy || die "no real node in $DIR (run: hack/local-cluster.sh up with WAO_CLUSTER_REAL_NODE=1)"
  kubectl delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
  kubectl create namespace "$ns" >/dev/null
  kubectl apply -n "$ns" -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: probe}
spec:
  nodeSelector: {type: real}
  terminationGracePeriodSeconds: 1
  containers:
  - name: probe
    image: $PAUSE_IMAGE
    imagePullPolicy: Never
    command: [bash, -c]
    args:
    - |
      getent hosts kubernetes.default.svc.cluster.local || echo "FAILED: no DNS answer"
      if (exec 3<>/dev/tcp/kubernetes.default.svc/443); then echo "apiserver reachable through its Service"
      else echo "FAILED: apiserver not reachable through its Service"; fi
      echo probe-ready
      exec sleep infinity
EOF
  if ! kubectl -n "$ns" wait pod/probe --for=condition=Ready --timeout="${TIMEOUT}s" >/dev/null; then
    kubectl -n "$ns" describe pod probe >&2 || true
    die "smoke: the pod did not become Ready"
  fi
  local deadline=$((SECONDS + 30))
  until out="$(kubectl -n "$ns" logs probe 2>&1)" && grep -q probe-ready <<<"$out"; do
    [ $SECONDS -lt $deadline ] || die "smoke: kubectl logs: $out"
    sleep 1
  done
  log "smoke: kubectl logs: ${out//$'\n'/ | }"
  ! grep -q FAILED <<<"$out" || die "smoke: the probe pod failed a check"
  out="$(kubectl -n "$ns" exec probe -- cat /etc/resolv.conf)" || die "smoke: kubectl exec failed"
  grep -q "nameserver $NODE_IP" <<<"$out" || die "smoke: resolv.conf does not name the cluster DNS: $out"
  log "smoke: kubectl exec works; pods resolve through $NODE_IP"
  kubectl delete namespace "$ns" --wait=true --timeout="${TIMEOUT}s" >/dev/null
  log "smoke: OK ($((SECONDS - t0))s)"
}

# A loopback service cannot be a Service endpoint: socat on the node address
# forwards to it, and a selector-less Service points at that.
cmd_expose() {
  local name="${1:-}" port="${2:-}" target="${3:-}"
  if ! [[ "$name" =~ ^[a-z][a-z0-9-]*$ && "$port" =~ ^[0-9]+$ && "$target" =~ ^[^:]+:[0-9]+$ ]]; then
    die "usage: $0 expose NAME PORT HOST:PORT"
  fi
  load_cluster
  healthy || die "no real node in $DIR"
  local pid; pid="$(pid_of "host-$name")"
  ! owned "$pid" || stop 2 "$pid"
  start "host-$name" socat -L "$N/host-$name.lock" "TCP-LISTEN:$port,bind=$NODE_IP,fork,reuseaddr" "TCP:$target"
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: wao-host}
---
apiVersion: v1
kind: Service
metadata: {name: $name, namespace: wao-host}
spec:
  ports: [{name: tcp, port: $port, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $name
  namespace: wao-host
  labels:
    kubernetes.io/service-name: $name
    endpointslice.kubernetes.io/managed-by: wao.local-node
addressType: IPv4
endpoints:
- addresses: [$NODE_IP]
  conditions: {ready: true}
ports: [{name: tcp, port: $port, protocol: TCP}]
EOF
  log "$target is $name.wao-host.svc:$port for pods"
}

cmd_signal_kubelet() { # <STOP|CONT> <what it means>
  load_cluster
  alive kubelet || die "the kubelet of the node does not run"
  kill -"$1" "$(pid_of kubelet)"
  log "kubelet: $2"
}

case "${1:-}" in
  up) cmd_up ;;
  freeze) cmd_signal_kubelet STOP "frozen; its containers go on running (thaw lets it go on)" ;;
  thaw) cmd_signal_kubelet CONT "running again" ;;
  expose) shift; cmd_expose "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  smoke) cmd_smoke ;;
  holder) other_holder || exit 1 ;;
  *) echo "usage: $0 up|down|status|smoke|expose|freeze|thaw|holder" >&2; exit 2 ;;
esac
