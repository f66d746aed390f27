#!/usr/bin/env bash
# The TTFT table and plots from the rows bench/ttft_modes.sh collected (no daemon needed):
#   bench/plots.sh [RESULTS_DIR]     (default bench/results, holding ttft.csv)
# writes RESULTS_DIR/table.md, summary.json, ttft_vs_prompt.png, ttft_by_mode.png. Installs
# Debian's gnuplot-nox if gnuplot is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/results}
[ -f "$dir/ttft.csv" ] || { echo "plots.sh: no $dir/ttft.csv (run bench/ttft_modes.sh)" >&2; exit 2; }
if ! command -v gnuplot >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "plots.sh: need root (or sudo) to install gnuplot-nox" >&2; exit 1; }
    sudo=sudo
  fi
  echo "installing: gnuplot-nox" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null
fi
python3 "$here/ttft_table.py" "$dir"
modes=""
for m in no-cache ram disk restart; do
  [ -f "$dir/cdf_$m.dat" ] && [ "$(wc -l <"$dir/cdf_$m.dat")" -gt 1 ] && modes="$modes $m"
done
gnuplot -e "dir='$dir'; modes='${modes# }'" "$here/plots.gp"
echo "== wrote $dir/table.md, $dir/summary.json, $dir/ttft_vs_prompt.png, $dir/ttft_by_mode.png" >&2
