#!/usr/bin/env python3
"""Integration tests of `prefixctl chat` in a real terminal: a tmux pane of fixed size on a
private tmux server (-S, its socket in the case's folder), driven with send-keys and read with capture-pane, against a real
`prefixd serve` with stories260K (context 512, so the context fills in a few turns).

usage: test_chat.py PREFIXD MODELS_DIR CASE   (PREFIXCTL in the environment)
       test_chat.py PREFIXD MODELS_DIR --list  (the cases: the case_* functions)
Every tmux server a case starts is killed when the case ends, passed or failed.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

PREFIXD, MODELS, CASE = sys.argv[1:4]
PREFIXCTL = os.environ.get("PREFIXCTL", "")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon  # noqa: E402

MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.bin")
SYSTEM = ("Once upon a time, in a small town by the sea, there lived a kind old man who "
          "told stories to the children every night.")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Daemon(daemon.Daemon):
    def __init__(self, disk, sock=None, tmp=None, model=MODEL, tok=TOK):
        super().__init__(PREFIXD, model, tok, "--disk-dir", disk, sock=sock, tmp=tmp)

    def stats(self):
        p = subprocess.run([PREFIXCTL, "--socket", self.sock, "stats", "--json"],
                           capture_output=True, text=True, timeout=30)
        check(p.returncode == 0, "prefixctl stats: %s" % p.stderr)
        return json.loads(p.stdout)


_terms = []  # every Term not closed yet


class Term:
    """One tmux server of our own (a private socket) with one 120x50 pane running cmd.
    When cmd ends the pane prints EXIT=<code> and stays, so its last words can be read."""

    def __init__(self, cmd, home):
        if not shutil.which("tmux"):
            raise AssertionError("tmux is not installed (scripts/deps --test installs it)")
        # The server's socket lives in the case's scratch folder (tempfile.tempdir), private
        # to this case and removed with it; tmux -L would leave a file in /tmp/tmux-UID.
        self.sock = os.path.join(tempfile.mkdtemp(), "tmux.sock")
        shell = "env HOME=%s %s; echo EXIT=$?; sleep 600" % (
            shlex.quote(home), " ".join(shlex.quote(a) for a in cmd))
        _terms.append(self)
        self.tmux("new-session", "-d", "-x", "120", "-y", "50", shell)
        self.tmux("set-option", "-g", "history-limit", "20000")

    def tmux(self, *args):
        p = subprocess.run(["tmux", "-f", "/dev/null", "-S", self.sock] + list(args),
                           capture_output=True, text=True, timeout=20)
        check(p.returncode == 0, "tmux %s: %s" % (" ".join(args), p.stderr))
        return p.stdout

    def keys(self, *keys):
        self.tmux("send-keys", *keys)

    def line(self, text):
        """Types text literally (-l: no key names) and presses Enter."""
        self.tmux("send-keys", "-l", text)
        self.tmux("send-keys", "Enter")

    def text(self):
        """The whole pane, history included, wrapped lines joined."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-")

    def wait(self, what, timeout=30, after=0):
        """Waits until the pane's text from offset `after` matches the regex what; returns the
        match (the offset is in the whole text)."""
        deadline = time.time() + timeout
        while True:
            t = self.text()
            m = re.compile(what).search(t, after)
            if m:
                return m
            if time.time() > deadline:
                raise AssertionError("waited %d s for /%s/ in the pane:\n%s" % (timeout, what, t))
            time.sleep(0.05)

    def close(self):
        subprocess.run(["tmux", "-S", self.sock, "kill-server"], capture_output=True, timeout=20)
        if self in _terms:
            _terms.remove(self)


def chat(d, home, *args):
    return Term([PREFIXCTL, "--socket", d.sock, "chat"] + list(args), home)


def saved(term, path, after=0):
    """Runs /save path and returns the file's JSON."""
    term.line("/save " + path)
    term.wait(r"\[saved \d+ messages \(\d+ tokens\) to '%s'\]" % re.escape(path), after=after)
    with open(path) as f:
        return json.load(f)


