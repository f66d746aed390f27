/* model.h — the transformer: checkpoint loading, tokenizer, sampler and forward pass.
 *
 * This header is the manual of the model/ library. The model owns no K/V memory: every forward
 * call is handed a block table (model_kv), and position p of a sequence lives in block p / B,
 * row p % B, where B (block_tokens) is chosen when the model_state is made. Within one block the
 * layout serves the attention kernel: for each layer, K then V, for each kv head, the block's B
 * rows of head_size elements lie contiguous; in F32 (float element i):
 *
 *     block[((layer * 2 + kv) * n_kv_heads + head) * B * head_size + row * head_size + i]
 *
 * (kv = 0 for keys, 1 for values). K/V may be stored in another type (model_state_opts.kv_type):
 * F16 (rows of head_size halves) or Q8_0 (rows of groups of 32 elements, 34 bytes each: an f16
 * scale d and 32 int8 q, element = d * q, as the weights' Q8_0). A Q8_0 row is one head's
 * head_size elements when head_size is a multiple of 32; otherwise it holds the fewest
 * consecutive kv heads whose elements make whole groups (stories260K: head_size 8, four heads to
 * a row), and the runs are per group of heads instead of per head. Values are rounded to the type
 * when they are written, and attention reads them in place, so a block's bytes are all there is
 * to its K/V. model/ knows nothing of hashing, disks, sockets or threads'
 * hand-offs. Every function here may be called from any one thread at a time per handle; a
 * model (weights) is read-only after load and may be shared by several states.
 */
#ifndef PREFIXD_MODEL_H
#define PREFIXD_MODEL_H

#include <stddef.h>
#include <stdint.h>

/* Error codes: 0 is success, these are negative. */
#define MODEL_ERRNO_MAP(X)                                                                         \
    X(EIO, -1, "i/o error")                                                                        \
    X(EFORMAT, -2, "unrecognised file format")                                                     \
    X(ETRUNC, -3, "file truncated")                                                                \
    X(ESHAPE, -4, "impossible model shape")                                                        \
    X(EVOCAB, -5, "tokenizer does not match the model")                                            \
    X(ENOMEM, -6, "out of memory")                                                                 \
    X(ERANGE, -7, "value out of range")                                                            \
    X(EINVAL, -8, "invalid argument")                                                              \
    X(ENOTSUP, -9, "not supported yet")

enum {
#define X(name, code, msg) MODEL_##name = code,
    MODEL_ERRNO_MAP(X)
#undef X
};

/* Returns a static description of a MODEL_* code (or "unknown error"). */
const char *model_strerror(int err);

/* ---- Configuration and weights ------------------------------------------------------------ */

typedef struct model_config {
    int dim;        /* transformer width */
    int hidden_dim; /* FFN inner width */
    int n_layers;
    int n_heads;
    int n_kv_heads;   /* < n_heads means grouped-query attention */
    int vocab_size;   /* always positive here */
    int seq_len;      /* maximum context, in tokens (model_set_context() overrides the file's) */
    int head_size;    /* dim / n_heads */
    int kv_dim;       /* head_size * n_kv_heads */
    int shared_class; /* 1: the classifier is the token embedding */
    float rope_theta; /* rotary base: angle = pos / rope_theta^(i / head_size); 10000 in Llama 2 */
    float norm_eps;   /* RMS norm epsilon: x / sqrt(mean(x^2) + norm_eps); 1e-5 in Llama 2 */
    int rope_neox; /* 1: rotary pairs (i, i + head_size / 2) as GPT-NeoX and qwen2; 0: (2i, 2i+1) */
    int qkv_bias;  /* 1: the layers have Q, K and V biases (qwen2) */
    /* Linear rotary scaling (GGUF `rope.scaling.type` linear, `rope.scaling.factor`): every
     * angle is divided by it, so a model stretched to rope_factor times its trained context sees
     * positions as it did in training. 1: none (llama2.c files, most GGUFs). */
    float rope_factor;
} model_config;

