// openai_client.js — drives prefixd's HTTP API with the official `openai` Node.js package, as
// users' tools do. Used by test_http.py (and bench/bench_http.py), which installs the package and
// sets NODE_PATH.
//
// usage: node openai_client.js '<json>'   (or the JSON on stdin) where json is a list of operations:
//   {"base_url": URL, "api_key": KEY, "op": "chat"|"completion", "params": {...},
//    "abort_after": N (streams: abort after N chunks)}
// Prints one JSON list: per operation {ok: true, text, finish_reason, usage, chunks, id, object,
// ttft_ms, logprobs (chat: the content entries, streamed ones joined)} or {ok: false, status, error, retry_after, name, message}.
'use strict';
const OpenAI = require('openai');

async function runOne(spec) {
  const client = new OpenAI({baseURL: spec.base_url, apiKey: spec.api_key || 'none',
                             maxRetries: 0, timeout: 60000});
  const api = spec.op === 'chat' ? client.chat.completions : client.completions;
  const t0 = performance.now();
  try {
    if (!spec.params.stream) {
      const r = await api.create(spec.params);
      const c = r.choices[0];
      return {ok: true, id: r.id, object: r.object, finish_reason: c.finish_reason,
              text: spec.op === 'chat' ? c.message.content : c.text, usage: r.usage,
              prefixd: r.prefixd, logprobs: c.logprobs, wall_ms: performance.now() - t0};
    }
    const stream = await api.create(spec.params);
    let text = '', finish = null, usage = null, chunks = 0, ttft = null, objects = new Set();
    let logprobs = null;
    for await (const chunk of stream) {
      chunks++;
      objects.add(chunk.object);
      if (chunk.usage)
        usage = chunk.usage;
      for (const c of chunk.choices) {
        const piece = spec.op === 'chat' ? (c.delta.content || '') : (c.text || '');
        if (piece && ttft === null)
          ttft = performance.now() - t0;
        text += piece;
        if (c.logprobs && c.logprobs.content)
          logprobs = (logprobs || []).concat(c.logprobs.content);
        if (c.finish_reason)
          finish = c.finish_reason;
      }
      if (spec.abort_after && chunks >= spec.abort_after) {
        stream.controller.abort();
        break;
      }
    }
    return {ok: true, text, finish_reason: finish, usage, chunks, ttft_ms: ttft, logprobs,
            objects: [...objects], wall_ms: performance.now() - t0};
  } catch (e) {
    if (e instanceof OpenAI.APIError)
      return {ok: false, status: e.status, error: e.error || null, name: e.constructor.name,
              message: e.message,
              retry_after: e.headers ? (e.headers['retry-after'] || null) : null};
    return {ok: false, status: null, name: e.constructor.name, message: String(e)};
  }
}

(async () => {
  let text = process.argv[2];
  if (text === undefined) {
    text = '';
    for await (const chunk of process.stdin)
      text += chunk;
  }
  const specs = JSON.parse(text);
  const out = [];
  for (const s of specs)
    out.push(await runOne(s));
  process.stdout.write(JSON.stringify(out) + '\n');
})();
