/* proto.h — prefixd's wire format: frame encoder and decoder, message structs, error codes.
 *
 * No I/O and nothing of ours is included: a client or the daemon feeds bytes in and gets
 * messages out. proto/PROTOCOL.md is the byte-level specification; this header mirrors it.
 *
 * Every frame is a 12-byte little-endian header followed by a body:
 *     u32 len    bytes after this field (8 + body bytes)
 *     u16 type   enum proto_type
 *     u16 flags  per type (0 unless said otherwise)
 *     u32 id     request id chosen by the client; replies carry the id of their request
 *
 * Decoded messages borrow from the input buffer: strings and id arrays point into it and are
 * valid as long as those bytes are. Strings are not NUL-terminated. Token id arrays are left as
 * little-endian bytes (possibly unaligned): read them with proto_ids_get().
 */
#ifndef PROTO_H
#define PROTO_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_MAGIC 0x44584650u /* "PFXD" as little-endian bytes */
#define PROTO_VERSION 1
#define PROTO_HEADER_SIZE 12
#define PROTO_MAX_FRAME_DEFAULT (16u << 20) /* bytes, header included */
#define PROTO_MAX_NAMESPACE 64              /* bytes; [A-Za-z0-9._-] only */

enum proto_type {
    PROTO_HELLO = 1,         /* C->S: magic, version, capabilities */
    PROTO_HELLO_OK = 2,      /* S->C: version, capabilities, model facts */
    PROTO_GENERATE = 3,      /* C->S: a generation request */
    PROTO_WARM = 4,          /* C->S: prefill into the cache only (same body as GENERATE) */
    PROTO_CANCEL = 5,        /* C->S: cancel the request with this frame's id; empty body */
    PROTO_TOKEN = 6,         /* S->C: one generated token */
    PROTO_DONE = 7,          /* S->C: the request ended; finish reason and stats */
    PROTO_ERROR = 8,         /* S->C: the request (or frame) failed; code and message */
    PROTO_STATS = 9,         /* C->S: ask for the daemon's counters; empty body */
    PROTO_STATS_REPLY = 10,  /* S->C: counters as a JSON object */
    PROTO_TOKENIZE = 11,     /* C->S: text -> ids */
    PROTO_TOKENS = 12,       /* S->C: ids */
    PROTO_DETOKENIZE = 13,   /* C->S: ids -> text */
    PROTO_TEXT = 14,         /* S->C: text */
    PROTO_CHAT = 15,         /* C->S: a generation from chat messages, rendered by the daemon */
    PROTO_TYPE_INVALID = 255 /* decoder only: a well-framed frame whose body is bad */
};

/* Capability bits (HELLO / HELLO_OK). */
enum {
    PROTO_CAP_TOKEN_PROMPT = 1u << 0, /* prompts as token ids */
    PROTO_CAP_WARM = 1u << 1,
    PROTO_CAP_PIN = 1u << 2,
    PROTO_CAP_DISK = 1u << 3,   /* the daemon has a disk tier */
    PROTO_CAP_CHAT = 1u << 4,   /* CHAT: the model has a chat template the daemon renders */
    PROTO_CAP_REMOTE = 1u << 5, /* HELLO_OK: the daemon has a remote tier; HELLO: the client
                                   reads DONE with flag PROTO_DONE_REMOTE */
};

/* GENERATE / WARM flags (frame header flags). */
enum {
    PROTO_GEN_TOKENS = 1u << 0, /* the prompt is token ids (BOS included by the client) */
    PROTO_GEN_PIN = 1u << 1,    /* WARM: pin the prompt's full blocks */
};

/* DONE flags (frame header flags): sent only to a client whose HELLO had PROTO_CAP_REMOTE. */
enum {
    PROTO_DONE_REMOTE = 1u << 0, /* a u32 cached_tokens_remote follows total_ms */
};

/* Finish reasons (DONE). */
enum proto_finish {
    PROTO_FINISH_STOP = 0,      /* the model ended the text (BOS or EOS sampled) */
    PROTO_FINISH_LENGTH = 1,    /* max_new reached, or the model's context */
    PROTO_FINISH_CANCELLED = 2, /* the client cancelled */
};

