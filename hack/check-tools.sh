#!/usr/bin/env bash
# Resolves the pinned tools of the chart, alert and workflow checks, builds
# them from Go modules once, and prints the path of the one asked for:
#   promtool    Prometheus rule checks and unit tests (promtool test rules)
#   helm-docs   the values table of docs/helm.md
#   actionlint  the GitHub Actions workflows
# Binaries are cached under $WAO_CACHE_DIR (default ~/.cache/whatsapp-operator),
# one directory per tool and version, like hack/tools.sh does for the
# control-plane tools.
# Usage: hack/check-tools.sh promtool|helm-docs|actionlint|versions
set -euo pipefail

PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}" # Prometheus 3.x as a Go module
HELM_DOCS_VERSION="${HELM_DOCS_VERSION:-v1.14.2}"
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-v1.7.12}"
CACHE_ROOT="${WAO_CACHE_DIR:-$HOME/.cache/whatsapp-operator}"

log() { echo "[check-tools] $*" >&2; }

resolve() { # <name> <version> <package> [ldflags] [tags]
  local name="$1" version="$2" pkg="$3" ldflags="${4:-}" tags="${5:-}"
  local dir="$CACHE_ROOT/bin/$name-$version${tags:+-$tags}"
  if [ ! -x "$dir/$name" ]; then
    command -v go >/dev/null || { log "Go is needed to build $name and was not found"; exit 1; }
    log "building $name $version from $pkg"
    mkdir -p "$dir"
    CGO_ENABLED=0 GOBIN="$dir" go install -trimpath -tags "$tags" -ldflags "-s -w $ldflags" "$pkg@$version"
  fi
  echo "$dir/$name"
}

case "${1:-}" in
  # Without service discovery (remove_all_sd): rule checks and tests need
  # none, and the cloud SDKs it drops are most of the build.
  promtool) resolve promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool "" remove_all_sd ;;
  helm-docs) resolve helm-docs "$HELM_DOCS_VERSION" github.com/norwoodj/helm-docs/cmd/helm-docs \
    "-X main.version=${HELM_DOCS_VERSION#v}" ;;
  actionlint) resolve actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint \
    "-X github.com/rhysd/actionlint.version=${ACTIONLINT_VERSION#v}" ;;
  versions) echo "prometheus=${PROMETHEUS_VERSION} helm-docs=${HELM_DOCS_VERSION} actionlint=${ACTIONLINT_VERSION}" ;;
  *) echo "usage: $0 promtool|helm-docs|actionlint|versions" >&2; exit 2 ;;
esac
