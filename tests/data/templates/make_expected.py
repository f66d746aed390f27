#!/usr/bin/env python3
"""Renders each chat template in this folder with Python's jinja2 as Hugging Face's
apply_chat_template does (trim_blocks, lstrip_blocks, raise_exception, tojson with
ensure_ascii=False) for the message lists in messages.json, and writes the outputs to
expected/NAME.CASE.txt (or NAME.CASE.error when the template raises). test_template.c checks
prefixd's own interpreter against these files byte for byte. Run it again after changing
messages.json: python3 tests/data/templates/make_expected.py

With --families it instead checks the built-in family templates in families/ (NAME.jinja, as
prefixd holds them) against the hand-written renderings of their published formats
(NAME.txt) and exits 1 on any difference; it writes nothing there."""
import json, os, sys
import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

here = os.path.dirname(os.path.abspath(__file__))
tokens = {
    "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "Qwen-Qwen2.5-7B-Instruct": ("", "<|im_end|>"),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
    "google-gemma-2-2b-it": ("<bos>", "<eos>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
    "HuggingFaceTB-SmolLM3-3B": ("", "<|im_end|>"),
    "ibm-granite-granite-3.3-2B-Instruct": ("", "<|end_of_text|>"),
}

def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)

def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                    extensions=[jinja2.ext.loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
if sys.argv[1:] == ["--families"]:
    fam = os.path.join(here, "families")
    ftok = {"llama2": ("<s>", "</s>"), "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
            "chatml": ("", "<|im_end|>"), "phi3": ("<s>", "<|endoftext|>"),
            "gemma": ("<bos>", "<eos>"), "zephyr": ("<s>", "</s>"),
            "deepseek": ("<\uff5cbegin\u2581of\u2581sentence\uff5c>",
                         "<\uff5cend\u2581of\u2581sentence\uff5c>"),
            "granite": ("", "<|end_of_text|>")}
    ftok["deepseek3"] = ftok["deepseek"]
    for v in ("v1", "v3", "v3-tekken", "v7", "v7-tekken"):
        ftok["mistral-" + v] = ("<s>", "</s>")
    msgs = json.load(open(os.path.join(fam, "messages.json"), encoding="utf-8"))
    bad = 0
    for name, (bos, eos) in sorted(ftok.items()):
        tpl = env.from_string(open(os.path.join(fam, name + ".jinja"), encoding="utf-8").read())
        got = tpl.render(messages=msgs, bos_token=bos, eos_token=eos, add_generation_prompt=True)
        want = open(os.path.join(fam, name + ".txt"), encoding="utf-8", newline="").read()
        print(name, "ok" if got == want else "DIFFERS")
        bad += got != want
    sys.exit(1 if bad else 0)
cases = json.load(open(os.path.join(here, "messages.json"), encoding="utf-8"))
out = os.path.join(here, "expected")
os.makedirs(out, exist_ok=True)
for name, (bos, eos) in sorted(tokens.items()):
    tpl = env.from_string(open(os.path.join(here, name + ".jinja"), encoding="utf-8").read())
    for case, spec in sorted(cases.items()):
        if name.startswith("ibm-granite") and not any(m["role"] == "system"
                                                        for m in spec["messages"]):
            continue  # its default system prompt holds today's date (strftime_now)
        base = os.path.join(out, f"{name}.{case}")
        for ext in (".txt", ".error"):
            if os.path.exists(base + ext):
                os.remove(base + ext)
        try:
            text = tpl.render(messages=spec["messages"], bos_token=bos, eos_token=eos,
                              add_generation_prompt=spec["add_generation_prompt"],
                              **spec.get("vars", {}))
            open(base + ".txt", "w", encoding="utf-8", newline="").write(text)
        except jinja2.exceptions.TemplateError as e:
            open(base + ".error", "w", encoding="utf-8").write(str(e) + "\n")
