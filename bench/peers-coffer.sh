# Coffer as a peer of shared/bench/run-peers.sh (sourced through PEER_FILES). The commands see
# REPO, SRC, DEST, N, CACHE and MODE (see run-peers.sh). Images are backed up with --image
# (fixed-size chunks); the peer coffer-cdc backs them up with --image-chunking cdc, and is the
# same as coffer in files mode.
COFFER_ROOT=${COFFER_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
_coffer() {
  COFFER_PASSWORD=bench COFFER_CACHE_DIR="$CACHE" "$COFFER_ROOT/node_modules/.bin/node" "$COFFER_ROOT/bin/coffer.mjs" "$@"
}
_coffer_backup() {
  if [[ $MODE == image ]]; then cd "$SRC" && _coffer repo backup --repo "$REPO" --host bench --image "$@" ./*.img >/dev/null
  else cd "$SRC" && _coffer repo backup --repo "$REPO" --host bench . >/dev/null; fi
}
peer_coffer_init()    { _coffer repo init --repo "$REPO" >/dev/null; }
peer_coffer_backup()  { _coffer_backup; }
peer_coffer_restore() { _coffer repo restore latest --repo "$REPO" --host bench --target "$DEST" >/dev/null; }
peer_coffer_cdc_init()    { peer_coffer_init; }
peer_coffer_cdc_backup()  { _coffer_backup --image-chunking cdc; }
peer_coffer_cdc_restore() { peer_coffer_restore; }
