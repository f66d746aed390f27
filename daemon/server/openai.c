/* openai.c — the OpenAI API's JSON: requests mapped to what the engine needs, answers rendered
 * as the OpenAI API renders them (whole responses, or Server-Sent Events chunk by chunk), and
 * errors in its shape. cJSON parses and prints; no I/O here (see http_api.h).
 *
 * Requests are checked field by field and a bad one is refused with 400 naming the field
 * (`param`), as OpenAI does: n other than 1, batched prompts, logprobs, penalties and tools are
 * refused rather than silently ignored, since a client that asks for them would get something
 * else than it asked for. Unknown fields are ignored (clients send provider-specific extras).
 *
 * Chat messages are kept as the native CHAT's message list: a model with a chat template gets
 * them rendered by it, as CHAT is (contents never control tokens, each turn's prompt a token
 * prefix of the next's). For a model without one they are also rendered with a plain
 * role-prefixed template, "<role>: <content>\n" per message, then "assistant:"; a shared system
 * prompt is a shared token prefix either way, and the cache finds it.
 *
 * Streaming holds back what might still change: the bytes that could be the start of a stop
 * string, and an incomplete UTF-8 character at the end (a byte-fallback token can end halfway
 * through one); every chunk is valid UTF-8 JSON.
 */
#include "http_api.h"

#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- hbuf ----------------------------------------------------------------------------------- */

void hbuf_add(hbuf *b, const void *p, size_t n)
{
    if (b->oom || n == 0)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
}

void hbuf_str(hbuf *b, const char *s)
{
    hbuf_add(b, s, strlen(s));
}

