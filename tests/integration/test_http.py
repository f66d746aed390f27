#!/usr/bin/env python3
"""Integration tests of the OpenAI-compatible HTTP API: a real `prefixd serve --http` with
stories260K, driven by curl, by raw sockets and by the official `openai` Node.js package.

usage: test_http.py PREFIXD MODELS_DIR CLIENT_DIR NPM_DIR CASE
       test_http.py PREFIXD MODELS_DIR CLIENT_DIR NPM_DIR --list   (the case_* functions)
The `openai` package is installed once into NPM_DIR (build/npm) from the npm registry with
`npm install --no-audit --no-fund openai@4`; if npm or the registry cannot be reached, the cases
that need it fail saying so (they never skip).
"""

import fcntl
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

PREFIXD, MODELS, CLIENT_DIR, NPM_DIR, CASE = sys.argv[1:6]
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, CLIENT_DIR)
sys.path.insert(0, HERE)
import daemon  # noqa: E402
import prefixd  # noqa: E402

MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.bin")
SYSTEM = ("You are a kind storyteller. You tell short stories about a little girl named Lily, "
          "her dog Max and their friends in the big green park near the river.")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Daemon(daemon.Daemon):
    """A daemon with the HTTP API on 127.0.0.1 (any free port) unless the test names --http."""

    def __init__(self, *extra, tmp=None):
        tmp = tmp or tempfile.mkdtemp(prefix="prefixd-http-")
        extra = list(extra)
        if "--disk-dir" not in extra:
            extra = ["--disk-dir", "none"] + extra
        if "--http" not in extra:
            extra = ["--http", "127.0.0.1:0"] + extra
        super().__init__(PREFIXD, MODEL, TOK, *extra, tmp=tmp)
        self.base = None
        for _ in range(200):
            for line in self.logtext().splitlines():
                if "HTTP API on " in line:
                    self.base = line.split("HTTP API on ")[1].split()[0]
            if self.base:
                break
            time.sleep(0.05)
        check(self.base, "no 'HTTP API on' line in the log: %s" % self.logtext())

    def stop(self, sig=signal.SIGTERM):
        """Stops the daemon: it must exit 0 with no sanitizer report (a leak or an error under
        the ASan build shows here)."""
        rc = super().stop(sig)
        log = self.logtext()
        check(rc == 0 and "Sanitizer" not in log and "runtime error" not in log,
              "daemon exit %s:\n%s" % (rc, log[-3000:]))
        return rc

    def url(self, path=""):
        return self.base + path


def fetch(base, method, path, body=None, headers=None, timeout=30):
    """One request on a new connection: (status, headers with lower-case names, body bytes)."""
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    data = json.dumps(body) if isinstance(body, (dict, list)) else body
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    c.request(method, path, body=data, headers=hdrs)
    r = c.getresponse()
    raw = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, raw


def post(d, path, body, **kw):
    status, hdrs, raw = fetch(d.base, "POST", path, body, **kw)
    return status, hdrs, json.loads(raw) if raw else None


