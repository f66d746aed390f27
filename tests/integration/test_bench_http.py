#!/usr/bin/env python3
"""Integration tests of `prefixctl bench --http`: the bench's workloads over the OpenAI-compatible
API of a real `prefixd serve --http 127.0.0.1:0` (stories260K), and over a fake llama-server that
frames its answers awkwardly (one-byte chunks, a closed keep-alive connection, timings instead of
usage), so the client's HTTP reader is tested on what prefixd itself never sends.

usage: test_bench_http.py PREFIXD PREFIXCTL MODELS_DIR CASE
       test_bench_http.py PREFIXD PREFIXCTL MODELS_DIR --list   (the cases: the case_* functions)
Each case starts its own daemon; exit 0 and "1 passed, 0 failed" on success.
"""

import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

PREFIXD, PREFIXCTL, MODELS, CASE = sys.argv[1:5]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402
MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.bin")
NUMBERS = ["run", "seed", "client", "conversation", "turn", "prompt_tokens", "cached_tokens",
           "cached_tokens_disk", "ttft_ms", "server_ttft_ms", "prefill_ms", "new_tokens",
           "total_ms"]
COLUMNS = ["workload", "label"] + NUMBERS + ["transport"]
# The small chat of test_bench.py: 2 system prompts of 96 tokens, 4 conversations, 2 clients.
SMALL = ["--clients", "2", "--systems", "2", "--system-tokens", "96", "--conversations", "4",
         "--turns", "3", "--user-tokens", "20", "--reply-tokens", "8", "--requests", "6",
         "--lengths", "64,200"]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Daemon(daemon.Daemon):
    """stories260K, RAM only, with the HTTP API on 127.0.0.1 (a free port, read from the log)."""

    def __init__(self, *extra):
        super().__init__(PREFIXD, MODEL, TOK, "--disk-dir", "none", "--http", "127.0.0.1:0",
                         *extra, log_level="info")
        self.base = None
        for _ in range(200):
            for line in self.logtext().splitlines():
                if "HTTP API on " in line:
                    self.base = line.split("HTTP API on ")[1].split()[0]
            if self.base:
                break
            time.sleep(0.05)
        check(self.base, "no 'HTTP API on' line in the log: %s" % self.logtext())


def run(args, expect=0):
    r = subprocess.run([PREFIXCTL] + args, capture_output=True, text=True, timeout=120)
    check(r.returncode == expect, "prefixctl %s: exit %d, expected %d\nstdout: %s\nstderr: %s"
          % (" ".join(args), r.returncode, expect, r.stdout, r.stderr))
    return r


def bench_http(url, *args, expect=0):
    return run(["bench", "--http", url] + list(args), expect=expect)


def read_csv(path, transport):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    check(rows and rows[0] == COLUMNS, "CSV header: %r" % (rows[:1],))
    out = [dict(zip(COLUMNS, r)) for r in rows[1:]]
    for r in out:
        check(len(r) == len(COLUMNS), "CSV row: %r" % r)
        for k in NUMBERS:
            float(r[k])
        check(r["transport"] == transport, "transport %r: %r" % (transport, r))
        check(float(r["ttft_ms"]) > 0, "TTFT > 0: %r" % r)
        check(float(r["ttft_ms"]) <= float(r["total_ms"]), "TTFT <= total: %r" % r)
        check(int(r["cached_tokens"]) <= int(r["prompt_tokens"]), "cached <= prompt: %r" % r)
    return out


