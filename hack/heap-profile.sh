#!/usr/bin/env bash
# hack/heap-profile.sh ARGS...: the operator's release binary under heaptrack's
# preload library, to be given to hack/bench.sh as WAO_BENCH_OPERATOR (see
# docs/performance.md). It replaces itself with the operator (exec), so the
# bench's process id, memory readings and signals are the operator's own;
# heaptrack_interpret writes $WAO_HEAP_PROFILE_DIR/heaptrack.<pid>.zst, which
# heaptrack_print reads. A process killed with SIGKILL leaves a profile whose
# "leaked" allocations are those live at that moment.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${WAO_HEAP_PROFILE_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/whatsapp-operator}"
out="${WAO_HEAP_PROFILE_DIR:-$root/.cache/heap-profile}"
lib="${HEAPTRACK_LIB_DIR:-/usr/lib/heaptrack}"

if [[ ! -r "$lib/libheaptrack_preload.so" || ! -x "$lib/libexec/heaptrack_interpret" ]]; then
  echo "heap-profile: heaptrack is not in $lib (Debian: apt-get install heaptrack)" >&2
  exit 1
fi
command -v zstd >/dev/null || { echo "heap-profile: zstd is missing" >&2; exit 1; }

mkdir -p "$out"
pipe="$out/fifo.$$"
rm -f "$pipe"
mkfifo "$pipe"
# Reads until the operator exits or is killed; the pipe goes with it.
("$lib/libexec/heaptrack_interpret" <"$pipe" | zstd -q -1 >"$out/heaptrack.$$.zst"; rm -f "$pipe") &
LD_PRELOAD="$lib/libheaptrack_preload.so" DUMP_HEAPTRACK_OUTPUT="$pipe" exec "$bin" "$@"
