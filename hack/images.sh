#!/usr/bin/env bash
# Container images built on this machine without a registry or a Docker daemon:
# a debootstrap base layer (cached), then one small layer per image with binaries
# built on the host, written as one OCI archive that containerd imports.
#
# Usage: hack/images.sh base|pause|build|load|list
#   base    build (once) the cached base layer; prints its path
#   pause   the archive of the pause image alone (no Rust build); prints its path
#   build   release binaries + the OCI archive of every image; prints its path
#   load    build, then import the archive into a containerd (ctr -n k8s.io)
#   list    the image names the archive holds
#
# See hack/README.md for the images and the environment knobs.
set -Eeuo pipefail
trap 'echo "[images] error: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${WAO_CACHE_DIR:-$HOME/.cache/whatsapp-operator}"
SUITE="${WAO_IMAGE_SUITE:-bookworm}"
MIRROR="${WAO_IMAGE_MIRROR:-http://deb.debian.org/debian}"
# Bumped whenever the base's content changes, so a stale cache is never reused.
BASE_REVISION=1
BASE_PACKAGES=ca-certificates
BASE_TAR="$CACHE_ROOT/images/base-$SUITE-minbase-r$BASE_REVISION.tar"
OUT="${WAO_IMAGES_DIR:-$REPO/.cache/images}"
ARCHIVE="$OUT/images.oci.tar"

PREFIX="${WAO_IMAGE_PREFIX:-wao.local}"
OPERATOR_IMAGE="${WAO_OPERATOR_IMAGE:-$PREFIX/whatsapp-operator:dev}"
EMULATOR_REPO="${WAO_EMULATOR_REPO:-$PREFIX/wa-emulator}"
PAUSE_IMAGE="${WAO_PAUSE_IMAGE:-$PREFIX/pause:1}"
read -r -a VERSIONS <<<"${WAO_EMULATOR_VERSIONS:-2.53.2 2.55.1}"
# Extra environment baked into every emulator image (the Dockerfile's optional
# build arguments and test-only knobs), as space-separated NAME=value words.
read -r -a EMULATOR_ENV <<<"${WAO_EMULATOR_ENV:-}"
CONTAINERD_ADDRESS="${WAO_CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"