void hbuf_printf(hbuf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        hbuf_add(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    hbuf_add(b, big, (size_t)n);
    free(big);
}

void hbuf_free(hbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- UTF-8 ---------------------------------------------------------------------------------- */

/* The length of the valid UTF-8 character at s (1..4), 0 if invalid, -1 if s ends inside one
 * that is valid so far. */
static int utf8_char(const unsigned char *s, size_t len)
{
    unsigned c = s[0];
    int n;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4, min = 0x10000;
    else
        return 0;
    unsigned cp = c & (0x3f >> (n - 1));
    for (int i = 1; i < n; i++) {
        if ((size_t)i >= len)
            return -1;
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
        /* Overlong and surrogate forms are caught as soon as the second byte says so. */
        if (i == 1 &&
            ((n == 3 && c == 0xe0 && s[1] < 0xa0) || (n == 3 && c == 0xed && s[1] > 0x9f) ||
             (n == 4 && c == 0xf0 && s[1] < 0x90) || (n == 4 && c == 0xf4 && s[1] > 0x8f)))
            return 0;
    }
    return cp >= min ? n : 0;
}

void oai_utf8_clean(hbuf *b, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    while (i < len) {
        int n = utf8_char(u + i, len - i);
        if (n > 0) {
            i += (size_t)n;
            continue;
        }
        hbuf_add(b, s + run, i - run);
        hbuf_add(b, "\xef\xbf\xbd", 3);
        i++;
        run = i;
    }
    hbuf_add(b, s + run, len - run);
}

size_t oai_utf8_complete(const char *s, size_t len)
{
    /* Only the last character can be incomplete: look back at most 3 bytes for its lead. */
    for (size_t k = 1; k <= 3 && k <= len; k++) {
        unsigned char c = (unsigned char)s[len - k];
        if ((c & 0xc0) == 0x80)
            continue;
        return utf8_char((const unsigned char *)s + len - k, k) < 0 ? len - k : len;
    }
    return len;
}

/* ---- Errors --------------------------------------------------------------------------------- */

int oai_fail(oai_error *e, int status, const char *param, const char *code, const char *fmt, ...)
{
    e->status = status;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

static const char *error_type(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 429:
        return "rate_limit_error";
    case 500:
        return "server_error";
    case 503:
        return "service_unavailable_error";
    default:
        return "invalid_request_error";
    }
}

/* Adds name: s (NUL-terminated, cleaned of invalid UTF-8) to o. */
static void add_text(cJSON *o, const char *name, const char *s, size_t len)
{
    hbuf b = {0};
    oai_utf8_clean(&b, s, len);
    hbuf_add(&b, "", 0);
    cJSON_AddStringToObject(o, name, b.p ? b.p : "");
    hbuf_free(&b);
}

static void print_json(hbuf *b, cJSON *j)
{
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    if (!text) {
        b->oom = 1;
        return;
    }
    hbuf_str(b, text);
    cJSON_free(text);
}

void oai_error_json(hbuf *b, const oai_error *e)
{
    cJSON *j = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(j, "error");
    if (o) {
        add_text(o, "message", e->msg, strlen(e->msg));
        cJSON_AddStringToObject(o, "type", error_type(e->status));
        if (e->param[0])
            cJSON_AddStringToObject(o, "param", e->param);
        else
            cJSON_AddNullToObject(o, "param");
        if (e->code[0])
            cJSON_AddStringToObject(o, "code", e->code);
        else
            cJSON_AddNullToObject(o, "code");
    }
    print_json(b, j);
    cJSON_Delete(j);
}

/* ---- HTTP responses ------------------------------------------------------------------------- */

void oai_http_head(hbuf *b, int status, const char *content_type, long content_length,
                   int keep_alive, int retry_after)
{
    hbuf_printf(b, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", status,
                http_status_str((enum http_status)status), content_type);
    if (content_length >= 0)
        hbuf_printf(b, "Content-Length: %ld\r\n", content_length);
    else if (content_length == -1)
        hbuf_str(b, "Transfer-Encoding: chunked\r\n");
    if (content_length < 0)
        hbuf_str(b, "Cache-Control: no-cache\r\n");
    if (retry_after > 0)
        hbuf_printf(b, "Retry-After: %d\r\n", retry_after);
    hbuf_str(b, keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
}

void oai_http_json(hbuf *b, int status, const char *json, size_t len, int keep_alive,
                   int retry_after)
{
    oai_http_head(b, status, "application/json", (long)len + 1, keep_alive, retry_after);
    hbuf_add(b, json, len);
    hbuf_add(b, "\n", 1);
}

void oai_http_error(hbuf *b, const oai_error *e, int keep_alive, int retry_after)
{
    hbuf body = {0};
    oai_error_json(&body, e);
    if (body.oom) {
        b->oom = 1;
    } else {
        oai_http_json(b, e->status, body.p, body.len, keep_alive, retry_after);
    }
    hbuf_free(&body);
}

/* ---- Requests ------------------------------------------------------------------------------- */

/* A field that is present and not null, else NULL. */
static const cJSON *field(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* A number field in [lo, hi]; integral when integer. Returns 1 if present, 0 if absent, -1 on
 * a bad value (err filled). */
static int get_number(const cJSON *o, const char *name, double lo, double hi, int integer,
                      double *out, oai_error *e)
{
    const cJSON *v = field(o, name);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v))
        return oai_fail(e, 400, name, "invalid_type", "'%s' must be a number", name);
    double d = v->valuedouble;
    if (!(d >= lo && d <= hi) || (integer && d != floor(d)))
        return oai_fail(e, 400, name, "invalid_value", "'%s' must be %s from %g to %g (got %g)",
                        name, integer ? "an integer" : "a number", lo, hi, d);
    *out = d;
    return 1;
}

static int get_bool(const cJSON *o, const char *name, int *out, oai_error *e)
{
    const cJSON *v = field(o, name);
    if (!v)
        return 0;
    if (!cJSON_IsBool(v))
        return oai_fail(e, 400, name, "invalid_type", "'%s' must be true or false", name);
    *out = cJSON_IsTrue(v);
    return 1;
}

/* Fields prefixd cannot honour: refused when set to anything but their neutral value. */
static int refuse_unsupported(const cJSON *o, oai_error *e)
{
    static const char *const zero[] = {"presence_penalty", "frequency_penalty"};
    for (size_t i = 0; i < sizeof zero / sizeof *zero; i++) {
        const cJSON *v = field(o, zero[i]);
        if (v && !(cJSON_IsNumber(v) && v->valuedouble == 0))
            return oai_fail(e, 400, zero[i], "unsupported_parameter",
                            "'%s' is not supported by prefixd (only 0 or null)", zero[i]);
    }
    const cJSON *v;
    if ((v = field(o, "echo")) && !cJSON_IsFalse(v))
        return oai_fail(e, 400, "echo", "unsupported_parameter",
                        "'echo' is not supported by prefixd (only false)");
    if ((v = field(o, "best_of")) && !(cJSON_IsNumber(v) && v->valuedouble == 1))
        return oai_fail(e, 400, "best_of", "unsupported_parameter",
                        "'best_of' must be 1: prefixd makes one completion per request");
    if ((v = field(o, "suffix")) && !(cJSON_IsString(v) && v->valuestring[0] == 0))
        return oai_fail(e, 400, "suffix", "unsupported_parameter",
                        "'suffix' is not supported by prefixd");
    if ((v = field(o, "logit_bias")) && cJSON_GetArraySize(v) > 0)
        return oai_fail(e, 400, "logit_bias", "unsupported_parameter",
                        "'logit_bias' is not supported by prefixd");
    if ((v = field(o, "tools")) && cJSON_GetArraySize(v) > 0)
        return oai_fail(e, 400, "tools", "unsupported_parameter",
                        "'tools' are not supported by prefixd");
    double n;
    if (get_number(o, "n", 0, 1e9, 1, &n, e) < 0)
        return -1;
    if (field(o, "n") && n != 1)
        return oai_fail(e, 400, "n", "unsupported_value",
                        "'n' must be 1: prefixd makes one completion per request (got %g)", n);
    return 0;
}

/* Chat: "logprobs" true or false, "top_logprobs" 0..20 with logprobs true. Completions:
 * "logprobs" an integer 0..20 (the alternatives per token; OpenAI allows up to 5). */
static int parse_logprobs(const cJSON *o, oai_params *p, oai_error *e)
{
    double d;
    int r;
    if (p->kind == OAI_COMPLETION) {
        if ((r = get_number(o, "logprobs", 0, OAI_MAX_TOP_LOGPROBS, 1, &d, e)) < 0)
            return -1;
        if (r > 0) {
            p->logprobs = 1;
            p->top_logprobs = (int)d;
        }
        if (field(o, "top_logprobs"))
            return oai_fail(e, 400, "top_logprobs", "invalid_request_error",
                            "'top_logprobs' is a chat completions field: completions take "
                            "'logprobs' as the number of alternatives");
        return 0;
    }
    if (get_bool(o, "logprobs", &p->logprobs, e) < 0)
        return -1;
    if ((r = get_number(o, "top_logprobs", 0, OAI_MAX_TOP_LOGPROBS, 1, &d, e)) < 0)
        return -1;
    if (r > 0) {
        if (!p->logprobs && d > 0)
            return oai_fail(e, 400, "top_logprobs", "invalid_request_error",
                            "'top_logprobs' needs 'logprobs': true");
        p->top_logprobs = (int)d;
    }
    return 0;
}

static int parse_stop(const cJSON *o, oai_params *p, oai_error *e)
{
    const cJSON *v = field(o, "stop");
    if (!v)
        return 0;
    const cJSON *one = v;
    int count = cJSON_IsString(v) ? 1 : cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    if (count < 0 || count > OAI_MAX_STOP)
        return oai_fail(e, 400, "stop", "invalid_value",
                        "'stop' must be a string or an array of at most %d strings", OAI_MAX_STOP);
    for (int i = 0; i < count; i++) {
        if (cJSON_IsArray(v))
            one = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsString(one))
            return oai_fail(e, 400, "stop", "invalid_type", "'stop[%d]' must be a string", i);
        size_t len = strlen(one->valuestring);
        if (len == 0 || len > OAI_MAX_STOP_LEN)
            return oai_fail(e, 400, "stop", "invalid_value",
                            "'stop' strings must be 1 to %d bytes long", OAI_MAX_STOP_LEN);
        if (!(p->stop[p->n_stop] = strdup(one->valuestring)))
            return oai_fail(e, 500, NULL, NULL, "out of memory");
        p->stop_len[p->n_stop++] = len;
    }
    return 0;
}

static int parse_prompt(const cJSON *o, oai_params *p, oai_error *e)
{
    const cJSON *v = field(o, "prompt");
    if (!v)
        return oai_fail(e, 400, "prompt", "missing_required_parameter",
                        "'prompt' is required: a string or an array of token ids");
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 1 && cJSON_IsString(v->child))
        v = v->child; /* one prompt in an array: that prompt */
    if (cJSON_IsString(v)) {
        p->text_len = strlen(v->valuestring);
        if (!(p->text = strdup(v->valuestring)))
            return oai_fail(e, 500, NULL, NULL, "out of memory");
        return 0;
    }
    int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    if (n < 1)
        return oai_fail(e, 400, "prompt", "invalid_type",
                        "'prompt' must be a string or a non-empty array of token ids");
    if (cJSON_IsString(v->child) || cJSON_IsArray(v->child))
        return oai_fail(e, 400, "prompt", "unsupported_value",
                        "batched prompts (an array of %d prompts) are not supported: send one "
                        "request per prompt",
                        n);
    if (!(p->ids = malloc((size_t)n * sizeof *p->ids)))
        return oai_fail(e, 500, NULL, NULL, "out of memory");
    int i = 0;
    for (const cJSON *t = v->child; t; t = t->next, i++) {
        double d = cJSON_IsNumber(t) ? t->valuedouble : -1;
        if (!(d >= 0 && d <= INT32_MAX && d == floor(d)))
            return oai_fail(e, 400, "prompt", "invalid_value",
                            "'prompt[%d]' must be a token id (an integer >= 0)", i);
        p->ids[i] = (int32_t)d;
    }
    p->n_ids = (size_t)n;
    return 0;
}

