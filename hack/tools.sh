#!/usr/bin/env bash
# Resolves the pinned control-plane and packaging binaries into one directory and
# prints that directory (`node`: the binaries of a real node, in a second one).
# Order of sources:
#   1. $WAO_TOOLS_DIR, when it already holds every binary;
#   2. the local cache ($WAO_CACHE_DIR, default ~/.cache/whatsapp-operator);
#   3. a build from Go modules (the Kubernetes commands through a wrapper module
#      whose replace lines pin the staging modules to the same release).
# `floor`: the same set with the control plane (kube-apiserver,
# kube-controller-manager, kube-scheduler) of the lowest supported Kubernetes
# release, for running the integration suite against it.
# `object-store`: the S3-compatible store the tests keep backups in, built from
# hack/object-store and cached by a digest of its sources.
# Usage: hack/tools.sh [ensure|path|node|floor|object-store|versions]
set -euo pipefail

KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.34.4}"
# The lowest Kubernetes release the operator supports (README, "Supported
# Kubernetes"); keep the k8s-openapi feature and the chart's kubeVersion with it.
KUBERNETES_FLOOR_VERSION="${KUBERNETES_FLOOR_VERSION:-v1.33.13}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"

TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)
CACHE_ROOT="${WAO_CACHE_DIR:-$HOME/.cache/whatsapp-operator}"
CACHE_BIN="$CACHE_ROOT/bin/k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
# A real node's binaries live apart, so that the control-plane cache (and the
# test command that needs only it) never waits for them.
NODE_TOOLS=(kubelet kube-proxy coredns)
NODE_BIN="$CACHE_ROOT/bin/node-k8s-${KUBERNETES_VERSION}_coredns-${COREDNS_VERSION}"

log() { echo "[tools] $*" >&2; }

have_all() { # <dir> [tool...] (default: the control-plane tools)
  local dir="$1" t; shift
  [ $# -gt 0 ] || set -- "${TOOLS[@]}"
  for t in "$@"; do [ -x "$dir/$t" ] || return 1; done
}

# The k8s.io/kubernetes module refers to its staging modules as v0.0.0 with
# local replace lines; outside its repository they must point at the published
# v0.X.Y tags of the same release.
build_kubernetes() { # <out> <command...>
  local out="$1" work minor staging; shift
  local cmds=("$@")
  local KUBERNETES_VERSION="${BUILD_KUBERNETES_VERSION:-$KUBERNETES_VERSION}"
  work="$(mktemp -d)"
  minor="v0.${KUBERNETES_VERSION#v1.}"
  log "building Kubernetes ${KUBERNETES_VERSION} commands (staging modules at ${minor})"
  (
    cd "$work"
    go mod init wao-tools/kubernetes >/dev/null 2>&1
    gomod="$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    staging="$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod")"
    {
      echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
      for m in $staging; do echo "replace $m => $m ${minor}"; done
    } >>go.mod
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for c in "${cmds[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
      printf ')\n'
    } >tools.go
    go mod tidy -e >/dev/null 2>&1 || true
    go get "k8s.io/kubernetes@${KUBERNETES_VERSION}" >/dev/null
    go mod tidy
    local ldflags="-s -w"
    local pkg="k8s.io/component-base/version"
    ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION} -X ${pkg}.gitMajor=1"
    ldflags+=" -X ${pkg}.gitMinor=$(echo "${KUBERNETES_VERSION}" | cut -d. -f2)"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
    ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=${KUBERNETES_VERSION}"
    for c in "${cmds[@]}"; do
      log "go build $c"
      CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/$c" "k8s.io/kubernetes/cmd/$c"
    done
  )
  rm -rf "$work"
}

build_etcd() {
  local out="$1" work
  work="$(mktemp -d)"
  log "building etcd ${ETCD_VERSION}"
  (
    cd "$work"
    go mod init wao-tools/etcd >/dev/null 2>&1
    cat >tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
    go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >/dev/null
    go mod tidy
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
  )
  rm -rf "$work"
}

build_installable() {
  local out="$1" name="$2" pkg="$3" ldflags="${4:-}"
  log "building $name from $pkg"
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "-s -w $ldflags" "$pkg"
}

# Helm's release build stamps the Kubernetes version it was built against;
# without it `helm template` assumes v1.20 and refuses kubeVersion >=1.34.
helm_kube_ldflags() {
  local minor; minor="$(echo "${KUBERNETES_VERSION}" | cut -d. -f2)"
  local p flags=""
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    flags+=" -X ${p}.k8sVersionMajor=1 -X ${p}.k8sVersionMinor=${minor}"
  done
  echo "$flags"
}

