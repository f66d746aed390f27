#!/usr/bin/env python3
"""The Python client's frames against the byte vectors of PROTOCOL.md (also in test_proto.c)."""
import struct
import sys

sys.path.insert(0, sys.argv[1])
import prefixd  # noqa: E402

HELLO = bytes.fromhex("14000000 0100 0000 00000000 50465844 0100 0000 00000000".replace(" ", ""))
GEN = bytes.fromhex(("26000000 0300 0000 01000000 08000000 00000000 00000000 0000000000000000"
                     " 00000000 02000000 4869").replace(" ", ""))
CHAT = bytes.fromhex(("36000000 0f00 0000 02000000 08000000 00000000 00000000 0000000000000000"
                      " 00000000 00000000 01000000 04000000 75736572 02000000 4869")
                     .replace(" ", ""))

fails = 0


def check(cond, what):
    global fails
    if not cond:
        print("FAIL: " + what, file=sys.stderr)
        fails += 1


check(prefixd.encode_hello() == HELLO, "HELLO bytes")
check(prefixd.encode_generate(1, "Hi", max_new=8) == GEN, "GENERATE bytes")
check(prefixd.encode_chat(2, [{"role": "user", "content": "Hi"}], max_new=8) == CHAT, "CHAT bytes")
check(prefixd.encode_chat(2, [("user", "Hi")], max_new=8) == CHAT, "CHAT bytes from pairs")
f, n = prefixd.decode_frame(GEN[:-1])
check(f is None and n == 0, "partial frame")
tok = prefixd.encode_frame(prefixd.TOKEN, 7, struct.pack("<i", 42) + struct.pack("<I", 3) + b"abc")
f, n = prefixd.decode_frame(tok + b"extra")
check(n == len(tok) and f["token"] == 42 and f["piece"] == b"abc" and f["id"] == 7, "TOKEN")
done = prefixd.encode_frame(prefixd.DONE, 3, struct.pack("<B3xIIII4d", 1, 10, 8, 2, 5, 1.5, 1.0,
                                                        9.0, 20.0))
f, _ = prefixd.decode_frame(done)
check(f["finish"] == 1 and f["cached_tokens"] == 8 and f["cached_tokens_disk"] == 2
      and f["ttft_ms"] == 1.5 and f["cached_tokens_remote"] == 0, "DONE")
done = prefixd.encode_frame(prefixd.DONE, 3, struct.pack("<B3xIIII4dI", 1, 10, 8, 2, 5, 1.5, 1.0,
                                                        9.0, 20.0, 6), flags=prefixd.DONE_REMOTE)
f, _ = prefixd.decode_frame(done)
check(f["cached_tokens"] == 8 and f["cached_tokens_remote"] == 6 and f["total_ms"] == 20.0,
      "DONE with flag REMOTE")
check(prefixd.encode_hello(prefixd.CAP_REMOTE)[-4:] == struct.pack("<I", 32), "HELLO caps")
err = prefixd.encode_frame(prefixd.ERROR, 4, struct.pack("<II", 10, 4) + b"busy")
f, _ = prefixd.decode_frame(err)
check(f["code"] == 10 and f["message"] == "busy", "ERROR")
ids = prefixd.encode_generate(2, ids=[1, 2, 3], max_new=1)
check(struct.unpack_from("<H", ids, 6)[0] == prefixd.GEN_TOKENS, "ids flag")
check(ids[-12:] == struct.pack("<3i", 1, 2, 3), "ids body")
e = prefixd.PrefixdError(13, "dup")
check(e.name == "DUPLICATE_ID", "error names")
print("%d passed, %d failed" % (1 if not fails else 0, 1 if fails else 0))
sys.exit(1 if fails else 0)
