"""A real `prefixd serve` for integration tests: started on a temporary socket, waited for until
it accepts, its log kept in its folder, stopped by a signal. scratch() is a case's temporary
folder and its cleanup: nothing a case starts or writes outlives it, passed or failed."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import traceback
import tempfile
import time

_running = []  # every Daemon started and not stopped yet


@contextlib.contextmanager
def scratch(prefix):
    """Runs a case inside a scratch folder: every tempfile.mkdtemp() of the case lands in it
    (tempfile.tempdir). On the way out, passed or failed, the daemons still running are killed
    and the folder is removed with all it holds, made writable first (cases take permissions
    away). It is searchable by all (0755): cases hand folders inside it to another uid."""
    root = tempfile.mkdtemp(prefix=prefix)
    os.chmod(root, 0o755)
    saved, tempfile.tempdir = tempfile.tempdir, root
    try:
        yield root
    finally:
        tempfile.tempdir = saved
        for d in list(_running):
            d.kill()
        for path, dirs, _ in os.walk(root):
            for name in dirs:
                p = os.path.join(path, name)
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
        try:
            shutil.rmtree(root)
        except OSError as e:
            print("cannot remove %s: %s" % (root, e), file=sys.stderr)


def run_cases(cases, case, prefix, cleanup=None):
    """A test file's entry point. cases: {name: function} (the file's case_* functions, see
    cases_of()). case "--list" prints their names (ctest registers one test per name, see
    prefixd_test_cases in tests/CMakeLists.txt); any other runs that case inside scratch(prefix +
    case + "-"), then cleanup() if given, and prints the closing line ctest's output shows
    ("1 passed, 0 failed" or "0 passed, 1 failed", exit 1). An unknown name exits 2."""
    if case == "--list":
        print("\n".join(cases))
        sys.exit(0)
    fn = cases.get(case)
    if fn is None:
        print("unknown case %s" % case, file=sys.stderr)
        sys.exit(2)
    t0 = time.monotonic()
    try:
        with scratch("%s%s-" % (prefix, case)):
            try:
                fn()
            finally:
                if cleanup:
                    cleanup()
    except Exception as e:  # noqa: BLE001
        if not isinstance(e, AssertionError):
            traceback.print_exc()
        print("FAIL: %s" % e, file=sys.stderr)
        print("0 passed, 1 failed")
        sys.exit(1)
    print("%s: 1 passed, 0 failed (%.1f s)" % (case, time.monotonic() - t0))


def cases_of(namespace):
    """The case_* functions of a test file's globals(), by name without the prefix."""
    return {k[5:]: v for k, v in namespace.items() if k.startswith("case_")}


class Daemon:
    def __init__(self, prefixd, model, tok, *extra, tmp=None, sock=None, log_level="debug"):
        """extra: more `serve` options; a `--model PATH` among them replaces model. tok None:
        no --tokenizer (a GGUF model's own vocabulary)."""
        extra = list(extra)
        if "--model" in extra:
            i = extra.index("--model")
            model, extra = extra[i + 1], extra[:i] + extra[i + 2:]
        self.tmp = tmp or tempfile.mkdtemp(prefix="prefixd-it-")
        self.sock = sock or os.path.join(self.tmp, "p.sock")
        self.log = open(os.path.join(self.tmp, "daemon.log"), "w+")
        args = [prefixd, "serve", "--model", model] + (["--tokenizer", tok] if tok else []) + [
            "--socket", self.sock, "--cache-mem", "64M", "--threads", "2", "--log-level",
            log_level] + extra
        self.p = subprocess.Popen(args, stderr=self.log, stdout=self.log)
        _running.append(self)
        for _ in range(400):
            if self.p.poll() is not None or self.accepting():
                break
            time.sleep(0.05)
        if self.p.poll() is not None:
            raise AssertionError("daemon exited at start: %s" % self.logtext())

    def accepting(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.sock)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def logtext(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig=signal.SIGTERM):
        """Signals the daemon and waits for it; returns its exit code."""
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("daemon did not exit on signal")
        if self in _running:
            _running.remove(self)
        return self.p.returncode

    def kill(self):
        """Kills the daemon (SIGKILL) if it still runs and waits for it."""
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        if self in _running:
            _running.remove(self)
