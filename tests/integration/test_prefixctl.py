#!/usr/bin/env python3
"""Integration tests of the clients as a user meets them: prefixctl's options, help, exit codes and
version, the sampling defaults shared by `prefixd run`, prefixctl and the Python client, the Python
client's multiplexing, and both clients refusing a socket served by another user.

usage: test_prefixctl.py PREFIXD PREFIXCTL MODELS_DIR CLIENT_DIR CASE
Each case starts its own daemon (stories260K on a temporary socket) when it needs one.
"""

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

PREFIXD, PREFIXCTL, MODELS, CLIENT_DIR, CASE = sys.argv[1:6]
sys.path.insert(0, CLIENT_DIR)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402
import prefixd  # noqa: E402

MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.bin")
STORY = "Once upon a time, there was a little girl named Lily."
SUBCOMMANDS = ["generate", "chat", "warm", "stats", "tokenize", "detokenize", "bench"]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Daemon(daemon.Daemon):
    def __init__(self, *extra):
        tmp = tempfile.mkdtemp(prefix="prefixd-it-")
        super().__init__(PREFIXD, MODEL, TOK, "--disk-dir", "none", *extra, tmp=tmp)

    def stop(self, *a):
        try:
            return super().stop(*a)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def ctl(*args, stdin=None, env=None):
    return subprocess.run([PREFIXCTL] + list(args), input=stdin, capture_output=True, text=True,
                          timeout=60, env=env)


def with_daemon(fn):
    d = Daemon()
    try:
        fn(d)
    finally:
        d.stop()


def case_help():
    nowhere = "/nonexistent/prefixd.sock"  # help must not need a daemon
    for sub in SUBCOMMANDS:
        for flag in ("--help", "-h"):
            for argv in ([sub, flag], ["--socket", nowhere, sub, flag], [sub, "--socket", nowhere,
                                                                           flag]):
                p = ctl(*argv)
                check(p.returncode == 0, "%s: exit %d: %s" % (argv, p.returncode, p.stderr))
                check("usage: prefixctl" in p.stdout and sub in p.stdout.split("\n")[0],
                      "%s: usage of %s on stdout: %r" % (argv, sub, p.stdout[:200]))
                check(p.stderr == "", "%s: stderr %r" % (argv, p.stderr))
    p = ctl("--help")
    check(p.returncode == 0 and all(s in p.stdout for s in SUBCOMMANDS), "top-level --help")

    def literal(d):
        # A text that starts with '-' goes after '--'.
        p = ctl("--socket", d.sock, "tokenize", "--", "--help")
        q = ctl("--socket", d.sock, "tokenize", "x --help")
        check(p.returncode == 0 and q.returncode == 0, "tokenize -- --help: %s" % p.stderr)
        ids, ref = p.stdout.split(), q.stdout.split()
        check(len(ids) > 2 and ids[0] == "1", "tokenize -- --help: %r" % p.stdout)
        with prefixd.Client(d.sock) as c:
            check([int(x) for x in ids] == c.tokenize("--help"), "tokenize -- --help: ids")
        check(ref != ids, "tokenize: different texts, different ids")
        p = ctl("--socket", d.sock, "detokenize", "--", "1", "-3")
        check(p.returncode != 0, "detokenize -3 is refused: %r" % p.stdout)
    with_daemon(literal)


def case_global_after():
    def body(d):
        env = dict(os.environ, PREFIXD_SOCKET="/nonexistent/prefixd.sock")
        for argv in (["generate", "--socket", d.sock, "--prompt", STORY, "-n", "4", "--temp", "0"],
                     ["generate", "--prompt", STORY, "-n", "4", "--temp", "0", "--socket", d.sock],
                     ["generate", "--prompt", STORY, "-n", "4", "--temp", "0",
                      "--socket=" + d.sock],
                     ["--socket", d.sock, "generate", "--prompt", STORY, "-n", "4", "--temp",
                      "0"]):
            p = ctl(*argv, env=env)
            check(p.returncode == 0 and len(p.stdout.strip()) > 0,
                  "%s: exit %d: %s" % (argv, p.returncode, p.stderr))
        for argv in (["stats", "--socket", d.sock, "--json"], ["tokenize", "--socket", d.sock,
                                                                 "hi"],
                     ["detokenize", "--socket", d.sock, "1", "403"],
                     ["bench", "--socket", d.sock, "--help"]):
            p = ctl(*argv, env=env)
            check(p.returncode == 0, "%s: exit %d: %s" % (argv, p.returncode, p.stderr))
        p = ctl("stats", "--socket", env=env)
        check(p.returncode == 2 and "--socket" in p.stderr, "--socket without a path: %s" % p.stderr)
    with_daemon(body)


