/* chat_prompt.h — a conversation as the model's prompt tokens: rendered with the model's chat
 * template, then tokenized so that
 *   - the template's own markers ("<|im_start|>", "<|eot_id|>", "[INST]" where it is a control
 *     token) become their control tokens, and the messages' contents never do: a user's text
 *     containing "<|eot_id|>" stays those characters, so no one can forge a turn;
 *   - the tokens of a conversation's first k messages (and of its prompt for the next reply)
 *     are a prefix of the tokens of any continuation of it, so the next turn of a chat finds
 *     the earlier turns in the cache, block for block.
 *
 * How: the template is rendered once with the real contents and once more with a placeholder
 * in place of each content (a byte string no template writes), which shows where every
 * content lies in the rendering (the template may insert it as written or trimmed; any other
 * change to a content is refused). The conversation's prefixes are rendered with placeholders
 * too: where the rendering of the first k messages is a prefix of the whole one, the text is
 * cut there, and each piece is tokenized as a text of its own (model_tokenize_chat()). A
 * template whose rendering of k messages is not a prefix of that of k+1 (one that treats the
 * last message apart) is simply not cut there: its tokens are still right, only less of them
 * are shared.
 *
 * Cost: rendering the conversation's prefixes is O(n^2) in the number of messages n (on short
 * placeholder texts): measured on the 2-core Xeon under a load average of ~14 with the Qwen2.5
 * and Llama 3.1 templates, 0.3 ms for 10 messages, 25-50 ms for 100, 3-3.7 s for 1,000 (a libuv
 * worker's time, not the engine's); callers bound n (MODEL_CHAT_MAX_MESSAGES).
 */
#ifndef PREFIXD_CHAT_PROMPT_H
#define PREFIXD_CHAT_PROMPT_H

#include <stddef.h>
#include <stdint.h>

#include "chat_template.h"
#include "model.h"

/* The most messages a conversation may hold (the prefixes' renderings grow as n^2). */
#define MODEL_CHAT_MAX_MESSAGES 1024

typedef struct model_chat_msg {
    const char *role; /* "system", "user", "assistant", ... as the template knows them */
    size_t role_len;
    const char *content; /* UTF-8 */
    size_t content_len;
} model_chat_msg;

/* Renders the n messages msgs with template t (the generation prompt added when gen is set)
 * and tokenizes the rendering with tok as the top of this file says. BOS: as the template
 * writes it (bos_token); a vocabulary that adds BOS to its texts gets it first if the
 * rendering does not start with it (as llama.cpp does). *ids: malloc'd, *n_ids of them (the
 * caller frees). cut_ids (NULL, or n + 1 entries): cut_ids[k] receives the number of ids that
 * the first k messages alone tokenize to (the prompt for the next reply at k = n with gen),
 * or 0 where the template allows no cut. Any thread; t and tok are read-only.
 * Returns 0, MODEL_EINVAL with msg (no messages; the template raised, e.g. "roles must
 * alternate"; the template changes a content beyond trimming it), MODEL_ERANGE (over the
 * template's caps, or more than MODEL_CHAT_MAX_MESSAGES) or MODEL_ENOMEM. */
int model_chat_prompt(const model_chat_template *t, const model_tokenizer *tok,
                      const model_chat_msg *msgs, size_t n, int gen, int32_t **ids, size_t *n_ids,
                      size_t *cut_ids, char *msg, size_t msglen);

/* The rendering itself (as model_chat_prompt() tokenizes it): *text malloc'd, NUL-terminated,
 * *len bytes. Returns as model_chat_prompt(). */
int model_chat_render(const model_chat_template *t, const model_tokenizer *tok,
                      const model_chat_msg *msgs, size_t n, int gen, char **text, size_t *len,
                      char *msg, size_t msglen);

#endif
