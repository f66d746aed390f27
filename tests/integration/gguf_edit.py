#!/usr/bin/env python3
"""A GGUF file rewritten with other metadata: the tests' way to give a small model a chat
template and control tokens (stories260K ships neither). Standard library only.

GGUF v3 (llama.cpp's gguf.md): "GGUF", u32 version, u64 tensor count, u64 key-value count; the
key-values (str key, u32 type, value); the tensor infos (str name, u32 dims, u64 each dim, u32
type, u64 offset into the data); padding to general.alignment (32 by default); the data. Tensor
offsets are relative to the data, so a new header needs only new padding before the same data.

usage: gguf_edit.py SRC DST [--template FILE] [--control ID=TEXT ...] [--u32 KEY=N ...]
  --template FILE     sets tokenizer.chat_template to FILE's text
  --control ID=TEXT   renames token ID to TEXT and makes it a control token (type 3)
  --u32 KEY=N         sets the u32 value KEY (llama.context_length=512)
"""

import struct
import sys

# Value types (gguf.md): fixed sizes by struct code; 8 string, 9 array.
FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
TYPE_CONTROL = 3


class Reader:
    def __init__(self, buf):
        self.buf, self.at = buf, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.buf, self.at)
        self.at += struct.calcsize("<" + fmt)
        return v[0]

    def str(self):
        n = self.take("Q")
        s = self.buf[self.at:self.at + n]
        self.at += n
        return bytes(s)

    def value(self, t):
        if t in FIXED:
            return self.take(FIXED[t])
        if t == STRING:
            return self.str()
        if t == ARRAY:
            et, n = self.take("I"), self.take("Q")
            return (et, [self.value(et) for _ in range(n)])
        raise ValueError("unknown GGUF value type %d" % t)


def put_str(out, s):
    out += struct.pack("<Q", len(s)) + s


def put_value(out, t, v):
    if t in FIXED:
        out += struct.pack("<" + FIXED[t], v)
    elif t == STRING:
        put_str(out, v)
    else:
        et, items = v
        out += struct.pack("<IQ", et, len(items))
        for x in items:
            put_value(out, et, x)


def edit(src, dst, template=None, control=(), u32=()):
    """Writes dst: src with tokenizer.chat_template set to template (str, or None to keep
    it), each (id, text) of control made a control token of that text, and each (key, n) of
    u32 set (added if missing) as a u32 value."""
    buf = open(src, "rb").read()
    r = Reader(buf)
    if r.buf[:4] != b"GGUF":
        raise ValueError("%s is not a GGUF file" % src)
    r.at = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    kvs = []
    for _ in range(n_kv):
        k = r.str()
        t = r.take("I")
        kvs.append([k, t, r.value(t)])
    infos_at = r.at
    for _ in range(n_tensors):
        r.str()
        dims = r.take("I")
        r.at += 8 * dims + 4 + 8
    infos = buf[infos_at:r.at]
    align = next((v for k, t, v in kvs if k == b"general.alignment"), 32)
    data_at = (r.at + align - 1) // align * align
    kv = {k: i for i, (k, t, v) in enumerate(kvs)}
    for tid, text in control:
        kvs[kv[b"tokenizer.ggml.tokens"]][2][1][tid] = text.encode()
        kvs[kv[b"tokenizer.ggml.token_type"]][2][1][tid] = TYPE_CONTROL
    for key, n in u32:
        if key.encode() in kv:
            kvs[kv[key.encode()]][1:] = [4, n]
        else:
            kvs.append([key.encode(), 4, n])
    if template is not None:
        if b"tokenizer.chat_template" in kv:
            kvs[kv[b"tokenizer.chat_template"]][2] = template.encode()
        else:
            kvs.append([b"tokenizer.chat_template", STRING, template.encode()])
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kvs)))
    for k, t, v in kvs:
        put_str(out, k)
        out += struct.pack("<I", t)
        put_value(out, t, v)
    out += infos
    out += b"\0" * ((-len(out)) % align)
    out += buf[data_at:]
    with open(dst, "wb") as f:
        f.write(out)


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    src, dst, rest = argv[0], argv[1], argv[2:]
    template, control, u32 = None, [], []
    while rest:
        opt, val = rest[0], rest[1]
        rest = rest[2:]
        if opt == "--template":
            template = open(val, encoding="utf-8").read()
        elif opt == "--control":
            tid, text = val.split("=", 1)
            control.append((int(tid), text))
        elif opt == "--u32":
            key, n = val.split("=", 1)
            u32.append((key, int(n)))
        else:
            sys.exit("gguf_edit.py: unknown option %s" % opt)
    edit(src, dst, template, control, u32)


if __name__ == "__main__":
    main(sys.argv[1:])
