/* fuzz_gguf.c — feeds arbitrary bytes to the GGUF reader as a model file, then everything a
 * successful parse hands on: every key/value and string array walked, every tensor's first and
 * last data byte read (ASan checks that the extents the parse validated lie in the buffer), the
 * llama loader's mapping and its vocabulary image parsed as a tokenizer. Built as a libFuzzer
 * target with PREFIXD_FUZZ, and always as fuzz_gguf_corpus, which runs the seed corpus
 * (tests/fuzz/corpus/gguf, made by make_gguf_seeds.py) as a test. */
#include "../../model/gguf.h"
#include "model.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile unsigned sink;

static void walk(const model__gguf *g)
{
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const model__gguf_kv *kv = &g->kv[i];
        if (model__gguf_find(g, kv->key) != kv)
            abort(); /* keys are unique */
        int64_t v;
        double f;
        (void)model__gguf_int(kv, INT64_MIN, INT64_MAX, &v);
        (void)model__gguf_float(kv, &f);
        if (kv->type == MODEL__GGUF_STRING && kv->v.s.len)
            sink += (unsigned char)kv->v.s.p[kv->v.s.len - 1];
        if (kv->type == MODEL__GGUF_ARRAY && kv->arr_type == MODEL__GGUF_STRING) {
            uint64_t pos = 0;
            for (uint64_t k = 0; k < kv->arr_n; k++) {
                model__gguf_str s = model__gguf_arr_str(kv, &pos);
                if (s.len)
                    sink += (unsigned char)s.p[s.len - 1];
            }
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const model__gguf_tensor *t = &g->tensors[i];
        if (model__gguf_tensor_find(g, t->name) != t || t->offset % g->alignment != 0)
            abort();
        if (t->n_bytes) {
            const uint8_t *p = t->data;
            sink += p[0] + p[t->n_bytes - 1];
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy of exactly size bytes, so a read past the end is a heap overflow ASan reports. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    char msg[512];
    model__gguf g;
    if (model__gguf_parse(buf, size, "fuzz.gguf", &g, msg, sizeof msg) == 0) {
        walk(&g);
        model_config c;
        model_weights w;
        model_layer *layers = NULL;
        if (model__gguf_llama(&g, "fuzz.gguf", &c, &w, &layers, msg, sizeof msg) == 0) {
            unsigned char *img;
            size_t len;
            if (model__gguf_vocab_llama2c(&g, "fuzz.gguf", c.vocab_size, &img, &len, msg,
                                          sizeof msg) == 0) {
                model_tokenizer *t = NULL;
                if (model__tokenizer_parse(img, len, "vocab", c.vocab_size, &t, msg, sizeof msg) ==
                    0) {
                    int32_t ids[64];
                    size_t n;
                    (void)model_encode(t, "Once upon a time", 16, 1, ids, 64, &n);
                }
                model_tokenizer_free(t);
                free(img);
            }
            free(layers);
        }
        model__gguf_free(&g);
    }
    free(buf);
    return 0;
}
