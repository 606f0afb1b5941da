#!/usr/bin/env bash
# Parser cost in instructions per input byte, counted by valgrind's callgrind:
# the same figure for the same binary and input whatever else the machine is
# doing, so a change can be compared before and after on a shared, noisy
# machine where `cargo bench --bench parse` swings by 20%. It runs
# `thoth-ingest parse --preset P` (redaction on, output written to /dev/null)
# on each preset's fixture repeated to about 4 MiB with ids made unique per
# repetition, as benches/parse.rs does; the output costs are included.
#
# usage: benches/parse-instructions.sh [BINARY...]
#   default: target/release/thoth-ingest (built first). Give two binaries
#   (say, one built in a worktree of the commit before) to see both side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "parse-instructions.sh needs valgrind (apt-get install valgrind)" >&2; exit 2; }
if [ $# -eq 0 ]; then
  cargo build --release -q --bin thoth-ingest
  set -- target/release/thoth-ingest
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

n=0
for bin in "$@"; do n=$((n + 1)); echo "#$n: $bin"; done
printf '%-20s' preset
n=0
for bin in "$@"; do n=$((n + 1)); printf ' %24s' "#$n"; done
echo
for preset in claude-code codex mcp-claude-desktop otel-genai; do
  log=$(find "tests/fixtures/$preset" -type f ! -name golden.jsonl ! -name explain.txt | sort | head -1)
  python3 - "$log" "$work/$preset.in" <<'PY'
import sys
base = open(sys.argv[1]).read()
parts, size, rep = [], 0, 0
while size < 4 << 20:
    tag = f"r{rep}x"
    text = base.replace("msg_", "msg_" + tag).replace("toolu_", "toolu_" + tag).replace("call_", "call_" + tag)
    parts.append(text)
    size += len(text)
    rep += 1
open(sys.argv[2], "w").write("".join(parts))
PY
  bytes=$(wc -c < "$work/$preset.in")
  printf '%-20s' "$preset"
  for bin in "$@"; do
    ir=$(valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bin" parse --preset "$preset" "$work/$preset.in" 2>&1 >/dev/null \
      | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    printf ' %16s Ir/byte' "$(python3 -c "print(f'{$ir / $bytes:.1f}')")"
  done
  echo
done
