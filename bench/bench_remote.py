#!/usr/bin/env python3
"""TTFT from the remote tier (Redis), beside the RAM and disk tiers and no cache at all.

usage: bench/bench_remote.py [--model PATH] [--runs 5] [--prefix-tokens 1500] [--new-tokens 40]
                             [--build DIR] [--json OUT] [--remote-timeout MS]
(default model: a stories110M-shaped synthetic model, `prefixd synth --shape stories110M`,
written to /tmp/prefixd-bench-remote-110M.bin if missing)

Starts a real redis-server on a Unix socket in a temporary folder (no persistence) and three
daemons, each with its own RAM:
  A  --remote: computes a fresh P-token prefix each run (+ N new tokens: the uncached TTFT), then
     the same prefix with other N tokens (the RAM TTFT)
  B  --remote, no disk tier: the same prefix with yet other N tokens: its first sight of the
     prefix, loaded from Redis (the remote TTFT); then with N more other tokens, the prefix now in
     B's RAM (B's RAM TTFT: the same daemon's prefill without the load, to tell the load's cost
     from the daemon's)
  D  no remote, a disk tier and a RAM budget for one prompt: the prefix, then an unrelated prompt
     of the same size (which evicts the prefix to disk), then the prefix again (the disk TTFT)
Prompts are token ids (BOS first), each run's prefix new, so no run finds another's blocks.
Figures are daemon-side TTFTs (DONE's ttft_ms), medians over runs; for B also where the time
goes (the remote thread's load time from STATS, the prefill of the new tokens) and the load
throughput (value bytes over the remote thread's time in GET batches).
"""
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "clients", "python"))
import prefixd  # noqa: E402

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
runs = int(args.get("--runs", "5"))
P = int(args.get("--prefix-tokens", "1500"))
N = int(args.get("--new-tokens", "40"))
rto = ["--remote-timeout", args["--remote-timeout"]] if "--remote-timeout" in args else []
build = args.get("--build", os.path.join(root, "build"))
binary = next((b for b in (os.path.join(build, "daemon", "cli", "prefixd"),
                           os.path.join(build, "daemon", "prefixd")) if os.path.exists(b)), None)
if not binary:
    sys.exit("bench_remote.py: no prefixd in %s (build it first)" % build)
redis_bin = shutil.which("redis-server")
if not redis_bin:
    sys.exit("bench_remote.py: no redis-server (scripts/deps --test installs it)")
model = args.get("--model", "/tmp/prefixd-bench-remote-110M.bin")
if not os.path.exists(model):
    subprocess.run([binary, "synth", "--shape", "stories110M", "-o", model], check=True)

tmp = tempfile.mkdtemp(prefix="prefixd-bench-remote-")
procs = []


def start(args, sock):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(tmp, os.path.basename(sock) + ".log"), "w"))
    procs.append(p)
    for _ in range(600):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sock)
            return p
        except OSError:
            if p.poll() is not None:
                break
            time.sleep(0.1)
        finally:
            s.close()
    sys.exit("did not start: %s" % args)


def daemon(name, *extra):
    sock = os.path.join(tmp, name + ".sock")
    start([binary, "serve", "--model", model, "--socket", sock, "--threads", "2",
           "--log-level", "warn", "--max-batch", "4", "--ctx", "2048"] + list(extra), sock)
    return sock


def gen(sock, ids, max_new=1):
    with prefixd.Client(sock) as c:
        st0 = c.stats()
        r = c.generate(ids=ids, max_new=max_new, temp=0, seed=1)
        st1 = c.stats()
    return r, st0, st1


def wait_writes(sock, n):
    for _ in range(1200):
        with prefixd.Client(sock) as c:
            st = c.stats()
        if st.get("remote_writes", 0) >= n and st.get("remote_write_pending", 0) == 0:
            return
        time.sleep(0.05)
    sys.exit("writes did not finish: %s" % {k: v for k, v in st.items() if "remote" in k})


with open("/proc/loadavg") as f:
    load_start = f.read().split()[0]
rsock = os.path.join(tmp, "redis.sock")
start([redis_bin, "--port", "0", "--unixsocket", rsock, "--unixsocketperm", "700", "--save", "",
       "--appendonly", "no", "--dir", tmp, "--logfile", os.path.join(tmp, "redis.log")], rsock)
