# Coffer with other chunk sizes, as peers of shared/bench/run-peers.sh (README, "Chunk sizes").
# Source it after peers-coffer.sh (PEER_FILES="bench/peers-coffer.sh bench/peers-chunking.sh").
# Each peer inits its repository with one set of chunker parameters (min / avg / max):
#   coffer-c1m    256 KiB / 1 MiB / 4 MiB      (the default before 2026-12)
#   coffer-c512k  128 KiB / 512 KiB / 2 MiB    (the default since)
#   coffer-c256k  64 KiB / 256 KiB / 1 MiB
#   coffer-c128k  32 KiB / 128 KiB / 512 KiB
#   coffer-c64k   16 KiB / 64 KiB / 256 KiB
# and backs up with the default --file-chunking auto (page-structured files in fixed blocks);
# the same name with -cdc appended backs up with --file-chunking cdc (every file
# content-defined, as before 2026-12). In MODE=image both are plain --image (content-defined with
# the repository's parameters). For example:
#   PEER_FILES="bench/peers-coffer.sh bench/peers-chunking.sh" PEERS="restic coffer-c1m-cdc coffer-c512k" \
#     NODE=node_modules/.bin/node ../shared/bench/run-peers.sh
for _spec in c1m:262144:1048576:4194304 c512k:131072:524288:2097152 c256k:65536:262144:1048576 \
             c128k:32768:131072:524288 c64k:16384:65536:262144; do
  IFS=: read -r _name _min _avg _max <<<"$_spec"
  for _suffix in '' _cdc; do
    _args=''; [[ $_suffix == _cdc ]] && _args='--file-chunking cdc'
    eval "peer_coffer_${_name}${_suffix}_init() { _coffer repo init --repo \"\$REPO\" --chunk-min $_min --chunk-avg $_avg --chunk-max $_max >/dev/null; }"
    eval "peer_coffer_${_name}${_suffix}_backup() { if [[ \$MODE == image ]]; then _coffer_backup; else _coffer_backup $_args; fi; }"
    eval "peer_coffer_${_name}${_suffix}_restore() { peer_coffer_restore; }"
  done
done
unset _spec _name _min _avg _max _suffix _args