def raw_exchange(d, data, timeout=5):
    """Sends raw bytes on a TCP connection; returns everything read until the daemon closes."""
    u = urllib.parse.urlparse(d.base)
    s = socket.create_connection((u.hostname, u.port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        out += b"<timeout>"
    s.close()
    return out


def curl(*args, timeout=60):
    r = subprocess.run(["curl", "-sS"] + list(args), capture_output=True, timeout=timeout)
    check(r.returncode == 0, "curl %s: exit %d: %s" % (args, r.returncode, r.stderr.decode()))
    return r.stdout.decode()


def sse_events(text):
    """The data: payloads of an event stream, in order."""
    events = []
    for block in text.split("\n\n"):
        block = block.strip("\r\n")
        if not block:
            continue
        check(block.startswith("data: "), "not an SSE data line: %r" % block[:200])
        events.append(block[6:])
    return events


def err_of(body):
    check(isinstance(body, dict) and "error" in body, "not an OpenAI error: %r" % (body,))
    e = body["error"]
    for k in ("message", "type", "param", "code"):
        check(k in e, "error object without %r: %r" % (k, e))
    return e


def native_text(d, prompt, n):
    with prefixd.Client(d.sock) as c:
        return c.generate(prompt, max_new=n, temp=0)["text"]


def native_stats(d):
    with prefixd.Client(d.sock) as c:
        return c.stats()


# ---- The openai Node.js package -----------------------------------------------------------------

def openai_modules():
    """NPM_DIR/node_modules with openai@4 in it, installed once (under a lock: cases run in
    parallel)."""
    os.makedirs(NPM_DIR, exist_ok=True)
    with open(os.path.join(NPM_DIR, ".install.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mods = os.path.join(NPM_DIR, "node_modules")
        if os.path.exists(os.path.join(mods, "openai", "package.json")):
            return mods
        for tool in ("node", "npm"):
            check(shutil.which(tool), "%s not found: run scripts/deps --test (the HTTP tests need "
                                      "Node.js and npm, and do not skip)" % tool)
        try:
            r = subprocess.run(["npm", "install", "--prefix", NPM_DIR, "--no-audit", "--no-fund",
                                "openai@4"], capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise AssertionError("npm install openai@4 timed out: is the npm registry reachable?")
        check(r.returncode == 0 and os.path.exists(os.path.join(mods, "openai")),
              "npm install openai@4 into %s failed (is the npm registry reachable?):\n%s\n%s"
              % (NPM_DIR, r.stdout[-2000:], r.stderr[-2000:]))
        return mods


def node(specs):
    env = dict(os.environ, NODE_PATH=openai_modules())
    r = subprocess.run(["node", os.path.join(HERE, "openai_client.js")], input=json.dumps(specs),
                       capture_output=True, text=True, timeout=180, env=env)
    check(r.returncode == 0, "node openai_client.js: exit %d: %s" % (r.returncode, r.stderr))
    return json.loads(r.stdout)


def op(d, kind, params, key=None, **kw):
    spec = {"base_url": d.url("/v1"), "op": kind, "params": params}
    if key:
        spec["api_key"] = key
    spec.update(kw)
    return spec


# ---- Cases --------------------------------------------------------------------------------------

def case_curl():
    """curl, not streaming and streaming: the text is the native socket's greedy text, the stream
    is OpenAI's event stream (role chunk, content chunks, finish, usage, [DONE])."""
    d = Daemon()
    try:
        want = native_text(d, "Once upon a time", 24)
        body = json.dumps({"model": "x", "prompt": "Once upon a time", "max_tokens": 24,
                           "temperature": 0})
        r = json.loads(curl(d.url("/v1/completions"), "-H", "Content-Type: application/json",
                            "-d", body))
        check(r["object"] == "text_completion" and r["choices"][0]["text"] == want,
              "completion %r, native %r" % (r, want))
        u = r["usage"]
        check(u["completion_tokens"] == 24 and u["total_tokens"] == u["prompt_tokens"] + 24 and
              r["choices"][0]["finish_reason"] == "length" and "cached_tokens" in
              u["prompt_tokens_details"] and r["prefixd"]["ttft_ms"] > 0, "usage: %r" % r)
        chat = {"messages": [{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": "Tell me a story."}],
                "max_tokens": 30, "temperature": 0}
        whole = json.loads(curl(d.url("/v1/chat/completions"), "-d", json.dumps(chat)))
        check(whole["object"] == "chat.completion" and
              whole["choices"][0]["message"]["role"] == "assistant", "chat: %r" % whole)
        # The plain role-prefixed rendering, as documented: the same text over the socket.
        prompt = "system: %s\nuser: Tell me a story.\nassistant:" % SYSTEM
        check(whole["choices"][0]["message"]["content"] == native_text(d, prompt, 30),
              "chat rendering differs from the documented one")
        chat.update(stream=True, stream_options={"include_usage": True})
        out = curl("-N", d.url("/v1/chat/completions"), "-d", json.dumps(chat))
        ev = sse_events(out)
        check(ev[-1] == "[DONE]", "stream does not end with [DONE]: %r" % ev[-3:])
        chunks = [json.loads(e) for e in ev[:-1]]
        check(all(c["object"] == "chat.completion.chunk" for c in chunks), "chunk objects")
        check(chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""},
              "first chunk: %r" % chunks[0])
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        check(text == whole["choices"][0]["message"]["content"],
              "streamed %r, whole %r" % (text, whole))
        check(len(chunks) >= 30, "one chunk per token: %d chunks" % len(chunks))
        check(chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-1]["choices"] == []
              and chunks[-1]["usage"]["completion_tokens"] == 30, "end: %r" % chunks[-2:])
        # Completions stream too; without include_usage there is no usage chunk.
        out = curl("-N", d.url("/v1/completions"), "-d", json.dumps(
            {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "stream": True}))
        ev = sse_events(out)
        chunks = [json.loads(e) for e in ev[:-1]]
        check("".join(c["choices"][0]["text"] for c in chunks) == want and
              all("usage" not in c for c in chunks), "completion stream: %r" % ev)
    finally:
        d.stop()


def case_openai_node():
    """The openai package: chat and completions, streaming and not; the second request sharing a
    prefix reports cached_tokens > 0."""
    d = Daemon()
    try:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello!"}]
        msgs2 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "A dog?"}]
        res = node([
            op(d, "chat", {"model": "stories260K", "messages": msgs, "max_tokens": 20,
                           "temperature": 0}),
            op(d, "chat", {"model": "stories260K", "messages": msgs2, "max_tokens": 20,
                           "temperature": 0}),
            op(d, "chat", {"model": "stories260K", "messages": msgs, "max_tokens": 20,
                           "temperature": 0, "stream": True,
                           "stream_options": {"include_usage": True}}),
            op(d, "completion", {"model": "stories260K", "prompt": "Once upon a time",
                                 "max_tokens": 16, "temperature": 0}),
            op(d, "completion", {"model": "stories260K", "prompt": "Once upon a time",
                                 "max_tokens": 16, "temperature": 0, "stream": True}),
            op(d, "completion", {"model": "stories260K", "prompt": [1, 403, 407, 261],
                                 "max_tokens": 8, "temperature": 0}),
        ])
        for i, r in enumerate(res):
            check(r["ok"], "operation %d failed: %r" % (i, r))
        first, second, streamed, comp, comp_stream, by_ids = res
        check(first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0,
              "first request found a cache hit: %r" % first["usage"])
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        check(0 < cached < second["usage"]["prompt_tokens"], "second request sharing the system prompt: "
              "cached_tokens %r" % second["usage"])
        check(streamed["text"] == first["text"] and streamed["finish_reason"] == "length" and
              streamed["usage"]["prompt_tokens_details"]["cached_tokens"] > 0 and
              streamed["objects"] == ["chat.completion.chunk"], "stream: %r" % streamed)
        want = native_text(d, "Once upon a time", 16)
        check(comp["text"] == want and comp_stream["text"] == want,
              "completions %r / %r, native %r" % (comp["text"], comp_stream["text"], want))
        check(by_ids["usage"]["prompt_tokens"] == 4 and by_ids["usage"]["completion_tokens"] == 8,
              "token-id prompt: %r" % by_ids)
    finally:
        d.stop()


def case_logprobs():
    """logprobs: completions' tokens / token_logprobs / top_logprobs / text_offset and chat's
    content entries, streamed and not, through curl and the openai package: the tokens spell the
    text, a greedy token is its position's most likely, alternatives are sorted, probabilities
    sum to at most 1, and the same prompt gives the same numbers every time."""
    d = Daemon()
    try:
        want = native_text(d, "Once upon a time", 12)
        body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "logprobs": 3}
        status, _, r = post(d, "/v1/completions", body)
        check(status == 200, "completion: %r" % r)
        c = r["choices"][0]
        lp = c["logprobs"]
        check(c["text"] == want and "".join(lp["tokens"]) == want, "tokens spell %r: %r" % (want, lp))
        check(len(lp["token_logprobs"]) == 12 and len(lp["top_logprobs"]) == 12 and
              len(lp["text_offset"]) == 12, "one entry per token: %r" % lp)
        off = 0
        for tok, x, top, o in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                  lp["text_offset"]):
            check(o == off, "text_offset %d, expected %d" % (o, off))
            off += len(tok.encode())
            check(x <= 0 and 1 <= len(top) <= 3, "logprob %r, top %r" % (x, top))
            check(abs(max(top.values()) - x) < 1e-6, "greedy token %r is not the most likely: "
                  "%r / %r" % (tok, x, top))
            check(sum(math.exp(v) for v in top.values()) <= 1 + 1e-5, "probabilities: %r" % top)
        status, _, again = post(d, "/v1/completions", body)
        check(again["choices"][0]["logprobs"] == lp, "the same prompt, the same logprobs")
        # Without logprobs: null, as before.
        status, _, r = post(d, "/v1/completions", {"prompt": "Once", "max_tokens": 2})
        check(r["choices"][0]["logprobs"] is None, "no logprobs unless asked: %r" % r)
        # Chat, streamed through curl: the entries' bytes spell the streamed content.
        chat = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 10,
                "temperature": 0, "logprobs": True, "top_logprobs": 2, "stream": True}
        ev = sse_events(curl("-N", d.url("/v1/chat/completions"), "-d", json.dumps(chat)))
        chunks = [json.loads(e) for e in ev[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        entries = [e for c in chunks if c["choices"][0]["logprobs"]
                   for e in c["choices"][0]["logprobs"]["content"]]
        check(len(entries) == 10, "10 entries: %r" % entries)
        check(bytes(b for e in entries for b in e["bytes"]).decode() == text,
              "bytes spell the content %r: %r" % (text, entries))
        for e in entries:
            tops = [t["logprob"] for t in e["top_logprobs"]]
            check(len(tops) == 2 and tops[0] >= tops[1] and abs(tops[0] - e["logprob"]) < 1e-6,
                  "entry: %r" % e)
        # The openai package, not streamed and streamed: the same entries.
        p = {"model": "m", "messages": chat["messages"], "max_tokens": 10, "temperature": 0,
             "logprobs": True, "top_logprobs": 2}
        res = node([op(d, "chat", p), op(d, "chat", dict(p, stream=True))])
        check(res[0]["ok"] and res[1]["ok"], "openai package: %r" % res)
        check(res[0]["text"] == text and res[0]["logprobs"]["content"] == entries and
              res[1]["logprobs"] == entries, "openai package logprobs: %r" % res)
    finally:
        d.stop()


def case_errors():
    """400 naming the field, malformed JSON, 404, 405, 413, malformed HTTP, 429 with Retry-After:
    each answered in OpenAI's shape, and the daemon keeps serving."""
    d = Daemon("--max-frame", "64K", "--max-conns-per-user", "3", "--hello-timeout", "120")
    try:
        for body, param in [({"prompt": "x", "n": 2}, "n"),
                            ({"prompt": "x", "temperature": 7}, "temperature"),
                            ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
                            ({"prompt": ["a", "b"]}, "prompt"),
                            ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
                            ({"prompt": "x", "logprobs": 21}, "logprobs"),
                            ({"prompt": "x", "logprobs": True}, "logprobs"),
                            ({"prompt": "x", "top_logprobs": 2}, "top_logprobs"),
                            ({"max_tokens": 3}, "prompt"),
                            ({"prompt": [1, 99999]}, "prompt")]:
            status, _, r = post(d, "/v1/completions", body)
            e = err_of(r)
            check(status == 400 and e["param"] == param and e["type"] == "invalid_request_error",
                  "%r: %d %r" % (body, status, r))
        status, _, r = post(d, "/v1/chat/completions",
                            {"messages": [{"role": "wizard", "content": "hi"}]})
        check(status == 400 and err_of(r)["param"] == "messages[0].role", "role: %r" % r)
        # A bad message after a good one (its list was leaked once: the ASan build's stop sees it).
        for bad, param in [({"role": "wizard", "content": "x"}, "messages[1].role"),
                           ({"role": "user", "content": 5}, "messages[1].content"),
                           ({"role": "user", "content": [{"type": "image"}]},
                            "messages[1].content")]:
            status, _, r = post(d, "/v1/chat/completions",
                                {"messages": [{"role": "user", "content": "hi"}, bad]})
            check(status == 400 and err_of(r)["param"] == param, "%r: %r" % (bad, r))
        for body, param in [({"logprobs": 2}, "logprobs"),
                            ({"top_logprobs": 2}, "top_logprobs"),
                            ({"logprobs": True, "top_logprobs": 21}, "top_logprobs")]:
            body["messages"] = [{"role": "user", "content": "hi"}]
            status, _, r = post(d, "/v1/chat/completions", body)
            check(status == 400 and err_of(r)["param"] == param, "chat %r: %r" % (body, r))
        status, _, r = post(d, "/v1/chat/completions", '{"messages": [')
        check(status == 400 and err_of(r)["code"] == "invalid_json", "bad JSON: %r" % r)
        status, _, r = post(d, "/v1/embeddings", {"input": "x"})
        check(status == 404 and err_of(r)["type"] == "not_found_error", "404: %r" % r)
        status, _, raw = fetch(d.base, "GET", "/v1/completions")
        check(status == 405, "GET on a POST route: %d %r" % (status, raw))
        status, _, r = post(d, "/v1/completions", {"prompt": "x" * 100000})
        check(status == 413 and "larger than the maximum" in err_of(r)["message"], "413: %r" % r)
        # Malformed HTTP: answered 400 and closed; then the daemon still serves.
        out = raw_exchange(d, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        check(out.startswith(b"HTTP/1.1 400 ") and b"malformed HTTP request" in out, repr(out))
        out = raw_exchange(d, b"\x00\x01\x02garbage\r\n\r\n")
        check(out.startswith(b"HTTP/1.1 400 "), repr(out))
        out = raw_exchange(d, b"POST /v1/completions HTTP/2.0\r\nContent-Length: 2\r\n\r\n{}")
        check(out.startswith(b"HTTP/1.1 505 "), repr(out))
        # 429: one connection more than --max-conns-per-user.
        u = urllib.parse.urlparse(d.base)
        held = [socket.create_connection((u.hostname, u.port)) for _ in range(3)]
        time.sleep(0.2)
        status, hdrs, r = post(d, "/v1/completions", {"prompt": "x"})
        check(status == 429 and hdrs.get("retry-after") == "1" and
              err_of(r)["type"] == "rate_limit_error", "429: %d %r %r" % (status, hdrs, r))
        res = node([op(d, "completion", {"model": "m", "prompt": "x", "max_tokens": 2})])
        check(not res[0]["ok"] and res[0]["status"] == 429 and res[0]["retry_after"] == "1",
              "openai package on 429: %r" % res)
        for s in held:
            s.close()
        time.sleep(0.2)
        # The openai package sees the 400s as APIError with the field.
        res = node([op(d, "chat", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                   "n": 3})])
        check(not res[0]["ok"] and res[0]["status"] == 400 and
              res[0]["error"]["param"] == "n", "openai package on 400: %r" % res)
        check(d.p.poll() is None and native_text(d, "Once", 4), "daemon still serves")
    finally:
        d.stop()


def case_api_keys():
    """--api-key-file: 401 without a key or with a wrong one; tenants never share blocks, keys of
    one tenant do; cache_salt separates within a tenant; a non-loopback address needs keys."""
    tmp = tempfile.mkdtemp(prefix="prefixd-keys-")
    keys = os.path.join(tmp, "keys")
    with open(keys, "w") as f:
        f.write("# key tenant\nsk-alice-1 alice\nsk-bob bob\n\nsk-alice-2 alice\nsk-lone\n")
    os.chmod(keys, 0o600)
    d = Daemon("--api-key-file", keys)
    try:
        chat = {"model": "m", "messages": [{"role": "system", "content": SYSTEM},
                                           {"role": "user", "content": "Hi"}],
                "max_tokens": 4, "temperature": 0}
        status, hdrs, r = post(d, "/v1/chat/completions", chat)
        check(status == 401 and err_of(r)["code"] == "invalid_api_key" and
              "missing API key" in r["error"]["message"], "no key: %d %r" % (status, r))
        status, _, raw = fetch(d.base, "GET", "/health")
        check(status == 200, "/health needs no key")
        res = node([
            op(d, "chat", chat, key="sk-wrong"),
            op(d, "chat", chat, key="sk-alice-1"),
            op(d, "chat", chat, key="sk-bob"),
            op(d, "chat", chat, key="sk-alice-2"),
            op(d, "chat", chat, key="sk-lone"),
            op(d, "chat", dict(chat, cache_salt="project-x"), key="sk-alice-1"),
            op(d, "chat", dict(chat, cache_salt="project-x"), key="sk-alice-2"),
        ])
        wrong, alice, bob, alice2, lone, salted, salted2 = res
        check(not wrong["ok"] and wrong["status"] == 401, "wrong key: %r" % wrong)

        def cached(r):
            check(r["ok"], "request failed: %r" % r)
            return r["usage"]["prompt_tokens_details"]["cached_tokens"]
        check(cached(alice) == 0, "alice's first request hit: %r" % alice)
        check(cached(bob) == 0, "bob shares alice's blocks: %r" % bob)
        check(cached(alice2) > 0, "alice's second key does not share her blocks: %r" % alice2)
        check(cached(lone) == 0, "a key without a tenant shares: %r" % lone)
        check(cached(salted) == 0 and cached(salted2) > 0,
              "cache_salt: %r %r" % (salted["usage"], salted2["usage"]))
        check(alice["text"] == bob["text"], "same greedy text across tenants")
        status, _, r = post(d, "/v1/completions", {"prompt": "x", "cache_salt": "no/slash"},
                            headers={"Authorization": "Bearer sk-bob"})
        check(status == 400 and err_of(r)["param"] == "cache_salt", "bad salt: %r" % r)
        log = d.logtext()
        check("sk-alice" not in log and "sk-lone" not in log, "a key shows in the log")
    finally:
        d.stop()
    # Non-loopback without keys: refused unless --http-insecure.
    r = subprocess.run([PREFIXD, "serve", "--model", MODEL, "--tokenizer", TOK, "--socket",
                        os.path.join(tmp, "x.sock"), "--disk-dir", "none", "--cache-mem", "16M",
                        "--http", "0.0.0.0:0"], capture_output=True, text=True, timeout=60)
    check(r.returncode == 2 and "--api-key-file" in r.stderr and "--http-insecure" in r.stderr,
          "non-loopback without keys: %d %s" % (r.returncode, r.stderr))
    d = Daemon("--http", "0.0.0.0:0", "--http-insecure", tmp=tmp)
    d.stop()
    r = subprocess.run([PREFIXD, "serve", "--model", MODEL, "--tokenizer", TOK, "--socket",
                        os.path.join(tmp, "y.sock"), "--disk-dir", "none", "--cache-mem", "16M",
                        "--http", "127.0.0.1:99999"], capture_output=True, text=True, timeout=60)
    check(r.returncode == 2 and "HOST:PORT" in r.stderr, "bad address: %s" % r.stderr)


def case_cancel_disconnect():
    """A client that disconnects mid-stream cancels its request: the engine sees the cancel
    (STATS requests_cancelled), with curl's and the openai package's disconnects."""
    d = Daemon()
    try:
        body = {"prompt": "Once upon a time", "max_tokens": 480, "temperature": 0.8,
                "stream": True}
        u = urllib.parse.urlparse(d.base)
        s = socket.create_connection((u.hostname, u.port), timeout=10)
        data = json.dumps(body).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(data) + data)
        got = b""
        while got.count(b"data: ") < 3:
            got += s.recv(4096)
        s.close()
        deadline = time.time() + 10
        while time.time() < deadline and native_stats(d).get("requests_cancelled", 0) < 1:
            time.sleep(0.05)
        st = native_stats(d)
        check(st["requests_cancelled"] == 1, "after a disconnect: %r" % st)
        res = node([op(d, "completion", body, abort_after=3)])
        check(res[0]["ok"] and res[0]["chunks"] == 3, "openai abort: %r" % res)
        deadline = time.time() + 10
        while time.time() < deadline and native_stats(d)["requests_cancelled"] < 2:
            time.sleep(0.05)
        st = native_stats(d)
        check(st["requests_cancelled"] == 2 and st["requests_running"] == 0,
              "after the openai package's abort: %r" % st)
        check("client gone: cancelling" in d.logtext(), "the log says why")
    finally:
        d.stop()


def case_unix_socket():
    """--http unix:PATH: HTTP over a Unix socket (curl --unix-socket), mode 0600, and the peer's
    uid is the namespace, shared with the native socket."""
    tmp = tempfile.mkdtemp(prefix="prefixd-hu-")
    path = os.path.join(tmp, "http.sock")
    d = Daemon("--http", "unix:" + path, tmp=tmp)
    try:
        for _ in range(100):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        check(oct(os.stat(path).st_mode & 0o777) == oct(0o600), "socket mode")
        prompt = SYSTEM + " Once upon a time"
        native_text(d, prompt, 4)
        r = json.loads(curl("--unix-socket", path, "http://x/v1/completions", "-d",
                            json.dumps({"prompt": prompt, "max_tokens": 4, "temperature": 0})))
        check(r["usage"]["prompt_tokens_details"]["cached_tokens"] > 0,
              "the native socket's blocks are not found over HTTP on a Unix socket: %r" % r)
        m = curl("--unix-socket", path, "http://x/metrics")
        check("prefixd_requests_total 2" in m, "the owner reads /metrics: %s" % m[:300])
    finally:
        d.stop()
    check(not os.path.exists(path), "the HTTP socket file is removed at exit")


def case_metrics_and_tokenize():
    """/metrics in the Prometheus text format; /tokenize and /detokenize; /v1/models; /health."""
    d = Daemon()
    try:
        for i in range(3):
            post(d, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4})
        status, hdrs, raw = fetch(d.base, "GET", "/metrics")
        text = raw.decode()
        check(status == 200 and hdrs["content-type"].startswith("text/plain; version=0.0.4"),
              "metrics head: %r" % hdrs)
        names = set()
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                names.add(name)
                check(kind in ("counter", "gauge", "histogram"), line)
                check((kind == "counter") == name.endswith("_total"), "counter name: %s" % line)
        for want in ("prefixd_requests_total", "prefixd_cached_tokens_total",
                     "prefixd_time_to_first_token_seconds", "prefixd_request_prefill_seconds"):
            check(want in names and "# HELP %s " % want in text, "no %s in %s" % (want, text))
        check('prefixd_kv_info{kv_type="f16",block_tokens="16"} 1\n' in text and
              "prefixd_cache_capacity_bytes " in text, "kv info: %s" % text)
        check("prefixd_requests_total 3\n" in text and
              'prefixd_time_to_first_token_seconds_bucket{le="+Inf"} 3\n' in text and
              "prefixd_time_to_first_token_seconds_count 3\n" in text, text)
        status, _, r = post(d, "/tokenize", {"prompt": "Once upon a time"})
        with prefixd.Client(d.sock) as c:
            ids = c.tokenize("Once upon a time")
        check(status == 200 and r["tokens"] == list(ids) and r["count"] == len(ids),
              "tokenize: %r vs %r" % (r, ids))
        status, _, r = post(d, "/detokenize", {"tokens": r["tokens"][1:]})
        check(status == 200 and r["prompt"].strip() == "Once upon a time", "detokenize: %r" % r)
        status, _, r = post(d, "/detokenize", {"tokens": [5, 100000]})
        check(status == 400 and err_of(r)["param"] == "tokens", "bad id: %r" % r)
        status, _, raw = fetch(d.base, "GET", "/v1/models")
        m = json.loads(raw)
        check(m["object"] == "list" and m["data"][0]["id"] == "stories260K.bin", "models: %r" % m)
        status, _, raw = fetch(d.base, "GET", "/health")
        check(status == 200 and json.loads(raw) == {"status": "ok"}, "health")
    finally:
        d.stop()


