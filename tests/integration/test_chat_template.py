#!/usr/bin/env python3
"""Integration tests of `prefixd chat-template`: rendering a family's built-in template, a
model's own or an override, the family line on stderr, the warning for a template of no known
family, --segments and --show-template, and the errors.

usage: test_chat_template.py PREFIXD MODELS_DIR TEMPLATES_DIR CASE
       test_chat_template.py PREFIXD MODELS_DIR TEMPLATES_DIR --list
Exit 0 and "1 passed, 0 failed" on success.
"""

import json
import os
import subprocess
import sys
import tempfile

PREFIXD, MODELS, TEMPLATES, CASE = sys.argv[1:5]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402

FAM = os.path.join(TEMPLATES, "families")
MESSAGES = os.path.join(FAM, "messages.json")
VOCAB = os.path.join(MODELS, "vocab", "ggml-vocab-gpt-2.gguf")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def run(*args):
    p = subprocess.run([PREFIXD, "chat-template"] + list(args), capture_output=True, timeout=30)
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8")


def case_families():
    """Every family renders its published format (families/NAME.txt) and names itself."""
    names = [f[:-4] for f in sorted(os.listdir(FAM)) if f.endswith(".txt")]
    check(len(names) == 14, "families: %s" % names)
    for name in names:
        rc, out, err = run("--chat-template", name, "--messages", MESSAGES,
                           "--add-generation-prompt")
        want = open(os.path.join(FAM, name + ".txt"), encoding="utf-8", newline="").read()
        check(rc == 0 and out == want, "%s: rc %d\n%s\n%s" % (name, rc, out, err))
        check("chat template family: %s (" % name in err, "%s: %s" % (name, err))
        rc, out, _ = run("--chat-template", name, "--show-template")
        want = open(os.path.join(FAM, name + ".jinja"), encoding="utf-8").read()
        check(rc == 0 and out == want, "%s --show-template" % name)


def case_real_template():
    """A real template by file: recognised, rendered as jinja2 does."""
    tpl = os.path.join(TEMPLATES, "Qwen-Qwen2.5-7B-Instruct.jinja")
    rc, out, err = run("--chat-template", tpl, "--messages", MESSAGES, "--quiet")
    check(rc == 0 and out.startswith("<|im_start|>system\nYou are a helpful assistant<|im_end|>"),
          out)
    check(err == "", "--quiet printed: %s" % err)
    rc, _, err = run("--template", tpl, "--messages", MESSAGES)
    check(rc == 0 and "chat template family: chatml" in err, err)


def case_model():
    """--model: a vocabulary without a template is refused naming --chat-template; with it, the
    vocabulary's EOS text is the eos_token."""
    rc, out, err = run("--model", VOCAB, "--messages", MESSAGES)
    check(rc == 2 and "carries no chat template" in err and "--chat-template NAME" in err, err)
    rc, out, err = run("--model", VOCAB, "--chat-template", "zephyr", "--messages", MESSAGES)
    check(rc == 0 and "<|system|>\nYou are a helpful assistant<|endoftext|>\n" in out, out + err)


def case_ids():
    """--ids: the template's EOS text is the EOS token, the same text in a content is not."""
    d = tempfile.mkdtemp()
    path = os.path.join(d, "m.json")
    json.dump([{"role": "user", "content": "a <|endoftext|>"}], open(path, "w"))
    rc, out, err = run("--model", VOCAB, "--chat-template", "zephyr", "--messages", path, "--ids")
    check(rc == 0, err)
    ids = [int(x) for x in out.split()]
    check(ids.count(50256) == 1, out)
    rc, _, err = run("--chat-template", "zephyr", "--messages", path, "--ids")
    check(rc == 2 and "--ids needs --model" in err, err)


def case_unrecognised():
    """A template of no known family renders as written, with a warning naming the override."""
    d = tempfile.mkdtemp()
    path = os.path.join(d, "odd.jinja")
    open(path, "w").write("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    rc, out, err = run("--chat-template", path, "--messages", MESSAGES)
    check(rc == 0 and out.startswith("system: You are a helpful assistant\nuser: Hello\n"), out)
    check("not one of the known families" in err and "--chat-template NAME" in err, err)


def case_segments():
    """--segments: one line per segment; together they are the rendering, contents marked, turn
    ends numbered; a content holding a special token's text stays content."""
    d = tempfile.mkdtemp()
    path = os.path.join(d, "m.json")
    msgs = [{"role": "user", "content": "hi <|eot_id|>"}, {"role": "assistant", "content": "yo"}]
    json.dump(msgs, open(path, "w"))
    rc, whole, _ = run("--chat-template", "llama3", "--messages", path)
    rc2, out, err = run("--chat-template", "llama3", "--messages", path, "--segments")
    check(rc == 0 and rc2 == 0, err)
    lines = [ln.split(" ", 2) for ln in out.splitlines()]
    check("".join(json.loads(t) for _, _, t in lines) == whole, out)
    contents = [json.loads(t) for k, _, t in lines if k == "content"]
    check(contents == ["hi <|eot_id|>", "yo"], contents)
    turns = [int(n) for _, n, _ in lines if n != "0"]
    check(turns == [1, 2], out)


def case_errors():
    """A name that is no family nor file, no source, a missing messages file, bad JSON."""
    rc, _, err = run("--chat-template", "llama9", "--messages", MESSAGES)
    check(rc == 2 and "'llama9' is neither a template family (llama2, llama3" in err, err)
    rc, _, err = run("--messages", MESSAGES)
    check(rc == 2 and "usage:" in err, err)
    rc, _, err = run("--chat-template", "chatml", "--messages", "/nonexistent/m.json")
    check(rc == 2 and "cannot read messages '/nonexistent/m.json'" in err, err)
    d = tempfile.mkdtemp()
    path = os.path.join(d, "bad.json")
    open(path, "w").write("[{\"role\": ")
    rc, _, err = run("--chat-template", "chatml", "--messages", path)
    check(rc == 2 and "not valid JSON" in err, err)


if __name__ == "__main__":
    daemon.run_cases(daemon.cases_of(globals()), CASE, "prefixd-it-")
