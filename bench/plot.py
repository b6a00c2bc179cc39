#!/usr/bin/python3
"""Plots for BENCHMARKS.md from the JSON lines of bench/compare.sh.

    /usr/bin/python3 bench/plot.py -o docs/images \
        --side-by-side bench/data/side-by-side-10k.jsonl --memory bench/data/memory-by-streams.jsonl

Draws:

- from the --side-by-side runs, latency-cdf.png: the latency CDF of every
  system, one panel per load (every round drawn, one colour per system),
  and cpu-per-delivery.png: CPU per delivery of the server and of the load
  generator, per system and load (the median over rounds);
- from the --memory runs (one compare.sh run over several N),
  memory-per-stream.png: RSS per idle stream against the number of
  streams, one line per system (the median over the runs at each size).

Needs Debian's matplotlib (apt-get install python3-matplotlib); plots are
not part of CI.
"""
import argparse
import json
import os
import statistics
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["limit", "bare", "ssebridge-redis", "ssebridge-http", "centrifugo"]
LABEL = {
    "limit": "single-writer limit",
    "bare": "bare net/http",
    "ssebridge-redis": "ssebridge (Redis PUBLISH)",
    "ssebridge-http": "ssebridge (POST /publish)",
    "centrifugo": "Centrifugo v6.9.1",
}


def load(paths):
    runs = []
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            if r.get("result"):
                runs.append(r)
    return runs


def systems(runs):
    seen = {r["system"] for r in runs}
    return [s for s in ORDER if s in seen] + sorted(seen - set(ORDER))


def colours(runs):
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {s: cycle[i % len(cycle)] for i, s in enumerate(systems(runs))}


def latency_cdf(runs, out):
    runs = [r for r in runs if r["result"].get("latency_quantiles_ms") and r["load"] != "storm"]
    if not runs:
        return
    n = max(r["result"]["connected"] for r in runs)
    runs = [r for r in runs if r["result"]["connected"] == n]
    loads = [ld for ld in ("moderate", "saturation") if any(r["load"] == ld for r in runs)]
    colour = colours(runs)
    fig, axes = plt.subplots(1, len(loads), figsize=(6 * len(loads), 4.5), squeeze=False)
    for ax, ld in zip(axes[0], loads):
        labelled = set()
        for r in sorted((r for r in runs if r["load"] == ld), key=lambda r: r["round"]):
            x = r["result"]
            q = x["latency_quantiles_ms"]
            y = [k / (len(q) - 1) for k in range(len(q))]
            s = r["system"]
            ax.plot(q, y, color=colour[s], linewidth=1.4, alpha=0.9,
                    label=None if s in labelled else LABEL.get(s, s))
            labelled.add(s)
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log)")
        ax.set_ylabel("fraction of deliveries")
        rate = next(r["result"]["rate"] for r in runs if r["load"] == ld)
        ax.set_title(f"{ld}: {n:,} streams, {rate:g} events/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency-cdf.png"), dpi=110)
    plt.close(fig)


def memory(runs, out):
    by = defaultdict(list)
    for r in runs:
        kib = r["result"].get("rss_per_stream_kib")
        if kib:
            by[(r["system"], r["result"]["connected"])].append(kib)
    sizes = {n for _, n in by}
    if len(sizes) < 2:
        return
    colour = colours(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in systems(runs):
        pts = sorted((n, statistics.median(v)) for (sys, n), v in by.items() if sys == s)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour[s], label=LABEL.get(s, s))
    ax.set_xlabel("open streams")
    ax.set_ylabel("RSS per idle stream, KiB")
    ax.set_ylim(bottom=0)
    ax.set_title("Memory per stream (idle, before publishing)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "memory-per-stream.png"), dpi=110)
    plt.close(fig)


def cpu(runs, out):
    runs = [r for r in runs if r["result"].get("server_cpu_us_per_delivery") and r["load"] in ("moderate", "saturation")]
    if not runs:
        return
    n = max(r["result"]["connected"] for r in runs)
    runs = [r for r in runs if r["result"]["connected"] == n]
    loads = [ld for ld in ("moderate", "saturation") if any(r["load"] == ld for r in runs)]
    names = systems(runs)
    fig, axes = plt.subplots(1, len(loads), figsize=(6 * len(loads), 4.5), squeeze=False)
    for ax, ld in zip(axes[0], loads):
        server, generator = [], []
        for s in names:
            sel = [r["result"] for r in runs if r["system"] == s and r["load"] == ld]
            server.append(statistics.median(x["server_cpu_us_per_delivery"] for x in sel) if sel else 0)
            generator.append(statistics.median(x["bench_cpu_us_per_delivery"] for x in sel) if sel else 0)
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], server, width=0.4, label="server under test")
        ax.bar([x + 0.2 for x in xs], generator, width=0.4, label="load generator", color="lightgray")
        ax.set_xticks(list(xs), [LABEL.get(s, s).replace(" (", "\n(") for s in names], fontsize=7)
        ax.set_ylabel("CPU µs per delivery")
        ax.set_title(f"{ld}: {n:,} streams")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cpu-per-delivery.png"), dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", default="docs/images", help="directory for the PNGs")
    p.add_argument("--side-by-side", nargs="*", default=[], help="JSON lines of compare.sh at one N")
    p.add_argument("--memory", nargs="*", default=[], help="JSON lines of compare.sh over several N")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    side = load(a.side_by_side)
    latency_cdf(side, a.out)
    cpu(side, a.out)
    memory(load(a.memory), a.out)


if __name__ == "__main__":
    main()
