#!/usr/bin/env python3
"""The socket path's cost and decode throughput with concurrent streams, through a real daemon.

usage: bench/bench_socket.py [--model PATH] [--runs 20] [--streams 8]
(default model: the demo's ~/.cache/prefixd/models/synth-stories110M.bin and its .tok)

1. Socket overhead: for short cached prompts, the client-side TTFT (send to first TOKEN frame)
   minus the daemon's own prefill time for the request; median of --runs.
2. Aggregate decode tokens/s: one stream of 128 new tokens, then --streams concurrent streams
   (one connection each), timed from the first token to the last.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "clients", "python"))
import prefixd  # noqa: E402

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
model = args.get("--model", os.path.expanduser("~/.cache/prefixd/models/synth-stories110M.bin"))
runs = int(args.get("--runs", "20"))
streams = int(args.get("--streams", "8"))
binary = os.path.join(root, "build", "daemon", "prefixd")
tmp = tempfile.mkdtemp()
sock = os.path.join(tmp, "p.sock")
p = subprocess.Popen([binary, "serve", "--model", model, "--socket", sock, "--threads", "2",
                      "--log-level", "warn"])
for _ in range(600):
    try:
        prefixd.Client(sock).close()
        break
    except ConnectionError:
        time.sleep(0.1)
try:
    c = prefixd.Client(sock)
    ids = [1] + list(range(100, 164))
    c.generate(ids=ids, max_new=1, temp=0)
    over = []
    for i in range(runs):
        r = c.generate(ids=ids + [200 + i], max_new=1, temp=0)
        over.append(r["ttft_ms"] - r["prefill_ms"])
    print("socket path: client TTFT - daemon prefill = %.3f ms (median of %d; p90 %.3f ms)"
          % (statistics.median(over), runs, sorted(over)[int(0.9 * runs) - 1]))

    def stream(k, out):
        with prefixd.Client(sock) as cc:
            t = [None, None]

            def on_tok(i, piece):
                now = time.monotonic()
                t[0] = t[0] or now
                t[1] = now
            r = cc.generate(ids=[1, 300 + k, 400 + k], max_new=128, temp=0, on_token=on_tok)
            out.append((len(r["tokens"]), t[0], t[1]))

    one = []
    stream(0, one)
    single = (one[0][0] - 1) / (one[0][2] - one[0][1])
    many = []
    ts = [threading.Thread(target=stream, args=(k + 1, many)) for k in range(streams)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    total = sum(n for n, _, _ in many)
    span = max(e for _, _, e in many) - min(s for _, s, _ in many)
    agg = total / span
    print("decode: 1 stream %.1f tokens/s; %d streams %.1f tokens/s aggregate (%.2fx)"
          % (single, streams, agg, agg / single))
finally:
    p.terminate()
    p.wait()
