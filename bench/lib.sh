# bench/lib.sh — what the daemon benchmark scripts share (sourced, not run). The caller sets
# `me` (its name, for messages), `prefixd`, `prefixctl` and `model` (empty: the default), and
# calls bench_setup PREFIX once; then bench_start BINARY OPTIONS... and bench_stop around each
# mode. bench_setup gives `work` (a temporary folder removed at exit) and `sock`.

# The stories110M-shaped synthetic model with random weights, written once, when model is empty.
bench_default_model() {
  [ -n "$model" ] && return 0
  local dir=${XDG_CACHE_HOME:-$HOME/.cache}/prefixd/models
  model=$dir/synth-stories110M.bin
  if [ ! -f "$model" ] || [ ! -f "$model.tok" ]; then
    mkdir -p "$dir"
    "$prefixd" synth --shape 768,2048,12,12,12,32000,2048 -o "$model" >&2
  fi
}

bench_setup() { # prefix of the temporary folder
  work=$(mktemp -d "/tmp/$1-XXXXXX")
  sock=$work/p.sock
  pid=""
  trap bench_cleanup EXIT
}

bench_cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}

# Starts BINARY serve on the model (RAM only) with the options; fails with its log if it does
# not come up within 60 s.
bench_start() {
  local bin=$1; shift
  "$bin" serve --model "$model" --socket "$sock" --disk-dir none "$@" 2>>"$work/daemon.log" &
  pid=$!
  for _ in $(seq 1 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$me: $bin serve $* did not start:" >&2; tail -5 "$work/daemon.log" >&2; exit 1
    fi
    "$prefixctl" --socket "$sock" stats >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$me: the daemon did not answer within 60 s" >&2; exit 1
}

bench_stop() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }
