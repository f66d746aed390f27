#!/usr/bin/env python3
"""The TTFT table from the rows `prefixctl bench` wrote (bench/ttft_modes.sh collects them).

usage: bench/ttft_table.py RESULTS_DIR
Reads RESULTS_DIR/ttft.csv; writes RESULTS_DIR/summary.json (medians over runs, per mode and
workload, and the targets met or missed), RESULTS_DIR/table.md (the tables for the README), and
the data files the plots read (sweep.dat, cdf_<mode>.dat). Prints table.md.

Every figure is a median over runs (a run = one seed) of that run's statistic, so one slow run
on a shared machine moves it little.
"""
import csv
import json
import os
import statistics
import sys
from collections import defaultdict

MODES = ["no-cache", "ram", "disk", "restart"]
MODE_TEXT = {
    "no-cache": "sharing off (`--no-cache`)",
    "ram": "RAM cache",
    "disk": "disk tier, RAM for 4 of 6 system prompts",
    "restart": "after a restart (disk warm)",
}


def pct(v, q):
    """Percentile q of v, linear between the closest ranks (as prefixctl bench computes it)."""
    v = sorted(v)
    if not v:
        return None
    pos = q / 100 * (len(v) - 1)
    lo = int(pos)
    if lo + 1 >= len(v):
        return v[-1]
    return v[lo] + (v[lo + 1] - v[lo]) * (pos - lo)


def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def by_seed(rows):
    out = defaultdict(list)
    for r in rows:
        out[r["seed"]].append(r)
    return out


def summarize(rows):
    """Medians over runs of each run's p50/p95/p99 TTFT, hit ratio and the like."""
    runs = by_seed(rows)
    hits = [r for r in rows if r["cached_tokens"] > 0]
    disk = [r for r in rows if r["cached_tokens_disk"] > 0]
    s = {
        "runs": len(runs),
        "requests": len(rows),
        "ttft_p50_ms": med([pct([r["ttft_ms"] for r in rs], 50) for rs in runs.values()]),
        "ttft_p95_ms": med([pct([r["ttft_ms"] for r in rs], 95) for rs in runs.values()]),
        "ttft_p99_ms": med([pct([r["ttft_ms"] for r in rs], 99) for rs in runs.values()]),
        "ttft_mean_ms": med([statistics.mean(r["ttft_ms"] for r in rs) for rs in runs.values()]),
        "hit_ratio": sum(r["cached_tokens"] for r in rows) / max(1, sum(r["prompt_tokens"]
                                                                     for r in rows)),
        "disk_hit_ratio": sum(r["cached_tokens_disk"] for r in rows)
        / max(1, sum(r["prompt_tokens"] for r in rows)),
        "requests_hit": len(hits),
        "requests_missed": len(rows) - len(hits),
        "requests_hit_disk": len(disk),
        "prompt_tokens_mean": statistics.mean(r["prompt_tokens"] for r in rows),
    }
    if disk:
        s["disk_hit_ttft_p50_ms"] = med([pct([r["ttft_ms"] for r in rs
                                              if r["cached_tokens_disk"] > 0], 50)
                                         for rs in runs.values()])
    return s


