#!/usr/bin/env bash
# bench/busy.sh — prefixd on a busy machine (issue 11): `prefixd run` decode tokens/s and TTFT
# with and without one busy loop beside it (`sh -c 'while :; do :; done'`), for --threads 1 and
# 2, on stories260K (200 new tokens) and the stories110M shape (a 27-token prompt, 40 new
# tokens; random weights written once by `prefixd synth`, 440 MB in /tmp). Every figure is the
# median of --runs runs; the settings alternate run by run, so a change in the machine's load
# spreads over all of them. Prints a markdown table; the load average before and after says how
# quiet the machine was.
#   bench/busy.sh [--build DIR] [--runs N] [--model260k PATH] [--tokenizer PATH] [--big PATH]
set -euo pipefail
cd "$(dirname "$0")/.."

build=build
runs=5
data=${PREFIXD_MODELS_DIR:-tests/data}
m260=$data/stories260K.bin
tok=$data/tok512.bin
big=/tmp/prefixd-busy-110M.bin
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --model260k) m260=$2; shift 2 ;;
    --tokenizer) tok=$2; shift 2 ;;
    --big) big=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "busy.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case $runs in ''|*[!0-9]*|0) echo "busy.sh: --runs '$runs': expected a count >= 1" >&2; exit 2 ;; esac
prefixd=$build/daemon/prefixd
[ -x "$prefixd" ] || { echo "busy.sh: no $prefixd (build first, or --build DIR)" >&2; exit 2; }
for f in "$m260" "$tok"; do
  [ -r "$f" ] || { echo "busy.sh: cannot read '$f'" >&2; exit 2; }
done
if [ ! -r "$big" ]; then
  echo "writing $big (stories110M shape)..." >&2
  "$prefixd" synth --shape stories110M -o "$big" >/dev/null
fi

hog=
stop_hog() { if [ -n "$hog" ]; then kill "$hog" 2>/dev/null || true; wait "$hog" 2>/dev/null || true; hog=; fi; }
trap stop_hog EXIT
start_hog() { sh -c 'while :; do :; done' & hog=$!; sleep 0.2; }

out=$(mktemp -d)
trap 'stop_hog; rm -rf "$out"' EXIT
trap 'exit 130' INT TERM # so that the EXIT trap stops the busy loop

# One run: appends "ttft_ms tokens_per_s" to $out/<key>.
one() { # key model threads n prompt [tokenizer]
  local key=$1 model=$2 threads=$3 n=$4 prompt=$5 tk=${6:-}
  local args=(run --model "$model" --threads "$threads" -n "$n" --temp 0 --prompt "$prompt")
  [ -n "$tk" ] && args+=(--tokenizer "$tk")
  local line
  line=$("$prefixd" "${args[@]}" 2>&1 >/dev/null | grep 'TTFT') || {
    echo "busy.sh: prefixd ${args[*]} failed" >&2; exit 1; }
  # "prompt 27 tokens (0 cached), 40 new tokens, TTFT 44.1 ms, prefill ..., decode 67.0 tokens/s"
  echo "$line" | sed -E 's/.*TTFT ([0-9.]+) ms.*decode ([0-9.]+) tokens\/s.*/\1 \2/' >>"$out/$key"
  echo "$line" | sed -E 's/^prompt ([0-9]+) tokens.*/\1/' >"$out/$key.prompt"
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
spread() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.2f", (lo > 0 ? hi/lo : 0)}'; }

small_prompt="Once upon a time"
big_prompt="Once upon a time there was"   # 27 tokens with the byte-level tokenizer (BOS + 26)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$runs"); do
  echo "round $r of $runs" >&2
  for h in 0 1; do
    [ "$h" = 1 ] && start_hog
    for t in 1 2; do
      one "260k-h$h-t$t" "$m260" "$t" 200 "$small_prompt" "$tok"
      one "110m-h$h-t$t" "$big" "$t" 40 "$big_prompt"
    done
    stop_hog
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "prefixd run, medians of $runs runs ($(git describe --always --dirty 2>/dev/null || echo ?)," \
     "$(nproc) CPUs; load average before: $load_before, after: $load_after)"
echo
echo "| run | beside | --threads 1 | --threads 2 | 2 vs 1 |"
echo "|---|---|---|---|---|"
for m in 260k 110m; do
  for h in 0 1; do
    beside=$([ "$h" = 1 ] && echo "one busy loop" || echo "idle")
    for what in tok ttft; do
      col=$([ "$what" = tok ] && echo 2 || echo 1)
      v1=$(cut -d' ' -f"$col" "$out/$m-h$h-t1" | median)
      v2=$(cut -d' ' -f"$col" "$out/$m-h$h-t2" | median)
      s1=$(cut -d' ' -f"$col" "$out/$m-h$h-t1" | spread)
      s2=$(cut -d' ' -f"$col" "$out/$m-h$h-t2" | spread)
      if [ "$what" = tok ]; then
        label="decode tokens/s"; ratio=$(awk -v a="$v1" -v b="$v2" 'BEGIN{printf "%.2fx", (a > 0 ? b / a : 0)}')
      else
        label="TTFT ms"; ratio=$(awk -v a="$v1" -v b="$v2" 'BEGIN{printf "%.2fx", (b > 0 ? a / b : 0)}')
      fi
      name=$([ "$m" = 260k ] && echo "stories260K, 200 new" ||
             echo "stories110M shape, $(cat "$out/$m-h$h-t1.prompt")-token prompt + 40 new")
      echo "| $name, $label | $beside | $v1 (max/min $s1) | $v2 (max/min $s2) | $ratio |"
    done
  done
done
