# The published TTFT plots, from the data files bench/ttft_table.py writes.
# usage: gnuplot -e "dir='bench/results'; modes='no-cache ram disk restart'" bench/plots.gp
set terminal pngcairo size 900,560 enhanced font "DejaVu Sans,11"
set grid
set key top left

# 1. TTFT against prompt length: uncached, and with all but the last 40 tokens cached.
set output dir."/ttft_vs_prompt.png"
set title "Time to first token against prompt length (client side, median of runs)"
set xlabel "prompt tokens"
set ylabel "TTFT (ms)"
set logscale y
set format y "%g"
plot dir."/sweep.dat" using 1:2 with linespoints lw 2 pt 7 title "uncached", \
     dir."/sweep.dat" using 1:3 with linespoints lw 2 pt 5 title "cached prefix (40 new tokens)"

# 2. The chat workload's TTFT distribution, per mode.
set output dir."/ttft_by_mode.png"
set title "Chat workload: TTFT distribution per mode (all turns of all runs)"
set xlabel "TTFT (ms, log scale)"
set ylabel "fraction of requests"
unset logscale y
set logscale x
set format x "%g"
set yrange [0:1.02]
set key bottom right
plot for [m in modes] dir."/cdf_".m.".dat" using 1:2 with steps lw 2 title m
