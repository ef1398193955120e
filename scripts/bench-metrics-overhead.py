#!/usr/bin/env python3
"""Metrics overhead benchmark (issue 14), written to results/metrics-overhead.md
and results/metrics-overhead.json.

    scripts/bench-metrics-overhead.py [--runs 3] [--windows 6] [--window-s 5] [--scale-partitions 10000]

Throughput: each of --runs sessions starts a fresh release broker
(target/release/shardlog, or SHARDLOG_BIN; temp data dir, free 127.0.0.1
port, one shard per core, metrics.listen on a free port) and runs --windows
shardlog-bench produce runs (SHAPE below) of --window-s back to back,
alternating between nothing reading the metrics endpoint ("not scraped") and
a client fetching /metrics every second ("scraped", as Prometheus at a 1 s
interval). This host's device throughput drifts by tens of percent between
minutes, so the overhead is the median ratio of adjacent windows, not a ratio
of medians.

Scale: a broker with --scale-partitions partitions (one topic, written once
by a warm-up produce so every partition has data and series) is scraped 10
times, one second apart: the page's size and how long a scrape took (first
byte sent to last byte read), median and max.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import benchlib  # noqa: E402

REPO = benchlib.REPO
SHAPE = ["--record-bytes", "1024", "--batch-bytes", "16384", "--partitions", "12", "--producers", "2",
         "--inflight", "4", "--acks", "1"]
LOOPBACK_MB_S = 3270  # shared/PERFORMANCE.md: loopback TCP, 1 stream


def scrape(port):
    """(bytes, seconds) of one GET /metrics."""
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        body = r.read()
        assert r.status == 200
    return len(body), time.monotonic() - started


def cpu_per_scrape(broker, port):
    """(page bytes, scrape ms median, scrape ms max, broker CPU ms per scrape):
    the broker's CPU over 10 s idle against 10 s with a scrape a second."""
    os.sync()
    time.sleep(3)
    cpu0 = broker.cpu_s()
    time.sleep(10)
    idle_cpu_s = broker.cpu_s() - cpu0
    samples = []
    cpu0 = broker.cpu_s()
    started = time.monotonic()
    for _ in range(10):
        samples.append(scrape(port))
        time.sleep(max(0.0, started + len(samples) - time.monotonic()))
    scraped_cpu_s = broker.cpu_s() - cpu0
    times_ms = [t * 1000 for _, t in samples]
    return (statistics.median(b for b, _ in samples), statistics.median(times_ms), max(times_ms),
            (scraped_cpu_s - idle_cpu_s) * 100)


def produce_session(window_s, windows, first_scraped):
    """One fresh broker; `windows` produce runs of `window_s` back to back,
    alternating scraped and not scraped (starting as `first_scraped` says).
    Returns [(scraped, result)]."""
    os.sync()  # the previous session's data must not be written back under this one
    time.sleep(3)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as work:
        port = benchlib.free_port()
        broker = benchlib.Broker(work, sets={"metrics.listen": f"127.0.0.1:{port}"}).start()
        out = []
        try:
            # Creates the topic and its files; not counted.
            benchlib.bench(broker, "produce", "--topic", "t", *SHAPE, "--duration-s", str(window_s))
            for w in range(windows):
                scraped = (w % 2 == 0) == first_scraped
                stop = threading.Event()
                scrapes = []

                def scraper():
                    while not stop.wait(1.0):
                        scrapes.append(scrape(port))

                thread = threading.Thread(target=scraper) if scraped else None
                args = ["produce", "--topic", "t", *SHAPE, "--duration-s", str(window_s)]
                if thread:
                    thread.start()
                try:
                    result = benchlib.bench(broker, *args)
                finally:
                    stop.set()
                    if thread:
                        thread.join()
                result = result.get("produce", result)
                out.append((scraped, {"mb_per_s": result["mb_per_s"],
                                      "p99_ms": result["ack_latency"]["p99_us"] / 1000,
                                      "scrapes": len(scrapes), "command": "shardlog-bench " + " ".join(args)}))
            return out, cpu_per_scrape(broker, port)
        finally:
            broker.stop()


