/* gguf.c — reading GGUF files (versions 2 and 3) from memory, every size checked first.
 *
 * A reader cursor walks the header, the key/values and the tensor descriptions; each read
 * checks the bytes it needs against what is left, and each count is checked against what the
 * rest of the file could possibly hold (every key/value takes at least 14 bytes, every tensor
 * description at least 33) before anything is allocated for it, so a 16-byte file claiming 2^60
 * tensors is refused at once instead of asking for exabytes. Arithmetic on sizes and offsets
 * that come from the file is overflow-checked. Nested arrays (allowed by the specification, used
 * by no model file we know) are refused rather than recursed into, which also bounds the stack.
 *
 * The type table follows ggml (ggml.h's enum ggml_type and the block structs of ggml-common.h):
 * every type a file may name is known here by its name and block geometry, so a tensor of a type
 * the model cannot run yet is refused by name, and its extent is still checked.
 */
#include "gguf.h"
#include "model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- ggml's types --------------------------------------------------------------------------- */

static const struct {
    const char *name;
    uint32_t block, bytes;
} ggml_types[] = {
    [0] = {"f32", 1, 4},
    [1] = {"f16", 1, 2},
    [2] = {"q4_0", 32, 18},
    [3] = {"q4_1", 32, 20},
    /* 4 and 5 (q4_2, q4_3) were removed from ggml. */
    [6] = {"q5_0", 32, 22},
    [7] = {"q5_1", 32, 24},
    [8] = {"q8_0", 32, 34},
    [9] = {"q8_1", 32, 36},
    [10] = {"q2_K", 256, 84},
    [11] = {"q3_K", 256, 110},
    [12] = {"q4_K", 256, 144},
    [13] = {"q5_K", 256, 176},
    [14] = {"q6_K", 256, 210},
    [15] = {"q8_K", 256, 292},
    [16] = {"iq2_xxs", 256, 66},
    [17] = {"iq2_xs", 256, 74},
    [18] = {"iq3_xxs", 256, 98},
    [19] = {"iq1_s", 256, 50},
    [20] = {"iq4_nl", 32, 18},
    [21] = {"iq3_s", 256, 110},
    [22] = {"iq2_s", 256, 82},
    [23] = {"iq4_xs", 256, 136},
    [24] = {"i8", 1, 1},
    [25] = {"i16", 1, 2},
    [26] = {"i32", 1, 4},
    [27] = {"i64", 1, 8},
    [28] = {"f64", 1, 8},
    [29] = {"iq1_m", 256, 56},
    [30] = {"bf16", 1, 2},
    /* 31-33 (q4_0_4_4, q4_0_4_8, q4_0_8_8) were removed from GGUF files. */
    [34] = {"tq1_0", 256, 54},
    [35] = {"tq2_0", 256, 66},
    /* 36-38 (iq4_nl_4_4, ...) were removed too. */
    [39] = {"mxfp4", 32, 17},
    [40] = {"nvfp4", 64, 36},
    [41] = {"q1_0", 128, 18},
    [42] = {"q2_0", 64, 18},
};

const char *model__ggml_type_name(uint32_t type)
{
    if (type >= sizeof ggml_types / sizeof ggml_types[0])
        return NULL;
    return ggml_types[type].name;
}

int model__ggml_type_size(uint32_t type, uint32_t *block, uint32_t *bytes)
{
    if (!model__ggml_type_name(type))
        return -1;
    *block = ggml_types[type].block;
    *bytes = ggml_types[type].bytes;
    return 0;
}

/* ---- The reader cursor ---------------------------------------------------------------------- */

typedef struct reader {
    const uint8_t *b;
    size_t len, off;
    const char *path;
    char *msg;
    size_t msglen;
    char where[160]; /* the field being read, for messages: "metadata key #3 ('x')" */
} reader;

