#!/usr/bin/env bash
# Coffer against restic (and any other peers) on the shared data set, in one run:
# gen, full backup, churn, incremental, churn, incremental, restore + verify.
#
#   bench/compare.sh                       # MODE=files SCALE=default PEERS="restic coffer"
#   PEERS="restic borg-zstd coffer" SCALE=small bench/compare.sh
#
# Needs restic (and borg for borg peers) and /usr/bin/time: apt-get install -y restic borgbackup time
# Results: bench/results/$MODE-$SCALE/results.md (and .jsonl, logs/).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHARED=${SHARED:-$HERE/../../shared/bench}
export MODE=${MODE:-files} SCALE=${SCALE:-default}
export PEERS=${PEERS:-"restic coffer"}
export PEER_FILES=$HERE/peers-coffer.sh
export OUT=${OUT:-$HERE/results/$MODE-$SCALE}
export NODE=${NODE:-$HERE/../node_modules/.bin/node}
exec "$SHARED/run-peers.sh"
