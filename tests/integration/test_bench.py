#!/usr/bin/env python3
"""Integration tests of `prefixctl bench` against a real daemon (stories260K, temporary socket).

usage: test_bench.py PREFIXD PREFIXCTL MODELS_DIR CASE
       test_bench.py PREFIXD PREFIXCTL MODELS_DIR --list   (the cases: the case_* functions)
Each case starts its own daemon(s); exit 0 and "1 passed, 0 failed" on success.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PREFIXD, PREFIXCTL, MODELS, CASE = sys.argv[1:5]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402
MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.bin")
COLUMNS = ["workload", "label", "run", "seed", "client", "conversation", "turn", "prompt_tokens",
           "cached_tokens", "cached_tokens_disk", "ttft_ms", "server_ttft_ms", "prefill_ms",
           "new_tokens", "total_ms", "transport"]
# A small chat: 2 system prompts of 96 tokens, 4 conversations on 2 clients, 3 turns.
SMALL = ["--clients", "2", "--systems", "2", "--system-tokens", "96", "--conversations", "4",
         "--turns", "3", "--user-tokens", "20", "--reply-tokens", "8", "--requests", "6",
         "--lengths", "64,200"]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Daemon(daemon.Daemon):
    """stories260K, RAM only unless a case names a disk dir (the default dir is shared)."""

    def __init__(self, tmp, *extra):
        disk = () if "--disk-dir" in extra else ("--disk-dir", "none")
        super().__init__(PREFIXD, MODEL, TOK, *(disk + extra), tmp=tmp, log_level="warn")


def bench(sock, *args, expect=0):
    r = subprocess.run([PREFIXCTL, "--socket", sock, "bench"] + list(args),
                       capture_output=True, text=True, timeout=120)
    check(r.returncode == expect, "bench %s: exit %d, expected %d\nstdout: %s\nstderr: %s"
          % (" ".join(args), r.returncode, expect, r.stdout, r.stderr))
    return r


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    check(rows and rows[0] == COLUMNS, "CSV header: %r" % (rows[:1],))
    for r in rows[1:]:
        check(len(r) == len(COLUMNS), "CSV row with %d fields: %r" % (len(r), r))
    out = [dict(zip(COLUMNS, r)) for r in rows[1:]]
    for r in out:
        for k in COLUMNS[2:-1]:
            float(r[k])  # every number parses
        check(float(r["ttft_ms"]) > 0, "TTFT > 0: %r" % r)
        check(int(r["cached_tokens"]) <= int(r["prompt_tokens"]), "cached <= prompt: %r" % r)
        check(int(r["cached_tokens_disk"]) <= int(r["cached_tokens"]), "disk <= cached: %r" % r)
    return out


def with_daemon(fn, *extra):
    tmp = tempfile.mkdtemp(prefix="prefixd-bench-")
    d = Daemon(tmp, *extra)
    try:
        fn(d.sock, tmp)
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def case_outputs():
    """All workloads: the CSV has one well-formed row per request, the JSON one summary each."""
    def body(sock, tmp):
        c, j = os.path.join(tmp, "o.csv"), os.path.join(tmp, "o.json")
        r = bench(sock, "--workload", "chat,fewshot,unique,sweep", "--label", "ram",
                  "--csv", c, "--json", j, *SMALL)
        rows = read_csv(c)
        by = {w: [x for x in rows if x["workload"] == w] for w in ("chat", "fewshot", "unique",
                                                                  "sweep")}
        check(len(by["chat"]) == 12 and len(by["fewshot"]) == 6 and len(by["unique"]) == 6
              and len(by["sweep"]) == 4, "rows per workload: %r"
              % {k: len(v) for k, v in by.items()})
        check(all(x["label"] == "ram" for x in rows), "label in every row")
        check(all(x["transport"] == "socket" for x in rows), "transport in every row")
        check({x["client"] for x in by["chat"]} == {"0", "1"}, "two clients")
        doc = json.load(open(j))
        check(doc["label"] == "ram" and doc["server"]["seq_len"] == 512, "JSON header")
        check(doc["transport"] == "socket", "JSON transport")
        ws = {w["workload"]: w for w in doc["workloads"]}
        check(list(ws) == ["chat", "fewshot", "unique", "sweep"], "JSON workloads in order")
        for name, w in ws.items():
            t = w["ttft_ms"]
            check(w["count"] == len(by[name]), "%s count" % name)
            check(0 < t["min"] <= t["p50"] <= t["p95"] <= t["p99"] <= t["max"],
                  "%s percentiles ordered: %r" % (name, t))
            check(w["requests_per_s"] > 0 and w["tokens_per_s"] >= 0, "%s throughput" % name)
            check(0 <= w["hit_ratio"] <= 1, "%s hit ratio" % name)
            check(len(w["by_run"]) == 1, "%s by_run" % name)
        check([t["turn"] for t in ws["chat"]["by_turn"]] == [1, 2, 3], "by_turn")
        check(ws["fewshot"]["hit_ratio"] > 0.5, "fewshot shares its preamble")
        check("chat" in r.stdout and "p50" in r.stdout, "summary on stdout: %r" % r.stdout)
        # Not a terminal: no progress line on stderr.
        check(r.stderr == "", "stderr: %r" % r.stderr)
        # The sweep's second step reuses all but U (+ a partial block) of its prompt.
        for x in by["sweep"]:
            cached = int(x["cached_tokens"])
            if x["turn"] == "1":
                check(cached == 0, "sweep step 1 uncached: %r" % x)
            else:
                check(cached >= int(x["prompt_tokens"]) - 20 - 16, "sweep step 2 cached: %r" % x)
    with_daemon(body)


def chat_rows(sock, tmp, *extra):
    c = os.path.join(tmp, "chat.csv")
    bench(sock, "--workload", "chat", "--csv", c, "--quiet", *(SMALL + list(extra)))
    return read_csv(c)


def case_chat_cached():
    """Cache on: every later turn finds its history cached; with --warm every turn hits."""
    def body(sock, tmp):
        rows = chat_rows(sock, tmp)
        for x in rows:
            if int(x["turn"]) > 1:
                # At least the system prompt and the earlier turns' full blocks.
                check(int(x["cached_tokens"]) >= 96, "later turn cached: %r" % x)
        # Conversations 2 and 3 reuse the system prompts of 0 and 1, unless they ran at once.
        rows = chat_rows(sock, tmp, "--warm", "--seed", "7")
        check(all(int(x["cached_tokens"]) >= 96 for x in rows), "--warm: every turn hits")
        # Determinism: the same seed asks the same prompts and gets the same greedy replies, so
        # the second time every prompt is cached but for its last (partial) block.
        again = chat_rows(sock, tmp, "--seed", "7")
        key = lambda x: (x["conversation"], x["turn"])  # noqa: E731
        check(sorted((key(x), x["prompt_tokens"]) for x in again)
              == sorted((key(x), x["prompt_tokens"]) for x in rows), "same prompts, same seed")
        check(all(int(x["cached_tokens"]) >= int(x["prompt_tokens"]) - 16 for x in again),
              "same seed again: all cached: %r" % again)
        # --prefix-seed: new turns on the system prompts of seed 7 hit those from turn 1 on,
        # but not the old conversations (turn 1's prompt shares only the system prompt).
        fresh = chat_rows(sock, tmp, "--seed", "8", "--prefix-seed", "7")
        check(all(96 <= int(x["cached_tokens"]) for x in fresh), "--prefix-seed: hits")
        check(all(int(x["cached_tokens"]) <= 97 for x in fresh if x["turn"] == "1"),
              "--prefix-seed: new turns: %r" % fresh)
    with_daemon(body)


def case_chat_think():
    """--think-ms: each client pauses after a reply (the run takes at least the pauses), and in
    the pause the reply's history is recomputed and published (exact history), so every later
    turn finds all of its history cached but the new user tokens' blocks."""
    def body(sock, tmp):
        c = os.path.join(tmp, "think.csv")
        j = os.path.join(tmp, "think.json")
        t0 = time.monotonic()
        bench(sock, "--workload", "chat", "--csv", c, "--json", j, "--quiet", "--clients", "1",
              "--systems", "1", "--conversations", "1", "--turns", "4", "--system-tokens", "64",
              "--user-tokens", "20", "--reply-tokens", "24", "--think-ms", "300")
        check(time.monotonic() - t0 >= 4 * 0.3, "4 pauses of 300 ms")
        rows = read_csv(c)
        check(len(rows) == 4, "4 turns: %r" % rows)
        for x in rows:
            if int(x["turn"]) > 1:
                # All but the last partial block and the 20 new tokens: the reply is cached.
                check(int(x["cached_tokens"]) >= int(x["prompt_tokens"]) - 20 - 16,
                      "turn %s: reply cached after the pause: %r" % (x["turn"], x))
        doc = json.load(open(j))
        check('"think_ms": 300' in json.dumps(doc), "think_ms in the JSON parameters")
        r = bench(sock, "--think-ms", "-1", expect=2)
        check("--think-ms" in r.stderr, "bad --think-ms: %r" % r.stderr)
    with_daemon(body)


