#!/usr/bin/env bash
# Issue 15's chat table: the chat workload with six system prompts and RAM (--cache-mem) for two
# of them in F32 K/V, run with each --kv-type on the same budget: how many system prompts stay in
# RAM (the hit ratio) and the TTFT that follows. Types alternate run by run.
#
# usage: bench/kv_chat.sh [--runs N] [--system-tokens P] [--build DIR] [--model PATH]
#   defaults: 3 runs, P 1000, build/, the stories110M-shaped synthetic model (written if missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
runs=3
P=1000
model=""
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --system-tokens) P=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "kv_chat.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case $runs in ''|*[!0-9]*|0) echo "kv_chat.sh: --runs '$runs': expected a number >= 1" >&2; exit 2 ;; esac
prefixd=$build/daemon/prefixd
prefixctl=$build/clients/prefixctl
for b in "$prefixd" "$prefixctl"; do
  [ -x "$b" ] || { echo "kv_chat.sh: $b is not built" >&2; exit 2; }
done
if [ -z "$model" ]; then
  dir=${XDG_CACHE_HOME:-$HOME/.cache}/prefixd/models
  model=$dir/synth-stories110M.bin
  if [ ! -f "$model" ] || [ ! -f "$model.tok" ]; then
    mkdir -p "$dir"
    "$prefixd" synth --shape 768,2048,12,12,12,32000,2048 -o "$model" >&2
  fi
fi
work=$(mktemp -d /tmp/prefixd-kvchat-XXXXXX)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
sock=$work/p.sock
csv=$work/kv.csv
start() {
  "$prefixd" serve --model "$model" --socket "$sock" --disk-dir none "$@" 2>>"$work/daemon.log" &
  pid=$!
  for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || { echo "kv_chat.sh: prefixd serve $* did not start" >&2; tail -5 "$work/daemon.log" >&2; exit 1; }
    "$prefixctl" --socket "$sock" stats >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "kv_chat.sh: the daemon did not answer within 60 s" >&2; exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }
# F32 K/V bytes per token of this model, from the daemon's own log line.
start --kv-type f32
kv=$(sed -n 's/.* \([0-9][0-9]*\) K\/V bytes per token.*/\1/p' "$work/daemon.log" | head -1)
stop
[ -n "$kv" ] || { echo "kv_chat.sh: no 'K/V bytes per token' in the daemon's log" >&2; exit 1; }
budget=$(( 2 * ( (P + 1 + 15) / 16 + 4 ) * 16 * kv ))
echo "== model $model; P $P; --cache-mem $budget bytes (two system prompts in F32); $runs run(s);" \
     "load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq 1 "$runs"); do
  for t in f32 f16 q8_0; do
    echo "== run $r/$runs: --kv-type $t" >&2
    start --kv-type "$t" --cache-mem "$budget"
    "$prefixctl" --socket "$sock" bench --label "$t" --seed "$r" --csv "$csv" --append --quiet \
      --workload chat --warm --clients 1 --systems 6 --conversations 6 --turns 4 \
      --system-tokens "$P" --user-tokens 40 --reply-tokens 16
    stop
  done
done
echo "== load at the end $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$csv" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print("| --kv-type | TTFT p50 (ms) | TTFT p95 (ms) | prompt tokens from the cache |")
print("|---|---|---|---|")
for t in ("f32", "f16", "q8_0"):
    runs = {}
    for r in rows:
        if r["label"] == t:
            runs.setdefault(r["seed"], []).append(r)
    p50 = statistics.median(statistics.median(float(x["ttft_ms"]) for x in v) for v in runs.values())
    p95 = statistics.median(sorted(float(x["ttft_ms"]) for x in v)[int(0.95 * (len(v) - 1))]
                            for v in runs.values())
    hit = sum(int(x["cached_tokens"]) for v in runs.values() for x in v) / \
        sum(int(x["prompt_tokens"]) for v in runs.values() for x in v)
    print(f"| {t} | {p50:.1f} | {p95:.1f} | {100 * hit:.1f}% |")
print(f"(medians over {len(runs)} runs of each run's statistic)")
EOF