/* Weight types: ggml's type ids, as GGUF files store them; the ones the kernels take. A file with
 * any other type (q2_K, q3_K, the iq* family, ...) is refused naming the tensor and its type. */
enum {
    MODEL_TYPE_F32 = 0,
    MODEL_TYPE_F16 = 1,
    MODEL_TYPE_Q4_0 = 2,
    MODEL_TYPE_Q4_1 = 3,
    MODEL_TYPE_Q5_0 = 6,
    MODEL_TYPE_Q5_1 = 7,
    MODEL_TYPE_Q8_0 = 8,
    MODEL_TYPE_Q4_K = 12,
    MODEL_TYPE_Q5_K = 13,
    MODEL_TYPE_Q6_K = 14,
    MODEL_TYPE_BF16 = 30,
};

/* ggml's name of a type id ("f32", "q4_K"), or "unknown". */
const char *model_type_name(int type);

/* One weight matrix or vector as stored in the file (mapped, read-only): rows of cols elements,
 * row-major (y = W x for a matrix of (out, in)); a vector has one row. The data is in the type's
 * own encoding; for MODEL_TYPE_F32 it is rows x cols floats. */
typedef struct model_tensor {
    const void *data;
    int type; /* MODEL_TYPE_* */
    int rows, cols;
} model_tensor;

/* The float data of an F32 tensor. */
static inline const float *model_tensor_f32(const model_tensor *t)
{
    return (const float *)t->data;
}

/* One layer's weights (llama2.c's names). */
typedef struct model_layer {
    model_tensor rms_att; /* (dim) */
    model_tensor wq;      /* (dim, dim) */
    model_tensor wk;      /* (kv_dim, dim) */
    model_tensor wv;      /* (kv_dim, dim) */
    model_tensor wo;      /* (dim, dim) */
    model_tensor rms_ffn; /* (dim) */
    model_tensor w1;      /* (hidden, dim), the gate */
    model_tensor w2;      /* (dim, hidden), the down projection */
    model_tensor w3;      /* (hidden, dim), the up projection */
    model_tensor bq;      /* (dim) F32 query bias, when config.qkv_bias (else data NULL) */
    model_tensor bk;      /* (kv_dim) F32 key bias */
    model_tensor bv;      /* (kv_dim) F32 value bias */
} model_layer;

/* The weights, pointing into the mapped model file. Valid as long as the model is. */
typedef struct model_weights {
    model_tensor token_embedding; /* (vocab, dim) */
    const model_layer *layers;    /* (n_layers) */
    model_tensor rms_final;       /* (dim) */
    model_tensor wcls;            /* (vocab, dim); the token embedding's when shared */
    /* (head_size / 2) F32 rotary frequency divisors (Llama 3.1's `rope_freqs.weight`): pair i's
     * angle is pos * theta^(-2i / head_size) / rope_freqs[i] / rope_factor, as llama.cpp
     * computes it. data NULL: all 1. */
    model_tensor rope_freqs;
} model_weights;

typedef struct model model; /* opaque: a loaded checkpoint */

/* Loads a model file, memory-mapped, dispatching on the file's content: a GGUF file (versions 2
 * and 3, architecture `llama`; model/gguf.h says what is validated) or else a llama2.c legacy
 * version 0 checkpoint. Validates the hyper-parameters (positive sizes, dim divisible by n_heads,
 * n_heads divisible by n_kv_heads, even head_size, sizes that do not overflow) and that the file
 * holds every tensor with the shape they imply. Weights stay in the mapping, in their stored
 * type; only F32 weights are supported yet (another type is refused by name: "tensor
 * 'blk.0.attn_q.weight' has type q4_K, not supported yet"). Also hashes the whole file
 * (XXH3-128) into the model fingerprint, which so covers the weights as stored.
 * path: in. out: receives the model, owned by the caller, freed with model_free().
 * msg/msglen: on failure receives a message naming the file and the problem, e.g.
 *   "model file 'x.bin': truncated: header needs 1056540 bytes, file holds 4096".
 * Returns 0, MODEL_EIO, MODEL_EFORMAT, MODEL_ETRUNC, MODEL_ESHAPE, MODEL_ERANGE, MODEL_ENOTSUP
 * or MODEL_ENOMEM. */
