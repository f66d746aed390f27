#!/usr/bin/env python3
"""Integration tests of CHAT: a real `prefixd serve` renders chat messages with the model's
template (model/chat_prompt.c) and answers as it answers GENERATE. The model is stories260K's
GGUF given a ChatML template and two of its byte tokens renamed to <|im_start|> and <|im_end|>
control tokens (gguf_edit.py), context 512 as the model was trained.

usage: test_chatproto.py PREFIXD MODELS_DIR CLIENT_DIR CASE   (PREFIXCTL in the environment)
       test_chatproto.py PREFIXD MODELS_DIR CLIENT_DIR --list
"""

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile

PREFIXD, MODELS, CLIENT_DIR, CASE = sys.argv[1:5]
PREFIXCTL = os.environ.get("PREFIXCTL", "")
sys.path.insert(0, CLIENT_DIR)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402
import gguf_edit  # noqa: E402
import prefixd  # noqa: E402

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")
SYSTEM = "You tell short stories to children."


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def chat_model(template=CHATML):
    """stories260K as GGUF with a chat template and ChatML's two control tokens."""
    path = os.path.join(tempfile.mkdtemp(), "chat.gguf")
    gguf_edit.edit(os.path.join(MODELS, "stories260K-f32.gguf"), path, template,
                   [(4, "<|im_start|>"), (5, "<|im_end|>")], [("llama.context_length", 512)])
    return path


class Daemon(daemon.Daemon):
    def __init__(self, *extra, model=None, tok=None):
        tmp = tempfile.mkdtemp(prefix="prefixd-it-")
        super().__init__(PREFIXD, model or chat_model(), tok, "--disk-dir",
                         os.path.join(tmp, "disk"), *extra, tmp=tmp)

    def client(self):
        return prefixd.Client(self.sock)

    def stop(self, *a):
        """Stops the daemon: exit 0 and no sanitizer report (the ASan build's leaks show here)."""
        rc = super().stop(*a)
        log = self.logtext()
        check(rc == 0 and "Sanitizer" not in log and "runtime error" not in log,
              "daemon exit %s:\n%s" % (rc, log[-3000:]))
        return rc


def error_of(fn):
    try:
        fn()
    except prefixd.PrefixdError as e:
        return e
    raise AssertionError("no error")


def case_basic():
    """A chat is answered with tokens and DONE; the capability says CHAT; the prompt is the
    rendering's tokens (BOS, the template's control tokens, the contents)."""
    d = Daemon()
    with d.client() as c:
        check(c.has_chat(), "HELLO_OK has no CHAT capability: %r" % c.server)
        r = c.chat([{"role": "user", "content": "Once upon a time"}], system=SYSTEM, max_new=12,
                   temp=0)
        check(r["finish_reason"] in ("length", "stop") and r["text"], r)
        text = ("<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\nOnce upon a time<|im_end|>\n"
                "<|im_start|>assistant\n" % SYSTEM)
        # Tokenized as text (TOKENIZE matches no control token), each marker is several tokens.
        check(r["prompt_tokens"] < len(c.tokenize(text)) - 10, (r, len(c.tokenize(text))))
        # Greedy is deterministic; a second run finds the prompt in the cache.
        r2 = c.chat([{"role": "user", "content": "Once upon a time"}], system=SYSTEM,
                    max_new=12, temp=0)
        check(r2["text"] == r["text"] and r2["cached_tokens"] > 0, (r, r2))
    d.stop()


def case_contents_stay_text():
    """A user's "<|im_end|>" is characters, not the control token: the prompt grows by the
    tokens of those characters, not by one."""
    d = Daemon()
    with d.client() as c:
        a = c.chat([{"role": "user", "content": "Hi"}], max_new=1, temp=0)
        b = c.chat([{"role": "user", "content": "Hi<|im_end|>"}], max_new=1, temp=0)
        as_text = len(c.tokenize("<|im_end|>")) - 1  # without BOS
        check(as_text >= 5, as_text)
        check(b["prompt_tokens"] - a["prompt_tokens"] >= as_text - 1, (a, b, as_text))
    d.stop()


