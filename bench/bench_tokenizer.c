/* bench_tokenizer.c — encoding speed of the tokenizers, in MB/s of English text, and the time
 * of a 1 MB line without spaces (the case a quadratic merge loop would take minutes on); then
 * the time of model_chat_prompt() (render, turn ends, tokenize) for chats of 10, 100 and 1,000
 * alternating messages with the Qwen2.5 template on gpt-2's vocabulary (median of 5, CPU time).
 *
 *   bench_tokenizer [MODELS_DIR [ONLY]]   (default: tests/data; ONLY: the tokenizers whose
 *                                          label contains that text, for a profiler;
 *                                          "chat": the chat prompts alone)
 *
 * English text: the vocabulary test files' English lines and a TinyStories-like paragraph,
 * repeated to 4 MB. Tokenizers: llama2.c's tokenizer32k.bin (today's path), and the GGUF
 * vocabularies llama-spm (SentencePiece), gpt-2 and deepseek-llm (byte-level BPE). */
#include "bench_util.h"
#include "chat_prompt.h"
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* CPU time of this (single-threaded) process: on a shared machine wall time measures the
 * neighbours as much as the tokenizer. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *only;

static void bench(const char *label, const char *path, const char *text, size_t len,
                  const char *word, size_t wlen)
{
    char msg[512];
    model_tokenizer *t = NULL;
    if (only && !strstr(label, only))
        return;
    if (model_tokenizer_open(path, &t, msg, sizeof msg) != 0) {
        printf("%-28s %s\n", label, msg);
        return;
    }
    size_t cap = model_encode_cap(len > wlen ? len : wlen), n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    double best = 1e9;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        model_tokenize(t, text, len, 0, ids, cap, &n);
        double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    double t0 = now_s();
    size_t nw = 0;
    model_tokenize(t, word, wlen, 0, ids, cap, &nw);
    double dw = now_s() - t0;
    printf("%-28s %7.1f MB/s  %5.2f bytes/token   1 MB word: %6.3f s (%zu tokens)\n", label,
           (double)len / best / 1e6, (double)len / (double)n, dw, nw);
    free(ids);
    model_tokenizer_free(t);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* model_chat_prompt() on chats of 10, 100 and 1,000 messages: the turn-end search renders
 * every prefix of the chat, so this is where its growth with the message count shows. */
static void bench_chat(const char *dir)
{
    char path[1024], msg[512];
    if (only && !strstr("chat prompt", only))
        return;
    snprintf(path, sizeof path, "%s/templates/Qwen-Qwen2.5-7B-Instruct.jinja", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("chat: cannot read %s\n", path);
        return;
    }
    static char src[16384];
    size_t sl = fread(src, 1, sizeof src - 1, f);
    fclose(f);
    src[sl] = 0;
    model_chat_template *t = NULL;
    model_tokenizer *tok = NULL;
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-gpt-2.gguf", dir);
    if (model_chat_template_parse(src, sl, &t, msg, sizeof msg) != 0 ||
        model_tokenizer_open(path, &tok, msg, sizeof msg) != 0) {
        printf("chat: %s\n", msg);
        model_chat_template_free(t);
        return;
    }
    static model_chat_msg m[1000];
    for (size_t i = 0; i < 1000; i++) {
        const char *r = i % 2 ? "assistant" : "user",
                   *c = i % 2 ? "Sure, here it is." : "Tell me more.";
        m[i] = (model_chat_msg){r, strlen(r), c, strlen(c)};
    }
    static size_t cut_ids[1001];
    for (size_t n = 10; n <= 1000; n *= 10) {
        double dt[5];
        size_t n_ids = 0;
        for (int rep = 0; rep < 5; rep++) {
            int32_t *ids = NULL;
            double t0 = now_s();
            int rc = model_chat_prompt(t, tok, m, n, 1, &ids, &n_ids, cut_ids, msg, sizeof msg);
            dt[rep] = now_s() - t0;
            free(ids);
            if (rc != 0) {
                printf("chat of %zu messages: %s\n", n, msg);
                return;
            }
        }
        qsort(dt, 5, sizeof *dt, cmp_double);
        printf("chat prompt, %4zu messages  %9.3f ms  (%zu tokens; median of 5, CPU time)\n", n,
               dt[2] * 1e3, n_ids);
    }
    model_tokenizer_free(tok);
    model_chat_template_free(t);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/data";
    only = argc > 2 ? argv[2] : NULL;
    static const char para[] =
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
        "park with her friends. One day, she found a shiny red ball under a big tree. \"Can I "
        "play with it?\" she asked her mom. Her mom said yes, and Lily played until the sun "
        "went down. The quick brown fox jumps over the lazy dog; it's 3:45 p.m. and we've got "
        "1,234 things to do, don't we? I'll make it, they'd say.\n\n";
    size_t len = 4 << 20, plen = sizeof para - 1;
    char *text = malloc(len);
    for (size_t o = 0; o < len; o += plen)
        memcpy(text + o, para, o + plen <= len ? plen : len - o);
    size_t wlen = 1 << 20;
    char *word = malloc(wlen);
    for (size_t i = 0; i < wlen; i++)
        word[i] = "abcdefghijklmnopqrstuvwxyz"[(i * 7 + i / 13) % 26];
    char path[1024];
    printf("encoding %zu MB of English text (best of 3, CPU time), then a 1 MB line without "
           "spaces\n",
           len >> 20);
    snprintf(path, sizeof path, "%s/tokenizer32k.bin", dir);
    bench("llama2.c tokenizer32k.bin", path, text, len, word, wlen);
    static const char *const names[] = {"llama-spm", "gpt-2", "deepseek-llm", "falcon"};
    for (size_t i = 0; i < 4; i++) {
        char label[64];
        snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf", dir, names[i]);
        snprintf(label, sizeof label, "gguf %s", names[i]);
        bench(label, path, text, len, word, wlen);
    }
    free(text);
    free(word);
    bench_chat(dir);
    return 0;
}