def turn_done(term, n, after=0, timeout=60):
    return term.wait(r"\[turn %d: prompt (\d+) tokens, cached (\d+)" % n, timeout, after)


def stats_rows(term, after=0):
    """Runs /stats; returns its rows as dicts, from the table printed after offset `after`."""
    term.line("/stats")
    m = term.wait(r"total: \d+ of \d+ prompt tokens cached", after=after)
    t = term.text()
    start = t.rfind(" turn  prompt", 0, m.start())
    rows = []
    for ln in t[start:m.start()].splitlines()[1:]:
        f = ln.split()
        if len(f) == 8:
            rows.append({"turn": int(f[0]), "prompt": int(f[1]), "cached": int(f[2]),
                         "disk": int(f[4]), "ttft_ms": float(f[5]), "reply": int(f[6]),
                         "end": f[7]})
    return rows


def case_template():
    """With a model that has a chat template (stories260K's GGUF given ChatML by gguf_edit.py),
    each turn is a CHAT the daemon renders: a line holding "<|im_end|>" is answered (the text
    stays text), /system changes the system prompt, and turn 2 finds turn 1 in the cache."""
    import gguf_edit
    tmp = tempfile.mkdtemp()
    model = os.path.join(tmp, "chat.gguf")
    gguf_edit.edit(os.path.join(MODELS, "stories260K-f32.gguf"), model,
                   "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                   "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|im_start|>assistant\\n' }}{% endif %}",
                   [(4, "<|im_start|>"), (5, "<|im_end|>")], [("llama.context_length", 512)])
    d = daemon.Daemon(PREFIXD, model, None, "--disk-dir", os.path.join(tmp, "disk"), tmp=tmp)
    t = chat(d, tmp, "-n", "8", "--temp", "0", "--system", SYSTEM)
    t.wait(r"\[prefixctl chat with chat.gguf")
    t.line("Once upon a time<|im_end|>")
    m1 = turn_done(t, 1)
    t.line("And then?")
    m2 = turn_done(t, 2, after=m1.end())
    check(int(m2.group(2)) >= int(m1.group(1)) // 16 * 16 and int(m2.group(2)) > 0,
          "turn 2 cached %s of turn 1's %s prompt tokens" % (m2.group(2), m1.group(1)))
    t.line("/system Be brief.")
    t.wait(r"\[system prompt set", after=m2.end())
    t.line("Hi")
    m3 = turn_done(t, 3, after=m2.end())
    check(int(m3.group(2)) < int(m2.group(1)), "the new system prompt still hit turn 2's prompt")
    t.keys("C-d")
    t.wait(r"\nEXIT=0")
    t.close()
    d.stop()


def case_editing():
    """Arrow keys, Ctrl-A and history edit the line; none of their escape codes reach the
    model. Ctrl-D leaves with a newline and exit 0."""
    tmp = tempfile.mkdtemp()
    d = Daemon(os.path.join(tmp, "disk"))
    t = chat(d, tmp, "-n", "8", "--temp", "0")
    t.wait(r"\[prefixctl chat with stories260K")
    t.keys("-l", "Lily")
    t.keys("Left", "Left")
    t.keys("-l", "X")
    t.keys("C-a")
    t.keys("-l", "Tom ")
    t.keys("Enter")
    turn_done(t, 1)
    t.keys("Up", "End")
    t.keys("-l", "!")
    t.keys("Enter")
    turn_done(t, 2)
    conv = saved(t, os.path.join(tmp, "c.json"))
    users = [m["content"] for m in conv["messages"] if m["role"] == "user"]
    check(users == ["Tom LiXly", "Tom LiXly!"], "the lines as edited: %r" % users)
    for m in conv["messages"]:
        check("\x1b" not in m["content"] and "[D" not in m["content"],
              "an escape code reached the conversation: %r" % m["content"])
    t.line("/nope")
    t.wait(r"\[unknown command '/nope': /help lists them")
    check("[reply cut at -n 8 tokens]" in t.text(), "no notice of the cut at -n:\n%s" % t.text())
    t.keys("C-d")
    t.wait(r"\nEXIT=0")
    check(not re.search(r"> *EXIT=", t.text()), "Ctrl-D left no newline:\n%s" % t.text())
    t.close()
    d.stop()