int model_load(const char *path, model **out, char *msg, size_t msglen);

/* Overrides the context length the file gives (a GGUF's `llama.context_length` may be wrong:
 * the stories260K conversion says 128 for a model trained at 512). Call it before making a state
 * from m. seq_len: 1 .. 1048576. Returns 0 or MODEL_EINVAL. */
int model_set_context(model *m, int seq_len);

/* Unmaps and frees. Accepts NULL. No state made from this model may be used afterwards. */
void model_free(model *m);

/* Borrowed pointers, valid as long as m. */
const model_config *model_get_config(const model *m);
const model_weights *model_get_weights(const model *m);

/* The 16-byte fingerprint: XXH3-128 of the model file's bytes (weights as stored, and for GGUF
 * the metadata too). The context length does not enter it: it does not change any K/V. Valid as
 * long as m. */
const uint8_t *model_fingerprint(const model *m);

/* Parameter count (every weight, the classifier counted once when shared), and the bytes the
 * weights take. */
uint64_t model_param_count(const model_config *c);
uint64_t model_weight_bytes(const model_config *c);

/* Parses a K/V type name ("f32", "f16", "q8_0"; any case) into *type (MODEL_TYPE_*). Returns 0
 * or MODEL_EINVAL. */
int model_kv_type_parse(const char *name, int *type);

/* Whether c's K/V can be stored in type: F32 and F16 always, Q8_0 when the kv rows can be cut
 * in groups of 32 (see above). Returns 0, or MODEL_EINVAL with a message naming the type and
 * the model's head shape in msg. */
int model_kv_type_check(const model_config *c, int type, char *msg, size_t msglen);

/* K/V bytes per token in kv_type: 2 x layers x kv_dim x 4 (F32), x 2 (F16), x 34 / 32 (Q8_0);
 * 0 when c cannot take the type. */
uint64_t model_kv_bytes_per_token(const model_config *c, int kv_type);

/* Bytes in one K/V block of block_tokens positions in kv_type: block_tokens x
 * model_kv_bytes_per_token() (always a multiple of 4); 0 when c cannot take the type. */
size_t model_kv_block_bytes(const model_config *c, int block_tokens, int kv_type);

/* Floats in one F32 K/V block of block_tokens positions: n_layers x 2 x block_tokens x kv_dim
 * (model_kv_block_bytes(c, block_tokens, MODEL_TYPE_F32) / 4). */
size_t model_kv_block_floats(const model_config *c, int block_tokens);

/* Copies positions [0, rows) of one K/V block (block_tokens positions, kv_type) into another, for
 * every layer, K and V, and kv head: the rows a request shares with a cached block it does not
 * share whole. The bits are those the block's writer computed, so a request that copies them
 * reads exactly what its own prefill would have written (prefill rows do not depend on the
 * split). */
void model_kv_copy_rows(const model_config *c, int block_tokens, int kv_type, float *dst,
                        const float *src, int rows);

/* Fills *out with a named shape: "stories260K", "stories15M", "stories42M", "stories110M"
 * (llama2.c's TinyStories shapes; 15M/42M/110M use the 32000-token vocabulary), or parses
 * "dim,hidden,layers,heads,kv_heads,vocab,seq_len". Validates as model_load() does.
 * Returns 0 or MODEL_EINVAL / MODEL_ESHAPE with a message in msg. */
int model_shape_parse(const char *spec, model_config *out, char *msg, size_t msglen);

/* Writes a llama2.c checkpoint with the shape c (shared classifier) and random weights drawn from
 * seed: scaled so activations stay in range through any depth. Written to a temporary file and
 * renamed, so a reader never sees half a file. Returns 0 or MODEL_EIO / MODEL_ESHAPE with msg. */