def fmt(x, unit=""):
    if x is None:
        return "n/a"
    if unit == "%":
        return "%.1f%%" % (100 * x)
    return ("%.0f" % x if x >= 100 else "%.1f" % x) + unit


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
    rows = []
    with open(os.path.join(d, "ttft.csv"), newline="") as f:
        for r in csv.DictReader(f):
            for k in ("run", "seed", "client", "conversation", "turn", "prompt_tokens",
                      "cached_tokens", "cached_tokens_disk", "new_tokens"):
                r[k] = int(r[k])
            for k in ("ttft_ms", "server_ttft_ms", "prefill_ms", "total_ms"):
                r[k] = float(r[k])
            rows.append(r)
    modes = [m for m in MODES if any(r["label"] == m for r in rows)]
    modes += sorted({r["label"] for r in rows} - set(modes))
    sel = defaultdict(list)
    for r in rows:
        sel[(r["label"], r["workload"])].append(r)

    summary = {"modes": {}, "chat_by_turn": {}, "sweep": [], "targets": []}
    for m in modes:
        summary["modes"][m] = {w: summarize(sel[(m, w)]) for w in ("chat", "fewshot", "unique")
                               if sel[(m, w)]}
        turns = defaultdict(list)
        for r in sel[(m, "chat")]:
            turns[r["turn"]].append(r)
        summary["chat_by_turn"][m] = {t: summarize(rs) for t, rs in sorted(turns.items())}

    # Sweep: TTFT against prompt length, uncached (step 1) and with a cached prefix (step 2).
    sw = defaultdict(list)
    for m in modes:
        for r in sel[(m, "sweep")]:
            sw[(r["prompt_tokens"], r["turn"])].append(r["ttft_ms"])
    for L in sorted({k[0] for k in sw}):
        summary["sweep"].append({"prompt_tokens": L, "uncached_ms": med(sw[(L, 1)]),
                                 "cached_prefix_ms": med(sw[(L, 2)])})
    with open(os.path.join(d, "sweep.dat"), "w") as f:
        f.write("# prompt_tokens uncached_ms cached_prefix_ms (medians over runs)\n")
        for s in summary["sweep"]:
            f.write("%d %.3f %.3f\n" % (s["prompt_tokens"], s["uncached_ms"] or 0,
                                        s["cached_prefix_ms"] or 0))
    # TTFT distribution of the chat workload, per mode (all runs pooled).
    for m in modes:
        v = sorted(r["ttft_ms"] for r in sel[(m, "chat")])
        with open(os.path.join(d, "cdf_%s.dat" % m), "w") as f:
            f.write("# ttft_ms fraction_of_requests (chat, %s, %d requests)\n" % (m, len(v)))
            for i, x in enumerate(v):
                f.write("%.3f %.5f\n" % (x, (i + 1) / len(v)))

    # Targets.
    M = summary["modes"]

    def get(m, w, k):
        return M.get(m, {}).get(w, {}).get(k)

    def target(name, value, ok, note):
        summary["targets"].append({"target": name, "value": value, "met": ok, "note": note})

    ram = get("ram", "chat", "ttft_p50_ms")
    nc = get("no-cache", "chat", "ttft_p50_ms")
    if ram is not None:
        target("chat cached TTFT p50 <= 80 ms", ram, ram <= 80, "%s ms" % fmt(ram))
    if ram is not None and nc:
        target("chat cached TTFT <= 5% of uncached", ram / nc, ram / nc <= 0.05,
               "%s / %s ms = %s" % (fmt(ram), fmt(nc), fmt(ram / nc, "%")))
    one = [x for x in summary["sweep"] if x["uncached_ms"] and x["cached_prefix_ms"]]
    if one:
        x = min(one, key=lambda x: abs(x["prompt_tokens"] - 1540))
        c, un = x["cached_prefix_ms"], x["uncached_ms"]
        target("1 client, %d-token prompt: cached <= 80 ms and <= 5%% of uncached"
               % x["prompt_tokens"], c, c <= 80 and c / un <= 0.05,
               "%s / %s ms = %s" % (fmt(c), fmt(un), fmt(c / un, "%")))
    rs = get("restart", "chat", "ttft_p50_ms")
    if rs is not None:
        dk = get("restart", "chat", "disk_hit_ttft_p50_ms")
        worst = max(rs, dk or 0)
        target("after a restart, TTFT p50 <= 150 ms", worst, worst <= 150,
               "all turns %s ms; turns served from disk %s ms" % (fmt(rs), fmt(dk)))
    if get("disk", "chat", "requests") is not None:
        miss = get("disk", "chat", "requests_missed")
        target("working set > RAM: every chat turn hits (RAM or disk)", miss, miss == 0,
               "%d of %d missed; %d with blocks from disk" % (
                   miss, get("disk", "chat", "requests"), get("disk", "chat",
                                                               "requests_hit_disk")))
    u, un = get("ram", "unique", "ttft_p50_ms"), get("no-cache", "unique", "ttft_p50_ms")
    if u is not None and un:
        target("nothing shared: within 3% of --no-cache", u / un - 1, abs(u / un - 1) <= 0.03,
               "%s vs %s ms: %+.1f%%" % (fmt(u), fmt(un), 100 * (u / un - 1)))

    # table.md
    runs = max((s["runs"] for m in M.values() for s in m.values()), default=0)
    out = []
    meta_path = os.path.join(d, "meta.json")
    if os.path.exists(meta_path):
        meta = json.load(open(meta_path))
        summary["meta"] = meta
        out.append("Measured %s at commit %s, %s, %s CPUs, load average %s at the start and %s "
                   "at the end." % (meta.get("started", "?"), meta.get("commit", "?"),
                                    meta.get("model", "?"), meta.get("cpus", "?"),
                                    meta.get("load_average_start", "?"),
                                    meta.get("load_average_end", "?")))
        out.append("")
    out.append("Client-side TTFT, median over %d run(s) of each run's p50 (or p95)." % runs)
    out.append("")
    out.append("| mode | chat p50 | chat p95 | chat hits (disk) | few-shot p50 | unique p50 |")
    out.append("| --- | --- | --- | --- | --- | --- |")
    for m in modes:
        c = M[m].get("chat", {})
        out.append("| %s | %s ms | %s ms | %s (%s) | %s ms | %s ms |" % (
            MODE_TEXT.get(m, m), fmt(c.get("ttft_p50_ms")), fmt(c.get("ttft_p95_ms")),
            fmt(c.get("hit_ratio"), "%"), fmt(c.get("disk_hit_ratio"), "%"),
            fmt(get(m, "fewshot", "ttft_p50_ms")), fmt(get(m, "unique", "ttft_p50_ms"))))
    out.append("")
    out.append("Chat TTFT p50 by turn (ms):")
    out.append("")
    out.append("| turn | prompt tokens | " + " | ".join(modes) + " |")
    out.append("| --- | --- | " + " | ".join("---" for _ in modes) + " |")
    all_turns = sorted({t for m in modes for t in summary["chat_by_turn"][m]})
    for t in all_turns:
        pt = next((summary["chat_by_turn"][m][t]["prompt_tokens_mean"] for m in modes
                   if t in summary["chat_by_turn"][m]), None)
        out.append("| %d | %s | %s |" % (t, fmt(pt), " | ".join(
            fmt(summary["chat_by_turn"][m].get(t, {}).get("ttft_p50_ms")) for m in modes)))
    if summary["sweep"]:
        out.append("")
        out.append("TTFT against prompt length (ms; cached: all but the last 40 tokens cached):")
        out.append("")
        out.append("| prompt tokens | " + " | ".join(str(s["prompt_tokens"])
                                                  for s in summary["sweep"]) + " |")
        out.append("| --- | " + " | ".join("---" for _ in summary["sweep"]) + " |")
        out.append("| uncached | " + " | ".join(fmt(s["uncached_ms"])
                                               for s in summary["sweep"]) + " |")
        out.append("| cached prefix | " + " | ".join(fmt(s["cached_prefix_ms"])
                                                    for s in summary["sweep"]) + " |")
    if summary["targets"]:
        out.append("")
        out.append("| target | measured | met |")
        out.append("| --- | --- | --- |")
        for t in summary["targets"]:
            out.append("| %s | %s | %s |" % (t["target"], t["note"], "yes" if t["met"] else "no"))
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    text = "\n".join(out) + "\n"
    with open(os.path.join(d, "table.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
