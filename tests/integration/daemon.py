"""A real `prefixd serve` for integration tests: started on a temporary socket, waited for until
it accepts, its log kept in its folder, stopped by a signal."""

import os
import signal
import socket
import subprocess
import tempfile
import time


class Daemon:
    def __init__(self, prefixd, model, tok, *extra, tmp=None, sock=None, log_level="debug"):
        """extra: more `serve` options; a `--model PATH` among them replaces model."""
        extra = list(extra)
        if "--model" in extra:
            i = extra.index("--model")
            model, extra = extra[i + 1], extra[:i] + extra[i + 2:]
        self.tmp = tmp or tempfile.mkdtemp(prefix="prefixd-it-")
        self.sock = sock or os.path.join(self.tmp, "p.sock")
        self.log = open(os.path.join(self.tmp, "daemon.log"), "w+")
        args = [prefixd, "serve", "--model", model, "--tokenizer", tok, "--socket", self.sock,
                "--cache-mem", "64M", "--threads", "2", "--log-level", log_level] + extra
        self.p = subprocess.Popen(args, stderr=self.log, stdout=self.log)
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
                self.p.kill()
                raise AssertionError("daemon did not exit on signal")
        return self.p.returncode