def case_http_outputs():
    """All four workloads over --http: one CSV row per request marked http, the JSON says
    http, a chat's later turns hit (the second turn of each conversation), the control never,
    and prefixd's own server-side TTFT comes through."""
    d = Daemon()
    try:
        c, j = os.path.join(d.tmp, "h.csv"), os.path.join(d.tmp, "h.json")
        r = bench_http(d.base, "--workload", "chat,fewshot,unique,sweep", "--label", "http",
                       "--csv", c, "--json", j, *SMALL)
        rows = read_csv(c, "http")
        by = {w: [x for x in rows if x["workload"] == w] for w in ("chat", "fewshot", "unique",
                                                                  "sweep")}
        check({k: len(v) for k, v in by.items()}
              == {"chat": 12, "fewshot": 6, "unique": 6, "sweep": 4},
              "rows per workload: %r" % {k: len(v) for k, v in by.items()})
        check({x["client"] for x in by["chat"]} == {"0", "1"}, "two clients")
        for x in by["chat"]:
            if x["turn"] == "1":
                check(int(x["prompt_tokens"]) == 117, "turn 1 prompt: BOS + 96 + 20: %r" % x)
            else:
                # The system prompt and at least the earlier user turn, whole blocks.
                check(int(x["cached_tokens"]) >= 96, "a later turn hits: %r" % x)
            check(int(x["new_tokens"]) == 8, "8 new tokens: %r" % x)
            check(0 < float(x["server_ttft_ms"]) <= float(x["ttft_ms"]) + 1,
                  "prefixd's TTFT within the client's: %r" % x)
        check(all(x["cached_tokens"] == "0" for x in by["unique"]), "unique: no hits")
        for x in by["sweep"]:
            cached = int(x["cached_tokens"])
            check(cached == 0 if x["turn"] == "1" else cached >= int(x["prompt_tokens"]) - 36,
                  "sweep steps: %r" % x)
        doc = json.load(open(j))
        check(doc["transport"] == "http" and doc["url"] == d.base, "JSON transport: %r"
              % {k: doc.get(k) for k in ("transport", "url")})
        check(doc["server"]["seq_len"] == 512 and doc["server"]["vocab_size"] == 512,
              "model figures over HTTP (vocab found with /detokenize): %r" % doc["server"])
        check(doc["server"]["model"] == "stories260K.bin", "model name: %r" % doc["server"])
        ws = {w["workload"]: w for w in doc["workloads"]}
        check(all(w["transport"] == "http" for w in ws.values()), "transport per workload")
        t2 = ws["chat"]["by_turn"][1]
        check(t2["turn"] == 2 and t2["cached_tokens_mean"] >= 96, "turn 2 hits: %r" % t2)
        check(ws["fewshot"]["hit_ratio"] > 0.5 and ws["unique"]["hit_ratio"] == 0, "hit ratios")
        check("chat" in r.stdout and r.stderr == "", "summary, quiet stderr: %r" % r.stderr)
    finally:
        d.stop()


def case_http_same_as_socket():
    """The same daemon, both transports (separate namespaces, so both start cold): with
    --synthetic-replies the socket bench sends the very prompts --http sends, and finds the very
    same cached share, turn by turn."""
    d = Daemon()
    try:
        h, s = os.path.join(d.tmp, "h.csv"), os.path.join(d.tmp, "s.csv")
        bench_http(d.base, "--csv", h, "--quiet", "--clients", "1", *SMALL[2:])
        run(["--socket", d.sock, "bench", "--synthetic-replies", "--csv", s, "--quiet",
             "--clients", "1", *SMALL[2:]])
        key = lambda x: (x["conversation"], x["turn"])  # noqa: E731
        hr = {key(x): (x["prompt_tokens"], x["cached_tokens"]) for x in read_csv(h, "http")}
        sr = {key(x): (x["prompt_tokens"], x["cached_tokens"]) for x in read_csv(s, "socket")}
        check(len(hr) == 12 and hr == sr, "same prompts, same hits:\nhttp %r\nsocket %r"
              % (sorted(hr.items()), sorted(sr.items())))
    finally:
        d.stop()


