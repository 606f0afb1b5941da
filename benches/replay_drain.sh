#!/usr/bin/env bash
# Replay drain benchmark: the time `thoth-ingest replay` takes to deliver N
# events (default 1,000,000, in 3 plain and 2 gzip files) with
# batch_max_events = 1000 under a budget of 1,000 requests per window,
# against the physical floor: N / 1000 requests at 1,000 per window.
#
# The real budget is 1,000 requests a minute (floor for 1M events: 60 s).
# Here the same 1,000 requests take WINDOW seconds (default 12, five times
# faster), cut into SLICES fixed windows of 1000/SLICES requests each
# (default 4 windows of 250 requests in 3 s): a rate, as the real minute's
# budget is over a backlog of many minutes, so the run is bound by the
# budget, not by a burst into one window. The result is the ratio
# to the floor, which scales to the one-minute window. The local receiver
# enforces the same windows, so a request over them is answered 429 and
# counted.
#
# usage: benches/replay_drain.sh [LINES=1000000] [WINDOW=12] [RUNS=3] [SLICES=4]
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
window=${2:-12}
runs=${3:-3}
slices=${4:-4}
[ -n "${E2E_BIN:-}" ] || cargo build --release -q
bin=${E2E_BIN:-target/release/thoth-ingest}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

python3 benches/gen_lines.py "$work/logs" "$lines" 5
gzip "$work/logs/agent-3.jsonl" "$work/logs/agent-4.jsonl"
requests=$(( (lines + 999) / 1000 ))
per_slice=$((1000 / slices))
slice=$(python3 -c "print(f'{$window / $slices:.3f}')")
floor=$(python3 -c "print($requests / 1000 * $window)")
echo "input: $lines lines in 3 plain and 2 gzip files; $requests full requests at $per_slice per ${slice} s; floor ${floor} s"

ratios=()
for run in $(seq 1 "$runs"); do
  rm -rf "$work/state"
  $bin receiver --listen 127.0.0.1:0 --limit "$per_slice" --window "${slice}s" > "$work/receiver.out" 2>/dev/null &
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
budget = { requests = $per_slice, per = "${slice}s" }
batch_max_events = 1000
linger = "200ms"
[[sources]]
name = "bench"
type = "file"
include = ["$work/logs/*.jsonl", "$work/logs/*.jsonl.gz"]
parser = "json"
TOML
  start=$(date +%s.%N)
  THOTH_API_KEY=thoth_test_bench RUST_LOG=warn $bin --config "$work/config.toml" replay --source bench --progress none
  end=$(date +%s.%N)
  stats=$(curl -s "http://$addr/stats")
  kill "$receiver_pid"; wait "$receiver_pid" 2>/dev/null || true
  read -r secs ratio <<<"$(python3 -c "s=$end-$start; print(f'{s:.2f}', f'{s/$floor:.3f}')")"
  ratios+=("$ratio")
  echo "run $run: ${secs} s, ratio to the floor ${ratio}; receiver: $stats"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median ratio to the floor: $median (for 1M events at 1,000 requests/min: $(python3 -c "print(f'{$median*60:.1f}')") s against 60 s)"