log() { echo "[images] $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------
# Base layer: a minbase Debian whose glibc matches the host-built binaries.

need_debootstrap() {
  command -v debootstrap >/dev/null && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "debootstrap is needed (apt-get install debootstrap)"
  fi
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
}

cmd_base() {
  if [ -s "$BASE_TAR" ] && [ -s "$BASE_TAR.sha256" ]; then echo "$BASE_TAR"; return; fi
  [ "$(id -u)" = 0 ] || die "debootstrap needs root"
  need_debootstrap
  local t0=$SECONDS root
  mkdir -p "$(dirname "$BASE_TAR")"
  root="$(mktemp -d "$CACHE_ROOT/images/rootfs.XXXXXX")"
  # A failed bootstrap leaves its mounts of /proc and /sys inside the rootfs.
  trap 'umount -R "$root/proc" "$root/sys" 2>/dev/null || true; rm -rf --one-file-system "$root"' EXIT
  log "debootstrap --variant=minbase $SUITE from $MIRROR (about 2 minutes)"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -n 30 "$root.log" >&2; rm -f "$root.log"; die "debootstrap failed"; }
  rm -f "$root.log"
  # What the runtime provides or what only served the bootstrap stays out.
  rm -rf "${root:?}"/var/cache/apt/archives/*.deb "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/log/* \
    "${root:?}"/dev/* "${root:?}"/proc/* "${root:?}"/sys/* "${root:?}"/run/* "${root:?}"/tmp/* "${root:?}"/debootstrap
  : >"$root/etc/hostname"
  rm -f "$root/etc/resolv.conf"
  mkdir -p "$root/home/nonroot"
  chown 65532:65532 "$root/home/nonroot"
  echo "nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin" >>"$root/etc/passwd"
  echo "nonroot:x:65532:" >>"$root/etc/group"
  tar_dir "$root" "$BASE_TAR.tmp"
  sha256sum "$BASE_TAR.tmp" | cut -d' ' -f1 >"$BASE_TAR.sha256"
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf --one-file-system "$root"
  trap - EXIT
  log "base layer $(du -h "$BASE_TAR" | cut -f1) in $((SECONDS - t0))s: $BASE_TAR"
  echo "$BASE_TAR"
}

# tar_dir <dir> <out>: a layer tar with fixed order, owners and times, so the
# same content always gives the same digest (and containerd stores it once).
tar_dir() {
  tar --sort=name --numeric-owner --mtime=@0 --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$1" -cf "$2" .
}

# ---------------------------------------------------------------------------
# OCI archive

BLOBS=""
put_blob() { # <file>: moves it into the blob store; prints "<digest> <size>"
  local d s
  d="$(sha256sum "$1" | cut -d' ' -f1)"
  s="$(stat -c %s "$1")"
  mv "$1" "$BLOBS/$d"
  echo "$d $s"
}

json_list() { # <word...> -> ["a","b"]
  local out="" w
  for w in "$@"; do out+="${out:+,}\"$w\""; done
  echo "[$out]"
}

INDEX_ENTRIES=""
# add_image <name> <layer-dir> <config-fragment>: the base layer plus one layer
# made of <layer-dir>; the fragment is the body of the image config's "config".
add_image() {
  local name="$1" dir="$2" conf="$3" top top_d top_s cfg cfg_d cfg_s man man_d man_s
  top="$(mktemp "$BLOBS/.layer.XXXXXX")"
  tar_dir "$dir" "$top"
  read -r top_d top_s < <(put_blob "$top")
  cfg="$(mktemp "$BLOBS/.config.XXXXXX")"
  printf '{"architecture":"amd64","os":"linux","config":{%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' \
    "$conf" "$BASE_D" "$top_d" >"$cfg"
  read -r cfg_d cfg_s < <(put_blob "$cfg")
  man="$(mktemp "$BLOBS/.manifest.XXXXXX")"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cfg_d" "$cfg_s" "$BASE_D" "$BASE_S" "$top_d" "$top_s" >"$man"
  read -r man_d man_s < <(put_blob "$man")
  INDEX_ENTRIES+="${INDEX_ENTRIES:+,}$(printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}' \
    "$man_d" "$man_s" "$name" "${name##*:}")"
  echo "$name" >>"$OUT/images.txt.tmp"
  log "image $name"
}

release_binaries() {
  local t0=$SECONDS
  if [ -n "${WAO_RELEASE_DIR:-}" ]; then echo "$WAO_RELEASE_DIR"; return; fi
  log "cargo build --release (operator and emulator)"
  (cd "$REPO" && cargo build --release --locked -p whatsapp-operator -p whatsapp-emulator >&2) \
    || die "cargo build --release failed"
  log "release binaries in $((SECONDS - t0))s"
  echo "${CARGO_TARGET_DIR:-$REPO/target}/release"
}

STAGE=""
begin_archive() {
  local base
  base="$(cmd_base)"
  mkdir -p "$OUT"
  STAGE="$(mktemp -d "$OUT/stage.XXXXXX")"
  trap 'rm -rf "$STAGE"' EXIT
  BLOBS="$STAGE/oci/blobs/sha256"
  mkdir -p "$BLOBS"
  BASE_D="$(cat "$base.sha256")"
  BASE_S="$(stat -c %s "$base")"
  # A hard link keeps the 100+ MB base out of a second copy where possible.
  ln "$base" "$BLOBS/$BASE_D" 2>/dev/null || cp "$base" "$BLOBS/$BASE_D"
  : >"$OUT/images.txt.tmp"
  # The pause image: any process that sleeps until killed holds a pod's sandbox.
  # It is a Debian base with a shell, so node checks can run in it too.
  mkdir -p "$STAGE/pause"
  add_image "$PAUSE_IMAGE" "$STAGE/pause" '"Entrypoint":["/bin/sleep","infinity"]'
}

finish_archive() { # <archive>
  echo '{"imageLayoutVersion":"1.0.0"}' >"$STAGE/oci/oci-layout"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$INDEX_ENTRIES" >"$STAGE/oci/index.json"
  tar -C "$STAGE/oci" -cf "$1.tmp" oci-layout index.json blobs
  mv "$1.tmp" "$1"
  rm -rf "$STAGE"
  trap - EXIT
}

cmd_pause() {
  local archive="$OUT/pause.oci.tar"
  # The pause image only depends on the base layer and its name.
  if [ -s "$archive" ] && [ "$(cat "$archive.key" 2>/dev/null)" = "$BASE_TAR $PAUSE_IMAGE" ]; then
    echo "$archive"; return
  fi
  begin_archive
  finish_archive "$archive"
  rm -f "$OUT/images.txt.tmp"
  echo "$BASE_TAR $PAUSE_IMAGE" >"$archive.key"
  echo "$archive"
}

cmd_build() {
  local t0=$SECONDS rel v kind e env_json stage
  rel="$(release_binaries)"
  if [ ! -x "$rel/whatsapp-operator" ] || [ ! -x "$rel/whatsapp-emulator" ]; then
    die "no release binaries in $rel"
  fi
  begin_archive
  stage="$STAGE"

  # The operator, as the repository's Dockerfile builds it: non-root, no shell needed.
  mkdir -p "$stage/operator"
  install -m 0755 "$rel/whatsapp-operator" "$stage/operator/whatsapp-operator"
  add_image "$OPERATOR_IMAGE" "$stage/operator" \
    '"User":"65532:65532","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","HOME=/home/nonroot"],"Entrypoint":["/whatsapp-operator"],"ExposedPorts":{"8080/tcp":{}},"WorkingDir":"/"'

  # The emulator, as emulator/Dockerfile builds it: the binary, every start
  # script of emulator/docker and the client's data directories. There is no
  # default command: pods name the one they run.
  mkdir -p "$stage/emulator/opt/whatsapp/bin" "$stage/emulator/usr/local/wamedia" \
    "$stage/emulator/usr/local/waent/data" "$stage/emulator/usr/local/waent/log"
  install -m 0755 "$rel/whatsapp-emulator" "$stage/emulator/opt/whatsapp/bin/whatsapp-emulator"
  for e in "$REPO"/emulator/docker/*.sh; do install -m 0755 "$e" "$stage/emulator/opt/whatsapp/bin/"; done
  for v in "${VERSIONS[@]}"; do
    for kind in coreapp web; do
      env_json="\"PATH=/opt/whatsapp/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\",\"WA_EMULATOR_IMAGE=$kind\",\"WA_EMULATOR_VERSION=$v\""
      for e in "${EMULATOR_ENV[@]}"; do env_json+=",\"$e\""; done
      add_image "$EMULATOR_REPO/$kind:v$v" "$stage/emulator" \
        "\"Env\":[$env_json],\"ExposedPorts\":{\"6250/tcp\":{},\"6251/tcp\":{},\"6252/tcp\":{},\"6253/tcp\":{},\"443/tcp\":{}},\"WorkingDir\":\"/\",\"Labels\":{\"org.opencontainers.image.version\":\"$v\"}"
    done
  done

  finish_archive "$ARCHIVE"
  mv "$OUT/images.txt.tmp" "$OUT/images.txt"
  log "archive $(du -h "$ARCHIVE" | cut -f1) with $(wc -l <"$OUT/images.txt") images in $((SECONDS - t0))s: $ARCHIVE"
  echo "$ARCHIVE"
}

cmd_load() {
  local t0=$SECONDS archive
  archive="$(cmd_build)"
  [ -S "$CONTAINERD_ADDRESS" ] || die "no containerd socket at $CONTAINERD_ADDRESS (WAO_CONTAINERD_ADDRESS)"
  ctr --address "$CONTAINERD_ADDRESS" -n k8s.io images import "$archive" >&2 \
    || die "ctr images import failed"
  log "imported into $CONTAINERD_ADDRESS in $((SECONDS - t0))s"
}

case "${1:-}" in
  base) cmd_base ;;
  pause) cmd_pause ;;
  build) cmd_build ;;
  load) cmd_load ;;
  list) if [ -f "$OUT/images.txt" ]; then cat "$OUT/images.txt"; else die "no archive yet (run: $0 build)"; fi ;;
  *) echo "usage: $0 base|build|load|list" >&2; exit 2 ;;
esac
