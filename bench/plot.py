#!/usr/bin/python3
"""Plots for BENCHMARKS.md from the JSON lines of bench/compare.sh and bench/curves.sh.

    /usr/bin/python3 bench/plot.py -o docs/images \
        --side-by-side bench/data/side-by-side-10k.jsonl --memory bench/data/memory-by-streams.jsonl
    /usr/bin/python3 bench/plot.py -o docs/images --curves bench/results/<time>-curves.jsonl

Draws:

- from the --side-by-side runs, latency-cdf.png: the latency CDF of every
  system, one panel per load (every round drawn, one colour per system),
  and cpu-per-delivery.png: CPU per delivery of the server and of the load
  generator, per system and load (the median over rounds);
- from the --memory runs (one compare.sh run over several N),
  memory-per-stream.png: RSS per idle stream against the number of
  streams, one line per system (the median over the runs at each size);
- from the --curves runs (bench/curves.sh), a figure per curve present,
  each point the median over rounds and every round a dot:
  cost-by-streams.png (server CPU per delivery and RSS per idle stream
  against the streams), cost-by-rooms.png (server CPU per event published
  and per delivery against the rooms, the deliveries the same),
  cost-by-room-size.png (the same against the members of the one room)
  and pubsub-channels.png (the channels subscribed in Redis against those
  the streams hold, beside the line where they are equal).

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


def curve_points(runs, curve, key):
    """[(x, [value of key in each round])] of one curve, by x."""
    by = defaultdict(list)
    for r in runs:
        v = r["result"].get(key)
        if r.get("curve") == curve and v is not None:
            by[r["x"]].append(v)
    return sorted(by.items())


def draw(ax, runs, curve, key, label, **style):
    """The median of key at each x as a line, every round as a dot."""
    pts = curve_points(runs, curve, key)
    if not pts:
        return
    line, = ax.plot([x for x, _ in pts], [statistics.median(v) for _, v in pts], marker="o", label=label, **style)
    for x, v in pts:
        ax.scatter([x] * len(v), v, s=10, color=line.get_color(), alpha=0.4)


def cost_panels(runs, out, curve, name, xlabel, title, panels, logx=True):
    """A figure of one curve, a panel per [(key, label, style)…, ylabel, log y]."""
    if not curve_points(runs, curve, panels[0][0][0][0]):
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (lines, ylabel, logy) in zip(axes[0], panels):
        for key, label, style in lines:
            draw(ax, runs, curve, key, label, **style)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)


SERVER = {"color": "C0"}
GENERATOR = {"color": "gray", "linestyle": "--"}


def curve_figures(runs, out):
    """A figure per curve of bench/curves.sh present in runs."""
    def first(curve):
        return next((r["result"] for r in runs if r.get("curve") == curve), None)

    if first("streams"):
        x = first("streams")
        cost_panels(runs, out, "streams", "cost-by-streams.png", "open streams",
                    f'Cost against streams: broadcast, {x["events"]} events at {x["rate"]:g}/s', [
                        ([("server_cpu_us_per_delivery", "server", SERVER),
                          ("bench_cpu_us_per_delivery", "load generator", GENERATOR)], "CPU µs per delivery", False),
                        ([("rss_per_stream_kib", "server", SERVER)], "RSS per idle stream, KiB", False),
                    ], logx=False)
    if first("rooms"):
        x = first("rooms")
        cost_panels(runs, out, "rooms", "cost-by-rooms.png", "rooms (log)",
                    f'Cost against rooms: {x["streams"]:,} streams, each in one room; '
                    f'{x["expected"]:,} deliveries over {x.get("seconds", 0):g} s', [
                        ([("server_cpu_us_per_event", "server", SERVER)], "CPU µs per event published (log)", True),
                        ([("server_cpu_us_per_delivery", "server", SERVER),
                          ("bench_cpu_us_per_delivery", "load generator", GENERATOR)], "CPU µs per delivery", False),
                    ])
    if first("room-size"):
        x = first("room-size")
        cost_panels(runs, out, "room-size", "cost-by-room-size.png", "members of the room (log)",
                    f'Cost of a room event against its members: events evenly over {x.get("seconds", 0):g} s', [
                        ([("server_cpu_us_per_event", "server", SERVER)], "CPU µs per event published (log)", True),
                        ([("server_cpu_us_per_delivery", "server", SERVER),
                          ("bench_cpu_us_per_delivery", "load generator", GENERATOR)], "CPU µs per delivery", False),
                    ])
    channels(runs, out)


def channels(runs, out):
    """Channels subscribed in Redis against those the streams hold."""
    pts = [(r["result"]["distinct_channels"], r["result"]["redis_pubsub_channels"], r["x"])
           for r in runs if r.get("curve") == "channels" and r["result"].get("distinct_channels")]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = max(max(held, subscribed) for held, subscribed, _ in pts)
    ax.plot([0, top], [0, top], color="lightgray", linestyle="--", label="as many as the streams hold")
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="C0", zorder=3, label="subscribed in Redis (PUBSUB CHANNELS)")
    for held, subscribed, n in sorted(set(pts)):
        ax.annotate(f"{n:,} streams: {subscribed - held:+,}", (held, subscribed), textcoords="offset points",
                    xytext=(6, -12), fontsize=8)
    ax.set_xlabel("distinct channels the streams hold (users, rooms, broadcast)")
    ax.set_ylabel("Redis pub/sub channels of the instance")
    ax.set_xlim(0, top * 1.2)
    ax.set_ylim(bottom=0)
    ax.set_title("Pub/sub channels per instance (chat layout, idle)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "pubsub-channels.png"), dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", default="docs/images", help="directory for the PNGs")
    p.add_argument("--side-by-side", nargs="*", default=[], help="JSON lines of compare.sh at one N")
    p.add_argument("--memory", nargs="*", default=[], help="JSON lines of compare.sh over several N")
    p.add_argument("--curves", nargs="*", default=[], help="JSON lines of curves.sh")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    side = load(a.side_by_side)
    latency_cdf(side, a.out)
    cpu(side, a.out)
    memory(load(a.memory), a.out)
    curve_figures(load(a.curves), a.out)


if __name__ == "__main__":
    main()
