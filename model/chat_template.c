/* chat_template.c — a Jinja-subset interpreter for models' chat templates (chat_template.h says
 * what is supported), the segments of a rendering (found with placeholder contents), and the
 * template families (recognition by marker strings, built-in templates, --chat-template).
 *
 * Three stages. The splitter cuts the source into text, {{ expression }} and {% statement %}
 * parts and applies the whitespace rules Hugging Face renders with (trim_blocks: the newline
 * right after a block tag goes; lstrip_blocks: spaces and tabs before a block tag on its own
 * line go; "-" inside a delimiter strips all whitespace on that side; one trailing newline of
 * the source goes). The parser turns the parts into a tree (statements hold bodies, expressions
 * follow Jinja's precedence: ternary < or < and < not < comparisons and tests < ~ < + - <
 * * / // % < unary minus < postfix: attribute, subscript, call, filter). The evaluator walks the
 * tree with values modelled on Python's (undefined, none, bool, int, float, str, list, dict),
 * scopes as Jinja's (a for loop's body has its own, `set` at the top level is global,
 * namespace() objects are shared), and errors as jinja2 raises them.
 *
 * Every allocation of a parse or a render comes from an arena freed at once; a render's arena
 * and output are capped, and any error unwinds with longjmp to the entry point, which frees the
 * arena. Nothing here is global, so templates render on any thread.
 */
#include "chat_template.h"
#include "model.h"

#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_DEPTH 200
#define MEM_CAP ((size_t)64 << 20)
#define CHUNK_SIZE ((size_t)64 << 10) /* an arena chunk's usual size */

/* ---- Arena and errors ----------------------------------------------------------------------- */

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    max_align_t data[];
} chunk;

typedef struct arena {
    chunk *head;
    size_t total;
    /* Chunks arena_release() took back, kept for the next allocations: the turn-end search
     * renders every prefix of a chat and releases each, and handing its chunks back to
     * malloc made it shrink and regrow the heap each time (brk and page faults were two thirds
     * of the time of a 300-message chat). Not counted in total. */
    chunk *spare;
} arena;

typedef struct err {
    jmp_buf jb;
    char *msg;
    size_t msglen;
    int code;
    arena *a;
} err;

__attribute__((format(printf, 3, 4), noreturn)) static void die(err *e, int code, const char *fmt,
                                                                ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (e->msg && e->msglen)
        vsnprintf(e->msg, e->msglen, fmt, ap);
    va_end(ap);
    e->code = code;
    longjmp(e->jb, 1);
}

static void *amalloc(err *e, size_t n)
{
    arena *a = e->a;
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > CHUNK_SIZE ? n : CHUNK_SIZE;
        if (a->total + cap > MEM_CAP)
            die(e, MODEL_ERANGE, "chat template: more than %zu MB of memory used", MEM_CAP >> 20);
        chunk *c = NULL;
        if (a->spare && cap == CHUNK_SIZE) { /* only the usual size is kept */
            c = a->spare;
            a->spare = c->next;
        } else {
            c = malloc(sizeof *c + cap);
            if (!c)
                die(e, MODEL_ENOMEM, "chat template: out of memory");
        }
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
        a->total += cap;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

static void arena_free(arena *a)
{
    for (chunk *c = a->head, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    for (chunk *c = a->spare, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    a->head = NULL;
    a->spare = NULL;
    a->total = 0;
}

/* A point in an arena to go back to: what is allocated after it is freed by arena_release(). */
typedef struct arena_mark {
    chunk *head;
    size_t used, total;
} arena_mark;

static arena_mark arena_mark_of(const arena *a)
{
    return (arena_mark){a->head, a->head ? a->head->used : 0, a->total};
}

static void arena_release(arena *a, arena_mark m)
{
    while (a->head != m.head) {
        chunk *c = a->head;
        a->head = c->next;
        if (c->cap == CHUNK_SIZE) {
            c->next = a->spare;
            a->spare = c;
        } else {
            free(c);
        }
    }
    if (a->head)
        a->head->used = m.used;
    a->total = m.total;
}

static char *astrdup(err *e, const char *s, size_t n)
{
    char *p = amalloc(e, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ---- Values --------------------------------------------------------------------------------- */

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_FUNC };

typedef struct list list;
typedef struct dict dict;

typedef struct val {
    int t;
    union {
        int b;
        long long i;
        double f;
        struct {
            const char *p;
            size_t n;
        } s;
        list *l;
        dict *d;
        int fn;
    } u;
    const char *name; /* V_UNDEF: what was looked up, for messages */
} val;

struct list {
    size_t n, cap;
    val *v;
};

struct dict {
    size_t n, cap;
    val *k; /* strings */
    val *v;
};

enum { FN_RAISE = 1, FN_STRFTIME, FN_NAMESPACE, FN_RANGE };

static val v_undef(const char *name)
{
    val v = {V_UNDEF};
    v.name = name;
    return v;
}
static val v_none(void)
{
    return (val){V_NONE};
}
static val v_bool(int b)
{
    val v = {V_BOOL};
    v.u.b = !!b;
    return v;
}
static val v_int(long long i)
{
    val v = {V_INT};
    v.u.i = i;
    return v;
}
static val v_float(double f)
{
    val v = {V_FLOAT};
    v.u.f = f;
    return v;
}
static val v_str(const char *p, size_t n)
{
    val v = {V_STR};
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}
static val v_cstr(const char *p)
{
    return v_str(p, strlen(p));
}

static list *list_new(err *e)
{
    list *l = amalloc(e, sizeof *l);
    memset(l, 0, sizeof *l);
    return l;
}

static void list_push(err *e, list *l, val x)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        val *nv = amalloc(e, cap * sizeof *nv);
        if (l->n)
            memcpy(nv, l->v, l->n * sizeof *nv);
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static val v_list(list *l)
{
    val v = {V_LIST};
    v.u.l = l;
    return v;
}

static dict *dict_new(err *e)
{
    dict *d = amalloc(e, sizeof *d);
    memset(d, 0, sizeof *d);
    return d;
}

static val v_dict(dict *d)
{
    val v = {V_DICT};
    v.u.d = d;
    return v;
}

static int str_is(val k, const char *s, size_t n)
{
    return k.t == V_STR && k.u.s.n == n && memcmp(k.u.s.p, s, n) == 0;
}

static val *dict_get(dict *d, const char *s, size_t n)
{
    for (size_t i = 0; i < d->n; i++)
        if (str_is(d->k[i], s, n))
            return &d->v[i];
    return NULL;
}

static void dict_set(err *e, dict *d, const char *s, size_t n, val x)
{
    val *p = dict_get(d, s, n);
    if (p) {
        *p = x;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        val *nk = amalloc(e, cap * sizeof *nk), *nv = amalloc(e, cap * sizeof *nv);
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof *nk);
            memcpy(nv, d->v, d->n * sizeof *nv);
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = v_str(s, n);
    d->v[d->n++] = x;
}

static int truthy(val v)
{
    switch (v.t) {
    case V_BOOL:
        return v.u.b;
    case V_INT:
        return v.u.i != 0;
    case V_FLOAT:
        return v.u.f != 0;
    case V_STR:
        return v.u.s.n > 0;
    case V_LIST:
        return v.u.l->n > 0;
    case V_DICT:
        return v.u.d->n > 0;
    case V_FUNC:
        return 1;
    default:
        return 0;
    }
}

static const char *type_name(val v)
{
    static const char *const names[] = {"undefined", "NoneType", "bool", "int",     "float",
                                        "str",       "list",     "dict", "function"};
    return names[v.t];
}

/* ---- Output buffers ------------------------------------------------------------------------- */

typedef struct buf {
    char *p;
    size_t n, cap;
    err *e;
    int heap; /* 1: malloc'd (the render's output), 0: arena */
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        if (cap > MEM_CAP)
            die(b->e, MODEL_ERANGE, "chat template: output longer than %zu MB", MEM_CAP >> 20);
        char *np;
        if (b->heap) {
            np = realloc(b->p, cap);
            if (!np)
                die(b->e, MODEL_ENOMEM, "chat template: out of memory");
        } else {
            np = amalloc(b->e, cap);
            if (b->n)
                memcpy(np, b->p, b->n);
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void puts_(buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static void fmt_float(double f, char *out, size_t cap)
{
    if (isnan(f)) {
        snprintf(out, cap, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(out, cap, f > 0 ? "inf" : "-inf");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) { /* Python's repr: the shortest that round-trips */
        snprintf(out, cap, "%.*g", prec, f);
        if (strtod(out, NULL) == f)
            break;
    }
    if (!strpbrk(out, ".en"))
        strncat(out, ".0", cap - strlen(out) - 1);
}

static void repr(buf *b, val v, int top);

/* str(v) as Python prints it. */
static void to_str(buf *b, val v)
{
    char tmp[64];
    switch (v.t) {
    case V_UNDEF:
        return;
    case V_NONE:
        puts_(b, "None");
        return;
    case V_BOOL:
        puts_(b, v.u.b ? "True" : "False");
        return;
    case V_INT:
        snprintf(tmp, sizeof tmp, "%lld", v.u.i);
        puts_(b, tmp);
        return;
    case V_FLOAT:
        fmt_float(v.u.f, tmp, sizeof tmp);
        puts_(b, tmp);
        return;
    case V_STR:
        put(b, v.u.s.p, v.u.s.n);
        return;
    default:
        repr(b, v, 1);
    }
}

static void repr(buf *b, val v, int top)
{
    (void)top;
    if (v.t == V_STR) {
        int dq = memchr(v.u.s.p, '\'', v.u.s.n) && !memchr(v.u.s.p, '"', v.u.s.n);
        put(b, dq ? "\"" : "'", 1);
        for (size_t i = 0; i < v.u.s.n; i++) {
            char c = v.u.s.p[i];
            if (c == '\\')
                puts_(b, "\\\\");
            else if (c == '\n')
                puts_(b, "\\n");
            else if (c == '\t')
                puts_(b, "\\t");
            else if (c == '\r')
                puts_(b, "\\r");
            else if (c == '\'' && !dq)
                puts_(b, "\\'");
            else
                put(b, &c, 1);
        }
        put(b, dq ? "\"" : "'", 1);
    } else if (v.t == V_LIST) {
        puts_(b, "[");
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i)
                puts_(b, ", ");
            repr(b, v.u.l->v[i], 0);
        }
        puts_(b, "]");
    } else if (v.t == V_DICT) {
        puts_(b, "{");
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i)
                puts_(b, ", ");
            repr(b, v.u.d->k[i], 0);
            puts_(b, ": ");
            repr(b, v.u.d->v[i], 0);
        }
        puts_(b, "}");
    } else if (v.t == V_FUNC) {
        puts_(b, "<function>");
    } else {
        to_str(b, v);
    }
}

static val stringify(err *e, val v)
{
    if (v.t == V_STR)
        return v;
    buf b = {.e = e};
    to_str(&b, v);
    return v_str(b.p ? b.p : "", b.n);
}

/* JSON as Python's json.dumps(ensure_ascii=False, indent=indent) writes it. */
static void to_json(err *e, buf *b, val v, int indent, int level)
{
    char tmp[64];
    switch (v.t) {
    case V_UNDEF:
        die(e, MODEL_EINVAL, "chat template: tojson of an undefined value ('%s')",
            v.name ? v.name : "?");
    case V_NONE:
        puts_(b, "null");
        return;
    case V_BOOL:
        puts_(b, v.u.b ? "true" : "false");
        return;
    case V_INT:
    case V_FLOAT:
        if (v.t == V_FLOAT && isnan(v.u.f))
            puts_(b, "NaN");
        else if (v.t == V_FLOAT && isinf(v.u.f))
            puts_(b, v.u.f > 0 ? "Infinity" : "-Infinity");
        else
            to_str(b, v);
        return;
    case V_STR:
        puts_(b, "\"");
        for (size_t i = 0; i < v.u.s.n; i++) {
            unsigned char c = (unsigned char)v.u.s.p[i];
            if (c == '"')
                puts_(b, "\\\"");
            else if (c == '\\')
                puts_(b, "\\\\");
            else if (c == '\n')
                puts_(b, "\\n");
            else if (c == '\r')
                puts_(b, "\\r");
            else if (c == '\t')
                puts_(b, "\\t");
            else if (c == '\b')
                puts_(b, "\\b");
            else if (c == '\f')
                puts_(b, "\\f");
            else if (c < 0x20 || c == 0x7F) {
                snprintf(tmp, sizeof tmp, "\\u%04x", c);
                puts_(b, tmp);
            } else
                put(b, (const char *)&c, 1);
        }
        puts_(b, "\"");
        return;
    case V_LIST:
    case V_DICT: {
        int is_list = v.t == V_LIST;
        size_t n = is_list ? v.u.l->n : v.u.d->n;
        puts_(b, is_list ? "[" : "{");
        if (n == 0) {
            puts_(b, is_list ? "]" : "}");
            return;
        }
        for (size_t i = 0; i < n; i++) {
            if (i)
                puts_(b, indent >= 0 ? "," : ", ");
            if (indent >= 0) {
                puts_(b, "\n");
                for (int k = 0; k < indent * (level + 1); k++)
                    puts_(b, " ");
            }
            if (!is_list) {
                to_json(e, b, v.u.d->k[i], indent, level + 1);
                puts_(b, ": ");
            }
            to_json(e, b, is_list ? v.u.l->v[i] : v.u.d->v[i], indent, level + 1);
        }
        if (indent >= 0) {
            puts_(b, "\n");
            for (int k = 0; k < indent * level; k++)
                puts_(b, " ");
        }
        puts_(b, is_list ? "]" : "}");
        return;
    }
    default:
        die(e, MODEL_EINVAL, "chat template: tojson of a %s", type_name(v));
    }
}

static int equal(val a, val b)
{
    if ((a.t == V_INT || a.t == V_FLOAT || a.t == V_BOOL) &&
        (b.t == V_INT || b.t == V_FLOAT || b.t == V_BOOL)) {
        double x = a.t == V_FLOAT ? a.u.f : a.t == V_INT ? (double)a.u.i : a.u.b;
        double y = b.t == V_FLOAT ? b.u.f : b.t == V_INT ? (double)b.u.i : b.u.b;
        if (a.t != V_FLOAT && b.t != V_FLOAT)
            return (a.t == V_INT ? a.u.i : a.u.b) == (b.t == V_INT ? b.u.i : b.u.b);
        return x == y;
    }
    if (a.t != b.t)
        return 0;
    switch (a.t) {
    case V_UNDEF:
    case V_NONE:
        return 1;
    case V_STR:
        return a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case V_LIST:
        if (a.u.l->n != b.u.l->n)
            return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!equal(a.u.l->v[i], b.u.l->v[i]))
                return 0;
        return 1;
    case V_DICT:
        if (a.u.d->n != b.u.d->n)
            return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            val *o = dict_get(b.u.d, a.u.d->k[i].u.s.p, a.u.d->k[i].u.s.n);
            if (!o || !equal(a.u.d->v[i], *o))
                return 0;
        }
        return 1;
    case V_FUNC:
        return a.u.fn == b.u.fn;
    }
    return 0;
}

/* ---- The splitter --------------------------------------------------------------------------- */

enum { P_TEXT, P_EXPR, P_STMT };

typedef struct part {
    int kind;
    const char *s; /* text, or the tag's inside */
    size_t n;
    int line;
} part;

typedef struct parts {
    part *v;
    size_t n, cap;
} parts;

static void part_push(err *e, parts *ps, part p)
{
    if (ps->n == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 64;
        part *nv = amalloc(e, cap * sizeof *nv);
        if (ps->n)
            memcpy(nv, ps->v, ps->n * sizeof *nv);
        ps->v = nv;
        ps->cap = cap;
    }
    ps->v[ps->n++] = p;
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static int line_of(const char *src, const char *at)
{
    int line = 1;
    for (const char *p = src; p < at; p++)
        line += *p == '\n';
    return line;
}

/* Where a tag that starts at p (after its opening delimiter) ends: the closing delimiter's
 * first byte, skipping quoted strings. */
static const char *tag_end(const char *p, const char *end, char close)
{
    char q = 0;
    for (; p + 1 < end; p++) {
        if (q) {
            if (*p == '\\')
                p++;
            else if (*p == q)
                q = 0;
        } else if (*p == '\'' || *p == '"') {
            q = *p;
        } else if (*p == close && p[1] == '}') {
            return p;
        }
    }
    return NULL;
}

static void split(err *e, const char *src, size_t len, parts *ps)
{
    const char *p = src, *end = src + len;
    if (len > 0 && src[len - 1] == '\n') /* keep_trailing_newline is off */
        end--;
    int strip_next = 0, trim_nl = 0;
    while (p < end) {
        const char *t = p;
        while (t + 1 < end && !(t[0] == '{' && (t[1] == '{' || t[1] == '%' || t[1] == '#')))
            t++;
        if (t + 1 >= end)
            t = end;
        const char *ts = p, *te = t;
        if (trim_nl && ts < te) {
            if (*ts == '\n')
                ts++;
            else if (*ts == '\r' && ts + 1 < te && ts[1] == '\n')
                ts += 2;
        }
        if (strip_next)
            while (ts < te && is_ws(*ts))
                ts++;
        strip_next = trim_nl = 0;
        if (t == end) {
            if (ts < te)
                part_push(e, ps, (part){P_TEXT, ts, (size_t)(te - ts), line_of(src, ts)});
            break;
        }
        char kind = t[1];
        const char *in = t + 2;
        int minus = in < end && *in == '-', plus = in < end && *in == '+';
        if (minus || plus)
            in++;
        if (minus) {
            while (te > ts && is_ws(te[-1]))
                te--;
        } else if (kind != '{' && !plus) {
            /* lstrip_blocks: a block tag alone on its line takes its indentation with it. */
            const char *q = te;
            while (q > ts && (q[-1] == ' ' || q[-1] == '\t'))
                q--;
            int line_start = q > ts ? q[-1] == '\n' : (ts == src || ts[-1] == '\n');
            if (line_start)
                te = q;
        }
        if (ts < te)
            part_push(e, ps, (part){P_TEXT, ts, (size_t)(te - ts), line_of(src, ts)});
        char close = kind == '{' ? '}' : kind;
        const char *c = kind == '#' ? NULL : tag_end(in, end, close);
        if (kind == '#') {
            for (const char *q = in; q + 1 < end; q++)
                if (q[0] == '#' && q[1] == '}') {
                    c = q;
                    break;
                }
        }
        if (!c)
            die(e, MODEL_EFORMAT, "chat template: unclosed '{%c' at line %d", kind,
                line_of(src, t));
        const char *ie = c;
        if (ie > in && ie[-1] == '-') {
            ie--;
            strip_next = 1;
        } else if (ie > in && ie[-1] == '+') {
            ie--;
        } else if (kind != '{') {
            trim_nl = 1;
        }
        if (kind != '#')
            part_push(
                e, ps,
                (part){kind == '{' ? P_EXPR : P_STMT, in, (size_t)(ie - in), line_of(src, t)});
        p = c + 2;
    }
}

/* ---- Expression tokens ---------------------------------------------------------------------- */

enum { T_END, T_NAME, T_INT, T_FLOAT, T_STR, T_OP };

typedef struct tok {
    int k;
    const char *s; /* name or op (n bytes); string: the decoded bytes */
    size_t n;
    long long i;
    double f;
} tok;

typedef struct lexer {
    err *e;
    const char *p, *end;
    int line;
    tok cur;
} lexer;

static void next(lexer *L)
{
    err *e = L->e;
    while (L->p < L->end && is_ws(*L->p))
        L->p++;
    tok t = {T_END};
    if (L->p >= L->end) {
        L->cur = t;
        return;
    }
    const char *p = L->p;
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_') {
        const char *q = p;
        while (q < L->end && ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') ||
                              (*q >= '0' && *q <= '9') || *q == '_'))
            q++;
        t = (tok){T_NAME, p, (size_t)(q - p)};
        L->p = q;
    } else if (*p >= '0' && *p <= '9') {
        char *q;
        double f = strtod(p, &q);
        const char *qi = p;
        while (qi < L->end && *qi >= '0' && *qi <= '9')
            qi++;
        if (q > L->end)
            q = (char *)L->end;
        if (qi == q || (qi < L->end && *qi != '.' && *qi != 'e' && *qi != 'E')) {
            t.k = T_INT;
            t.i = strtoll(p, NULL, 10);
            L->p = qi;
        } else {
            t.k = T_FLOAT;
            t.f = f;
            L->p = q;
        }
    } else if (*p == '\'' || *p == '"') {
        char q = *p++;
        char *out = amalloc(e, (size_t)(L->end - p) + 1);
        size_t n = 0;
        while (p < L->end && *p != q) {
            if (*p == '\\' && p + 1 < L->end) {
                p++;
                char c = *p;
                out[n++] = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
                p++;
            } else {
                out[n++] = *p++;
            }
        }
        if (p >= L->end)
            die(e, MODEL_EFORMAT, "chat template: unterminated string at line %d", L->line);
        out[n] = 0; /* read as a C string where it names something (a test, a filter) */
        L->p = p + 1;
        t = (tok){T_STR, out, n};
    } else {
        static const char *const ops[] = {"==", "!=", "<=", ">=", "//", "**", "<", ">", "+",
                                          "-",  "*",  "/",  "%",  "~",  "|",  ".", ",", ":",
                                          "(",  ")",  "[",  "]",  "{",  "}",  "="};
        for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
            size_t n = strlen(ops[i]);
            if ((size_t)(L->end - p) >= n && memcmp(p, ops[i], n) == 0) {
                t = (tok){T_OP, ops[i], n};
                L->p = p + n;
                break;
            }
        }
        if (t.k == T_END)
            die(e, MODEL_EFORMAT, "chat template: unexpected character '%c' at line %d", *p,
                L->line);
    }
    L->cur = t;
}