int model__gguf_vfail(char *msg, size_t msglen, const char *path, int code, const char *fmt,
                      va_list ap)
{
    if (!msg || !msglen)
        return code;
    int n = snprintf(msg, msglen, "model file '%s': ", path);
    if (n >= 0 && (size_t)n < msglen)
        vsnprintf(msg + n, msglen - (size_t)n, fmt, ap);
    /* Names come from the file: no control bytes reach a terminal or a log line. */
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return code;
}

__attribute__((format(printf, 3, 4))) static int fail(reader *r, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    model__gguf_vfail(r->msg, r->msglen, r->path, code, fmt, ap);
    va_end(ap);
    return code;
}

/* Checks that n more bytes are there for `what`. */
static int need(reader *r, uint64_t n, const char *what)
{
    if (n > r->len - r->off)
        return fail(r, MODEL_ETRUNC,
                    "%s: %s runs past the end of the file (offset %zu + %llu > %zu)", r->where,
                    what, r->off, (unsigned long long)n, r->len);
    return 0;
}

static int rd_u32(reader *r, const char *what, uint32_t *v)
{
    int rc = need(r, 4, what);
    if (rc)
        return rc;
    const uint8_t *p = r->b + r->off;
    *v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    r->off += 4;
    return 0;
}

static int rd_u64(reader *r, const char *what, uint64_t *v)
{
    int rc = need(r, 8, what);
    if (rc)
        return rc;
    const uint8_t *p = r->b + r->off;
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--)
        x = x << 8 | p[i];
    *v = x;
    r->off += 8;
    return 0;
}

static int rd_str(reader *r, const char *what, model__gguf_str *s)
{
    uint64_t n;
    int rc = rd_u64(r, what, &n);
    if (rc)
        return rc;
    if (n > r->len - r->off)
        return fail(r, MODEL_ETRUNC,
                    "%s: %s of %llu bytes runs past the end of the file (offset %zu + %llu > %zu)",
                    r->where, what, (unsigned long long)n, r->off, (unsigned long long)n, r->len);
    s->p = (const char *)r->b + r->off;
    s->len = n;
    r->off += (size_t)n;
    return 0;
}

/* Bytes of one scalar of a value type; 0 for strings and arrays, -1 for an unknown type. */
static int scalar_size(uint32_t t)
{
    switch (t) {
    case MODEL__GGUF_UINT8:
    case MODEL__GGUF_INT8:
    case MODEL__GGUF_BOOL:
        return 1;
    case MODEL__GGUF_UINT16:
    case MODEL__GGUF_INT16:
        return 2;
    case MODEL__GGUF_UINT32:
    case MODEL__GGUF_INT32:
    case MODEL__GGUF_FLOAT32:
        return 4;
    case MODEL__GGUF_UINT64:
    case MODEL__GGUF_INT64:
    case MODEL__GGUF_FLOAT64:
        return 8;
    case MODEL__GGUF_STRING:
    case MODEL__GGUF_ARRAY:
        return 0;
    }
    return -1;
}

/* Reads one scalar of type t (size bytes) at the cursor into kv->v. */
static void scalar_read(reader *r, uint32_t t, int size, model__gguf_kv *kv)
{
    const uint8_t *p = r->b + r->off;
    uint64_t x = 0;
    for (int i = size - 1; i >= 0; i--)
        x = x << 8 | p[i];
    r->off += (size_t)size;
    switch (t) {
    case MODEL__GGUF_INT8:
        kv->v.i = (int8_t)x;
        break;
    case MODEL__GGUF_INT16:
        kv->v.i = (int16_t)x;
        break;
    case MODEL__GGUF_INT32:
        kv->v.i = (int32_t)x;
        break;
    case MODEL__GGUF_INT64:
        kv->v.i = (int64_t)x;
        break;
    case MODEL__GGUF_FLOAT32: {
        uint32_t u = (uint32_t)x;
        float f;
        memcpy(&f, &u, 4);
        kv->v.f = f;
        break;
    }
    case MODEL__GGUF_FLOAT64:
        memcpy(&kv->v.f, &x, 8);
        break;
    default:
        kv->v.u = x;
        break;
    }
}

