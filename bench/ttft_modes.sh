#!/usr/bin/env bash
# The published TTFT numbers: one build, one model, the same `prefixctl bench` workloads against
# `prefixd serve` in each mode, on a temporary socket:
#   no-cache  --no-cache (sharing off)
#   ram       the RAM cache alone (default --cache-mem, --disk-dir none)
#   disk      the disk tier with a RAM budget for 4 of the chat's 6 system prompts, so the
#             working set lives on disk (--cache-mem small, --disk-dir DIR --disk-max SIZE)
#   restart   the disk daemon stopped (it flushes its RAM blocks to disk) and started again on
#             the same --disk-dir: RAM empty, disk warm
# The modes alternate run by run (run r: every mode with seed r), so a slow minute on this shared
# machine does not fall on one mode only. Then bench/plots.sh makes the table and the plots.
#
# Workloads (P = --system-tokens, 1,500 by default):
#   unique   6 prompts of P + 40 tokens sharing nothing, 1 client (the control), run first
#   chat     6 system prompts of P tokens, 6 conversations of 4 turns (40 user tokens, 16 reply
#            tokens each), one client taking them in turn, so the system prompts interleave
#            (single-stream TTFT); system prompts warmed first (not timed).
#            After the restart: new conversations (new user turns) on the same system prompts,
#            not warmed, so they must come from disk
#   fewshot  one P-token preamble (warmed), 8 questions of 40 tokens, 2 concurrent clients
#   sweep    ram mode only: prompt lengths 128..2000, each uncached then with a cached prefix
#
# usage: bench/ttft_modes.sh [--model PATH [--tokenizer PATH]] [--runs N] [--build DIR]
#                            [--out DIR] [--system-tokens P] [--quick]
#   defaults: the demo's stories110M-shaped synthetic model (written if missing), 5 runs,
#   build/ (built if missing), bench/results/. --quick: 1 run, P 200, shorter sweep (for a
#   small model such as stories260K; results go to a temporary folder unless --out is given).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
out=""
runs=5
model=""
tok=""
P=1500
turns=4
lengths=128,256,512,768,1024,1280,1536,1792,2000
quick=0
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;;
    --tokenizer) tok=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --system-tokens) P=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "ttft_modes.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ $quick = 1 ]; then
  runs=1; P=200; turns=3; lengths=64,128,256,400
  [ -n "$out" ] || out=$(mktemp -d /tmp/prefixd-ttft-XXXXXX)
fi
[ -n "$out" ] || out=$root/bench/results
case $runs in ''|*[!0-9]*|0) echo "ttft_modes.sh: --runs '$runs': expected a number >= 1" >&2; exit 2 ;; esac

prefixd=$build/daemon/prefixd
prefixctl=$build/clients/prefixctl
if [ ! -x "$prefixd" ] || [ ! -x "$prefixctl" ]; then
  echo "== building prefixd and prefixctl in $build" >&2
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j"$(nproc)" --target prefixd prefixctl >/dev/null
fi
if [ -z "$model" ]; then
  dir=${XDG_CACHE_HOME:-$HOME/.cache}/prefixd/models
  model=$dir/synth-stories110M.bin
  if [ ! -f "$model" ] || [ ! -f "$model.tok" ]; then
    mkdir -p "$dir"
    echo "== writing a stories110M-shaped model with random weights: $model" >&2
    "$prefixd" synth --shape 768,2048,12,12,12,32000,2048 -o "$model" >&2
  fi
fi
tokopt=()
[ -n "$tok" ] && tokopt=(--tokenizer "$tok")

work=$(mktemp -d /tmp/prefixd-modes-XXXXXX)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
csv=$work/ttft.csv
sock=$work/p.sock

