/* fuzz_http.c — feeds arbitrary bytes to the HTTP API's request reading and JSON mapping as a
 * connection would: the bytes arrive in up to three reads (split where the first two bytes say),
 * every complete request's body is mapped as the route in its URL says (chat or completions),
 * and a request that maps is answered by rendering its own prompt back as tokens, streamed or
 * not. Checks: the reader never consumes more than it was given, refuses only with the statuses
 * it documents, and every rendered answer is valid UTF-8. Built as a libFuzzer target with
 * PREFIXD_FUZZ, and always as fuzz_http_corpus, which runs the seed corpus
 * (tests/fuzz/corpus/http) as a test. */
#include "http_api.h"
#include "proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_utf8(const hbuf *b)
{
    if (b->len && proto_utf8_check(b->p, b->len) != b->len)
        abort();
}

/* Renders an answer made of the prompt's own bytes, cut in pieces of 1..7 bytes. */
static void render(const oai_params *p)
{
    oai_out *o = oai_out_new(p, "cmpl-fuzz", 0, "model", 1, p->n_stop % 2 == 0);
    if (!o)
        return;
    hbuf wire = {0};
    const char *t = p->text ? p->text : "";
    size_t len = p->text ? p->text_len : 0;
    for (size_t off = 0, step = 1; off < len; off += step, step = step % 7 + 1) {
        size_t n = off + step > len ? len - off : step;
        /* Log-probabilities (when asked): the piece itself and alternatives cut from it. */
        oai_token_lp lp[1 + OAI_MAX_TOP_LOGPROBS];
        int n_lp = 1 + p->top_logprobs;
        for (int k = 0; k < n_lp; k++)
            lp[k] = (oai_token_lp){t + off, n - (size_t)k % n, -0.5f * (float)k};
        if (oai_out_token(o, t + off, n, p->logprobs ? lp : NULL, p->logprobs ? n_lp : 0, &wire))
            break;
    }
    oai_usage u = {.prompt_tokens = 3, .completion_tokens = 2, .ttft_ms = 1};
    if (len % 3 == 0) {
        oai_error e;
        oai_fail(&e, 503, "prompt", "x", "failed after %zu bytes", len);
        oai_out_error(o, &e, 1, &wire);
    } else {
        oai_out_done(o, "length", &u, &wire);
    }
    /* The head is ASCII; the body's JSON strings were cleaned of invalid UTF-8. */
    check_utf8(&wire);
    hbuf_free(&wire);
    oai_out_free(o);
}

static void map(const hreq *r)
{
    oai_params p;
    oai_error e;
    oai_kind kind = strstr(r->url, "chat") ? OAI_CHAT : OAI_COMPLETION;
    if (oai_parse(kind, r->body, r->body_len, &p, &e) != 0) {
        if (e.status != 400 && e.status != 500)
            abort();
        hbuf b = {0};
        oai_http_error(&b, &e, 1, 0);
        check_utf8(&b);
        hbuf_free(&b);
        return;
    }
    if (!p.ids && p.text_len != strlen(p.text) && kind == OAI_CHAT)
        abort(); /* the rendering is one NUL-free string */
    render(&p);
    oai_params_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t cut1 = data[0] % (size - 1), cut2 = cut1 + data[1] % (size - 1 - cut1 + 1);
    const char *in = (const char *)data + 2;
    size_t len = size - 2, cuts[3] = {cut1 < len ? cut1 : len, cut2 < len ? cut2 : len, len};
    hreq r;
    hreq_init(&r, 4096);
    size_t off = 0;
    for (int piece = 0; piece < 3; piece++) {
        size_t end = cuts[piece] > off ? cuts[piece] : off;
        while (off < end) {
            long n = hreq_feed(&r, in + off, end - off);
            if (n < 0) {
                if (r.status != 400 && r.status != 413 && r.status != 414 && r.status != 431 &&
                    r.status != 505 && r.status != 503)
                    abort();
                hreq_free(&r);
                return 0;
            }
            if ((size_t)n > end - off)
                abort(); /* consumed more than it was given */
            off += (size_t)n;
            if (!r.complete)
                break;
            if (r.url_len != strlen(r.url) || (r.body && r.body_len > r.max_body))
                abort();
            map(&r);
            hreq_next(&r);
        }
    }
    hreq_free(&r);
    return 0;
}
