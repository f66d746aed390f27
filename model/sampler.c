/* sampler.c — choosing the next token: greedy, temperature, top-p; llama2.c's generator.
 *
 * The same seed gives the same tokens: the generator is xorshift64* as in llama2.c, its state
 * kept by the caller (one per request), and the scratch for top-p lives in the sampler so
 * sampling never allocates.
 */
#include "model.h"

#include <math.h>
#include <stdlib.h>

typedef struct prob_index {
    float p;
    int i;
} prob_index;

struct model_sampler {
    int vocab;
    prob_index *cand; /* (vocab) */
};

model_sampler *model_sampler_new(int vocab_size)
{
    if (vocab_size < 1)
        return NULL;
    model_sampler *s = malloc(sizeof *s);
    if (!s)
        return NULL;
    s->vocab = vocab_size;
    s->cand = malloc((size_t)vocab_size * sizeof *s->cand);
    if (!s->cand) {
        free(s);
        return NULL;
    }
    return s;
}

void model_sampler_free(model_sampler *s)
{
    if (!s)
        return;
    free(s->cand);
    free(s);
}

uint64_t model_rng_seed(uint64_t seed)
{
    /* xorshift needs a non-zero state; mix the seed so nearby seeds diverge at once. */
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z ? z : 0x2545F4914F6CDD1Dull;
}

static uint32_t rng_u32(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float rng_f32(uint64_t *state)
{
    return (float)(rng_u32(state) >> 8) / 16777216.0f;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static void softmax(float *x, int n)
{
    float mx = x[argmax(x, n)];
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    for (int i = 0; i < n; i++)
        x[i] /= sum;
}

static int by_prob_desc(const void *a, const void *b)
{
    const prob_index *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return x->i - y->i;
}

int32_t model_sample(model_sampler *s, float *logits, float temp, float top_p, uint64_t *rng)
{
    int n = s->vocab;
    if (!(temp > 0.0f))
        return argmax(logits, n);
    for (int i = 0; i < n; i++)
        logits[i] /= temp;
    softmax(logits, n);
    float coin = rng_f32(rng);
    if (top_p <= 0.0f || top_p >= 1.0f) {
        float cdf = 0.0f;
        for (int i = 0; i < n; i++) {
            cdf += logits[i];
            if (coin < cdf)
                return i;
        }
        return n - 1; /* rounding */
    }
    /* Top-p: candidates below (1 - top_p) / (n - 1) cannot be in the nucleus; sort the rest by
     * probability and keep the smallest prefix whose mass exceeds top_p. */
    float cutoff = (1.0f - top_p) / (float)(n - 1 > 0 ? n - 1 : 1);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (logits[i] >= cutoff)
            s->cand[m++] = (prob_index){logits[i], i};
    if (m == 0)
        return argmax(logits, n);
    qsort(s->cand, (size_t)m, sizeof *s->cand, by_prob_desc);
    float cum = 0.0f;
    int last = m - 1;
    for (int i = 0; i < m; i++) {
        cum += s->cand[i].p;
        if (cum > top_p) {
            last = i;
            break;
        }
    }
    float r = coin * cum, cdf = 0.0f;
    for (int i = 0; i <= last; i++) {
        cdf += s->cand[i].p;
        if (r < cdf)
            return s->cand[i].i;
    }
    return s->cand[last].i;
}