def case_errors():
    """Each bad CHAT gets an ERROR naming the problem; the connection goes on."""
    d = Daemon("--max-text", "4096")
    with d.client() as c:
        e = error_of(lambda: c.chat([]))
        check(e.name == "BAD_REQUEST" and "at least one message" in e.message, e)
        e = error_of(lambda: c.chat([{"role": "wizard", "content": "x"}]))
        check(e.name == "BAD_REQUEST" and "messages[0].role 'wizard'" in e.message, e)
        e = error_of(lambda: c.chat([{"role": "user", "content": "ok"},
                                     {"role": "user", "content": b"caf\xc3"}]))
        check(e.name == "BAD_UTF8" and "messages[1].content" in e.message, e)
        e = error_of(lambda: c.chat([{"role": "user", "content": "x"}], system=b"\xff"))
        check(e.name == "BAD_UTF8" and "system" in e.message, e)
        e = error_of(lambda: c.chat([{"role": "user", "content": "x" * 5000}]))
        check(e.name == "BAD_REQUEST" and "--max-text" in e.message, e)
        e = error_of(lambda: c.chat([{"role": "user", "content": "a b " * 1000}], max_new=1))
        check(e.name == "PROMPT_TOO_LONG", e)
        e = error_of(lambda: c.chat([{"role": "user", "content": "x"}] * 1025))
        check(e.name == "BAD_REQUEST" and "at most 1024" in e.message, e)
        # Unknown flag bits.
        rid = c._new_id()
        c.sock.sendall(prefixd.encode_frame(prefixd.CHAT, rid, prefixd.encode_chat(
            rid, [("user", "x")])[12:], flags=1))
        f = c._reply(rid)
        check(f["type"] == prefixd.ERROR and f["code"] == 5 and "flag" in f["message"], f)
        # A truncated message list.
        body = prefixd.encode_chat(rid, [("user", "x")])[12:-5]
        c.sock.sendall(prefixd.encode_frame(prefixd.CHAT, rid + 1, body))
        f = c._reply(rid + 1)
        check(f["type"] == prefixd.ERROR and f["code"] == 1, f)
        # Still fine after all that.
        r = c.chat([{"role": "user", "content": "Hi"}], max_new=2, temp=0)
        check(r["prompt_tokens"] > 0, r)
    d.stop()


def case_template_refuses():
    """A template that raises for a conversation: BAD_REQUEST with the template's message."""
    tpl = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role "
           "not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    d = Daemon(model=chat_model(tpl))
    with d.client() as c:
        e = error_of(lambda: c.chat([{"role": "user", "content": "x"}], system="Be brief."))
        check(e.name == "BAD_REQUEST" and "System role not supported" in e.message, e)
    d.stop()
    # No family's markers: rendered as written, with a warning naming the override.
    log = d.logtext()
    check("not one of the known families" in log and "--chat-template NAME" in log, log[-2000:])


def case_no_template():
    """A model without a template: no CHAT capability, and CHAT gets NO_TEMPLATE naming the
    fix; GENERATE works as ever."""
    d = Daemon(model=os.path.join(MODELS, "stories260K.bin"),
               tok=os.path.join(MODELS, "tok512.bin"))
    with d.client() as c:
        check(not c.has_chat(), c.server)
        e = error_of(lambda: c.chat([{"role": "user", "content": "x"}]))
        check(e.name == "NO_TEMPLATE" and "no chat template" in e.message and
              "--chat-template" in e.message, e)
        check(c.generate("Once", max_new=2, temp=0)["prompt_tokens"] > 0, "generate")
    d.stop()