def case_chat_nocache():
    """--no-cache: nothing is ever cached, the prompts grow turn by turn all the same."""
    def body(sock, tmp):
        rows = chat_rows(sock, tmp, "--runs", "2")
        check(len(rows) == 24, "2 runs x 12 requests")
        check(all(x["cached_tokens"] == "0" for x in rows), "--no-cache: no hits")
        t1 = [int(x["prompt_tokens"]) for x in rows if x["turn"] == "1"]
        t3 = [int(x["prompt_tokens"]) for x in rows if x["turn"] == "3"]
        check(set(t1) == {117} and min(t3) > 117 + 2 * 20, "history resent: %r %r" % (t1, t3))
    with_daemon(body, "--no-cache")


def case_unique():
    """The control workload shares nothing, even run after run and beside a chat."""
    def body(sock, tmp):
        c = os.path.join(tmp, "u.csv")
        bench(sock, "--workload", "chat,unique", "--runs", "2", "--csv", c, "--quiet", *SMALL)
        bench(sock, "--workload", "unique", "--seed", "9", "--csv", c, "--append", "--quiet",
              *SMALL)
        rows = [x for x in read_csv(c) if x["workload"] == "unique"]
        check(len(rows) == 18, "3 runs x 6 unique requests, appended: %d" % len(rows))
        check(all(x["cached_tokens"] == "0" for x in rows), "unique: no hits: %r"
              % [x for x in rows if x["cached_tokens"] != "0"])
    with_daemon(body)


