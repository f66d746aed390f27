#!/usr/bin/env python3
"""Integration tests of `prefixd serve`'s start-up errors and defaults: what a new user sees when
a path or a size is wrong, and the cache size chosen when none is given.

usage: test_misc.py PREFIXD MODELS_DIR CASE
       test_misc.py PREFIXD MODELS_DIR --list   (the cases: the case_* functions)
Exit 0 and "1 passed, 0 failed" on success.
"""

import os
import subprocess
import sys
import tempfile
import time

PREFIXD, MODELS, CASE = sys.argv[1:4]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402

MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.bin")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def serve(*extra, sock=None, timeout=60):
    """Runs `prefixd serve` expected to exit on its own; returns (exit code, stderr)."""
    sock = sock or os.path.join(tempfile.mkdtemp(), "p.sock")
    args = [PREFIXD, "serve", "--model", MODEL, "--tokenizer", TOK, "--socket", sock,
            "--threads", "1", "--disk-dir", "none"] + list(extra)
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stderr


def case_socket_missing_dir():
    """A socket in a directory that does not exist: exit 2 naming that directory (libuv reports
    ENOENT from bind() as "permission denied")."""
    root = tempfile.mkdtemp()
    missing = os.path.join(root, "missing", "dir")
    rc, err = serve(sock=os.path.join(missing, "x.sock"))
    check(rc == 2, "exit code %d: %s" % (rc, err))
    check("'%s'" % missing in err and "does not exist" in err, "message: %s" % err)
    check("permission denied" not in err, "still says permission denied: %s" % err)
    # A path whose directory is a file names that file.
    afile = os.path.join(root, "afile")
    open(afile, "w").close()
    rc, err = serve(sock=os.path.join(afile, "x.sock"))
    check(rc == 2 and "'%s'" % afile in err and "not a directory" in err,
          "file as directory: %d %s" % (rc, err))


def case_cache_mem_too_small():
    """--cache-mem 1K holds no block: exit 2 with a message naming the size and the block's."""
    rc, err = serve("--cache-mem", "1K")
    check(rc == 2, "exit code %d: %s" % (rc, err))
    check("--cache-mem 1024 bytes" in err and "holds no block" in err, "message: %s" % err)


def case_cache_mem_default():
    """Without --cache-mem the cache is sized from the model: stories260K's 8 contexts need 5 MB
    (f32 K/V), so it gets the 64 MiB floor (3,276 blocks of 20,480 bytes), logged with the
    reason, and the daemon's memory stays near that (it was 1 GiB reserved and written at
    start)."""
    tmp = tempfile.mkdtemp()
    sock = os.path.join(tmp, "p.sock")
    log = open(os.path.join(tmp, "daemon.log"), "w+")
    p = subprocess.Popen([PREFIXD, "serve", "--model", MODEL, "--tokenizer", TOK, "--socket", sock,
                          "--threads", "1", "--disk-dir", "none", "--log-level", "debug",
                          "--kv-type", "f32"], stderr=log)
    try:
        text = ""
        for _ in range(400):
            log.seek(0)
            text = log.read()
            if "serving on" in text or p.poll() is not None:
                break
            time.sleep(0.05)
        check("serving on" in text, "daemon did not start: %s" % text)
        check("cache: 67 MB of K/V memory by default" in text and "64 MiB floor" in text,
              "no default logged: %s" % text)
        check("cache 3276 blocks (67 MB)" in text, "pool size: %s" % text)
        for _ in range(100):  # the pages are populated in the background
            log.seek(0)
            if "populated" in log.read():
                break
            time.sleep(0.05)
        with open("/proc/%d/status" % p.pid) as f:
            rss = [int(line.split()[1]) for line in f if line.startswith("VmRSS")][0]
        check(rss < 300 * 1024, "RSS %d kB" % rss)
    finally:
        p.terminate()
        p.wait(20)
        log.close()


if __name__ == "__main__":
    daemon.run_cases(daemon.cases_of(globals()), CASE, "prefixd-it-")
