/* checkpoint.c — loading model files: dispatch on content, llama2.c legacy version 0, validation.
 * (GGUF files are read by gguf.c and mapped onto the model by gguf_llama.c.)
 *
 * The checkpoint is memory-mapped read-only and the weight pointers point into the mapping, so a
 * 440 MB model loads in the time it takes to hash it (the fingerprint, XXH3-128 of every byte).
 * Every size is validated before any pointer is formed: a truncated or impossible file gets an
 * error naming the file and the problem, never a crash.
 */
#include "base.h"
#include "gguf.h"
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <math.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

struct model {
    model_config cfg;
    model_weights w;
    model_layer *layers; /* (n_layers), what w.layers points to */
    model__gguf gguf;    /* the parsed header of a GGUF file (zeroed for llama2.c) */
    int is_gguf;
    char *path;
    void *map;
    size_t map_len;
    uint8_t fingerprint[16];
};

const char *model_strerror(int err)
{
    switch (err) {
#define X(name, code, msg)                                                                         \
    case code:                                                                                     \
        return msg;
        MODEL_ERRNO_MAP(X)
#undef X
    case 0:
        return "success";
    }
    return "unknown error";
}

/* Checks hyper-parameters; shared by the loader, the shape parser and synth. */
static int config_check(const model_config *c, char *why, size_t len)
{
    if (c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->vocab_size <= 0 || c->seq_len <= 0) {
        snprintf(why, len,
                 "every size must be positive (dim %d, hidden %d, layers %d, heads %d, kv_heads "
                 "%d, vocab %d, seq_len %d)",
                 c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size,
                 c->seq_len);
        return MODEL_ESHAPE;
    }
    if (c->dim % c->n_heads != 0) {
        snprintf(why, len, "dim %d is not divisible by n_heads %d", c->dim, c->n_heads);
        return MODEL_ESHAPE;
    }
    if (c->n_heads % c->n_kv_heads != 0) {
        snprintf(why, len, "n_heads %d is not a multiple of n_kv_heads %d", c->n_heads,
                 c->n_kv_heads);
        return MODEL_ESHAPE;
    }
    if ((c->dim / c->n_heads) % 2 != 0) {
        snprintf(why, len, "head size %d is odd (rotary embedding needs pairs)",
                 c->dim / c->n_heads);
        return MODEL_ESHAPE;
    }
    /* Keep every tensor's element count and every activation index inside int range, so the
     * kernels can use int arithmetic for in-tensor offsets. */
    const int64_t lim = (int64_t)1 << 30;
    if (c->dim > 65536 || c->hidden_dim > 262144 || c->n_layers > 1024 || c->vocab_size > 4194304 ||
        c->seq_len > 1048576 || (int64_t)c->vocab_size * c->dim > lim ||
        (int64_t)c->hidden_dim * c->dim > lim) {
        snprintf(why, len, "sizes too large (dim %d, hidden %d, layers %d, vocab %d, seq_len %d)",
                 c->dim, c->hidden_dim, c->n_layers, c->vocab_size, c->seq_len);
        return MODEL_ESHAPE;
    }
    return 0;
}

static void config_derive(model_config *c)
{
    c->head_size = c->dim / c->n_heads;
    if (!(c->rope_factor > 0.0f)) /* unset: no scaling */
        c->rope_factor = 1.0f;
    c->kv_dim = c->head_size * c->n_kv_heads;
}

int model__config_check(const model_config *c, char *why, size_t len)
{
    int rc = config_check(c, why, len);
    if (rc)
        return rc;
    if (!(c->rope_theta > 0.0f) || !(c->norm_eps >= 0.0f) || c->norm_eps > 1.0f) {
        snprintf(why, len, "rope base %g must be positive, rms epsilon %g in [0, 1]",
                 (double)c->rope_theta, (double)c->norm_eps);
        return MODEL_ESHAPE;
    }
    return 0;
}

void model__config_derive(model_config *c)
{
    config_derive(c);
}

/* Floats of the llama2.c legacy layout, classifier excluded. */
static uint64_t legacy_floats(const model_config *c)
{
    uint64_t d = (uint64_t)c->dim, h = (uint64_t)c->hidden_dim, L = (uint64_t)c->n_layers;
    uint64_t kv = (uint64_t)c->kv_dim, hs = (uint64_t)c->head_size;
    return (uint64_t)c->vocab_size * d              /* token_embedding */
           + L * d                                  /* rms_att */
           + L * d * d + 2 * L * kv * d + L * d * d /* wq wk wv wo */
           + L * d                                  /* rms_ffn */
           + 3 * L * h * d                          /* w1 w2 w3 */
           + d                                      /* rms_final */
           + 2 * (uint64_t)c->seq_len * (hs / 2);   /* legacy RoPE tables */
}