static int is_role(const char *r)
{
    static const char *const roles[] = {"system",    "developer", "user",
                                        "assistant", "tool",      "function"};
    for (size_t i = 0; i < sizeof roles / sizeof *roles; i++)
        if (strcmp(r, roles[i]) == 0)
            return 1;
    return 0;
}

/* A u32 as the wire has it: little-endian. */
static void put_u32(hbuf *b, uint32_t v)
{
    uint8_t le[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    hbuf_add(b, le, 4);
}

/* The chat messages as CHAT's list (p->chat_list), and rendered plainly (p->text):
 * "<role>: <content>\n" each, then "assistant:". */
static int parse_messages(const cJSON *o, oai_params *p, oai_error *e)
{
    const cJSON *v = field(o, "messages");
    if (!v || !cJSON_IsArray(v) || cJSON_GetArraySize(v) < 1)
        return oai_fail(e, 400, "messages", v ? "invalid_type" : "missing_required_parameter",
                        "'messages' must be a non-empty array of {role, content} objects");
    hbuf b = {0}, list = {0};
    int i = 0;
    char param[64];
    for (const cJSON *m = v->child; m; m = m->next, i++) {
        size_t content_at = 0;
        const cJSON *role = cJSON_IsObject(m) ? field(m, "role") : NULL;
        if (!cJSON_IsString(role) || !is_role(role->valuestring)) {
            snprintf(param, sizeof param, "messages[%d].role", i);
            hbuf_free(&b);
            hbuf_free(&list);
            return oai_fail(e, 400, param, "invalid_value",
                            "'%s' must be one of system, developer, user, assistant, tool", param);
        }
        hbuf_printf(&b, "%s: ", role->valuestring);
        const char *r = strcmp(role->valuestring, "developer") ? role->valuestring : "system";
        uint32_t rl = (uint32_t)strlen(r);
        put_u32(&list, rl);
        hbuf_add(&list, r, rl);
        content_at = b.len;
        const cJSON *c = field(m, "content");
        if (cJSON_IsString(c)) {
            hbuf_str(&b, c->valuestring);
        } else if (cJSON_IsArray(c)) {
            /* Content parts: only text parts, joined. */
            for (const cJSON *part = c->child; part; part = part->next) {
                const cJSON *type = cJSON_IsObject(part) ? field(part, "type") : NULL;
                const cJSON *text = cJSON_IsObject(part) ? field(part, "text") : NULL;
                if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 ||
                    !cJSON_IsString(text)) {
                    snprintf(param, sizeof param, "messages[%d].content", i);
                    hbuf_free(&b);
                    hbuf_free(&list);
                    return oai_fail(e, 400, param, "unsupported_value",
                                    "'%s': only text parts ({\"type\": \"text\", \"text\": ...}) "
                                    "are supported",
                                    param);
                }
                hbuf_str(&b, text->valuestring);
            }
        } else if (c) {
            snprintf(param, sizeof param, "messages[%d].content", i);
            hbuf_free(&b);
            hbuf_free(&list);
            return oai_fail(e, 400, param, "invalid_type",
                            "'%s' must be a string or an array of text parts", param);
        }
        uint32_t cl = (uint32_t)(b.len - content_at);
        put_u32(&list, cl);
        hbuf_add(&list, b.p ? b.p + content_at : "", cl);
        hbuf_add(&b, "\n", 1);
    }
    hbuf_str(&b, OAI_CHAT_PROMPT_END);
    if (b.oom || list.oom) {
        hbuf_free(&b);
        hbuf_free(&list);
        return oai_fail(e, 500, NULL, NULL, "out of memory rendering the messages");
    }
    p->text = b.p;
    p->text_len = b.len;
    p->chat_list = list.p;
    p->chat_list_len = list.len;
    p->n_msgs = (uint32_t)i;
    return 0;
}

