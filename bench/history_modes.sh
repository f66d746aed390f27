#!/usr/bin/env bash
# Issue 18's report: what the reuse of the last partial block and the exact chat history cost or
# save, in the same run, modes alternating run by run:
#   before          (with --before PREFIXD) a build of a commit before either change
#   decode-history  this build with --decode-history: partial-block reuse, replies' K/V as
#                   decode wrote it
#   exact           this build's default: partial-block reuse, and a finished reply's K/V
#                   recomputed by prefill in the background and published instead
# Workloads (P = --system-tokens, 1,500 by default; RAM cache only):
#   chat     6 system prompts (warmed), 6 conversations of 4 turns (40 user tokens, 16 reply
#            tokens), one client: TTFT p50 per mode
#   think    the same chat on new conversations, the client pausing --think-ms (500 by default)
#            after each reply as a user reads: the background recompute runs in the pause
#   decode1  the same chat with 64-token replies, one client: decode tokens/s per request
#            (batch 1), with the background recompute of the previous reply competing
#   decode8  8 clients, 8 conversations, 64-token replies: decode tokens/s per request while
#            up to 8 decode together
#
# usage: bench/history_modes.sh [--runs N] [--before PREFIXD] [--build DIR] [--model PATH]
#                               [--system-tokens P] [--think-ms T] [--out DIR]
#   --before: the prefixd binary of an older build, e.g. git worktree add /tmp/b0 ef0f010^ &&
#   cmake -S /tmp/b0 -B /tmp/b0/build -DCMAKE_BUILD_TYPE=Release && cmake --build /tmp/b0/build
#   --target prefixd (then /tmp/b0/build/daemon/cli/prefixd)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
before=""
runs=5
P=1500
think=500
model=""
out=""
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --before) before=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --system-tokens) P=$2; shift 2 ;;
    --think-ms) think=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "history_modes.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case $runs in ''|*[!0-9]*|0) echo "history_modes.sh: --runs '$runs': expected a number >= 1" >&2; exit 2 ;; esac
prefixd=$build/daemon/prefixd
prefixctl=$build/clients/prefixctl
for b in "$prefixd" "$prefixctl" ${before:+"$before"}; do
  [ -x "$b" ] || { echo "history_modes.sh: $b is not built" >&2; exit 2; }
done
me=history_modes.sh
. "$root/bench/lib.sh"
bench_default_model
bench_setup prefixd-history
csv=$work/history.csv
# The engine's own figures of a mode's run: time in prefill, decode and the history recompute.
engine_stats() { # label
  "$prefixctl" --socket "$sock" stats --json | python3 -c '
import json, sys
j = json.load(sys.stdin)
print(",".join([sys.argv[1]] + [str(j.get(k, 0)) for k in
      ("prefill_ms", "decode_ms", "history_ms", "history_tokens", "history_superseded")]))' "$1" \
    >>"$work/engine.csv"
}
workloads() { # label, seed
  local common=(--seed "$2" --system-tokens "$P" --user-tokens 40 --csv "$csv" --append --quiet)
  "$prefixctl" --socket "$sock" bench --label "$1/chat" "${common[@]}" --warm --workload chat \
    --clients 1 --systems 6 --conversations 6 --turns 4 --reply-tokens 16
  "$prefixctl" --socket "$sock" bench --label "$1/think" "${common[@]}" --seed $(($2 + 50)) \
    --prefix-seed "$2" --workload chat --clients 1 --systems 6 --conversations 6 --turns 4 \
    --reply-tokens 16 --think-ms "$think"
  "$prefixctl" --socket "$sock" bench --label "$1/decode1" "${common[@]}" --seed $(($2 + 100)) \
    --warm --workload chat --clients 1 --systems 2 --conversations 2 --turns 3 --reply-tokens 64
  "$prefixctl" --socket "$sock" bench --label "$1/decode8" "${common[@]}" --seed $(($2 + 200)) \
    --warm --workload chat --clients 8 --systems 2 --conversations 8 --turns 2 --reply-tokens 64
}
echo "== model $model; $runs run(s); P $P; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq 1 "$runs"); do
  if [ -n "$before" ]; then
    echo "== run $r/$runs: before" >&2
    bench_start "$before"; workloads before "$r"; engine_stats before; bench_stop
  fi
  echo "== run $r/$runs: decode-history" >&2
  bench_start "$prefixd" --decode-history; workloads decode-history "$r"; engine_stats decode-history; bench_stop
  echo "== run $r/$runs: exact" >&2
  bench_start "$prefixd"; workloads exact "$r"; engine_stats exact; bench_stop
done
echo "== load at the end $(cut -d' ' -f1-3 /proc/loadavg)" >&2
[ -n "$out" ] && { mkdir -p "$out"; cp "$csv" "$out/history.csv"; cp "$work/engine.csv" "$out/"; }
python3 - "$csv" "$work/engine.csv" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
modes = []
for r in rows:
    m = r["label"].split("/")[0]
    if m not in modes:
        modes.append(m)
def med_by_run(label, f, keep=lambda r: True):
    runs = {}
    for r in rows:
        if r["label"] == label and keep(r):
            runs.setdefault(r["run"] + r["seed"], []).append(f(r))
    per = [statistics.median(v) for v in runs.values() if v]
    return statistics.median(per) if per else float("nan"), len(per)
def rate(r):
    n = int(r["new_tokens"]); d = float(r["total_ms"]) - float(r["ttft_ms"])
    return (n - 1) * 1000.0 / d if n > 1 and d > 0 else float("nan")
print("| mode | chat TTFT p50 (ms) | turns 2-4 TTFT p50 (ms) | with think time: turns 2-4 TTFT p50 (ms) | decode b1 tok/s | decode b8 tok/s per request |")
print("|---|---|---|---|---|---|")
for m in modes:
    t, n = med_by_run(m + "/chat", lambda r: float(r["ttft_ms"]))
    t2, _ = med_by_run(m + "/chat", lambda r: float(r["ttft_ms"]), lambda r: int(r["turn"]) > 1)
    tk, _ = med_by_run(m + "/think", lambda r: float(r["ttft_ms"]), lambda r: int(r["turn"]) > 1)
    d1, _ = med_by_run(m + "/decode1", rate)
    d8, _ = med_by_run(m + "/decode8", rate)
    print(f"| {m} | {t:.1f} | {t2:.1f} | {tk:.1f} | {d1:.1f} | {d8:.1f} |")
print(f"(medians over runs of each run's median; {n} runs)")
print()
print("| mode | engine prefill ms | decode ms | history recompute ms | positions recomputed | recomputes superseded |")
print("|---|---|---|---|---|---|")
eng = {}
for line in open(sys.argv[2]):
    f = line.strip().split(",")
    eng.setdefault(f[0], []).append([float(x) for x in f[1:]])
for m, v in eng.items():
    med = [statistics.median(col) for col in zip(*v)]
    print(f"| {m} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | {med[3]:.0f} | {med[4]:.0f} |")
print("(engine figures: medians over runs of each daemon's totals for all three workloads)")
EOF