# Starts the daemon with the given options; fails (with its log) if it does not come up.
start() {
  "$prefixd" serve --model "$model" "${tokopt[@]}" --socket "$sock" --log-level info "$@" \
    2>>"$work/daemon.log" &
  pid=$!
  for _ in $(seq 1 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" || true; pid=""
      echo "ttft_modes.sh: prefixd serve $* did not start:" >&2; tail -5 "$work/daemon.log" >&2
      return 1
    fi
    "$prefixctl" --socket "$sock" stats >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "ttft_modes.sh: prefixd serve did not answer within 60 s" >&2
  return 1
}
stop() {
  kill -TERM "$pid"; wait "$pid" || true; pid=""
}
bench() { # label, then options
  local label=$1; shift
  "$prefixctl" --socket "$sock" bench --label "$label" --csv "$csv" --append --quiet "$@"
}
# The workloads every mode runs. $1 label, $2 seed of the shared prefixes (system prompts,
# preamble), $3 seed of everything else (user turns, questions, the unique prompts), $4 "--warm"
# or "".
workloads() {
  local label=$1 pseed=$2 seed=$3 warm=${4:-}
  local common=(--seed "$seed" --prefix-seed "$pseed" --system-tokens "$P" --user-tokens 40
                --reply-tokens 16)
  # The control first, on a daemon that has evicted nothing yet.
  bench "$label" "${common[@]}" --workload unique --clients 1 --requests 6
  bench "$label" "${common[@]}" $warm --workload chat --clients 1 --systems 6 \
    --conversations 6 --turns "$turns"
  bench "$label" "${common[@]}" $warm --workload fewshot --clients 2 --requests 8
}

disk=1
if "$prefixd" serve --help 2>&1 | grep -q "not in this build"; then
  disk=0
  echo "== skipping the disk and restart modes: this prefixd has no disk tier yet" \
       "('prefixd serve --help' says --disk-dir is not in this build)" >&2
fi

echo "== model $model; $runs run(s); system prompts of $P tokens; work folder $work" >&2
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || cat "$root/COMMIT" 2>/dev/null || echo unknown)
[ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit+dirty"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
date_start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
budget=""
for r in $(seq 1 "$runs"); do
  echo "== run $r/$runs: no-cache" >&2
  start --no-cache
  workloads no-cache "$r" "$r"
  stop

  echo "== run $r/$runs: ram" >&2
  start --disk-dir none
  if [ -z "$budget" ]; then
    # RAM for 4 system prompts (whole blocks of 16 tokens) and not more.
    kv=$(sed -n 's/.* \([0-9][0-9]*\) K\/V bytes per token.*/\1/p' "$work/daemon.log" | head -1)
    budget=$(( 4 * ( (P + 1 + 15) / 16 ) * 16 * kv ))
  fi
  workloads ram "$r" "$r" --warm
  bench ram --seed "$r" --workload sweep --lengths "$lengths" --user-tokens 40 --reply-tokens 16
  stop

  if [ $disk = 1 ]; then
    echo "== run $r/$runs: disk (--cache-mem $budget bytes: 4 system prompts)" >&2
    rm -rf "$work/disk"; mkdir -p "$work/disk"
    start --cache-mem "$budget" --disk-dir "$work/disk" --disk-max 8G
    workloads disk "$r" "$r" --warm
    stop
    # New conversations and questions on the system prompts and preamble cached before.
    echo "== run $r/$runs: restart (the same --disk-dir, RAM empty)" >&2
    start --cache-mem "$budget" --disk-dir "$work/disk" --disk-max 8G
    workloads restart "$r" "$((r + 1000))"
    stop
  fi
done

mkdir -p "$out"
cp "$csv" "$out/ttft.csv"
# What was measured, and how busy the machine was (the load average counts other users too).
cat >"$out/meta.json" <<EOF
{"commit": "$commit", "started": "$date_start", "model": "$(basename "$model")",
 "runs": $runs, "system_tokens": $P, "cpus": $(nproc),
 "load_average_start": "$load_start", "load_average_end": "$(cut -d' ' -f1-3 /proc/loadavg)"}
EOF
echo "== wrote $out/ttft.csv ($(($(wc -l <"$csv") - 1)) requests)" >&2
"$root/bench/plots.sh" "$out"