def case_cancel():
    """Ctrl-C in the middle of a long reply cancels that request (the daemon counts it), keeps
    the partial reply in the conversation marked, and returns to the prompt; the chat goes on. At
    the prompt, Ctrl-C discards the line and a second Ctrl-C leaves."""
    tmp = tempfile.mkdtemp()
    # The reply must outlast the Ctrl-C's way through tmux. stories260K ends its story by itself
    # after ~200 tokens, all written in a few tens of ms on a fast quiet machine (the Ctrl-C then
    # found the prompt), so this case runs a stories42M-shaped model of random weights: a few
    # hundred tokens/s, and its replies run to -n.
    model = os.path.join(tmp, "m42.bin")
    p = subprocess.run([PREFIXD, "synth", "--shape", "stories42M", "-o", model],
                       capture_output=True, text=True, timeout=300)
    check(p.returncode == 0, "prefixd synth: %s" % p.stderr)
    d = Daemon(os.path.join(tmp, "disk"), model=model, tok=model + ".tok")
    before = d.stats()["requests_cancelled"]
    # --context-policy stop: how long the partial reply is depends on the machine's speed, and a
    # long one would make the drop policy shorten turn 2's prompt; this case checks that the
    # partial reply is in it, whole (context_drop checks the drop).
    # -n 200: room for the Ctrl-C (a reply of 200 tokens takes ~0.5 s here, the pane is read
    # every 50 ms), and turn 2's whole reply stays short under the sanitizers.
    t = chat(d, tmp, "-n", "200", "--temp", "0", "--context-policy", "stop")
    t.wait(r"\[prefixctl chat")
    t.line("Once upon a time")
    t.wait(r"Once upon a time\n\s*\S(?:\s*\S){9}")  # the reply streams
    t.keys("C-c")
    m = t.wait(r"\[cancelled: the partial reply \((\d+) tokens\)", timeout=20)
    partial = int(m.group(1))
    check(0 < partial < 200, "partial reply of %d tokens" % partial)
    t.wait(r"\n> $|\n> \n", after=m.end())
    check(d.stats()["requests_cancelled"] >= before + 1, "the daemon counted no cancel")
    conv = saved(t, os.path.join(tmp, "c.json"), after=m.end())
    last = conv["messages"][-1]
    check(last["role"] == "assistant" and last["finish"] == "cancelled" and
          len(last["ids"]) == partial, "the partial reply in the conversation: %r" % last)
    # The chat goes on, with the partial reply in its prompt.
    t.line("Tom")
    m2 = t.wait(r"\[turn 2: prompt (\d+) tokens", timeout=60, after=m.end())
    msgs = saved(t, os.path.join(tmp, "c2.json"), after=m2.end())["messages"]
    want = 1 + sum(len(x["ids"]) for x in msgs[:3])
    check(int(m2.group(1)) == want,
          "turn 2's prompt is %s tokens, expected %d with the partial reply" % (m2.group(1), want))
    # Ctrl-C at the prompt: the typed line is dropped, the second Ctrl-C leaves.
    t.keys("-l", "abc")
    t.keys("C-c")
    h = t.wait(r"\[Ctrl-C again to leave", after=m2.end())
    t.keys("C-c")
    t.wait(r"\nEXIT=0", after=h.end())
    t.close()
    d.stop()