static int parse_fields(const cJSON *o, oai_params *p, oai_error *e)
{
    const cJSON *v;
    if ((v = field(o, "model")) && !cJSON_IsString(v))
        return oai_fail(e, 400, "model", "invalid_type", "'model' must be a string");
    if ((v = field(o, "user")) && !cJSON_IsString(v))
        return oai_fail(e, 400, "user", "invalid_type", "'user' must be a string");
    if (refuse_unsupported(o, e) != 0 || parse_logprobs(o, p, e) != 0)
        return -1;
    double d;
    const char *max_name = "max_tokens";
    int r = get_number(o, "max_tokens", 1, 1 << 24, 1, &d, e);
    if (r == 0 && (r = get_number(o, "max_completion_tokens", 1, 1 << 24, 1, &d, e)) != 0)
        max_name = "max_completion_tokens";
    (void)max_name;
    if (r < 0)
        return -1;
    if (r > 0)
        p->max_tokens = (uint32_t)d;
    if ((r = get_number(o, "temperature", 0, 2, 0, &d, e)) < 0)
        return -1;
    if (r > 0)
        p->temperature = (float)d;
    if ((r = get_number(o, "top_p", 0, 1, 0, &d, e)) < 0)
        return -1;
    if (r > 0)
        p->top_p = (float)d;
    if ((r = get_number(o, "seed", -9007199254740991.0, 9007199254740991.0, 1, &d, e)) < 0)
        return -1;
    if (r > 0) {
        p->seed = (uint64_t)(int64_t)d;
        p->has_seed = 1;
    }
    if (get_bool(o, "stream", &p->stream, e) < 0)
        return -1;
    if ((v = field(o, "stream_options"))) {
        if (!cJSON_IsObject(v))
            return oai_fail(e, 400, "stream_options", "invalid_type",
                            "'stream_options' must be an object");
        if (get_bool(v, "include_usage", &p->include_usage, e) < 0)
            return oai_fail(e, 400, "stream_options.include_usage", "invalid_type",
                            "'stream_options.include_usage' must be true or false");
    }
    if ((v = field(o, "cache_salt"))) {
        size_t len = cJSON_IsString(v) ? strlen(v->valuestring) : 0;
        int ok = len > 0 && len <= OAI_MAX_SALT;
        for (size_t i = 0; ok && i < len; i++) {
            char c = v->valuestring[i];
            ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        }
        if (!ok)
            return oai_fail(e, 400, "cache_salt", "invalid_value",
                            "'cache_salt' must be 1 to %d bytes of letters, digits, '.', '_', '-'",
                            OAI_MAX_SALT);
        memcpy(p->cache_salt, v->valuestring, len + 1);
    }
    return parse_stop(o, p, e);
}

