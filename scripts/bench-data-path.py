#!/usr/bin/env python3
"""The data-path benchmark set (issue 3), written to results/data-path.md.

Every figure is the median of --runs runs, each on a fresh release broker
(temp data dir, free loopback port), driven by shardlog-bench:

  A. produce at max rate, 1 KiB records, acks=1, 64 KiB batches, one shard
     (--shards 1): 1 and 6 partitions per request;
  B. tail consume while producing at max rate (e2e), one shard;
  C. catch-up consume of a cold backlog (the broker restarted, so the tail
     cache is empty, and O_DIRECT writes never filled the page cache): zero
     copy (sendfile) cold, zero copy warm (a second read), and the copying
     O_DIRECT path (fetch.zero.copy.enable=false);
  D. produce and end-to-end latency at 50% of B's median rate (same shape,
     tail consumer running), acks=1 and acks=-1;
  E. shard stall: produce latency of partition F at a fixed rate, alone and
     while a consumer drains a cold backlog of another partition on the same
     shard, with zero copy on and off;
  F. the same producer while the cleaner compacts a keyed backlog on the
     same shard, cleaner on and off.

  scripts/bench-data-path.py [--runs 3] [--duration-s 10] [--backlog-mb 2000]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, Broker, bench, finish, machine  # noqa: E402

LOOPBACK_MB_S = 3270.0
ODIRECT_WRITE_MB_S = 2600.0
SENDFILE_MB_S = 2000.0
COPY_READ_MB_S = 2900.0
COMMON = ["--record-bytes", "1024", "--batch-bytes", "65536", "--producers", "1", "--inflight", "4"]


def command_line(args):
    return "shardlog-bench " + " ".join(args)


def mb_s(report):
    return report["mb_per_s"]


def create_compacted_topic(bootstrap, name, segment_bytes):
    """Only this topic is compacted (the producer's topic keeps delete)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"cleanup.policy": "compact", "segment.bytes": str(segment_bytes)}
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1, config=config)])[name].result(30)