static int read_value(reader *r, model__gguf_kv *kv)
{
    int size = scalar_size(kv->type);
    if (size < 0)
        return fail(r, MODEL_EFORMAT, "%s: unknown value type %u", r->where, kv->type);
    if (size > 0) {
        int rc = need(r, (uint64_t)size, "the value");
        if (rc)
            return rc;
        scalar_read(r, kv->type, size, kv);
        return 0;
    }
    if (kv->type == MODEL__GGUF_STRING)
        return rd_str(r, "the string value", &kv->v.s);
    /* An array: element type, count, elements. */
    int rc = rd_u32(r, "the array's element type", &kv->arr_type);
    if (!rc)
        rc = rd_u64(r, "the array's length", &kv->arr_n);
    if (rc)
        return rc;
    if (kv->arr_type == MODEL__GGUF_ARRAY)
        return fail(r, MODEL_EFORMAT, "%s: nested arrays are not supported", r->where);
    int es = scalar_size(kv->arr_type);
    if (es < 0)
        return fail(r, MODEL_EFORMAT, "%s: unknown array element type %u", r->where, kv->arr_type);
    /* A string takes at least its 8-byte length. */
    uint64_t min = es > 0 ? (uint64_t)es : 8;
    if (kv->arr_n > (r->len - r->off) / min)
        return fail(r, MODEL_ETRUNC,
                    "%s: array of %llu elements cannot fit in the %zu bytes left in the file",
                    r->where, (unsigned long long)kv->arr_n, r->len - r->off);
    kv->arr = r->b + r->off;
    if (es > 0) {
        r->off += (size_t)(kv->arr_n * min);
        return 0;
    }
    char what[64];
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        model__gguf_str s;
        snprintf(what, sizeof what, "string #%llu", (unsigned long long)i);
        rc = rd_str(r, what, &s);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- Names and duplicates ------------------------------------------------------------------- */

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Returns the first name that occurs twice among n, or NULL. */
static const char *find_duplicate(const char **names, size_t n)
{
    qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return names[i];
    return NULL;
}

/* Checks a name read from the file. NUL bytes inside a name would make two different names
 * compare equal once copied: refused. */
static int name_check(reader *r, const model__gguf_str *s)
{
    if (s->len == 0)
        return fail(r, MODEL_EFORMAT, "%s: empty name", r->where);
    if (memchr(s->p, '\0', (size_t)s->len))
        return fail(r, MODEL_EFORMAT, "%s: name contains a NUL byte", r->where);
    return 0;
}

/* Copies the n names (checked) into one allocation, NUL-terminated; dst[i] receives name i. */
static char *names_copy(const model__gguf_str *names, uint64_t n, const char **dst)
{
    size_t total = 1;
    for (uint64_t i = 0; i < n; i++)
        total += (size_t)names[i].len + 1; /* each lies within the buffer: no overflow */
    char *arena = malloc(total), *at = arena;
    if (!arena)
        return NULL;
    for (uint64_t i = 0; i < n; i++) {
        memcpy(at, names[i].p, (size_t)names[i].len);
        at[names[i].len] = '\0';
        dst[i] = at;
        at += names[i].len + 1;
    }
    return arena;
}

/* ---- Tensors -------------------------------------------------------------------------------- */

static int read_tensor_info(reader *r, model__gguf_tensor *t, model__gguf_str *name)
{
    int rc = rd_str(r, "the name", name);
    if (!rc)
        rc = name_check(r, name);
    if (rc)
        return rc;
    snprintf(r->where, sizeof r->where, "tensor '%.*s'", name->len > 100 ? 100 : (int)name->len,
             name->p);
    rc = rd_u32(r, "the dimension count", &t->n_dims);
    if (rc)
        return rc;
    if (t->n_dims < 1 || t->n_dims > MODEL__GGUF_MAX_DIMS)
        return fail(r, MODEL_EFORMAT, "%s: %u dimensions (expected 1 to %d)", r->where, t->n_dims,
                    MODEL__GGUF_MAX_DIMS);
    for (int d = 0; d < MODEL__GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if ((uint32_t)d < t->n_dims && (rc = rd_u64(r, "a dimension", &t->ne[d])) != 0)
            return rc;
    }
    rc = rd_u32(r, "the tensor type", &t->type);
    if (!rc)
        rc = rd_u64(r, "the data offset", &t->offset);
    return rc;
}

/* Element and byte counts of t, overflow-checked (each at most INT64_MAX, as ggml counts them). */
static int tensor_size(reader *r, model__gguf_tensor *t)
{
    uint32_t block, bytes;
    if (model__ggml_type_size(t->type, &block, &bytes) != 0)
        return fail(r, MODEL_EFORMAT, "%s: unknown tensor type %u", r->where, t->type);
    uint64_t n = 1;
    for (int d = 0; d < MODEL__GGUF_MAX_DIMS; d++) {
        if (t->ne[d] > (uint64_t)INT64_MAX || (t->ne[d] && n > (uint64_t)INT64_MAX / t->ne[d]))
            return fail(r, MODEL_ERANGE, "%s: dimensions overflow (%llu x %llu x %llu x %llu)",
                        r->where, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                        (unsigned long long)t->ne[2], (unsigned long long)t->ne[3]);
        n *= t->ne[d];
    }
    if (t->ne[0] % block != 0)
        return fail(r, MODEL_EFORMAT,
                    "%s: row length %llu is not a multiple of the %s block size %u", r->where,
                    (unsigned long long)t->ne[0], ggml_types[t->type].name, block);
    t->n_elems = n;
    /* Bytes per element are at most 8 (f64, i64): this cannot overflow, but check anyway. */
    uint64_t blocks = n / block;
    if (blocks > (uint64_t)INT64_MAX / bytes)
        return fail(r, MODEL_ERANGE, "%s: size overflows", r->where);
    t->n_bytes = blocks * bytes;
    return 0;
}

static int place_tensor(reader *r, const model__gguf *g, model__gguf_tensor *t)
{
    if (t->offset % g->alignment != 0)
        return fail(r, MODEL_EFORMAT,
                    "tensor '%s': data offset %llu is not a multiple of the "
                    "alignment %u",
                    t->name, (unsigned long long)t->offset, g->alignment);
    uint64_t room = r->len - g->data_offset; /* data_offset <= len checked by the caller */
    if (t->offset > room || t->n_bytes > room - t->offset)
        return fail(r, MODEL_ETRUNC,
                    "tensor '%s': data extends past the end of the file (offset %llu + %llu > "
                    "%zu)",
                    t->name, (unsigned long long)(g->data_offset + t->offset),
                    (unsigned long long)t->n_bytes, r->len);
    t->data = r->b + g->data_offset + t->offset;
    return 0;
}

/* ---- Parse ---------------------------------------------------------------------------------- */

static int parse_header(reader *r, model__gguf *g)
{
    snprintf(r->where, sizeof r->where, "header");
    int rc = need(r, 4, "the magic");
    if (rc)
        return rc;
    if (memcmp(r->b, "GGUF", 4) != 0)
        return fail(r, MODEL_EFORMAT, "not a GGUF file (no 'GGUF' magic)");
    r->off = 4;
    rc = rd_u32(r, "the version", &g->version);
    if (rc)
        return rc;
    if (g->version != 2 && g->version != 3)
        return fail(r, MODEL_EFORMAT, "GGUF version %u is not supported (only 2 and 3)",
                    g->version);
    rc = rd_u64(r, "the tensor count", &g->n_tensors);
    if (!rc)
        rc = rd_u64(r, "the metadata count", &g->n_kv);
    if (rc)
        return rc;
    /* Every key/value needs at least 8 (key length) + 1 (key) + 4 (type) + 1 (value) bytes, every
     * tensor description 8 + 1 + 4 + 8 + 4 + 8 (name, dims, one dimension, type, offset). */
    size_t left = r->len - r->off;
    if (g->n_kv > left / 14)
        return fail(r, MODEL_ETRUNC,
                    "header: metadata count %llu cannot fit in a file of %zu bytes",
                    (unsigned long long)g->n_kv, r->len);
    if (g->n_tensors > left / 33)
        return fail(r, MODEL_ETRUNC, "header: tensor count %llu cannot fit in a file of %zu bytes",
                    (unsigned long long)g->n_tensors, r->len);
    return 0;
}

static int parse_kvs(reader *r, model__gguf *g, model__gguf_str *names)
{
    for (uint64_t i = 0; i < g->n_kv; i++) {
        model__gguf_kv *kv = &g->kv[i];
        snprintf(r->where, sizeof r->where, "metadata key #%llu", (unsigned long long)i);
        int rc = rd_str(r, "the key", &names[i]);
        if (!rc)
            rc = name_check(r, &names[i]);
        if (rc)
            return rc;
        snprintf(r->where, sizeof r->where, "metadata key '%.*s'",
                 names[i].len > 100 ? 100 : (int)names[i].len, names[i].p);
        rc = rd_u32(r, "the value type", &kv->type);
        if (!rc)
            rc = read_value(r, kv);
        if (rc)
            return rc;
    }
    return 0;
}

static int parse_tensor_infos(reader *r, model__gguf *g, model__gguf_str *names)
{
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        model__gguf_tensor *t = &g->tensors[i];
        snprintf(r->where, sizeof r->where, "tensor #%llu", (unsigned long long)i);
        int rc = read_tensor_info(r, t, &names[i]);
        if (rc || (rc = tensor_size(r, t)) != 0)
            return rc;
    }
    return 0;
}

