"""prefixd.py -- a one-file Python 3 client for prefixd (standard library only).

Written from proto/PROTOCOL.md: length-prefixed little-endian frames over a Unix socket, a
HELLO handshake, request ids so one connection carries several requests at once.

    from prefixd import Client
    with Client() as c:
        r = c.generate("Once upon a time", max_new=50)
        print(r["text"], r["cached_tokens"], r["ttft_ms"])
        r = c.chat([{"role": "user", "content": "Hi"}], system="Be brief.")  # the model's template

Sampling defaults are prefixctl's and `prefixd run`'s: temperature 0.8, top-p 0.95 and a random
seed, so two calls without a seed differ; temp=0 is greedy (deterministic).

The client talks only to a daemon of its own uid or root (the socket's peer credentials), so a
socket bound first by another user is refused before a prompt is sent.

Also a small command line: python3 prefixd.py generate --prompt TEXT [-n N] [--json]
                      and: python3 prefixd.py chat [--system TEXT] --message [ROLE:]TEXT ...
"""

import json
import os
import socket
import struct
import sys
import time

MAGIC = 0x44584650
VERSION = 1

HELLO, HELLO_OK, GENERATE, WARM, CANCEL, TOKEN, DONE, ERROR = 1, 2, 3, 4, 5, 6, 7, 8
STATS, STATS_REPLY, TOKENIZE, TOKENS, DETOKENIZE, TEXT, CHAT = 9, 10, 11, 12, 13, 14, 15
GEN_TOKENS, GEN_PIN = 1, 2
CAP_CHAT = 16  # HELLO_OK: the model has a chat template (CHAT works)
CAP_REMOTE = 32  # HELLO: we read DONE's cached_tokens_remote (flag DONE_REMOTE)
DONE_REMOTE = 1
DEFAULT_TEMP, DEFAULT_TOP_P = 0.8, 0.95  # as PROTO_DEFAULT_TEMP / _TOP_P in proto.h
FINISH = {0: "stop", 1: "length", 2: "cancelled"}
ERRORS = {1: "BAD_FRAME", 2: "TOO_BIG", 3: "UNKNOWN_TYPE", 4: "BAD_VERSION", 5: "BAD_REQUEST",
          6: "PROMPT_TOO_LONG", 7: "BAD_UTF8", 8: "BAD_TOKEN", 9: "BAD_NAMESPACE", 10: "BUSY",
          11: "SLOW_READER", 12: "NO_HELLO", 13: "DUPLICATE_ID", 14: "SHUTTING_DOWN",
          15: "PIN_BUDGET", 16: "NO_SPACE", 17: "INTERNAL", 18: "NO_TEMPLATE"}


# The bytes of other requests' frames a blocking call keeps for them while it waits for its own
# (set_pending_max()); the C client's default too.
PENDING_MAX = 16 << 20


class PendingFull(Exception):
    """A blocking call met more frames of other requests than the bound lets it keep: the frame
    that would pass it stays unread on the connection (nothing is lost); collect the others with
    read_frame() or result(), or raise the bound with set_pending_max()."""


class PrefixdError(Exception):
    """An ERROR frame: code (int), name (e.g. 'BUSY') and the daemon's message."""

    def __init__(self, code, message):
        self.code = code
        self.name = ERRORS.get(code, "UNKNOWN")
        self.message = message
        super().__init__("%s (%d): %s" % (self.name, code, message))


def default_socket_path():
    if os.environ.get("PREFIXD_SOCKET"):
        return os.environ["PREFIXD_SOCKET"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "prefixd.sock")
    return "/tmp/prefixd-%d/prefixd.sock" % os.getuid()


def random_seed():
    """A seed for a sampled request whose caller gave none."""
    return int.from_bytes(os.urandom(8), "little")


def _s(b):
    return struct.pack("<I", len(b)) + b


def encode_frame(ftype, rid, body=b"", flags=0):
    return struct.pack("<IHHI", 8 + len(body), ftype, flags, rid) + body


def encode_hello(caps=0):
    return encode_frame(HELLO, 0, struct.pack("<IHHI", MAGIC, VERSION, 0, caps))


def encode_generate(rid, prompt=None, ids=None, max_new=64, temp=0.0, top_p=0.0, seed=0,
                    namespace="", warm=False, pin=False):
    """The frame's bytes, exactly as given (no sampling defaults are applied here)."""
    if isinstance(max_new, bool) or not isinstance(max_new, int) or not 0 <= max_new < 2 ** 32:
        raise ValueError("max_new %r: expected a whole number from 0 to 4294967295 (a u32 on the "
                         "wire)" % (max_new,))
    body = struct.pack("<IffQ", max_new, temp, top_p, seed) + _s(namespace.encode())
    flags = 0
    if ids is not None:
        flags |= GEN_TOKENS
        body += struct.pack("<I%di" % len(ids), len(ids), *ids)
    else:
        body += _s(prompt.encode() if isinstance(prompt, str) else prompt)
    if pin:
        flags |= GEN_PIN
    return encode_frame(WARM if warm else GENERATE, rid, body, flags)