static int is_op(lexer *L, const char *op)
{
    return L->cur.k == T_OP && L->cur.n == strlen(op) && memcmp(L->cur.s, op, L->cur.n) == 0;
}

static int is_name(lexer *L, const char *name)
{
    return L->cur.k == T_NAME && L->cur.n == strlen(name) && memcmp(L->cur.s, name, L->cur.n) == 0;
}

static void expect_op(lexer *L, const char *op)
{
    if (!is_op(L, op))
        die(L->e, MODEL_EFORMAT, "chat template: expected '%s' at line %d", op, L->line);
    next(L);
}

/* ---- Expression tree ------------------------------------------------------------------------ */

enum {
    N_LIT,     /* v */
    N_NAME,    /* s */
    N_LIST,    /* args */
    N_DICT,    /* args: key, value, key, value... */
    N_ATTR,    /* a . s */
    N_INDEX,   /* a [ b ] */
    N_SLICE,   /* a [ args[0] : args[1] : args[2] ] (NULL: absent) */
    N_CALL,    /* a ( args, kw ) */
    N_FILTER,  /* a | s ( args, kw ) */
    N_TEST,    /* a is [not: i] s ( args ) */
    N_UNARY,   /* s: "-", "not"; a */
    N_BIN,     /* a s b */
    N_AND,     /* a and b */
    N_OR,      /* a or b */
    N_TERNARY, /* b if a else c */
};

typedef struct node node;
struct node {
    int k, line;
    node *a, *b, *c;
    node **args;
    const char **kw; /* keyword names of args (NULL: positional) */
    int nargs;
    const char *s;
    size_t n;
    long long i;
    val v;
};

static node *mk(lexer *L, int k)
{
    node *n = amalloc(L->e, sizeof *n);
    memset(n, 0, sizeof *n);
    n->k = k;
    n->line = L->line;
    return n;
}

static node *parse_expr(lexer *L, int depth);

static void add_arg(lexer *L, node *n, node *a, const char *kw, int *cap)
{
    if (n->nargs == *cap) {
        int c = *cap ? *cap * 2 : 4;
        node **na = amalloc(L->e, (size_t)c * sizeof *na);
        const char **nk = amalloc(L->e, (size_t)c * sizeof *nk);
        if (n->nargs) {
            memcpy(na, n->args, (size_t)n->nargs * sizeof *na);
            memcpy(nk, n->kw, (size_t)n->nargs * sizeof *nk);
        }
        n->args = na;
        n->kw = nk;
        *cap = c;
    }
    n->args[n->nargs] = a;
    n->kw[n->nargs++] = kw;
}

/* (args) after the opening parenthesis, keyword arguments allowed. */
static void parse_args(lexer *L, node *n, int depth)
{
    int cap = 0;
    while (!is_op(L, ")")) {
        const char *kw = NULL;
        if (L->cur.k == T_NAME) {
            lexer save = *L;
            tok name = L->cur;
            next(L);
            if (is_op(L, "=")) {
                next(L);
                kw = astrdup(L->e, name.s, name.n);
            } else {
                *L = save;
            }
        }
        add_arg(L, n, parse_expr(L, depth + 1), kw, &cap);
        if (!is_op(L, ","))
            break;
        next(L);
    }
    expect_op(L, ")");
}

static node *parse_primary(lexer *L, int depth)
{
    if (depth > MAX_DEPTH)
        die(L->e, MODEL_EFORMAT, "chat template: expression nested too deeply at line %d", L->line);
    tok t = L->cur;
    node *n;
    if (t.k == T_INT || t.k == T_FLOAT || t.k == T_STR) {
        n = mk(L, N_LIT);
        n->v = t.k == T_INT ? v_int(t.i) : t.k == T_FLOAT ? v_float(t.f) : v_str(t.s, t.n);
        next(L);
        /* Adjacent string literals join, as in Python. */
        while (t.k == T_STR && L->cur.k == T_STR) {
            char *j = amalloc(L->e, n->v.u.s.n + L->cur.n + 1);
            memcpy(j, n->v.u.s.p, n->v.u.s.n);
            memcpy(j + n->v.u.s.n, L->cur.s, L->cur.n);
            n->v = v_str(j, n->v.u.s.n + L->cur.n);
            next(L);
        }
        return n;
    }
    if (t.k == T_NAME) {
        n = mk(L, N_LIT);
        if (is_name(L, "true") || is_name(L, "True"))
            n->v = v_bool(1);
        else if (is_name(L, "false") || is_name(L, "False"))
            n->v = v_bool(0);
        else if (is_name(L, "none") || is_name(L, "None"))
            n->v = v_none();
        else {
            n->k = N_NAME;
            n->s = astrdup(L->e, t.s, t.n);
            n->n = t.n;
        }
        next(L);
        return n;
    }
    if (is_op(L, "(")) {
        next(L);
        n = parse_expr(L, depth + 1);
        if (is_op(L, ",")) { /* a tuple: a list here */
            node *l = mk(L, N_LIST);
            int cap = 0;
            add_arg(L, l, n, NULL, &cap);
            while (is_op(L, ",")) {
                next(L);
                if (is_op(L, ")"))
                    break;
                add_arg(L, l, parse_expr(L, depth + 1), NULL, &cap);
            }
            n = l;
        }
        expect_op(L, ")");
        return n;
    }
    if (is_op(L, "[")) {
        next(L);
        n = mk(L, N_LIST);
        int cap = 0;
        while (!is_op(L, "]")) {
            add_arg(L, n, parse_expr(L, depth + 1), NULL, &cap);
            if (!is_op(L, ","))
                break;
            next(L);
        }
        expect_op(L, "]");
        return n;
    }
    if (is_op(L, "{")) {
        next(L);
        n = mk(L, N_DICT);
        int cap = 0;
        while (!is_op(L, "}")) {
            add_arg(L, n, parse_expr(L, depth + 1), NULL, &cap);
            expect_op(L, ":");
            add_arg(L, n, parse_expr(L, depth + 1), NULL, &cap);
            if (!is_op(L, ","))
                break;
            next(L);
        }
        expect_op(L, "}");
        return n;
    }
    die(L->e, MODEL_EFORMAT, "chat template: expected a value at line %d", L->line);
}

static node *parse_postfix(lexer *L, int depth)
{
    node *n = parse_primary(L, depth);
    for (;;) {
        if (is_op(L, ".")) {
            next(L);
            if (L->cur.k != T_NAME && L->cur.k != T_INT)
                die(L->e, MODEL_EFORMAT, "chat template: expected a name after '.' at line %d",
                    L->line);
            node *a = mk(L, N_ATTR);
            a->a = n;
            if (L->cur.k == T_INT) {
                a->k = N_INDEX;
                a->b = mk(L, N_LIT);
                a->b->v = v_int(L->cur.i);
            } else {
                a->s = astrdup(L->e, L->cur.s, L->cur.n);
                a->n = L->cur.n;
            }
            next(L);
            n = a;
        } else if (is_op(L, "[")) {
            next(L);
            node *parts3[3] = {NULL, NULL, NULL};
            int k = 0, slice = 0;
            for (;;) {
                if (!is_op(L, ":") && !is_op(L, "]"))
                    parts3[k] = parse_expr(L, depth + 1);
                if (is_op(L, ":") && k < 2) {
                    slice = 1;
                    k++;
                    next(L);
                    continue;
                }
                break;
            }
            expect_op(L, "]");
            node *a = mk(L, slice ? N_SLICE : N_INDEX);
            a->a = n;
            if (slice) {
                int cap = 0;
                for (int i = 0; i < 3; i++)
                    add_arg(L, a, parts3[i], NULL, &cap);
            } else {
                if (!parts3[0])
                    die(L->e, MODEL_EFORMAT, "chat template: empty subscript at line %d", L->line);
                a->b = parts3[0];
            }
            n = a;
        } else if (is_op(L, "(")) {
            next(L);
            node *a = mk(L, N_CALL);
            a->a = n;
            parse_args(L, a, depth);
            n = a;
        } else if (is_op(L, "|")) {
            next(L);
            if (L->cur.k != T_NAME)
                die(L->e, MODEL_EFORMAT, "chat template: expected a filter name at line %d",
                    L->line);
            node *a = mk(L, N_FILTER);
            a->a = n;
            a->s = astrdup(L->e, L->cur.s, L->cur.n);
            next(L);
            if (is_op(L, "(")) {
                next(L);
                parse_args(L, a, depth);
            }
            n = a;
        } else {
            return n;
        }
    }
}