int oai_parse(oai_kind kind, const char *body, size_t len, oai_params *out, oai_error *err)
{
    memset(out, 0, sizeof *out);
    out->kind = kind;
    out->max_tokens = kind == OAI_CHAT ? UINT32_MAX : 16;
    out->temperature = 1;
    out->top_p = 1;
    if (!body || len == 0)
        return oai_fail(err, 400, NULL, "invalid_json",
                        "the request body is empty: expected "
                        "a JSON object");
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    size_t at = end && end >= body ? (size_t)(end - body) : 0;
    if (j) /* only white space may follow the value */
        while (at < len && strchr(" \t\r\n", body[at]) && body[at])
            at++;
    if (!j || at != len) {
        cJSON_Delete(j);
        return oai_fail(err, 400, NULL, "invalid_json",
                        "the request body is not valid JSON (at byte %zu of %zu)", at, len);
    }
    int rc = 0;
    if (!cJSON_IsObject(j))
        rc = oai_fail(err, 400, NULL, "invalid_json", "the request body must be a JSON object");
    else if (parse_fields(j, out, err) != 0)
        rc = -1;
    else if (kind == OAI_CHAT)
        rc = parse_messages(j, out, err);
    else
        rc = parse_prompt(j, out, err);
    cJSON_Delete(j);
    if (rc != 0)
        oai_params_free(out);
    return rc;
}

void oai_params_free(oai_params *p)
{
    free(p->text);
    free(p->ids);
    free(p->chat_list);
    for (int i = 0; i < p->n_stop; i++)
        free(p->stop[i]);
    memset(p, 0, sizeof *p);
}

/* ---- Answers -------------------------------------------------------------------------------- */

