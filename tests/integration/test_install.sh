#!/usr/bin/env bash
# `cmake --install` into a temporary prefix, then everything used from there as a user would:
# a C program built with `pkg-config --cflags --libs prefixd` (shared and static), the installed
# prefixd serving stories260K to it and to the installed Python client, the man pages rendered
# without warnings, the systemd units verified. The prefix is removed at the end, also on failure.
# usage: test_install.sh CMAKE BUILD_DIR MODELS_DIR CC [EXTRA_CFLAGS]
#   EXTRA_CFLAGS: the build's sanitizer flags, so a program linking a sanitized libprefixd works.
set -u
cmake=$1 build=$2 models=$3 cc=$4 extra=${5:-}
tmp=$(mktemp -d /tmp/prefixd-install-XXXXXX)
daemon_pid=
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
prefix=$tmp/prefix

"$cmake" --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 \
  || fail "cmake --install: $(cat "$tmp/install.log")"

# What goes where (README, Install).
for f in bin/prefixd bin/prefixctl include/prefixd/prefixd_client.h include/prefixd/proto.h \
         share/prefixd/python/prefixd.py share/man/man1/prefixd.1 share/man/man1/prefixctl.1 \
         lib/systemd/user/prefixd.service lib/systemd/user/prefixd.socket; do
  [ -e "$prefix/$f" ] || fail "not installed: $f"
done
libdir=$(dirname "$(find "$prefix" -name prefixd.pc | head -n 1)")
libdir=${libdir%/pkgconfig}
for f in libprefixd.a libprefixd.so libprefixd.so.0; do
  [ -e "$libdir/$f" ] || fail "not installed: $libdir/$f"
done
readelf -d "$libdir/libprefixd.so" | grep -q 'SONAME.*\[libprefixd\.so\.0\]' \
  || fail "libprefixd.so has no SONAME libprefixd.so.0: $(readelf -d "$libdir/libprefixd.so")"
"$prefix/bin/prefixd" serve --help >/dev/null || fail "installed prefixd does not run"
"$prefix/bin/prefixctl" --help >/dev/null || fail "installed prefixctl does not run"

# A C program against the installed copy only: pkg-config's flags, no path into the source tree.
export PKG_CONFIG_PATH=$libdir/pkgconfig
flags=$(pkg-config --cflags --libs prefixd) || fail "pkg-config --cflags --libs prefixd failed"
case "$flags" in *"$prefix"*) ;; *) fail "pkg-config flags do not point into the prefix: $flags";; esac
[ "$(pkg-config --modversion prefixd)" != "" ] || fail "no version in prefixd.pc"
cat >"$tmp/hello.c" <<'EOF'
/* Prints the client library's default socket path; with an argument, connects there and
 * (when a daemon answers) generates 8 greedy tokens of "Once upon a time". */
#include <prefixd_client.h>
#include <stdio.h>
#include <string.h>

static int print_cb(void *arg, int32_t id, const char *piece, size_t len)
{
    (void)arg;
    (void)id;
    fwrite(piece, 1, len, stdout);
    return 0;
}

int main(int argc, char **argv)
{
    char path[256], err[512];
    if (proto_default_socket_path(path, sizeof path) != 0)
        return 3;
    if (argc < 2) {
        printf("%s\n", path);
        return 0;
    }
    pfx_conn *c;
    int rc = pfx_connect(argv[1], &c, err, sizeof err);
    if (rc != 0) {
        printf("connect: %d: %s\n", rc, err);
        return 1;
    }
    pfx_gen g;
    memset(&g, 0, sizeof g);
    g.text = "Once upon a time";
    g.text_len = strlen(g.text);
    g.max_new = 8;
    pfx_result r;
    rc = pfx_generate(c, &g, print_cb, NULL, &r);
    printf("\n%d %u\n", rc, (unsigned)r.done.new_tokens);
    pfx_close(c);
    return rc != 0;
}
EOF
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -Werror $extra "$tmp/hello.c" $flags -o "$tmp/hello" 2>"$tmp/cc.err" \
  || fail "compiling against the installed libprefixd: $(cat "$tmp/cc.err")"
readelf -d "$tmp/hello" | grep -q 'NEEDED.*libprefixd\.so\.0' \
  || fail "the program does not link libprefixd.so.0"
# The static archive holds everything too (the wire format included).
# shellcheck disable=SC2086
"$cc" -std=c11 $extra "$tmp/hello.c" $(pkg-config --cflags prefixd) "$libdir/libprefixd.a" \
  -o "$tmp/hello-static" 2>"$tmp/cc.err" || fail "linking libprefixd.a: $(cat "$tmp/cc.err")"