static int parse_alignment(reader *r, model__gguf *g)
{
    g->alignment = 32;
    const model__gguf_kv *a = model__gguf_find(g, "general.alignment");
    if (!a)
        return 0;
    if (a->type != MODEL__GGUF_UINT32)
        return fail(r, MODEL_EFORMAT,
                    "metadata key 'general.alignment': type %u, expected "
                    "uint32",
                    a->type);
    if (a->v.u == 0 || (a->v.u & (a->v.u - 1)) != 0 || a->v.u > (1u << 20))
        return fail(r, MODEL_EFORMAT,
                    "metadata key 'general.alignment': %llu is not a power of two up to 1 MiB",
                    (unsigned long long)a->v.u);
    g->alignment = (uint32_t)a->v.u;
    return 0;
}

int model__gguf_parse(const void *buf, size_t len, const char *path, model__gguf *out, char *msg,
                      size_t msglen)
{
    memset(out, 0, sizeof *out);
    reader r = {buf, len, 0, path, msg, msglen, ""};
    model__gguf g = {0};
    int rc = parse_header(&r, &g);
    if (rc)
        return rc;
    /* Both counts were bounded by the file's size above. */
    uint64_t n_names = g.n_kv + g.n_tensors;
    g.kv = calloc(g.n_kv ? g.n_kv : 1, sizeof *g.kv);
    g.tensors = calloc(g.n_tensors ? g.n_tensors : 1, sizeof *g.tensors);
    model__gguf_str *names = malloc((n_names ? n_names : 1) * sizeof *names);
    const char **sorted = malloc((n_names ? n_names : 1) * sizeof *sorted);
    if (!g.kv || !g.tensors || !names || !sorted) {
        rc = fail(&r, MODEL_ENOMEM, "out of memory reading the header");
        goto out;
    }
    if ((rc = parse_kvs(&r, &g, names)) != 0)
        goto out;
    g.kv_end = r.off;
    if ((rc = parse_tensor_infos(&r, &g, names + g.n_kv)) != 0)
        goto out;
    if (!(g.names = names_copy(names, n_names, sorted))) {
        rc = fail(&r, MODEL_ENOMEM, "out of memory reading the header");
        goto out;
    }
    for (uint64_t i = 0; i < g.n_kv; i++)
        g.kv[i].key = sorted[i];
    for (uint64_t i = 0; i < g.n_tensors; i++)
        g.tensors[i].name = sorted[g.n_kv + i];
    const char *dup = find_duplicate(sorted, (size_t)g.n_kv);
    if (dup) {
        rc = fail(&r, MODEL_EFORMAT, "metadata key '%s' appears twice", dup);
        goto out;
    }
    dup = find_duplicate(sorted + g.n_kv, (size_t)g.n_tensors);
    if (dup) {
        rc = fail(&r, MODEL_EFORMAT, "tensor '%s' appears twice", dup);
        goto out;
    }
    if ((rc = parse_alignment(&r, &g)) != 0)
        goto out;
    /* The data section starts at the next multiple of the alignment. */
    uint64_t pad = (g.alignment - r.off % g.alignment) % g.alignment;
    g.data_offset = r.off + pad;
    if (g.n_tensors > 0 && g.data_offset > len) {
        snprintf(r.where, sizeof r.where, "header");
        rc = need(&r, pad, "the padding before the tensor data");
        goto out;
    }
    for (uint64_t i = 0; i < g.n_tensors; i++)
        if ((rc = place_tensor(&r, &g, &g.tensors[i])) != 0)
            goto out;
out:
    free(names);
    free(sorted);
    if (rc)
        model__gguf_free(&g);
    else
        *out = g;
    return rc;
}