/* Error codes carried by ERROR frames (and returned by the decoder as -code). */
#define PROTO_ERR_MAP(X)                                                                           \
    X(BAD_FRAME, 1, "malformed frame")                                                             \
    X(TOO_BIG, 2, "frame larger than the maximum")                                                 \
    X(UNKNOWN_TYPE, 3, "unknown message type")                                                     \
    X(BAD_VERSION, 4, "unsupported protocol version")                                              \
    X(BAD_REQUEST, 5, "invalid request")                                                           \
    X(PROMPT_TOO_LONG, 6, "prompt longer than the model's context")                                \
    X(BAD_UTF8, 7, "prompt is not valid UTF-8")                                                    \
    X(BAD_TOKEN, 8, "token id out of range")                                                       \
    X(BAD_NAMESPACE, 9, "invalid namespace name")                                                  \
    X(BUSY, 10, "too many requests")                                                               \
    X(SLOW_READER, 11, "client not reading: output buffer limit reached")                          \
    X(NO_HELLO, 12, "HELLO must come first")                                                       \
    X(DUPLICATE_ID, 13, "request id already in use on this connection")                            \
    X(SHUTTING_DOWN, 14, "daemon is shutting down")                                                \
    X(PIN_BUDGET, 15, "pin budget exceeded")                                                       \
    X(NO_SPACE, 16, "K/V cache full")                                                              \
    X(INTERNAL, 17, "internal error")                                                              \
    X(NO_TEMPLATE, 18, "the model has no chat template")

enum {
#define X(name, code, msg) PROTO_ERR_##name = code,
    PROTO_ERR_MAP(X)
#undef X
};

/* Static text of a PROTO_ERR_* code (positive) or "unknown error". */
const char *proto_strerror(int code);

typedef struct proto_str {
    const char *p;
    uint32_t len;
} proto_str;

typedef struct proto_ids {
    const uint8_t *le; /* n little-endian int32 */
    uint32_t n;
} proto_ids;

static inline int32_t proto_ids_get(proto_ids ids, uint32_t i)
{
    const uint8_t *b = ids.le + 4 * (size_t)i;
    return (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                     (uint32_t)b[3] << 24);
}

typedef struct proto_hello {
    uint32_t magic;
    uint16_t version;
    uint32_t caps;
} proto_hello;

typedef struct proto_hello_ok {
    uint16_t version;
    uint32_t caps;
    uint32_t vocab_size;
    uint32_t seq_len;
    uint32_t block_tokens;
    uint32_t max_frame;
    proto_str model; /* a display name */
} proto_hello_ok;

typedef struct proto_generate { /* GENERATE and WARM */
    uint32_t max_new;           /* new tokens at most (0 with WARM) */
    float temp;                 /* 0: greedy */
    float top_p;                /* 0 or >= 1: off */
    uint64_t seed;
    proto_str ns;   /* namespace inside the client's uid; may be empty */
    proto_str text; /* when !(flags & PROTO_GEN_TOKENS) */
    proto_ids ids;  /* when flags & PROTO_GEN_TOKENS */
} proto_generate;

/* The most messages a CHAT may hold (the daemon's chat_prompt takes as many). */
#define PROTO_MAX_CHAT_MESSAGES 1024

typedef struct proto_chat_msg {
    proto_str role; /* "system", "user" or "assistant" */
    proto_str content;
} proto_chat_msg;

typedef struct proto_chat {
    uint32_t max_new; /* as GENERATE */
    float temp;
    float top_p;
    uint64_t seed;
    proto_str ns;
    proto_str system; /* a system prompt put before the messages, or empty for none */
    uint32_t n_msgs;
    /* Encoding: the n_msgs messages. Decoding: NULL; the messages are the n_msgs (str role,
     * str content) pairs at list[0..list_len), checked to be well formed: read them with
     * proto_chat_next(). */
    const proto_chat_msg *msgs;
    const uint8_t *list;
    size_t list_len;
} proto_chat;

/* The message at offset *off of a decoded CHAT's list into *m; *off moves past it. Returns 1,
 * or 0 at the end of the list. */
int proto_chat_next(const proto_chat *c, size_t *off, proto_chat_msg *m);

typedef struct proto_token {
    int32_t id;
    proto_str piece; /* decoded text of the token */
} proto_token;

typedef struct proto_done {
    uint8_t finish; /* enum proto_finish */
    uint32_t prompt_tokens;
    uint32_t cached_tokens;      /* from RAM and disk */
    uint32_t cached_tokens_disk; /* of those, loaded from disk */
    uint32_t new_tokens;
    double ttft_ms;    /* daemon side: request received -> first token ready */
    double prefill_ms; /* engine time spent prefilling this request */
    double decode_tokens_per_s;
    double total_ms;
    uint32_t cached_tokens_remote; /* of cached_tokens, from the remote tier: with flag
                                      PROTO_DONE_REMOTE only (0 without) */
} proto_done;