uint64_t model_param_count(const model_config *c)
{
    uint64_t d = (uint64_t)c->dim, h = (uint64_t)c->hidden_dim, L = (uint64_t)c->n_layers;
    uint64_t kv = (uint64_t)c->kv_dim;
    uint64_t n = (uint64_t)c->vocab_size * d + 2 * L * d + 2 * L * d * d + 2 * L * kv * d +
                 3 * L * h * d + d;
    if (!c->shared_class)
        n += (uint64_t)c->vocab_size * d;
    return n;
}

uint64_t model_weight_bytes(const model_config *c)
{
    return model_param_count(c) * sizeof(float);
}

size_t model_kv_block_floats(const model_config *c, int block_tokens)
{
    return (size_t)c->n_layers * 2 * (size_t)block_tokens * (size_t)c->kv_dim;
}

static model_tensor f32_tensor(const float *p, int rows, int cols)
{
    model_tensor t = {p, MODEL_TYPE_F32, rows, cols};
    return t;
}

/* Points the weights into the legacy layout at p: each weight is one array over all layers. */
static void weights_map(model *m, const float *p)
{
    const model_config *c = &m->cfg;
    int d = c->dim, h = c->hidden_dim, kv = c->kv_dim;
    size_t L = (size_t)c->n_layers, dd = (size_t)d * d, kd = (size_t)kv * d, hd = (size_t)h * d;
    model_weights *w = &m->w;
    w->token_embedding = f32_tensor(p, c->vocab_size, d);
    p += (size_t)c->vocab_size * d;
    const float *rms_att = p, *wq = rms_att + L * d, *wk = wq + L * dd, *wv = wk + L * kd;
    const float *wo = wv + L * kd, *rms_ffn = wo + L * dd, *w1 = rms_ffn + L * d;
    const float *w2 = w1 + L * hd, *w3 = w2 + L * hd;
    for (size_t l = 0; l < L; l++) {
        model_layer *y = &m->layers[l];
        y->rms_att = f32_tensor(rms_att + l * d, 1, d);
        y->wq = f32_tensor(wq + l * dd, d, d);
        y->wk = f32_tensor(wk + l * kd, kv, d);
        y->wv = f32_tensor(wv + l * kd, kv, d);
        y->wo = f32_tensor(wo + l * dd, d, d);
        y->rms_ffn = f32_tensor(rms_ffn + l * d, 1, d);
        y->w1 = f32_tensor(w1 + l * hd, h, d);
        y->w2 = f32_tensor(w2 + l * hd, d, h);
        y->w3 = f32_tensor(w3 + l * hd, h, d);
    }
    w->layers = m->layers;
    p = w3 + L * hd;
    w->rms_final = f32_tensor(p, 1, d);
    p += d;
    p += 2 * (size_t)c->seq_len * (size_t)(c->head_size / 2);
    w->wcls = c->shared_class ? w->token_embedding : f32_tensor(p, c->vocab_size, d);
}

static int load_legacy(model *m, const char *path, char *msg, size_t msglen)
{
    const unsigned char *b = m->map;
    int32_t hdr[7];
    if (m->map_len < sizeof hdr)
        return base_fail(msg, msglen, MODEL_ETRUNC,
                         "model file '%s': truncated: %zu bytes, the header alone needs 28", path,
                         m->map_len);
    memcpy(hdr, b, sizeof hdr);
    model_config *c = &m->cfg;
    c->dim = hdr[0];
    c->hidden_dim = hdr[1];
    c->n_layers = hdr[2];
    c->n_heads = hdr[3];
    c->n_kv_heads = hdr[4];
    c->vocab_size = hdr[5] < 0 && hdr[5] != INT32_MIN ? -hdr[5] : hdr[5];
    c->shared_class = hdr[5] > 0;
    c->seq_len = hdr[6];
    c->rope_theta = 10000.0f;
    c->norm_eps = 1e-5f;
    char why[200];
    int rc = config_check(c, why, sizeof why);
    if (rc)
        return base_fail(msg, msglen, rc, "model file '%s': impossible shape: %s", path, why);
    config_derive(c);
    uint64_t need = sizeof hdr + legacy_floats(c) * sizeof(float);
    uint64_t cls = (uint64_t)c->vocab_size * (uint64_t)c->dim * sizeof(float);
    if (!c->shared_class)
        need += cls;
    if (m->map_len < need)
        return base_fail(
            msg, msglen, MODEL_ETRUNC,
            "model file '%s': truncated: header (dim %d, %d layers, vocab %d) needs %llu "
            "bytes, file holds %zu",
            path, c->dim, c->n_layers, c->vocab_size, (unsigned long long)need, m->map_len);
    if (m->map_len > need)
        return base_fail(
            msg, msglen, MODEL_EFORMAT,
            "model file '%s': %zu bytes where the header (dim %d, %d layers, vocab %d, "
            "%s classifier) describes %llu: not a llama2.c version 0 checkpoint of that "
            "shape",
            path, m->map_len, c->dim, c->n_layers, c->vocab_size,
            c->shared_class ? "shared" : "separate", (unsigned long long)need);
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers)
        return base_fail(msg, msglen, MODEL_ENOMEM, "model file '%s': out of memory", path);
    weights_map(m, (const float *)(b + sizeof hdr));
    return 0;
}