def case_save_restart_load():
    """/save, a daemon restart on the same disk dir, /load in a new chat: the next turn finds
    the conversation's prefix cached, from the disk tier, as /stats shows."""
    tmp = tempfile.mkdtemp()
    disk = os.path.join(tmp, "disk")
    d = Daemon(disk)
    t = chat(d, tmp, "-n", "40", "--temp", "0", "--system", SYSTEM)
    t.wait(r"\[prefixctl chat")
    t.line("Lily went to the park")
    turn_done(t, 1)
    t.line("Then she saw a dog")
    turn_done(t, 2)
    path = os.path.join(tmp, "conv.json")
    conv = saved(t, path)
    roles = [m["role"] for m in conv["messages"]]
    check(roles == ["system", "user", "assistant", "user", "assistant"], "roles %r" % roles)
    check(conv["messages"][0]["content"] == SYSTEM, "system prompt saved")
    check(all(isinstance(i, int) for m in conv["messages"] for i in m["ids"]), "ids saved")
    total = 1 + sum(len(m["ids"]) for m in conv["messages"])
    t.line("/exit")
    t.wait(r"\nEXIT=0")
    t.close()
    check(d.stop() == 0, "daemon exit")
    d2 = Daemon(disk, tmp=tempfile.mkdtemp())
    t = chat(d2, tmp, "-n", "40", "--temp", "0")
    t.wait(r"\[prefixctl chat")
    t.line("/load " + path)
    t.wait(r"\[loaded 5 messages \(%d tokens\)" % total)
    t.line("The end")
    turn_done(t, 1)
    rows = stats_rows(t)
    check(len(rows) == 1, "one turn in /stats: %r" % rows)
    r = rows[0]
    check(r["prompt"] > total, "the loaded conversation was sent: %r (saved %d)" % (r, total))
    full = total // 16 * 16
    check(r["cached"] >= full - 16 and r["cached"] > 0, "cached after /load: %r" % r)
    check(r["disk"] > 0, "nothing came from the disk tier after the restart: %r" % r)
    # A file that is not a saved chat is refused by name; the conversation stays.
    bad = os.path.join(tmp, "bad.json")
    with open(bad, "w") as f:
        f.write('{"messages": [{"role": "robot", "content": "x"}]}')
    t.line("/load " + bad)
    t.wait(r"\[/load: '%s': messages\[0\]: role 'robot'" % re.escape(bad))
    t.line("/load " + os.path.join(tmp, "missing.json"))
    t.wait(r"\[/load: cannot read '.*missing\.json': No such file")
    t.close()
    d2.stop()


def case_context_drop():
    """When the next turn would not fit, the oldest turns after the system prompt are dropped
    (and the user told); the system prompt stays first and stays cached. A reply cut by -n says
    so."""
    tmp = tempfile.mkdtemp()
    d = Daemon(os.path.join(tmp, "disk"))
    t = chat(d, tmp, "-n", "120", "--temp", "0", "--system", SYSTEM)
    t.wait(r"\[prefixctl chat")
    dropped = None
    for i in range(1, 12):
        t.line("Once upon a time")
        m = turn_done(t, i, timeout=90)
        dropped = re.search(r"\[context: dropped the (\d+) oldest turns? \((\d+) tokens\)",
                            t.text())
        if dropped:
            break
    check(dropped, "no turn was dropped in 11 turns:\n%s" % t.text())
    check("EXIT=" not in t.text(), "the chat ended at the context")
    check(int(m.group(1)) + 120 <= 512, "the prompt leaves room for -n: %s" % m.group(1))
    sys_tokens = 1 + len(saved(t, os.path.join(tmp, "c.json"))["messages"][0]["ids"])
    check(int(m.group(2)) >= sys_tokens // 16 * 16,
          "the system prompt is not cached after the drop: cached %s of its %d tokens" %
          (m.group(2), sys_tokens))
    conv = saved(t, os.path.join(tmp, "c2.json"))
    check(conv["messages"][0]["role"] == "system" and conv["messages"][0]["content"] == SYSTEM,
          "the system prompt stays first: %r" % conv["messages"][0])
    if "[reply cut at -n 120 tokens]" not in t.text():
        check(all(m["finish"] == "stop" for m in conv["messages"] if m["role"] == "assistant"),
              "a reply ended at -n without a notice")
    t.close()
    d.stop()


