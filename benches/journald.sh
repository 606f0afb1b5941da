#!/usr/bin/env bash
# The journald source against journalctl alone: N entries (default 200,000)
# in a journal directory, read by `journalctl -o json --all --directory=D >
# /dev/null`, and by the daemon (every entry one event, through a rules
# parser) from an empty state to the last event counted by the local
# receiver. Prints entries/s of each, the ratio, and the CPU seconds of the
# daemon and of its journalctl child. Runs alternate; medians at the end.
#
# usage: benches/journald.sh [ENTRIES=200000] [RUNS=3]
# Needs systemd-journal-remote to write the journal (apt-get install
# systemd-journal-remote); E2E_BIN=path runs that build of the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
entries=${1:-200000}
runs=${2:-3}
[ -n "${E2E_BIN:-}" ] || cargo build --release -q
bin=${E2E_BIN:-target/release/thoth-ingest}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

tests/fixtures/journal/make.sh bench "$work/journal" "$entries" > /dev/null
echo "journal: $entries entries, $(du -sh "$work/journal" | cut -f1)"

cpu_of() { # utime+stime of a pid, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

for run in $(seq 1 "$runs"); do
  start=$(date +%s.%N)
  journalctl -o json --all --no-pager --directory="$work/journal" > /dev/null
  end=$(date +%s.%N)
  python3 -c "import sys; n,s,e=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]); print(f'run $run journalctl: {n/(e-s):,.0f} entries/s, {e-s:.2f} s')" \
    "$entries" "$start" "$end" | tee -a "$work/runs.txt"

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
type = "journald"
directory = "$work/journal"
parser = "every-entry"

[parsers.every-entry]
format = "regex"
pattern = '(?s)^(?P<all>.*)\$'

[[parsers.every-entry.rules]]
name = "all"
event_type = "TOOL_CALL_POST"
content = "\${all}"
TOML
  start=$(date +%s.%N)
  THOTH_API_KEY=thoth_test_bench RUST_LOG=warn $bin --config "$work/config.toml" run &
  daemon_pid=$!
  while :; do
    accepted=$(curl -s "http://$addr/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["unique_event_ids"])')
    [ "$accepted" -ge "$entries" ] && break
    sleep 0.05
  done
  end=$(date +%s.%N)
  child=$(pgrep -P "$daemon_pid" journalctl || true)
  daemon_cpu=$(cpu_of "$daemon_pid")
  child_cpu=$([ -n "$child" ] && cpu_of "$child" || echo 0)
  kill -TERM "$daemon_pid"; wait "$daemon_pid" || true
  kill "$receiver_pid"; wait "$receiver_pid" 2>/dev/null || true
  python3 -c "import sys; n,s,e=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]); print(f'run $run daemon: {n/(e-s):,.0f} entries/s, {e-s:.2f} s, daemon CPU {sys.argv[4]} s, its journalctl CPU {sys.argv[5]} s')" \
    "$entries" "$start" "$end" "$daemon_cpu" "$child_cpu" | tee -a "$work/runs.txt"
done
python3 - "$work/runs.txt" <<'PY'
import re, statistics, sys
alone, daemon, cpu = [], [], []
for line in open(sys.argv[1]):
    rate = float(re.search(r"([\d,]+) entries/s", line).group(1).replace(",", ""))
    if " journalctl:" in line:
        alone.append(rate)
    else:
        daemon.append(rate)
        cpu.append(float(re.search(r"daemon CPU ([\d.]+)", line).group(1)))
a, d = statistics.median(alone), statistics.median(daemon)
print(f"median of {len(daemon)}: journalctl alone {a:,.0f} entries/s, daemon {d:,.0f} entries/s "
      f"(ratio {d / a:.2f}), daemon CPU {statistics.median(cpu):.2f} s")
PY