def case_detokenize_bos():
    def body(d):
        p = ctl("--socket", d.sock, "tokenize", STORY)
        ids = p.stdout.split()
        check(p.returncode == 0 and ids[0] == "1", "tokenize: %r %s" % (p.stdout, p.stderr))
        p = ctl("--socket", d.sock, "detokenize", *ids)
        check(p.returncode == 0 and p.stdout == STORY + "\n",
              "detokenize with BOS: %r (%s)" % (p.stdout, p.stderr))
        p = ctl("--socket", d.sock, "detokenize", *(ids + ["2"]))
        check(p.stdout == STORY + "\n", "detokenize with BOS and EOS: %r" % p.stdout)
        with prefixd.Client(d.sock) as c:
            check(c.detokenize([int(x) for x in ids]) == STORY, "Python detokenize with BOS")
    with_daemon(body)


def case_exit_codes():
    nowhere = "/nonexistent/prefixd.sock"
    usage = [["frobnicate"], ["generate", "--prompt", "x", "--frob"], ["generate"],
             ["generate", "--prompt", "x", "--prompt-file", "/etc/hostname"],
             ["generate", "--prompt", "x", "-n", "-1"], ["generate", "--prompt", "x", "-n", "abc"],
             ["generate", "--prompt", "x", "-n", "4294967296"],
             ["generate", "--prompt", "x", "--temp", "-1"],
             ["generate", "--prompt", "x", "--namespace", "no/slash"],
             ["generate", "--prompt-file", "/nonexistent/prompt.txt"],
             ["warm", "--prompt", "x", "--namespace", "a b"], ["stats", "extra"],
             ["tokenize"], ["tokenize", "a", "b"], ["detokenize"], ["detokenize", "x1"],
             ["detokenize", "99999999999"], ["--socket"], []]
    for argv in usage:
        p = ctl("--socket", nowhere, *argv) if argv and argv != ["--socket"] else ctl(*argv)
        check(p.returncode == 2, "%s: exit %d, want 2 (usage): %s" % (argv, p.returncode,
                                                                      p.stderr))
        check(p.stderr.startswith("prefixctl") or p.stderr.startswith("usage"),
              "%s: a message: %r" % (argv, p.stderr))
    p = ctl("--socket", nowhere, "stats")
    check(p.returncode == 1 and nowhere in p.stderr, "no daemon: exit %d %s" % (p.returncode,
                                                                                 p.stderr))

    def body(d):
        p = ctl("--socket", d.sock, "generate", "--prompt", "x", "--namespace", "ok-ns", "-n", "2")
        check(p.returncode == 0, "good namespace: %s" % p.stderr)
        p = ctl("--socket", d.sock, "generate", "--prompt", "x", "--namespace", "no/slash")
        check(p.returncode == 2 and "namespace" in p.stderr, "bad namespace: %d %s" % (
            p.returncode, p.stderr))
        # Input the daemon refuses as invalid is a usage error too: a prompt longer than the
        # model's context (stories260K: 512).
        p = ctl("--socket", d.sock, "generate", "--prompt", "Lily " * 2000, "-n", "1")
        check(p.returncode == 2 and p.stderr.startswith("prefixctl: "),
              "prompt too long: %d %s" % (p.returncode, p.stderr))
    with_daemon(body)


def version_of(out, prog):
    m = re.match(r"^%s (\d+\.\d+\.\d+) \(git (\S+)\)\n$" % prog, out)
    check(m is not None, "%s --version: %r" % (prog, out))
    return m.group(1), m.group(2)


def case_version():
    cml = open(os.path.join(os.path.dirname(__file__), "..", "..", "CMakeLists.txt")).read()
    want = re.search(r"project\(prefixd VERSION (\S+)", cml).group(1)
    p = ctl("--version")
    check(p.returncode == 0, "prefixctl --version: exit %d %s" % (p.returncode, p.stderr))
    v1 = version_of(p.stdout, "prefixctl")
    p = subprocess.run([PREFIXD, "--version"], capture_output=True, text=True, timeout=30)
    check(p.returncode == 0, "prefixd --version: exit %d %s" % (p.returncode, p.stderr))
    v2 = version_of(p.stdout, "prefixd")
    check(v1 == v2 and v1[0] == want, "versions %s %s, project %s" % (v1, v2, want))
    check(v1[1] == "unknown" or re.match(r"^[0-9a-f]{7,}(-dirty)?$|^v?\d", v1[1]),
          "git describe: %r" % v1[1])