static node *parse_unary(lexer *L, int depth)
{
    if (is_op(L, "-") || is_op(L, "+")) {
        int neg = is_op(L, "-");
        next(L);
        node *n = mk(L, N_UNARY);
        n->s = neg ? "-" : "+";
        n->a = parse_unary(L, depth + 1);
        return n;
    }
    return parse_postfix(L, depth);
}

static node *bin(lexer *L, const char *op, node *a, node *b)
{
    node *n = mk(L, N_BIN);
    n->s = op;
    n->a = a;
    n->b = b;
    return n;
}

static node *parse_mul(lexer *L, int depth)
{
    node *n = parse_unary(L, depth);
    while (is_op(L, "*") || is_op(L, "/") || is_op(L, "//") || is_op(L, "%")) {
        const char *op = is_op(L, "*") ? "*" : is_op(L, "//") ? "//" : is_op(L, "/") ? "/" : "%";
        next(L);
        n = bin(L, op, n, parse_unary(L, depth));
    }
    return n;
}

static node *parse_add(lexer *L, int depth)
{
    node *n = parse_mul(L, depth);
    while (is_op(L, "+") || is_op(L, "-")) {
        const char *op = is_op(L, "+") ? "+" : "-";
        next(L);
        n = bin(L, op, n, parse_mul(L, depth));
    }
    return n;
}

static node *parse_concat(lexer *L, int depth)
{
    node *n = parse_add(L, depth);
    while (is_op(L, "~")) {
        next(L);
        n = bin(L, "~", n, parse_add(L, depth));
    }
    return n;
}

static node *parse_compare(lexer *L, int depth)
{
    node *n = parse_concat(L, depth);
    for (;;) {
        const char *op = NULL;
        if (is_op(L, "=="))
            op = "==";
        else if (is_op(L, "!="))
            op = "!=";
        else if (is_op(L, "<"))
            op = "<";
        else if (is_op(L, ">"))
            op = ">";
        else if (is_op(L, "<="))
            op = "<=";
        else if (is_op(L, ">="))
            op = ">=";
        else if (is_name(L, "in"))
            op = "in";
        if (op) {
            next(L);
            n = bin(L, op, n, parse_concat(L, depth));
            continue;
        }
        if (is_name(L, "not")) {
            lexer save = *L;
            next(L);
            if (is_name(L, "in")) {
                next(L);
                n = bin(L, "not in", n, parse_concat(L, depth));
                continue;
            }
            *L = save;
            return n;
        }
        if (is_name(L, "is")) {
            next(L);
            node *t = mk(L, N_TEST);
            t->a = n;
            if (is_name(L, "not")) {
                t->i = 1;
                next(L);
            }
            if (L->cur.k != T_NAME)
                die(L->e, MODEL_EFORMAT, "chat template: expected a test name at line %d", L->line);
            t->s = astrdup(L->e, L->cur.s, L->cur.n);
            next(L);
            int cap = 0;
            if (is_op(L, "(")) {
                next(L);
                parse_args(L, t, depth);
            } else if (L->cur.k == T_STR || L->cur.k == T_INT || L->cur.k == T_FLOAT ||
                       (L->cur.k == T_NAME && !is_name(L, "and") && !is_name(L, "or") &&
                        !is_name(L, "else") && !is_name(L, "if"))) {
                add_arg(L, t, parse_concat(L, depth), NULL, &cap);
            }
            n = t;
            continue;
        }
        return n;
    }
}

static node *parse_not(lexer *L, int depth)
{
    if (is_name(L, "not")) {
        next(L);
        node *n = mk(L, N_UNARY);
        n->s = "not";
        n->a = parse_not(L, depth + 1);
        return n;
    }
    return parse_compare(L, depth);
}

static node *parse_and(lexer *L, int depth)
{
    node *n = parse_not(L, depth);
    while (is_name(L, "and")) {
        next(L);
        node *a = mk(L, N_AND);
        a->a = n;
        a->b = parse_not(L, depth);
        n = a;
    }
    return n;
}

static node *parse_or(lexer *L, int depth)
{
    node *n = parse_and(L, depth);
    while (is_name(L, "or")) {
        next(L);
        node *a = mk(L, N_OR);
        a->a = n;
        a->b = parse_and(L, depth);
        n = a;
    }
    return n;
}

static node *parse_expr(lexer *L, int depth)
{
    if (depth > MAX_DEPTH)
        die(L->e, MODEL_EFORMAT, "chat template: expression nested too deeply at line %d", L->line);
    node *n = parse_or(L, depth + 1);
    if (is_name(L, "if")) {
        next(L);
        node *t = mk(L, N_TERNARY);
        t->b = n;
        t->a = parse_or(L, depth + 1);
        if (is_name(L, "else")) {
            next(L);
            t->c = parse_expr(L, depth + 1);
        }
        n = t;
    }
    return n;
}

/* ---- Statements ----------------------------------------------------------------------------- */

enum { S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_BREAK, S_CONTINUE };

typedef struct stmt stmt;
typedef struct body {
    stmt **v;
    int n, cap;
} body;

struct stmt {
    int k, line;
    const char *s; /* text */
    size_t n;
    node *e;        /* OUT, IF cond, FOR iterable, SET value */
    node *cond;     /* FOR filter */
    body a, b;      /* IF then / else; FOR body / else */
    const char *v1; /* FOR / SET target */
    const char *v2; /* FOR second target; SET attribute */
};

struct model_chat_template {
    arena a;
    body top;
};

typedef struct sparser {
    err *e;
    parts *ps;
    size_t i;
} sparser;

static void body_push(err *e, body *b, stmt *s)
{
    if (b->n == b->cap) {
        int cap = b->cap ? b->cap * 2 : 8;
        stmt **nv = amalloc(e, (size_t)cap * sizeof *nv);
        if (b->n)
            memcpy(nv, b->v, (size_t)b->n * sizeof *nv);
        b->v = nv;
        b->cap = cap;
    }
    b->v[b->n++] = s;
}

static lexer lex_part(err *e, const part *p)
{
    lexer L = {e, p->s, p->s + p->n, p->line, {0}};
    next(&L);
    return L;
}

static const char *name_of(lexer *L)
{
    if (L->cur.k != T_NAME)
        die(L->e, MODEL_EFORMAT, "chat template: expected a name at line %d", L->line);
    const char *s = astrdup(L->e, L->cur.s, L->cur.n);
    next(L);
    return s;
}

static void expect_end(lexer *L)
{
    if (L->cur.k != T_END)
        die(L->e, MODEL_EFORMAT, "chat template: unexpected '%.*s' at line %d", (int)L->cur.n,
            L->cur.s ? L->cur.s : "", L->line);
}

/* Parses statements into b until a block tag named in stops; returns that tag's name (its
 * lexer positioned after the name in *L), or NULL at the end of the parts. */
static const char *parse_body(sparser *P, body *b, const char *const *stops, lexer *Lout, int depth)
{
    err *e = P->e;
    if (depth > MAX_DEPTH)
        die(e, MODEL_EFORMAT, "chat template: blocks nested too deeply");
    while (P->i < P->ps->n) {
        part *p = &P->ps->v[P->i++];
        stmt *s = amalloc(e, sizeof *s);
        memset(s, 0, sizeof *s);
        s->line = p->line;
        if (p->kind == P_TEXT) {
            s->k = S_TEXT;
            s->s = p->s;
            s->n = p->n;
            body_push(e, b, s);
            continue;
        }
        lexer L = lex_part(e, p);
        if (p->kind == P_EXPR) {
            s->k = S_OUT;
            s->e = parse_expr(&L, 0);
            expect_end(&L);
            body_push(e, b, s);
            continue;
        }
        if (L.cur.k != T_NAME)
            die(e, MODEL_EFORMAT, "chat template: expected a statement at line %d", p->line);
        for (int i = 0; stops && stops[i]; i++)
            if (is_name(&L, stops[i])) {
                next(&L);
                *Lout = L;
                return stops[i];
            }
        if (is_name(&L, "if")) {
            next(&L);
            s->k = S_IF;
            s->e = parse_expr(&L, 0);
            expect_end(&L);
            static const char *const st[] = {"elif", "else", "endif", NULL};
            stmt *cur = s;
            for (;;) {
                lexer E;
                const char *w = parse_body(P, &cur->a, st, &E, depth + 1);
                if (!w)
                    die(e, MODEL_EFORMAT, "chat template: 'if' at line %d has no 'endif'", s->line);
                if (strcmp(w, "endif") == 0) {
                    expect_end(&E);
                    break;
                }
                if (strcmp(w, "else") == 0) {
                    expect_end(&E);
                    static const char *const st2[] = {"endif", NULL};
                    w = parse_body(P, &cur->b, st2, &E, depth + 1);
                    if (!w)
                        die(e, MODEL_EFORMAT, "chat template: 'if' at line %d has no 'endif'",
                            s->line);
                    expect_end(&E);
                    break;
                }
                stmt *el = amalloc(e, sizeof *el); /* elif: an if in the else branch */
                memset(el, 0, sizeof *el);
                el->k = S_IF;
                el->line = E.line;
                el->e = parse_expr(&E, 0);
                expect_end(&E);
                body_push(e, &cur->b, el);
                cur = el;
            }
        } else if (is_name(&L, "for")) {
            next(&L);
            s->k = S_FOR;
            s->v1 = name_of(&L);
            if (is_op(&L, ",")) {
                next(&L);
                s->v2 = name_of(&L);
            }
            if (!is_name(&L, "in"))
                die(e, MODEL_EFORMAT, "chat template: expected 'in' at line %d", p->line);
            next(&L);
            s->e = parse_or(&L, 0);
            if (is_name(&L, "if")) {
                next(&L);
                s->cond = parse_expr(&L, 0);
            }
            expect_end(&L);
            static const char *const st[] = {"else", "endfor", NULL};
            lexer E;
            const char *w = parse_body(P, &s->a, st, &E, depth + 1);
            if (w && strcmp(w, "else") == 0) {
                static const char *const st2[] = {"endfor", NULL};
                w = parse_body(P, &s->b, st2, &E, depth + 1);
            }
            if (!w)
                die(e, MODEL_EFORMAT, "chat template: 'for' at line %d has no 'endfor'", s->line);
            expect_end(&E);
        } else if (is_name(&L, "set")) {
            next(&L);
            s->k = S_SET;
            s->v1 = name_of(&L);
            if (is_op(&L, ".")) {
                next(&L);
                s->v2 = name_of(&L);
            }
            if (!is_op(&L, "="))
                die(e, MODEL_EFORMAT,
                    "chat template: 'set' at line %d: expected '=' (block set is not supported)",
                    p->line);
            next(&L);
            s->e = parse_expr(&L, 0);
            expect_end(&L);
        } else if (is_name(&L, "break") || is_name(&L, "continue")) {
            s->k = is_name(&L, "break") ? S_BREAK : S_CONTINUE;
            next(&L);
            expect_end(&L);
        } else if (is_name(&L, "generation") || is_name(&L, "endgeneration")) {
            continue; /* Hugging Face's assistant-mask markers: no output of their own */
        } else {
            die(e, MODEL_EFORMAT, "chat template: unknown statement '%.*s' at line %d",
                (int)L.cur.n, L.cur.s, p->line);
        }
        body_push(e, b, s);
    }
    return NULL;
}

int model_chat_template_parse(const char *src, size_t len, model_chat_template **out, char *msg,
                              size_t msglen)
{
    *out = NULL;
    model_chat_template *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(msg, msglen, "chat template: out of memory");
        return MODEL_ENOMEM;
    }
    err e = {.msg = msg, .msglen = msglen, .a = &t->a};
    if (setjmp(e.jb)) {
        arena_free(&t->a);
        free(t);
        return e.code;
    }
    char *copy = astrdup(&e, src, len);
    parts ps = {0};
    split(&e, copy, len, &ps);
    sparser P = {&e, &ps, 0};
    lexer dummy;
    const char *w = parse_body(&P, &t->top, NULL, &dummy, 0);
    (void)w;
    *out = t;
    return 0;
}

void model_chat_template_free(model_chat_template *t)
{
    if (!t)
        return;
    arena_free(&t->a);
    free(t);
}

/* ---- Evaluation ----------------------------------------------------------------------------- */

typedef struct scope {
    dict *vars;
    struct scope *up;
} scope;

typedef struct rctx {
    err *e;
    buf *out;
    scope *sc;
    int brk, cont; /* a break or continue is unwinding to the innermost loop */
    int depth;
} rctx;

static val lookup(rctx *R, const char *name, size_t n)
{
    for (scope *s = R->sc; s; s = s->up) {
        val *v = dict_get(s->vars, name, n);
        if (v)
            return *v;
    }
    static const struct {
        const char *name;
        int fn;
    } fns[] = {{"raise_exception", FN_RAISE},
               {"strftime_now", FN_STRFTIME},
               {"namespace", FN_NAMESPACE},
               {"range", FN_RANGE}};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
        if (strlen(fns[i].name) == n && memcmp(fns[i].name, name, n) == 0) {
            val v = {V_FUNC};
            v.u.fn = fns[i].fn;
            return v;
        }
    return v_undef(name);
}

static val eval(rctx *R, node *n);

static void need_defined(rctx *R, val v, int line)
{
    if (v.t == V_UNDEF)
        die(R->e, MODEL_EINVAL, "chat template: '%s' is undefined (line %d)",
            v.name ? v.name : "value", line);
}