static int load_gguf(model *m, const char *path, char *msg, size_t msglen)
{
    int rc = model__gguf_parse(m->map, m->map_len, path, &m->gguf, msg, msglen);
    if (rc)
        return rc;
    m->is_gguf = 1;
    return model__gguf_llama(&m->gguf, path, &m->cfg, &m->w, &m->layers, msg, msglen);
}

int model_load(const char *path, model **out, char *msg, size_t msglen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return base_fail(msg, msglen, MODEL_EIO, "model file '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int e = errno;
        close(fd);
        return base_fail(msg, msglen, MODEL_EIO, "model file '%s': %s", path,
                         S_ISDIR(st.st_mode) ? "is a directory"
                         : e                 ? strerror(e)
                                             : "not a file");
    }
    if (st.st_size == 0) {
        close(fd);
        return base_fail(msg, msglen, MODEL_ETRUNC, "model file '%s': empty file", path);
    }
    model *m = calloc(1, sizeof *m);
    if (!m) {
        close(fd);
        return base_fail(msg, msglen, MODEL_ENOMEM, "model file '%s': out of memory", path);
    }
    m->map_len = (size_t)st.st_size;
    m->map = mmap(NULL, m->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m->map == MAP_FAILED) {
        int e = errno;
        free(m);
        return base_fail(msg, msglen, MODEL_EIO, "model file '%s': cannot map: %s", path,
                         strerror(e));
    }
    int rc;
    if (m->map_len >= 4 && memcmp(m->map, "GGUF", 4) == 0)
        rc = load_gguf(m, path, msg, msglen);
    else
        rc = load_legacy(m, path, msg, msglen);
    if (!rc && !(m->path = strdup(path)))
        rc = base_fail(msg, msglen, MODEL_ENOMEM, "model file '%s': out of memory", path);
    if (rc) {
        model_free(m);
        return rc;
    }
    madvise(m->map, m->map_len, MADV_WILLNEED);
    XXH128_hash_t h = XXH3_128bits(m->map, m->map_len);
    XXH128_canonical_t canon;
    XXH128_canonicalFromHash(&canon, h);
    memcpy(m->fingerprint, canon.digest, 16);
    *out = m;
    return 0;
}

void model_free(model *m)
{
    if (!m)
        return;
    munmap(m->map, m->map_len);
    free(m->layers);
    model__gguf_free(&m->gguf);
    free(m->path);
    free(m);
}

const model__gguf *model__get_gguf(const model *m)
{
    return m->is_gguf ? &m->gguf : NULL;
}

const char *model__get_path(const model *m)
{
    return m->path;
}

int model_set_context(model *m, int seq_len)
{
    if (seq_len < 1 || seq_len > 1048576)
        return MODEL_EINVAL;
    m->cfg.seq_len = seq_len;
    return 0;
}

const char *model_type_name(int type)
{
    const char *n = type >= 0 ? model__ggml_type_name((uint32_t)type) : NULL;
    return n ? n : "unknown";
}

const model_config *model_get_config(const model *m)
{
    return &m->cfg;
}

const model_weights *model_get_weights(const model *m)
{
    return &m->w;
}

const uint8_t *model_fingerprint(const model *m)
{
    return m->fingerprint;
}