def case_stop_and_pipelining():
    """stop strings cut the text (streamed or not); two pipelined requests in one write are
    answered in order on one connection."""
    d = Daemon()
    try:
        base = {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}
        full = post(d, "/v1/completions", base)[2]["choices"][0]["text"]
        stop = full[10:14]
        cut = full[:full.index(stop)]
        r = post(d, "/v1/completions", dict(base, stop=[stop, "zzzz"]))[2]
        check(r["choices"][0]["text"] == cut and r["choices"][0]["finish_reason"] == "stop",
              "stop %r in %r: %r" % (stop, full, r))
        out = curl("-N", d.url("/v1/completions"), "-d", json.dumps(dict(base, stop=stop,
                                                                         stream=True)))
        chunks = [json.loads(e) for e in sse_events(out)[:-1]]
        check("".join(c["choices"][0]["text"] for c in chunks) == cut and
              chunks[-1]["choices"][0]["finish_reason"] == "stop", "streamed stop: %r" % out)
        one = json.dumps(dict(base, max_tokens=3)).encode()
        req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
               % len(one) + one)
        last = req.replace(b"Host: x", b"Host: x\r\nConnection: close")
        out = raw_exchange(d, req + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + last)
        check(out.count(b"HTTP/1.1 200 OK") == 3 and out.index(b"text_completion") <
              out.index(b'"status"') < out.rindex(b"text_completion"), "pipelined: %r" % out)
    finally:
        d.stop()


def case_timeouts():
    """--hello-timeout bounds the time to send a request (408), --idle-timeout a keep-alive
    connection with nothing to do."""
    d = Daemon("--hello-timeout", "1", "--idle-timeout", "2")
    try:
        t0 = time.time()
        out = raw_exchange(d, b"POST /v1/completions HTTP/1.1\r\nContent-Length: 10\r\n\r\n{",
                           timeout=10)
        check(out.startswith(b"HTTP/1.1 408 ") and time.time() - t0 < 5, "slow request: %r" % out)
        t0 = time.time()
        out = raw_exchange(d, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
        took = time.time() - t0
        check(out.startswith(b"HTTP/1.1 200 ") and 1.5 < took < 5,
              "idle keep-alive closed after %.1f s: %r" % (took, out))
    finally:
        d.stop()


if __name__ == "__main__":
    daemon.run_cases(daemon.cases_of(globals()), CASE, "prefixd-http-")