static long long as_int(rctx *R, val v, int line)
{
    if (v.t == V_INT)
        return v.u.i;
    if (v.t == V_BOOL)
        return v.u.b;
    if (v.t == V_FLOAT)
        return (long long)v.u.f;
    die(R->e, MODEL_EINVAL, "chat template: expected a number, got %s (line %d)", type_name(v),
        line);
}

static double as_num(val v)
{
    return v.t == V_FLOAT ? v.u.f : v.t == V_INT ? (double)v.u.i : v.t == V_BOOL ? v.u.b : 0;
}

static int is_num(val v)
{
    return v.t == V_INT || v.t == V_FLOAT || v.t == V_BOOL;
}

static val str_arg(rctx *R, val v, int line)
{
    if (v.t != V_STR)
        die(R->e, MODEL_EINVAL, "chat template: expected a string, got %s (line %d)", type_name(v),
            line);
    return v;
}

static int in_set(char c, val chars)
{
    if (chars.t != V_STR)
        return is_ws(c);
    return memchr(chars.u.s.p, c, chars.u.s.n) != NULL;
}

static val strip(val s, int left, int right, val chars)
{
    const char *p = s.u.s.p, *e = p + s.u.s.n;
    while (left && p < e && in_set(*p, chars))
        p++;
    while (right && e > p && in_set(e[-1], chars))
        e--;
    return v_str(p, (size_t)(e - p));
}

static val replace(rctx *R, val s, val from, val to, long long count)
{
    buf b = {.e = R->e};
    const char *p = s.u.s.p, *e = p + s.u.s.n;
    put(&b, "", 0);
    if (from.u.s.n == 0) {
        put(&b, p, s.u.s.n);
        return v_str(b.p, b.n);
    }
    while (p < e && count != 0) {
        const char *m = memmem(p, (size_t)(e - p), from.u.s.p, from.u.s.n);
        if (!m)
            break;
        put(&b, p, (size_t)(m - p));
        put(&b, to.u.s.p, to.u.s.n);
        p = m + from.u.s.n;
        count--;
    }
    put(&b, p, (size_t)(e - p));
    return v_str(b.p, b.n);
}

static val case_map(rctx *R, val s, int mode) /* 0 lower, 1 upper, 2 title, 3 capitalize */
{
    char *p = amalloc(R->e, s.u.s.n + 1);
    int word_start = 1;
    for (size_t i = 0; i < s.u.s.n; i++) {
        char c = s.u.s.p[i];
        int up = mode == 1 || ((mode == 2) && word_start) || (mode == 3 && i == 0);
        if (c >= 'a' && c <= 'z' && up)
            c = (char)(c - 32);
        else if (c >= 'A' && c <= 'Z' && !up && mode != 1)
            c = (char)(c + 32);
        word_start = !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'));
        p[i] = c;
    }
    return v_str(p, s.u.s.n);
}

static val items_of(rctx *R, val d)
{
    list *l = list_new(R->e);
    for (size_t i = 0; i < d.u.d->n; i++) {
        list *pair = list_new(R->e);
        list_push(R->e, pair, d.u.d->k[i]);
        list_push(R->e, pair, d.u.d->v[i]);
        list_push(R->e, l, v_list(pair));
    }
    return v_list(l);
}

/* The elements a for loop or a filter walks: a list's items, a dict's keys, a string's
 * characters. */
static list *iter_of(rctx *R, val v, int line)
{
    if (v.t == V_LIST)
        return v.u.l;
    list *l = list_new(R->e);
    if (v.t == V_DICT) {
        for (size_t i = 0; i < v.u.d->n; i++)
            list_push(R->e, l, v.u.d->k[i]);
        return l;
    }
    if (v.t == V_STR) {
        for (size_t i = 0; i < v.u.s.n;) {
            size_t k = 1;
            unsigned char c = (unsigned char)v.u.s.p[i];
            k = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
            if (k > v.u.s.n - i)
                k = v.u.s.n - i;
            list_push(R->e, l, v_str(v.u.s.p + i, k));
            i += k;
        }
        return l;
    }
    if (v.t == V_UNDEF)
        return l; /* jinja2 iterates an undefined value as empty */
    die(R->e, MODEL_EINVAL, "chat template: a %s is not iterable (line %d)", type_name(v), line);
}

static val attr(rctx *R, val obj, const char *name, size_t n, int line)
{
    need_defined(R, obj, line);
    if (obj.t == V_DICT) {
        val *v = dict_get(obj.u.d, name, n);
        return v ? *v : v_undef(name);
    }
    return v_undef(name);
}

static val subscript(rctx *R, val obj, val k, int line)
{
    need_defined(R, obj, line);
    if (obj.t == V_DICT) {
        if (k.t != V_STR)
            return v_undef("key");
        val *v = dict_get(obj.u.d, k.u.s.p, k.u.s.n);
        return v ? *v : v_undef(astrdup(R->e, k.u.s.p, k.u.s.n));
    }
    if ((obj.t == V_LIST || obj.t == V_STR) && (k.t == V_INT || k.t == V_BOOL)) {
        long long n = obj.t == V_LIST ? (long long)obj.u.l->n : (long long)obj.u.s.n;
        long long i = as_int(R, k, line);
        if (i < 0)
            i += n;
        if (i < 0 || i >= n)
            return v_undef("index");
        return obj.t == V_LIST ? obj.u.l->v[i] : v_str(obj.u.s.p + i, 1);
    }
    return v_undef("item");
}

static val slice(rctx *R, val obj, node **a, int line)
{
    need_defined(R, obj, line);
    if (obj.t != V_LIST && obj.t != V_STR)
        die(R->e, MODEL_EINVAL, "chat template: cannot slice a %s (line %d)", type_name(obj), line);
    long long n = obj.t == V_LIST ? (long long)obj.u.l->n : (long long)obj.u.s.n;
    long long step = a[2] ? as_int(R, eval(R, a[2]), line) : 1;
    if (step == 0)
        die(R->e, MODEL_EINVAL, "chat template: slice step is zero (line %d)", line);
    long long lo, hi;
    if (step > 0) {
        lo = a[0] ? as_int(R, eval(R, a[0]), line) : 0;
        hi = a[1] ? as_int(R, eval(R, a[1]), line) : n;
        if (lo < 0)
            lo = lo + n < 0 ? 0 : lo + n;
        if (hi < 0)
            hi = hi + n < 0 ? 0 : hi + n;
        lo = lo > n ? n : lo;
        hi = hi > n ? n : hi;
    } else {
        lo = a[0] ? as_int(R, eval(R, a[0]), line) : n - 1;
        hi = a[1] ? as_int(R, eval(R, a[1]), line) : -n - 1;
        if (lo < 0)
            lo += n;
        if (hi < -1)
            hi = hi + n < -1 ? -1 : hi + n;
        lo = lo >= n ? n - 1 : lo;
    }
    if (obj.t == V_STR && step == 1)
        return v_str(obj.u.s.p + lo, hi > lo ? (size_t)(hi - lo) : 0);
    list *l = list_new(R->e);
    buf b = {.e = R->e};
    put(&b, "", 0);
    for (long long i = lo; step > 0 ? i < hi : i > hi; i += step) {
        if (obj.t == V_LIST)
            list_push(R->e, l, obj.u.l->v[i]);
        else
            put(&b, obj.u.s.p + i, 1);
    }
    return obj.t == V_LIST ? v_list(l) : v_str(b.p, b.n);
}

/* Positional argument i or keyword kw of a call node (evaluated), or def. */
static val arg(rctx *R, node *n, int i, const char *kw, val def)
{
    int pos = 0;
    for (int k = 0; k < n->nargs; k++) {
        if (n->kw[k]) {
            if (kw && strcmp(n->kw[k], kw) == 0)
                return eval(R, n->args[k]);
        } else if (pos++ == i) {
            return eval(R, n->args[k]);
        }
    }
    return def;
}

static int run_test(rctx *R, const char *name, val v, node *n, int argi);

static int cmp_vals(rctx *R, val a, val b, int line)
{
    if (is_num(a) && is_num(b)) {
        double x = as_num(a), y = as_num(b);
        return x < y ? -1 : x > y;
    }
    if (a.t == V_STR && b.t == V_STR) {
        size_t m = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int c = memcmp(a.u.s.p, b.u.s.p, m);
        return c ? (c < 0 ? -1 : 1) : a.u.s.n < b.u.s.n ? -1 : a.u.s.n > b.u.s.n;
    }
    die(R->e, MODEL_EINVAL, "chat template: cannot compare %s with %s (line %d)", type_name(a),
        type_name(b), line);
}

static val filter(rctx *R, node *n, val v)
{
    const char *f = n->s;
    int line = n->line;
    err *e = R->e;
    if (!strcmp(f, "default") || !strcmp(f, "d")) {
        val def = arg(R, n, 0, "default_value", v_str("", 0));
        int boolean = truthy(arg(R, n, 1, "boolean", v_bool(0)));
        return v.t == V_UNDEF || (boolean && !truthy(v)) ? def : v;
    }
    if (!strcmp(f, "safe"))
        return v;
    need_defined(R, v, line);
    if (!strcmp(f, "trim"))
        return strip(stringify(e, v), 1, 1, arg(R, n, 0, "chars", v_none()));
    if (!strcmp(f, "length") || !strcmp(f, "count")) {
        if (v.t == V_STR) {
            long long c = 0;
            for (size_t i = 0; i < v.u.s.n; i++)
                c += ((unsigned char)v.u.s.p[i] & 0xC0) != 0x80;
            return v_int(c);
        }
        return v_int((long long)iter_of(R, v, line)->n);
    }
    if (!strcmp(f, "string"))
        return stringify(e, v);
    if (!strcmp(f, "list"))
        return v_list(iter_of(R, v, line));
    if (!strcmp(f, "tojson")) {
        val ind = arg(R, n, 0, "indent", v_none());
        buf b = {.e = e};
        put(&b, "", 0);
        to_json(e, &b, v, ind.t == V_NONE ? -1 : (int)as_int(R, ind, line), 0);
        return v_str(b.p, b.n);
    }
    if (!strcmp(f, "join")) {
        val sep = arg(R, n, 0, "d", v_str("", 0));
        val at = arg(R, n, 1, "attribute", v_none());
        list *l = iter_of(R, v, line);
        buf b = {.e = e};
        put(&b, "", 0);
        for (size_t i = 0; i < l->n; i++) {
            if (i)
                to_str(&b, sep);
            val x = l->v[i];
            if (at.t == V_STR)
                x = attr(R, x, at.u.s.p, at.u.s.n, line);
            to_str(&b, x);
        }
        return v_str(b.p, b.n);
    }
    if (!strcmp(f, "items")) {
        if (v.t != V_DICT)
            die(e, MODEL_EINVAL, "chat template: items of a %s (line %d)", type_name(v), line);
        return items_of(R, v);
    }
    if (!strcmp(f, "upper") || !strcmp(f, "lower") || !strcmp(f, "title") ||
        !strcmp(f, "capitalize"))
        return case_map(R, stringify(e, v),
                        !strcmp(f, "lower")   ? 0
                        : !strcmp(f, "upper") ? 1
                        : !strcmp(f, "title") ? 2
                                              : 3);
    if (!strcmp(f, "first") || !strcmp(f, "last")) {
        list *l = iter_of(R, v, line);
        if (!l->n)
            return v_undef(f);
        return l->v[!strcmp(f, "first") ? 0 : l->n - 1];
    }
    if (!strcmp(f, "reverse")) {
        if (v.t == V_STR) {
            char *p = amalloc(e, v.u.s.n + 1);
            for (size_t i = 0; i < v.u.s.n; i++)
                p[i] = v.u.s.p[v.u.s.n - 1 - i];
            return v_str(p, v.u.s.n);
        }
        list *l = iter_of(R, v, line), *r = list_new(e);
        for (size_t i = l->n; i-- > 0;)
            list_push(e, r, l->v[i]);
        return v_list(r);
    }
    if (!strcmp(f, "unique")) {
        list *l = iter_of(R, v, line), *r = list_new(e);
        for (size_t i = 0; i < l->n; i++) {
            int seen = 0;
            for (size_t j = 0; j < r->n && !seen; j++)
                seen = equal(r->v[j], l->v[i]);
            if (!seen)
                list_push(e, r, l->v[i]);
        }
        return v_list(r);
    }
    if (!strcmp(f, "sort")) {
        list *l = iter_of(R, v, line), *r = list_new(e);
        int rev = truthy(arg(R, n, 0, "reverse", v_bool(0)));
        val at = arg(R, n, 2, "attribute", v_none());
        for (size_t i = 0; i < l->n; i++) { /* insertion sort: stable, and lists are short */
            list_push(e, r, l->v[i]);
            for (size_t j = r->n - 1; j > 0; j--) {
                val a = r->v[j - 1], b = r->v[j];
                val ka = at.t == V_STR ? attr(R, a, at.u.s.p, at.u.s.n, line) : a;
                val kb = at.t == V_STR ? attr(R, b, at.u.s.p, at.u.s.n, line) : b;
                int c = cmp_vals(R, ka, kb, line);
                if (rev ? c >= 0 : c <= 0)
                    break;
                r->v[j - 1] = b;
                r->v[j] = a;
            }
        }
        return v_list(r);
    }
    if (!strcmp(f, "selectattr") || !strcmp(f, "rejectattr") || !strcmp(f, "select") ||
        !strcmp(f, "reject")) {
        int by_attr = !strcmp(f, "selectattr") || !strcmp(f, "rejectattr");
        int keep_if = !strcmp(f, "selectattr") || !strcmp(f, "select");
        list *l = iter_of(R, v, line), *r = list_new(e);
        val at = by_attr ? arg(R, n, 0, NULL, v_none()) : v_none();
        if (by_attr && at.t != V_STR)
            die(e, MODEL_EINVAL, "chat template: %s needs an attribute name (line %d)", f, line);
        val test = arg(R, n, by_attr ? 1 : 0, NULL, v_none());
        for (size_t i = 0; i < l->n; i++) {
            val x = by_attr ? attr(R, l->v[i], at.u.s.p, at.u.s.n, line) : l->v[i];
            char tn[64]; /* a test's name, NUL-terminated (a string value need not be) */
            snprintf(tn, sizeof tn, "%.*s", test.t == V_STR ? (int)test.u.s.n : 0,
                     test.t == V_STR ? test.u.s.p : "");
            int ok = test.t == V_STR ? run_test(R, tn, x, n, by_attr ? 2 : 1) : truthy(x);
            if (ok == keep_if)
                list_push(e, r, l->v[i]);
        }
        return v_list(r);
    }
    if (!strcmp(f, "map")) {
        list *l = iter_of(R, v, line), *r = list_new(e);
        val at = arg(R, n, 99, "attribute", v_none());
        val fname = arg(R, n, 0, NULL, v_none());
        for (size_t i = 0; i < l->n; i++) {
            val x = l->v[i];
            if (at.t == V_STR)
                x = attr(R, x, at.u.s.p, at.u.s.n, line);
            else if (fname.t == V_STR) {
                node fn = *n;
                fn.s = astrdup(e, fname.u.s.p, fname.u.s.n);
                fn.nargs = 0;
                x = filter(R, &fn, x);
            }
            list_push(e, r, x);
        }
        return v_list(r);
    }
    if (!strcmp(f, "int")) {
        if (v.t == V_STR) {
            char *t = astrdup(e, v.u.s.p, v.u.s.n);
            return v_int(strtoll(t, NULL, 10));
        }
        return is_num(v) ? v_int(as_int(R, v, line)) : v_int(0);
    }
    if (!strcmp(f, "float")) {
        if (v.t == V_STR)
            return v_float(strtod(astrdup(e, v.u.s.p, v.u.s.n), NULL));
        return v_float(as_num(v));
    }
    if (!strcmp(f, "abs")) {
        if (v.t == V_INT)
            return v_int(v.u.i < 0 ? -v.u.i : v.u.i);
        return v_float(fabs(as_num(v)));
    }
    if (!strcmp(f, "replace")) {
        val s = stringify(e, v);
        val a = str_arg(R, arg(R, n, 0, "old", v_none()), line);
        val b = str_arg(R, arg(R, n, 1, "new", v_none()), line);
        val c = arg(R, n, 2, "count", v_int(-1));
        return replace(R, s, a, b, as_int(R, c, line));
    }
    if (!strcmp(f, "indent")) {
        val s = stringify(e, v);
        val w = arg(R, n, 0, "width", v_int(4));
        int first = truthy(arg(R, n, 1, "first", v_bool(0)));
        int blank = truthy(arg(R, n, 2, "blank", v_bool(0)));
        buf pad = {.e = e}, b = {.e = e};
        put(&pad, "", 0);
        put(&b, "", 0);
        if (w.t == V_STR)
            put(&pad, w.u.s.p, w.u.s.n);
        else
            for (long long i = 0; i < as_int(R, w, line) && i < 1024; i++)
                put(&pad, " ", 1);
        const char *p = s.u.s.p, *end = p + s.u.s.n;
        int line_no = 0;
        while (p <= end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *le = nl ? nl : end;
            if ((line_no > 0 || first) && (blank || le > p))
                put(&b, pad.p, pad.n);
            put(&b, p, (size_t)(le - p));
            if (!nl)
                break;
            put(&b, "\n", 1);
            p = nl + 1;
            line_no++;
        }
        return v_str(b.p, b.n);
    }
    if (!strcmp(f, "wordcount")) {
        val s = stringify(e, v);
        long long c = 0;
        int in = 0;
        for (size_t i = 0; i < s.u.s.n; i++) {
            int w = !is_ws(s.u.s.p[i]);
            c += w && !in;
            in = w;
        }
        return v_int(c);
    }
    die(e, MODEL_EINVAL, "chat template: unknown filter '%s' (line %d)", f, line);
}