void model__gguf_free(model__gguf *g)
{
    free(g->kv);
    free(g->tensors);
    free(g->names);
    memset(g, 0, sizeof *g);
}

/* ---- Lookups -------------------------------------------------------------------------------- */

const model__gguf_kv *model__gguf_find(const model__gguf *g, const char *key)
{
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0)
            return &g->kv[i];
    return NULL;
}

const model__gguf_tensor *model__gguf_tensor_find(const model__gguf *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0)
            return &g->tensors[i];
    return NULL;
}

int model__gguf_int(const model__gguf_kv *kv, int64_t lo, int64_t hi, int64_t *out)
{
    int64_t v;
    switch (kv->type) {
    case MODEL__GGUF_INT8:
    case MODEL__GGUF_INT16:
    case MODEL__GGUF_INT32:
    case MODEL__GGUF_INT64:
        v = kv->v.i;
        break;
    case MODEL__GGUF_UINT8:
    case MODEL__GGUF_UINT16:
    case MODEL__GGUF_UINT32:
    case MODEL__GGUF_UINT64:
    case MODEL__GGUF_BOOL:
        if (kv->v.u > (uint64_t)INT64_MAX)
            return -1;
        v = (int64_t)kv->v.u;
        break;
    default:
        return -1;
    }
    if (v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int model__gguf_float(const model__gguf_kv *kv, double *out)
{
    if (kv->type == MODEL__GGUF_FLOAT32 || kv->type == MODEL__GGUF_FLOAT64) {
        *out = kv->v.f;
        return 0;
    }
    int64_t v;
    if (model__gguf_int(kv, INT64_MIN, INT64_MAX, &v) != 0)
        return -1;
    *out = (double)v;
    return 0;
}

model__gguf_str model__gguf_arr_str(const model__gguf_kv *kv, uint64_t *pos)
{
    const uint8_t *p = kv->arr + *pos;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | p[i];
    model__gguf_str s = {(const char *)p + 8, n};
    *pos += 8 + n;
    return s;
}