def encode_chat(rid, messages, system="", max_new=64, temp=0.0, top_p=0.0, seed=0, namespace=""):
    """A CHAT frame: messages is a list of {"role", "content"} dicts (or (role, content)
    pairs); str values are sent as UTF-8, bytes as they are."""
    if isinstance(max_new, bool) or not isinstance(max_new, int) or not 0 <= max_new < 2 ** 32:
        raise ValueError("max_new %r: expected a whole number from 0 to 4294967295 (a u32 on the "
                         "wire)" % (max_new,))

    def b(x):
        return x.encode() if isinstance(x, str) else bytes(x)

    body = struct.pack("<IffQ", max_new, temp, top_p, seed) + _s(namespace.encode())
    body += _s(b(system)) + struct.pack("<I", len(messages))
    for m in messages:
        role, content = (m["role"], m["content"]) if isinstance(m, dict) else m
        body += _s(b(role)) + _s(b(content))
    return encode_frame(CHAT, rid, body)


def decode_frame(buf):
    """Returns (frame dict, bytes consumed) or (None, 0) when buf holds no whole frame."""
    if len(buf) < 4:
        return None, 0
    (flen,) = struct.unpack_from("<I", buf)
    if len(buf) < 4 + flen:
        return None, 0
    ftype, flags, rid = struct.unpack_from("<HHI", buf, 4)
    body = bytes(buf[12:4 + flen])
    f = {"type": ftype, "flags": flags, "id": rid}
    if ftype == TOKEN:
        (f["token"],) = struct.unpack_from("<i", body)
        (n,) = struct.unpack_from("<I", body, 4)
        f["piece"] = body[8:8 + n]
    elif ftype == DONE:
        v = struct.unpack_from("<B3xIIII4d", body)
        f.update(finish=v[0], prompt_tokens=v[1], cached_tokens=v[2], cached_tokens_disk=v[3],
                 new_tokens=v[4], ttft_ms=v[5], prefill_ms=v[6], decode_tokens_per_s=v[7],
                 total_ms=v[8], cached_tokens_remote=0)
        if flags & DONE_REMOTE:
            (f["cached_tokens_remote"],) = struct.unpack_from("<I", body, 52)
    elif ftype == ERROR:
        code, n = struct.unpack_from("<II", body)
        f["code"], f["message"] = code, body[8:8 + n].decode("utf-8", "replace")
    elif ftype == HELLO_OK:
        v = struct.unpack_from("<HHIIIII", body)
        (n,) = struct.unpack_from("<I", body, 24)
        f.update(version=v[0], caps=v[2], vocab_size=v[3], seq_len=v[4], block_tokens=v[5],
                 max_frame=v[6], model=body[28:28 + n].decode("utf-8", "replace"))
    elif ftype in (STATS_REPLY, TEXT, TOKENIZE):
        (n,) = struct.unpack_from("<I", body)
        f["text"] = body[4:4 + n]
    elif ftype in (TOKENS, DETOKENIZE):
        (n,) = struct.unpack_from("<I", body)
        f["ids"] = list(struct.unpack_from("<%di" % n, body, 4))
    return f, 4 + flen


