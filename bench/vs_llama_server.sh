#!/usr/bin/env bash
# bench/vs_llama_server.sh — prefixd and llama.cpp's llama-server side by side (issue 14): the
# same `prefixctl bench` workloads, as streaming /v1/completions of the same token ids, against
# prefixd over its socket, prefixd over HTTP (`serve --http`) and `llama-server`, all three
# serving one file: a stories110M-shaped F32 GGUF with random weights (dim 768, 12 layers,
# vocab 32000, context 2048), written once by `prefixd synth --format gguf` to /tmp.
#
# Workloads (1 client, greedy):
#   prefix  the issue's: a 1,541-token prompt (BOS, a 1,500-token preamble, 40 tokens), then
#           prompts of the same preamble and 40 new tokens (`--workload fewshot`, --requests
#           questions): the first is cold, the others find 1,501 tokens cached and compute 40
#   chat    a 512-token system prompt, 4 turns of 40 user and 16 reply tokens (the socket with
#           --synthetic-replies, so all three see the very same prompts): turn 1 cold
# Run r uses seed r in every mode, so the modes see the same prompts, and the order of the
# modes alternates run by run, so a slow minute of a shared machine does not fall on one mode
# only. The two servers run side by side the whole time (one idle while the other is measured);
# prefixd's HTTP answers live in namespace http/, its socket's in uid:N/, so the two prefixd
# modes never share blocks. llama-server runs with its defaults for prompt caching
# (`cache_prompt` on, one slot, no --cache-reuse), -c 2048 (the model's context), -t 2.
#
# Every figure is the median over runs of one run's p50. "In the server" is prefixd's own TTFT
# from the request's arrival (`prefixd.ttft_ms`) and llama-server's `timings.prompt_ms` (its
# prompt processing; it reports no TTFT of its own). Prints one markdown table and the load
# average; the CSV of every request stays in --out.
#
#   bench/vs_llama_server.sh --llama-server PATH [--runs 5] [--threads 2] [--build DIR]
#                            [--model FILE.gguf] [--requests 6] [--out DIR]
#   (--llama-server defaults to $LLAMA_SERVER, else llama-server on $PATH)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
runs=5
threads=2
requests=6
model=/tmp/prefixd-vs-llama-110M-f32.gguf
llama=${LLAMA_SERVER:-$(command -v llama-server || true)}
out=""
while [ $# -gt 0 ]; do
  case $1 in
    --llama-server) llama=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "vs_llama_server.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for v in runs threads requests; do
  case ${!v} in ''|*[!0-9]*|0) echo "vs_llama_server.sh: --$v '${!v}': expected a count >= 1" >&2; exit 2 ;; esac
done
[ "$requests" -ge 2 ] || { echo "vs_llama_server.sh: --requests $requests: need 2 or more (1 cold, then cached)" >&2; exit 2; }
if [ -z "$llama" ]; then
  echo "vs_llama_server.sh: llama-server is missing: no --llama-server PATH, no \$LLAMA_SERVER," \
       "none on \$PATH. Build llama.cpp (CPU: cmake -B build -DLLAMA_CURL=OFF" \
       "-DCMAKE_BUILD_TYPE=Release && cmake --build build --target llama-server) and pass" \
       "--llama-server llama.cpp/build/bin/llama-server" >&2
  exit 2
fi
if [ ! -x "$llama" ] || [ -d "$llama" ]; then
  echo "vs_llama_server.sh: --llama-server '$llama': missing or not an executable file" >&2
  exit 2
fi
prefixd=$build/daemon/prefixd
prefixctl=$build/clients/prefixctl
for b in "$prefixd" "$prefixctl"; do
  [ -x "$b" ] || { echo "vs_llama_server.sh: no $b (build first, or --build DIR)" >&2; exit 2; }
done
if [ ! -r "$model" ]; then
  echo "writing $model (stories110M shape, F32, random weights)..." >&2
  "$prefixd" synth --shape 768,2048,12,12,12,32000,2048 --format gguf --type f32 -o "$model" >&2
fi