def case_disk_restart():
    """The disk tier: a RAM budget for a few blocks spills to disk, turns still hit; after a
    restart on the same dir, new conversations on the same system prompts hit from disk."""
    tmp = tempfile.mkdtemp(prefix="prefixd-bench-")
    disk = os.path.join(tmp, "disk")
    os.mkdir(disk)
    # 20 blocks of 16 tokens (1,280 K/V bytes a token in f32): the 2 system prompts and the 4
    # conversations' histories take 32.
    opts = ("--cache-mem", str(20 * 16 * 1280), "--kv-type", "f32", "--disk-dir", disk)
    try:
        d = Daemon(tmp, *opts)
        try:
            rows = chat_rows(d.sock, tmp, "--warm", "--clients", "1")
        finally:
            d.stop()
        check(all(int(x["cached_tokens"]) >= 96 for x in rows), "spilling: every turn hits")
        check(any(int(x["cached_tokens_disk"]) > 0 for x in rows), "spilling: some from disk")
        d = Daemon(tmp, *opts)
        try:
            rows = chat_rows(d.sock, tmp, "--seed", "1001", "--prefix-seed", "1")
        finally:
            d.stop()
        t1 = [x for x in rows if x["turn"] == "1"]
        check(all(int(x["cached_tokens"]) >= 96 for x in rows), "restart: every turn hits")
        check(any(int(x["cached_tokens_disk"]) >= 96 for x in t1),
              "restart: system prompts from disk: %r" % t1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def case_bad_params():
    """Bad parameters: a clear message naming the option, exit 2 (before or after connecting)."""
    def body(sock, tmp):
        for args, want in [
            (["--clients", "0"], "--clients"),
            (["--turns", "x"], "--turns"),
            (["--workload", "chat,nope"], "unknown workload 'nope'"),
            (["--workload", "chat,chat"], "named twice"),
            (["--lengths", "100,,abc"], "--lengths"),
            (["--reply-tokens", "0"], "--reply-tokens"),
            (["--label", "a,b"], "--label"),
            (["--append"], "--append needs --csv"),
            (["--bogus"], "usage"),
            (["extra"], "unexpected argument"),
            (["--system-tokens", "600"], "do not fit the model's context of 512"),
            (["--workload", "fewshot", "--system-tokens", "480"], "fewshot"),
            (["--workload", "sweep", "--lengths", "30", "--user-tokens", "40"], "length 30"),
        ]:
            r = bench(sock, *args, expect=2)
            check(want in r.stderr, "bench %s: stderr %r lacks %r" % (args, r.stderr, want))
            check(r.stdout == "", "bench %s: nothing on stdout" % args)
        r = bench(sock, "--help")
        check("--workload" in r.stdout, "--help")
        r = bench(os.path.join(tmp, "nobody.sock"), expect=1)
        check("cannot connect" in r.stderr, "no daemon: %r" % r.stderr)
        r = bench(sock, "--csv", os.path.join(tmp, "no", "such", "dir.csv"), "--system-tokens",
                  "16", "--turns", "1", "--quiet", expect=1)
        check("--csv" in r.stderr, "unwritable CSV: %r" % r.stderr)
        # --append to a CSV of other columns (an older prefixctl's): refused before the bench.
        old = os.path.join(tmp, "old.csv")
        with open(old, "w") as f:
            f.write(",".join(COLUMNS[:-1]) + "\n")
        r = bench(sock, "--csv", old, "--append", "--system-tokens", "16", "--turns", "1",
                  expect=1)
        check("other columns" in r.stderr and r.stdout == "", "old CSV: %r" % r.stderr)
        check(open(old).read() == ",".join(COLUMNS[:-1]) + "\n", "old CSV left as it was")
    with_daemon(body)


def pid_gone(pid):
    """True if process pid has ended (a zombie has ended too: only its entry is left)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def hog_pids(line):
    # "hog: 1 busy loop, pids 123 456"
    return [int(x) for x in line.split("pids", 1)[1].split()]


def case_engine_hog():
    """bench_engine --hog N (issue 11): bad counts are refused with exit 2 naming the option;
    a run prints both halves (idle, N busy loops) and leaves no busy loop behind, whether it
    ends normally or by SIGTERM in the middle of its busy half."""
    engine = os.environ.get("BENCH_ENGINE")
    check(engine and os.access(engine, os.X_OK), "BENCH_ENGINE=%r: not an executable" % engine)
    for bad in (["--hog", "17"], ["--hog", "-1"], ["--hog", "x"], ["--hog", "2x"], ["--hog"]):
        r = subprocess.run([engine] + bad, capture_output=True, text=True, timeout=30)
        check(r.returncode == 2 and "--hog" in r.stderr and "0..16" in r.stderr,
              "bench_engine %s: exit %d, stderr %r" % (" ".join(bad), r.returncode, r.stderr))
    tmp = tempfile.mkdtemp()
    # A tiny model (fast in the sanitizer build too), of context 1024: the decode figures run
    # at positions 512.. after a 512-token prefill.
    tiny = os.path.join(tmp, "tiny.bin")
    subprocess.run([PREFIXD, "synth", "--shape", "64,128,2,2,2,512,1024", "-o", tiny], check=True,
                   capture_output=True, timeout=60)
    s260 = os.path.join(MODELS, "stories260K.bin")

    r = subprocess.run([engine, "--hog", "2", "--runs", "1", "--model", tiny, "--small", s260],
                       capture_output=True, text=True, timeout=120)
    check(r.returncode == 0, "bench_engine --hog 2: exit %d\n%s" % (r.returncode, r.stderr))
    check("| 2 hogs, 1 thread | 2 hogs, 2 threads |" in r.stdout, "no hog columns:\n" + r.stdout)
    for row in ("prefill 512", "decode batch 1", "decode batch 8", "stories260K decode"):
        check(any(row in line and line.count("tokens/s") == 4 for line in r.stdout.splitlines()),
              "row %r with 4 figures missing:\n%s" % (row, r.stdout))
    check("run-to-run spread" in r.stdout, "no spread line:\n" + r.stdout)
    pids = [p for line in r.stderr.splitlines() if line.startswith("hog:") for p in hog_pids(line)]
    check(len(pids) == 2, "hog pids in stderr: %r" % r.stderr)
    check(all(pid_gone(p) for p in pids), "busy loops left running after exit: %r" % pids)

    # SIGTERM while the busy loops run (run 1 measures idle first, then busy; bench_engine
    # prints the pids, then lets the loops settle for 200 ms before it measures).
    p = subprocess.Popen([engine, "--hog", "1", "--runs", "1", "--model", tiny, "--small", s260],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        pids = []
        for line in p.stderr:
            if line.startswith("hog:"):
                pids = hog_pids(line)
                break
        check(pids, "no 'hog:' line before the end")
        check(not pid_gone(pids[0]), "the busy loop is not running during the busy half")
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    check(rc == -signal.SIGTERM, "bench_engine after SIGTERM: exit %r, expected -15" % rc)
    for _ in range(50):
        if all(pid_gone(x) for x in pids):
            break
        time.sleep(0.1)
    check(all(pid_gone(x) for x in pids), "busy loops left running after SIGTERM: %r" % pids)


def main():
    if CASE == "--list":  # ctest's list of cases (tests/CMakeLists.txt, prefixd_test_cases)
        print("\n".join(k[5:] for k in globals() if k.startswith("case_")))
        return 0
    fn = globals().get("case_" + CASE)
    if not fn:
        print("unknown case %r" % CASE)
        return 2
    try:
        with daemon.scratch("prefixd-bench-%s-" % CASE):
            fn()
    except AssertionError as e:
        print("FAIL %s: %s" % (CASE, e))
        print("0 passed, 1 failed")
        return 1
    print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
