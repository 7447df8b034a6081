#!/usr/bin/env python3
"""Helpers of benches/centrifugo.sh.

  summarize.py sample OUT PID...   every 100 ms, one line to OUT: CLOCK_MONOTONIC ns, then per PID
                                   utime+stime (seconds) and RssAnon (KiB); runs until SIGTERM.
  summarize.py report RATE SAMPLES NAMES OUT A.json[,B.json] [KEY=VALUE ...]
                                   combines the loadgen reports (one per loadgen process) and the
                                   samples (NAMES: comma-separated names of the sampled PIDs, in
                                   order) into OUT.json and OUT.txt; KEY=VALUE pairs are recorded.

With two loadgen processes both publish at the same time; their publish phases (publishing and
draining) are bounded by start_mono_ns/end_mono_ns in their reports. CPU is taken over the union of
the phases, from the samples, and divided by all publishes (so it covers the API request on one
node, Redis, and the delivery on the other).
"""
import json
import os
import signal
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def proc_sample(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)
    rss_anon = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                rss_anon = int(line.split()[1])
    return cpu, rss_anon


def sample(out, pids):
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    with open(out, "w") as f:
        while running:
            parts = [str(time.monotonic_ns())]
            try:
                for pid in pids:
                    cpu, rss = proc_sample(pid)
                    parts += [f"{cpu:.2f}", str(rss)]
            except (FileNotFoundError, ProcessLookupError):
                break
            f.write(" ".join(parts) + "\n")
            f.flush()
            time.sleep(0.1)


def load_samples(path):
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            rows.append((int(parts[0]), [float(x) for x in parts[1::2]], [int(x) for x in parts[2::2]]))
    return rows


def at(rows, t, index):
    """CPU seconds of process `index` at time t, linearly interpolated between samples."""
    before = max((r for r in rows if r[0] <= t), key=lambda r: r[0], default=rows[0])
    after = min((r for r in rows if r[0] >= t), key=lambda r: r[0], default=rows[-1])
    if after[0] == before[0]:
        return before[1][index]
    share = (t - before[0]) / (after[0] - before[0])
    return before[1][index] + share * (after[1][index] - before[1][index])


def us(ns):
    return f"{ns / 1000:,.0f} µs"


def report(rate, samples_path, names, out, paths, extra):
    out_json, out_txt = out + ".json", out + ".txt"
    runs = []
    for path in paths:
        with open(path) as f:
            text = f.read().strip()
        if not text:
            sys.exit(f"{path} is empty: that loadgen failed (see its .log)")
        runs.append(json.loads(text))
    rows = load_samples(samples_path)
    names = names.split(",")
    pubs = [r["publish"] for r in runs]
    start = min(p["start_mono_ns"] for p in pubs)
    end = max(p["end_mono_ns"] for p in pubs)
    published = sum(p["published"] for p in pubs)
    window = (end - start) / 1e9
    cpu = {name: at(rows, end, i) - at(rows, start, i) for i, name in enumerate(names)}
    result = {
        "publish_rate_target": rate,
        "window_secs": window,
        "published": published,
        "publish_errors": sum(p["publish_errors"] for p in pubs),
        "publish_rate": sum(p["publish_rate"] for p in pubs),
        "lost": sum(p["lost"] for p in pubs),
        "duplicated": sum(p["duplicated"] for p in pubs),
        "reordered": sum(p["reordered"] for p in pubs),
        "unexpected": sum(p["unexpected"] for p in pubs),
        "closed_by_server": sum(p["closed_by_server"] for p in pubs),
        "connections": sum(r["connect"]["opened"] for r in runs),
        "cpu_secs": cpu,
        "cpu_us_per_publish": {n: c * 1e6 / max(published, 1) for n, c in cpu.items()},
        "cpu_share_of_window": {n: c / window for n, c in cpu.items()},
        "per_node": [],
    }
    result.update(extra)
    for i, r in enumerate(runs):
        idle = r.get("idle", {})
        result["per_node"].append(
            {
                "url": r["url"],
                "connections": r["connect"]["opened"],
                "handshakes_per_sec": r["connect"]["handshakes_per_sec"],
                "server_bytes_per_conn": idle.get("server_bytes_per_conn"),
                "kernel_slab_bytes_per_conn": idle.get("kernel_slab_bytes_per_conn"),
                "warmup_missing": idle.get("warmup_missing"),
                "latency_p50_ns": pubs[i]["latency_p50_ns"],
                "latency_p99_ns": pubs[i]["latency_p99_ns"],
                "latency_p999_ns": pubs[i]["latency_p999_ns"],
                "latency_max_ns": pubs[i]["latency_max_ns"],
                "admin_request_p50_ns": pubs[i]["admin_request_p50_ns"],
                "admin_request_p99_ns": pubs[i]["admin_request_p99_ns"],
                "published": pubs[i]["published"],
                "publish_rate": pubs[i]["publish_rate"],
                "max_schedule_lag_ns": pubs[i]["max_schedule_lag_ns"],
                "anomalies": r["anomalies"],
            }
        )
    with open(out_json, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    server = "Centrifugo v6.9.1, Redis engine" if extra.get("server") == "centrifugo" else "wspushd --redis"
    shape = (
        "half the clients on each node, publishing through the node the user is NOT on"
        if len(runs) == 2
        else "all clients on node 1, every publish through node 2"
    )
    lines = [
        f"{server}, 2 nodes, {result['connections']:,} connections ({shape}); publish target {rate:,}/s to random users",
        f"published {published:,} at {result['publish_rate']:,.0f}/s (errors {result['publish_errors']}); "
        f"lost {result['lost']}, duplicated {result['duplicated']}, reordered {result['reordered']}, "
        f"unexpected {result['unexpected']}, closed by server {result['closed_by_server']}",
    ]
    for i, node in enumerate(result["per_node"]):
        mem = node["server_bytes_per_conn"]
        lines.append(
            f"clients of node {i + 1} ({node['connections']:,}): publish→delivery p50 {us(node['latency_p50_ns'])}, "
            f"p99 {us(node['latency_p99_ns'])}, p99.9 {us(node['latency_p999_ns'])}, max {us(node['latency_max_ns'])}; "
            f"API request p50 {us(node['admin_request_p50_ns'])}, p99 {us(node['admin_request_p99_ns'])}; "
            f"handshakes {node['handshakes_per_sec']:,.0f}/s; node RssAnon "
            + (f"{mem:,.0f} B/conn" if mem is not None else "n/a")
        )
    lines.append(
        f"CPU over the {window:.1f} s publish window (publishing + draining), per publish: "
        + ", ".join(f"{n} {result['cpu_us_per_publish'][n]:.1f} µs ({result['cpu_share_of_window'][n] * 100:.0f}% of a core)" for n in names)
    )
    lines.append(
        f"client (both loadgens, whole run incl. connect) {extra.get('loadgen_cpu_secs_whole_run', '?')} CPU-s; "
        f"{extra.get('admin_conns_per_loadgen', '?')} API connections per loadgen; load average at the end "
        f"{extra.get('load_average', '?')}"
    )
    with open(out_txt, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "sample":
        sample(sys.argv[2], [int(p) for p in sys.argv[3:]])
    elif len(sys.argv) >= 7 and sys.argv[1] == "report":
        extra = dict(kv.split("=", 1) for kv in sys.argv[7:])
        report(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6].split(","), extra)
    else:
        sys.exit(__doc__)