static int run_test(rctx *R, const char *t, val v, node *n, int argi)
{
    if (!strcmp(t, "defined"))
        return v.t != V_UNDEF;
    if (!strcmp(t, "undefined"))
        return v.t == V_UNDEF;
    if (!strcmp(t, "none"))
        return v.t == V_NONE;
    if (!strcmp(t, "string"))
        return v.t == V_STR;
    if (!strcmp(t, "number"))
        return v.t == V_INT || v.t == V_FLOAT;
    if (!strcmp(t, "integer"))
        return v.t == V_INT;
    if (!strcmp(t, "float"))
        return v.t == V_FLOAT;
    if (!strcmp(t, "boolean"))
        return v.t == V_BOOL;
    if (!strcmp(t, "true"))
        return v.t == V_BOOL && v.u.b;
    if (!strcmp(t, "false"))
        return v.t == V_BOOL && !v.u.b;
    if (!strcmp(t, "mapping"))
        return v.t == V_DICT;
    if (!strcmp(t, "iterable"))
        return v.t == V_LIST || v.t == V_DICT || v.t == V_STR;
    if (!strcmp(t, "sequence"))
        return v.t == V_LIST || v.t == V_DICT || v.t == V_STR;
    if (!strcmp(t, "callable"))
        return v.t == V_FUNC;
    if (!strcmp(t, "odd") || !strcmp(t, "even")) {
        long long i = as_int(R, v, n->line);
        return (i % 2 != 0) == !strcmp(t, "odd");
    }
    if (!strcmp(t, "equalto") || !strcmp(t, "eq") || !strcmp(t, "==") || !strcmp(t, "ne") ||
        !strcmp(t, "!=")) {
        val o = arg(R, n, argi, NULL, v_undef("argument"));
        int eq = equal(v, o);
        return (!strcmp(t, "ne") || !strcmp(t, "!=")) ? !eq : eq;
    }
    if (!strcmp(t, "in")) {
        val o = arg(R, n, argi, NULL, v_undef("argument"));
        list *l = iter_of(R, o, n->line);
        for (size_t i = 0; i < l->n; i++)
            if (equal(v, l->v[i]))
                return 1;
        return 0;
    }
    die(R->e, MODEL_EINVAL, "chat template: unknown test '%s' (line %d)", t, n->line);
}

static int contains(rctx *R, val hay, val needle, int line)
{
    if (hay.t == V_UNDEF) /* jinja2 iterates an undefined value as empty: nothing is in it */
        return 0;
    if (hay.t == V_STR) {
        val s = str_arg(R, needle, line);
        return s.u.s.n == 0 || memmem(hay.u.s.p, hay.u.s.n, s.u.s.p, s.u.s.n) != NULL;
    }
    if (hay.t == V_DICT)
        return needle.t == V_STR && dict_get(hay.u.d, needle.u.s.p, needle.u.s.n) != NULL;
    list *l = iter_of(R, hay, line);
    for (size_t i = 0; i < l->n; i++)
        if (equal(l->v[i], needle))
            return 1;
    return 0;
}

static val binop(rctx *R, node *n)
{
    const char *op = n->s;
    val a = eval(R, n->a), b = eval(R, n->b);
    int line = n->line;
    err *e = R->e;
    if (!strcmp(op, "=="))
        return v_bool(equal(a, b));
    if (!strcmp(op, "!="))
        return v_bool(!equal(a, b));
    if (!strcmp(op, "in"))
        return v_bool(contains(R, b, a, line));
    if (!strcmp(op, "not in"))
        return v_bool(!contains(R, b, a, line));
    if (!strcmp(op, "~")) {
        buf s = {.e = e};
        put(&s, "", 0);
        to_str(&s, a);
        to_str(&s, b);
        return v_str(s.p, s.n);
    }
    if (!strcmp(op, "<") || !strcmp(op, ">") || !strcmp(op, "<=") || !strcmp(op, ">=")) {
        need_defined(R, a, line);
        need_defined(R, b, line);
        int c = cmp_vals(R, a, b, line);
        return v_bool(!strcmp(op, "<")    ? c < 0
                      : !strcmp(op, ">")  ? c > 0
                      : !strcmp(op, "<=") ? c <= 0
                                          : c >= 0);
    }
    need_defined(R, a, line);
    need_defined(R, b, line);
    if (!strcmp(op, "+")) {
        if (a.t == V_STR && b.t == V_STR) {
            char *p = amalloc(e, a.u.s.n + b.u.s.n + 1);
            memcpy(p, a.u.s.p, a.u.s.n);
            memcpy(p + a.u.s.n, b.u.s.p, b.u.s.n);
            return v_str(p, a.u.s.n + b.u.s.n);
        }
        if (a.t == V_LIST && b.t == V_LIST) {
            list *l = list_new(e);
            for (size_t i = 0; i < a.u.l->n; i++)
                list_push(e, l, a.u.l->v[i]);
            for (size_t i = 0; i < b.u.l->n; i++)
                list_push(e, l, b.u.l->v[i]);
            return v_list(l);
        }
    }
    if (!is_num(a) || !is_num(b)) {
        if (!strcmp(op, "*") &&
            ((a.t == V_STR && b.t == V_INT) || (a.t == V_INT && b.t == V_STR))) {
            val s = a.t == V_STR ? a : b;
            long long k = a.t == V_INT ? a.u.i : b.u.i;
            buf o = {.e = e};
            put(&o, "", 0);
            for (long long i = 0; i < k; i++)
                put(&o, s.u.s.p, s.u.s.n);
            return v_str(o.p, o.n);
        }
        die(e, MODEL_EINVAL, "chat template: unsupported operand types for %s: %s and %s (line %d)",
            op, type_name(a), type_name(b), line);
    }
    int flt = a.t == V_FLOAT || b.t == V_FLOAT;
    double x = as_num(a), y = as_num(b);
    long long i = a.t == V_INT ? a.u.i : (long long)x, j = b.t == V_INT ? b.u.i : (long long)y;
    if (!strcmp(op, "/")) {
        if (y == 0)
            die(e, MODEL_EINVAL, "chat template: division by zero (line %d)", line);
        return v_float(x / y);
    }
    if (!strcmp(op, "//") || !strcmp(op, "%")) {
        if (y == 0)
            die(e, MODEL_EINVAL, "chat template: division by zero (line %d)", line);
        if (flt) {
            double q = floor(x / y);
            return !strcmp(op, "//") ? v_float(q) : v_float(x - q * y);
        }
        if (i == LLONG_MIN && j == -1)
            die(e, MODEL_EINVAL, "chat template: integer overflow (line %d)", line);
        long long q = i / j, r = i % j;
        if (r != 0 && ((r < 0) != (j < 0))) {
            q--;
            r += j;
        }
        return !strcmp(op, "//") ? v_int(q) : v_int(r);
    }
    if (flt)
        return v_float(!strcmp(op, "+") ? x + y : !strcmp(op, "-") ? x - y : x * y);
    long long r;
    int ovf = !strcmp(op, "+")   ? __builtin_add_overflow(i, j, &r)
              : !strcmp(op, "-") ? __builtin_sub_overflow(i, j, &r)
                                 : __builtin_mul_overflow(i, j, &r);
    if (ovf)
        die(e, MODEL_EINVAL, "chat template: integer overflow (line %d)", line);
    return v_int(r);
}

static val call_method(rctx *R, node *n, val obj, const char *m)
{
    int line = n->line;
    err *e = R->e;
    if (obj.t == V_STR) {
        if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip"))
            return strip(obj, m[0] != 'r', m[0] != 'l', arg(R, n, 0, NULL, v_none()));
        if (!strcmp(m, "replace")) {
            val a = str_arg(R, arg(R, n, 0, NULL, v_none()), line);
            val b = str_arg(R, arg(R, n, 1, NULL, v_none()), line);
            return replace(R, obj, a, b, as_int(R, arg(R, n, 2, "count", v_int(-1)), line));
        }
        if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
            val s = str_arg(R, arg(R, n, 0, NULL, v_none()), line);
            if (s.u.s.n > obj.u.s.n)
                return v_bool(0);
            const char *at = m[0] == 's' ? obj.u.s.p : obj.u.s.p + obj.u.s.n - s.u.s.n;
            return v_bool(memcmp(at, s.u.s.p, s.u.s.n) == 0);
        }
        if (!strcmp(m, "upper") || !strcmp(m, "lower") || !strcmp(m, "title") ||
            !strcmp(m, "capitalize"))
            return case_map(R, obj,
                            !strcmp(m, "lower")   ? 0
                            : !strcmp(m, "upper") ? 1
                            : !strcmp(m, "title") ? 2
                                                  : 3);
        if (!strcmp(m, "split")) {
            val sep = arg(R, n, 0, "sep", v_none());
            list *l = list_new(e);
            const char *p = obj.u.s.p, *end = p + obj.u.s.n;
            if (sep.t != V_STR) {
                while (p < end) {
                    while (p < end && is_ws(*p))
                        p++;
                    const char *q = p;
                    while (q < end && !is_ws(*q))
                        q++;
                    if (q > p)
                        list_push(e, l, v_str(p, (size_t)(q - p)));
                    p = q;
                }
                return v_list(l);
            }
            if (sep.u.s.n == 0)
                die(e, MODEL_EINVAL, "chat template: empty separator (line %d)", line);
            for (;;) {
                const char *q = memmem(p, (size_t)(end - p), sep.u.s.p, sep.u.s.n);
                if (!q) {
                    list_push(e, l, v_str(p, (size_t)(end - p)));
                    return v_list(l);
                }
                list_push(e, l, v_str(p, (size_t)(q - p)));
                p = q + sep.u.s.n;
            }
        }
        if (!strcmp(m, "find") || !strcmp(m, "count")) {
            val s = str_arg(R, arg(R, n, 0, NULL, v_none()), line);
            if (!strcmp(m, "find")) {
                const char *q = memmem(obj.u.s.p, obj.u.s.n, s.u.s.p, s.u.s.n);
                return v_int(q ? (long long)(q - obj.u.s.p) : -1);
            }
            long long c = 0;
            const char *p = obj.u.s.p, *end = p + obj.u.s.n;
            if (s.u.s.n == 0)
                return v_int((long long)obj.u.s.n + 1);
            for (const char *q; (q = memmem(p, (size_t)(end - p), s.u.s.p, s.u.s.n));
                 p = q + s.u.s.n)
                c++;
            return v_int(c);
        }
        if (!strcmp(m, "join")) {
            list *l = iter_of(R, arg(R, n, 0, NULL, v_none()), line);
            buf b = {.e = e};
            put(&b, "", 0);
            for (size_t i = 0; i < l->n; i++) {
                if (i)
                    put(&b, obj.u.s.p, obj.u.s.n);
                to_str(&b, l->v[i]);
            }
            return v_str(b.p, b.n);
        }
    }
    if (obj.t == V_DICT) {
        if (!strcmp(m, "items"))
            return items_of(R, obj);
        if (!strcmp(m, "keys") || !strcmp(m, "values")) {
            list *l = list_new(e);
            for (size_t i = 0; i < obj.u.d->n; i++)
                list_push(e, l, m[0] == 'k' ? obj.u.d->k[i] : obj.u.d->v[i]);
            return v_list(l);
        }
        if (!strcmp(m, "get")) {
            val k = arg(R, n, 0, NULL, v_none());
            val *x = k.t == V_STR ? dict_get(obj.u.d, k.u.s.p, k.u.s.n) : NULL;
            return x ? *x : arg(R, n, 1, NULL, v_none());
        }
    }
    if (obj.t == V_LIST && !strcmp(m, "append")) {
        list_push(e, obj.u.l, arg(R, n, 0, NULL, v_none()));
        return v_none();
    }
    need_defined(R, obj, line);
    die(e, MODEL_EINVAL, "chat template: %s has no method '%s' (line %d)", type_name(obj), m, line);
}