oai_out *oai_out_new(const oai_params *p, const char *id, long created, const char *model,
                     int keep_alive, int chunked)
{
    oai_out *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->kind = p->kind;
    o->stream = p->stream;
    o->include_usage = p->include_usage;
    o->keep_alive = keep_alive;
    o->chunked = chunked;
    o->logprobs = p->logprobs;
    o->top_logprobs = p->top_logprobs;
    snprintf(o->id, sizeof o->id, "%s", id);
    o->created = created;
    o->model = model;
    for (int i = 0; i < p->n_stop; i++) {
        if (!(o->stop[i] = malloc(p->stop_len[i]))) {
            oai_out_free(o);
            return NULL;
        }
        memcpy(o->stop[i], p->stop[i], p->stop_len[i]);
        o->stop_len[i] = p->stop_len[i];
        o->n_stop++;
        if (p->stop_len[i] > o->max_stop)
            o->max_stop = p->stop_len[i];
    }
    return o;
}

void oai_out_free(oai_out *o)
{
    if (!o)
        return;
    for (int i = 0; i < o->n_stop; i++)
        free(o->stop[i]);
    hbuf_free(&o->text);
    free(o->lp);
    hbuf_free(&o->lp_text);
    free(o);
}

/* One Server-Sent Event ("data: <payload>\n\n"), in a chunk of the chunked encoding. */
static void sse(const oai_out *o, hbuf *wire, const char *payload, size_t n)
{
    if (o->chunked)
        hbuf_printf(wire, "%zx\r\n", n + 8);
    hbuf_add(wire, "data: ", 6);
    hbuf_add(wire, payload, n);
    hbuf_add(wire, "\n\n", 2);
    if (o->chunked)
        hbuf_add(wire, "\r\n", 2);
}

/* The object every chunk and response starts with. */
static cJSON *answer_object(const oai_out *o, int chunk)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", o->id);
    cJSON_AddStringToObject(j, "object",
                            o->kind == OAI_CHAT
                                ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                : "text_completion");
    cJSON_AddNumberToObject(j, "created", (double)o->created);
    cJSON_AddStringToObject(j, "model", o->model);
    return j;
}

/* A token text as chat's logprobs show it: token (as UTF-8), logprob, bytes. */
static void add_lp_token(cJSON *arr, const char *p, size_t len, float logprob)
{
    cJSON *t = cJSON_CreateObject();
    add_text(t, "token", p, len);
    cJSON_AddNumberToObject(t, "logprob", logprob);
    cJSON *bytes = cJSON_AddArrayToObject(t, "bytes");
    for (size_t i = 0; i < len; i++)
        cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)p[i]));
    cJSON_AddItemToArray(arr, t);
}

/* The logprobs object of entries [from, to): chat's {"content": [...]}, or completions'
 * {"tokens", "token_logprobs", "top_logprobs", "text_offset"}. */
static void add_logprobs(const oai_out *o, cJSON *c, size_t from, size_t to)
{
    cJSON *l = cJSON_AddObjectToObject(c, "logprobs");
    const char *base = o->lp_text.p ? o->lp_text.p : "";
    if (o->kind == OAI_CHAT) {
        cJSON *content = cJSON_AddArrayToObject(l, "content");
        for (size_t i = from; i < to; i++) {
            const oai_lp_entry *x = &o->lp[i];
            add_lp_token(content, base + x->off[0], x->len[0], x->logprob[0]);
            cJSON *t = cJSON_GetArrayItem(content, cJSON_GetArraySize(content) - 1);
            cJSON *top = cJSON_AddArrayToObject(t, "top_logprobs");
            for (int k = 1; k < x->n; k++)
                add_lp_token(top, base + x->off[k], x->len[k], x->logprob[k]);
        }
        cJSON_AddNullToObject(l, "refusal");
        return;
    }
    cJSON *tokens = cJSON_AddArrayToObject(l, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(l, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(l, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(l, "text_offset");
    for (size_t i = from; i < to; i++) {
        const oai_lp_entry *x = &o->lp[i];
        cJSON *t = cJSON_CreateObject();
        add_text(t, "t", base + x->off[0], x->len[0]);
        cJSON_AddItemToArray(tokens, cJSON_DetachItemFromObject(t, "t"));
        cJSON_Delete(t);
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(x->logprob[0]));
        cJSON *top = cJSON_CreateObject();
        for (int k = 1; k < x->n; k++) {
            hbuf b = {0};
            oai_utf8_clean(&b, base + x->off[k], x->len[k]);
            hbuf_add(&b, "", 0);
            if (!cJSON_GetObjectItemCaseSensitive(top, b.p ? b.p : ""))
                cJSON_AddNumberToObject(top, b.p ? b.p : "", x->logprob[k]);
            hbuf_free(&b);
        }
        cJSON_AddItemToArray(tops, top);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(i > 0 ? o->lp[i - 1].end : 0)));
    }
}

