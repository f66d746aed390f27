#!/usr/bin/env python3
"""Integration tests of the remote tier: real `prefixd serve` daemons (stories260K) sharing a real
`redis-server` on a Unix socket in a temporary folder.

usage: test_remote.py PREFIXD MODELS_DIR CLIENT_DIR CASE
       test_remote.py PREFIXD MODELS_DIR CLIENT_DIR --list   (the cases: the case_* functions)
Every daemon has its own RAM and its own disk tier; what one computes, another finds in Redis.
Outputs are compared with a daemon that shares nothing (--no-cache): whatever the remote tier
holds, a greedy output never changes. Needs redis-server (scripts/deps --test installs it): a
case exits 0 with "skipped" in its output when it is missing.
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
REDIS = shutil.which("redis-server")
KEY_PREFIX = b"prefixd:v1:"
PTR_PREFIX = b"prefixd:v1:p:"
HDR = 88  # cache_value_hdr

STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the "
         "park with her big red ball. One day, she saw a small dog sitting under a tree. The dog "
         "was sad because it could not find its mother. Lily wanted to help the dog, so she "
         "looked everywhere in the park.")
STORY2 = ("The sun was shining and the grass was green. A small dog ran to the park to find his "
          "friend, a big cat who liked to sleep in the sun. The cat was not there, so the dog "
          "looked under the bench and behind the tree.")
TAILS = [" Then she", " The dog was", " Her mom said", " They ran to", " At last the"]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class RedisError(Exception):
    pass


class Redis:
    """A real redis-server on a Unix socket in its own temporary folder (no TCP port, no
    persistence), and a minimal RESP client for the tests' own commands."""

    def __init__(self, *extra):
        self.dir = tempfile.mkdtemp(prefix="redis-")
        self.sock = os.path.join(self.dir, "redis.sock")
        self.extra = list(extra)
        self.p = None
        self.start()

    @property
    def url(self):
        return "unix:" + self.sock

    def start(self):
        args = [REDIS, "--port", "0", "--unixsocket", self.sock, "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--logfile", os.path.join(self.dir, "redis.log")] + self.extra
        self.p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        daemon._running.append(self)  # killed by daemon.scratch() whatever happens
        for _ in range(200):
            try:
                if self.cmd("PING") == "PONG":
                    return
            except RedisError as e:
                if "NOAUTH" in str(e):  # up, with a password
                    return
            except OSError:
                pass
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("redis-server did not start: %s" % args)

    def kill(self):
        if self.p and self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        if self in daemon._running:
            daemon._running.remove(self)

    def cmd(self, *args):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        try:
            s.connect(self.sock)
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            return self._reply(s.makefile("rb"))
        finally:
            s.close()

    def _reply(self, f):
        line = f.readline()
        if not line:
            raise RedisError("connection closed")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RedisError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = f.read(n + 2)
            return data[:n]
        if t == b"*":
            return [self._reply(f) for _ in range(int(rest))]
        raise RedisError("unexpected reply %r" % line)

    def block_keys(self):
        """The blocks' keys (not the partial pointers', "prefixd:v1:p:...")."""
        return {k for k in self.cmd("KEYS", KEY_PREFIX + b"*") if not k.startswith(PTR_PREFIX)}

    def chain(self, keys):
        """keys (block keys written for one prompt) in chain order, from the value headers."""
        by_parent, names = {}, set()
        for k in keys:
            v = self.cmd("GET", k)
            lo, hi = struct.unpack_from("<QQ", v, 24)
            plo, phi = struct.unpack_from("<QQ", v, 40)
            check(k == KEY_PREFIX + b"%016x%016x" % (hi, lo), "key %r names another block" % k)
            by_parent[KEY_PREFIX + b"%016x%016x" % (phi, plo)] = k
            names.add(k)
        first = [k for p, k in by_parent.items() if p not in names]
        check(len(first) == 1, "not one chain: %d roots" % len(first))
        out = first
        while out[-1] in by_parent:
            out.append(by_parent[out[-1]])
        return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClusterNode(Redis):
    """One node of a Redis Cluster: TCP on a free local port (the cluster bus needs TCP; its
    port is another free one), cluster mode on, its own folder."""

    def __init__(self, password=None):
        self.port, self.bus, self.password = free_port(), free_port(), password
        extra = ["--port", str(self.port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-port", str(self.bus), "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "60000"]
        if password:
            extra += ["--requirepass", password, "--masterauth", password]
        Redis.__init__(self, *extra)

    def start(self):
        args = [REDIS, "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--logfile", os.path.join(self.dir, "redis.log")] + self.extra
        self.p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        daemon._running.append(self)
        for _ in range(200):
            try:
                if self.cmd("PING") == "PONG":
                    return
            except (RedisError, OSError):
                pass
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("redis-server did not start: %s" % args)

    def cmd(self, *args):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        try:
            pre = [("AUTH", self.password)] if self.password else []
            out = b""
            for c in pre + [args]:
                out += b"*%d\r\n" % len(c)
                for a in c:
                    a = a if isinstance(a, bytes) else str(a).encode()
                    out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            f = s.makefile("rb")
            for _ in pre:
                self._reply(f)
            return self._reply(f)
        finally:
            s.close()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port


class Cluster:
    """A real three-node Redis Cluster on local ports: slots split in three ranges
    (CLUSTER ADDSLOTSRANGE), the nodes introduced with CLUSTER MEET; no replicas."""

    def __init__(self, n=3, password=None):
        self.nodes = [ClusterNode(password) for _ in range(n)]
        for i, nd in enumerate(self.nodes):
            nd.cmd("CLUSTER", "ADDSLOTSRANGE", 16384 * i // n, 16384 * (i + 1) // n - 1)
        for nd in self.nodes[1:]:
            self.nodes[0].cmd("CLUSTER", "MEET", "127.0.0.1", nd.port, nd.bus)

        def ready():
            for nd in self.nodes:
                info = nd.cmd("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info or "cluster_known_nodes:%d" % n not in info:
                    return False
                if len(nd.cmd("CLUSTER", "SLOTS")) != n:
                    return False
            return True
        wait_for(ready, "the cluster to form", timeout=30)
        self.ids = [nd.cmd("CLUSTER", "MYID").decode() for nd in self.nodes]

    @property
    def seeds(self):
        return ",".join(nd.addr for nd in self.nodes)

    def slot(self, key):
        return self.nodes[0].cmd("CLUSTER", "KEYSLOT", key)

    def owner(self, key):
        """The node that serves key's slot now."""
        s = self.slot(key)
        for a, b, (host, port, *_), *_ in self.nodes[0].cmd("CLUSTER", "SLOTS"):
            if a <= s <= b:
                return next(nd for nd in self.nodes if nd.port == port)
        raise AssertionError("slot %d unassigned" % s)

    def block_keys(self):
        keys = set()
        for nd in self.nodes:
            if nd.p.poll() is None:
                keys |= set(nd.cmd("KEYS", KEY_PREFIX + b"*"))
        return {k for k in keys if not k.startswith(PTR_PREFIX)}

    def chain(self, keys):
        return Chain(self).chain(keys)


class Chain(Redis):
    """Redis.chain() over a cluster: GET routed to the key's node."""

    def __init__(self, cluster):  # noqa: super not called: no server of its own
        self.cluster = cluster

    def cmd(self, *args):
        return self.cluster.owner(args[1]).cmd(*args)


def serve(r, *extra, tmp=None, model=None, connected=True):
    """A daemon with its own RAM and disk tier on Redis r (None: no remote tier). The daemon
    connects in the background; with connected, this waits until it has (a request before that
    finds nothing remote, and its blocks are not written)."""
    tmp = tmp or tempfile.mkdtemp(prefix="prefixd-it-")
    extra = list(extra)
    if "--disk-dir" not in extra:
        extra = ["--disk-dir", os.path.join(tmp, "disk")] + extra
    if isinstance(r, Cluster):
        extra = ["--remote-cluster", r.seeds] + extra
    elif r is not None and "--remote" not in extra:
        extra = ["--remote", r.url] + extra
    if r is not None and "--remote-timeout" not in extra:
        # The default 50 ms is shorter than this shared 2-core machine's scheduling hiccups
        # under load (a Redis not scheduled for 50 ms looks stalled); cases about the timeout
        # give their own.
        extra += ["--remote-timeout", "2000"]
    if model:
        extra += ["--model", model]
    d = daemon.Daemon(PREFIXD, MODEL, TOK, *extra, tmp=tmp)
    if r is not None and connected:
        wait_for(lambda: stats(d).get("remote_connected") == 1, "the daemon to connect")
    return d


def reference(prompts, max_new=24, model=None):
    """Each prompt's greedy tokens from a daemon that shares nothing."""
    d = serve(None, "--no-cache", "--disk-dir", "none", model=model)
    try:
        with prefixd.Client(d.sock) as c:
            return {p: c.generate(p, max_new=max_new, temp=0)["tokens"] for p in prompts}
    finally:
        d.stop()


def gen(d, p, max_new=24, namespace=""):
    """Generates on d; returns (result, cached_tokens_remote of this request): DONE's (the client
    asks for it with capability 32), checked against the STATS counter's growth."""
    with prefixd.Client(d.sock) as c:
        before = c.stats().get("cached_tokens_remote", 0)
        res = c.generate(p, max_new=max_new, temp=0, namespace=namespace)
        grown = c.stats().get("cached_tokens_remote", 0) - before
        check(res["cached_tokens_remote"] == grown,
              "DONE says %d remote tokens, STATS grew by %d" % (res["cached_tokens_remote"], grown))
        return res, res["cached_tokens_remote"]


def stats(d):
    with prefixd.Client(d.sock) as c:
        return c.stats()


def wait_for(cond, what, timeout=15):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def written(d, n):
    """Waits until daemon d has sent n blocks to the remote tier."""
    wait_for(lambda: stats(d).get("remote_writes", 0) >= n, "%d remote writes" % n)


def full_blocks(d, p):
    with prefixd.Client(d.sock) as c:
        return (len(c.tokenize(p)) - 1) // 16


# ---- cases ---------------------------------------------------------------------------------


def case_share():
    """Daemon A computes a prompt; daemon B (its own RAM and disk) gets its prefix from Redis,
    with exactly the uncached greedy output; Redis keys carry the prefix and a TTL."""
    r = Redis()
    p2 = STORY + TAILS[1]
    want = reference([STORY, p2])
    a, b = serve(r), serve(r)
    res, remote = gen(a, STORY)
    check(res["tokens"] == want[STORY] and res["cached_tokens"] == 0, "A: %s" % res)
    n = full_blocks(a, STORY)
    written(a, n)
    keys = r.block_keys()
    check(len(keys) >= n, "%d keys in Redis for %d full blocks" % (len(keys), n))
    for k in keys:
        check(len(k) == len(KEY_PREFIX) + 32 and all(c in b"0123456789abcdef" for c in k[11:]),
              "key %r" % k)
        ttl = r.cmd("TTL", k)
        check(0 < ttl <= 86400, "TTL of %r: %s" % (k, ttl))
    res, remote = gen(b, p2)
    check(res["tokens"] == want[p2], "B's output differs from the uncached one")
    check(remote > 0 and res["cached_tokens"] >= remote, "B: remote %d, %s" % (remote, res))
    st = stats(b)
    check(st["remote_hit_tokens"] == remote and st["remote_bytes_in"] > 0, "stats %s" % st)
    check(remote >= st["remote_hit_blocks"] * 16, "stats %s" % st)
    # The blocks B loaded from Redis are not written back: B writes only what it computed.
    mine = (res["prompt_tokens"] + len(res["tokens"]) - 1) // 16 - remote // 16
    check(st["remote_writes_queued"] == mine, "B queued %d writes, computed %d blocks" %
          (st["remote_writes_queued"], mine))
    # Now in B's RAM: the next request is served from there, not from Redis again.
    res, remote = gen(b, p2)
    check(res["tokens"] == want[p2] and remote == 0 and res["cached_tokens"] > 0,
          "second request on B: remote %d, %s" % (remote, res))
    check("remote tier: connected to " + r.url in a.logtext(), "A's log: %s" % a.logtext()[-500:])
    a.stop()
    # What B loaded from Redis lives in its RAM like any block, so it goes to B's disk tier too
    # (written at exit): B again, without the remote tier, finds the prefix on disk.
    check(b.stop() == 0, "B's exit")
    b2 = serve(None, tmp=b.tmp)
    res2, _ = gen(b2, p2)
    check(res2["tokens"] == want[p2] and res2["cached_tokens_disk"] >= remote,
          "B's disk after the remote load: %s" % res2)
    b2.stop()


def case_partial():
    """A prompt whose full blocks all come from Redis and whose last tokens begin a block that
    another daemon wrote: that block's first rows are loaded too (through the partial pointer of
    the tokens it has), so the request computes only what nobody has; the output is exact. A
    bad value under the pointer's block is a miss (deleted), never served."""
    r = Redis()
    a = serve(r)
    with prefixd.Client(a.sock) as c:
        ids = list(c.tokenize(STORY))
    check(len(ids) >= 100, "STORY has %d tokens" % len(ids))
    pa = ids[:96]                      # 6 full blocks (A writes them)
    pb = ids[:90] + [ids[95], ids[94], ids[93]]  # 93 tokens: 5 full blocks, then 10 of A's
    d = serve(None, "--no-cache", "--disk-dir", "none")
    with prefixd.Client(d.sock) as c:
        want = c.generate(ids=pb, max_new=24, temp=0)["tokens"]
    d.stop()
    with prefixd.Client(a.sock) as c:
        c.generate(ids=pa, max_new=24, temp=0)
    written(a, 6)
    ptrs = [k for k in r.cmd("KEYS", PTR_PREFIX + b"*")]
    check(len(ptrs) >= 6 * 15, "%d partial pointers for 6 blocks" % len(ptrs))
    b = serve(r)
    with prefixd.Client(b.sock) as c:
        res = c.generate(ids=pb, max_new=24, temp=0)
    st = stats(b)
    check(res["tokens"] == want, "output differs with a partial block from Redis")
    check(res["cached_tokens_remote"] == 5 * 16 + 10 and res["cached_tokens"] == 90,
          "cached %d, remote %d: want 90" % (res["cached_tokens"], res["cached_tokens_remote"]))
    check(st["remote_partial_hits"] == 1 and st["remote_hit_tokens"] == 90, "stats %s" % st)
    b.stop()
    # B wrote its own block after the five (its 12 tokens, then what it generated): the pointer
    # of all 12 names it now. Every block past the five corrupted: the one the pointer names is
    # a miss, deleted, and the request computes its rows.
    first5 = set(r.chain(r.block_keys())[:5])
    for k in r.block_keys() - first5:
        v = r.cmd("GET", k)
        r.cmd("SET", k, v[:-5] + bytes([v[-5] ^ 1]) + v[-4:])
    e = serve(r)
    with prefixd.Client(e.sock) as c:
        res = c.generate(ids=pb, max_new=24, temp=0)
    check(res["tokens"] == want and res["cached_tokens_remote"] == 80,
          "with a bad partial block: %s" % res)
    check(stats(e)["remote_corrupt_deleted"] == 1, "the bad block was not deleted")
    e.stop()
    a.stop()


def case_namespace():
    """A namespace, or another model, never sees another's blocks: the namespace is part of every
    block key, so of every Redis key; a well-formed value of another model planted under a key is
    a miss, deleted."""
    r = Redis()
    want = reference([STORY])
    a, b = serve(r), serve(r)
    res, _ = gen(a, STORY, namespace="tenant1")
    check(res["tokens"] == want[STORY], "A")
    n = full_blocks(a, STORY)
    written(a, n)
    keys_a = r.block_keys()
    res, remote = gen(b, STORY, namespace="tenant2")
    check(remote == 0 and res["cached_tokens"] == 0 and res["tokens"] == want[STORY],
          "another namespace hit %d remote tokens" % remote)
    res, remote = gen(b, STORY, namespace="tenant1")
    check(remote > 0 and res["tokens"] == want[STORY], "the same namespace on B: %d" % remote)
    a.stop()
    b.stop()
    # Another model (same shape, other weights) on the same Redis: its keys differ, it never hits.
    other = os.path.join(tempfile.mkdtemp(prefix="model-"), "other.bin")
    subprocess.run([PREFIXD, "synth", "--shape", "stories260K", "-o", other, "--seed", "9",
                    "--no-tokenizer"], check=True, capture_output=True, timeout=60)
    want_o = reference([STORY], model=other)
    before = r.block_keys()
    d = serve(r, model=other)
    res, remote = gen(d, STORY)
    check(remote == 0 and res["tokens"] == want_o[STORY], "another model hit %d" % remote)
    written(d, n)
    d.stop()
    keys_o = r.block_keys() - before
    check(keys_o and not (keys_o & keys_a), "the other model's keys %s" % keys_o)
    # Plant model A's values under the other model's keys: well-formed, another fingerprint.
    good = r.cmd("GET", sorted(keys_a)[0])
    for k in keys_o:
        r.cmd("SET", k, good)
    e = serve(r, model=other)
    res, remote = gen(e, STORY)
    check(remote == 0 and res["tokens"] == want_o[STORY], "a foreign value was served")
    st = stats(e)
    check(st["remote_foreign"] >= 1 and st["remote_corrupt_deleted"] >= 1, "stats %s" % st)
    e.stop()


def case_corrupt():
    """Values that fail verification (short, flipped payload byte, truncated, another token id,
    another key) are misses, deleted (and then written again correctly by whoever computes the
    block); the output never changes."""
    r = Redis()
    p2 = STORY + TAILS[2]
    want = reference([p2])
    a = serve(r)
    gen(a, STORY)
    n = full_blocks(a, STORY)
    written(a, n)
    a.stop()
    chain = r.chain(r.block_keys())
    first = chain[0]
    orig = r.cmd("GET", first)

    def flip(v, off):
        return v[:off] + bytes([v[off] ^ 1]) + v[off + 1:]

    bad = {"short": b"xx", "payload": flip(orig, len(orig) - 5), "truncated": orig[:-1],
           "token": flip(orig, HDR), "key": flip(orig, 24), "magic": flip(orig, 0)}
    for name, v in bad.items():
        r.cmd("SET", first, v)
        b = serve(r)
        res, remote = gen(b, p2)
        check(res["tokens"] == want[p2], "%s: output differs" % name)
        check(remote == 0, "%s: a corrupt value was served (%d tokens)" % (name, remote))
        st = stats(b)
        check(st["remote_corrupt_deleted"] == 1, "%s: not deleted: %s" % (name, st))
        check("failed verification" in b.logtext(), "%s: not logged" % name)
        # B computed the block again and wrote it: the same bytes as A's.
        written(b, 1)
        b.stop()
        check(r.cmd("GET", first) == orig, "%s: the rewritten value differs" % name)
    # Not a string at all under the key: as bad as a corrupt value.
    r.cmd("DEL", first)
    r.cmd("RPUSH", first, "x")
    b = serve(r)
    res, remote = gen(b, p2)
    check(res["tokens"] == want[p2] and remote == 0, "a list under the key")
    check(stats(b)["remote_corrupt_deleted"] == 1, "the list was not deleted")
    written(b, 1)
    b.stop()
    check(r.cmd("GET", first) == orig, "not rewritten after the list")


def case_redis_dies():
    """Redis killed while requests load from it (stopped first, so that the loads are surely in
    flight): every request completes with the exact output; Redis restarted empty: the daemon
    reconnects and shares again."""
    r = Redis()
    prompts = [STORY + t for t in TAILS]
    want = reference(prompts)
    a = serve(r)
    gen(a, STORY)
    written(a, full_blocks(a, STORY))
    b = serve(r, "--cache-mem", "2M", "--disk-dir", "none", "--remote-timeout", "5000")
    os.kill(r.p.pid, signal.SIGSTOP)
    results, errors = {}, []

    def run(p):
        try:
            with prefixd.Client(b.sock) as c:
                results[p] = c.generate(p, max_new=24, temp=0)["tokens"]
        except Exception as ex:  # noqa: BLE001 (reported below)
            errors.append(repr(ex))

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    time.sleep(0.5)
    check(not results, "a request ended while its load was held: %s" % results)
    r.kill()
    for t in threads:
        t.join(60)
    check(not errors, "errors: %s" % errors)
    for p in prompts:
        check(results.get(p) == want[p], "output differs after Redis died: %r" % p)
    check(stats(b)["remote_errors"] >= 1, "no error counted: %s" % stats(b))
    # More requests while it is down: served, computed.
    for p in prompts[:2]:
        res, remote = gen(b, p)
        check(res["tokens"] == want[p] and remote == 0, "while down")
    wait_for(lambda: "remote tier:" in b.logtext() and "retrying" in b.logtext(),
             "B to log the lost connection")
    # Back, empty: B reconnects (backoff at most 5 s), A's next computation is shared again.
    r.start()
    check(r.cmd("DBSIZE") == 0, "restarted with data")
    wait_for(lambda: stats(b).get("remote_connected") == 1, "B to reconnect", timeout=20)
    wait_for(lambda: stats(a).get("remote_connected") == 1, "A to reconnect", timeout=20)
    p = STORY2  # nothing of it is in B's RAM
    want2 = reference([p])
    c = serve(r)
    gen(c, p)
    written(c, full_blocks(c, p))
    res, remote = gen(b, p)
    check(res["tokens"] == want2[p] and remote > 0, "after the restart: remote %d" % remote)
    check("connected to %s again" % r.url in b.logtext(), "no reconnect logged")
    a.stop()
    b.stop()
    c.stop()


def case_down_at_start():
    """No Redis when the daemon starts: it starts, logs, serves (computing), and connects when
    Redis comes up (retrying with backoff)."""
    r = Redis()
    r.kill()
    want = reference([STORY])
    b = serve(r, connected=False)
    res, remote = gen(b, STORY)
    check(res["tokens"] == want[STORY] and remote == 0, "served without Redis")
    check("cannot connect" in b.logtext(), "no log: %s" % b.logtext()[-800:])
    st = stats(b)
    check(st["remote_connected"] == 0 and st["remote_writes_failed"] > 0, "stats %s" % st)
    r.start()
    wait_for(lambda: stats(b).get("remote_connected") == 1, "a connection", timeout=20)
    a = serve(r)
    p = STORY + TAILS[3]
    want = reference([p])
    gen(a, p)
    written(a, full_blocks(a, p))
    c = serve(r)
    res, remote = gen(c, p)
    check(res["tokens"] == want[p] and remote > 0, "shared once up")
    for d in (a, b, c):
        d.stop()


def case_slow():
    """A Redis that does not answer (stopped with SIGSTOP) costs a request at most the deadline
    (--remote-timeout) per round trip: it computes, with the exact output."""
    r = Redis()
    p2 = STORY + TAILS[4]
    want = reference([p2])
    a = serve(r)
    gen(a, STORY)
    written(a, full_blocks(a, STORY))
    b = serve(r, "--remote-timeout", "100")
    os.kill(r.p.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        res, remote = gen(b, p2)
        dt = (time.monotonic() - t0) * 1e3
    finally:
        os.kill(r.p.pid, signal.SIGCONT)
    check(res["tokens"] == want[p2] and remote == 0, "slow: %s" % res)
    check(res["server_ttft_ms"] < 2000, "TTFT %.0f ms past a 100 ms deadline" % res["server_ttft_ms"])
    st = stats(b)
    check(st["remote_timeouts"] >= 1, "no timeout counted: %s" % st)
    # It answers again: the daemon reconnects and loads.
    wait_for(lambda: stats(b).get("remote_connected") == 1, "reconnect", timeout=20)
    c = serve(r, "--remote-timeout", "1000")
    res, remote = gen(c, p2)
    check(res["tokens"] == want[p2] and remote > 0, "after the stall: %d" % remote)
    print("stalled request: %.0f ms" % dt)
    for d in (a, b, c):
        d.stop()


def case_full():
    """A full Redis (maxmemory tiny, noeviction): writes fail, counted and logged once; serving
    goes on, exactly."""
    r = Redis("--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    prompts = [STORY + t for t in TAILS]
    want = reference(prompts)
    a = serve(r)
    for p in prompts:
        res, _ = gen(a, p)
        check(res["tokens"] == want[p], "output with a full Redis")
    wait_for(lambda: stats(a)["remote_write_pending"] == 0, "the writes to end")
    st = stats(a)
    check(st["remote_writes_refused"] > 0 and st["remote_writes_failed"] > 0, "stats %s" % st)
    check(st["remote_connected"] == 1, "a refused write dropped the connection")
    check(a.logtext().count("the server refused") == 1, "not logged once: %s" % a.logtext())
    a.stop()


def case_options():
    """Bad --remote options are refused with a message; a password file authenticates."""
    tmp = tempfile.mkdtemp(prefix="prefixd-it-")
    base = [PREFIXD, "serve", "--model", MODEL, "--tokenizer", TOK, "--socket",
            os.path.join(tmp, "p.sock"), "--disk-dir", "none"]
    pw = os.path.join(tmp, "pw")
    with open(pw, "w") as f:
        f.write("s3cret\n")
    os.chmod(pw, 0o644)
    for args, want in [(["--remote", "http://x"], "not a URL"),
                       (["--remote", "redis://h:99999"], "port"),
                       (["--remote", "redis://u:p@h"], "--remote-password-file"),
                       (["--remote", "unix:"], "no socket path"),
                       (["--remote-ttl", "0"], "--remote-ttl"),
                       (["--remote-timeout", "abc"], "--remote-timeout"),
                       (["--remote-password-file", pw], "chmod 600")]:
        p = subprocess.run(base + args, capture_output=True, text=True, timeout=30)
        check(p.returncode == 2 and want in p.stderr, "%s: %d %s" % (args, p.returncode, p.stderr))
    os.chmod(pw, 0o600)
    r = Redis("--requirepass", "s3cret")
    d = serve(r, "--remote-password-file", pw)
    wait_for(lambda: stats(d).get("remote_connected") == 1, "AUTH")
    d.stop()
    d = serve(r, connected=False)
    wait_for(lambda: "cannot" in d.logtext() or "NOAUTH" in d.logtext() or "AUTH" in d.logtext(),
             "an authentication error logged")
    check(stats(d)["remote_connected"] == 0, "connected without the password")
    d.stop()


def case_cluster_share():
    """A three-node Redis Cluster with a password on every node (--remote-cluster, the password
    file): daemon A's blocks spread over the nodes by hash slot; daemon B loads the whole prefix
    from them with exactly the uncached output, no redirection needed (our CRC16 slots are the
    server's)."""
    tmp = tempfile.mkdtemp(prefix="prefixd-it-")
    pw = os.path.join(tmp, "pw")
    with open(pw, "w") as f:
        f.write("cl-s3cret\n")
    os.chmod(pw, 0o600)
    cl = Cluster(password="cl-s3cret")
    p2 = STORY + TAILS[1]
    want = reference([STORY, p2])
    a, b = serve(cl, "--remote-password-file", pw), serve(cl, "--remote-password-file", pw)
    res, _ = gen(a, STORY)
    check(res["tokens"] == want[STORY], "A")
    n = full_blocks(a, STORY)
    written(a, n)
    per_node = [len(nd.cmd("KEYS", KEY_PREFIX + b"*")) for nd in cl.nodes]
    check(sum(per_node) >= n and sum(1 for k in per_node if k) >= 2,
          "blocks per node %s for %d blocks" % (per_node, n))
    for k in cl.block_keys():
        check(0 < cl.owner(k).cmd("TTL", k) <= 86400, "TTL of %r" % k)
    res, remote = gen(b, p2)
    check(res["tokens"] == want[p2], "B's output differs from the uncached one")
    check(remote == n * 16, "B loaded %d remote tokens of %d" % (remote, n * 16))
    st = stats(b)
    check(st["remote_cluster_nodes"] == 3 and st["remote_cluster_nodes_up"] == 3, "stats %s" % st)
    check(st["remote_cluster_moved"] == 0 and st["remote_cluster_asked"] == 0,
          "redirected: our slots differ from the server's: %s" % st)
    check("remote tier: connected to cluster " in a.logtext(), "A's log: %s" % a.logtext()[-500:])
    # Without the password, no node lets it in: it serves, computing.
    c = serve(cl, connected=False)
    res, remote = gen(c, p2)
    check(res["tokens"] == want[p2] and remote == 0, "without the password: %d" % remote)
    check(stats(c)["remote_connected"] == 0, "connected without the password")
    for d in (a, b, c):
        d.stop()


def move_slot(cl, key, finish):
    """Migrates key's slot (and its keys) from its node to the next one; with finish the slot
    is then the other node's (CLUSTER SETSLOT NODE everywhere), else it stays half-migrated
    (MIGRATING / IMPORTING: the source answers ASK for the keys moved)."""
    src = cl.owner(key)
    dst = cl.nodes[(cl.nodes.index(src) + 1) % len(cl.nodes)]
    sid, did = cl.ids[cl.nodes.index(src)], cl.ids[cl.nodes.index(dst)]
    slot = cl.slot(key)
    dst.cmd("CLUSTER", "SETSLOT", slot, "IMPORTING", sid)
    src.cmd("CLUSTER", "SETSLOT", slot, "MIGRATING", did)
    keys = src.cmd("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    check(key in keys, "the key is not on its node")
    src.cmd("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *keys)
    if finish:
        for nd in cl.nodes:
            nd.cmd("CLUSTER", "SETSLOT", slot, "NODE", did)
        wait_for(lambda: cl.owner(key) is dst, "the slot to move")
    return src, dst


def case_cluster_moved():
    """A slot resharded while daemons hold the old map: a block in migration is found through
    ASK, a block whose slot moved through MOVED (the map read again); both daemons load the
    whole prefix, exactly."""
    cl = Cluster()
    p2 = STORY + TAILS[2]
    want = reference([p2])
    a = serve(cl)
    gen(a, STORY)
    n = full_blocks(a, STORY)
    written(a, n)
    chain = cl.chain(cl.block_keys())
    b1, b2 = serve(cl), serve(cl)  # both read the map now
    # Half-migrated: the first block's key is on the new node, the slot still the old one's.
    src, dst = move_slot(cl, chain[0], finish=False)
    try:
        src.cmd("EXISTS", chain[0])
        check(False, "the key was not migrated")
    except RedisError as e:
        check(str(e).startswith("ASK "), "the old node says %s" % e)
    res, remote = gen(b1, p2)
    st = stats(b1)
    check(res["tokens"] == want[p2] and remote == n * 16, "through ASK: %d, %s" % (remote, st))
    check(st["remote_cluster_asked"] >= 1 and st["remote_cluster_moved"] == 0, "stats %s" % st)
    # Finished: the slot is dst's; b2 still maps it to src, which answers MOVED.
    for nd in cl.nodes:
        nd.cmd("CLUSTER", "SETSLOT", cl.slot(chain[0]), "NODE", cl.ids[cl.nodes.index(dst)])
    wait_for(lambda: cl.owner(chain[0]) is dst, "the slot to move")
    before = stats(b2)["remote_cluster_map_refreshes"]
    time.sleep(0.2)  # the map is read again at most every 100 ms (b2 read it at its start)
    res, remote = gen(b2, p2)
    st = stats(b2)
    check(res["tokens"] == want[p2] and remote == n * 16, "through MOVED: %d, %s" % (remote, st))
    check(st["remote_cluster_moved"] >= 1, "no MOVED followed: %s" % st)
    check(st["remote_cluster_map_refreshes"] > before, "the map was not read again: %s" % st)
    for d in (a, b1, b2):
        d.stop()


def case_cluster_node_down():
    """A node killed while requests load from the cluster (stopped first, so the loads are in
    flight): every request completes with the exact output; its blocks are misses (a request
    loads the chain up to the first of them), the other nodes still serve, writes to it fail
    (counted); when it is back the daemon uses it again."""
    cl = Cluster()
    prompts = [STORY + t for t in TAILS]
    want = reference(prompts)
    a = serve(cl)
    gen(a, STORY)
    n = full_blocks(a, STORY)
    written(a, n)
    chain = cl.chain(cl.block_keys())
    owners = [cl.owner(k) for k in chain]
    dead = owners[n // 2]
    first_dead = owners.index(dead)
    b = serve(cl, "--cache-mem", "2M", "--disk-dir", "none", "--remote-timeout", "5000")
    os.kill(dead.p.pid, signal.SIGSTOP)
    results, errors = {}, []

    def run(p):
        try:
            with prefixd.Client(b.sock) as c:
                results[p] = c.generate(p, max_new=24, temp=0)["tokens"]
        except Exception as ex:  # noqa: BLE001 (reported below)
            errors.append(repr(ex))

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    time.sleep(0.5)
    check(not results, "a request ended while its load was held: %s" % results)
    dead.kill()
    for t in threads:
        t.join(60)
    check(not errors, "errors: %s" % errors)
    for p in prompts:
        check(results.get(p) == want[p], "output differs after a node died: %r" % p)
    st = stats(b)
    check(st["remote_errors"] >= 1 and st["remote_cluster_nodes_up"] == 2, "stats %s" % st)
    check(st["remote_connected"] == 1, "the other nodes were dropped too: %s" % st)
    check("cluster node %s" % dead.addr in b.logtext(), "not logged: %s" % b.logtext()[-800:])
    # A fresh daemon: the blocks before the first one on the dead node come from the others.
    c = serve(cl, "--remote-timeout", "2000")
    res, remote = gen(c, prompts[0])
    check(res["tokens"] == want[prompts[0]] and remote == first_dead * 16,
          "with a node down: %d remote tokens, want %d" % (remote, first_dead * 16))
    # Back (its data lost, its slots its own again, from its nodes.conf): written to and read
    # from again.
    dead.start()
    wait_for(lambda: "cluster_state:ok" in dead.cmd("CLUSTER", "INFO").decode(),
             "the node to rejoin", timeout=30)
    p = STORY2 + TAILS[0]
    want2 = reference([p])
    e = serve(cl)
    gen(e, p)
    written(e, full_blocks(e, p))
    d = serve(cl)
    res, remote = gen(d, p)
    check(res["tokens"] == want2[p] and remote == full_blocks(e, p) * 16,
          "after the node came back: %d" % remote)
    for x in (a, b, c, d, e):
        x.stop()


def case_cluster_options():
    """Bad --remote-cluster seed lists are refused with a message naming the entry."""
    tmp = tempfile.mkdtemp(prefix="prefixd-it-")
    base = [PREFIXD, "serve", "--model", MODEL, "--tokenizer", TOK, "--socket",
            os.path.join(tmp, "p.sock"), "--disk-dir", "none"]
    for args, want in [(["--remote-cluster", ""], "empty"),
                       (["--remote-cluster", "h1:7000,,h2:7001"], "an empty entry"),
                       (["--remote-cluster", "h1"], "'h1': expected HOST:PORT"),
                       (["--remote-cluster", "h1:0"], "1..65535"),
                       (["--remote-cluster", "h1:7000x"], "1..65535"),
                       (["--remote-cluster", "[::1:7000"], "[IPv6]:PORT"),
                       (["--remote-cluster", "h:1", "--remote", "unix:/x"], "one remote tier")]:
        p = subprocess.run(base + args, capture_output=True, text=True, timeout=30)
        check(p.returncode == 2 and want in p.stderr, "%s: %d %s" % (args, p.returncode, p.stderr))


def http_get(sock_path, path, body=None):
    """GET path (POST body, a JSON text, if given) over HTTP on a Unix socket; returns
    (status, body text)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(sock_path)
    if body is None:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
    else:
        b = body.encode()
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
                  b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(b), b))
    data = b""
    while True:
        k = s.recv(65536)
        if not k:
            break
        data += k
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def metrics(text):
    """{name with labels: value} of a Prometheus text page; checks every family is typed and
    that counters end in _total."""
    out, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
            check((kind == "counter") == name.endswith("_total"), "counter name: %s" % line)
        elif line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    for k in out:
        base = k.split("{")[0]
        fam = base[:-len(suffix)] if any(base.endswith(suffix := x) for x in
                                         ("_bucket", "_sum", "_count")) else base
        check(base in types or fam in types, "untyped metric %s" % k)
    return out


def case_protocol_and_metrics():
    """HELLO_OK's capability 32 says the daemon has a remote tier; DONE carries the request's
    cached_tokens_remote to a client that asked (capability 32) and stays 52 bytes for one that
    did not; GET /metrics has the remote tier's counters and round-trip histogram."""
    r = Redis()
    p2 = STORY + TAILS[3]
    want = reference([p2])
    a = serve(r)
    gen(a, STORY)
    n = full_blocks(a, STORY)
    written(a, n)
    tmp = tempfile.mkdtemp(prefix="prefixd-it-")
    hsock = os.path.join(tmp, "http.sock")
    b = serve(r, "--http", "unix:" + hsock)
    with prefixd.Client(b.sock) as c:
        check(c.server["caps"] & 32, "HELLO_OK caps %d without the remote tier's bit" %
              c.server["caps"])
        res = c.generate(p2, max_new=24, temp=0)
    # The full blocks, and the first rows of the block after them (A wrote it: its prompt and
    # what it generated), through its partial pointer.
    check(res["tokens"] == want[p2] and n * 16 <= res["cached_tokens_remote"] < n * 16 + 16,
          "DONE: %s" % res)
    remote = res["cached_tokens_remote"]
    # A client that does not ask gets DONE as before: no flag, 52 bytes.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(b.sock)
    s.sendall(prefixd.encode_hello())
    s.sendall(prefixd.encode_generate(1, p2, None, max_new=2, temp=0, top_p=0, seed=0,
                                      namespace=""))
    buf, done = bytearray(), None
    while done is None:
        buf += s.recv(65536)
        while True:
            f, k = prefixd.decode_frame(buf)
            if not f:
                break
            del buf[:k]
            if f["type"] == prefixd.DONE:
                done = (f, k)
    s.close()
    check(done[0]["flags"] == 0 and done[1] == 12 + 52, "unasked DONE: %s, %d bytes" % done)
    d = serve(None)
    with prefixd.Client(d.sock) as c:
        check(not c.server["caps"] & 32, "caps %d without --remote" % c.server["caps"])
        check(c.generate(STORY, max_new=2, temp=0)["cached_tokens_remote"] == 0, "no tier")
    d.stop()
    wait_for(lambda: os.path.exists(hsock), "the HTTP socket")
    status, text = http_get(hsock, "/metrics")
    check(status == 200, "/metrics: %d" % status)
    m = metrics(text)
    st = stats(b)
    for k, v in [("prefixd_cached_tokens_remote_total", remote), ("prefixd_remote_up", 1),
                 ("prefixd_remote_hit_blocks_total", st["remote_hit_blocks"]),
                 ("prefixd_remote_miss_blocks_total", st["remote_misses"]),
                 ('prefixd_remote_bytes_total{direction="in"}', st["remote_bytes_in"]),
                 ('prefixd_remote_bytes_total{direction="out"}', st["remote_bytes_out"]),
                 ('prefixd_remote_errors_total{kind="corrupt"}', 0),
                 ('prefixd_remote_writes_total{outcome="dropped"}', 0),
                 ("prefixd_remote_round_trip_seconds_count", st["remote_round_trips"]),
                 ('prefixd_remote_round_trip_seconds_bucket{le="+Inf"}',
                  st["remote_round_trips"])]:
        check(m.get(k) == v, "%s = %s, want %s" % (k, m.get(k), v))
    check(m["prefixd_remote_hit_blocks_total"] >= n and m["prefixd_remote_round_trip_seconds_sum"]
          > 0 and m['prefixd_remote_bytes_total{direction="in"}'] > 0, "metrics %s" % m)
    check("prefixd_remote_cluster_nodes" not in m, "cluster metrics without a cluster")
    # Over HTTP, the request's usage has its remote share too.
    esock = os.path.join(tmp, "http-e.sock")
    e = serve(r, "--http", "unix:" + esock)
    wait_for(lambda: os.path.exists(esock), "the HTTP socket")
    status, text = http_get(esock, "/v1/completions", json.dumps(
        {"prompt": p2, "max_tokens": 4, "temperature": 0}))
    u = json.loads(text)
    # (B wrote the block it went on with, so the pointer of all its tokens names B's now.)
    check(status == 200 and u["prefixd"]["cached_tokens_remote"] >= remote, "HTTP: %s" % text)
    for x in (a, b, e):
        x.stop()


CASES = {k[5:]: v for k, v in globals().items() if k.startswith("case_")}

if __name__ == "__main__":
    if CASE == "--list":  # ctest's list of cases (tests/CMakeLists.txt, prefixd_test_cases)
        print("\n".join(CASES))
        sys.exit(0)
    fn = CASES.get(CASE)
    if not fn:
        print("unknown case %s" % CASE, file=sys.stderr)
        sys.exit(2)
    if not REDIS:
        print("skipped: no redis-server (scripts/deps --test installs it)")
        sys.exit(0)
    try:
        with daemon.scratch("prefixd-it-%s-" % CASE):
            fn()
    except AssertionError as e:
        print("FAIL: %s" % e, file=sys.stderr)
        print("0 passed, 1 failed")
        sys.exit(1)
    print("1 passed, 0 failed")