int model_synth_write(const char *path, const model_config *c, uint64_t seed, char *msg,
                      size_t msglen);

/* A pseudo weight type for model_synth_write_gguf() and model_convert_gguf(): llama.cpp's
 * Q4_K_M mix (Q4_K, with Q6_K for the classifier or tied embedding, and for attn_v and ffn_down
 * in the first and last eighth of the layers and every third layer between). */
#define MODEL_TYPE_MIX_Q4_K_M 1000

/* Parses a weight type name ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
 * "q4_k", "q5_k", "q6_k", "q4_k_m"; any case) into *type. Returns 0 or MODEL_EINVAL. */
int model_type_parse(const char *name, int *type);

/* Writes a GGUF file (version 3) of shape c with random weights drawn from seed as
 * model_synth_write() draws them, architecture arch ("llama", or "qwen2": Q/K/V biases, NeoX
 * rotary), every matrix in type (a MODEL_TYPE_* the kernels take, or MODEL_TYPE_MIX_Q4_K_M);
 * norms and biases stay F32, and a matrix whose rows are not a whole number of the type's blocks
 * falls back to Q8_0, else F32, as llama.cpp's quantizer does. The classifier is tied to the
 * token embedding when c->shared_class. With a vocabulary of 259 or more, the file carries the
 * byte-level vocabulary of model_tokenizer_synth_write() (as SentencePiece pieces and scores).
 * Written to a temporary file and renamed. Returns 0, MODEL_EINVAL (arch or type), MODEL_ESHAPE
 * or MODEL_EIO, with msg. */
int model_synth_write_gguf(const char *path, const model_config *c, const char *arch, int type,
                           uint64_t seed, char *msg, size_t msglen);

/* The same, with rotary scaling: c->rope_factor other than 1 writes `ARCH.rope.scaling.type`
 * linear and `ARCH.rope.scaling.factor`; rope_freqs 1 adds a `rope_freqs.weight` tensor of Llama
 * 3.1's factors (llama.cpp's converter's formula: factor 8, low and high frequency factors 1 and
 * 4) computed for c's head size and rotary base, with c->seq_len as the original context so that
 * a small model's pairs get every kind of factor (1, 8 and the smoothed ones between). */
int model_synth_write_gguf_rope(const char *path, const model_config *c, const char *arch, int type,
                                uint64_t seed, int rope_freqs, char *msg, size_t msglen);

/* Writes the weights of a loaded GGUF model m as a new GGUF file with every matrix in type
 * (norms and biases stay F32; fallbacks as above), the metadata copied unchanged (vocabulary
 * included). Converting F32 weights to F16 or BF16 rounds each to nearest even. Returns 0,
 * MODEL_EINVAL (a llama2.c model, or type) or MODEL_EIO, with msg. */
int model_convert_gguf(const model *m, const char *path, int type, char *msg, size_t msglen);

/* ---- Forward pass ------------------------------------------------------------------------- */

/* A block table for one sequence: blocks[i] holds positions [i*B, (i+1)*B), in
 * model_kv_block_bytes() bytes (4-byte aligned; typed as the state's kv_type, whatever the
 * pointer type says). Plain data that the caller fills (from the cache) and hands to the model;
 * blocks must exist for every position a call reads or writes. */
typedef struct model_kv {
    float *const *blocks;
    int n_blocks;
} model_kv;

typedef struct model_state_opts {
    int block_tokens; /* B, positions per K/V block (default 16) */
    int max_prefill;  /* most tokens per model_prefill() call (default 512) */
    int max_batch;    /* most sequences per model_decode() call (default 32) */
    int threads;      /* compute threads incl. the caller (OpenBLAS's and ours); 0: all cores */
    int kv_type;      /* K/V element type: MODEL_TYPE_F32 (0, the default), MODEL_TYPE_F16, or
                         MODEL_TYPE_Q8_0 (model_kv_type_check() says whether c can take it) */
} model_state_opts;