/* The entries whose token text ends within the first upto bytes of the answer, from from on. */
static size_t lp_upto(const oai_out *o, size_t from, size_t upto)
{
    while (from < o->n_lp && o->lp[from].end <= upto)
        from++;
    return from;
}

/* A choice: text (len bytes, or none with text NULL), role (chat's first chunk), finish;
 * logprobs entries [lp_from, lp_to) when the request asked for them. */
static void add_choice(const oai_out *o, cJSON *choices, int chunk, const char *text, size_t len,
                       int role, const char *finish, size_t lp_from, size_t lp_to)
{
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (o->kind == OAI_CHAT) {
        cJSON *m = cJSON_AddObjectToObject(c, chunk ? "delta" : "message");
        if (role || !chunk)
            cJSON_AddStringToObject(m, "role", "assistant");
        if (text)
            add_text(m, "content", text, len);
    } else {
        add_text(c, "text", text ? text : "", text ? len : 0);
    }
    if (o->logprobs && lp_to > lp_from)
        add_logprobs(o, c, lp_from, lp_to);
    else
        cJSON_AddNullToObject(c, "logprobs");
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
}

static void stream_chunk(oai_out *o, hbuf *wire, const char *text, size_t len, int role,
                         const char *finish, size_t lp_from, size_t lp_to)
{
    cJSON *j = answer_object(o, 1);
    add_choice(o, cJSON_AddArrayToObject(j, "choices"), 1, text, len, role, finish, lp_from, lp_to);
    hbuf payload = {0};
    print_json(&payload, j);
    cJSON_Delete(j);
    sse(o, wire, payload.p, payload.len);
    wire->oom |= payload.oom;
    hbuf_free(&payload);
}

/* A stream's head and, for chat, the first chunk with the role. */
static void stream_start(oai_out *o, hbuf *wire)
{
    if (o->head_sent)
        return;
    o->head_sent = 1;
    oai_http_head(wire, 200, "text/event-stream", o->chunked ? -1 : -2, o->keep_alive && o->chunked,
                  0);
    if (o->kind == OAI_CHAT)
        stream_chunk(o, wire, "", 0, 1, NULL, 0, 0);
}

/* Streams text[sent..upto). */
static void stream_text(oai_out *o, hbuf *wire, size_t upto)
{
    if (upto <= o->sent)
        return;
    stream_start(o, wire);
    size_t lp_to = lp_upto(o, o->lp_sent, upto);
    stream_chunk(o, wire, o->text.p + o->sent, upto - o->sent, 0, NULL, o->lp_sent, lp_to);
    o->lp_sent = lp_to;
    o->sent = upto;
}

/* The longest tail of the text that is a proper prefix of a stop string. */
static size_t stop_prefix_tail(const oai_out *o)
{
    size_t len = o->text.len;
    for (size_t k = o->max_stop - 1; k > 0; k--) {
        if (k > len)
            continue;
        for (int i = 0; i < o->n_stop; i++)
            if (o->stop_len[i] > k && memcmp(o->text.p + len - k, o->stop[i], k) == 0)
                return k;
    }
    return 0;
}

/* Keeps a token's log-probabilities (its text ends at end). */
static void keep_lp(oai_out *o, size_t end, const oai_token_lp *lp, int n_lp, hbuf *wire)
{
    if (o->n_lp == o->cap_lp) {
        size_t cap = o->cap_lp ? 2 * o->cap_lp : 16;
        oai_lp_entry *p = realloc(o->lp, cap * sizeof *p);
        if (!p) {
            wire->oom = 1;
            return;
        }
        o->lp = p;
        o->cap_lp = cap;
    }
    oai_lp_entry *x = &o->lp[o->n_lp++];
    x->end = end;
    x->n = n_lp < 1 + OAI_MAX_TOP_LOGPROBS ? n_lp : 1 + OAI_MAX_TOP_LOGPROBS;
    for (int k = 0; k < x->n; k++) {
        x->logprob[k] = lp[k].logprob;
        x->off[k] = o->lp_text.len;
        x->len[k] = lp[k].len;
        hbuf_add(&o->lp_text, lp[k].text, lp[k].len);
    }
    wire->oom |= o->lp_text.oom;
}

