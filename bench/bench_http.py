#!/usr/bin/env python3
"""The HTTP API's cost over the native socket, for a cached request's time to first token.

usage: bench/bench_http.py [--model PATH] [--tokenizer PATH] [--runs 40] [--prompt-tokens 64]
                           [--new-tokens 8] [--cache-mem 512M]
(default model: tests/data/stories260K.bin with tok512.bin, where the forward pass is so cheap
that the difference is the path's own cost)

One daemon serves both: the native socket (the Python client) and --http on 127.0.0.1. A prefix
of --prompt-tokens token ids is computed once; then every run sends that prefix plus
--new-tokens ids of its own, so every request finds the prefix cached and computes only its new
tokens. Runs alternate native and HTTP (streaming completions on one keep-alive connection, read
with a raw socket so the client adds nothing), and the wall-clock TTFT (request sent -> first
token's bytes read) is compared at p50 and p90. With the `openai` Node.js package in
build/npm (the HTTP tests install it), the same requests are timed through it as well.
"""
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "clients", "python"))
import prefixd  # noqa: E402

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
model = args.get("--model", os.path.join(root, "tests", "data", "stories260K.bin"))
tok = args.get("--tokenizer", os.path.join(root, "tests", "data", "tok512.bin"))
runs = int(args.get("--runs", "40"))
n_prompt = int(args.get("--prompt-tokens", "64"))
n_new = int(args.get("--new-tokens", "8"))
binary = os.path.join(root, "build", "daemon", "cli", "prefixd")
tmp = tempfile.mkdtemp(prefix="bench-http-")
sock = os.path.join(tmp, "p.sock")
log = open(os.path.join(tmp, "log"), "w+")
p = subprocess.Popen([binary, "serve", "--model", model, "--tokenizer", tok, "--socket", sock,
                      "--disk-dir", "none", "--cache-mem", args.get("--cache-mem", "512M"),
                      "--http", "127.0.0.1:0", "--log-level", "info"], stderr=log)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def http_stream(s, ids):
    """One streaming completion on keep-alive socket s: (wall TTFT ms, server TTFT ms)."""
    body = json.dumps({"prompt": ids, "max_tokens": 1, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body)) + body
    t0 = time.perf_counter()
    s.sendall(req)
    buf, first = b"", None
    while not buf.endswith(b"0\r\n\r\n"):
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed: %r" % buf)
        buf += chunk
        if first is None and b'"text":"' in buf:
            first = (time.perf_counter() - t0) * 1e3
    usage = [json.loads(line[6:]) for line in buf.decode().split("\r\n")
             if line.startswith('data: {') and '"usage"' in line][0]
    return first, usage["prefixd"]["ttft_ms"]


try:
    base = None
    for _ in range(600):
        log.seek(0)
        for line in log.read().splitlines():
            if "HTTP API on " in line:
                base = line.split("HTTP API on ")[1].split()[0]
        if base and os.path.exists(sock):
            break
        time.sleep(0.05)
    assert base, "the daemon did not start: see %s" % log.name
    rng = random.Random(1)
    c = prefixd.Client(sock)
    vocab = c.server["vocab_size"]
    prefix = [1] + [rng.randrange(3, vocab) for _ in range(n_prompt - 1)]
    c.generate(ids=prefix, max_new=1, temp=0)
    u = urllib.parse.urlparse(base)
    hs = socket.create_connection((u.hostname, u.port))
    hs.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    native, http, native_srv, http_srv = [], [], [], []
    for i in range(runs + 2):
        a = prefix + [rng.randrange(3, vocab) for _ in range(n_new)]
        b = prefix + [rng.randrange(3, vocab) for _ in range(n_new)]
        t = [None]
        t0 = time.perf_counter()

        def on_tok(_id, _piece):
            if t[0] is None:
                t[0] = (time.perf_counter() - t0) * 1e3
        r = c.generate(ids=a, max_new=1, temp=0, on_token=on_tok)
        w, srv = http_stream(hs, b)
        if i < 2:
            continue  # warm-up (first connection, first allocation)
        native.append(t[0])
        native_srv.append(r["ttft_ms"])
        http.append(w)
        http_srv.append(srv)
        assert r["cached_tokens"] >= n_prompt // 16 * 16 - 16, r
    print("model %s, cached prefix %d tokens + %d new, %d runs each (alternating)"
          % (os.path.basename(model), n_prompt, n_new, runs))
    print("native socket TTFT: p50 %.3f ms, p90 %.3f ms (daemon's own: p50 %.3f ms)"
          % (statistics.median(native), pct(native, 0.9), statistics.median(native_srv)))
    print("HTTP (SSE) TTFT:    p50 %.3f ms, p90 %.3f ms (daemon's own: p50 %.3f ms)"
          % (statistics.median(http), pct(http, 0.9), statistics.median(http_srv)))
    print("HTTP overhead at p50: %+.3f ms" % (statistics.median(http) - statistics.median(native)))
    # The engine's own time varies from run to run far more than the paths differ: the path's
    # cost alone is the client's wall TTFT minus the daemon's own TTFT of the same request.
    pn = [w - s for w, s in zip(native, native_srv)]
    ph = [w - s for w, s in zip(http, http_srv)]
    print("path cost (client wall TTFT - daemon's TTFT): native p50 %.3f ms, HTTP p50 %.3f ms: "
          "HTTP adds %+.3f ms" % (statistics.median(pn), statistics.median(ph),
                                  statistics.median(ph) - statistics.median(pn)))
    mods = os.path.join(root, "build", "npm", "node_modules")
    if os.path.isdir(os.path.join(mods, "openai")):
        specs = [{"base_url": base + "/v1", "op": "completion",
                  "params": {"model": "m", "prompt": prefix + [rng.randrange(3, vocab)
                                                              for _ in range(n_new)],
                             "max_tokens": 1, "temperature": 0, "stream": True}}
                 for _ in range(runs + 2)]
        out = subprocess.run(["node", os.path.join(root, "tests", "integration",
                                                   "openai_client.js")], input=json.dumps(specs),
                             capture_output=True, text=True, env=dict(os.environ, NODE_PATH=mods))
        res = json.loads(out.stdout)[2:]
        tt = [r["ttft_ms"] for r in res if r["ok"] and r["ttft_ms"] is not None]
        print("openai Node.js package (streaming): TTFT p50 %.3f ms, p90 %.3f ms (%d runs)"
              % (statistics.median(tt), pct(tt, 0.9), len(tt)))
    else:
        print("(no build/npm/node_modules/openai: run the HTTP tests once to time the openai "
              "package too)")
finally:
    p.terminate()
    p.wait()
