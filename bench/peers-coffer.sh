# Coffer as a peer of shared/bench/run-peers.sh (sourced through PEER_FILES). The commands see
# REPO, SRC, DEST, N, CACHE and MODE (see run-peers.sh). Images are backed up with --image
# (content-defined chunks, the default); the peer coffer-fixed backs them up with
# --image-chunking fixed (1 MiB blocks), and is the same as coffer in files mode. The peer
# coffer-filecdc backs files up with --file-chunking cdc (page-structured files such as the
# database content-defined too, as before 2026-12).
COFFER_ROOT=${COFFER_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
_coffer() {
  COFFER_PASSWORD=bench COFFER_CACHE_DIR="$CACHE" "$COFFER_ROOT/node_modules/.bin/node" "$COFFER_ROOT/bin/coffer.mjs" "$@"
}
_coffer_backup() {
  if [[ $MODE == image ]]; then cd "$SRC" && _coffer repo backup --repo "$REPO" --host bench --image "$@" ./*.img >/dev/null
  else cd "$SRC" && _coffer repo backup --repo "$REPO" --host bench "$@" . >/dev/null; fi
}
peer_coffer_init()    { _coffer repo init --repo "$REPO" >/dev/null; }
peer_coffer_backup()  { _coffer_backup; }
peer_coffer_restore() { _coffer repo restore latest --repo "$REPO" --host bench --target "$DEST" >/dev/null; }
peer_coffer_fixed_init()    { peer_coffer_init; }
peer_coffer_fixed_backup()  { if [[ $MODE == image ]]; then _coffer_backup --image-chunking fixed; else _coffer_backup; fi; }
peer_coffer_fixed_restore() { peer_coffer_restore; }
peer_coffer_filecdc_init()    { peer_coffer_init; }
peer_coffer_filecdc_backup()  { if [[ $MODE == image ]]; then _coffer_backup; else _coffer_backup --file-chunking cdc; fi; }
peer_coffer_filecdc_restore() { peer_coffer_restore; }