remote = "unix:" + rsock
try:
    a = daemon("a", "--remote", remote, "--disk-dir", "none", "--cache-mem", "1G", *rto)
    b = daemon("b", "--remote", remote, "--disk-dir", "none", "--cache-mem", "1G", *rto)
    os.makedirs(os.path.join(tmp, "d-disk"), mode=0o700)
    # D's RAM holds one prompt (the prefix's 97 blocks of 1.2 MB and a few more), not two.
    d = daemon("d", "--disk-dir", os.path.join(tmp, "d-disk"), "--cache-mem", "120M")
    rows = []
    for run in range(runs):
        rnd = random.Random(1000 + run)
        prefix = [1] + [rnd.randrange(3, 32000) for _ in range(P - 1)]
        tails = [[rnd.randrange(3, 32000) for _ in range(N)] for _ in range(4)]
        other = [1] + [rnd.randrange(3, 32000) for _ in range(P + N - 1)]
        un, s0, s1 = gen(a, prefix + tails[0])
        wait_writes(a, s0.get("remote_writes", 0) + P // 16)
        ram, _, _ = gen(a, prefix + tails[1])
        rem, s0, s1 = gen(b, prefix + tails[2])
        b_ram, _, _ = gen(b, prefix + tails[3])  # B again: the same prefix, now in B's RAM
        load_ms = s1["remote_load_ms"] - s0["remote_load_ms"]
        get_ms = s1["remote_get_ms"] - s0["remote_get_ms"]
        mb = (s1["remote_bytes_in"] - s0["remote_bytes_in"]) / 1e6
        rt = s1["remote_round_trips"] - s0["remote_round_trips"]
        gen(d, prefix + tails[0])
        gen(d, other)
        time.sleep(1.0)  # the spills reach LMDB
        dk, _, _ = gen(d, prefix + tails[3])
        row = {"run": run, "uncached_ms": un["server_ttft_ms"], "ram_ms": ram["server_ttft_ms"],
               "remote_ms": rem["server_ttft_ms"], "disk_ms": dk["server_ttft_ms"],
               "b_ram_ms": b_ram["server_ttft_ms"],
               "remote_cached": rem["cached_tokens"], "disk_cached": dk["cached_tokens_disk"],
               "disk_cached_all": dk["cached_tokens"],
               "ram_cached": ram["cached_tokens"], "remote_load_ms": load_ms,
               "remote_get_ms": get_ms, "remote_mb": mb, "round_trips": rt,
               "remote_prefill_ms": rem["prefill_ms"],
               "remote_partial_rows": rem["cached_tokens"] - 16 * (rem["cached_tokens"] // 16),
               "remote_over_ram": rem["server_ttft_ms"] / ram["server_ttft_ms"],
               "remote_over_disk": rem["server_ttft_ms"] / dk["server_ttft_ms"],
               "load_mb_s": mb / (get_ms / 1e3) if get_ms > 0 else 0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "run"}
    med["remote_pct_of_uncached"] = 100 * med["remote_ms"] / med["uncached_ms"]
    with open("/proc/loadavg") as f:
        med["loadavg"] = f.read().split()[0]
    med["loadavg_start"] = load_start
    print("medians over %d runs (P %d + %d new tokens, daemon-side TTFT):" % (runs, P, N))
    print("| tier | TTFT ms | cached tokens |")
    print("| --- | --- | --- |")
    print("| none (uncached) | %.0f | 0 |" % med["uncached_ms"])
    print("| RAM | %.0f | %d |" % (med["ram_ms"], med["ram_cached"]))
    print("| disk | %.0f | %d |" % (med["disk_ms"], med["disk_cached"]))
    print("| remote (Redis, Unix socket) | %.0f (%.1f%% of uncached) | %d |" %
          (med["remote_ms"], med["remote_pct_of_uncached"], med["remote_cached"]))
    print("| RAM on B, after the remote load | %.0f | |" % med["b_ram_ms"])
    print("remote / RAM %.2fx, remote / disk %.2fx (medians of the runs' ratios); %d of the remote "
          "tokens are rows of a partial block" % (med["remote_over_ram"], med["remote_over_disk"],
                                                  med["remote_partial_rows"]))
    print("remote timeout: %s" % (rto[1] + " ms" if rto else "the default (50 ms)"))
    print("remote: %.1f MB in %.0f round trips, %.1f ms in GET batches (%.0f MB/s), load job "
          "%.1f ms, prefill of the new tokens %.1f ms; load average %s" %
          (med["remote_mb"], med["round_trips"], med["remote_get_ms"], med["load_mb_s"],
           med["remote_load_ms"], med["remote_prefill_ms"],
           "%s at the start, %s at the end" % (med["loadavg_start"], med["loadavg"])))
    if "--json" in args:
        with open(args["--json"], "w") as f:
            json.dump({"runs": rows, "medians": med, "prefix_tokens": P, "new_tokens": N}, f,
                      indent=1)
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(tmp, ignore_errors=True)
