#!/usr/bin/env bash
# The one-VM restore comparison (issue #11): restores the latest snapshot of one VM of the shared
# data set with coffer and with restic, cold cache, under `perf stat -e page-faults,task-clock`
# and `/usr/bin/time -v`, and prints one line per run: page faults, task-clock, user and system
# time, maximum RSS, wall time. Page faults, CPU and RSS are what load from other processes does
# not distort; wall time does.
#
#   bench/restore-one-vm.sh [VM_DIR] [RUNS]     # as root (drops the page cache before each run)
#
# The first run backs VM_DIR (default /tmp/bench-work/data/files-default/src/vm01) up once into
# $WORK/repo (coffer) and $WORK/restic; later runs reuse them. WORK defaults to /tmp/restore;
# COFFER is the coffer checkout to run (default: this one). PEERS="coffer restic" by default.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
VM="${1:-/tmp/bench-work/data/files-default/src/vm01}"
RUNS="${2:-1}"
WORK="${WORK:-/tmp/restore}"
COFFER="${COFFER:-$HERE}"
PEERS="${PEERS:-coffer restic}"
NODE="$COFFER/node_modules/.bin/node"
export COFFER_PASSWORD=x RESTIC_PASSWORD=x COFFER_CACHE_DIR="$WORK/cache"
mkdir -p "$WORK"

if [ ! -d "$WORK/repo" ]; then
  "$NODE" "$COFFER/bin/coffer.mjs" repo init --repo "$WORK/repo" >/dev/null
  (cd "$VM" && "$NODE" "$COFFER/bin/coffer.mjs" repo backup --repo "$WORK/repo" --host b . >/dev/null)
fi
if [ ! -d "$WORK/restic" ] && [[ " $PEERS " == *" restic "* ]]; then
  restic init -q -r "$WORK/restic"
  (cd "$VM" && restic -q -r "$WORK/restic" backup --host b . >/dev/null)
fi

run() {
  local peer="$1"; shift
  rm -rf "$WORK/out"
  sync
  echo 3 > /proc/sys/vm/drop_caches
  perf stat -x, -e page-faults,task-clock -o "$WORK/perf.txt" /usr/bin/time -v -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/stderr.txt"
  local faults clock user sys rss wall
  faults=$(awk -F, '$3=="page-faults"{print $1}' "$WORK/perf.txt")
  clock=$(awk -F, '$3=="task-clock"{printf "%.2f", $1/1000}' "$WORK/perf.txt")
  user=$(awk -F': ' '/User time/{print $2}' "$WORK/time.txt")
  sys=$(awk -F': ' '/System time/{print $2}' "$WORK/time.txt")
  rss=$(awk -F': ' '/Maximum resident/{printf "%d", $2/1024}' "$WORK/time.txt")
  wall=$(awk -F': ' '/Elapsed/{print $2}' "$WORK/time.txt")
  local bytes
  bytes=$(du -sb "$WORK/out" | cut -f1)
  printf '%-7s faults %8s  task-clock %6s s  user %6s s  sys %6s s  maxRSS %4s MB  wall %s  faults/GB %s\n' \
    "$peer" "$faults" "$clock" "$user" "$sys" "$rss" "$wall" "$(awk -v f="$faults" -v b="$bytes" 'BEGIN{printf "%d", f/(b/1e9)}')"
}

echo "# $(date -u +'%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $VM"
for ((i = 0; i < RUNS; i++)); do
  for peer in $PEERS; do
    case "$peer" in
      coffer) run coffer "$NODE" "$COFFER/bin/coffer.mjs" repo restore latest --repo "$WORK/repo" --target "$WORK/out" ;;
      restic) run restic restic -q -r "$WORK/restic" restore latest --target "$WORK/out" ;;
      *) echo "unknown peer $peer" >&2; exit 2 ;;
    esac
  done
done
rm -rf "$WORK/out"