static val call(rctx *R, node *n)
{
    err *e = R->e;
    if (n->a->k == N_ATTR) {
        val obj = eval(R, n->a->a);
        if (obj.t != V_DICT || !dict_get(obj.u.d, n->a->s, n->a->n))
            return call_method(R, n, obj, n->a->s);
    }
    val f = eval(R, n->a);
    if (f.t != V_FUNC) {
        need_defined(R, f, n->line);
        die(e, MODEL_EINVAL, "chat template: a %s is not callable (line %d)", type_name(f),
            n->line);
    }
    switch (f.u.fn) {
    case FN_RAISE: {
        val m = stringify(e, arg(R, n, 0, NULL, v_str("", 0)));
        die(e, MODEL_EINVAL, "chat template raised: %.*s", (int)m.u.s.n, m.u.s.p);
    }
    case FN_STRFTIME: {
        val fmt = str_arg(R, arg(R, n, 0, NULL, v_none()), n->line);
        char out[256], *fs = astrdup(e, fmt.u.s.p, fmt.u.s.n);
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        size_t k = strftime(out, sizeof out, fs, &tm); /* the template's own format */
#pragma GCC diagnostic pop
        return v_str(astrdup(e, out, k), k);
    }
    case FN_NAMESPACE: {
        dict *d = dict_new(e);
        for (int i = 0; i < n->nargs; i++) {
            if (!n->kw[i]) {
                val x = eval(R, n->args[i]);
                if (x.t == V_DICT)
                    for (size_t k = 0; k < x.u.d->n; k++)
                        dict_set(e, d, x.u.d->k[k].u.s.p, x.u.d->k[k].u.s.n, x.u.d->v[k]);
                continue;
            }
            dict_set(e, d, n->kw[i], strlen(n->kw[i]), eval(R, n->args[i]));
        }
        return v_dict(d);
    }
    case FN_RANGE: {
        long long a = 0, b, st = 1;
        if (n->nargs == 1) {
            b = as_int(R, eval(R, n->args[0]), n->line);
        } else if (n->nargs >= 2) {
            a = as_int(R, eval(R, n->args[0]), n->line);
            b = as_int(R, eval(R, n->args[1]), n->line);
            if (n->nargs >= 3)
                st = as_int(R, eval(R, n->args[2]), n->line);
        } else {
            die(e, MODEL_EINVAL, "chat template: range() needs an argument (line %d)", n->line);
        }
        if (st == 0)
            die(e, MODEL_EINVAL, "chat template: range() step is zero (line %d)", n->line);
        list *l = list_new(e);
        for (long long i = a; st > 0 ? i < b : i > b; i += st) {
            if (l->n >= 1000000)
                die(e, MODEL_ERANGE, "chat template: range() too long (line %d)", n->line);
            list_push(e, l, v_int(i));
        }
        return v_list(l);
    }
    }
    die(e, MODEL_EINVAL, "chat template: bad call (line %d)", n->line);
}

static val eval(rctx *R, node *n)
{
    if (++R->depth > MAX_DEPTH * 4)
        die(R->e, MODEL_EINVAL, "chat template: evaluation nested too deeply");
    val v;
    switch (n->k) {
    case N_LIT:
        v = n->v;
        break;
    case N_NAME:
        v = lookup(R, n->s, n->n);
        break;
    case N_LIST: {
        list *l = list_new(R->e);
        for (int i = 0; i < n->nargs; i++)
            list_push(R->e, l, eval(R, n->args[i]));
        v = v_list(l);
        break;
    }
    case N_DICT: {
        dict *d = dict_new(R->e);
        for (int i = 0; i + 1 < n->nargs; i += 2) {
            val k = stringify(R->e, eval(R, n->args[i]));
            dict_set(R->e, d, k.u.s.p, k.u.s.n, eval(R, n->args[i + 1]));
        }
        v = v_dict(d);
        break;
    }
    case N_ATTR:
        v = attr(R, eval(R, n->a), n->s, n->n, n->line);
        break;
    case N_INDEX:
        v = subscript(R, eval(R, n->a), eval(R, n->b), n->line);
        break;
    case N_SLICE:
        v = slice(R, eval(R, n->a), n->args, n->line);
        break;
    case N_CALL:
        v = call(R, n);
        break;
    case N_FILTER:
        v = filter(R, n, eval(R, n->a));
        break;
    case N_TEST: {
        int r = run_test(R, n->s, eval(R, n->a), n, 0);
        v = v_bool(n->i ? !r : r);
        break;
    }
    case N_UNARY: {
        val a = eval(R, n->a);
        if (!strcmp(n->s, "not")) {
            v = v_bool(!truthy(a));
        } else {
            if (!is_num(a))
                die(R->e, MODEL_EINVAL, "chat template: bad operand for unary %s: %s (line %d)",
                    n->s, type_name(a), n->line);
            v = n->s[0] == '+'   ? a
                : a.t == V_FLOAT ? v_float(-a.u.f)
                                 : v_int(-as_int(R, a, n->line));
        }
        break;
    }
    case N_BIN:
        v = binop(R, n);
        break;
    case N_AND: {
        val a = eval(R, n->a);
        v = truthy(a) ? eval(R, n->b) : a;
        break;
    }
    case N_OR: {
        val a = eval(R, n->a);
        v = truthy(a) ? a : eval(R, n->b);
        break;
    }
    case N_TERNARY:
        v = truthy(eval(R, n->a)) ? eval(R, n->b) : n->c ? eval(R, n->c) : v_undef("else");
        break;
    default:
        die(R->e, MODEL_EINVAL, "chat template: bad expression");
    }
    R->depth--;
    return v;
}

static void exec(rctx *R, const body *b);

static void set_var(rctx *R, const char *name, val v)
{
    dict_set(R->e, R->sc->vars, name, strlen(name), v);
}

static void exec_for(rctx *R, stmt *s)
{
    err *e = R->e;
    list *src = iter_of(R, eval(R, s->e), s->line);
    list *items = src;
    if (s->cond) { /* the filter runs first, so loop.last and friends count what remains */
        items = list_new(e);
        for (size_t i = 0; i < src->n; i++) {
            scope sc = {dict_new(e), R->sc};
            R->sc = &sc;
            set_var(R, s->v1, src->v[i]);
            int ok = truthy(eval(R, s->cond));
            R->sc = sc.up;
            if (ok)
                list_push(e, items, src->v[i]);
        }
    }
    if (items->n == 0) {
        exec(R, &s->b);
        return;
    }
    for (size_t i = 0; i < items->n; i++) {
        scope sc = {dict_new(e), R->sc};
        R->sc = &sc;
        val x = items->v[i];
        if (s->v2) {
            if (x.t != V_LIST || x.u.l->n != 2)
                die(e, MODEL_EINVAL, "chat template: cannot unpack a %s into two names (line %d)",
                    type_name(x), s->line);
            set_var(R, s->v1, x.u.l->v[0]);
            set_var(R, s->v2, x.u.l->v[1]);
        } else {
            set_var(R, s->v1, x);
        }
        dict *loop = dict_new(e);
        long long n = (long long)items->n, k = (long long)i;
        dict_set(e, loop, "index", 5, v_int(k + 1));
        dict_set(e, loop, "index0", 6, v_int(k));
        dict_set(e, loop, "first", 5, v_bool(k == 0));
        dict_set(e, loop, "last", 4, v_bool(k == n - 1));
        dict_set(e, loop, "length", 6, v_int(n));
        dict_set(e, loop, "revindex", 8, v_int(n - k));
        dict_set(e, loop, "revindex0", 9, v_int(n - k - 1));
        dict_set(e, loop, "previtem", 8, k > 0 ? items->v[k - 1] : v_undef("previtem"));
        dict_set(e, loop, "nextitem", 8, k + 1 < n ? items->v[k + 1] : v_undef("nextitem"));
        set_var(R, "loop", v_dict(loop));
        exec(R, &s->a);
        R->sc = sc.up;
        R->cont = 0;
        if (R->brk) {
            R->brk = 0;
            break;
        }
    }
}

static void exec(rctx *R, const body *b)
{
    for (int i = 0; i < b->n && !R->brk && !R->cont; i++) {
        stmt *s = b->v[i];
        switch (s->k) {
        case S_TEXT:
            put(R->out, s->s, s->n);
            break;
        case S_OUT:
            to_str(R->out, eval(R, s->e));
            break;
        case S_IF:
            exec(R, truthy(eval(R, s->e)) ? &s->a : &s->b);
            break;
        case S_FOR:
            exec_for(R, s);
            break;
        case S_SET: {
            val v = eval(R, s->e);
            if (s->v2) {
                val ns = lookup(R, s->v1, strlen(s->v1));
                if (ns.t != V_DICT)
                    die(R->e, MODEL_EINVAL,
                        "chat template: cannot set an attribute of '%s', a %s (line %d)", s->v1,
                        type_name(ns), s->line);
                dict_set(R->e, ns.u.d, s->v2, strlen(s->v2), v);
            } else {
                set_var(R, s->v1, v);
            }
            break;
        }
        case S_BREAK:
            R->brk = 1;
            break;
        case S_CONTINUE:
            R->cont = 1;
            break;
        }
    }
}

/* ---- JSON input ----------------------------------------------------------------------------- */

static val from_json(err *e, const cJSON *j, int depth)
{
    if (depth > MAX_DEPTH)
        die(e, MODEL_EINVAL, "chat template: messages nested too deeply");
    if (cJSON_IsNull(j))
        return v_none();
    if (cJSON_IsBool(j))
        return v_bool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9e15)
            return v_int((long long)d);
        return v_float(d);
    }
    if (cJSON_IsString(j))
        return v_cstr(astrdup(e, j->valuestring, strlen(j->valuestring)));
    if (cJSON_IsArray(j)) {
        list *l = list_new(e);
        for (const cJSON *c = j->child; c; c = c->next)
            list_push(e, l, from_json(e, c, depth + 1));
        return v_list(l);
    }
    if (cJSON_IsObject(j)) {
        dict *d = dict_new(e);
        for (const cJSON *c = j->child; c; c = c->next)
            dict_set(e, d, astrdup(e, c->string, strlen(c->string)), strlen(c->string),
                     from_json(e, c, depth + 1));
        return v_dict(d);
    }
    return v_none();
}

static val parse_json(err *e, const char *s, size_t n, const char *what)
{
    cJSON *j = cJSON_ParseWithLength(s, n);
    if (!j)
        die(e, MODEL_EINVAL, "chat template: %s is not valid JSON", what);
    /* Converted into the arena, then freed; a longjmp in between would leak j, so convert
     * only what cannot fail but on memory: */
    err inner = *e;
    if (setjmp(inner.jb)) {
        cJSON_Delete(j);
        e->code = inner.code;
        longjmp(e->jb, 1);
    }
    val v = from_json(&inner, j, 0);
    cJSON_Delete(j);
    return v;
}

static val parse_vars(err *e, const model_chat_opts *o)
{
    if (!o || !o->vars_json)
        return v_none();
    val vars = parse_json(e, o->vars_json, strlen(o->vars_json), "the variables");
    if (vars.t != V_DICT)
        die(e, MODEL_EINVAL, "chat template: the variables are not a JSON object");
    return vars;
}

static val parse_messages(err *e, const char *messages_json, size_t json_len)
{
    val msgs = parse_json(e, messages_json, json_len, "the messages");
    if (msgs.t != V_LIST)
        die(e, MODEL_EINVAL, "chat template: the messages are not a JSON array");
    return msgs;
}

/* Runs t on msgs into ob, with a fresh global scope. */
static void render_into(err *e, const model_chat_template *t, val msgs, val vars,
                        const model_chat_opts *o, int gen, buf *ob)
{
    scope global = {dict_new(e), NULL};
    rctx R = {e, ob, &global, 0, 0, 0};
    if (vars.t == V_DICT)
        for (size_t i = 0; i < vars.u.d->n; i++)
            dict_set(e, global.vars, vars.u.d->k[i].u.s.p, vars.u.d->k[i].u.s.n, vars.u.d->v[i]);
    set_var(&R, "messages", msgs);
    set_var(&R, "add_generation_prompt", v_bool(gen));
    set_var(&R, "bos_token", v_cstr(o && o->bos_token ? o->bos_token : ""));
    set_var(&R, "eos_token", v_cstr(o && o->eos_token ? o->eos_token : ""));
    exec(&R, &t->top);
}

int model_chat_template_render(const model_chat_template *t, const char *messages_json,
                               size_t json_len, const model_chat_opts *o, char **out,
                               size_t *out_len, char *msg, size_t msglen)
{
    *out = NULL;
    *out_len = 0;
    arena a = {0};
    err e = {.msg = msg, .msglen = msglen, .a = &a};
    buf ob = {.e = &e, .heap = 1};
    if (setjmp(e.jb)) {
        free(ob.p);
        arena_free(&a);
        return e.code;
    }
    put(&ob, "", 0);
    val msgs = parse_messages(&e, messages_json, json_len);
    val vars = parse_vars(&e, o);
    render_into(&e, t, msgs, vars, o, o && o->add_generation_prompt, &ob);
    arena_free(&a);
    *out = ob.p;
    *out_len = ob.n;
    return 0;
}

/* ---- Segments ------------------------------------------------------------------------------
 * Which bytes of a rendering are message content: the messages are rendered a second time with
 * each non-empty content string replaced by a placeholder ("\x1b" TAG index "\x1b", with a TAG
 * letter that occurs nowhere in the contents or the output), so the text between placeholders
 * is the template's own. That text must then occur in the real rendering in the same order,
 * with each content in between as it is, or trimmed as templates trim it (| trim, .strip(),
 * rstrip, lstrip); anything else (a template that edits contents) is refused. Message
 * boundaries: the first k messages are rendered (placeholders, no generation prompt) for each
 * k; where that rendering is a prefix of the whole, up to a trailer the next turn drops (an EOS
 * that only ends a conversation), and holds every placeholder of its own, the k-th turn ends
 * there. A trailer is cut where a token can start (after a newline or '>', ']', '}'), so the
 * boundary never splits a special token's text. */

typedef struct piece {
    size_t poff, plen; /* in the placeholder rendering */
    size_t roff, rlen; /* in the real rendering */
    int ph;            /* the placeholder's index, -1 for template text */
} piece;