int oai_out_token(oai_out *o, const char *piece, size_t len, const oai_token_lp *lp, int n_lp,
                  hbuf *wire)
{
    if (o->stopped)
        return 0;
    o->n_tokens++;
    size_t from = o->text.len;
    hbuf_add(&o->text, piece, len);
    if (o->logprobs && lp && n_lp > 0)
        keep_lp(o, o->text.len, lp, n_lp, wire);
    if (o->n_stop > 0 && o->text.len > 0) {
        /* A stop string can only end in the new piece: search from max_stop - 1 bytes before. */
        size_t start = from > o->max_stop - 1 ? from - (o->max_stop - 1) : 0;
        const char *first = NULL;
        for (int i = 0; i < o->n_stop; i++) {
            const char *at =
                memmem(o->text.p + start, o->text.len - start, o->stop[i], o->stop_len[i]);
            if (at && (!first || at < first))
                first = at;
        }
        if (first) {
            o->text.len = (size_t)(first - o->text.p);
            o->stopped = 1;
            if (o->stream)
                stream_text(o, wire, o->text.len);
            return 1;
        }
    }
    if (!o->stream)
        return 0;
    size_t upto = o->text.len - (o->n_stop ? stop_prefix_tail(o) : 0);
    if (upto > o->sent)
        upto = o->sent + oai_utf8_complete(o->text.p + o->sent, upto - o->sent);
    stream_text(o, wire, upto);
    return 0;
}

static void add_usage(const oai_out *o, cJSON *j, const oai_usage *u)
{
    uint32_t completion = o->stopped ? o->n_tokens : u->completion_tokens;
    cJSON *us = cJSON_AddObjectToObject(j, "usage");
    cJSON_AddNumberToObject(us, "prompt_tokens", u->prompt_tokens);
    cJSON_AddNumberToObject(us, "completion_tokens", completion);
    cJSON_AddNumberToObject(us, "total_tokens", (double)u->prompt_tokens + completion);
    cJSON *d = cJSON_AddObjectToObject(us, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", u->cached_tokens);
    cJSON *p = cJSON_AddObjectToObject(j, "prefixd");
    cJSON_AddNumberToObject(p, "cached_tokens_disk", u->cached_tokens_disk);
    cJSON_AddNumberToObject(p, "cached_tokens_remote", u->cached_tokens_remote);
    cJSON_AddNumberToObject(p, "ttft_ms", u->ttft_ms);
    cJSON_AddNumberToObject(p, "prefill_ms", u->prefill_ms);
    cJSON_AddNumberToObject(p, "decode_tokens_per_s", u->decode_tokens_per_s);
    cJSON_AddNumberToObject(p, "total_ms", u->total_ms);
}

static void stream_end(oai_out *o, hbuf *wire)
{
    sse(o, wire, "[DONE]", 6);
    if (o->chunked)
        hbuf_add(wire, "0\r\n\r\n", 5);
}

void oai_out_done(oai_out *o, const char *finish, const oai_usage *u, hbuf *wire)
{
    if (o->stopped)
        finish = "stop";
    if (o->stream) {
        stream_start(o, wire);
        stream_text(o, wire, o->text.len); /* what was held back */
        stream_chunk(o, wire, o->kind == OAI_CHAT ? NULL : "", 0, 0, finish, 0, 0);
        if (o->include_usage) {
            cJSON *j = answer_object(o, 1);
            cJSON_AddArrayToObject(j, "choices");
            add_usage(o, j, u);
            hbuf payload = {0};
            print_json(&payload, j);
            cJSON_Delete(j);
            sse(o, wire, payload.p, payload.len);
            wire->oom |= payload.oom;
            hbuf_free(&payload);
        }
        stream_end(o, wire);
        return;
    }
    cJSON *j = answer_object(o, 0);
    add_choice(o, cJSON_AddArrayToObject(j, "choices"), 0, o->text.p ? o->text.p : "", o->text.len,
               0, finish, 0, lp_upto(o, 0, o->text.len));
    add_usage(o, j, u);
    hbuf body = {0};
    print_json(&body, j);
    cJSON_Delete(j);
    if (body.oom)
        wire->oom = 1;
    else
        oai_http_json(wire, 200, body.p, body.len, o->keep_alive, 0);
    hbuf_free(&body);
}

void oai_out_error(oai_out *o, const oai_error *e, int retry_after, hbuf *wire)
{
    if (!o->stream || !o->head_sent) {
        oai_http_error(wire, e, o->keep_alive, retry_after);
        return;
    }
    hbuf payload = {0};
    oai_error_json(&payload, e);
    sse(o, wire, payload.p ? payload.p : "{}", payload.p ? payload.len : 2);
    hbuf_free(&payload);
    stream_end(o, wire);
}