typedef struct proto_error {
    uint32_t code; /* PROTO_ERR_* */
    proto_str msg; /* names the problem */
} proto_error;

typedef struct proto_msg {
    uint16_t type; /* enum proto_type */
    uint16_t flags;
    uint32_t id;
    union {
        proto_hello hello;
        proto_hello_ok hello_ok;
        proto_generate gen; /* GENERATE, WARM */
        proto_chat chat;    /* CHAT */
        proto_token token;
        proto_done done;
        proto_error error; /* ERROR, and PROTO_TYPE_INVALID (why the body is bad) */
        proto_str json;    /* STATS_REPLY */
        proto_str text;    /* TOKENIZE, TEXT */
        proto_ids ids;     /* TOKENS, DETOKENIZE */
    } u;
} proto_msg;

#define PROTO_NEED_MORE (-1000)

/* Decodes one frame from buf[0..len).
 * Returns:
 *   > 0              bytes consumed; *out holds the message. If the frame was well framed but
 *                    its body is bad (unknown type, a length past the body, trailing bytes, bad
 *                    magic or version in HELLO), out->type is PROTO_TYPE_INVALID and
 *                    out->u.error says why (code and a static message): answer with an ERROR
 *                    frame and go on with the next frame.
 *   PROTO_NEED_MORE  the frame is not complete yet (nothing consumed).
 *   -PROTO_ERR_TOO_BIG / -PROTO_ERR_BAD_FRAME
 *                    the framing itself is broken (len > max_frame - 4, or len < 8): the stream
 *                    cannot be resynchronised; answer with an ERROR and close.
 * Never reads outside buf[0..len). max_frame: the largest frame accepted, header included. */
long proto_decode(const uint8_t *buf, size_t len, size_t max_frame, proto_msg *out);

/* The size of the frame that starts at buf (header included), read from its length field, as
 * soon as 4 bytes are there: so a reader can make room for the whole frame before it arrives.
 * Returns the size (>= 4; it may exceed any maximum: proto_decode() judges that), or
 * PROTO_NEED_MORE when len < 4. */
long proto_frame_size(const uint8_t *buf, size_t len);

/* Encodes m into buf[0..cap). Returns the frame's size in bytes; if that exceeds cap, nothing
 * useful is written and the caller retries with a buffer of the returned size. */
size_t proto_encode(const proto_msg *m, uint8_t *buf, size_t cap);

/* Checks a namespace name: at most PROTO_MAX_NAMESPACE bytes of [A-Za-z0-9._-]. Returns 1 if
 * valid. */
int proto_namespace_valid(proto_str ns);

/* Checks that s[0..len) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Returns the
 * offset of the first bad byte, or len if all is valid. */
size_t proto_utf8_check(const char *s, size_t len);

/* Sampling when the user names none, the same in `prefixd run`, prefixctl and the Python client
 * (README: "Sampling defaults"). The wire always carries explicit values; the daemon applies no
 * defaults of its own. Temperature 0 is greedy and needs no seed. */
#define PROTO_DEFAULT_TEMP 0.8f
#define PROTO_DEFAULT_TOP_P 0.95f

/* A seed for a sampled request whose user gave none, so that two such requests differ: 64 bits
 * from getrandom(), or, should that fail, the clock mixed with the pid. Any thread. */
uint64_t proto_random_seed(void);

/* The socket path clients and the daemon use by default: $PREFIXD_SOCKET if set, else
 * $XDG_RUNTIME_DIR/prefixd.sock, else /tmp/prefixd-$UID/prefixd.sock (a private directory, see
 * proto_socket_dir_check()). Returns 0, or -1 if it does not fit in cap bytes. */
int proto_default_socket_path(char *buf, size_t cap);

/* The private directory the default socket lives in when neither $PREFIXD_SOCKET nor
 * $XDG_RUNTIME_DIR is set: writes /tmp/prefixd-$UID to buf and returns 1. Returns 0 (buf
 * untouched) when the default path lives elsewhere, -1 if the name does not fit in cap bytes. */
int proto_default_socket_dir(char *buf, size_t cap);

/* For the daemon, before it binds the default socket: creates dir with mode 0700 if it is
 * missing, then refuses it unless it is a real directory (not a symlink) owned by the effective
 * uid with no group or other permission bits. Returns 0, or a negative errno value with err
 * (errlen bytes) naming the directory and the problem. Does I/O (mkdir, lstat): the one
 * exception in proto/, kept beside the path it guards so daemon and clients agree on both. */
int proto_socket_dir_check(const char *dir, char *err, size_t errlen);

#endif
