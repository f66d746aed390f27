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
me=kv_chat.sh
. "$root/bench/lib.sh"
bench_default_model
bench_setup prefixd-kvchat
csv=$work/kv.csv
# F32 K/V bytes per token of this model, from the daemon's own log line.
bench_start "$prefixd" --kv-type f32
kv=$(sed -n 's/.* \([0-9][0-9]*\) K\/V bytes per token.*/\1/p' "$work/daemon.log" | head -1)
bench_stop
[ -n "$kv" ] || { echo "kv_chat.sh: no 'K/V bytes per token' in the daemon's log" >&2; exit 1; }
budget=$(( 2 * ( (P + 1 + 15) / 16 + 4 ) * 16 * kv ))
echo "== model $model; P $P; --cache-mem $budget bytes (two system prompts in F32); $runs run(s);" \
     "load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq 1 "$runs"); do
  for t in f32 f16 q8_0; do
    echo "== run $r/$runs: --kv-type $t" >&2
    bench_start "$prefixd" --kv-type "$t" --cache-mem "$budget"
    "$prefixctl" --socket "$sock" bench --label "$t" --seed "$r" --csv "$csv" --append --quiet \
      --workload chat --warm --clients 1 --systems 6 --conversations 6 --turns 4 \
      --system-tokens "$P" --user-tokens 40 --reply-tokens 16
    bench_stop
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
