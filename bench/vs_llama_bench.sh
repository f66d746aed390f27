#!/usr/bin/env bash
# bench/vs_llama_bench.sh — prefixd's forward pass beside llama.cpp's on the same GGUF files
# (issue 12's speed table): for each weight type, a stories110M-shaped GGUF of random weights
# (`prefixd synth --shape stories110M --format gguf --type T`, context 1024, vocabulary included,
# written once to /tmp/prefixd-vs-llama-bench-110M-T.gguf, which bench_gguf reads with --prefix),
# then
#   llama-bench -m FILE -t THREADS -p 512 -n 128 -r RUNS   (pp512 and tg128: means of its runs)
#   build/bench/bench_gguf --types T --prefix P --threads THREADS --runs RUNS --decode-pos POS
#                          (prefill 512; decode batch 1 and 8, 32 steps from position POS)
# one after the other, type by type, the order of the two swapping from type to type. Both keep
# K/V in f16 (llama.cpp's default and the daemon's). Decode positions: llama-bench's tg128 decodes
# positions 0-127 of an empty context; bench_gguf decodes 32 steps from --decode-pos (default 0,
# the closest match; 512 measures decode after a 512-token prompt, with more attention a token).
# Prints one markdown table and the load average before and after.
#
#   bench/vs_llama_bench.sh --llama-bench PATH [--types f32,q8_0,q4_k_m] [--threads 2]
#                           [--runs 5] [--decode-pos 0] [--build DIR]
#   (--llama-bench defaults to $LLAMA_BENCH, else llama-bench on $PATH)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
types=f32,q8_0,q4_k_m
threads=2
runs=5
decode_pos=0
lbench=${LLAMA_BENCH:-$(command -v llama-bench || true)}
while [ $# -gt 0 ]; do
  case $1 in
    --llama-bench) lbench=$2; shift 2 ;;
    --types) types=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --decode-pos) decode_pos=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "vs_llama_bench.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case $decode_pos in ''|*[!0-9]*) echo "vs_llama_bench.sh: --decode-pos '$decode_pos': expected 0 to 512" >&2; exit 2 ;; esac
for v in threads runs; do
  case ${!v} in ''|*[!0-9]*|0) echo "vs_llama_bench.sh: --$v '${!v}': expected a count >= 1" >&2; exit 2 ;; esac
done
[ "$runs" -le 16 ] || { echo "vs_llama_bench.sh: --runs $runs: at most 16 (bench_gguf's limit)" >&2; exit 2; }
if [ -z "$lbench" ]; then
  echo "vs_llama_bench.sh: llama-bench is missing: no --llama-bench PATH, no \$LLAMA_BENCH," \
       "none on \$PATH. Build llama.cpp (CPU: cmake -B build -DLLAMA_CURL=OFF" \
       "-DCMAKE_BUILD_TYPE=Release && cmake --build build --target llama-bench) and pass" \
       "--llama-bench llama.cpp/build/bin/llama-bench" >&2
  exit 2
fi
if [ ! -x "$lbench" ] || [ -d "$lbench" ]; then
  echo "vs_llama_bench.sh: --llama-bench '$lbench': missing or not an executable file" >&2
  exit 2
fi
prefixd=$build/daemon/prefixd
gguf=$build/bench/bench_gguf
for b in "$prefixd" "$gguf"; do
  [ -x "$b" ] || { echo "vs_llama_bench.sh: no $b (build first, or --build DIR)" >&2; exit 2; }
done

work=$(mktemp -d /tmp/prefixd-vs-llama-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

prefix=/tmp/prefixd-vs-llama-bench-110M
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
i=0
for t in ${types//,/ }; do
  f=$prefix-$t.gguf
  if [ ! -r "$f" ]; then
    echo "writing $f..." >&2
    "$prefixd" synth --shape stories110M --format gguf --type "$t" -o "$f" >&2
  fi
  run_llama() {
    echo "$t: llama-bench" >&2
    "$lbench" -m "$f" -t "$threads" -p 512 -n 128 -r "$runs" -o csv >"$work/$t.llama.csv" \
      2>"$work/$t.llama.err" || { echo "vs_llama_bench.sh: llama-bench on $f failed:" >&2
                                  tail -5 "$work/$t.llama.err" >&2; exit 1; }
  }
  run_ours() {
    echo "$t: bench_gguf" >&2
    "$gguf" --types "$t" --prefix "$prefix" --rss-types "" --threads "$threads" --runs "$runs" \
      --decode-pos "$decode_pos" >"$work/$t.ours.md" \
      2>"$work/$t.ours.err" || { echo "vs_llama_bench.sh: bench_gguf --types $t failed:" >&2
                                 tail -5 "$work/$t.ours.err" >&2; exit 1; }
  }
  if [ $((i % 2)) = 0 ]; then run_llama; run_ours; else run_ours; run_llama; fi
  i=$((i + 1))
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "stories110M shape (random weights), $threads threads, $(nproc) CPUs, $runs runs each;" \
     "prefixd decodes from position $decode_pos;" \
     "load average before: $load_before, after: $load_after"
echo
python3 - "$work" "$types" <<'EOF'
import csv, os, sys

work, types = sys.argv[1], sys.argv[2].split(",")
print("| type | file MB | prefill 512: llama-bench pp512 | prefixd | prefixd / llama |"
      " decode b1: llama-bench tg128 | prefixd | prefixd / llama | prefixd decode b8 | b8 / b1 |")
print("|---|---|---|---|---|---|---|---|---|---|")
for t in types:
    pp = tg = None
    for r in csv.DictReader(open(os.path.join(work, t + ".llama.csv"))):
        if int(r["n_prompt"]) > 0 and int(r["n_gen"]) == 0:
            pp = float(r["avg_ts"])
        elif int(r["n_gen"]) > 0 and int(r["n_prompt"]) == 0:
            tg = float(r["avg_ts"])
    ours = head = None
    for line in open(os.path.join(work, t + ".ours.md")):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "type":
            head = cells  # bench_gguf's columns, found by name
        elif cells and cells[0] == t and head:
            ours = dict(zip(head, cells))
    if ours is None or pp is None or tg is None:
        print("| %s | (missing: see the logs) |" % t)
        continue
    p512, d1, d8 = (float(ours[k]) for k in
                    ("prefill 512 tok/s", "decode b1 tok/s", "decode b8 tok/s"))
    print("| %s | %s | %.0f tokens/s | %.0f | %.2fx | %.1f tokens/s | %.1f | %.2fx | %.0f | %.1fx |" % (
        t, ours["file MB"], pp, p512, p512 / pp, tg, d1, d1 / tg, d8, d8 / d1))
EOF