def case_http_api_key():
    """--api-key: the bearer token the daemon's --api-key-file asks for; without it, exit 1
    with the server's message and a hint."""
    d = None
    keyfile = os.path.join(tempfile.mkdtemp(), "keys")
    with open(keyfile, "w") as f:
        f.write("sk-bench-1 bench\n")
    os.chmod(keyfile, 0o600)
    try:
        d = Daemon("--api-key-file", keyfile)
        r = bench_http(d.base, "--turns", "1", "--system-tokens", "32", "--quiet", expect=1)
        check("401" in r.stderr and "--api-key" in r.stderr, "no key: %r" % r.stderr)
        r = bench_http(d.base, "--api-key", "sk-wrong", "--turns", "1", "--quiet", expect=1)
        check("401" in r.stderr, "a wrong key: %r" % r.stderr)
        c = os.path.join(d.tmp, "k.csv")
        bench_http(d.base, "--api-key", "sk-bench-1", "--turns", "2", "--system-tokens", "32",
                   "--csv", c, "--quiet")
        rows = read_csv(c, "http")
        check(len(rows) == 2 and int(rows[1]["cached_tokens"]) >= 32, "with the key: %r" % rows)
    finally:
        if d:
            d.stop()


def case_http_bad_params():
    """Bad parameters exit 2 with a message naming the problem; an unreachable server exits 1
    naming the URL."""
    d = Daemon()
    try:
        for args, want in [
            (["--http", "ftp://127.0.0.1:1"], "http://HOST:PORT"),
            (["--http", "https://127.0.0.1:1"], "https is not supported"),
            (["--http", "http://127.0.0.1:99999"], "port"),
            (["--http", "http://:80"], "no host"),
            (["--http", "http://127.0.0.1:80x"], "unexpected 'x'"),
            (["--http", "unix:relative"], "unix:/absolute/path"),
            (["--api-key", "k"], "--api-key needs --http"),
            (["--http", d.base, "--socket", d.sock], "not both"),
            (["--http", d.base, "--system-tokens", "600"],
             "do not fit the model's context of 512"),
            (["--http", d.base, "--turns", "0"], "--turns"),
            (["--http", d.base, "--workload", "nope"], "unknown workload"),
        ]:
            r = run(["bench"] + args, expect=2)
            check(want in r.stderr, "bench %s: stderr %r lacks %r" % (args, r.stderr, want))
            check(r.stdout == "", "bench %s: nothing on stdout" % args)
        # A port nobody listens on (taken, then released).
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        url = "http://127.0.0.1:%d" % port
        r = run(["bench", "--http", url], expect=1)
        check(url in r.stderr and "cannot connect" in r.stderr, "no server: %r" % r.stderr)
        r = run(["bench", "--help"])
        check("--http URL" in r.stdout and "--api-key" in r.stdout, "--help")
    finally:
        d.stop()


