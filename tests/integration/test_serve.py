#!/usr/bin/env python3
"""Integration tests: a real `prefixd serve` with stories260K on a temporary socket.

usage: test_serve.py PREFIXD MODELS_DIR CLIENT_DIR CASE
       test_serve.py PREFIXD MODELS_DIR CLIENT_DIR --list   (the cases: the case_* functions)
Each case starts its own daemon(s) and stops them; exit 0 and "1 passed, 0 failed" on success.
"""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

PREFIXD, MODELS, CLIENT_DIR, CASE = sys.argv[1:5]
sys.path.insert(0, CLIENT_DIR)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402
import prefixd  # noqa: E402

MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.bin")
GOLDEN = os.path.join(MODELS, "golden", "stories260K-greedy-bos.txt")


class Daemon(daemon.Daemon):
    """stories260K with its own disk tier in its folder, unless the test names a --disk-dir."""

    def __init__(self, *extra, sock=None, tmp=None):
        tmp = tmp or tempfile.mkdtemp(prefix="prefixd-it-")
        if "--disk-dir" not in extra:
            extra = ("--disk-dir", os.path.join(tmp, "disk")) + tuple(extra)
        super().__init__(PREFIXD, MODEL, TOK, *extra, sock=sock, tmp=tmp)

    def client(self, **kw):
        return prefixd.Client(self.sock, **kw)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def raw(sock_path, data, read=True, timeout=5):
    """Sends raw bytes after nothing (no HELLO); returns the frames read until close/timeout."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    s.sendall(data)
    frames, buf = [], bytearray()
    if read:
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while True:
                    f, n = prefixd.decode_frame(buf)
                    if not f:
                        break
                    del buf[:n]
                    frames.append(f)
        except socket.timeout:
            pass
    s.close()
    return frames


def prompts(n):
    base = ["Once upon a time", "Lily wanted to play", "The big dog ran to the park",
            "Tom had a red ball", "One day, a little bird"]
    return [base[i % len(base)] + (" and" * (i % 7)) + " %s" % ("then" if i % 2 else "so")
            for i in range(n)]


def case_golden():
    d = Daemon()
    try:
        with d.client() as c:
            r = c.generate("", max_new=255, temp=0)
        golden = open(GOLDEN, "rb").read()
        out = (r["text"] + "\n").encode()
        check(out[:len(golden) - 1] == golden[:-1],
              "socket output differs from the golden text:\n%r\n%r" % (out[:200], golden[:200]))
        check(len(r["tokens"]) == 255 and r["finish_reason"] == "length", "255 tokens")
    finally:
        d.stop()


def case_gguf():
    """The stories260K GGUF (llama.cpp's converter) served with --ctx 512: the golden text, and a
    repeated prompt served from the cache."""
    d = Daemon("--model", os.path.join(MODELS, "stories260K-f32.gguf"), "--ctx", "512")
    try:
        with d.client() as c:
            r = c.generate("", max_new=255, temp=0)
            golden = open(GOLDEN, "rb").read()
            out = (r["text"] + "\n").encode()
            check(out[:len(golden) - 1] == golden[:-1],
                  "GGUF socket output differs from the golden text:\n%r" % out[:200])
            p = "Once upon a time, there was a little girl named Lily. She loved to play outside."
            a = c.generate(p, max_new=20, temp=0)
            b = c.generate(p, max_new=20, temp=0)
            check(a["tokens"] == b["tokens"], "repeated prompt: same tokens")
            check(b["cached_tokens"] >= 16, "repeated prompt cached: %r" % b["cached_tokens"])
    finally:
        d.stop()


def expected_outputs(ps, max_new=24):
    d = Daemon("--no-cache")
    try:
        with d.client() as c:
            return [c.generate(p, max_new=max_new, temp=0)["tokens"] for p in ps]
    finally:
        d.stop()


def case_concurrent():
    ps = prompts(32)
    want = expected_outputs(ps)
    d = Daemon()
    got, errors = [None] * 32, []

    def worker(i):
        try:
            with d.client() as c:
                got[i] = c.generate(ps[i], max_new=24, temp=0)["tokens"]
        except Exception as e:  # noqa: BLE001
            errors.append("%d: %s" % (i, e))

    try:
        for rnd in range(2):  # the second round runs with the prefixes cached
            ts = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(120)
            check(not errors, "client errors: %s" % errors)
            for i in range(32):
                check(got[i] == want[i], "round %d client %d: %s != %s" % (rnd, i, got[i], want[i]))
        with d.client() as c:
            st = c.stats()
        check(st["cache_hit_blocks"] > 0 or st["cached_tokens"] >= 0, "stats")
    finally:
        d.stop()


def case_multiplex():
    ps = prompts(4)
    want = expected_outputs(ps, 20)
    d = Daemon()
    try:
        with d.client() as c:
            ids = [c.send_generate(p, max_new=20, temp=0) for p in ps]
            toks = {i: [] for i in ids}
            done = set()
            while len(done) < len(ids):
                f = c.read_frame()
                if f["type"] == prefixd.TOKEN:
                    toks[f["id"]].append(f["token"])
                elif f["type"] == prefixd.DONE:
                    done.add(f["id"])
                else:
                    raise AssertionError("unexpected frame %s" % f)
            for k, i in enumerate(ids):
                check(toks[i] == want[k], "multiplexed request %d differs" % k)
    finally:
        d.stop()


def case_cancel():
    d = Daemon()
    try:
        with d.client() as c:
            n = [0]

            def on_token(i, p):
                n[0] += 1
                return n[0] == 5

            r = c.generate("Once upon a time", max_new=400, temp=0, on_token=on_token)
            check(r["finish_reason"] == "cancelled", "finish %s" % r["finish_reason"])
            check(len(r["tokens"]) < 400, "cancel did not stop generation")
            r2 = c.generate("Once upon a time", max_new=5, temp=0)  # the connection lives on
            check(len(r2["tokens"]) == 5, "connection unusable after cancel")
        # Disconnect mid-stream: the daemon cancels the request and keeps serving.
        c = d.client()
        c.send_generate("Once upon a time", max_new=400, temp=0)
        c.read_frame()
        c.close()
        with d.client() as c2:
            check(len(c2.generate("Lily", max_new=5, temp=0)["tokens"]) == 5, "serving after disconnect")
            for _ in range(100):  # the disconnect reaches the engine asynchronously
                st = c2.stats()
                if st["requests_cancelled"] >= 2:
                    break
                time.sleep(0.1)
        check(st["requests_cancelled"] >= 2, "stats: %s" % st)
        # Many clients that vanish mid-stream: the daemon's writes to their closed sockets fail
        # (EPIPE) and must only close those connections, never end the daemon.
        for i in range(40):
            c = d.client()
            c.send_generate("Once upon a time", max_new=300, temp=0)
            c.read_frame()
            c.sock.shutdown(socket.SHUT_RDWR)
            c.close()
        check(d.p.poll() is None, "daemon died after disconnects:\n%s" % d.logtext()[-2000:])
        with d.client() as c2:
            check(len(c2.generate("Lily", max_new=5, temp=0)["tokens"]) == 5, "serving after disconnects")
    finally:
        d.stop()


def case_bad_input():
    d = Daemon("--max-frame", "64K")
    hello = prefixd.encode_hello()
    try:
        # Oversize frame: ERROR TOO_BIG, then the connection closes.
        f = raw(d.sock, hello + struct.pack("<IHHI", 1 << 20, 3, 0, 1))
        check(any(x["type"] == prefixd.ERROR and x["code"] == 2 for x in f), "too big: %s" % f)
        # Garbage framing (len < 8).
        f = raw(d.sock, hello + b"\x03\x00\x00\x00garbage")
        check(any(x["type"] == prefixd.ERROR and x["code"] == 1 for x in f), "garbage: %s" % f)
        # No HELLO first.
        f = raw(d.sock, prefixd.encode_generate(1, "hi"))
        check(f and f[0]["type"] == prefixd.ERROR and f[0]["code"] == 12, "no hello: %s" % f)
        # Bad version.
        f = raw(d.sock, prefixd.encode_frame(1, 0, struct.pack("<IHHI", prefixd.MAGIC, 99, 0, 0)))
        check(f and f[0]["code"] == 4 and "99" in f[0]["message"], "bad version: %s" % f)
        # Unknown type: an ERROR with that frame's id; the connection lives on.
        f = raw(d.sock, hello + prefixd.encode_frame(77, 5, b"xyz")
                + prefixd.encode_generate(6, "Lily", max_new=3), timeout=1.5)
        check(any(x["type"] == prefixd.ERROR and x["id"] == 5 and x["code"] == 3 for x in f),
              "unknown type: %s" % f)
        check(any(x["type"] == prefixd.DONE and x["id"] == 6 for x in f), "not alive: %s" % f)
        with d.client() as c:
            cases = [
                (dict(prompt="a " * 600), "PROMPT_TOO_LONG", "512"),
                (dict(prompt=b"abc\xff\xfe"), "BAD_UTF8", "offset 3"),
                (dict(ids=[1, 5, 9999]), "BAD_TOKEN", "9999"),
                (dict(ids=[]), "BAD_REQUEST", "empty"),
                (dict(prompt="hi", namespace="bad/name"), "BAD_NAMESPACE", "bad/name"),
                (dict(prompt="hi", temp=float("nan")), "BAD_REQUEST", "temperature"),
                (dict(prompt="hi", temp=float("inf")), "BAD_REQUEST", "finite"),
                (dict(prompt="hi", top_p=float("inf")), "BAD_REQUEST", "finite"),
                (dict(prompt="hi", temp=-1.0), "BAD_REQUEST", "temperature"),
            ]
            for kw, name, needle in cases:
                try:
                    c.generate(max_new=3, **kw)
                    raise AssertionError("%s: no error" % name)
                except prefixd.PrefixdError as e:
                    check(e.name == name and needle in e.message, "%s: got %s" % (name, e))
            # DETOKENIZE of an id out of range: an error naming it (issue 10 F2: its text once
            # lived in a block-scoped buffer read after the block; ASan saw it).
            try:
                c.detokenize([1, 100, 70000])
                raise AssertionError("detokenize out of range: no error")
            except prefixd.PrefixdError as e:
                check(e.name == "BAD_TOKEN" and "70000" in e.message and "index 2" in e.message,
                      "detokenize out of range: %s" % e)
            # Duplicate id: two GENERATEs with the same id at once.
            c.sock.sendall(prefixd.encode_generate(50, "Once upon", max_new=200)
                           + prefixd.encode_generate(50, "Once upon", max_new=5))
            seen_dup = False
            while True:
                f = c.read_frame()
                if f["type"] == prefixd.ERROR and f["code"] == 13:
                    seen_dup = True
                    c.cancel(50)
                if f["type"] == prefixd.DONE:
                    break
            check(seen_dup, "duplicate id not refused")
            check(len(c.generate("Lily", max_new=4, temp=0)["tokens"]) == 4, "client still served")
        # Another client never noticed.
        with d.client() as c:
            check(len(c.generate("Tom", max_new=4, temp=0)["tokens"]) == 4, "second client")
        check(d.p.poll() is None, "daemon died")
    finally:
        d.stop()


def case_busy():
    d = Daemon("--max-batch", "1", "--max-queue", "1")
    try:
        with d.client() as c:
            ids = [c.send_generate("Once upon a time", max_new=100, temp=0) for _ in range(4)]
            busy, done = 0, 0
            while busy + done < 4:
                f = c.read_frame()
                if f["type"] == prefixd.ERROR:
                    check(f["code"] == 10 and "too many" in f["message"], "busy: %s" % f)
                    busy += 1
                elif f["type"] == prefixd.DONE:
                    done += 1
            check(busy == 2 and done == 2, "busy %d done %d" % (busy, done))
            del ids
    finally:
        d.stop()


def case_slow_reader():
    d = Daemon("--max-output", "4K")
    try:
        slow = d.client()
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(8):
            slow.send_generate("Once upon a time", max_new=500, temp=0)
        time.sleep(3)  # never reads meanwhile
        with d.client() as c:
            check(len(c.generate("Lily", max_new=5, temp=0)["tokens"]) == 5, "others still served")
        slow.sock.settimeout(10)
        errs = 0
        try:
            while True:
                f = slow.read_frame()
                if f["type"] == prefixd.ERROR and f["code"] == 11:
                    errs += 1
                    if errs == 1:
                        break
        except Exception:  # noqa: BLE001
            pass
        check(errs >= 1 or "unread" in d.logtext(), "slow reader not cancelled: %s" % d.logtext()[-500:])
        slow.close()
    finally:
        d.stop()


def run_as(uid, sock, prompt):
    """Runs one generation as another uid in a child process; returns cached_tokens."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgid(65534)
            os.setuid(uid)
            with prefixd.Client(sock) as c:
                res = c.generate(prompt, max_new=2, temp=0)
            os.write(w, str(res["cached_tokens"]).encode())
        except Exception as e:  # noqa: BLE001
            os.write(w, ("ERR " + str(e)).encode())
        os._exit(0)
    os.close(w)
    out = os.read(r, 1000).decode()
    os.waitpid(pid, 0)
    os.close(r)
    return out


def stats_as(uid, sock, prompt=None):
    """STATS (after one generation of prompt, if given) as another uid; returns the JSON."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgid(65534)
            os.setuid(uid)
            with prefixd.Client(sock) as c:
                if prompt:
                    c.generate(prompt, max_new=2, temp=0)
                os.write(w, json.dumps(c.stats()).encode())
        except Exception as e:  # noqa: BLE001
            os.write(w, ("ERR " + str(e)).encode())
        os._exit(0)
    os.close(w)
    out = b""
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        out += b
    os.waitpid(pid, 0)
    os.close(r)
    check(not out.startswith(b"ERR"), "stats as uid %d: %s" % (uid, out))
    return json.loads(out)


def case_stats_per_user():
    """Issue 10 F10: STATS shows another user their own counters and the cache's size, never
    the daemon-wide request or hit counters (which would say that someone repeated a prompt)."""
    if os.getuid() != 0:
        raise AssertionError("this case needs root to switch uid (CI runs as root)")
    prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside."
    tmp = tempfile.mkdtemp(prefix="prefixd-it-")
    os.chmod(tmp, 0o755)
    d = Daemon("--socket-mode", "0666", tmp=tmp)
    try:
        with d.client() as c:
            c.generate(prompt, max_new=2, temp=0)
            c.generate(prompt, max_new=2, temp=0)
        other = stats_as(65534, d.sock)
        check(other["scope"] == "user", "other user's scope: %s" % other)
        check(other["requests"] == 0 and other["user"]["requests"] == 0,
              "other user sees requests: %s" % other)
        for leak in ("cache_hit_blocks", "cache_lookups", "connections", "requests_running",
                     "prefill_tokens", "cached_tokens_disk_total"):
            check(leak not in other, "other user sees %s: %s" % (leak, other))
        check(other["cache_blocks_total"] > 0 and other["block_tokens"] == 16,
              "sizes missing: %s" % other)
        mine = stats_as(65534, d.sock, prompt)
        check(mine["requests"] == 1 and mine["prompt_tokens"] > 0, "own counters: %s" % mine)
        check(mine["cached_tokens"] == 0, "another user's blocks served: %s" % mine)
        with d.client() as c:
            owner = c.stats()
        check(owner["scope"] == "daemon" and owner["requests"] == 3,
              "owner's view: %s" % owner)
        check(owner["user"]["requests"] == 2 and "cache_hit_blocks" in owner,
              "owner's own counters: %s" % owner)
    finally:
        d.stop()
    d = Daemon("--socket-mode", "0666", "--stats-all-users", tmp=tempfile.mkdtemp(prefix="prefixd-it-"))
    try:
        os.chmod(d.tmp, 0o755)
        with d.client() as c:
            c.generate(prompt, max_new=2, temp=0)
        other = stats_as(65534, d.sock)
        check(other["scope"] == "daemon" and other["requests"] == 1,
              "--stats-all-users: %s" % other)
    finally:
        d.stop()


def case_users():
    if os.getuid() != 0:
        raise AssertionError("this case needs root to switch uid (CI runs as root)")
    prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside."
    for share in (False, True):
        tmp = tempfile.mkdtemp(prefix="prefixd-it-")
        os.chmod(tmp, 0o755)
        extra = ["--socket-mode", "0666"] + (["--share-across-users"] if share else [])
        d = Daemon(*extra, tmp=tmp)
        try:
            with d.client() as c:
                c.generate(prompt, max_new=2, temp=0)
                again = c.generate(prompt, max_new=2, temp=0)["cached_tokens"]
            check(again > 0, "same user does not hit")
            other = run_as(65534, d.sock, prompt)
            check(not other.startswith("ERR"), "other user: %s" % other)
            if share:
                check(int(other) > 0, "--share-across-users: other user missed")
            else:
                check(int(other) == 0, "two users shared blocks (%s cached)" % other)
        finally:
            d.stop()
            shutil.rmtree(tmp, ignore_errors=True)


def case_socket():
    d = Daemon()
    try:
        mode = os.stat(d.sock).st_mode & 0o777
        check(mode == 0o600, "socket mode %o" % mode)
        # A live socket: a second daemon refuses, exit 2, with a message.
        p = subprocess.run([PREFIXD, "serve", "--model", MODEL, "--tokenizer", TOK, "--socket",
                            d.sock, "--cache-mem", "16M"], capture_output=True, text=True,
                           timeout=30)
        check(p.returncode == 2 and "another daemon" in p.stderr, "live socket: %s" % p.stderr)
        with d.client() as c:
            check(len(c.generate("Lily", max_new=3, temp=0)["tokens"]) == 3, "first daemon hurt")
    finally:
        d.stop(signal.SIGKILL)  # leaves a stale socket file behind
    check(os.path.exists(d.sock), "kill -9 should leave the socket file")
    d2 = Daemon(sock=d.sock, tmp=d.tmp)
    try:
        with d2.client() as c:
            check(len(c.generate("Lily", max_new=3, temp=0)["tokens"]) == 3, "stale socket not replaced")
    finally:
        rc = d2.stop()
        check(rc == 0, "exit code %s: %s" % (rc, d2.logtext()[-600:]))
    check(not os.path.exists(d.sock), "socket not removed at exit")
    p = subprocess.run([PREFIXD, "serve", "--model", MODEL, "--tokenizer", TOK, "--socket",
                        "/tmp/" + "x" * 200], capture_output=True, text=True, timeout=30)
    check(p.returncode == 2 and "too long" in p.stderr, "long path: %s" % p.stderr)
    p = subprocess.run([PREFIXD, "serve", "--model", "/nonexistent.bin"], capture_output=True,
                       text=True, timeout=30)
    check(p.returncode == 2 and "nonexistent.bin" in p.stderr, "bad model: %s" % p.stderr)


def case_sigterm():
    d = Daemon()
    try:
        c = d.client()
        rid = c.send_generate("Once upon a time", max_new=300, temp=0)
        c.read_frame()
        d.p.send_signal(signal.SIGTERM)
        n, fin = 0, None
        while True:
            f = c.read_frame()
            if f["type"] == prefixd.TOKEN:
                n += 1
            elif f["type"] in (prefixd.DONE, prefixd.ERROR):
                fin = f
                break
        check(fin["type"] == prefixd.DONE and fin["id"] == rid, "running request not finished")
        check(d.p.wait(20) == 0, "exit code %s" % d.p.returncode)
        check(not os.path.exists(d.sock), "socket left behind")
        # Restart on the same socket works.
        d2 = Daemon(sock=d.sock, tmp=d.tmp)
        with d2.client() as c2:
            check(len(c2.generate("Lily", max_new=3, temp=0)["tokens"]) == 3, "restart")
        check(d2.stop() == 0, "restart exit")
    finally:
        d.stop()


def case_prefixctl():
    ctl = os.environ["PREFIXCTL"]
    d = Daemon()
    try:
        def run(*args, stdin=None):
            return subprocess.run([ctl, "--socket", d.sock] + list(args), input=stdin,
                                  capture_output=True, text=True, timeout=60)
        long = "Once upon a time, there was a little girl named Lily. She loved to play outside."
        run("generate", "--prompt", long, "-n", "5", "--temp", "0")
        p = run("generate", "--prompt", long, "-n", "5", "--temp", "0", "--json")
        import json
        j = json.loads(p.stdout)
        for k in ("text", "tokens", "prompt_tokens", "cached_tokens", "cached_tokens_disk",
                  "ttft_ms", "prefill_ms", "decode_tokens_per_s", "finish_reason"):
            check(k in j, "--json lacks %s" % k)
        check(j["cached_tokens"] > 0 and len(j["tokens"]) == 5, "json: %s" % j)
        p = run("generate", "--prompt", "", "-n", "255", "--temp", "0")
        golden = open(GOLDEN).read()
        check(p.stdout.startswith(golden[:-1]), "prefixctl generate: golden text")
        p = run("chat", "-n", "20", "--temp", "0", stdin="Lily went to the park\nShe saw a dog\nThe dog ran\n")
        cached = [int(x.split("cached ")[1].split(",")[0]) for x in p.stderr.splitlines()
                  if x.startswith("[turn")]
        check(len(cached) == 3 and cached[1] > 0 and cached[2] > cached[1],
              "chat cached tokens should grow: %s / %s" % (cached, p.stderr))
        p = run("stats", "--prometheus")
        check("# TYPE prefixd_requests counter" in p.stdout and "prefixd_cache_hit_blocks" in p.stdout,
              "prometheus: %s" % p.stdout[:300])
        p = run("warm", "--prompt", long, "--pin")
        check(p.returncode == 0 and "pinned" in p.stdout, "warm --pin: %s %s" % (p.stdout, p.stderr))
        p = run("generate", "--prompt", "x", "--namespace", "no/slash")
        check(p.returncode == 2 and "namespace" in p.stderr, "bad namespace: %s" % p.stderr)
        p = run("frobnicate")
        check(p.returncode == 2, "unknown command exit %d" % p.returncode)
        p = subprocess.run([ctl, "--socket", d.sock + ".nope", "stats"], capture_output=True,
                           text=True, timeout=30)
        check(p.returncode == 1 and "cannot connect" in p.stderr, "no daemon: %s" % p.stderr)
    finally:
        d.stop()


STORY = ["Once upon a time, there was a little girl named Lily. She loved to play outside in the",
         "Tom had a big red ball. He liked to throw it high in the sky and catch it with his",
         "One day, a little bird sat on a tree. The bird was sad because it could not find its",
         "The sun was shining and the grass was green. A small dog ran to the park to find his"]


def serve_expect_fail(*args, env=None, user=None):
    """Runs `prefixd serve` that must refuse to start; returns (exit code, stderr)."""
    tmp = tempfile.mkdtemp(prefix="prefixd-it-")
    argv = [PREFIXD, "serve", "--model", MODEL, "--tokenizer", TOK, "--socket",
            os.path.join(tmp, "p.sock"), "--cache-mem", "4M"] + list(args)
    kw = {}
    if user is not None:
        os.chmod(tmp, 0o777)
        kw["preexec_fn"] = lambda: (os.setgid(user), os.setuid(user))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, **kw)
    shutil.rmtree(tmp, ignore_errors=True)
    return p.returncode, p.stderr


def first_life(d, max_new):
    """Each STORY prompt's tokens from daemon d (which is then stopped, writing its RAM blocks to
    its disk tier), for a later daemon on the same disk dir to be compared against."""
    want = {}
    try:
        with d.client() as c:
            for p in STORY:
                want[p] = c.generate(p, max_new=max_new, temp=0)["tokens"]
    finally:
        check(d.stop() == 0, "exit: %s" % d.logtext()[-500:])
    return want


def case_disk_restart():
    """Blocks survive a restart: every full block of every prompt comes back from disk, with the
    same tokens; another model (same shape, other weights) on the same dir never hits."""
    d = Daemon("--cache-mem", "8M")
    want = first_life(d, 24)
    check("disk tier: wrote" in d.logtext(), "no flush at exit: %s" % d.logtext()[-800:])
    d2 = Daemon("--cache-mem", "8M", tmp=d.tmp)
    try:
        with d2.client() as c:
            for p in STORY:
                r = c.generate(p, max_new=24, temp=0)
                check(r["tokens"] == want[p], "tokens differ after restart for %r" % p)
                n = len(c.tokenize(p))
                full = (n - 1) // 16 * 16
                check(r["cached_tokens_disk"] == full and r["cached_tokens"] == full,
                      "after restart: cached %d, from disk %d, expected %d" %
                      (r["cached_tokens"], r["cached_tokens_disk"], full))
            st = c.stats()
            check(st["disk_hit_blocks"] > 0 and st["cached_tokens_disk"] > 0, "stats: %s" % st)
    finally:
        check(d2.stop() == 0, "exit 2")
    other = os.path.join(d.tmp, "other.bin")
    subprocess.run([PREFIXD, "synth", "--shape", "stories260K", "-o", other, "--seed", "9",
                    "--no-tokenizer"], check=True, capture_output=True, timeout=60)
    d3 = Daemon("--model", other, tmp=d.tmp)
    try:
        with d3.client() as c:
            for p in STORY:
                r = c.generate(p, max_new=4, temp=0)
                check(r["cached_tokens"] == 0, "another model hit %d tokens" % r["cached_tokens"])
    finally:
        d3.stop()


def case_disk_kill9():
    """kill -9 while blocks spill constantly, three times: the store opens, nothing wrong is
    served (every output equals the first run's), and hits come from disk."""
    tmp = tempfile.mkdtemp(prefix="prefixd-it-")
    prompts = [STORY[i % 4] + " " + " and".join(["x"] * (i % 5)) for i in range(12)]
    want = {}
    d = Daemon("--no-cache", "--disk-dir", "none", tmp=tmp)
    try:
        with d.client() as c:
            for p in prompts:
                want[p] = c.generate(p, max_new=40, temp=0)["tokens"]
    finally:
        d.stop()
    disk_hits = 0
    for rnd in range(3):
        # 400K of RAM is 20 blocks: every request evicts, and evicted blocks spill.
        d = Daemon("--cache-mem", "400K", tmp=tmp)
        stop = threading.Event()
        errors = []

        def load(k):
            try:
                with d.client() as c:
                    i = k
                    while not stop.is_set():
                        p = prompts[i % len(prompts)]
                        r = c.generate(p, max_new=40, temp=0)
                        if r["tokens"] != want[p]:
                            errors.append("wrong tokens for %r" % p)
                        i += 3
            except (OSError, ConnectionError, AssertionError, KeyError):
                pass  # the daemon was killed under us

        ts = [threading.Thread(target=load, args=(k,)) for k in range(3)]
        for t in ts:
            t.start()
        time.sleep(1.0 + 0.4 * rnd)
        d.p.kill()
        d.p.wait(10)
        stop.set()
        for t in ts:
            t.join(30)
        check(not errors, "round %d: %s" % (rnd, errors[:3]))
        d2 = Daemon("--cache-mem", "64M", tmp=tmp)
        try:
            with d2.client() as c:
                for p in prompts:
                    r = c.generate(p, max_new=40, temp=0)
                    check(r["tokens"] == want[p], "after kill -9: wrong tokens for %r" % p)
                    disk_hits += r["cached_tokens_disk"] > 0
        finally:
            check(d2.stop() == 0, "exit after restart: %s" % d2.logtext()[-500:])
    check(disk_hits > 0, "no hit from disk after three kill -9 restarts")
    shutil.rmtree(tmp, ignore_errors=True)


def case_kv_types():
    """--kv-type f32, f16 and q8_0: each serves cached runs with exactly its uncached tokens (also
    after a restart, from its disk tier) and says its type in STATS; a disk dir written with one
    type is refused by another, naming both, unless --disk-reset; a bad name exits 2."""
    ps = [STORY[i % 4] + " so" * i for i in range(6)]
    tmp = tempfile.mkdtemp(prefix="prefixd-it-")
    disk = os.path.join(tmp, "disk")
    for t in ("f32", "f16", "q8_0"):
        d = Daemon("--no-cache", "--kv-type", t, tmp=tempfile.mkdtemp(prefix="prefixd-it-"))
        try:
            with d.client() as c:
                want = [c.generate(p, max_new=24, temp=0)["tokens"] for p in ps]
        finally:
            d.stop()
        for life in range(2):
            reset = ("--disk-reset",) if life == 0 else ()
            d = Daemon("--kv-type", t, "--disk-dir", disk, *reset, tmp=tmp)
            try:
                with d.client() as c:
                    for rep in range(2):
                        for p, w in zip(ps, want):
                            r = c.generate(p, max_new=24, temp=0)
                            check(r["tokens"] == w, "%s life %d: %r vs %r" % (t, life, r, w))
                    st = c.stats()
                    check(st["kv_type"] == t, "stats: %r" % st.get("kv_type"))
                    check(st["cached_tokens"] > 0, "%s: nothing cached: %r" % (t, st))
                    if life == 1:
                        check(st["cached_tokens_disk"] > 0, "%s: nothing from disk: %r" % (t, st))
            finally:
                d.stop()
    # The dir now holds q8_0 blocks: f16 is refused, naming both types.
    p = subprocess.run([PREFIXD, "serve", "--model", MODEL, "--tokenizer", TOK, "--socket",
                        os.path.join(tmp, "x.sock"), "--kv-type", "f16", "--disk-dir", disk],
                       capture_output=True, text=True, timeout=60)
    check(p.returncode != 0 and "q8_0 K/V" in p.stderr and "f16 K/V" in p.stderr,
          "another type's disk dir: %d %s" % (p.returncode, p.stderr))
    p = subprocess.run([PREFIXD, "serve", "--model", MODEL, "--tokenizer", TOK, "--socket",
                        os.path.join(tmp, "x.sock"), "--kv-type", "q4_0"],
                       capture_output=True, text=True, timeout=60)
    check(p.returncode == 2 and "--kv-type" in p.stderr and "q4_0" in p.stderr,
          "bad --kv-type: %d %s" % (p.returncode, p.stderr))
    shutil.rmtree(tmp, ignore_errors=True)


def case_disk_faults():
    """A full tier keeps serving from RAM and says so once; a corrupted value is a miss (and
    deleted), never served; unusable directories are refused at start with a clear message."""
    # Budget smaller than one block (20 KiB in f32): no spill can be stored.
    d = Daemon("--cache-mem", "400K", "--disk-max", "16K", "--kv-type", "f32")
    try:
        with d.client() as c:
            for i in range(12):
                r = c.generate(STORY[i % 4] + " so" * i, max_new=30, temp=0)
                check(len(r["tokens"]) == 30, "serving with a full disk tier")
            st = c.stats()
        check(st["disk_bytes"] <= st["disk_bytes_max"], "over budget: %s" % st)
        check(st["disk_spills_failed"] > 0, "nothing refused? %s" % st)
        log = d.logtext()
        check(log.count("budget of") == 1, "a full tier must be logged once:\n%s" % log[-1500:])
    finally:
        d.stop()
    # Flipped bytes inside stored values.
    d = Daemon("--cache-mem", "8M")
    want = first_life(d, 16)
    path = os.path.join(d.tmp, "disk", "data.mdb")
    data = bytearray(open(path, "rb").read())
    flipped, at = 0, 0
    while True:
        at = data.find(b"PFXB", at)
        if at < 0:
            break
        data[at + 300] ^= 0xFF  # inside the token ids or the payload
        flipped += 1
        at += 4
    check(flipped > 0, "no stored value found in data.mdb")
    open(path, "wb").write(data)
    d = Daemon("--cache-mem", "8M", tmp=d.tmp)
    try:
        with d.client() as c:
            for p in STORY:
                r = c.generate(p, max_new=16, temp=0)
                check(r["tokens"] == want[p], "wrong tokens after corruption for %r" % p)
                check(r["cached_tokens_disk"] == 0, "a corrupted block was served")
            st = c.stats()
        check(st["disk_corrupt_deleted"] > 0, "corrupt values not deleted: %s" % st)
        check("failed verification" in d.logtext(), "corruption not logged")
    finally:
        d.stop()
    # Directories that cannot be used: exit 2, the directory named.
    tmp = tempfile.mkdtemp(prefix="prefixd-it-")
    missing = os.path.join(tmp, "no", "such", "dir")
    rc, err = serve_expect_fail("--disk-dir", missing)
    check(rc == 2 and missing in err, "missing dir: %d %s" % (rc, err))
    afile = os.path.join(tmp, "afile")
    open(afile, "w").close()
    rc, err = serve_expect_fail("--disk-dir", afile)
    check(rc == 2 and afile in err and "not a directory" in err, "file as dir: %s" % err)
    ro = os.path.join(tmp, "ro")
    os.mkdir(ro, 0o555)
    if os.getuid() == 0:
        os.chmod(tmp, 0o755)
        rc, err = serve_expect_fail("--disk-dir", ro, user=65534)  # root ignores modes
    else:
        rc, err = serve_expect_fail("--disk-dir", ro)
    check(rc == 2 and ro in err and "not writable" in err, "read-only dir: %d %s" % (rc, err))
    # Another block geometry: refused, unless --disk-reset.
    geo = os.path.join(tmp, "geo")
    d = Daemon("--disk-dir", geo, "--block-tokens", "32")
    d.stop()
    rc, err = serve_expect_fail("--disk-dir", geo)
    check(rc == 2 and "incompatible" in err and geo in err, "geometry: %d %s" % (rc, err))
    d = Daemon("--disk-dir", geo, "--disk-reset")
    try:
        with d.client() as c:
            check(len(c.generate("Lily", max_new=3, temp=0)["tokens"]) == 3, "after --disk-reset")
        # One daemon per directory.
        rc, err = serve_expect_fail("--disk-dir", geo)
        check(rc == 2 and "in use" in err, "busy dir: %d %s" % (rc, err))
    finally:
        d.stop()
    rc, err = serve_expect_fail("--disk-max", "12")
    check(rc == 2 and "--disk-max" in err, "bad --disk-max: %s" % err)
    shutil.rmtree(tmp, ignore_errors=True)


def case_long_reply_history():
    """A reply longer than one prefill chunk (512 positions) is recomputed for the exact history in
    several steps with nothing else to do: they all run (history_pending back to 0), and then the
    idle daemon uses no CPU (the engine thread once spun on the unfinished recompute)."""
    tmp = tempfile.mkdtemp(prefix="prefixd-long-")
    model = os.path.join(tmp, "long.bin")
    r = subprocess.run([PREFIXD, "synth", "--shape", "64,160,2,4,4,300,1200", "-o", model],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, "synth: %s" % r.stderr)
    d = daemon.Daemon(PREFIXD, model, model + ".tok", "--disk-dir", "none", tmp=tmp)
    try:
        with prefixd.Client(d.sock) as c:
            out = c.generate("abc", max_new=700, temp=0)
            check(len(out["tokens"]) == 700, "700 tokens: %d" % len(out["tokens"]))
            for _ in range(200):
                st = c.stats()
                if st["history_pending"] == 0:
                    break
                time.sleep(0.05)
            check(st["history_pending"] == 0 and st["history_tokens"] >= 699,
                  "recompute finished: %r" % {k: v for k, v in st.items() if "history" in k})
        def cpu():
            with open("/proc/%d/stat" % d.p.pid) as f:
                v = f.read().rsplit(")", 1)[1].split()
            return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")
        t0 = cpu()
        time.sleep(1.5)
        used = cpu() - t0
        check(used < 0.3, "the idle daemon used %.2f s of CPU in 1.5 s" % used)
    finally:
        check(d.stop() == 0, "daemon exit")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    daemon.run_cases(daemon.cases_of(globals()), CASE, "prefixd-it-")