def gen_text(d, *extra):
    p = ctl("--socket", d.sock, "generate", "--prompt", "Once upon a time", "-n", "24", *extra)
    check(p.returncode == 0, "generate %s: %s" % (extra, p.stderr))
    return p.stdout


def case_sampling():
    # One set of defaults, written in every client's help.
    defaults = ("0.8", "0.95")
    run_help = subprocess.run([PREFIXD, "run", "--help"], capture_output=True, text=True).stdout
    gen_help = ctl("generate", "--help").stdout
    for text, who in ((run_help, "prefixd run"), (gen_help, "prefixctl generate")):
        check("default %s" % defaults[0] in text and "default %s" % defaults[1] in text,
              "%s --help states temp %s, top-p %s: %s" % (who, defaults[0], defaults[1], text))
    check((prefixd.DEFAULT_TEMP, prefixd.DEFAULT_TOP_P) == (0.8, 0.95), "Python defaults")

    def body(d):
        # Sampled without a seed: a different text each time (24 tokens of stories260K at
        # temperature 0.8 repeat with negligible probability). Greedy and seeded: the same.
        sampled = [gen_text(d) for _ in range(3)]
        check(len(set(sampled)) > 1, "three unseeded samples were identical: %r" % sampled)
        check(gen_text(d, "--temp", "0") == gen_text(d, "--temp", "0"), "greedy repeats")
        check(gen_text(d, "--seed", "42") == gen_text(d, "--seed", "42"), "a seed repeats")
        with prefixd.Client(d.sock) as c:
            py = [c.generate("Once upon a time", max_new=24)["tokens"] for _ in range(3)]
            check(len(set(map(tuple, py))) > 1, "Python: unseeded samples identical")
            g = [c.generate("Once upon a time", max_new=24, temp=0)["tokens"] for _ in range(2)]
            check(g[0] == g[1], "Python: greedy repeats")
            s = [c.generate("Once upon a time", max_new=24, seed=42)["tokens"] for _ in range(2)]
            check(s[0] == s[1], "Python: a seed repeats")
        p = ctl("--socket", d.sock, "generate", "--prompt", "Once upon a time", "-n", "24",
                "--seed", "42", "--json")
        check(json.loads(p.stdout)["tokens"] == s[0], "prefixctl and Python: same defaults")
    with_daemon(body)
    outs = []
    for _ in range(3):
        p = subprocess.run([PREFIXD, "run", "--model", MODEL, "--tokenizer", TOK, "--prompt",
                            "Once upon a time", "-n", "24", "--cache-mem", "16M"],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 0, "prefixd run: %s" % p.stderr)
        outs.append(p.stdout)
    check(len(set(outs)) > 1, "prefixd run: three unseeded samples were identical: %r" % outs)


def case_python_interleave():
    def body(d):
        with prefixd.Client(d.sock) as c:
            want_a = c.generate(STORY, max_new=40, temp=0)["tokens"]
            want_b = c.generate("Tom had a red ball", max_new=6, temp=0)["tokens"]
        with prefixd.Client(d.sock, timeout=30) as c:
            a = c.send_generate(STORY, max_new=40, temp=0)
            # While a streams, blocking calls on the same connection wait for their own replies.
            b = c.generate("Tom had a red ball", max_new=6, temp=0)
            ids = c.tokenize("Lily")
            st = c.stats()
            check(b["tokens"] == want_b, "second request: %r" % b["tokens"])
            check(ids[0] == 1 and isinstance(st, dict), "tokenize/stats between")
            ra = c.result(a)
            check(ra["tokens"] == want_a and ra["finish_reason"] == "length",
                  "first request lost frames: %d of %d tokens" % (len(ra["tokens"]), len(want_a)))
            # read_frame() hands queued frames out in arrival order before reading more.
            a2 = c.send_generate(STORY, max_new=5, temp=0)
            c.tokenize("x")
            types = []
            while not types or types[-1] != prefixd.DONE:
                f = c.read_frame()
                check(f["id"] == a2, "read_frame: frame of another request %r" % f)
                types.append(f["type"])
            check(types.count(prefixd.TOKEN) == 5, "read_frame: %r" % types)
            # The kept frames are bounded: past the bound the blocking call raises PendingFull
            # and leaves the frame unread, so a's frames all still arrive, in order.
            a3 = c.send_generate(STORY, max_new=30, temp=0)
            time.sleep(0.5)
            c.set_pending_max(300)
            try:
                c.tokenize("Lily")
                raise AssertionError("tokenize kept more than 300 bytes of other frames")
            except prefixd.PendingFull as e:
                check("set_pending_max" in str(e) and c.pending_bytes <= 300, "PendingFull: %s" % e)
            c.set_pending_max(prefixd.PENDING_MAX)
            ra = c.result(a3)
            check(ra["tokens"] == want_a[:30], "after PendingFull: %d tokens %r"
                  % (len(ra["tokens"]), ra["tokens"][:5]))
            check(c.read_frame()["type"] == prefixd.TOKENS and c.pending == [],
                  "the tokenize reply comes after")
    with_daemon(body)


