#!/usr/bin/env python3
"""Produce throughput by partition count with the batch shape held fixed
(issue 12, aim 1), written to results/partition-count.md.

The OMB-style shape at every count: 1 KiB records in 4 KiB batches, 100
partitions per Produce request, 4 producers x 4 requests in flight, acks=1,
partitions written round-robin. Only the partition count changes, so any
loss per request is the broker's. Each figure is the median of --runs runs,
each on a fresh release broker (both shards, temp data dir, loopback).
--sets adds broker settings to every run (e.g. log.fd.cache.size=8192), for
comparing a setting's effect in a second file. --profile-dir profiles the
broker (`perf record -F 499 -g`) through the middle of each count's last
measured run and writes what perf reports there as COUNT.txt: CPU by
thread, symbols by their own samples, then the heaviest symbols with their
callers included (needs perf).

  scripts/bench-partition-count.py [--runs 3] [--duration-s 10]
      [--counts 100,10000,100000] [--sets k=v,...] [--out FILE]
      [--profile-dir DIR]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, Broker, bench, finish, machine  # noqa: E402

SHAPE = ["--record-bytes", "1024", "--batch-bytes", "4096", "--partitions-per-request", "100",
         "--producers", "4", "--inflight", "4", "--acks", "1"]


def warm_up_s(partitions):
    """Long enough for every partition to take its first batches (a first
    append writes the partition's leader-epoch checkpoint)."""
    return 3 + partitions // 2500


def perf_report(data, *sort_args):
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", *sort_args],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip() and not line.startswith("#")]


def profile(broker, seconds, data, text, header):
    """perf record of the broker for `seconds`, summarised into `text`."""
    subprocess.run(["perf", "record", "-q", "-F", "499", "-g", "-p", str(broker.proc.pid), "-o", str(data),
                    "--", "sleep", str(seconds)], check=True, stdout=subprocess.DEVNULL)
    by_thread = perf_report(data, "--no-children", "--sort", "comm", "-g", "none")
    by_symbol = perf_report(data, "--children", "--sort", "sym", "-g", "none")
    by_self = perf_report(data, "--no-children", "--sort", "dso,sym", "-g", "none")
    text.write_text("\n".join([*header, "", "## CPU by thread (share of all samples)", "", *by_thread[:12], "",
                               "## Symbols by their own samples (self)", "", *by_self[:40], "",
                               "## Heaviest symbols, callers' share included (children)", "",
                               *by_symbol[:80]]) + "\n")


def run_once(partitions, duration_s, sets, profile_to=None):
    with tempfile.TemporaryDirectory(prefix="shardlog-pcount.", dir="/var/tmp") as work:
        broker = Broker(work, sets=sets)
        broker.start()
        try:
            # A first run creates the topic and writes every partition,
            # so the measured run sees a warm broker, as a long-lived one is.
            # Repeated while partitions are still opening (the broker answers
            # NOT_LEADER_OR_FOLLOWER then, and shardlog-bench does not retry).
            for attempt in range(10):
                try:
                    bench(broker, "produce", "--topic", "t", "--partitions", str(partitions), *SHAPE,
                          "--duration-s", str(warm_up_s(partitions)))
                    break
                except RuntimeError:
                    if attempt == 9:
                        raise
                    time.sleep(1)
            cpu_before = broker.cpu_s()
            started = time.monotonic()
            args = ["produce", "--topic", "t", "--partitions", str(partitions), *SHAPE,
                    "--duration-s", str(duration_s)]
            if profile_to:
                running = bench(broker, *args, background=True)
                time.sleep(2)
                command = " ".join(["perf record -F 499 -g -p BROKER -- sleep", str(max(1, duration_s - 4))])
                profile(broker, max(1, duration_s - 4), Path(broker.work) / "perf.data", profile_to, [
                    f"# Broker profile, {partitions:,} partitions (issue 12)", "",
                    f"- when: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; commit {commit_id()}; {machine()}",
                    f"- workload: `shardlog-bench {' '.join(args)}`, after its warm-up run",
                    f"- profile: `{command}` from 2 s into the run"])
                result = finish(running)
            else:
                result = bench(broker, *args)
            result = result.get("produce", result)
            broker_cores = (broker.cpu_s() - cpu_before) / (time.monotonic() - started)
            lat = result["ack_latency"]
            return {"mb_per_s": result["mb_per_s"], "p99_ms": lat["p99_us"] / 1000,
                    "broker_cores": broker_cores, "fds": broker.fds(),
                    "command": "shardlog-bench " + " ".join(args)}
        finally:
            broker.stop()


def commit_id():
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration-s", type=int, default=10)
    ap.add_argument("--counts", default="100,10000,100000")
    ap.add_argument("--sets", default="", help="broker settings for every run: k=v,k=v")
    ap.add_argument("--out", default=str(REPO / "results/partition-count.md"))
    ap.add_argument("--profile-dir", help="perf profile of each count's last run, as DIR/COUNT.txt")
    args = ap.parse_args()
    if args.profile_dir:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    sets = dict(kv.split("=", 1) for kv in args.sets.split(",") if kv)
    rows = {}
    for count in [int(c) for c in args.counts.split(",")]:
        runs = []
        for r in range(args.runs):
            profile_to = Path(args.profile_dir) / f"{count}.txt" if args.profile_dir and r == args.runs - 1 else None
            runs.append(run_once(count, args.duration_s, sets, profile_to))
            print(f"{count} partitions, run {r + 1}: {runs[-1]['mb_per_s']:.1f} MB/s, "
                  f"p99 {runs[-1]['p99_ms']:.1f} ms", flush=True)
        rows[count] = runs
    commit = commit_id()
    base_count = min(rows)
    base = statistics.median(r["mb_per_s"] for r in rows[base_count])
    base_p99 = statistics.median(r["p99_ms"] for r in rows[base_count])
    lines = [
        "# Produce throughput by partition count, batch shape fixed (issue 12, aim 1)", "",
        f"- when: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; commit {commit}; {machine()}",
        f"- command: `scripts/bench-partition-count.py {' '.join(sys.argv[1:])}`",
        f"- broker settings beyond the defaults: {sets or 'none'}",
        "- shape at every count: 1 KiB records, 4 KiB batches, 100 partitions per request, "
        "4 producers x 4 in flight, acks=1, round-robin over all partitions; a warm-up run "
        "(3 s + 1 s per 2,500 partitions) creates the topic and writes every partition first. Medians of the runs; broker and load generator share the 2 cores.", "",
        f"| partitions | MB/s (each run) | MB/s | / {base_count} partitions | p99 ms | p99 / {base_count} partitions "
        "| broker cores busy | broker fds |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for count, runs in rows.items():
        mb = statistics.median(r["mb_per_s"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        each = ", ".join(f"{r['mb_per_s']:.1f}" for r in runs)
        cores = statistics.median(r["broker_cores"] for r in runs)
        fds = statistics.median(r["fds"] for r in runs)
        lines.append(f"| {count:,} | {each} | {mb:.1f} | {mb / base:.2f} | {p99:.1f} | {p99 / base_p99:.2f} "
                     f"| {cores:.2f} | {fds:.0f} |")
    lines += ["", "Commands (per run, after the warm-up):", ""]
    lines += [f"- {count:,}: `{runs[0]['command']}`" for count, runs in rows.items()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"argv": sys.argv[1:], "commit": commit, "machine": machine(), "sets": sets, "results": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
