#!/usr/bin/env python3
"""Integration tests: `prefixd serve` on a socket handed over by socket activation, exactly as
systemd's prefixd.socket hands it: bound and listening before the daemon exists, passed as fd 3,
with LISTEN_FDS=1 and LISTEN_PID set to the daemon's own pid.

usage: test_activation.py PREFIXD MODELS_DIR CLIENT_DIR CASE
  serve    a client that connected before the daemon started is answered; a greedy generation
           gives the golden text; the daemon binds nothing of its own, leaves the socket file
           (it belongs to the socket unit) on SIGTERM, and a second daemon serves the same
           socket again (a service restart behind one socket unit).
  refused  two fds, a datagram socket, a socket nobody listens on: exit 2 naming the problem.

The LISTEN_PID wrapper is a few lines of Python run as `python3 -c`: it moves the passed fds to
3, 4, ..., sets LISTEN_FDS and LISTEN_PID=os.getpid(), and execs prefixd (the pid survives the
exec, which is how systemd does it too).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PREFIXD, MODELS, CLIENT_DIR, CASE = sys.argv[1:5]
sys.path.insert(0, CLIENT_DIR)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402
import prefixd  # noqa: E402

MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.bin")
GOLDEN = os.path.join(MODELS, "golden", "stories260K-greedy-bos.txt")

WRAPPER = r"""
import fcntl, os, sys
n = int(sys.argv[1])
passed = [int(f) for f in sys.argv[2:2 + n]]
high = [fcntl.fcntl(f, fcntl.F_DUPFD, 100) for f in passed]  # out of the way of 3, 4, ...
for f in passed:
    os.close(f)
for i, f in enumerate(high):
    os.dup2(f, 3 + i)  # inheritable: survives the exec
    os.close(f)
os.environ["LISTEN_FDS"] = str(n)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2 + n], sys.argv[2 + n:])
"""


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Activated:
    """prefixd serve started on already-open sockets, as systemd starts it."""

    def __init__(self, tmp, socks, log_name="daemon.log"):
        self.log = open(os.path.join(tmp, log_name), "w+")
        env = dict(os.environ)
        # Where the daemon would bind on its own: it must not, the passed socket is the one.
        self.own_path = os.path.join(tmp, "own.sock")
        env["PREFIXD_SOCKET"] = self.own_path
        fds = [s.fileno() for s in socks]
        args = [sys.executable, "-c", WRAPPER, str(len(fds))] + [str(f) for f in fds] + [
            PREFIXD, "serve", "--model", MODEL, "--tokenizer", TOK, "--cache-mem", "16M",
            "--threads", "2", "--disk-dir", "none", "--log-level", "debug"]
        self.p = subprocess.Popen(args, stdout=self.log, stderr=self.log, env=env,
                                  pass_fds=fds)

    def logtext(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def wait(self, timeout):
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """Cleanup after a failure: no daemon outlives the test."""
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            if self.wait(20) is None:
                self.p.kill()
                self.p.wait()
                raise AssertionError("daemon did not exit on SIGTERM")
        return self.p.returncode


def listening_socket(path, kind=socket.SOCK_STREAM, listen=True):
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind(path)
    os.chmod(path, 0o600)
    if listen:
        s.listen(16)
    return s


def not_activated(d):
    """A daemon that ignored the passed socket: it exited, or bound its own."""
    if d.p.poll() is not None:
        return "the daemon exited (%s)" % d.p.returncode
    if os.path.exists(d.own_path):
        return "the daemon bound its own socket %s instead of the passed one" % d.own_path
    return None


def read_frame(s, d, timeout=60):
    """Reads one frame from s, failing fast if the daemon d is not serving the passed socket."""
    buf = bytearray()
    s.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while True:
        f, n = prefixd.decode_frame(buf)
        if f:
            return f
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            why = not_activated(d)
            if why or time.monotonic() > deadline:
                raise AssertionError("the client queued before the daemon started got no "
                                     "HELLO_OK: %s; daemon log:\n%s"
                                     % (why or "timed out", d.logtext()))
            continue
        if not chunk:
            raise AssertionError("connection closed before a whole frame; daemon log:\n%s"
                                 % d.logtext())
        buf += chunk


def greedy_is_golden(path, n=60):
    with prefixd.Client(path, timeout=60) as c:
        r = c.generate("", max_new=n, temp=0.0)
    golden = open(GOLDEN, "rb").read()
    out = r["text"].encode()
    check(len(r["tokens"]) == n, "expected %d tokens, got %d" % (n, len(r["tokens"])))
    check(golden.startswith(out), "greedy output is not the golden text:\n%r\n%r"
          % (out[:120], golden[:120]))


def case_serve(tmp):
    path = os.path.join(tmp, "prefixd.sock")
    ls = listening_socket(path)
    # A client that connects before the daemon exists waits in the socket's queue: the point
    # of socket activation.
    early = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    early.connect(path)
    early.sendall(prefixd.encode_hello())
    d = Activated(tmp, [ls])
    try:
        f = read_frame(early, d)
        check(f["type"] == prefixd.HELLO_OK, "expected HELLO_OK, got %r" % f)
        early.close()
        greedy_is_golden(path)
        check(not os.path.exists(d.own_path),
              "the daemon bound its own socket %s beside the passed one" % d.own_path)
        rc = d.stop()
        check(rc == 0, "exit %s on SIGTERM; log:\n%s" % (rc, d.logtext()))
        # The socket file belongs to the socket unit: a daemon that unlinks it on exit leaves
        # systemd listening on a socket nobody can reach.
        check(os.path.exists(path), "the daemon removed the socket unit's file %s" % path)
        # systemd restarts the service behind the same socket: a second daemon serves it.
        d = Activated(tmp, [ls], "daemon2.log")
        greedy_is_golden(path, 20)
        rc = d.stop()
        check(rc == 0, "second daemon: exit %s; log:\n%s" % (rc, d.logtext()))
    finally:
        d.kill()
        ls.close()


def expect_refused(tmp, socks, fragment, name):
    d = Activated(tmp, socks, name + ".log")
    deadline = time.monotonic() + 30
    while d.p.poll() is None and not os.path.exists(d.own_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    rc = d.p.poll()
    if rc is None:
        d.kill()
        raise AssertionError("%s: the daemon started instead of refusing; log:\n%s"
                             % (name, d.logtext()))
    log = d.logtext()
    check(rc == 2, "%s: expected exit 2, got %s; log:\n%s" % (name, rc, log))
    check(fragment in log, "%s: the message lacks %r:\n%s" % (name, fragment, log))


def case_refused(tmp):
    a = listening_socket(os.path.join(tmp, "a.sock"))
    b = listening_socket(os.path.join(tmp, "b.sock"))
    expect_refused(tmp, [a, b], "LISTEN_FDS=2", "two_fds")
    b.close()
    dg = listening_socket(os.path.join(tmp, "d.sock"), socket.SOCK_DGRAM, listen=False)
    expect_refused(tmp, [dg], "not a stream socket", "datagram")
    quiet = listening_socket(os.path.join(tmp, "q.sock"), listen=False)
    expect_refused(tmp, [quiet], "not listening", "not_listening")
    for s in (a, dg, quiet):
        s.close()


if __name__ == "__main__":
    # Each case takes a folder of its own (inside the case's scratch folder).
    cases = {name: (lambda fn=fn: fn(tempfile.mkdtemp()))
             for name, fn in daemon.cases_of(globals()).items()}
    daemon.run_cases(cases, CASE, "prefixd-act-")