ensure() {
  if [ -n "${WAO_TOOLS_DIR:-}" ] && have_all "$WAO_TOOLS_DIR"; then
    echo "$WAO_TOOLS_DIR"; return
  fi
  if have_all "$CACHE_BIN"; then echo "$CACHE_BIN"; return; fi
  command -v go >/dev/null || { log "Go is needed to build the tools and was not found"; exit 1; }
  mkdir -p "$CACHE_BIN"
  have_all "$CACHE_BIN" kube-apiserver kube-controller-manager kube-scheduler kubectl \
    || build_kubernetes "$CACHE_BIN" kube-apiserver kube-controller-manager kube-scheduler kubectl
  [ -x "$CACHE_BIN/etcd" ] || build_etcd "$CACHE_BIN"
  [ -x "$CACHE_BIN/kwok" ] || build_installable "$CACHE_BIN" kwok "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" \
    "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}"
  [ -x "$CACHE_BIN/helm" ] || build_installable "$CACHE_BIN" helm "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" \
    "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} $(helm_kube_ldflags)"
  have_all "$CACHE_BIN" || { log "some tools are still missing in $CACHE_BIN"; exit 1; }
  echo "$CACHE_BIN"
}

# The kubelet, kube-proxy and CoreDNS of a real node (hack/node.sh).
ensure_node() {
  if [ -n "${WAO_TOOLS_DIR:-}" ] && have_all "$WAO_TOOLS_DIR" "${NODE_TOOLS[@]}"; then
    echo "$WAO_TOOLS_DIR"; return
  fi
  if have_all "$NODE_BIN" "${NODE_TOOLS[@]}"; then echo "$NODE_BIN"; return; fi
  command -v go >/dev/null || { log "Go is needed to build the node tools and was not found"; exit 1; }
  mkdir -p "$NODE_BIN"
  local missing=() c
  for c in kubelet kube-proxy; do [ -x "$NODE_BIN/$c" ] || missing+=("$c"); done
  [ ${#missing[@]} -eq 0 ] || build_kubernetes "$NODE_BIN" "${missing[@]}"
  # CoreDNS's main package is the module root; its go.mod has no replace lines.
  [ -x "$NODE_BIN/coredns" ] || build_installable "$NODE_BIN" coredns "github.com/coredns/coredns@${COREDNS_VERSION}" \
    "-X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}"
  have_all "$NODE_BIN" "${NODE_TOOLS[@]}" || { log "some node tools are still missing in $NODE_BIN"; exit 1; }
  echo "$NODE_BIN"
}

# The control plane of KUBERNETES_FLOOR_VERSION in a cache directory of its own
# (keyed by that version, so both releases stay cached); etcd, kwok, helm and
# kubectl are links to the ensure set (kubectl is within the supported skew).
ensure_floor() {
  local main dir t
  main="$(ensure)"
  dir="$CACHE_ROOT/bin/control-plane-k8s-${KUBERNETES_FLOOR_VERSION}"
  mkdir -p "$dir"
  if ! have_all "$dir" kube-apiserver kube-controller-manager kube-scheduler; then
    command -v go >/dev/null || { log "Go is needed to build the tools and was not found"; exit 1; }
    BUILD_KUBERNETES_VERSION="$KUBERNETES_FLOOR_VERSION" \
      build_kubernetes "$dir" kube-apiserver kube-controller-manager kube-scheduler
  fi
  for t in etcd kwok helm kubectl; do ln -sfn "$main/$t" "$dir/$t"; done
  have_all "$dir" || { log "some tools are still missing in $dir"; exit 1; }
  echo "$dir"
}

ensure_object_store() {
  local src dir digest
  src="$(cd "$(dirname "$0")/object-store" && pwd)"
  digest="$(cat "$src/main.go" "$src/go.mod" "$src/go.sum" | sha256sum | cut -c1-16)"
  dir="$CACHE_ROOT/bin/object-store-$digest"
  if [ ! -x "$dir/wao-object-store" ]; then
    command -v go >/dev/null || { log "Go is needed to build the object store and was not found"; exit 1; }
    log "building the test object store from $src"
    mkdir -p "$dir"
    (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/wao-object-store" .)
  fi
  echo "$dir"
}

case "${1:-ensure}" in
  ensure|path) ensure ;;
  node) ensure_node ;;
  floor) ensure_floor ;;
  object-store) ensure_object_store ;;
  versions) echo "kubernetes=${KUBERNETES_VERSION} kubernetes-floor=${KUBERNETES_FLOOR_VERSION} etcd=${ETCD_VERSION} kwok=${KWOK_VERSION} helm=${HELM_VERSION} coredns=${COREDNS_VERSION}" ;;
  *) echo "usage: $0 [ensure|path|node|floor|object-store|versions]" >&2; exit 2 ;;
esac