typedef struct model_state model_state; /* opaque: activations and scratch, sized at creation */

/* Makes the activation buffers for m (allocated once: the forward pass never allocates) and a
 * packed copy of the weights (about model_weight_bytes(); the kernels read only that copy),
 * starts threads - 1 worker threads (the forward pass's only threads), and sets OpenBLAS's
 * thread count to 1. Zero fields of opts take their defaults. out: owned by the caller, freed with
 * model_state_free(). Returns 0, MODEL_EINVAL (an option out of range, or a kv_type the model
 * cannot take), MODEL_ENOTSUP (weights of a type the kernels do not take yet) or MODEL_ENOMEM. */
int model_state_new(const model *m, const model_state_opts *opts, model_state **out);

/* Stops the workers and frees. Accepts NULL. */
void model_state_free(model_state *s);

/* The options in force (defaults filled in). */
const model_state_opts *model_state_get_opts(const model_state *s);

/* Prefill: computes tokens[0..n) of one sequence at positions pos .. pos+n-1, as matrix products
 * over all n tokens at once (packed kernels of our own, model/kernels.c), attending over the
 * positions < pos already in kv and over the new ones. Writes the K/V of the new positions into kv.
 * When logits is not NULL, writes the vocab_size logits of the last position there (the others are
 * not computed). Each output row's arithmetic does not depend on n or pos's split: prefilling k
 * tokens and then the rest gives bitwise the same K/V and logits as prefilling all at once. Returns
 * 0, or MODEL_ERANGE (n < 1, n > max_prefill, pos + n > seq_len, a token id outside [0, vocab), or
 * kv too short), writing nothing then. */
int model_prefill(model_state *s, const model_kv *kv, int pos, const int32_t *tokens, int n,
                  float *logits);

/* Decode: one step for b sequences at once (b <= max_batch); sequence i feeds tokens[i] at
 * position pos[i] with block table kv[i], writes that position's K/V, and its logits to
 * logits + i * vocab_size. The weights are streamed once for all b rows, and each row's
 * arithmetic does not depend on b or on the other rows: a sequence's logits are bitwise the same
 * whatever else runs beside it. Returns 0 or MODEL_ERANGE as model_prefill(). */
int model_decode(model_state *s, const model_kv *kv, const int *pos, const int32_t *tokens, int b,
                 float *logits);

/* ---- Tokenizer (llama2.c format) ---------------------------------------------------------- */

enum { MODEL_TOK_UNK = 0, MODEL_TOK_BOS = 1, MODEL_TOK_EOS = 2 };

typedef struct model_tokenizer model_tokenizer; /* opaque */

/* Loads a llama2.c tokenizer file. vocab_size: the model's vocabulary, which the file must hold
 * exactly (MODEL_EVOCAB otherwise, with a message naming both sizes); 0 accepts any size.
 * Validates every length (truncated file, negative or oversize lengths). out: owned by the
 * caller, freed with model_tokenizer_free(). Returns 0 or a MODEL_* code with msg. */
int model_tokenizer_load(const char *path, int vocab_size, model_tokenizer **out, char *msg,
                         size_t msglen);

/* Makes the tokenizer of a model file that carries its vocabulary: a GGUF file with a
 * SentencePiece vocabulary (tokenizer.ggml.model "llama", tokens and scores for each id, <unk>,
 * <s>, </s> at ids 0, 1, 2), turned into the llama2.c tokenizer it is equivalent to. out: owned
 * by the caller, freed with model_tokenizer_free(). Returns 0, MODEL_EINVAL (a llama2.c
 * checkpoint: no vocabulary in it), MODEL_ENOTSUP (another vocabulary kind: a later step),
 * MODEL_EVOCAB, MODEL_EFORMAT or MODEL_ENOMEM, with msg. */
int model_tokenizer_from_model(const model *m, model_tokenizer **out, char *msg, size_t msglen);