class FakeLlamaServer:
    """A llama-server stand-in on 127.0.0.1: /v1/models with meta (n_vocab, n_ctx_train), /props
    (the slot's n_ctx), and streaming /v1/completions sent in one-byte chunks (CRLF and LF event
    ends, a comment line) whose last event has
    timings and no usage, as llama-server's does. It closes the connection after every second
    answer without a word, as an idle timeout would, so the client must reopen it; and it
    counts connections and requests."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.url = "http://127.0.0.1:%d/v1" % self.ls.getsockname()[1]
        self.conns = self.requests = 0
        self.bodies, self.auth = [], []
        self.cache = []  # the last prompt, as a one-slot llama-server keeps it
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        f = c.makefile("rb")
        served = 0
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers = {}
                while True:
                    h = f.readline().decode().strip()
                    if not h:
                        break
                    k, v = h.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = f.read(int(headers.get("content-length", "0")))
                with self.lock:
                    self.requests += 1
                    self.auth.append(headers.get("authorization"))
                served += 1
                # Every second answer says nothing of closing, then closes (an idle timeout),
                # so the client's next request finds the connection gone.
                silent_close = served % 2 == 0
                close = False
                if path == "/v1/models":
                    self.reply(c, close, {"object": "list", "data": [
                        {"id": "fake.gguf", "object": "model",
                         "meta": {"n_vocab": 300, "n_ctx_train": 4096}}]})
                elif path == "/props":
                    self.reply(c, close, {"default_generation_settings": {"n_ctx": 400}})
                elif path == "/v1/completions":
                    self.complete(c, close, json.loads(body))
                else:
                    self.reply(c, close, {"error": {"message": "no " + path}}, 404)
                if silent_close:
                    time.sleep(0.05)
                    return
        finally:
            c.close()

    def reply(self, c, close, obj, status=200):
        b = json.dumps(obj).encode()
        c.sendall(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"%s\r\n" % (status, len(b), b"Connection: close\r\n" if close else b"") + b)

    def complete(self, c, close, req):
        ids = req["prompt"]
        with self.lock:
            self.bodies.append(req)
            common = 0
            while common < min(len(ids), len(self.cache)) and ids[common] == self.cache[common]:
                common += 1
            self.cache = list(ids)
        n = req["max_tokens"]
        events = [": a comment\n\n"]
        for i in range(n):
            events.append("data: %s\r\n\r\n" % json.dumps(
                {"object": "text_completion", "choices": [{"index": 0, "text": " w%d" % i,
                                                           "finish_reason": None}]}))
        events.append("data: %s\n\n" % json.dumps(
            {"object": "text_completion", "choices": [{"index": 0, "text": "",
                                                       "finish_reason": "length"}],
             "timings": {"prompt_n": len(ids) - common, "prompt_ms": 1.5, "predicted_n": n}}))
        events.append("data: [DONE]\n\n")
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                  b"Transfer-Encoding: chunked\r\n%s\r\n"
                  % (b"Connection: close\r\n" if close else b""))
        for b in "".join(events).encode():
            c.sendall(b"1\r\n%c\r\n" % b)
        c.sendall(b"0\r\n\r\n")


def case_http_fake_llama_server():
    """Against a llama-server stand-in: the vocabulary and context from /v1/models and /props,
    the cached share from timings.prompt_n, one-byte chunks reassembled, keep-alive used and a
    closed connection reopened, the key sent, the same ids as the socket bench's prompts."""
    srv = FakeLlamaServer()
    tmp = tempfile.mkdtemp()
    c, j = os.path.join(tmp, "f.csv"), os.path.join(tmp, "f.json")
    try:
        bench_http(srv.url, "--api-key", "sk-x", "--clients", "1", "--turns", "3",
                   "--system-tokens", "64", "--user-tokens", "10", "--reply-tokens", "5",
                   "--csv", c, "--json", j, "--quiet")
        rows = read_csv(c, "http")
        check([int(x["prompt_tokens"]) for x in rows] == [75, 90, 105], "prompts grow: %r" % rows)
        # Turn 2 resends turn 1's prompt and adds a reply and a user turn: 75 cached.
        check([int(x["cached_tokens"]) for x in rows] == [0, 75, 90], "cached: %r" % rows)
        check(all(x["new_tokens"] == "5" and float(x["prefill_ms"]) == 1.5 for x in rows),
              "timings: %r" % rows)
        check(all(x["server_ttft_ms"] == "-1.000" for x in rows), "no server TTFT: %r" % rows)
        doc = json.load(open(j))
        check(doc["server"]["vocab_size"] == 300 and doc["server"]["seq_len"] == 400
              and doc["server"]["model"] == "fake.gguf", "model figures: %r" % doc["server"])
        for b in srv.bodies:
            check(b["stream"] is True and b["max_tokens"] == 5 and b["prompt"][0] == 1
                  and all(3 <= t < 300 for t in b["prompt"][1:]), "request body: %r" % b)
        # /v1/models, /props, 3 completions: 5 requests on 3 connections (two closed under the
        # client, after /props and after the second completion).
        check(srv.requests == 5 and srv.conns == 3, "keep-alive: %d requests on %d connections"
              % (srv.requests, srv.conns))
        check(srv.auth == ["Bearer sk-x"] * 5, "Authorization: %r" % srv.auth)
    finally:
        srv.ls.close()


if __name__ == "__main__":
    daemon.run_cases(daemon.cases_of(globals()), CASE, "prefixd-bench-http-")