class Client:
    """One connection. Methods block; send_generate()/read_frame() allow several requests at
    once on the same connection."""

    def __init__(self, socket_path=None, timeout=None):
        self.path = socket_path or default_socket_path()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError as e:
            self.sock.close()
            raise ConnectionError("cannot connect to prefixd at '%s': %s (is `prefixd serve` "
                                  "running?)" % (self.path, e.strerror or e)) from None
        self._check_peer()
        self.buf = bytearray()
        self.next_id = 1
        self.pending = []  # frames read while waiting for another request's, in arrival order
        self.pending_bytes = 0  # their sizes on the wire
        self.pending_max = PENDING_MAX
        self.sock.sendall(encode_hello(CAP_REMOTE))
        f = self.read_frame()
        if f["type"] == ERROR:
            raise PrefixdError(f["code"], f["message"])
        self.server = f

    def _check_peer(self):
        """Refuses a socket served by a uid other than ours or root (it may have been bound first
        by another user, who would read our prompts)."""
        so_peercred = getattr(socket, "SO_PEERCRED", 17)
        cred = self.sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", cred)
        if uid not in (os.getuid(), 0):
            self.sock.close()
            raise ConnectionError("refusing the socket '%s': it is served by uid %d, neither this "
                                  "user (uid %d) nor root; another user may have bound it first"
                                  % (self.path, uid, os.getuid()))

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def read_frame(self):
        """The next frame of any request: first those queued while a blocking call waited for
        its own, then from the socket."""
        if self.pending:
            return self._unqueue(0)
        return self._read_socket()

    def set_pending_max(self, nbytes):
        """Sets the bound on the bytes of other requests' frames kept while a blocking call waits
        (PendingFull past it)."""
        self.pending_max = nbytes

    def _unqueue(self, i):
        f = self.pending.pop(i)
        self.pending_bytes -= f["size"]
        del f["size"]
        return f

    def _peek_socket(self):
        """The next frame on the socket and its size, not yet consumed."""
        while True:
            f, n = decode_frame(self.buf)
            if f is not None:
                return f, n
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("prefixd closed the connection")
            self.buf += chunk

    def _read_socket(self):
        f, n = self._peek_socket()
        del self.buf[:n]
        return f

    def _new_id(self):
        rid = self.next_id
        self.next_id += 1
        return rid

    def send_generate(self, prompt=None, ids=None, max_new=64, temp=DEFAULT_TEMP,
                      top_p=DEFAULT_TOP_P, seed=None, **kw):
        """Sends a GENERATE (or with warm=True a WARM) without waiting; returns its id. Read its
        frames with read_frame() or wait for them all with result(). seed None: a random one."""
        rid = self._new_id()
        self.sock.sendall(encode_generate(rid, prompt, ids, max_new=max_new, temp=temp,
                                          top_p=top_p,
                                          seed=random_seed() if seed is None else seed, **kw))
        return rid

    def cancel(self, rid):
        self.sock.sendall(encode_frame(CANCEL, rid))

    def _reply(self, rid):
        """The next frame of request rid; frames of other requests read meanwhile stay queued
        for them (read_frame(), result() or their own blocking call)."""
        for i, f in enumerate(self.pending):
            if f["id"] == rid:
                return self._unqueue(i)
        while True:
            f, n = self._peek_socket()
            if f["id"] != rid and self.pending_bytes + n > self.pending_max:
                raise PendingFull("%d frames (%d bytes) of other requests are waiting to be read "
                                  "and the next would pass the bound of %d bytes: collect them "
                                  "with read_frame() or result(), or raise set_pending_max()"
                                  % (len(self.pending), self.pending_bytes, self.pending_max))
            del self.buf[:n]
            if f["id"] == rid:
                return f
            f["size"] = n
            self.pending_bytes += n
            self.pending.append(f)

    def generate(self, prompt=None, ids=None, max_new=64, temp=DEFAULT_TEMP, top_p=DEFAULT_TOP_P,
                 seed=None, namespace="", on_token=None):
        """Streams one generation; returns a dict with text, tokens, prompt_tokens,
        cached_tokens, cached_tokens_disk, cached_tokens_remote (0 from a daemon without a remote
        tier), ttft_ms (client side), server_ttft_ms, prefill_ms,
        decode_tokens_per_s, total_ms, finish_reason. on_token(id, piece) may return True to
        cancel. temp=0 is greedy; seed None draws a random one (sampled calls then differ)."""
        t0 = time.monotonic()
        rid = self.send_generate(prompt, ids, max_new=max_new, temp=temp, top_p=top_p,
                                 seed=seed, namespace=namespace)
        return self.result(rid, on_token, t0)

    def result(self, rid, on_token=None, t0=None):
        """Waits for the rest of request rid (sent with send_generate()) and returns its dict as
        generate() does; ttft_ms counts from t0 (default: now)."""
        t0 = time.monotonic() if t0 is None else t0
        toks, text, ttft = [], bytearray(), None
        while True:
            f = self._reply(rid)
            if f["type"] == TOKEN:
                if ttft is None:
                    ttft = (time.monotonic() - t0) * 1e3
                toks.append(f["token"])
                text += f["piece"]
                if on_token and on_token(f["token"], f["piece"]):
                    self.cancel(rid)
            elif f["type"] == DONE:
                return {"text": text.decode("utf-8", "replace"), "tokens": toks,
                        "prompt_tokens": f["prompt_tokens"], "cached_tokens": f["cached_tokens"],
                        "cached_tokens_disk": f["cached_tokens_disk"],
                        "cached_tokens_remote": f["cached_tokens_remote"],
                        "ttft_ms": ttft if ttft is not None else (time.monotonic() - t0) * 1e3,
                        "server_ttft_ms": f["ttft_ms"], "prefill_ms": f["prefill_ms"],
                        "decode_tokens_per_s": f["decode_tokens_per_s"],
                        "total_ms": f["total_ms"], "finish_reason": FINISH.get(f["finish"])}
            elif f["type"] == ERROR:
                raise PrefixdError(f["code"], f["message"])

    def send_chat(self, messages, system="", max_new=64, temp=DEFAULT_TEMP, top_p=DEFAULT_TOP_P,
                  seed=None, namespace=""):
        """Sends a CHAT without waiting; returns its id (collect it with result())."""
        rid = self._new_id()
        self.sock.sendall(encode_chat(rid, messages, system, max_new=max_new, temp=temp,
                                      top_p=top_p, seed=random_seed() if seed is None else seed,
                                      namespace=namespace))
        return rid

    def chat(self, messages, system="", max_new=64, temp=DEFAULT_TEMP, top_p=DEFAULT_TOP_P,
             seed=None, namespace="", on_token=None):
        """The assistant's next message after messages (a list of {"role": "system"|"user"|
        "assistant", "content": str}), rendered by the daemon with the model's chat template;
        system: a system prompt put first ("" for none). Returns the dict of generate(). A
        model without a template raises PrefixdError NO_TEMPLATE (has_chat() tells before):
        fall back to generate() with a prompt of your own."""
        t0 = time.monotonic()
        rid = self.send_chat(messages, system, max_new=max_new, temp=temp, top_p=top_p,
                             seed=seed, namespace=namespace)
        return self.result(rid, on_token, t0)

    def has_chat(self):
        """True if the daemon renders chats (its model has a chat template)."""
        return bool(self.server["caps"] & CAP_CHAT)

    def warm(self, prompt=None, ids=None, pin=False, namespace=""):
        rid = self._new_id()
        self.sock.sendall(encode_generate(rid, prompt, ids, max_new=0, namespace=namespace,
                                          warm=True, pin=pin))
        f = self._reply(rid)
        if f["type"] == ERROR:
            raise PrefixdError(f["code"], f["message"])
        return f

    def stats(self):
        rid = self._new_id()
        self.sock.sendall(encode_frame(STATS, rid))
        return json.loads(self._reply(rid)["text"])

    def tokenize(self, text):
        rid = self._new_id()
        self.sock.sendall(encode_frame(TOKENIZE, rid, _s(text.encode())))
        f = self._reply(rid)
        if f["type"] == ERROR:
            raise PrefixdError(f["code"], f["message"])
        return f["ids"]

    def detokenize(self, ids):
        rid = self._new_id()
        self.sock.sendall(encode_frame(DETOKENIZE, rid,
                                       struct.pack("<I%di" % len(ids), len(ids), *ids)))
        f = self._reply(rid)
        if f["type"] == ERROR:
            raise PrefixdError(f["code"], f["message"])
        return f["text"].decode("utf-8", "replace")


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="prefixd.py")
    ap.add_argument("--socket")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--prompt", required=True)
    g.add_argument("-n", type=int, default=64)
    g.add_argument("--temp", type=float, default=DEFAULT_TEMP)
    g.add_argument("--top-p", type=float, default=DEFAULT_TOP_P)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--namespace", default="")
    g.add_argument("--json", action="store_true")
    ch = sub.add_parser("chat", help="one chat turn with the model's template")
    ch.add_argument("--message", action="append", required=True,
                    help="ROLE:TEXT, or TEXT for a user message; repeat for a conversation")
    ch.add_argument("--system", default="")
    ch.add_argument("-n", type=int, default=64)
    ch.add_argument("--temp", type=float, default=DEFAULT_TEMP)
    ch.add_argument("--top-p", type=float, default=DEFAULT_TOP_P)
    ch.add_argument("--seed", type=int, default=None)
    ch.add_argument("--namespace", default="")
    ch.add_argument("--json", action="store_true")
    sub.add_parser("stats")
    a = ap.parse_args(argv)
    try:
        with Client(a.socket) as c:
            if a.cmd == "stats":
                print(json.dumps(c.stats(), indent=2))
                return 0
            if a.cmd == "chat":
                msgs = []
                for m in a.message:
                    role, sep, text = m.partition(":")
                    if not sep or role not in ("system", "user", "assistant"):
                        role, text = "user", m
                    msgs.append({"role": role, "content": text})
                r = c.chat(msgs, a.system, max_new=a.n, temp=a.temp, top_p=a.top_p,
                           seed=a.seed, namespace=a.namespace,
                           on_token=None if a.json else
                           lambda i, p: sys.stdout.write(p.decode("utf-8", "replace")) and None)
                print(json.dumps(r) if a.json else "")
                return 0
            r = c.generate(a.prompt, max_new=a.n, temp=a.temp, top_p=a.top_p, seed=a.seed,
                           namespace=a.namespace,
                           on_token=None if a.json else
                           lambda i, p: sys.stdout.write(p.decode("utf-8", "replace")) and None)
            print(json.dumps(r) if a.json else "")
    except ValueError as e:
        print("prefixd.py: %s" % e, file=sys.stderr)
        return 2
    except (ConnectionError, PrefixdError) as e:
        print("prefixd.py: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
