/* gguf.h — the GGUF file reader, private to model/ (the tests and the fuzz target include it).
 *
 * A GGUF file (versions 2 and 3; little-endian) is a header, a list of typed metadata key/values,
 * a list of tensor descriptions, then the tensor data, each tensor at an offset (from the start
 * of the data section) that is a multiple of the file's alignment (`general.alignment`, default
 * 32). model__gguf_parse() reads it from memory (the caller's mapping) and validates every count,
 * length and offset before it forms a pointer: a string or array that runs past the end, a count
 * the file cannot hold, a tensor whose data runs past the end or whose element count overflows,
 * an unknown tensor or value type, duplicate keys or tensor names, or a misaligned offset are
 * refused with a message naming the file and the field. After a successful parse every pointer
 * below lies inside the buffer, and every string array may be walked without further checks.
 *
 * Strings in the file are not NUL-terminated; keys and tensor names are copied (with a NUL)
 * into one allocation owned by the parse, values are left in the buffer as (pointer, length).
 */
#ifndef PREFIXD_MODEL_GGUF_H
#define PREFIXD_MODEL_GGUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Metadata value types (the GGUF specification's ids). */
enum {
    MODEL__GGUF_UINT8 = 0,
    MODEL__GGUF_INT8 = 1,
    MODEL__GGUF_UINT16 = 2,
    MODEL__GGUF_INT16 = 3,
    MODEL__GGUF_UINT32 = 4,
    MODEL__GGUF_INT32 = 5,
    MODEL__GGUF_FLOAT32 = 6,
    MODEL__GGUF_BOOL = 7,
    MODEL__GGUF_STRING = 8,
    MODEL__GGUF_ARRAY = 9,
    MODEL__GGUF_UINT64 = 10,
    MODEL__GGUF_INT64 = 11,
    MODEL__GGUF_FLOAT64 = 12,
};

/* Most dimensions a tensor may have (ggml's limit). */
#define MODEL__GGUF_MAX_DIMS 4

typedef struct model__gguf_str {
    const char *p; /* into the buffer; not NUL-terminated */
    uint64_t len;
} model__gguf_str;

typedef struct model__gguf_kv {
    const char *key; /* NUL-terminated copy */
    uint32_t type;   /* MODEL__GGUF_* */
    /* Scalars: the value, widened (integers to i or u by signedness, bool to u, floats to f);
     * strings: s. */
    union {
        uint64_t u;
        int64_t i;
        double f;
        model__gguf_str s;
    } v;
    /* Arrays (type MODEL__GGUF_ARRAY): the element type (never ARRAY), the count, and the first
     * element's bytes. Strings are (uint64 length, bytes) one after another, each verified. */
    uint32_t arr_type;
    uint64_t arr_n;
    const uint8_t *arr;
} model__gguf_kv;

typedef struct model__gguf_tensor {
    const char *name;                  /* NUL-terminated copy */
    uint32_t n_dims;                   /* 1 .. MODEL__GGUF_MAX_DIMS */
    uint64_t ne[MODEL__GGUF_MAX_DIMS]; /* ne[0] innermost (a row's length); 1 past n_dims */
    uint32_t type;                     /* ggml type id (model.h's MODEL_TYPE_*) */
    uint64_t offset;                   /* from the start of the data section */
    uint64_t n_elems;
    uint64_t n_bytes;
    const void *data; /* inside the buffer */
} model__gguf_tensor;

typedef struct model__gguf {
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset; /* from the start of the file */
    uint64_t n_kv;
    model__gguf_kv *kv;
    uint64_t n_tensors;
    model__gguf_tensor *tensors;
    char *names;     /* storage of every key and tensor name */
    uint64_t kv_end; /* file offset where the metadata ends (the tensor descriptions begin) */
} model__gguf;

/* Parses a GGUF file held in buf (len bytes; the caller keeps it alive as long as *out is used).
 * path names the file in messages only. On success fills *out (free it with
 * model__gguf_free()); on failure leaves nothing to free. Returns 0, MODEL_EFORMAT (not GGUF, a
 * bad version, value or type, duplicates, misalignment), MODEL_ETRUNC (something runs past the
 * end of the file, or a count the file is too short to hold), MODEL_ERANGE (dimensions that
 * overflow) or MODEL_ENOMEM, with a message in msg naming the file and the field. */