typedef struct phs {
    val *orig; /* each placeholder's content */
    size_t n, cap;
    char tag;
} phs;

static val placeholder(err *e, phs *P, val content)
{
    if (P->n == P->cap) {
        size_t cap = P->cap ? P->cap * 2 : 16;
        val *nv = amalloc(e, cap * sizeof *nv);
        if (P->n)
            memcpy(nv, P->orig, P->n * sizeof *nv);
        P->orig = nv;
        P->cap = cap;
    }
    P->orig[P->n] = content;
    char tmp[32];
    int l = snprintf(tmp, sizeof tmp, "\x1b%c%zu\x1b", P->tag, P->n);
    P->n++;
    return v_str(astrdup(e, tmp, (size_t)l), (size_t)l);
}

static dict *dict_copy(err *e, const dict *d)
{
    dict *c = dict_new(e);
    for (size_t i = 0; i < d->n; i++)
        dict_set(e, c, d->k[i].u.s.p, d->k[i].u.s.n, d->v[i]);
    return c;
}

/* msgs with every non-empty content string (and the "text" of content parts) a placeholder. */
static val with_placeholders(err *e, val msgs, phs *P)
{
    list *l = list_new(e);
    for (size_t i = 0; i < msgs.u.l->n; i++) {
        val m = msgs.u.l->v[i];
        val *c = m.t == V_DICT ? dict_get(m.u.d, "content", 7) : NULL;
        if (c && c->t == V_STR && c->u.s.n > 0) {
            dict *d = dict_copy(e, m.u.d);
            dict_set(e, d, "content", 7, placeholder(e, P, *c));
            m = v_dict(d);
        } else if (c && c->t == V_LIST) {
            list *cparts = list_new(e);
            for (size_t j = 0; j < c->u.l->n; j++) {
                val cp = c->u.l->v[j];
                val *tx = cp.t == V_DICT ? dict_get(cp.u.d, "text", 4) : NULL;
                if (tx && tx->t == V_STR && tx->u.s.n > 0) {
                    dict *pd = dict_copy(e, cp.u.d);
                    dict_set(e, pd, "text", 4, placeholder(e, P, *tx));
                    cp = v_dict(pd);
                }
                list_push(e, cparts, cp);
            }
            dict *d = dict_copy(e, m.u.d);
            dict_set(e, d, "content", 7, v_list(cparts));
            m = v_dict(d);
        }
        list_push(e, l, m);
    }
    return v_list(l);
}

static int has_tag(const char *p, size_t n, char tag)
{
    for (const char *q = p; (q = memchr(q, 0x1b, (size_t)(p + n - q))) != NULL; q++)
        if (q + 1 < p + n && q[1] == tag)
            return 1;
    return 0;
}

/* Whether any string in v (recursively) contains ESC tag. */
static int val_has_tag(val v, char tag, int depth)
{
    if (depth > MAX_DEPTH)
        return 0;
    if (v.t == V_STR)
        return has_tag(v.u.s.p, v.u.s.n, tag);
    if (v.t == V_LIST)
        for (size_t i = 0; i < v.u.l->n; i++)
            if (val_has_tag(v.u.l->v[i], tag, depth + 1))
                return 1;
    if (v.t == V_DICT)
        for (size_t i = 0; i < v.u.d->n; i++)
            if (val_has_tag(v.u.d->v[i], tag, depth + 1))
                return 1;
    return 0;
}

/* The placeholder starting at p (ESC tag digits ESC): its index and length, or 0. */
static size_t ph_at(const char *p, const char *end, char tag, size_t *idx)
{
    if (end - p < 4 || p[0] != 0x1b || p[1] != tag)
        return 0;
    size_t i = 0;
    const char *q = p + 2;
    while (q < end && *q >= '0' && *q <= '9')
        i = i * 10 + (size_t)(*q++ - '0');
    if (q == p + 2 || q >= end || *q != 0x1b)
        return 0;
    *idx = i;
    return (size_t)(q + 1 - p);
}

/* A rendering that may fail as templates do (a prefix of the conversation a template refuses):
 * 0, or -1 for a template error; running out of memory or the caps still unwinds. */
static int try_render(err *e, const model_chat_template *t, val msgs, val vars,
                      const model_chat_opts *o, int gen, buf *ob, char *why, size_t whylen)
{
    err inner = *e;
    inner.msg = why;
    inner.msglen = whylen;
    buf b = {.e = &inner, .heap = 0};
    if (setjmp(inner.jb)) {
        if (inner.code != MODEL_EINVAL) {
            snprintf(e->msg, e->msglen, "%s", why);
            e->code = inner.code;
            longjmp(e->jb, 1);
        }
        return -1;
    }
    put(&b, "", 0);
    render_into(&inner, t, msgs, vars, o, gen, &b);
    b.e = e;
    *ob = b;
    return 0;
}

static size_t lcp(const buf *a, const buf *b)
{
    size_t n = a->n < b->n ? a->n : b->n, i = 0;
    while (i < n && a->p[i] == b->p[i])
        i++;
    return i;
}

/* Counts the placeholders in p[0, n). */
static size_t count_ph(const char *p, size_t n, char tag)
{
    size_t c = 0, idx;
    for (const char *q = p, *end = p + n; q < end; q++) {
        size_t l = ph_at(q, end, tag, &idx);
        if (l) {
            c++;
            q += l - 1;
        }
    }
    return c;
}

typedef struct cut {
    size_t roff;
    int turn;
} cut;

int model_chat_template_render_segments(const model_chat_template *t, const char *messages_json,
                                        size_t json_len, const model_chat_opts *o, char **out,
                                        size_t *out_len, model_chat_segment **segs, size_t *nsegs,
                                        char *msg, size_t msglen)
{
    *out = NULL;
    *out_len = 0;
    *segs = NULL;
    *nsegs = 0;
    arena a = {0};
    err e = {.msg = msg, .msglen = msglen, .a = &a};
    buf ob = {.e = &e, .heap = 1};
    model_chat_segment *sv = NULL;
    if (setjmp(e.jb)) {
        free(ob.p);
        free(sv);
        arena_free(&a);
        return e.code;
    }
    put(&ob, "", 0);
    val msgs = parse_messages(&e, messages_json, json_len);
    val vars = parse_vars(&e, o);
    int gen = o && o->add_generation_prompt;
    render_into(&e, t, msgs, vars, o, gen, &ob);

    phs P = {0};
    for (P.tag = 'A'; P.tag <= 'Z'; P.tag++)
        if (!val_has_tag(msgs, P.tag, 0) && !has_tag(ob.p, ob.n, P.tag) &&
            !val_has_tag(vars, P.tag, 0))
            break;
    if (P.tag > 'Z')
        die(&e, MODEL_EINVAL, "chat template: the messages hold every placeholder sequence");
    val pm = with_placeholders(&e, msgs, &P);
    char why[512];
    buf full;
    if (try_render(&e, t, pm, vars, o, gen, &full, why, sizeof why))
        die(&e, MODEL_EINVAL, "chat template: cannot tell message contents from template text (%s)",
            why);

    /* The pieces of the placeholder rendering, matched against the real one. */
    size_t np = 0, capp = 16;
    piece *pv = amalloc(&e, capp * sizeof *pv);
    const char *fp = full.p, *fend = full.p + full.n;
    size_t at = 0, rpos = 0;
    for (size_t i = 0; i <= full.n;) {
        size_t idx = 0, l = i < full.n ? ph_at(fp + i, fend, P.tag, &idx) : 0;
        if (i < full.n && !l) {
            i++;
            continue;
        }
        if (np + 2 > capp) {
            piece *nv = amalloc(&e, 2 * capp * sizeof *nv);
            memcpy(nv, pv, np * sizeof *nv);
            pv = nv;
            capp *= 2;
        }
        if (i > at) { /* template text [at, i) */
            if (rpos + (i - at) > ob.n || memcmp(ob.p + rpos, fp + at, i - at) != 0)
                die(&e, MODEL_EINVAL,
                    "chat template: the template's text differs between two renderings of the "
                    "same messages, so contents cannot be told from it");
            pv[np++] = (piece){at, i - at, rpos, i - at, -1};
            rpos += i - at;
        }
        if (i == full.n)
            break;
        if (idx >= P.n)
            die(&e, MODEL_EINVAL, "chat template: a placeholder the template made up");
        /* The content as it appears: as given or trimmed; the template text after it must
         * follow. */
        size_t nxt = i + l, nend = nxt;
        while (nend < full.n && !ph_at(fp + nend, fend, P.tag, &(size_t){0}))
            nend++;
        val c = P.orig[idx], cands[4] = {c, strip(c, 1, 1, v_none()), strip(c, 0, 1, v_none()),
                                         strip(c, 1, 0, v_none())};
        int found = 0;
        for (int k = 0; k < 4 && !found; k++) {
            size_t cl = cands[k].u.s.n;
            if (rpos + cl > ob.n || memcmp(ob.p + rpos, cands[k].u.s.p, cl) != 0)
                continue;
            if (nend == full.n && nend == nxt ? rpos + cl != ob.n
                                              : (rpos + cl + (nend - nxt) > ob.n ||
                                                 memcmp(ob.p + rpos + cl, fp + nxt, nend - nxt)))
                continue;
            pv[np++] = (piece){i, l, rpos, cl, (int)idx};
            rpos += cl;
            found = 1;
        }
        if (!found)
            die(&e, MODEL_EINVAL,
                "chat template: the template changes the content of message %zu (beyond trimming "
                "it), so it cannot be kept apart from the template's control tokens",
                idx);
        i += l;
        at = i;
    }
    if (rpos != ob.n)
        die(&e, MODEL_EINVAL, "chat template: the rendering has text the template did not make");

    /* Turn boundaries, as offsets of the real rendering. */
    size_t nm = msgs.u.l->n, nc = 0;
    cut *cuts = amalloc(&e, (nm + 1) * sizeof *cuts);
    size_t last = 0;
    /* Each prefix's renderings are dropped before the next: the memory stays that of one
     * rendering, not of all n. */
    arena_mark mark = arena_mark_of(&a);
    for (size_t k = 1; k <= nm; k++) {
        arena_release(&a, mark);
        list sub = *pm.u.l;
        sub.n = k;
        buf pk, gk;
        if (try_render(&e, t, v_list(&sub), vars, o, 0, &pk, why, sizeof why))
            continue;
        size_t L = lcp(&pk, &full);
        if (try_render(&e, t, v_list(&sub), vars, o, 1, &gk, why, sizeof why) == 0) {
            size_t g = lcp(&pk, &gk);
            L = g < L ? g : L;
        }
        if (L < pk.n) /* a trailer: back to where a token can start */
            while (L > 0 && !strchr("\n>]}", pk.p[L - 1]))
                L--;
        if (L <= last || count_ph(pk.p, L, P.tag) != count_ph(pk.p, pk.n, P.tag))
            continue;
        /* To the real rendering: L must fall in template text or at a piece's edge. */
        int ok = 0;
        size_t roff = 0;
        for (size_t j = 0; j < np && !ok; j++) {
            const piece *q = &pv[j];
            if (L == q->poff + q->plen) {
                roff = q->roff + q->rlen;
                ok = 1;
            } else if (q->ph < 0 && L > q->poff && L < q->poff + q->plen) {
                roff = q->roff + (L - q->poff);
                ok = 1;
            }
        }
        if (!ok)
            continue;
        last = L;
        if (nc > 0 && cuts[nc - 1].roff == roff)
            cuts[nc - 1].turn = (int)k;
        else
            cuts[nc++] = (cut){roff, (int)k};
    }

    /* Segments: the pieces, cut at the boundaries. */
    size_t ns = 0, caps = np + nc + 1;
    sv = malloc(caps * sizeof *sv);
    if (!sv)
        die(&e, MODEL_ENOMEM, "chat template: out of memory");
    size_t ci = 0;
    for (size_t j = 0; j <= np; j++) {
        size_t pos = j < np ? pv[j].roff : ob.n, b0 = j < np ? pv[j].roff + pv[j].rlen : ob.n;
        for (;;) {
            /* A cut at pos ends the segment before it. */
            for (; ci < nc && cuts[ci].roff <= pos; ci++)
                if (cuts[ci].roff == pos && ns > 0 && sv[ns - 1].off + sv[ns - 1].len == pos)
                    sv[ns - 1].turn = cuts[ci].turn;
            size_t end = ci < nc && cuts[ci].roff < b0 ? cuts[ci].roff : b0;
            if (end > pos)
                sv[ns++] = (model_chat_segment){pos, end - pos, j < np && pv[j].ph >= 0, 0};
            if (end == b0)
                break;
            pos = end;
        }
    }
    /* Spaces that end template text before content go with the content (byte-level BPE and
     * SentencePiece both join a space to the word after it). */
    for (size_t j = 0; j + 1 < ns; j++)
        if (!sv[j].content && !sv[j].turn && sv[j + 1].content) {
            while (sv[j].len > 0 && ob.p[sv[j].off + sv[j].len - 1] == ' ') {
                sv[j].len--;
                sv[j + 1].off--;
                sv[j + 1].len++;
            }
        }
    size_t w = 0;
    for (size_t j = 0; j < ns; j++)
        if (sv[j].len > 0)
            sv[w++] = sv[j];
    arena_free(&a);
    *out = ob.p;
    *out_len = ob.n;
    *segs = sv;
    *nsegs = w;
    return 0;
}

int model_chat_tokenize(const model_tokenizer *tk, const char *text, const model_chat_segment *segs,
                        size_t nsegs, int add_bos, int32_t **ids, size_t *n_ids, size_t *ends)
{
    *ids = NULL;
    *n_ids = 0;
    size_t total = 0;
    for (size_t i = 0; i < nsegs; i++)
        total += segs[i].len;
    size_t cap = model_encode_cap(total) + 2 * nsegs + 2, n = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v)
        return MODEL_ENOMEM;
    int32_t bos = model_token_bos(tk);
    if (add_bos && bos >= 0) {
        /* BOS when the vocabulary adds one (add_bos_token) and the rendering has none. */
        int32_t tmp[4];
        size_t k = 0;
        int has = nsegs > 0 && !segs[0].content;
        size_t bl;
        const char *bt = model_token_text(tk, bos, &bl);
        if (has)
            has = bl > 0 && segs[0].len >= bl && memcmp(text + segs[0].off, bt, bl) == 0;
        if (!has && model_tokenize(tk, "", 0, MODEL_ENC_ADD_SPECIAL, tmp, 4, &k) == 0 && k > 0 &&
            tmp[0] == bos)
            v[n++] = bos;
    }
    for (size_t i = 0; i < nsegs; i++) {
        unsigned flags = segs[i].content ? 0 : MODEL_ENC_SPECIAL;
        if (i > 0 && !(n > 0 && model_token_is_special(tk, v[n - 1])))
            flags |= MODEL_ENC_CONTINUE;
        size_t k = 0;
        int rc = model_tokenize(tk, text + segs[i].off, segs[i].len, flags, v + n, cap - n, &k);
        if (rc) {
            free(v);
            return rc;
        }
        n += k;
        if (ends)
            ends[i] = n;
    }
    *ids = v;
    *n_ids = n;
    return 0;
}

