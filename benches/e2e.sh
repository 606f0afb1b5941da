#!/usr/bin/env bash
# End-to-end benchmark: N JSON lines (~350 bytes) in F files, from an empty
# state to the last event counted by the local receiver, with the rate limit
# out of the way. Prints events/s, the daemon's CPU seconds and peak RSS.
#
# usage: benches/e2e.sh [LINES=1000000] [FILES=1] [RUNS=3]
#
# E2E_BIN=path runs that binary instead of building this tree: a build of
# the commit before a change, for a before-and-after comparison.
#
# E2E_CALLGRIND=1 runs the daemon under valgrind's callgrind and also prints
# the instructions it executed: a figure that does not move with the load of
# a shared machine (wall time and CPU seconds then mean nothing; use about
# 100000 lines, callgrind is some 50 times slower).
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
files=${2:-1}
runs=${3:-3}
[ -n "${E2E_BIN:-}" ] || cargo build --release -q
bin=${E2E_BIN:-target/release/thoth-ingest}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

python3 benches/gen_lines.py "$work/logs" "$lines" "$files"
bytes=$(cat "$work"/logs/*.jsonl | wc -c)
echo "input: $lines lines in $files file(s), $((bytes / lines)) bytes/line on average"

for run in $(seq 1 "$runs"); do
  rm -rf "$work/state"
  $bin receiver --listen 127.0.0.1:0 --limit 100000000 > "$work/receiver.out" 2>/dev/null &
  receiver_pid=$!
  for _ in $(seq 1 100); do grep -q listening "$work/receiver.out" && break; sleep 0.05; done
  addr=$(sed -n 's/^listening on //p' "$work/receiver.out")
  cat > "$work/config.toml" <<TOML
[api]
base_url = "http://$addr"
tenant_id = "bench"
[state]
dir = "$work/state"
[delivery]
requests_per_minute = 1000000
linger = "100ms"
[[sources]]
name = "bench"
type = "file"
include = ["$work/logs/*.jsonl"]
parser = "json"
TOML
  start=$(date +%s.%N)
  wrap=()
  if [ "${E2E_CALLGRIND:-0}" = 1 ]; then
    command -v valgrind >/dev/null || { echo "E2E_CALLGRIND=1 needs valgrind (apt-get install valgrind)" >&2; exit 2; }
    wrap=(valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" --log-file="$work/valgrind.log")
  fi
  THOTH_API_KEY=thoth_test_bench RUST_LOG=warn /usr/bin/time -v -o "$work/time.txt" \
    "${wrap[@]}" $bin --config "$work/config.toml" run &
  daemon_pid=$!
  while :; do
    accepted=$(curl -s "http://$addr/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["unique_event_ids"])')
    [ "$accepted" -ge "$lines" ] && break
    sleep 0.05
  done
  end=$(date +%s.%N)
  # /usr/bin/time forwards no signal: stop the daemon itself, then wait for time.
  pkill -TERM -P "$daemon_pid" -f "thoth-ingest --config" || true
  wait "$daemon_pid" || true
  kill "$receiver_pid"; wait "$receiver_pid" 2>/dev/null || true
  if [ "${E2E_CALLGRIND:-0}" = 1 ]; then
    echo "run $run: daemon instructions $(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/valgrind.log")"
  fi
  user=$(sed -n 's/.*User time (seconds): //p' "$work/time.txt")
  sys=$(sed -n 's/.*System time (seconds): //p' "$work/time.txt")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.txt")
  python3 - "$lines" "$start" "$end" "$user" "$sys" "$rss" "$run" <<'PY' | tee -a "$work/runs.txt"
import sys
lines, start, end, user, sys_, rss, run = sys.argv[1:]
wall = float(end) - float(start)
cpu = float(user) + float(sys_)
print(f"run {run}: {int(lines)/wall:,.0f} events/s, {wall:.2f} s wall, "
      f"daemon CPU {cpu:.2f} s (user {user}, sys {sys_}), peak RSS {int(rss)/1024:.1f} MiB")
PY
done
python3 - "$work/runs.txt" <<'PY'
import re, statistics, sys
rows = [re.findall(r"([\d,.]+) events/s.*CPU ([\d.]+) s.*RSS ([\d.]+) MiB", l)[0] for l in open(sys.argv[1])]
ev = statistics.median(float(r[0].replace(",", "")) for r in rows)
cpu = statistics.median(float(r[1]) for r in rows)
rss = statistics.median(float(r[2]) for r in rows)
print(f"median of {len(rows)}: {ev:,.0f} events/s, daemon CPU {cpu:.2f} s, peak RSS {rss:.1f} MiB")
PY