def case_chat_template_option():
    """A model without a template (ChatML's control tokens, no tokenizer.chat_template): CHAT
    answers NO_TEMPLATE naming --chat-template; served with --chat-template chatml it answers
    with the built-in ChatML rendering: the ids `prefixd chat-template --chat-template chatml
    --ids` prints, as GENERATE of those ids answers, and as a daemon serving the same format as
    the model's own template answers."""
    bare = chat_model(template=None)
    msgs = [{"role": "user", "content": "Once upon a time"}]
    d = Daemon(model=bare)
    with d.client() as c:
        check(not c.has_chat(), c.server)
        e = error_of(lambda: c.chat(msgs))
        check(e.name == "NO_TEMPLATE" and "--chat-template" in e.message and
              "chatml" in e.message, e)
    d.stop()
    # The ids the CLI renders the system prompt and message to.
    mfile = os.path.join(tempfile.mkdtemp(), "m.json")
    json.dump([{"role": "system", "content": SYSTEM}] + msgs, open(mfile, "w"))
    cli = subprocess.run([PREFIXD, "chat-template", "--model", bare, "--chat-template", "chatml",
                          "--messages", mfile, "--add-generation-prompt", "--ids"],
                         capture_output=True, text=True, timeout=60)
    check(cli.returncode == 0, cli.stderr)
    ids = [int(x) for x in cli.stdout.split()]
    d = Daemon("--chat-template", "chatml", "--http", "127.0.0.1:0", model=bare)
    with d.client() as c:
        check(c.has_chat(), c.server)
        r = c.chat(msgs, system=SYSTEM, max_new=12, temp=0)
        g = c.generate(ids=ids, max_new=12, temp=0)
        check(r["prompt_tokens"] == len(ids) and r["text"] == g["text"], (r, g, ids))
    # /v1/chat/completions renders with it too (not the role-prefixed fallback).
    status, h = http_chat(http_base(d), {"messages": [{"role": "system", "content": SYSTEM}] +
                                         msgs, "max_tokens": 12, "temperature": 0})
    check(status == 200 and h["usage"]["prompt_tokens"] == len(ids) and
          h["choices"][0]["message"]["content"] == r["text"], (status, h, r))
    d.stop()
    check("family chatml" in d.logtext(), d.logtext()[-2000:])
    d = Daemon()  # the same format as the model's own template
    with d.client() as c:
        r2 = c.chat(msgs, system=SYSTEM, max_new=12, temp=0)
        check(r2["prompt_tokens"] == r["prompt_tokens"] and r2["text"] == r["text"], (r, r2))
    d.stop()


def case_chat_template_bad():
    """An unknown name, a missing file, a directory and a template that does not parse: exit 2
    at start with the reason, before the model loads."""
    bad = os.path.join(tempfile.mkdtemp(), "bad.jinja")
    open(bad, "w").write("{% if %}")
    for arg, want in (("llama9", "neither a template family"),
                      ("/nonexistent/t.jinja", "neither a template family"),
                      ("/", "Is a directory"), (bad, "does not parse")):
        p = subprocess.run([PREFIXD, "serve", "--model", chat_model(template=None),
                            "--socket", os.path.join(tempfile.mkdtemp(), "s"),
                            "--disk-dir", "none", "--chat-template", arg],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 2 and want in p.stderr and "--chat-template" in p.stderr,
              (arg, p.returncode, p.stderr))


def ten_turns(c, max_new=12):
    """A 10-turn greedy chat; returns the per-turn results."""
    conv, out = [], []
    for turn in range(10):
        conv.append({"role": "user", "content": "And then, part %d?" % (turn + 1)})
        r = c.chat(conv, system=SYSTEM, max_new=max_new, temp=0)
        out.append(r)
        conv.append({"role": "assistant", "content": r["text"]})
    return out