def scale_run(partitions):
    with tempfile.TemporaryDirectory(prefix="bench-metrics-scale-") as work:
        port = benchlib.free_port()
        broker = benchlib.Broker(work, sets={"metrics.listen": f"127.0.0.1:{port}"}).start()
        try:
            from confluent_kafka.admin import AdminClient, NewTopic
            admin = AdminClient({"bootstrap.servers": broker.bootstrap})
            admin.create_topics([NewTopic("t", partitions, 1)], operation_timeout=120)["t"].result(180)
            time.sleep(5)  # every shard has opened its partitions
            warmup = ["produce", "--topic", "t", "--partitions", str(partitions), "--record-bytes", "100",
                      "--batch-bytes", "1024", "--partitions-per-request", "100", "--producers", "2",
                      "--inflight", "4", "--acks", "1", "--duration-s", str(3 + partitions // 2500)]
            benchlib.bench(broker, *warmup)
            size, median_ms, max_ms, cpu_ms = cpu_per_scrape(broker, port)
            return {"partitions": partitions, "bytes": size, "scrape_ms_median": median_ms, "scrape_ms_max": max_ms,
                    "broker_cpu_ms_per_scrape": cpu_ms,
                    "warmup": "shardlog-bench " + " ".join(warmup)}
        finally:
            broker.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3, help="sessions (fresh brokers)")
    ap.add_argument("--windows", type=int, default=6, help="produce windows per session, alternating")
    ap.add_argument("--window-s", type=int, default=5)
    ap.add_argument("--scale-partitions", type=int, default=10000)
    ap.add_argument("--out", default=str(REPO / "results/metrics-overhead.md"))
    args = ap.parse_args()
    runs = {"not scraped": [], "scraped every 1 s": []}
    pairs = []
    small_scrapes = []  # (bytes, ms median, ms max, cpu ms) after each session
    for r in range(args.runs):
        session, small_scrape = produce_session(args.window_s, args.windows, first_scraped=r % 2 == 1)
        small_scrapes.append(small_scrape)
        for scraped, result in session:
            mode = "scraped every 1 s" if scraped else "not scraped"
            runs[mode].append(result)
            print(f"session {r + 1}, {mode}: {result['mb_per_s']:.1f} MB/s, p99 {result['p99_ms']:.2f} ms, "
                  f"{result['scrapes']} scrapes", file=sys.stderr)
        for k in range(0, len(session) - 1, 2):
            (a_scraped, a), (_, b) = session[k], session[k + 1]
            pairs.append((b, a) if a_scraped else (a, b))  # (not scraped, scraped)
    scale = scale_run(args.scale_partitions)
    print(f"{scale}", file=sys.stderr)

    med = {m: {"mb_per_s": statistics.median(x["mb_per_s"] for x in rs),
               "p99_ms": statistics.median(x["p99_ms"] for x in rs)} for m, rs in runs.items()}
    # Adjacent windows of one session pair up: the ratio within a pair
    # cancels the drift between sessions and along one.
    d_mb = statistics.median(b["mb_per_s"] / a["mb_per_s"] - 1 for a, b in pairs) * 100
    d_p99 = statistics.median(b["p99_ms"] / a["p99_ms"] - 1 for a, b in pairs) * 100
    command = " ".join(["scripts/bench-metrics-overhead.py", "--runs", str(args.runs), "--windows",
                        str(args.windows), "--window-s", str(args.window_s), "--scale-partitions",
                        str(args.scale_partitions)])
    lines = [
        "# Metrics overhead (issue 14)", "",
        f"- command: `{command}`",
        f"- when: {time.strftime('%Y-%m-%d')}; {benchlib.machine()}; broker and load generator share the cores",
        f"- workload: {args.runs} sessions, each a fresh broker running {args.windows} windows back to back of "
        f"`{runs['not scraped'][0]['command']}`, alternating scraped and not scraped (sessions alternate which "
        "comes first)",
        "- scraped: a client GETs /metrics every second for the whole window (Prometheus at a 1 s interval)", "",
        "| mode | MB/s (each run) | MB/s | p99 ms (each run) | p99 ms | MB/s / loopback limit |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for mode, rs in runs.items():
        each_mb = ", ".join("%.1f" % x["mb_per_s"] for x in rs)
        each_p99 = ", ".join("%.2f" % x["p99_ms"] for x in rs)
        lines.append(f"| {mode} | {each_mb} | {med[mode]['mb_per_s']:.1f} | {each_p99} | "
                     f"{med[mode]['p99_ms']:.2f} | {med[mode]['mb_per_s'] / LOOPBACK_MB_S:.3f} |")
    lines += [
        "", f"Scraped against not scraped, median of the {len(pairs)} ratios of adjacent windows: throughput "
        f"{d_mb:+.1f}%, p99 {d_p99:+.1f}% (the aim: under 2%).", "",
        "The windows of this host's virtual disk differ by up to ±30% between neighbours (the columns above), "
        "so this A/B cannot resolve 2%. The direct measure of what scraping costs is the broker's CPU per scrape "
        "(10 s with a scrape a second against 10 s idle, /proc/PID/stat, after each session):",
        "- page {:.0f} KB (the 12-partition topic, __consumer_offsets' 50, every request type's histograms), "
        "scrape {:.1f} ms, broker CPU {:.1f} ms per scrape (median of the sessions): {:.2f}% of one core at a "
        "1 s interval".format(statistics.median(x[0] for x in small_scrapes) / 1e3,
                              statistics.median(x[1] for x in small_scrapes),
                              statistics.median(x[3] for x in small_scrapes),
                              statistics.median(x[3] for x in small_scrapes) / 10), "",
        f"## A scrape at {scale['partitions']:,} partitions", "",
        f"- warm-up (writes every partition): `{scale['warmup']}`",
        f"- page: {scale['bytes'] / 1e6:.2f} MB (default metrics.partition.series.max 10,000: every partition "
        "listed); scrape time median {:.0f} ms, max {:.0f} ms over 10 scrapes, one a second".format(
            scale["scrape_ms_median"], scale["scrape_ms_max"]),
        "- broker CPU per scrape: {:.1f} ms, {:.1f}% of one core at a 1 s interval, {:.2f}% at Prometheus' "
        "default 15 s".format(scale["broker_cpu_ms_per_scrape"], scale["broker_cpu_ms_per_scrape"] / 10,
                              scale["broker_cpu_ms_per_scrape"] / 150),
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps({"runs": runs, "medians": med, "small_scrapes": small_scrapes,
                                                               "scale": scale},
                                                              indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