/* Opens the tokenizer of a file on its own: a GGUF file's vocabulary (a whole model or a
 * vocabulary-only file such as llama.cpp's ggml-vocab-*.gguf; no weights are read), or else a
 * llama2.c tokenizer file. GGUF vocabularies: tokenizer.ggml.model "llama" (SentencePiece BPE
 * with scores, byte fallback, the space prefix rule) or "gpt2" (byte-level BPE with merges and
 * the pre-tokenizer tokenizer.ggml.pre names); anything else, an unknown pre-tokenizer, or
 * metadata that disagrees with itself (array lengths, a special id out of range, a duplicate
 * token) is refused with a message naming it. Returns 0 or a MODEL_* code with msg. */
int model_tokenizer_open(const char *path, model_tokenizer **out, char *msg, size_t msglen);

/* Writes a byte-level tokenizer of vocab_size tokens (<unk>, <s>, </s>, the 256 byte tokens, then
 * filler pieces) that any synthetic model of that vocabulary can use. Returns 0 or MODEL_EIO. */
int model_tokenizer_synth_write(const char *path, int vocab_size, char *msg, size_t msglen);

void model_tokenizer_free(model_tokenizer *t);
int model_tokenizer_vocab(const model_tokenizer *t);

/* Flags of model_tokenize(). */
enum {
    /* Add what the vocabulary adds around a text: BOS when add_bos_token (llama2.c: always),
     * EOS when add_eos_token. */
    MODEL_ENC_ADD_SPECIAL = 1,
    /* Match the texts of control tokens ("<|eot_id|>", "<s>") as those tokens. Without it a
     * text containing them encodes as the characters they are, so a user's text can never forge
     * a turn boundary; give it only for text the caller wrote itself (a rendered chat
     * template). User-defined tokens match either way, as in the reference. */
    MODEL_ENC_SPECIAL = 2,
    /* The text continues right after other raw text (not after a special token): no
     * SentencePiece space prefix before its first fragment. For text encoded in pieces (a
     * rendered chat's segments, model_chat_tokenize()), so that the pieces encode as the whole
     * would; byte-level BPE has no prefix and ignores it. */
    MODEL_ENC_CONTINUE = 4,
};

/* Ids that always suffice for len bytes of text, whatever the vocabulary. */
size_t model_encode_cap(size_t len);

/* Encodes len bytes of text exactly as the reference implementation does (llama.cpp's
 * llama_tokenize, which matches Hugging Face's tokenizers on its test files): special tokens are
 * cut out first (see MODEL_ENC_SPECIAL), then each fragment goes through the vocabulary's
 * encoder. In O(n log n) of the text whatever its shape. Invalid UTF-8 is encoded, never
 * refused. out: capacity cap ids (model_encode_cap(len) suffices). Returns 0, MODEL_ERANGE if
 * cap is too small, MODEL_ENOMEM. */
int model_tokenize(const model_tokenizer *t, const char *text, size_t len, unsigned flags,
                   int32_t *out, size_t cap, size_t *n_out);

/* 1 if id ends generation: EOS, EOT, EOM and the vocabulary's other end-of-turn tokens
 * ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|endoftext|>", ...); llama2.c: BOS or EOS. */
int model_token_is_eog(const model_tokenizer *t, int32_t id);

/* 1 if id is a special token (control, user-defined or unknown: a token that model_tokenize()
 * cuts out of the text before encoding the rest; llama2.c: BOS and EOS). */
int model_token_is_special(const model_tokenizer *t, int32_t id);

/* The BOS and EOS ids (-1: the vocabulary has none). */
int32_t model_token_bos(const model_tokenizer *t);
int32_t model_token_eos(const model_tokenizer *t);

/* The vocabulary's own text of id (SentencePiece's "▁the", byte-level BPE's "Ġthe", "<s>"),
 * not NUL-terminated; "" out of range. Valid as long as t. */