int model__gguf_parse(const void *buf, size_t len, const char *path, model__gguf *out, char *msg,
                      size_t msglen);

/* Frees what a successful parse allocated. Accepts a zeroed struct. */
void model__gguf_free(model__gguf *g);

/* The key/value named key, or NULL. */
const model__gguf_kv *model__gguf_find(const model__gguf *g, const char *key);

/* The tensor named name, or NULL. */
const model__gguf_tensor *model__gguf_tensor_find(const model__gguf *g, const char *name);

/* A scalar integer value (any integer or bool type) as int64 in [lo, hi]: 0, or -1 when kv is not
 * an integer or out of range. */
int model__gguf_int(const model__gguf_kv *kv, int64_t lo, int64_t hi, int64_t *out);

/* A scalar float value (float32, float64, or an integer): 0 or -1. */
int model__gguf_float(const model__gguf_kv *kv, double *out);

/* Walks a string array: *pos starts at 0 (offset into kv->arr); each call returns the next
 * string. Only for a parsed kv with arr_type STRING, at most arr_n calls. */
model__gguf_str model__gguf_arr_str(const model__gguf_kv *kv, uint64_t *pos);

/* Writes "model file 'path': " and the formatted message into msg (control bytes, which a name
 * read from the file may hold, become '?'); returns code. Shared by gguf.c and gguf_llama.c. */
int model__gguf_vfail(char *msg, size_t msglen, const char *path, int code, const char *fmt,
                      va_list ap) __attribute__((format(printf, 5, 0)));

/* ggml's tensor types: the name ("q4_K"; NULL for an unknown id) and the block geometry
 * (elements per block, bytes per block). Returns 0, or -1 for an unknown or removed id. */
const char *model__ggml_type_name(uint32_t type);
int model__ggml_type_size(uint32_t type, uint32_t *block, uint32_t *bytes);

/* ---- Mapping a parsed file onto the model (gguf_llama.c) ----------------------------------- */

typedef struct model_config model_config;
typedef struct model_weights model_weights;
typedef struct model_layer model_layer;

/* Reads the hyper-parameters of a `llama` GGUF file from its metadata and points the weights at
 * its tensors, checking each tensor's presence, type and shape against them (any tensor left
 * over is refused too: it would mean an architecture variant this code would silently run
 * wrong). *layers receives the per-layer array (owned by the caller, free()) that w->layers
 * points to. Returns 0 or a MODEL_* code with a message naming the file and the key or tensor. */
int model__gguf_llama(const model__gguf *g, const char *path, model_config *c, model_weights *w,
                      model_layer **layers, char *msg, size_t msglen);

/* Writes the vocabulary of a GGUF file whose tokenizer.ggml.model is "llama" (SentencePiece:
 * tokenizer.ggml.tokens and .scores, vocab entries) as a llama2.c tokenizer file image, as
 * llama2.c's exporter writes one (U+2581 as a space, BOS and EOS as "\n<s>\n" and "\n</s>\n"),
 * into *buf (malloc'd, the caller frees) of *len bytes. The ids of <unk>, <s>, </s> must be 0, 1,
 * 2 (what the tokenizer assumes). Returns 0 or a MODEL_* code with msg. */
int model__gguf_vocab_llama2c(const model__gguf *g, const char *path, int vocab,
                              unsigned char **buf, size_t *len, char *msg, size_t msglen);

/* tokenizer.c: parses a llama2.c tokenizer image (len bytes); name starts every message. */
typedef struct model_tokenizer model_tokenizer;
int model__tokenizer_parse(const unsigned char *buf, size_t len, const char *name, int vocab_size,
                           model_tokenizer **out, char *msg, size_t msglen);

/* checkpoint.c: the parsed GGUF of a model loaded from one (NULL for a llama2.c checkpoint), and
 * the path it was loaded from; both valid as long as m. */
typedef struct model model;
const model__gguf *model__get_gguf(const model *m);
const char *model__get_path(const model *m);

/* checkpoint.c: the hyper-parameter checks every loader shares (why: a reason, len bytes), and the
 * derived sizes (head_size, kv_dim). */
int model__config_check(const model_config *c, char *why, size_t len);
void model__config_derive(model_config *c);

/* gguf_write.c: the type a matrix of rows of cols weights takes when `type` is asked for: type
 * itself, or Q8_0 and then F32 when cols is not a whole number of the type's blocks. */
int model__gguf_fallback_type(int type, int cols);

#endif