export LD_LIBRARY_PATH=$libdir
out=$(PREFIXD_SOCKET=/x/y.sock "$tmp/hello") || fail "hello exited $?"
[ "$out" = /x/y.sock ] || fail "default socket with PREFIXD_SOCKET: '$out'"
out=$(env -u PREFIXD_SOCKET XDG_RUNTIME_DIR=/run/user/42 "$tmp/hello") || fail "hello exited $?"
[ "$out" = /run/user/42/prefixd.sock ] || fail "default socket with XDG_RUNTIME_DIR: '$out'"
out=$("$tmp/hello" "$tmp/none.sock")
[ $? -eq 1 ] || fail "connecting to nothing: expected exit 1"
case "$out" in *"connect: -1"*"$tmp/none.sock"*) ;; *) fail "unclear connect error: '$out'";; esac

# The installed Python client imports from the place the README names.
PYTHONPATH=$prefix/share/prefixd/python python3 -c '
import sys, prefixd
assert prefixd.__file__.startswith(sys.argv[1]), prefixd.__file__
' "$prefix" || fail "the installed Python client does not import"

# The installed daemon serves the installed C and Python clients alike.
sock=$tmp/p.sock
"$prefix/bin/prefixd" serve --model "$models/stories260K.bin" --tokenizer "$models/tok512.bin" \
  --socket "$sock" --cache-mem 16M --disk-dir none --threads 1 >"$tmp/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || fail "installed prefixd did not start: $(cat "$tmp/daemon.log")"
for h in hello hello-static; do
  "$tmp/$h" "$sock" >"$tmp/$h.out" || fail "$h: generation failed: $(cat "$tmp/$h.out")"
  [ "$(tail -n 1 "$tmp/$h.out")" = "0 8" ] || fail "$h: expected 8 new tokens: $(cat "$tmp/$h.out")"
done
cmp -s "$tmp/hello.out" "$tmp/hello-static.out" || fail "shared and static runs differ"
PYTHONPATH=$prefix/share/prefixd/python python3 -c '
import sys, prefixd
with prefixd.Client(sys.argv[1], timeout=30) as c:
    print(c.generate("Once upon a time", max_new=8, temp=0.0)["text"])
' "$sock" >"$tmp/py.out" || fail "Python client from the prefix: generation failed"
head -n -1 "$tmp/hello.out" | cmp -s - "$tmp/py.out" \
  || fail "C and Python greedy texts differ: '$(head -n -1 "$tmp/hello.out")' vs '$(cat "$tmp/py.out")'"
kill "$daemon_pid"
wait "$daemon_pid" || fail "installed prefixd exit $? on SIGTERM: $(cat "$tmp/daemon.log")"
daemon_pid=

# The man pages render without a warning, in both formatters Debian has.
command -v mandoc >/dev/null || fail "mandoc missing (scripts/deps --test installs it)"
for m in "$prefix"/share/man/man1/prefixd.1 "$prefix"/share/man/man1/prefixctl.1; do
  mandoc -Tlint -W warning "$m" >"$tmp/lint" 2>&1 || fail "mandoc -Tlint $m: $(cat "$tmp/lint")"
  groff -mandoc -ww -z "$m" >"$tmp/lint" 2>&1
  [ ! -s "$tmp/lint" ] || fail "groff warnings on $m: $(cat "$tmp/lint")"
  MANWIDTH=80 man -l "$m" 2>/dev/null | grep -q "EXIT STATUS" || fail "$m: no EXIT STATUS section"
done
for o in --socket --cache-mem --disk-dir --grace --log-level --top-p --no-tokenizer; do
  grep -q -- "Fl -${o#--}" "$prefix/share/man/man1/prefixd.1" || fail "prefixd.1 lacks $o"
done
for o in --prompt-file --namespace --prometheus --pin --workload --csv; do
  grep -q -- "Fl -${o#--}" "$prefix/share/man/man1/prefixctl.1" || fail "prefixctl.1 lacks $o"
done

# The systemd units: the service names the installed prefixd; systemd-analyze finds nothing
# wrong with either (it prints problems but exits 0, hence the empty-output check).
grep -q "^ExecStart=$prefix/bin/prefixd serve --model" "$prefix/lib/systemd/user/prefixd.service" \
  || fail "prefixd.service does not run the installed prefixd: $(grep ExecStart "$prefix/lib/systemd/user/prefixd.service")"
grep -q '^ListenStream=%t/prefixd.sock$' "$prefix/lib/systemd/user/prefixd.socket" || fail "socket path"
grep -q '^SocketMode=0600$' "$prefix/lib/systemd/user/prefixd.socket" || fail "socket mode"
if command -v systemd-analyze >/dev/null; then
  mkdir -m 700 "$tmp/run"
  (cd "$prefix/lib/systemd/user" && XDG_RUNTIME_DIR=$tmp/run MANPATH=$prefix/share/man \
     systemd-analyze --user verify prefixd.socket prefixd.service) >"$tmp/verify" 2>&1 \
    || fail "systemd-analyze verify: $(cat "$tmp/verify")"
  [ ! -s "$tmp/verify" ] || fail "systemd-analyze verify: $(cat "$tmp/verify")"
else
  echo "note: systemd-analyze not installed; the units were not verified" >&2
fi
echo "1 passed, 0 failed"
