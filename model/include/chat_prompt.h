/* chat_prompt.h — a conversation as the model's prompt tokens: rendered with the model's chat
 * template, then tokenized so that
 *   - the template's own markers ("<|im_start|>", "<|eot_id|>", "[INST]" where it is a control
 *     token) become their control tokens, and the messages' contents never do: a user's text
 *     containing "<|eot_id|>" stays those characters, so no one can forge a turn;
 *   - the tokens of a conversation's first k messages (and of its prompt for the next reply)
 *     are a prefix of the tokens of any continuation of it, so the next turn of a chat finds
 *     the earlier turns in the cache, block for block.
 *
 * How: model_chat_template_render_segments() renders the conversation, finds where each content
 * lies (rendering once more with a placeholder for each: the template may insert a content as
 * written or trimmed; any other change is refused) and where the rendering of the first k
 * messages ends (the turn ends, where the template keeps earlier turns as they were), and
 * model_chat_tokenize() encodes the segments one after the other, template text with its
 * control tokens matched and contents without. A template whose rendering of k messages is not
 * a prefix of that of k+1 (one that treats the last message apart) is simply not cut there:
 * its tokens are still right, only less of them are shared.
 *
 * Cost: the turn ends take a rendering of each prefix of the conversation (of placeholders, so
 * not of the contents' length), O(n^2) in the number of messages n on short texts: measured with
 * the Qwen2.5 template (`bench_tokenizer tests/data chat`, CPU time, median of 5), 11 ms for 100
 * messages, 1.1 s for 1,000 (a libuv worker's time, not the engine's; memory stays that of one
 * rendering, its chunks reused from prefix to prefix); callers bound n (MODEL_CHAT_MAX_MESSAGES).
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