/* ---- Families ------------------------------------------------------------------------------
 * Each family's built-in template, written here from its published format (the sources are in
 * tests/data/templates/families/README.md, with each family's expected rendering). They keep
 * what the published format fixes and nothing that would move earlier text when a turn is
 * added, so every one has the token-prefix property; where a vendor's own template puts the
 * system prompt into the last user turn (Mistral v3 and Tekken), the built-in puts it into the
 * first, as Mistral's v1 format and llama.cpp do. */

// clang-format off
static const struct family_def {
    const char *name, *aliases, *about, *bos, *eos, *src;
} families[MODEL_CHAT_NFAMILIES] = {
    [MODEL_CHAT_LLAMA2] = {"llama2", "llama-2,llama2-chat,codellama",
        "Llama 2 chat: <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s>",
        "<s>", "</s>",
        "{% if messages and messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
        "{% set msgs = messages[1:] %}{% else %}{% set sys = none %}{% set msgs = messages %}{% endif %}"
        "{% for m in msgs %}"
        "{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' }}"
        "{% if loop.first and sys is not none %}{{ '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' }}{% endif %}"
        "{{ m['content'] | trim + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}"
        "{% else %}{{ raise_exception('llama2: a message role must be system (first), user or assistant, not ' + m['role']) }}"
        "{% endif %}{% endfor %}"},
    [MODEL_CHAT_LLAMA3] = {"llama3", "llama-3,llama3.1,llama3.2,llama3.3,llama-3.1",
        "Llama 3.x: <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>",
        "<|begin_of_text|>", "<|eot_id|>",
        "{{ bos_token }}{% for m in messages %}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"},
    [MODEL_CHAT_CHATML] = {"chatml", "qwen,qwen2,qwen2.5,qwen3,smollm,hermes",
        "ChatML (Qwen, SmolLM, Hermes): <|im_start|>{role}\\n{content}<|im_end|>\\n",
        "", "<|im_end|>",
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
    [MODEL_CHAT_MISTRAL_V1] = {"mistral-v1", "mistral-v2,mixtral",
        "Mistral v1 (SentencePiece): <s> [INST] {user} [/INST] {assistant}</s>",
        "<s>", "</s>",
        "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.sys = ns.sys + m['content'] + '\\n\\n' %}"
        "{% elif m['role'] == 'user' %}{{ ' [INST] ' + ns.sys + m['content'] + ' [/INST]' }}{% set ns.sys = '' %}"
        "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}"
        "{% else %}{{ raise_exception('mistral: a message role must be system, user or assistant, not ' + m['role']) }}"
        "{% endif %}{% endfor %}"},
    [MODEL_CHAT_MISTRAL_V3] = {"mistral-v3", "mistral",
        "Mistral v3 (SentencePiece, control tokens): <s>[INST] {user}[/INST] {assistant}</s>",
        "<s>", "</s>",
        "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.sys = ns.sys + m['content'] + '\\n\\n' %}"
        "{% elif m['role'] == 'user' %}{{ '[INST] ' + ns.sys + m['content'] + '[/INST]' }}{% set ns.sys = '' %}"
        "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}"
        "{% else %}{{ raise_exception('mistral: a message role must be system, user or assistant, not ' + m['role']) }}"
        "{% endif %}{% endfor %}"},
    [MODEL_CHAT_MISTRAL_V3_TEKKEN] = {"mistral-v3-tekken", "tekken,mistral-nemo,ministral",
        "Mistral v3 Tekken (Nemo): <s>[INST]{user}[/INST]{assistant}</s>",
        "<s>", "</s>",
        "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.sys = ns.sys + m['content'] + '\\n\\n' %}"
        "{% elif m['role'] == 'user' %}{{ '[INST]' + ns.sys + m['content'] + '[/INST]' }}{% set ns.sys = '' %}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
        "{% else %}{{ raise_exception('mistral: a message role must be system, user or assistant, not ' + m['role']) }}"
        "{% endif %}{% endfor %}"},
    [MODEL_CHAT_MISTRAL_V7] = {"mistral-v7", "mistral-large",
        "Mistral v7: <s>[SYSTEM_PROMPT] {system}[/SYSTEM_PROMPT][INST] {user}[/INST] {assistant}</s>",
        "<s>", "</s>",
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ '[SYSTEM_PROMPT] ' + m['content'] + '[/SYSTEM_PROMPT]' }}"
        "{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + '[/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}"
        "{% else %}{{ raise_exception('mistral: a message role must be system, user or assistant, not ' + m['role']) }}"
        "{% endif %}{% endfor %}"},
    [MODEL_CHAT_MISTRAL_V7_TEKKEN] = {"mistral-v7-tekken", "mistral-small",
        "Mistral v7 Tekken (Small 3.x): <s>[SYSTEM_PROMPT]{system}[/SYSTEM_PROMPT][INST]{user}[/INST]{assistant}</s>",
        "<s>", "</s>",
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ '[SYSTEM_PROMPT]' + m['content'] + '[/SYSTEM_PROMPT]' }}"
        "{% elif m['role'] == 'user' %}{{ '[INST]' + m['content'] + '[/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
        "{% else %}{{ raise_exception('mistral: a message role must be system, user or assistant, not ' + m['role']) }}"
        "{% endif %}{% endfor %}"},
    [MODEL_CHAT_PHI3] = {"phi3", "phi-3,phi3.5,phi-3.5",
        "Phi-3: <|{role}|>\\n{content}<|end|>\\n",
        "<s>", "<|endoftext|>",
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"},
    [MODEL_CHAT_GEMMA] = {"gemma", "gemma2,gemma3,gemma-2,gemma-3",
        "Gemma: <start_of_turn>user\\n{content}<end_of_turn>\\n<start_of_turn>model\\n...",
        "<bos>", "<eos>",
        "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.sys = ns.sys + m['content'] | trim + '\\n\\n' %}"
        "{% else %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' + ns.sys + m['content'] | trim + '<end_of_turn>\\n' }}"
        "{% set ns.sys = '' %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"},
    [MODEL_CHAT_ZEPHYR] = {"zephyr", "",
        "Zephyr: <|{role}|>\\n{content}</s>\\n",
        "<s>", "</s>",
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"},
    [MODEL_CHAT_DEEPSEEK] = {"deepseek", "deepseek-llm,deepseek2,deepseek-v2",
        "DeepSeek LLM / V2: User: {user}\\n\\nAssistant: {assistant}<｜end▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\\n\\n' }}"
        "{% elif m['role'] == 'assistant' %}{{ 'Assistant: ' + m['content'] + eos_token }}"
        "{% elif m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
        "{% else %}{{ raise_exception('deepseek: a message role must be system, user or assistant, not ' + m['role']) }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"},
    [MODEL_CHAT_DEEPSEEK3] = {"deepseek3", "deepseek-v3,deepseek-r1",
        "DeepSeek V3 / R1: {system}<｜User｜>{user}<｜Assistant｜>{assistant}<｜end▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] }}"
        "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
        "{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + m['content'] + eos_token }}"
        "{% else %}{{ raise_exception('deepseek3: a message role must be system, user or assistant, not ' + m['role']) }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"},
    [MODEL_CHAT_GRANITE] = {"granite", "granite3",
        "Granite 3.x: <|start_of_role|>{role}<|end_of_role|>{content}<|end_of_text|>\\n",
        "", "<|end_of_text|>",
        "{% for m in messages %}{{ '<|start_of_role|>' + m['role'] + '<|end_of_role|>' + m['content'] + '<|end_of_text|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif %}"},
};
// clang-format on

const char *model_chat_family_name(int f)
{
    return f > 0 && f < MODEL_CHAT_NFAMILIES ? families[f].name : "unknown";
}

const char *model_chat_family_about(int f)
{
    return f > 0 && f < MODEL_CHAT_NFAMILIES ? families[f].about : "not a known family";
}

const char *model_chat_family_source(int f)
{
    return f > 0 && f < MODEL_CHAT_NFAMILIES ? families[f].src : NULL;
}

void model_chat_family_tokens(int f, const char **bos, const char **eos)
{
    *bos = f > 0 && f < MODEL_CHAT_NFAMILIES ? families[f].bos : "";
    *eos = f > 0 && f < MODEL_CHAT_NFAMILIES ? families[f].eos : "";
}

const char *model_chat_family_names(void)
{
    static const char names[] =
        "llama2, llama3, chatml, mistral-v1, mistral-v3, mistral-v3-tekken, "
        "mistral-v7, mistral-v7-tekken, phi3, gemma, zephyr, deepseek, "
        "deepseek3, granite";
    return names;
}

static int name_eq(const char *a, size_t n, const char *b)
{
    if (strlen(b) != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char x = a[i] >= 'A' && a[i] <= 'Z' ? (char)(a[i] + 32) : a[i];
        if (x != b[i])
            return 0;
    }
    return 1;
}

int model_chat_family_find(const char *name)
{
    size_t n = strlen(name);
    for (int f = 1; f < MODEL_CHAT_NFAMILIES; f++) {
        if (name_eq(name, n, families[f].name))
            return f;
        for (const char *p = families[f].aliases; *p;) {
            const char *c = strchr(p, ',');
            size_t l = c ? (size_t)(c - p) : strlen(p);
            char a[64];
            if (l < sizeof a) {
                memcpy(a, p, l);
                a[l] = 0;
                if (name_eq(name, n, a))
                    return f;
            }
            p += l + (c != NULL);
        }
    }
    return MODEL_CHAT_UNKNOWN;
}

static int has(const char *src, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= len; i++)
        if (src[i] == needle[0] && memcmp(src + i, needle, n) == 0)
            return 1;
    return 0;
}

int model_chat_family_detect(const char *src, size_t len)
{
    if (has(src, len, "<|start_header_id|>"))
        return MODEL_CHAT_LLAMA3;
    if (has(src, len, "<|im_start|>"))
        return MODEL_CHAT_CHATML;
    if (has(src, len, "<|start_of_role|>"))
        return MODEL_CHAT_GRANITE;
    if (has(src, len, "<start_of_turn>"))
        return MODEL_CHAT_GEMMA;
    if (has(src, len, "<｜User｜>"))
        return MODEL_CHAT_DEEPSEEK3;
    if (has(src, len, "[SYSTEM_PROMPT]"))
        return has(src, len, "[INST] ") ? MODEL_CHAT_MISTRAL_V7 : MODEL_CHAT_MISTRAL_V7_TEKKEN;
    if (has(src, len, "[INST]")) {
        if (has(src, len, "<<SYS>>"))
            return MODEL_CHAT_LLAMA2;
        if (has(src, len, " [/INST]"))
            return MODEL_CHAT_MISTRAL_V1;
        if (has(src, len, "[INST] "))
            return MODEL_CHAT_MISTRAL_V3;
        return MODEL_CHAT_MISTRAL_V3_TEKKEN;
    }
    if (has(src, len, "<|user|>") || has(src, len, "<|assistant|>"))
        return has(src, len, "<|end|>") ? MODEL_CHAT_PHI3 : MODEL_CHAT_ZEPHYR;
    if (has(src, len, "User: ") && has(src, len, "Assistant:"))
        return MODEL_CHAT_DEEPSEEK;
    return MODEL_CHAT_UNKNOWN;
}

int model_chat_template_choose(const char *override, const char *model_src,
                               model_chat_template **out, int *family, char *note, size_t notelen,
                               char *msg, size_t msglen)
{
    *out = NULL;
    *family = MODEL_CHAT_UNKNOWN;
    if (note && notelen)
        note[0] = 0;
    const char *src = model_src, *what = "the model's chat template";
    char *file = NULL;
    char whatbuf[600];
    int f = override ? model_chat_family_find(override) : MODEL_CHAT_UNKNOWN;
    if (f) {
        src = families[f].src;
        what = "the built-in template";
    } else if (override) {
        FILE *fp = fopen(override, "rb");
        if (!fp) {
            snprintf(msg, msglen,
                     "--chat-template '%s' is neither a template family (%s) nor a readable file",
                     override, model_chat_family_names());
            return MODEL_EINVAL;
        }
        size_t cap = 4096, n = 0;
        file = malloc(cap + 1);
        for (size_t k; file && (k = fread(file + n, 1, cap - n, fp)) > 0;) {
            n += k;
            if (n == cap) {
                char *nf = cap < MEM_CAP ? realloc(file, (cap *= 2) + 1) : NULL;
                if (!nf) {
                    free(file);
                    file = NULL;
                }
                file = nf;
            }
        }
        int bad = ferror(fp), eno = errno;
        fclose(fp);
        if (file && bad) {
            free(file);
            snprintf(msg, msglen, "--chat-template '%s': cannot read it: %s", override,
                     strerror(eno));
            return MODEL_EINVAL;
        }
        if (!file) {
            snprintf(msg, msglen, "cannot read chat template '%s': out of memory or too long",
                     override);
            return MODEL_ENOMEM;
        }
        file[n] = 0;
        src = file;
        snprintf(whatbuf, sizeof whatbuf, "the chat template in '%s'", override);
        what = whatbuf;
    } else if (!model_src) {
        snprintf(msg, msglen,
                 "the model carries no chat template (tokenizer.chat_template); give "
                 "--chat-template NAME (%s) or --chat-template FILE.jinja",
                 model_chat_family_names());
        return MODEL_EINVAL;
    }
    size_t len = strlen(src);
    char why[512];
    int rc = model_chat_template_parse(src, len, out, why, sizeof why);
    if (rc) {
        snprintf(msg, msglen,
                 "%s does not parse: %s; give --chat-template NAME (%s) to use a "
                 "built-in one",
                 what, why, model_chat_family_names());
        free(file);
        return rc;
    }
    *family = f ? f : model_chat_family_detect(src, len);
    if (!*family && note && notelen)
        snprintf(note, notelen,
                 "%s is not one of the known families (%s); it is rendered as written, which "
                 "keeps the token-prefix property only where its turns allow; give "
                 "--chat-template NAME to use a built-in one",
                 what, model_chat_family_names());
    free(file);
    return 0;
}