work=$(mktemp -d /tmp/prefixd-vs-llama-XXXXXX)
[ -n "$out" ] || out=$work
mkdir -p "$out"
ppid_=""
lpid=""
cleanup() {
  for p in $ppid_ $lpid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ "$out" = "$work" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # so that the EXIT trap stops both servers

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
pport=$(free_port)
lport=$(free_port)
while [ "$lport" = "$pport" ]; do lport=$(free_port); done
sock=$work/p.sock
csv=$out/vs_llama.csv
rm -f "$csv"

"$prefixd" serve --model "$model" --socket "$sock" --http "127.0.0.1:$pport" --threads "$threads" \
  --disk-dir none --log-level warn 2>"$work/prefixd.log" &
ppid_=$!
"$llama" -m "$model" -t "$threads" -c 2048 --host 127.0.0.1 --port "$lport" \
  >"$work/llama-server.log" 2>&1 &
lpid=$!
# Waits until URL answers 200 (both servers answer /health), or fails with the server's log.
wait_up() { # name pid url log
  for _ in $(seq 1 1200); do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "vs_llama_server.sh: $1 exited at start:" >&2; tail -5 "$4" >&2; exit 1
    fi
    curl -sf -o /dev/null "$3" && return 0
    sleep 0.1
  done
  echo "vs_llama_server.sh: $1 did not answer $3 within 120 s:" >&2; tail -5 "$4" >&2; exit 1
}
wait_up prefixd "$ppid_" "http://127.0.0.1:$pport/health" "$work/prefixd.log"
wait_up llama-server "$lpid" "http://127.0.0.1:$lport/health" "$work/llama-server.log"

prefix=(--workload fewshot --clients 1 --system-tokens 1500 --user-tokens 40 --reply-tokens 4
        --requests "$requests")
chat=(--workload chat --clients 1 --systems 1 --system-tokens 512 --turns 4 --user-tokens 40
      --reply-tokens 16)
one() { # mode seed
  local mode=$1 seed=$2 to=()
  case $mode in
    socket) to=(--socket "$sock" bench) ;;
    http) to=(bench --http "http://127.0.0.1:$pport") ;;
    llama) to=(bench --http "http://127.0.0.1:$lport") ;;
  esac
  local common=(--label "$mode" --seed "$seed" --csv "$csv" --append --quiet)
  "$prefixctl" "${to[@]}" "${common[@]}" "${prefix[@]}"
  if [ "$mode" = socket ]; then
    "$prefixctl" "${to[@]}" "${common[@]}" "${chat[@]}" --synthetic-replies
  else
    "$prefixctl" "${to[@]}" "${common[@]}" "${chat[@]}"
  fi
}

lversion=$("$llama" --version 2>&1 | grep -m1 'version' || true)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$runs"); do
  if [ $((r % 2)) = 1 ]; then order="socket http llama"; else order="llama http socket"; fi
  echo "run $r of $runs: $order" >&2
  for mode in $order; do one "$mode" "$r"; done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "prefixd ($(git -C "$root" describe --always --dirty 2>/dev/null || echo ?)) and" \
     "llama-server (${lversion:-version unknown}) on" \
     "$(basename "$model"), $threads threads, $(nproc) CPUs; medians over $runs runs of each" \
     "run's p50; load average before: $load_before, after: $load_after"
echo
python3 - "$csv" "$requests" <<'EOF'
import csv, statistics, sys
from collections import defaultdict

rows = list(csv.DictReader(open(sys.argv[1])))
groups = defaultdict(lambda: defaultdict(list))  # (mode, what) -> seed -> values


def add(mode, what, seed, v):
    if v >= 0:
        groups[(mode, what)][seed].append(v)


for r in rows:
    m, s, wl = r["label"], r["seed"], r["workload"]
    ttft, srv, pre = float(r["ttft_ms"]), float(r["server_ttft_ms"]), float(r["prefill_ms"])
    if wl == "fewshot":
        part = "cold" if r["conversation"] == "0" else "cached"
        add(m, "prefix-" + part, s, ttft)
        add(m, "prefix-" + part + "-server", s, srv if srv >= 0 else pre)
        if part == "cached":
            add(m, "prefix-cached-tokens", s, float(r["cached_tokens"]))
    else:
        add(m, "chat-all", s, ttft)
        add(m, "chat-t1" if r["turn"] == "1" else "chat-later", s, ttft)


def med(mode, what):
    runs = groups.get((mode, what))
    if not runs:
        return None
    return statistics.median(statistics.median(v) for v in runs.values())


def f(v):
    return "-" if v is None else ("{:,.1f}" if v < 100 else "{:,.0f}").format(v)


names = {"socket": "prefixd, socket", "http": "prefixd, HTTP", "llama": "llama-server, HTTP"}
print("| server | 1,541 tokens then +40: cached TTFT | in the server | cached tokens | cold TTFT |"
      " chat, all turns | chat turn 1 (cold) | chat turns 2-4 |")
print("|---|---|---|---|---|---|---|---|")
for m in ("socket", "http", "llama"):
    print("| %s | %s ms | %s ms | %s | %s ms | %s ms | %s ms | %s ms |" % (
        names[m], f(med(m, "prefix-cached")), f(med(m, "prefix-cached-server")),
        f(med(m, "prefix-cached-tokens")), f(med(m, "prefix-cold")), f(med(m, "chat-all")),
        f(med(m, "chat-t1")), f(med(m, "chat-later"))))
h, l = med("http", "prefix-cached"), med("llama", "prefix-cached")
hc, lc = med("http", "prefix-cold"), med("llama", "prefix-cold")
if h and l and hc and lc:
    print()
    print("llama-server / prefixd over HTTP: cached TTFT %.1fx, cold TTFT %.1fx; prefixd cached "
          "TTFT over HTTP %.1f ms (target <= 80 ms on a quiet machine)" % (l / h, lc / hc, h))
EOF
echo
echo "(every request: $csv; in the server: prefixd's own TTFT, llama-server's timings.prompt_ms)"