int model_shape_parse(const char *spec, model_config *out, char *msg, size_t msglen)
{
    static const struct {
        const char *name;
        int v[7];
    } named[] = {
        {"stories260K", {64, 172, 5, 8, 4, 512, 512}},
        {"stories15M", {288, 768, 6, 6, 6, 32000, 256}},
        {"stories42M", {512, 1376, 8, 8, 8, 32000, 1024}},
        {"stories110M", {768, 2048, 12, 12, 12, 32000, 1024}},
    };
    int v[7];
    int found = 0;
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        if (strcmp(spec, named[i].name) == 0) {
            memcpy(v, named[i].v, sizeof v);
            found = 1;
        }
    if (!found) {
        int used = 0;
        if (sscanf(spec, "%d,%d,%d,%d,%d,%d,%d%n", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                   &used) != 7 ||
            spec[used] != '\0')
            return base_fail(msg, msglen, MODEL_EINVAL,
                             "shape '%s': expected a name (stories260K, stories15M, stories42M, "
                             "stories110M) or dim,hidden,layers,heads,kv_heads,vocab,seq_len",
                             spec);
    }
    memset(out, 0, sizeof *out);
    out->dim = v[0];
    out->hidden_dim = v[1];
    out->n_layers = v[2];
    out->n_heads = v[3];
    out->n_kv_heads = v[4];
    out->vocab_size = v[5];
    out->seq_len = v[6];
    out->shared_class = 1;
    out->rope_theta = 10000.0f;
    out->norm_eps = 1e-5f;
    char why[200];
    int rc = config_check(out, why, sizeof why);
    if (rc)
        return base_fail(msg, msglen, rc, "shape '%s': %s", spec, why);
    config_derive(out);
    return 0;
}

/* splitmix64: a small, good generator for synthetic weights. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Writes n floats uniform in [-scale, scale] (or all equal to scale when fill is set). */
static int write_floats(FILE *f, uint64_t n, float scale, int fill, uint64_t *rng)
{
    float buf[4096];
    while (n > 0) {
        size_t k = n < 4096 ? (size_t)n : 4096;
        for (size_t i = 0; i < k; i++) {
            if (fill) {
                buf[i] = scale;
            } else {
                double u = (double)(splitmix(rng) >> 11) * (1.0 / 9007199254740992.0);
                buf[i] = (float)((2.0 * u - 1.0) * scale);
            }
        }
        if (fwrite(buf, sizeof(float), k, f) != k)
            return -1;
        n -= k;
    }
    return 0;
}

int model_synth_write(const char *path, const model_config *cfg, uint64_t seed, char *msg,
                      size_t msglen)
{
    model_config c = *cfg;
    char why[200];
    int rc = config_check(&c, why, sizeof why);
    if (rc)
        return base_fail(msg, msglen, rc, "synthetic model: %s", why);
    config_derive(&c);
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp)
        return base_fail(msg, msglen, MODEL_ENOMEM, "out of memory");
    snprintf(tmp, plen + 16, "%s.tmp%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = base_fail(msg, msglen, MODEL_EIO, "cannot write '%s': %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    int32_t hdr[7] = {c.dim,        c.hidden_dim, c.n_layers, c.n_heads,
                      c.n_kv_heads, c.vocab_size, c.seq_len};
    uint64_t rng = seed ^ 0x5eed5eed5eed5eedull;
    uint64_t d = (uint64_t)c.dim, h = (uint64_t)c.hidden_dim, L = (uint64_t)c.n_layers;
    uint64_t kv = (uint64_t)c.kv_dim;
    /* Uniform in [-a, a] has variance a^2/3: a = sqrt(3/fan_in) keeps unit variance through a
     * product; the residual projections are scaled down with depth so activations stay sane. */
    float a_d = sqrtf(3.0f / (float)c.dim), a_h = sqrtf(3.0f / (float)c.hidden_dim);
    float res = 1.0f / sqrtf(2.0f * (float)c.n_layers);
    int bad = fwrite(hdr, sizeof hdr, 1, f) != 1;
    bad = bad || write_floats(f, (uint64_t)c.vocab_size * d, 1.0f, 0, &rng);
    bad = bad || write_floats(f, L * d, 1.0f, 1, &rng);          /* rms_att */
    bad = bad || write_floats(f, L * d * d, a_d, 0, &rng);       /* wq */
    bad = bad || write_floats(f, 2 * L * kv * d, a_d, 0, &rng);  /* wk wv */
    bad = bad || write_floats(f, L * d * d, a_d * res, 0, &rng); /* wo */
    bad = bad || write_floats(f, L * d, 1.0f, 1, &rng);          /* rms_ffn */
    bad = bad || write_floats(f, L * h * d, a_d, 0, &rng);       /* w1 */
    bad = bad || write_floats(f, L * d * h, a_h * res, 0, &rng); /* w2 */
    bad = bad || write_floats(f, L * h * d, a_d, 0, &rng);       /* w3 */
    bad = bad || write_floats(f, d, 1.0f, 1, &rng);              /* rms_final */
    bad = bad || write_floats(f, 2 * (uint64_t)c.seq_len * (uint64_t)(c.head_size / 2), 0.0f, 1,
                              &rng); /* legacy RoPE tables, unused */
    if (fclose(f) != 0)
        bad = 1;
    if (bad || rename(tmp, path) != 0) {
        rc = base_fail(msg, msglen, MODEL_EIO, "cannot write '%s': %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return rc;
    }
    free(tmp);
    return 0;
}
