#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_gguf (tests/fuzz/corpus/gguf/): small GGUF files that reach
every part of the reader and of the llama loader. Run from the repository root; the files are
committed, this script says how they were made."""
import os
import random
import struct

OUT = "tests/fuzz/corpus/gguf"
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?",
       U64: "Q", I64: "q", F64: "d"}
TYPE_SIZE = {0: (1, 4), 1: (1, 2), 8: (32, 34), 12: (256, 144), 30: (1, 2)}


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def val(t, v):
    if t == STR:
        return s(v)
    if t == ARR:
        at, items = v
        return struct.pack("<IQ", at, len(items)) + b"".join(val(at, i) for i in items)
    return struct.pack("<" + FMT[t], v)


def gguf(kvs, tensors, version=3, align=32, seed=1):
    rnd = random.Random(seed)
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += s(k) + struct.pack("<I", t) + val(t, v)
    off, datas = 0, []
    for name, ne, typ in tensors:
        block, size = TYPE_SIZE[typ]
        n = 1
        for d in ne:
            n *= d
        nbytes = n // block * size
        out += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", typ, off)
        data = bytes(rnd.getrandbits(8) for _ in range(nbytes)) if typ != 0 else \
            b"".join(struct.pack("<f", rnd.uniform(-1, 1)) for _ in range(n))
        data += b"\0" * ((-len(data)) % align)
        datas.append(data)
        off += len(data)
    out += b"\0" * ((-len(out)) % align)
    return out + b"".join(datas)


def llama(dim=8, hidden=16, layers=1, heads=2, kv=1, vocab=8, tied=False, version=3,
          align=None, arch="llama", vocab_kvs=True):
    kvd = dim // heads * kv
    kvs = [("general.architecture", STR, arch), ("llama.context_length", U32, 32),
           ("llama.embedding_length", U32, dim), ("llama.feed_forward_length", U32, hidden),
           ("llama.block_count", U32, layers), ("llama.attention.head_count", U32, heads),
           ("llama.attention.head_count_kv", U32, kv),
           ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
           ("llama.rope.dimension_count", U32, dim // heads)]
    if align:
        kvs.append(("general.alignment", U32, align))
    if vocab_kvs:
        toks = ["<unk>", "<s>", "</s>"] + ["\u2581t%d" % i for i in range(3, vocab)]
        kvs += [("tokenizer.ggml.model", STR, "llama"),
                ("tokenizer.ggml.tokens", ARR, (STR, toks)),
                ("tokenizer.ggml.scores", ARR, (F32, [float(-i) for i in range(vocab)])),
                ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2)]
    ts = [("token_embd.weight", [dim, vocab], 0), ("output_norm.weight", [dim], 0)]
    if not tied:
        ts.append(("output.weight", [dim, vocab], 0))
    for l in range(layers):
        p = "blk.%d." % l
        ts += [(p + "attn_norm.weight", [dim], 0), (p + "attn_q.weight", [dim, dim], 0),
               (p + "attn_k.weight", [dim, kvd], 0), (p + "attn_v.weight", [dim, kvd], 0),
               (p + "attn_output.weight", [dim, dim], 0), (p + "ffn_norm.weight", [dim], 0),
               (p + "ffn_gate.weight", [dim, hidden], 0), (p + "ffn_down.weight", [hidden, dim], 0),
               (p + "ffn_up.weight", [dim, hidden], 0)]
    return gguf(kvs, ts, version=version, align=align or 32)


def every_type():
    kvs = [("u8", U8, 1), ("i8", I8, -1), ("u16", U16, 2), ("i16", I16, -2), ("u32", U32, 3),
           ("i32", I32, -3), ("f32", F32, 0.5), ("bool", BOOL, True), ("str", STR, "text"),
           ("u64", U64, 4), ("i64", I64, -4), ("f64", F64, 0.25),
           ("arr.u8", ARR, (U8, [1, 2, 3])), ("arr.i64", ARR, (I64, [-1, 5])),
           ("arr.str", ARR, (STR, ["a", "", "bc"])), ("arr.empty", ARR, (F64, [])),
           ("general.architecture", STR, "gpt2")]
    ts = [("f16", [4, 2], 1), ("bf16", [8], 30), ("q8_0", [32, 2], 8), ("q4_K", [256], 12),
          ("f32.3d", [2, 2, 2], 0)]
    return gguf(kvs, ts, version=2)


def main():
    os.makedirs(OUT, exist_ok=True)
    files = {
        "llama_tiny": llama(),
        "llama_tied_v2_align64": llama(tied=True, version=2, align=64, layers=2, heads=2, kv=2),
        "llama_no_vocab": llama(vocab_kvs=False),
        "every_type": every_type(),
        "header_only": llama()[:24],
    }
    for name, data in files.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        print(name, len(data))


main()