const char *model_token_text(const model_tokenizer *t, int32_t id, size_t *len);

/* A one-line description ("gpt2 (byte-level BPE, 50257 tokens, pre-tokenizer 'gpt-2')") in buf. */
const char *model_tokenizer_kind(const model_tokenizer *t, char *buf, size_t cap);

/* The Jinja chat template the file carries (tokenizer.chat_template), NUL-terminated, or NULL. */
const char *model_tokenizer_chat_template(const model_tokenizer *t);

/* model_tokenize() with MODEL_ENC_ADD_SPECIAL when bos is set, without MODEL_ENC_SPECIAL. For a
 * llama2.c tokenizer: BOS first when bos is set; a dummy-prefix space when text is not empty;
 * UTF-8 code points or their byte fallback; then merges by score, highest first, leftmost on
 * ties, in O(n log n) with a priority queue of candidate merges. Invalid UTF-8 bytes go through
 * byte fallback like any unknown code point. out: capacity cap ids; model_encode_cap(len) always
 * suffices (len + 2 does for a llama2.c tokenizer). *n_out: ids written.
 * Returns 0, MODEL_ERANGE if cap is too small, MODEL_ENOMEM. */
int model_encode(const model_tokenizer *t, const char *text, size_t len, int bos, int32_t *out,
                 size_t cap, size_t *n_out);

/* The text of token tok when it follows prev (a piece right after BOS loses its leading space;
 * "<0xHH>" pieces are that one raw byte; byte-level BPE characters are their bytes). *len
 * receives the byte length. The pointer is valid as long as t. Returns "" (len 0) for BOS, EOS,
 * control and unknown tokens of a GGUF vocabulary, and an id out of range. */
const char *model_decode_piece(const model_tokenizer *t, int32_t prev, int32_t tok, size_t *len);

/* Streaming decoding: one per generated sequence. Each push returns the bytes that are ready:
 * a piece's bytes are held back while they end inside a UTF-8 sequence that later bytes could
 * complete, so every returned chunk ends on a character boundary (bytes no continuation could
 * mend are passed on as they are). The concatenation of every push and the final flush equals
 * the concatenation of model_decode_piece() over the same ids. */
typedef struct model_detok {
    int32_t prev; /* the last id, for the piece rule after BOS */
    size_t held;  /* bytes in tail */
    char tail[4];
    char *buf;
    size_t cap;
} model_detok;

/* Sets up d for tokens that follow prev (the prompt's last id; BOS or -1 at the start).
 * Returns 0 or MODEL_ENOMEM. Free with model_detok_free(). */
int model_detok_init(model_detok *d, const model_tokenizer *t, int32_t prev);
void model_detok_free(model_detok *d);

/* The ready bytes after token tok (*len of them, maybe 0), valid until the next call on d. last:
 * no token follows, so nothing is held back (the held bytes come out as they are). */
const char *model_detok_push(const model_tokenizer *t, model_detok *d, int32_t tok, int last,
                             size_t *len);

/* The bytes still held (the sequence ended inside a character), valid until the next call. */
const char *model_detok_flush(model_detok *d, size_t *len);

/* ---- Sampler ------------------------------------------------------------------------------ */

typedef struct model_sampler model_sampler; /* opaque: scratch for top-p over the vocabulary */

/* Returns NULL on allocation failure. Freed with model_sampler_free(), which accepts NULL. */
model_sampler *model_sampler_new(int vocab_size);
void model_sampler_free(model_sampler *s);

/* Picks the next token from logits (vocab_size floats; modified in place). temp == 0: greedy
 * (argmax, lowest id on ties). Otherwise softmax(logits / temp), then top-p (nucleus) when
 * 0 < top_p < 1, drawn with the xorshift generator whose state is *rng (advanced; seed it with
 * model_rng_seed()). */
int32_t model_sample(model_sampler *s, float *logits, float temp, float top_p, uint64_t *rng);
uint64_t model_rng_seed(uint64_t seed);

#endif