def drop_page_cache():
    """Drops clean page-cache pages (root only); False when not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration-s", type=int, default=10)
    ap.add_argument("--backlog-mb", type=int, default=2000)
    ap.add_argument("--out", default=str(REPO / "results/data-path.md"))
    ap.add_argument("--sections", default="ABCDEF", help="which figure groups to run (D needs B)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shardlog-data-path."))
    d = str(a.duration_s)
    results = {}
    cmds = {}

    def broker(**kw):
        b = Broker(work, **kw)
        return b.start()

    # A. produce per shard.
    for ppr in (1, 6) if "A" in a.sections else ():
        key = f"A-ppr{ppr}"
        args = ["produce", "--topic", "a", "--partitions", "6", *COMMON, "--acks", "1", "--duration-s", d,
                "--partitions-per-request", str(ppr)]
        cmds[key] = command_line(args) + "  (broker --shards 1)"
        for _ in range(a.runs):
            b = broker(shards=1)
            cpu0 = b.cpu_s()
            r = bench(b, *args)["produce"]
            r["broker_cores"] = (b.cpu_s() - cpu0) / r["elapsed_s"]
            results.setdefault(key, []).append(r)
            b.destroy()

    # B. tail consume at max produce rate.
    args = ["e2e", "--topic", "b", "--partitions", "6", *COMMON, "--acks", "1", "--duration-s", d,
            "--partitions-per-request", "6"]
    cmds["B"] = command_line(args) + "  (broker --shards 1)"
    for _ in range(a.runs if "B" in a.sections else 0):
        b = broker(shards=1)
        results.setdefault("B", []).append(bench(b, *args))
        b.destroy()

    # C. catch-up consume of a cold backlog.
    backlog_s = max(2, a.backlog_mb // 300)
    fill = ["produce", "--topic", "c", "--partitions", "6", *COMMON, "--acks", "1",
            "--partitions-per-request", "6", "--duration-s", str(backlog_s)]
    consume = ["consume", "--topic", "c", "--record-bytes", "1024", "--from", "earliest", "--duration-s", "300"]
    cmds["C-fill"] = command_line(fill)
    cmds["C"] = command_line(consume)
    dropped = True
    for _ in range(a.runs if "C" in a.sections else 0):
        b = broker()
        bench(b, *fill)
        b.stop()
        dropped &= drop_page_cache()
        b.start()
        results.setdefault("C-cold", []).append(bench(b, *consume)["consume"])
        results.setdefault("C-warm", []).append(bench(b, *consume)["consume"])
        b.stop()
        b.sets["fetch.zero.copy.enable"] = "false"
        b.start()
        results.setdefault("C-copy", []).append(bench(b, *consume)["consume"])
        b.destroy()

    # D. latency at half of B's median rate: the same e2e shape (a tail
    # consumer running), so "half load" is half of what that shape carries.
    rate = int(median([r["produce"]["msgs_per_s"] for r in results.get("B", [])]) * 0.5) if "B" in results else 0
    for acks in ("1", "-1") if "D" in a.sections else ():
        args = ["e2e", "--topic", "d", "--partitions", "6", *COMMON, "--acks", acks, "--rate", str(rate),
                "--duration-s", d, "--partitions-per-request", "6"]
        cmds[f"D{acks}"] = command_line(args) + "  (broker --shards 1)"
        for _ in range(a.runs):
            b = broker(shards=1)
            results.setdefault(f"D{acks}", []).append(bench(b, *args))
            b.destroy()

    # E. shard stall: a fixed-rate producer on one partition while a cold
    # backlog of another partition on the same (only) shard is drained.
    stall_rate = 20_000
    fg = ["produce", "--topic", "fg", "--partitions", "1", *COMMON, "--acks", "1", "--rate", str(stall_rate),
          "--duration-s", d]
    bg_fill = ["produce", "--topic", "bg", "--partitions", "1", *COMMON, "--acks", "1",
               "--duration-s", str(backlog_s)]
    bg_drain = ["consume", "--topic", "bg", "--record-bytes", "1024", "--from", "earliest", "--duration-s", d]
    cmds["E-fg"] = command_line(fg) + "  (broker --shards 1)"
    cmds["E-bg"] = command_line(bg_drain)
    for zero_copy in ("true", "false") if "E" in a.sections else ():
        for _ in range(a.runs):
            b = broker(shards=1, sets={"fetch.zero.copy.enable": zero_copy})
            bench(b, *bg_fill)
            b.stop()
            drop_page_cache()
            b.start()
            results.setdefault(f"E-alone-{zero_copy}", []).append(bench(b, *fg)["produce"])
            fg_run = bench(b, *fg, background=True)
            time.sleep(1)
            drain = bench(b, *bg_drain)["consume"]
            results.setdefault(f"E-drain-{zero_copy}", []).append(finish(fg_run)["produce"])
            results.setdefault(f"E-drain-mb-{zero_copy}", []).append(drain)
            b.destroy()

    # F. compaction's effect on the shard: the same fixed-rate producer while
    # the cleaner compacts a keyed backlog on the same (only) shard, against
    # the cleaner switched off.
    cp_fill = ["produce", "--topic", "cp", "--partitions", "1", *COMMON, "--acks", "1", "--keys", "uniform",
               "--key-count", "1000", "--duration-s", str(backlog_s)]
    cmds["F-fill"] = command_line(cp_fill)
    compact_sets = {"log.cleaner.backoff.ms": 500}
    cleaner_variants = {
        "true": {"log.cleaner.enable": "true"},
        "throttled": {"log.cleaner.enable": "true", "log.cleaner.io.max.bytes.per.second": 100_000_000},
        "false": {"log.cleaner.enable": "false"},
    }
    for enabled in cleaner_variants if "F" in a.sections else ():
        for _ in range(a.runs):
            b = broker(shards=1, sets={**compact_sets, **cleaner_variants[enabled]})
            log_start = (b.work / "broker.log").stat().st_size  # the log file is shared by every run
            create_compacted_topic(b.bootstrap, "cp", segment_bytes=1 << 24)
            bench(b, *cp_fill)
            results.setdefault(f"F-{enabled}", []).append(bench(b, *fg)["produce"])
            log_text = (b.work / "broker.log").read_bytes()[log_start:].decode(errors="replace")
            results.setdefault(f"F-passes-{enabled}", []).append(log_text.count("compacted partition=cp-0"))
            b.destroy()

    (work / "raw.json").write_text(json.dumps({"results": results, "commands": cmds}, indent=1))
    write_report(a, results, cmds, rate, stall_rate, dropped)
    shutil.rmtree(work, ignore_errors=True)


def write_report(a, results, cmds, rate, stall_rate, dropped):
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    lines = []
    w = lines.append

    def runs(key, f):
        vals = [f(r) for r in results[key]]
        return median(vals), vals

    def fmt_runs(vals, digits=1):
        return ", ".join(f"{v:.{digits}f}" for v in vals)

    w("# Data path: produce, tail and catch-up reads, latency, shard stall")
    w("")
    w(f"- when: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; commit {commit}")
    w(f"- machine: {machine()}; client and broker share it")
    w(f"- command: `scripts/bench-data-path.py --runs {a.runs} --duration-s {a.duration_s} "
      f"--backlog-mb {a.backlog_mb}`; medians of {a.runs} runs, each on a fresh broker")
    w("- limits (`../shared/PERFORMANCE.md`): loopback 3,270 MB/s, O_DIRECT write 2,600 MB/s, "
      "sendfile to loopback 2,000 MB/s, copying read+write 2,900 MB/s")
    w("")
    w("MB = 10^6 bytes of record values (1 KiB records). Latencies in µs.")
    w("")
    w("## Throughput")
    w("")
    w("| figure | median MB/s (runs) | / lower limit | broker cores | command |")
    w("| --- | ---: | ---: | ---: | --- |")
    for key, label in (("A-ppr1", "A. produce, 1 shard, 1 partition per request"),
                       ("A-ppr6", "A. produce, 1 shard, 6 partitions per request")):
        if key not in results:
            continue
        m, vals = runs(key, mb_s)
        cores = median([r["broker_cores"] for r in results[key]])
        w(f"| {label} | {m:.1f} ({fmt_runs(vals)}) | {m / ODIRECT_WRITE_MB_S:.1%} of O_DIRECT write | "
          f"{cores:.2f} | `{cmds[key]}` |")
    m, vals = runs("B", lambda r: mb_s(r["consume"])) if "B" in results else (float("nan"), [])
    w(f"| B. tail consume while producing at max rate, 1 shard | {m:.1f} ({fmt_runs(vals)}) | "
      f"{m / ODIRECT_WRITE_MB_S:.1%} of O_DIRECT write | | `{cmds['B']}` |")
    m, vals = runs("B", lambda r: mb_s(r["produce"])) if "B" in results else (float("nan"), [])
    w(f"| B. (its produce side) | {m:.1f} ({fmt_runs(vals)}) | | | |")
    for key, label in (("C-cold", "C. catch-up, zero copy, cold page cache"),
                       ("C-warm", "C. catch-up, zero copy, warm page cache"),
                       ("C-copy", "C. catch-up, copying O_DIRECT reads")):
        if key not in results:
            continue
        m, vals = runs(key, mb_s)
        w(f"| {label} | {m:.1f} ({fmt_runs(vals)}) | {m / SENDFILE_MB_S:.1%} of sendfile | | `{cmds['C']}` |")
    w("")
    if not dropped:
        w("The page cache could not be dropped (not root): \"cold\" means only that O_DIRECT writes "
          "never filled it.")
        w("")
    w(f"## Latency at half load (B's median rate x 0.5 = {rate:,} msgs/s, tail consumer running), 1 shard")
    w("")
    w("| figure | p50 | p99 | p99.9 | max | command |")
    w("| --- | ---: | ---: | ---: | ---: | --- |")
    for acks in ("1", "-1") if "D1" in results else ():
        for side, field, label in (("produce", "ack_latency", "produce ack"),
                                   ("consume", "e2e_latency", "end to end")):
            lat = [r[side][field] for r in results[f"D{acks}"]]
            w(f"| {label}, acks={acks} | {median([x['p50_us'] for x in lat]):,.0f} | "
              f"{median([x['p99_us'] for x in lat]):,.0f} | {median([x['p999_us'] for x in lat]):,.0f} | "
              f"{median([x['max_us'] for x in lat]):,.0f} | `{cmds[f'D{acks}']}` |")
    w("")
    w(f"## Shard stall: produce at {stall_rate:,} msgs/s to one partition, alone and while a cold backlog "
      "of another partition on the same shard is drained")
    w("")
    w("| reads | produce alone p50 / p99 / p99.9 | during the drain p50 / p99 / p99.9 | drain MB/s |")
    w("| --- | ---: | ---: | ---: |")
    for zc, label in (("true", "zero copy (sendfile on the blocking pool)"), ("false", "copying O_DIRECT reads")):
        if f"E-alone-{zc}" not in results:
            continue
        alone = [r["ack_latency"] for r in results[f"E-alone-{zc}"]]
        drain = [r["ack_latency"] for r in results[f"E-drain-{zc}"]]

        def trio(lat):
            return " / ".join(f"{median([x[k] for x in lat]):,.0f}" for k in ("p50_us", "p99_us", "p999_us"))

        w(f"| {label} | {trio(alone)} | {trio(drain)} | {median([mb_s(r) for r in results[f'E-drain-mb-{zc}']]):.1f} |")
    w("")
    w(f"Producer: `{cmds['E-fg']}`; drain: `{cmds['E-bg']}` (started 1 s into the producer's run).")
    w("")
    w("## Compaction's effect: the same producer while the cleaner compacts a keyed backlog on the same shard")
    w("")
    w("| cleaner | produce p50 / p99 / p99.9 | compaction passes of the backlog per run (fill and producer) |")
    w("| --- | ---: | --- |")
    for enabled, label in (("true", "on (`log.cleaner.backoff.ms=500`)"),
                           ("throttled", "on, `log.cleaner.io.max.bytes.per.second=100000000`"),
                           ("false", "off")):
        if f"F-{enabled}" not in results:
            continue
        lat = [r["ack_latency"] for r in results[f"F-{enabled}"]]
        trio = " / ".join(f"{median([x[k] for x in lat]):,.0f}" for k in ("p50_us", "p99_us", "p999_us"))
        w(f"| {label} | {trio} | {', '.join(str(n) for n in results[f'F-passes-{enabled}'])} |")
    w("")
    w(f"Backlog: `{cmds.get('F-fill', '')}` into topic `cp` created with `cleanup.policy=compact`, "
      "`segment.bytes=16777216` (the producer's topic keeps `delete`); then the producer of E.")
    w("")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
