#!/usr/bin/env python3
"""Integration tests of the daemon's hardening (issue 10): each case attacks a real `prefixd serve`
the way the adversarial review did and checks the fix holds, and the soak runs well-behaved and
abusive clients at once.

usage: test_hardening.py PREFIXD MODELS_DIR CLIENT_DIR GROUP CASE
       test_hardening.py PREFIXD MODELS_DIR CLIENT_DIR GROUP --list
GROUP is `cases` (the focused checks, one per failure of the issue) or `soak` (the soak alone,
registered apart for its own timeout).

What each case proves (and how it failed before the fixes):
  f2_detokenize_range  DETOKENIZE of an id out of range: an ERROR naming the id (the message was
                       read after its buffer's scope ended; ASan saw it).
  f5_pipeline_100/300  100 and 300 frames in one write all answered, no more bytes sent (64 were).
  f5_input_budget      20 connections part-way through 9.6 MB frames: RSS stays within
                       --max-input-mem; the connections past it are told so by name.
  f6_large_frames      frames of 100 KB, 1 MB and 15 MB in one write accepted (not TOO_BIG).
  f7_*                 the per-user connection cap, the HELLO timeout, the idle timeout.
  f9_tokenize_workers  a 4 MB TOKENIZE does not hold up another client's generation; --max-text.
  f11_sighup           SIGHUP stops the daemon as SIGTERM does.
"""

import json
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

PREFIXD, MODELS, CLIENT_DIR, GROUP = sys.argv[1:5]
sys.path.insert(0, CLIENT_DIR)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402
import prefixd  # noqa: E402

MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.bin")
NOBODY = 65534
UNIT = "Once upon a time, there was a little girl named Lily. She loved to play outside. "
PROMPTS = ["Once upon a time", "Lily wanted to play", "The big dog ran to the park",
           "Tom had a red ball", "One day, a little bird", "The sun was shining and the grass",
           "Sam and his mom went to the store", "A small cat sat on the mat"]


