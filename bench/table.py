#!/usr/bin/env python3
"""Markdown tables from the JSON lines of bench/compare.sh.

    bench/table.py bench/results/20261126T160000Z.jsonl [more.jsonl ...]

One row per measurement: streams, RSS per idle stream, deliveries/s,
latency, losses, and CPU per delivery of the server under test and of the
load generator (beside it, so that a saturated generator is not mistaken for
a server's limit). Storm runs and chat runs get a table of their own; the
chat's adds the events published by kind, Redis's CPU per event published
and per second while nothing is published (the servers' background work,
which the former includes), its connections and the growth of its memory (the history kept), the
server's RSS, and how far the publishers fell behind their schedule. HTTP/2
runs (bench/tls.sh) name the connections their streams share. The curves of
bench/curves.sh get a table of their own, by curve and point: the server's
CPU per event and per delivery, RSS per stream, and the channels it
subscribes in Redis against those its streams hold.
"""
import json
import sys


def rows(paths):
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            if r.get("result"):
                yield r


def main(paths):
    runs = list(rows(paths))
    curves = [r for r in runs if "curve" in r]
    runs = [r for r in runs if "curve" not in r]
    chats = [r for r in runs if r["result"].get("scenario") == "chat"]
    runs = [r for r in runs if r["result"].get("scenario") != "chat"]
    if runs:
        main_table(runs)
    if chats:
        chat_table(chats)
    if curves:
        curves_table(curves)


def main_table(runs):
    print("| round | system | load | streams | RSS/stream KiB | deliveries/s | p50 ms | p99 ms | lost | dup "
          "| server CPU µs/delivery | generator CPU µs/delivery | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        x = r["result"]
        system = r["system"] + (f' ({r["h2_connections"]} conns)' if r.get("h2_connections") else "")
        print(f'| {r["round"]} | {system} | {r["load"]} | {x["connected"]:,} | {x.get("rss_per_stream_kib", 0):.1f} '
              f'| {x["deliveries_per_s"]:,.0f} | {x["p50_ms"]:,.0f} | {x["p99_ms"]:,.0f} | {x["lost"]:,} | {x["duplicated"]:,} '
              f'| {x.get("server_cpu_us_per_delivery", 0):.2f} | {x.get("bench_cpu_us_per_delivery", 0):.2f} | {r.get("loadavg", "")} |')
    storms = [r for r in runs if r["result"].get("storm")]
    if storms:
        storm_table(storms)


def storm_table(storms):
    print()
    print("| streams | resumed | every event once | resets | last live s | refusals (status: count) | unexpected "
          "| RSS before → peak MiB | Redis cmd/s before / during / peak | Redis CPU s | commands during the storm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in storms:
        x, s = r["result"], r["result"]["storm"]
        refused = ", ".join(f"{k}: {v}" for k, v in sorted(s.get("refused", {}).items())) or "none"
        cmds = ", ".join(f"{k} {v:,}" for k, v in sorted(s["redis_commands"].items(), key=lambda kv: -kv[1]))
        print(f'| {x["connected"]:,} | {s["resumed"]:,} | {s["intact"]:,} | {s["resets"]} | {s["last_live_seconds"]:.2f} '
              f'| {refused} | {s["unexpected_refusals"]} | {s.get("rss_before_kib", 0) // 1024} → {s.get("rss_peak_kib", 0) // 1024} '
              f'| {s["redis_baseline_commands_per_s"]:,.0f} / {s["redis_commands_per_s"]:,.0f} / {s["redis_peak_commands_per_s"]:,.0f} | {s.get("redis_cpu_seconds", 0):.2f} | {cmds} |')



def chat_table(chats):
    print()
    print("| round | system | streams | events direct / room / broadcast | deliveries/s | p50 ms | p99 ms | lost | dup | stray "
          "| server CPU µs/delivery | Redis CPU µs/event | Redis idle CPU ms/s | Redis conns | Redis memory +MiB | RSS idle → end MiB | RSS/stream KiB "
          "| generator CPU µs/delivery | publish lag max ms | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in chats:
        x = r["result"]
        p = x.get("published", {})
        print(f'| {r["round"]} | {r["system"]} | {x["connected"]:,} | {p.get("direct", 0):,} / {p.get("room", 0):,} / {p.get("broadcast", 0):,} '
              f'| {x["deliveries_per_s"]:,.0f} | {x["p50_ms"]:,.1f} | {x["p99_ms"]:,.1f} | {x["lost"]:,} | {x["duplicated"]:,} | {x.get("stray", 0):,} '
              f'| {x.get("server_cpu_us_per_delivery", 0):.2f} | {x.get("redis_cpu_us_per_event", 0):.1f} | {x.get("redis_idle_cpu_ms_per_s", 0):.1f} | {x.get("redis_connections", 0)} '
              f'| {x.get("redis_memory_growth_kib", 0) / 1024:,.1f} | {x.get("rss_idle_kib", 0) // 1024} → {x.get("rss_end_kib", 0) // 1024} '
              f'| {x.get("rss_per_stream_kib", 0):.1f} | {x.get("bench_cpu_us_per_delivery", 0):.2f} | {x.get("publish_lag_max_ms", 0):,.1f} '
              f'| {r.get("loadavg", "")} |')


def curves_table(runs):
    print()
    print("| round | curve | x | streams | rooms | events | events/s | deliveries | lost | dup | stray | p50 ms | p99 ms "
          "| server CPU µs/event | server CPU µs/delivery | RSS/stream KiB | Redis pub/sub channels | distinct channels "
          "| publish lag max ms | generator CPU µs/delivery | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        x = r["result"]
        rooms = f'{x["rooms"]:,}' if x.get("rooms") else ""
        print(f'| {r["round"]} | {r["curve"]} | {r["x"]:,} | {x["connected"]:,} | {rooms} | {x["events"]:,} | {x["rate"]:,.1f} '
              f'| {x["received"]:,} of {x["expected"]:,} | {x["lost"]:,} | {x["duplicated"]:,} | {x.get("stray", 0):,} '
              f'| {x["p50_ms"]:,.1f} | {x["p99_ms"]:,.1f} | {x.get("server_cpu_us_per_event", 0):,.1f} '
              f'| {x.get("server_cpu_us_per_delivery", 0):.2f} | {x.get("rss_per_stream_kib", 0):.1f} '
              f'| {x.get("redis_pubsub_channels", 0):,} | {x.get("distinct_channels", 0):,} | {x.get("publish_lag_max_ms", 0):,.1f} '
              f'| {x.get("bench_cpu_us_per_delivery", 0):.2f} | {r.get("loadavg", "")} |')


if __name__ == "__main__":
    main(sys.argv[1:])