def case_max_new_range():
    for bad in (-1, 2 ** 32, 2 ** 40, 1.5, "8"):
        try:
            prefixd.encode_generate(1, "x", max_new=bad)
            raise AssertionError("max_new=%r was accepted" % (bad,))
        except ValueError as e:
            check("max_new" in str(e), "message names max_new: %s" % e)
    frame = prefixd.encode_generate(1, "x", max_new=2 ** 32 - 1)
    check(struct.unpack_from("<I", frame, 12)[0] == 2 ** 32 - 1, "2^32-1 is a u32")
    p = ctl("--socket", "/nonexistent", "generate", "--prompt", "x", "-n", "99999999999999999999")
    check(p.returncode == 2 and "-n" in p.stderr, "-n overflow: %s" % p.stderr)
    p = ctl("--socket", "/nonexistent", "chat", "-n", "-5")
    check(p.returncode == 2 and "-n" in p.stderr, "chat -n -5: %s" % p.stderr)


def impostor(path, uid):
    """Forks a fake daemon that listens on path as uid and answers HELLO as prefixd would; it
    writes every byte it receives after the HELLO to the returned pipe."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            s.listen(8)
            os.write(ready_w, b"x")
            s.settimeout(20)
            while True:
                conn, _ = s.accept()
                conn.settimeout(2)
                buf = bytearray()
                try:
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                        if len(buf) >= 24 and buf[:24] == prefixd.encode_hello():
                            del buf[:24]
                            body = struct.pack("<HHIIIII", 1, 0, 0, 512, 512, 16, 1 << 24)
                            conn.sendall(prefixd.encode_frame(prefixd.HELLO_OK, 0, body
                                                              + prefixd._s(b"impostor")))
                        os.write(w, bytes(buf))
                        buf.clear()
                except OSError:
                    pass
                conn.close()
        except Exception:  # noqa: BLE001
            pass
        os._exit(0)
    os.close(w)
    os.close(ready_w)
    check(os.read(ready_r, 1) == b"x", "impostor did not start")
    os.close(ready_r)
    return pid, r


def case_impostor():
    if os.getuid() != 0:
        raise AssertionError("this case needs root to run a server as another uid (CI is root)")
    tmp = tempfile.mkdtemp(prefix="prefixd-it-")
    os.chmod(tmp, 0o777)
    path = os.path.join(tmp, "prefixd.sock")
    pid, leak = impostor(path, 65534)
    try:
        p = ctl("--socket", path, "generate", "--prompt", "my secret prompt", "-n", "1")
        check(p.returncode == 1, "prefixctl: exit %d, want 1: %r %r" % (p.returncode, p.stdout,
                                                                        p.stderr))
        check(path in p.stderr and "65534" in p.stderr, "prefixctl message: %r" % p.stderr)
        try:
            prefixd.Client(path, timeout=5).generate("my secret prompt", max_new=1)
            raise AssertionError("the Python client talked to the impostor")
        except ConnectionError as e:
            check(path in str(e) and "65534" in str(e), "Python message: %s" % e)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.set_blocking(leak, False)
        try:
            got = os.read(leak, 1 << 16)
        except BlockingIOError:
            got = b""
        check(b"secret" not in got, "the prompt reached the impostor: %r" % got)
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    # A daemon of our own uid (root here) is trusted, and a root daemon by another user's client.
    d = Daemon("--socket-mode", "0666")
    try:
        p = ctl("--socket", d.sock, "stats")
        check(p.returncode == 0, "own daemon: %s" % p.stderr)
        os.chmod(d.tmp, 0o755)
        q = subprocess.run([PREFIXCTL, "--socket", d.sock, "stats"], capture_output=True,
                           text=True, timeout=30,
                           preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
        check(q.returncode == 0, "root's daemon, client as 65534: %s" % q.stderr)
    finally:
        d.stop()


if __name__ == "__main__":
    daemon.run_cases(daemon.cases_of(globals()), CASE, "prefixd-it-")