class Daemon(daemon.Daemon):
    """stories260K without a disk tier unless the case names one. open_to_all: the socket is
    0666 in a folder others may enter, for clients of another uid."""

    def __init__(self, *extra, open_to_all=False, tmp=None):
        tmp = tmp or tempfile.mkdtemp(prefix="prefixd-it-")
        if open_to_all:
            os.chmod(tmp, 0o755)
            extra = ("--socket-mode", "0666") + tuple(extra)
        if "--disk-dir" not in extra:
            extra = ("--disk-dir", "none") + tuple(extra)
        super().__init__(PREFIXD, MODEL, TOK, *extra, tmp=tmp)

    def client(self, **kw):
        return prefixd.Client(self.sock, **kw)

    def status(self, field):
        """A /proc/PID/status figure in bytes (VmRSS: resident now, VmHWM: its peak)."""
        with open("/proc/%d/status" % self.p.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no %s for pid %d" % (field, self.p.pid))


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def check_exit(d, rc):
    """The daemon exited 0 (a sanitizer's report makes it fail: its first lines are shown)."""
    log = d.logtext()
    at = log.find("ERROR: AddressSanitizer")
    at = log.find("runtime error") if at < 0 else at
    check(rc == 0 and at < 0, "exit code %s: %s" % (rc, log[at:at + 1500] if at >= 0 else log[-800:]))


def s32(b):
    return struct.pack("<I", len(b)) + b


def tokenize_frame(rid, text):
    return prefixd.encode_frame(prefixd.TOKENIZE, rid, s32(text.encode() if isinstance(text, str)
                                                           else text))


def detokenize_frame(rid, ids):
    return prefixd.encode_frame(prefixd.DETOKENIZE, rid, struct.pack("<I%di" % len(ids), len(ids),
                                                                     *ids))


def frame_header(ftype, rid, body_len):
    return struct.pack("<IHHI", 8 + body_len, ftype, 0, rid)


class Raw:
    """A connection that sends bytes exactly as given and reads frames; HELLO first unless
    hello=False."""

    def __init__(self, path, hello=True, timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = bytearray()
        if hello:
            self.sock.sendall(prefixd.encode_hello())
            f = self.frame()
            check(f and f["type"] == prefixd.HELLO_OK, "no HELLO_OK: %s" % f)

    def frame(self, timeout=None):
        """The next frame, or None at EOF; socket.timeout when none comes in time."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            f, n = prefixd.decode_frame(self.buf)
            if f is not None:
                del self.buf[:n]
                return f
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk

    def frames_for(self, ids, timeout):
        """Reads until every request id in ids has its final frame (anything but TOKEN), or
        until EOF or timeout; returns {id: [frames]}."""
        got, left = {}, set(ids)
        deadline = time.monotonic() + timeout
        while left:
            wait = deadline - time.monotonic()
            if wait <= 0:
                break
            try:
                f = self.frame(wait)
            except socket.timeout:
                break
            if f is None:
                break
            got.setdefault(f["id"], []).append(f)
            if f["type"] != prefixd.TOKEN:
                left.discard(f["id"])
        return got

    def close(self):
        self.sock.close()


# ---- Replies a client never reads -------------------------------------------------------------

def case_unread_replies():
    """A client that pipelines 100,000 STATS and TOKENIZE frames and never reads: the daemon stops
    reading from it once it owes SRV_MAX_OWED replies or holds --max-output of unread output, so
    its memory stays bounded; when the client reads, every request is answered (STATS on the
    engine thread and TOKENIZE on the workers: in no fixed order between them)."""
    d = Daemon("--max-output", "1M")
    try:
        r = Raw(d.sock)
        n = 100000
        frames = b"".join(prefixd.encode_frame(prefixd.STATS, i + 1) if i % 2 == 0
                          else tokenize_frame(i + 1, "Once upon a time") for i in range(n))
        base = d.status("VmRSS")
        sender = threading.Thread(target=r.sock.sendall, args=(frames,), daemon=True)
        sender.start()
        time.sleep(3)  # the client reads nothing meanwhile
        grown = d.status("VmRSS") - base
        check(grown < 40 << 20, "unread replies grew the daemon by %d MB" % (grown >> 20))
        with d.client() as c:  # others are still served
            check(len(c.generate("Lily", max_new=4, temp=0)["tokens"]) == 4, "other client")
        seen = set()
        while len(seen) < n:
            f = r.frame(timeout=60)
            check(f is not None, "connection closed after %d replies" % len(seen))
            want = prefixd.STATS_REPLY if f["id"] % 2 == 1 else prefixd.TOKENS
            check(f["type"] == want and f["id"] not in seen and 1 <= f["id"] <= n,
                  "reply %d: %s" % (len(seen), f))
            seen.add(f["id"])
        sender.join(10)
        r.close()
        check(d.p.poll() is None, "daemon died")
    finally:
        d.stop()


# ---- F2 -----------------------------------------------------------------------------------------

def case_f2_detokenize_range():
    d = Daemon()
    try:
        with d.client() as c:
            vocab = c.server["vocab_size"]
            for ids, needle in (([1, 5, 9999], "9999"), ([-1], "-1"), ([1, vocab], str(vocab)),
                                ([1, 2, 3, 0x7FFFFFFF], str(0x7FFFFFFF))):
                try:
                    c.detokenize(ids)
                    raise AssertionError("DETOKENIZE %s: no error" % ids)
                except prefixd.PrefixdError as e:
                    check(e.name == "BAD_TOKEN", "DETOKENIZE %s: %s" % (ids, e))
                    check("token id %s at index %d" % (needle, len(ids) - 1) in e.message and
                          "out of range" in e.message, "DETOKENIZE %s: message %r" % (ids, e.message))
            want = c.detokenize(c.tokenize("Lily went home"))
            check(want.endswith("Lily went home"), "the connection serves on: %r" % want)
    finally:
        rc = d.stop()
    check_exit(d, rc)


# ---- F5 -----------------------------------------------------------------------------------------

def expected(d):
    """For each prompt: its ids, their text, and its greedy first token."""
    with d.client() as c:
        ids = [c.tokenize(p) for p in PROMPTS]
        text = [c.detokenize(i) for i in ids]
        first = [c.generate(p, max_new=1, temp=0)["tokens"] for p in PROMPTS]
    return ids, text, first


def pipeline(d, n, want):
    """n frames in one write on one connection: STATS, TOKENIZE, DETOKENIZE and (at most 60 live
    at once, under the 64 per connection) GENERATE with max_new 1; each must be answered
    correctly with no further byte sent."""
    ids, text, first = want
    c = Raw(d.sock)
    frames, kinds, gens = [], {}, 0
    for i in range(n):
        rid, k, p = 1000 + i, i % 4, i % len(PROMPTS)
        if k == 3 and gens >= 60:
            k = 1
        if k == 0:
            frames.append(prefixd.encode_frame(prefixd.STATS, rid))
        elif k == 1:
            frames.append(tokenize_frame(rid, PROMPTS[p]))
        elif k == 2:
            frames.append(detokenize_frame(rid, ids[p]))
        else:
            frames.append(prefixd.encode_generate(rid, PROMPTS[p], max_new=1))
            gens += 1
        kinds[rid] = (k, p)
    c.sock.sendall(b"".join(frames))
    got = c.frames_for(kinds, 60)
    missing = sorted(set(kinds) - set(got))
    check(not missing, "%d of %d pipelined frames unanswered (first %s); the daemon answered %d"
          % (len(missing), n, missing[:5], n - len(missing)))
    for rid, (k, p) in kinds.items():
        fs = got[rid]
        types = [f["type"] for f in fs]
        if k == 0:
            check(types == [prefixd.STATS_REPLY], "STATS %d: %s" % (rid, fs))
            json.loads(fs[0]["text"])
        elif k == 1:
            check(types == [prefixd.TOKENS] and fs[0]["ids"] == ids[p], "TOKENIZE %d: %s" % (rid, fs))
        elif k == 2:
            check(types == [prefixd.TEXT] and fs[0]["text"].decode() == text[p],
                  "DETOKENIZE %d: %s" % (rid, fs))
        else:
            toks = [f["token"] for f in fs if f["type"] == prefixd.TOKEN]
            check(types[-1] == prefixd.DONE and toks == first[p], "GENERATE %d: %s" % (rid, fs))
    c.close()
    return gens


def case_f5_pipeline_100():
    d = Daemon()
    try:
        pipeline(d, 100, expected(d))
    finally:
        rc = d.stop()
    check_exit(d, rc)


def case_f5_pipeline_300():
    d = Daemon()
    try:
        want = expected(d)
        check(pipeline(d, 300, want) == 60, "60 generations among the 300 frames")
        # Twice at once on two connections, while a third client generates.
        errors = []

        def run():
            try:
                pipeline(d, 300, want)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=run) for _ in range(2)]
        for t in ts:
            t.start()
        with d.client() as c:
            check(c.generate(PROMPTS[0], max_new=1, temp=0)["tokens"] == want[2][0], "third")
        for t in ts:
            t.join(120)
        check(not errors, "concurrent pipelines: %s" % errors)
    finally:
        rc = d.stop()
    check_exit(d, rc)


def gather(socks, seconds):
    """Reads every socket until it closes or `seconds` pass: {index: (frames, closed)}."""
    sel = selectors.DefaultSelector()
    state = {}
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        state[i] = (bytearray(), [], False)
    deadline = time.monotonic() + seconds
    open_ = len(socks)
    while open_ and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
            i = key.data
            buf, frames, _ = state[i]
            try:
                chunk = key.fileobj.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                state[i] = (buf, frames, True)
                sel.unregister(key.fileobj)
                open_ -= 1
                continue
            buf += chunk
            while True:
                f, n = prefixd.decode_frame(buf)
                if not f:
                    break
                del buf[:n]
                frames.append(f)
    sel.close()
    return {i: (st[1], st[2]) for i, st in state.items()}


def case_f5_input_budget():
    """Each of 20 connections sends HELLO, the header of a 9.6 MB TOKENIZE and half its body. The
    daemon sizes a connection's buffer to its frame (so it reads the frame whole), but all the
    buffers together stay within --max-input-mem 32M: three fit, the others are refused naming
    the option, RSS grows by at most the budget, and a small client is served throughout."""
    budget, size = 32 << 20, 9_600_000
    d = Daemon("--max-input-mem", "32M", "--max-frame", "16M")
    socks = []
    try:
        with d.client() as c:
            c.generate("Lily", max_new=2, temp=0)
        time.sleep(0.3)
        base = d.status("VmRSS")
        text_len = size - 12 - 4
        head = frame_header(prefixd.TOKENIZE, 7, 4 + text_len) + struct.pack("<I", text_len)
        half = (UNIT * (text_len // 2 // len(UNIT) + 1))[:text_len // 2].encode()
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(d.sock)
            try:
                s.sendall(prefixd.encode_hello() + head + half)
            except OSError:
                pass  # refused and closed while we wrote: its ERROR is read below
            socks.append(s)
        res = gather(socks, 5)
        rss = d.status("VmRSS")
        refused, kept = [], []
        for i, (frames, closed) in sorted(res.items()):
            errs = [f for f in frames if f["type"] == prefixd.ERROR]
            if errs:
                check(closed, "connection %d: told but not closed" % i)
                check(errs[0]["code"] == 10 and "--max-input-mem" in errs[0]["message"],
                      "connection %d: %s" % (i, errs[0]))
                refused.append(i)
            else:
                check(not closed, "connection %d closed without a word" % i)
                kept.append(i)
        print("RSS %.1f MB -> %.1f MB; %d connections kept, %d refused"
              % (base / 1e6, rss / 1e6, len(kept), len(refused)))
        check(1 <= len(kept) <= budget // size, "kept %d connections within a 32M budget" % len(kept))
        check(len(refused) == 20 - len(kept), "refused %d" % len(refused))
        check(rss - base < budget + (16 << 20),
              "RSS grew by %.1f MB (budget 32M)" % ((rss - base) / 1e6))
        with d.client() as c:
            check(len(c.generate("Lily", max_new=4, temp=0)["tokens"]) == 4, "small client")
        # Their budget comes back when they go: a whole 9.6 MB frame is read and refused for its
        # text (over --max-text), not for memory.
        for s in socks:
            s.close()
        socks = []
        time.sleep(0.5)
        r = Raw(d.sock)
        r.sock.sendall(head + (UNIT * (text_len // len(UNIT) + 1))[:text_len].encode())
        f = r.frame(30)
        check(f and f["type"] == prefixd.ERROR and "--max-text" in f["message"], "after: %s" % f)
        r.close()
    finally:
        for s in socks:
            s.close()
        rc = d.stop()
    check_exit(d, rc)


# ---- F6 -----------------------------------------------------------------------------------------

def case_f6_large_frames():
    """Frames of 100 KB and 1 MB (TOKENIZE, then DETOKENIZE of its ids) and 15 MB (an id prompt
    of 3.9M ids; a TOKENIZE over --max-text), each in one write: read whole and answered on
    their merits, never TOO_BIG."""
    d = Daemon()
    try:
        c = Raw(d.sock)
        for size in (100_000, 1_000_000):
            n = size - 16
            text = (UNIT * (n // len(UNIT) + 1))[:n]
            c.sock.sendall(tokenize_frame(1, text))
            f = c.frame(120)
            check(f and f["type"] == prefixd.TOKENS, "TOKENIZE frame of %d bytes: %s" % (size, f))
            ids = f["ids"]
            check(ids[0] == 1 and len(ids) > size // 8, "%d ids for %d bytes" % (len(ids), size))
            c.sock.sendall(detokenize_frame(2, ids))  # a frame of 4 bytes an id: 1.3 MB
            f = c.frame(120)
            check(f and f["type"] == prefixd.TEXT, "DETOKENIZE of %d ids: %s" % (len(ids), f))
            check(f["text"].decode().lstrip() == text.lstrip(), "round trip of %d bytes" % size)
        n = (15_000_000 - 12 - 28) // 4
        body = struct.pack("<IffQ", 5, 0.0, 0.0, 0) + s32(b"") + struct.pack("<I", n)
        c.sock.sendall(struct.pack("<IHHI", 8 + len(body) + 4 * n, prefixd.GENERATE,
                                   prefixd.GEN_TOKENS, 3) + body + struct.pack("<i", 1) * n)
        f = c.frame(60)
        check(f and f["type"] == prefixd.ERROR and f["code"] == 6 and str(n) in f["message"],
              "15 MB id prompt: %s" % f)
        n = 15_000_000 - 16
        c.sock.sendall(tokenize_frame(4, b"a" * n))
        f = c.frame(60)
        check(f and f["type"] == prefixd.ERROR and f["code"] == 5 and "--max-text" in f["message"],
              "15 MB TOKENIZE: %s" % f)
        c.sock.sendall(prefixd.encode_frame(prefixd.STATS, 5))
        f = c.frame(30)
        check(f and f["type"] == prefixd.STATS_REPLY, "connection alive: %s" % f)
        c.close()
    finally:
        rc = d.stop()
    check_exit(d, rc)


# ---- F7 -----------------------------------------------------------------------------------------

def hold_as(uid, sock, n):
    """A child process of uid opens n connections one after the other (HELLO on each) and holds
    them; returns (pid, each connection's first frame as (type, code, message), a pipe end to
    write to when the child may let go)."""
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.close(w2)
        code = 0
        try:
            os.setgid(uid)
            os.setuid(uid)
            out, conns = [], []
            for _ in range(n):
                try:
                    c = Raw(sock, hello=False, timeout=10)
                    conns.append(c)
                    try:
                        c.sock.sendall(prefixd.encode_hello())
                    except OSError:
                        pass
                    f = c.frame()
                    out.append((f["type"], f.get("code"), f.get("message")) if f else None)
                except OSError as e:
                    out.append(("oserror", str(e)))
            os.write(w, json.dumps(out).encode())
            os.close(w)
            os.read(r2, 1)  # hold them until the parent is done
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 1
        os._exit(code)
    os.close(w)
    os.close(r2)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    check(data, "the child of uid %d reported nothing" % uid)
    return pid, json.loads(data), w2


def case_f7_conns_per_user():
    """60 connections of uid 65534 against --max-conns-per-user 50: 50 served, the last 10
    refused naming the option, and root (another uid) still served meanwhile. When that user's
    connections close, it may connect again."""
    check(os.getuid() == 0, "this case needs root to switch uid (CI runs as root)")
    d = Daemon("--max-conns-per-user", "50", open_to_all=True)
    try:
        pid, out, release = hold_as(NOBODY, d.sock, 60)
        try:
            check(all(o and o[0] == prefixd.HELLO_OK for o in out[:50]),
                  "the first 50: %s" % [o for o in out[:50] if not o or o[0] != prefixd.HELLO_OK])
            for i, o in enumerate(out[50:]):
                check(o and o[0] == prefixd.ERROR and o[1] == 10 and
                      "--max-conns-per-user" in o[2] and str(NOBODY) in o[2],
                      "connection %d: %s" % (50 + i, o))
            for _ in range(3):
                with d.client() as c:
                    check(len(c.generate("Lily", max_new=3, temp=0)["tokens"]) == 3, "root served")
        finally:
            os.close(release)
            os.waitpid(pid, 0)
        # The closes reach the daemon asynchronously: a fresh child is served within a second.
        for _ in range(20):
            pid, out, release = hold_as(NOBODY, d.sock, 1)
            os.close(release)
            os.waitpid(pid, 0)
            if out[0] and out[0][0] == prefixd.HELLO_OK:
                break
            time.sleep(0.1)
        check(out[0] and out[0][0] == prefixd.HELLO_OK, "uid 65534 after closing: %s" % out)
    finally:
        rc = d.stop()
    check_exit(d, rc)


def case_f7_hello_timeout():
    """--hello-timeout 1: a connection that sends nothing, and one that sends half a HELLO, get
    NO_HELLO naming the option and are closed within a few seconds; a client that said HELLO is
    not touched by it."""
    d = Daemon("--hello-timeout", "1")
    try:
        good = d.client()
        silent = Raw(d.sock, hello=False)
        half = Raw(d.sock, hello=False)
        half.sock.sendall(prefixd.encode_hello()[:10])
        t0 = time.monotonic()
        for name, c in (("silent", silent), ("half a HELLO", half)):
            f = c.frame(8)
            check(f and f["type"] == prefixd.ERROR and f["code"] == 12 and
                  "--hello-timeout" in f["message"], "%s: %s" % (name, f))
            check(c.frame(8) is None, "%s: not closed" % name)
            c.close()
        took = time.monotonic() - t0
        check(took < 4.5, "closed after %.1f s with --hello-timeout 1" % took)
        check(len(good.generate("Lily", max_new=3, temp=0)["tokens"]) == 3, "a client with HELLO")
        good.close()
    finally:
        rc = d.stop()
    check_exit(d, rc)


def case_f7_idle_timeout():
    """--idle-timeout 1: a connection idle after HELLO is closed within a few seconds; one that
    keeps asking (a STATS every 0.3 s for 3 s) is not, nor one whose generation runs."""
    d = Daemon("--idle-timeout", "1")
    try:
        idle = Raw(d.sock)
        busy = d.client()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:
            busy.stats()
            time.sleep(0.3)
        check(idle.frame(5) is None, "the idle connection was not closed")
        took = time.monotonic() - t0
        check(took < 5, "closed after %.1f s with --idle-timeout 1" % took)
        check(busy.stats()["requests"] >= 0, "the busy connection was closed")
        busy.close()
    finally:
        rc = d.stop()
    check_exit(d, rc)


# ---- F9 -----------------------------------------------------------------------------------------

def case_f9_tokenize_workers():
    """--threads 1: while a 4 MB TOKENIZE is tokenized, another client's GENERATE (max_new 20)
    finishes, before the TOKENIZE's reply arrives (an order, not a time). Texts over --max-text
    (TOKENIZE and prompt) are refused by name."""
    d = Daemon("--threads", "1")
    try:
        with d.client() as b:
            want = b.generate("Once upon a time", max_new=20, temp=0)["tokens"]
        n = 4_000_000
        text = (UNIT * (n // len(UNIT) + 1))[:n]
        a = Raw(d.sock)
        # In 16 KB pieces, as a slow writer sends (so this checks the order alone, even against a
        # daemon that cannot take a large frame in one write, F6).
        frame = tokenize_frame(9, text)
        for i in range(0, len(frame) - 1, 16384):
            a.sock.sendall(frame[i:min(i + 16384, len(frame) - 1)])
            time.sleep(0.001)
        # All but the last byte is read by now; the last starts the tokenizing right before the
        # generation (tokenizers encode 4 MB in a fraction of a second, so a pause here would
        # let it finish first and test nothing).
        time.sleep(0.5)
        a.sock.sendall(frame[-1:])
        with d.client() as b:
            got = b.generate("Once upon a time", max_new=20, temp=0)["tokens"]
        check(got == want, "the generation beside the TOKENIZE: %s != %s" % (got, want))
        a.sock.setblocking(False)
        try:
            early = a.sock.recv(65536)
        except BlockingIOError:
            early = b""
        check(not early, "the TOKENIZE's reply came before the other client's DONE: the "
              "generation waited for the tokenizing")
        a.sock.setblocking(True)
        f = a.frame(300)
        check(f and f["type"] == prefixd.TOKENS and len(f["ids"]) > n // 8, "4 MB TOKENIZE: %s"
              % (f and {k: v for k, v in f.items() if k != "ids"}))
        over = (4 << 20) + 1
        a.sock.sendall(tokenize_frame(10, b"a" * over))
        f = a.frame(60)
        check(f and f["type"] == prefixd.ERROR and f["code"] == 5 and "--max-text" in f["message"]
              and str(over) in f["message"], "TOKENIZE over --max-text: %s" % f)
        a.sock.sendall(prefixd.encode_generate(11, b"a" * over, max_new=1))
        f = a.frame(60)
        check(f and f["type"] == prefixd.ERROR and f["code"] == 5 and "--max-text" in f["message"],
              "prompt over --max-text: %s" % f)
        a.close()
    finally:
        rc = d.stop()
    check_exit(d, rc)


# ---- F11 ----------------------------------------------------------------------------------------

def case_f11_sighup():
    """SIGHUP during a generation: the stream ends with DONE, the daemon writes its RAM blocks to
    the disk tier, removes its socket and exits 0."""
    tmp = tempfile.mkdtemp(prefix="prefixd-it-")
    d = Daemon("--threads", "1", "--disk-dir", os.path.join(tmp, "disk"), tmp=tmp)
    try:
        c = d.client()
        rid = c.send_generate("Once upon a time", max_new=400, temp=0)
        c.read_frame()
        d.p.send_signal(signal.SIGHUP)
        fin = None
        while fin is None:
            try:
                f = c.read_frame()
            except ConnectionError as e:
                raise AssertionError("the stream was cut by SIGHUP: %s" % e)
            if f["type"] in (prefixd.DONE, prefixd.ERROR):
                fin = f
        check(fin["type"] == prefixd.DONE and fin["id"] == rid, "the request's end: %s" % fin)
        try:
            rc = d.p.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError("no exit after SIGHUP")
        check(rc == 0, "exit code %s after SIGHUP: %s" % (rc, d.logtext()[-800:]))
        check(not os.path.exists(d.sock), "socket file left behind")
        log = d.logtext()
        check("SIGHUP" in log and "disk tier: wrote" in log, "log: %s" % log[-800:])
    finally:
        d.stop()


def case_f11_stop_while_tokenizing():
    """SIGTERM while a long prompt (24 MB of text) is still being tokenized on a worker: the
    daemon waits for it as for a running request, so the request gets its end (here ERROR
    PROMPT_TOO_LONG) before the daemon exits 0. With a grace shorter than the tokenizing, the
    request ends with DONE (cancelled), as running requests do. Never a cut connection."""
    # 24 MB: tokenizing takes far longer than the short grace (at ~40 MB/s, 0.6 s against 0.05 s;
    # 4 MB once did, until the tokenizers got faster).
    n = 24_000_000
    text = (UNIT * (n // len(UNIT) + 1))[:n]
    for grace, want in (("120", "ERROR PROMPT_TOO_LONG"), ("0.05", "DONE cancelled")):
        d = Daemon("--threads", "1", "--grace", grace, "--max-text", "32M", "--max-frame", "32M")
        try:
            c = d.client()
            rid = c.send_generate(text, max_new=5, temp=0)
            c.stats()  # the GENERATE was read (frames are handled in order)
            d.p.send_signal(signal.SIGTERM)
            try:
                f = c._reply(rid)
            except ConnectionError as e:
                raise AssertionError("--grace %s: the daemon stopped without answering the request "
                                     "whose prompt was being tokenized: %s" % (grace, e))
            got = ("ERROR PROMPT_TOO_LONG" if f["type"] == prefixd.ERROR and f["code"] == 6 else
                   "DONE cancelled" if f["type"] == prefixd.DONE and f["finish"] == 2 else str(f))
            check(got == want, "--grace %s: %s, expected %s" % (grace, got, want))
            try:
                d.p.wait(150)
            except subprocess.TimeoutExpired:
                raise AssertionError("no exit after SIGTERM")
        finally:
            rc = d.stop()
        check_exit(d, rc)


# ---- Soak ---------------------------------------------------------------------------------------

SOAK_SECONDS = float(os.environ.get("PREFIXD_SOAK_SECONDS", "60"))


def case_soak():
    """Well-behaved clients (root) check exact greedy outputs against a --no-cache reference
    while an abusive process (uid 65534) pipelines, floods, dribbles partial frames, sends huge
    frames and garbage, disconnects mid-stream and cancels, for ~60 s. At the end: every good
    output exact, the daemon's peak RSS within its start plus the input budget plus 96 MB (see
    RSS_SLACK), the daemon alive and answering STATS, and a clean exit."""
    check(os.getuid() == 0, "the soak needs root to run its abuser as uid 65534")
    # A sanitizer's quarantine keeps freed memory resident (256 MB by default): keep it small,
    # so the RSS check measures the daemon. Release builds ignore the variable.
    os.environ["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8"
                                  ).lstrip(":")
    ref = Daemon("--no-cache")
    try:
        with ref.client() as c:
            want = {p: c.generate(p, max_new=24, temp=0)["tokens"] for p in PROMPTS}
            ids = {p: c.tokenize(p) for p in PROMPTS}
    finally:
        ref.stop()
    # A small cache (evictions all the time), a short HELLO and idle timeout, a per-user cap the
    # abuser reaches, and a 64M input budget.
    d = Daemon("--cache-mem", "8M", "--max-conns-per-user", "48", "--hello-timeout", "2",
               "--idle-timeout", "5", "--max-input-mem", "64M", "--max-text", "1M",
               "--max-output", "1M", open_to_all=True)
    stop = threading.Event()
    errors, counts, busy, peak = [], [0], [0], [0]
    lock = threading.Lock()

    def good(k):
        rng = random.Random(k)
        while not stop.is_set():
            try:
                with d.client(timeout=60) as c:
                    for _ in range(rng.randint(1, 6)):
                        p = rng.choice(PROMPTS)
                        how = rng.randint(0, 2)
                        if how == 0:
                            toks = c.generate(p, max_new=24, temp=0)["tokens"]
                        elif how == 1:
                            toks = c.generate(ids=ids[p], max_new=24, temp=0)["tokens"]
                        else:
                            q = rng.choice(PROMPTS)
                            r1 = c.send_generate(p, max_new=24, temp=0)
                            r2 = c.send_generate(q, max_new=24, temp=0)
                            got2 = c.result(r2)["tokens"]
                            check(got2 == want[q], "multiplexed %r: %s != %s" % (q, got2, want[q]))
                            toks = c.result(r1)["tokens"]
                        check(toks == want[p], "%r (way %d): %s != %s" % (p, how, toks, want[p]))
                        with lock:
                            counts[0] += 1
            except prefixd.PrefixdError as e:
                if e.name != "BUSY":  # a full queue is an answer, not a fault
                    errors.append("client %d: %s" % (k, e))
                    return
                with lock:
                    busy[0] += 1
                time.sleep(0.05)
            except Exception as e:  # noqa: BLE001
                errors.append("client %d: %r" % (k, e))
                return

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], d.status("VmRSS"))
            except (OSError, AssertionError):
                return
            time.sleep(0.25)

    try:
        with d.client() as c:
            for p in PROMPTS:
                c.generate(p, max_new=2, temp=0)
        time.sleep(0.3)
        base = d.status("VmRSS")
        # The abuser is forked before this process starts a thread (a fork copies one thread).
        r, w = os.pipe()
        abuser = os.fork()
        if abuser == 0:
            os.close(r)
            code = 1
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                os.write(w, json.dumps(abuse(d.sock, SOAK_SECONDS)).encode())
                code = 0
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
            os._exit(code)
        os.close(w)
        ts = [threading.Thread(target=good, args=(k,)) for k in range(4)]
        ts.append(threading.Thread(target=sample))
        for t in ts:
            t.start()
        out = b""
        while True:  # the abuser writes one JSON object when its time is up
            chunk = os.read(r, 65536)
            if not chunk:
                break
            out += chunk
        os.close(r)
        _, status = os.waitpid(abuser, 0)
        stop.set()
        for t in ts:
            t.join(90)
        check(not errors, "good clients: %s\n%s" % (errors[:5], d.logtext()[-1500:]))
        check(status == 0 and out, "the abuser failed (status %d)" % status)
        done = json.loads(out)
        check(d.p.poll() is None, "the daemon died: %s" % d.logtext()[-2000:])
        with d.client(timeout=30) as c:
            st = c.stats()
            for p in PROMPTS:
                check(c.generate(p, max_new=24, temp=0)["tokens"] == want[p], "after: %r" % p)
        hwm = d.status("VmHWM")
        bound = (64 << 20) + RSS_SLACK
        print("soak %.0f s: %d good generations exact (%d BUSY retries); abuser: %s; RSS %.1f MB "
              "at start, peak %.1f MB (sampled %.1f MB), bound start + %.0f MB; stats requests %d"
              % (SOAK_SECONDS, counts[0], busy[0], json.dumps(done), base / 1e6, hwm / 1e6,
                 peak[0] / 1e6, bound / 1e6, st["requests"]))
        check(counts[0] >= 20, "only %d good generations" % counts[0])
        for kind in ("pipeline", "flood", "slowloris", "huge", "garbage", "disconnect", "cancel",
                     "unread"):
            check(done.get(kind, 0) > 0, "the abuser never did %s: %s" % (kind, done))
        check(done.get("pipeline_short", 0) == 0, "pipelined frames left unanswered: %s" % done)
        check(hwm - base <= bound, "peak RSS %.1f MB over start %.1f MB + %.0f MB"
              % (hwm / 1e6, base / 1e6, bound / 1e6))
    finally:
        stop.set()
        rc = d.stop()
    check_exit(d, rc)


# What the daemon may hold beyond its start besides the input budget: the tokenizer's work on
# libuv's 4 workers (a 1M text: its copy, 4 bytes an id twice, the reply: ~13 MB each, ~52 MB),
# the unread output bound (--max-output 1M) of the few connections generating, engine and
# allocator slack.
RSS_SLACK = 96 << 20


def abuse(sock, seconds):
    """The soak's abuser (run as uid 65534): threads that each pick a misbehaviour at random
    until `seconds` pass. Any failure to connect or to be served is expected; returns what it
    did, counted by kind. pipeline_short counts pipelines whose frames were not all answered
    although the connection stayed open."""
    deadline = time.monotonic() + seconds
    counts, lock = {}, threading.Lock()

    def count(k):
        with lock:
            counts[k] = counts.get(k, 0) + 1

    def pipeline_once(rng):
        c = Raw(sock)
        frames, ids, gens = [], [], 0
        for i in range(rng.choice((100, 300))):
            rid = 1 + i
            k = rng.randint(0, 2)
            if k == 0:
                frames.append(prefixd.encode_frame(prefixd.STATS, rid))
            elif k == 1 or gens >= 50:
                frames.append(tokenize_frame(rid, rng.choice(PROMPTS)))
            else:
                frames.append(prefixd.encode_generate(rid, rng.choice(PROMPTS), max_new=1))
                gens += 1
            ids.append(rid)
        c.sock.sendall(b"".join(frames))
        got = c.frames_for(ids, 30)
        if len(got) < len(ids):
            try:
                c.sock.settimeout(0.01)
                alive = c.sock.recv(1, socket.MSG_PEEK) != b""
            except socket.timeout:
                alive = True
            except OSError:
                alive = False
            if alive:
                count("pipeline_short")
        c.close()

    def flood(rng):
        conns = []
        for _ in range(rng.randint(20, 60)):
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(sock)
                conns.append(s)
            except OSError:
                break
        time.sleep(rng.uniform(0.5, 3))
        for s in conns:
            s.close()

    def slowloris(rng):
        c = Raw(sock, hello=rng.random() < 0.7)
        c.sock.sendall(frame_header(prefixd.TOKENIZE, 1, 4 + 800_000) + struct.pack("<I", 800_000))
        for _ in range(rng.randint(5, 30)):
            c.sock.sendall(b"x" * rng.randint(1, 200))
            time.sleep(0.2)
        c.close()

    def huge(rng):
        c = Raw(sock)
        k = rng.randint(0, 2)
        if k == 0:  # over --max-frame: TOO_BIG, closed
            c.sock.sendall(frame_header(prefixd.TOKENIZE, 1, 100 << 20))
        elif k == 1:  # a 12 MB id prompt: PROMPT_TOO_LONG
            n = 3_000_000
            body = struct.pack("<IffQ", 5, 0.0, 0.0, 0) + s32(b"") + struct.pack("<I", n)
            c.sock.sendall(struct.pack("<IHHI", 8 + len(body) + 4 * n, prefixd.GENERATE,
                                       prefixd.GEN_TOKENS, 1) + body + b"\x01\x00\x00\x00" * n)
        else:  # 2 MB of text, over --max-text
            c.sock.sendall(tokenize_frame(1, b"b" * (2 << 20)))
        c.frame(20)
        c.close()

    def garbage(rng):
        c = Raw(sock, hello=rng.random() < 0.5)
        c.sock.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4000))))
        try:
            c.frame(2)
        except socket.timeout:
            pass
        c.close()

    def disconnect(rng):
        c = prefixd.Client(sock, timeout=20)
        for _ in range(rng.randint(1, 8)):
            c.send_generate(rng.choice(PROMPTS), max_new=300, temp=0)
        for _ in range(rng.randint(0, 10)):
            c.read_frame()
        if rng.random() < 0.5:
            c.sock.shutdown(socket.SHUT_RDWR)
        c.close()

    def cancel(rng):
        with prefixd.Client(sock, timeout=20) as c:
            rid = c.send_generate(rng.choice(PROMPTS), max_new=300, temp=0)
            for _ in range(rng.randint(0, 5)):
                c.read_frame()
            c.cancel(rid)
            while True:
                f = c.read_frame()
                if f["id"] == rid and f["type"] in (prefixd.DONE, prefixd.ERROR):
                    break

    def unread(rng):
        c = Raw(sock)
        c.sock.settimeout(2)
        try:
            for _ in range(rng.randint(1, 4)):
                c.sock.sendall(b"".join(prefixd.encode_frame(prefixd.STATS, 1 + i)
                                        for i in range(200)))
                c.sock.sendall(prefixd.encode_generate(999, rng.choice(PROMPTS), max_new=300))
        except socket.timeout:
            pass
        time.sleep(rng.uniform(0.2, 1.5))
        c.close()

    kinds = {"pipeline": pipeline_once, "flood": flood, "slowloris": slowloris, "huge": huge,
             "garbage": garbage, "disconnect": disconnect, "cancel": cancel, "unread": unread}

    def worker(k):
        rng = random.Random(k)
        names = sorted(kinds)
        while time.monotonic() < deadline:
            name = names[k % len(names)] if counts.get(names[k % len(names)], 0) == 0 \
                else rng.choice(names)
            try:
                kinds[name](rng)
                count(name)
            except (OSError, ConnectionError, prefixd.PrefixdError, AssertionError):
                count(name)
                count("refused_or_cut")

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return counts


if __name__ == "__main__":
    # Two ctest groups from one file: the cases, and the soak (its own timeout).
    cases = daemon.cases_of(globals())
    soak = cases.pop("soak")
    daemon.run_cases({"soak": soak} if GROUP == "soak" else cases, sys.argv[5], "prefixd-it-")