def case_context_stop():
    """--context-policy stop: nothing is dropped; a reply cut by the context says so, and the
    turn that no longer fits ends the chat (exit 2) as before."""
    tmp = tempfile.mkdtemp()
    d = Daemon(os.path.join(tmp, "disk"))
    t = chat(d, tmp, "-n", "200", "--temp", "0", "--context-policy", "stop")
    t.wait(r"\[prefixctl chat")
    for i in range(1, 20):
        t.line("Once upon a time")
        m = t.wait(r"\[turn %d: |EXIT=" % i, timeout=90)
        if m.group(0) == "EXIT=":
            break
    text = t.text()
    check("[context: dropped" not in text, "a turn was dropped under stop:\n%s" % text)
    check("[reply cut by the model's context (512 tokens)]" in text,
          "no notice of the reply cut by the context:\n%s" % text)
    t.wait(r"\nEXIT=2")
    text = t.text()
    check("[the conversation is full (--context-policy stop)" in text,
          "the end names the policy:\n%s" % text)
    t.close()
    d.stop()


def case_pipe():
    """stdin not a terminal: one line per turn as before (no prompt, no line editing, 'exit'
    is text); slash commands work too."""
    tmp = tempfile.mkdtemp()
    d = Daemon(os.path.join(tmp, "disk"))
    path = os.path.join(tmp, "p.json")
    lines = "Once upon a time\nexit\n/save %s\nLily\n" % path
    p = subprocess.run([PREFIXCTL, "--socket", d.sock, "chat", "-n", "6", "--temp", "0"],
                       input=lines, capture_output=True, text=True, timeout=60)
    check(p.returncode == 0, "exit %d: %s" % (p.returncode, p.stderr))
    check(not p.stdout.startswith(">") and "> " not in p.stdout, "a prompt on a pipe: %r" % p.stdout)
    check("\x1b" not in p.stdout, "escape codes on a pipe: %r" % p.stdout)
    for n in (1, 2, 3):
        check("[turn %d:" % n in p.stderr, "turn %d missing: %s" % (n, p.stderr))
    with open(path) as f:
        users = [m["content"] for m in json.load(f)["messages"] if m["role"] == "user"]
    check(users == ["Once upon a time", "exit"], "the lines sent: %r" % users)
    # The same turns, greedy, give the same replies twice.
    q = subprocess.run([PREFIXCTL, "--socket", d.sock, "chat", "-n", "6", "--temp", "0"],
                       input=lines, capture_output=True, text=True, timeout=60)
    check(q.stdout == p.stdout, "greedy chat differs: %r vs %r" % (p.stdout, q.stdout))
    d.stop()


def case_reconnect():
    """The daemon restarts between two turns: the next turn reconnects, resends the
    conversation (its prefix from the disk tier) and goes on."""
    tmp = tempfile.mkdtemp()
    disk = os.path.join(tmp, "disk")
    sock = os.path.join(tmp, "p.sock")
    d = Daemon(disk, sock=sock, tmp=tempfile.mkdtemp())
    t = chat(d, tmp, "-n", "40", "--temp", "0", "--system", SYSTEM)
    t.wait(r"\[prefixctl chat")
    t.line("Lily went to the park")
    turn_done(t, 1)
    check(d.stop() == 0, "daemon exit")
    d2 = Daemon(disk, sock=sock, tmp=tempfile.mkdtemp())
    t.line("Then she saw a dog")
    m = t.wait(r"\[reconnected\]")
    m = turn_done(t, 2, after=m.end())
    check(int(m.group(2)) >= 32, "the resent conversation missed the cache: %s" % m.group(0))
    t.line("/bye")
    t.wait(r"\nEXIT=0")
    t.close()
    d2.stop()
    # No daemon at all: the turn fails with a message after the retries, and the chat stays.
    d3 = Daemon(disk, sock=sock, tmp=tempfile.mkdtemp())
    t = chat(d3, tmp, "-n", "4", "--temp", "0")
    t.wait(r"\[prefixctl chat")
    d3.stop()
    t.line("Lily")
    t.wait(r"\[cannot reconnect: cannot connect to prefixd at", timeout=30)
    t.line("  exit ")  # alone on a line at a terminal: leaves (it is text from a pipe)
    t.wait(r"\nEXIT=0")
    t.close()


def close_terms():
    for term in list(_terms):
        term.close()


if __name__ == "__main__":
    if not PREFIXCTL and CASE != "--list":
        print("PREFIXCTL is not set", file=sys.stderr)
        sys.exit(2)
    daemon.run_cases(daemon.cases_of(globals()), CASE, "prefixd-it-chat-", close_terms)