def case_hit_ratio():
    """A 10-turn chat through the daemon: each turn's prompt holds the last turn's prompt and
    reply as a token prefix, so the cache serves all but the last partial block and the new
    messages. Prints the ratio (README: "Chat through the daemon")."""
    d = Daemon("--block-tokens", "16")
    with d.client() as c:
        rs = ten_turns(c)
    d.stop()
    later = rs[1:]
    ratio = sum(r["cached_tokens"] for r in later) / sum(r["prompt_tokens"] for r in later)
    for i, r in enumerate(rs):
        print("turn %d: prompt %d, cached %d" % (i + 1, r["prompt_tokens"], r["cached_tokens"]))
    print("hit ratio of turns 2-10: %.3f" % ratio)
    # Every later turn finds at least the previous turn's whole prompt (in full blocks).
    for prev, r in zip(rs, later):
        check(r["cached_tokens"] >= prev["prompt_tokens"] // 16 * 16, (prev, r))
    check(ratio >= 0.75, ratio)


def prefixctl(sock, *args, stdin=None):
    return subprocess.run([PREFIXCTL, "--socket", sock] + list(args), input=stdin,
                          capture_output=True, text=True, timeout=60)


def case_prefixctl_message():
    """prefixctl chat --message: one turn rendered by the daemon, the same prompt and greedy
    reply as the Python client's; a model without a template is refused by name."""
    d = Daemon()
    p = prefixctl(d.sock, "chat", "--system", SYSTEM, "--message", "Once upon a time",
                  "--message", "assistant:there was a fox.", "--message", "user:And then?",
                  "-n", "8", "--temp", "0", "--json")
    check(p.returncode == 0, p.stderr)
    got = json.loads(p.stdout)
    with d.client() as c:
        want = c.chat([{"role": "user", "content": "Once upon a time"},
                       {"role": "assistant", "content": "there was a fox."},
                       {"role": "user", "content": "And then?"}], system=SYSTEM, max_new=8,
                      temp=0)
    check(got["prompt_tokens"] == want["prompt_tokens"] and got["text"] == want["text"],
          (got, want))
    d.stop()
    d = Daemon(model=os.path.join(MODELS, "stories260K.bin"),
               tok=os.path.join(MODELS, "tok512.bin"))
    p = prefixctl(d.sock, "chat", "--message", "Hi")
    check(p.returncode == 2 and "no chat template" in p.stderr, (p.returncode, p.stderr))
    d.stop()


def case_prefixctl_chat_uses_template():
    """Interactive prefixctl chat (lines on a pipe) sends CHAT when the model has a template:
    the first turn's prompt is the template's rendering (the Python client's count), and the
    second turn finds the first in the cache."""
    d = Daemon()
    p = prefixctl(d.sock, "chat", "--system", SYSTEM, "-n", "8", "--temp", "0",
                  stdin="Once upon a time\nAnd then?\n")
    check(p.returncode == 0, p.stderr)
    import re
    turns = re.findall(r"\[turn (\d+): prompt (\d+) tokens, cached (\d+)", p.stderr)
    check(len(turns) == 2, p.stderr)
    with d.client() as c:
        want = c.chat([{"role": "user", "content": "Once upon a time"}], system=SYSTEM,
                      max_new=8, temp=0)
    check(int(turns[0][1]) == want["prompt_tokens"], (turns, want))
    check(int(turns[1][2]) > 0 and int(turns[1][1]) > int(turns[0][1]), turns)
    d.stop()


def http_base(d):
    import time
    for _ in range(200):
        for line in d.logtext().splitlines():
            if "HTTP API on " in line:
                return line.split("HTTP API on ")[1].split()[0]
        time.sleep(0.05)
    raise AssertionError("no 'HTTP API on' line in the log: %s" % d.logtext())


def http_chat(base, body):
    import http.client
    import urllib.parse
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.request("POST", "/v1/chat/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    out = r.status, json.loads(r.read())
    c.close()
    return out


def case_http_chat_uses_template():
    """/v1/chat/completions renders through the same path as CHAT when the model has a
    template: the same prompt tokens and greedy reply ("developer" is the system role), and a
    conversation the template refuses is a 400 naming why."""
    d = Daemon("--http", "127.0.0.1:0")
    base = http_base(d)
    msgs = [{"role": "user", "content": "Once upon a time"}]
    for sys_role in ("system", "developer"):
        status, r = http_chat(base, {"messages": [{"role": sys_role, "content": SYSTEM}] + msgs,
                                     "max_tokens": 8, "temperature": 0})
        check(status == 200, r)
        with d.client() as c:
            want = c.chat(msgs, system=SYSTEM, max_new=8, temp=0)
        check(r["usage"]["prompt_tokens"] == want["prompt_tokens"] and
              r["choices"][0]["message"]["content"] == want["text"], (r, want))
    d.stop()
    tpl = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role "
           "not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    d = Daemon("--http", "127.0.0.1:0", model=chat_model(tpl))
    status, r = http_chat(http_base(d), {"messages": [{"role": "system", "content": "x"}] + msgs,
                                         "max_tokens": 2})
    check(status == 400 and "System role not supported" in r["error"]["message"], (status, r))
    d.stop()


if __name__ == "__main__":
    daemon.run_cases(daemon.cases_of(globals()), CASE, "prefixd-chatproto-")
