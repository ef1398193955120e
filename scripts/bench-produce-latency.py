#!/usr/bin/env python3
"""Where the half-load produce latency goes (issue 12, aim 4), written to
results/produce-latency.md and .json beside it.

Each run, on a filesystem this script makes on a loop device (ext4 with its
journal, `losetup --direct-io=on`, as in results/preallocation.md):

  1. max rate: a fresh one-shard broker, `shardlog-bench produce` with 6
     partitions, 1 KiB records, 64 KiB batches, 1 connection x 4 in flight,
     acks=1, for --duration-s;
  2. half load: another fresh broker, the same producer at half of step 1's
     msgs/s; the client's ack latency (measured from each request's
     scheduled send time, so a stall also counts for the requests it
     delayed), and the broker's own stage latencies (`crate::latency`: the
     lines every shard logs at a clean stop);
  3. the device alone: fio writing what the broker writes (6 files in turn,
     extending, O_DIRECT, io_uring, 68 KiB writes, 4 in flight) at the MB/s
     of step 2, for --duration-s.

Medians of --runs runs. Needs root (losetup, mount) and fio.

  scripts/bench-produce-latency.py [--runs 3] [--duration-s 10] [--set KEY=VALUE ...]
"""

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load(name, file):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prealloc = load("prealloc", "bench-preallocation.py")
sys.path.insert(0, str(REPO / "scripts"))
import benchlib as dp  # noqa: E402
PRODUCE = prealloc.PRODUCE
# A 64 KiB batch of 1 KiB records is ~66,200 bytes; with the rewritten tail
# block before it, the broker's aligned writes are 68 or 72 KiB.
FIO_BLOCK = "68k"
STAGE_LINE = re.compile(r"latency (\w+) (\w+) n=(\d+) p50_us=(\d+) p99_us=(\d+) p999_us=(\d+) max_us=(\d+)")
STAGES = [("Produce", "total"), ("Produce", "handle"), ("storage", "segment_write"), ("storage", "append_queue"),
          ("Produce", "request_queue"), ("Produce", "response_queue"), ("Produce", "response_send")]


def stage_latencies(log_text):
    """{"Produce total": {"n":..,"p50_us":..,...}, ...} from a broker's log."""
    stages = {}
    for m in STAGE_LINE.finditer(log_text):
        api, stage, n, p50, p99, p999, top = m.groups()
        stages[f"{api} {stage}"] = {"n": int(n), "p50_us": int(p50), "p99_us": int(p99), "p999_us": int(p999),
                                    "max_us": int(top)}
    return stages


def fio(directory, mb_per_s, duration_s):
    out = subprocess.run(
        ["fio", "--name=segments", f"--directory={directory}", "--nrfiles=6", "--file_service_type=roundrobin",
         "--direct=1", "--ioengine=io_uring", "--rw=write", f"--bs={FIO_BLOCK}", "--iodepth=4",
         "--filesize=2g", f"--rate={int(mb_per_s * 1e6)}", "--time_based", f"--runtime={duration_s}",
         "--percentile_list=50:99:99.9", "--output-format=json"],
        check=True, capture_output=True, text=True).stdout
    write = json.loads(out)["jobs"][0]["write"]
    clat = write["clat_ns"]
    pct = clat["percentile"]
    return {"mb_per_s": write["bw_bytes"] / 1e6, "writes": write["total_ios"],
            "p50_us": pct["50.000000"] / 1000, "p99_us": pct["99.000000"] / 1000,
            "p999_us": pct["99.900000"] / 1000, "max_us": clat["max"] / 1000}


def one_run(parent, duration_s, sets):
    peak_broker = dp.Broker(Path(tempfile.mkdtemp(dir=parent)), shards=1, sets=sets)
    peak_broker.start()
    try:
        peak = dp.bench(peak_broker, *PRODUCE, "--duration-s", str(duration_s))
        peak = peak.get("produce", peak)
    finally:
        peak_broker.destroy()
        shutil.rmtree(peak_broker.work, ignore_errors=True)
    rate = int(peak["msgs_per_s"] * 0.5)
    broker = dp.Broker(Path(tempfile.mkdtemp(dir=parent)), shards=1, sets=sets)
    broker.start()
    try:
        half = dp.bench(broker, *PRODUCE, "--rate", str(rate), "--duration-s", str(duration_s))
        half = half.get("produce", half)
        broker.stop()
        stages = stage_latencies(broker.log_path.read_text())
    finally:
        broker.destroy()
        shutil.rmtree(broker.work, ignore_errors=True)
    fio_dir = Path(tempfile.mkdtemp(dir=parent))
    try:
        device = fio(fio_dir, half["mb_per_s"], duration_s)
    finally:
        shutil.rmtree(fio_dir, ignore_errors=True)
    return {"max_mb_per_s": peak["mb_per_s"], "half_rate_msgs_per_s": rate, "half_mb_per_s": half["mb_per_s"],
            "client": {k: half["ack_latency"][k] for k in ("p50_us", "p99_us", "p999_us", "max_us")},
            "send_lag": {k: half["send_lag"][k] for k in ("p50_us", "p99_us", "p999_us", "max_us")},
            "stages": stages, "fio": device}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration-s", type=int, default=10)
    ap.add_argument("--work", default="/var/tmp")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a broker setting for both brokers of every run (repeatable)")
    ap.add_argument("--out", default=str(REPO / "results" / "produce-latency.md"))
    ap.add_argument("--from-json", default=None, help="measure nothing: render --out from a raw JSON file")
    args = ap.parse_args()
    if args.from_json:
        raw = json.loads(Path(args.from_json).read_text())
        saved = ap.parse_args(raw["argv"])
        Path(args.out).write_text(report(saved, raw) + "\n")
        print(f"wrote {args.out}")
        return
    if os.geteuid() != 0:
        sys.exit("needs root: losetup, mount")
    if not shutil.which("fio"):
        subprocess.run(["apt-get", "install", "-y", "-q", "fio"], check=True, stdout=subprocess.DEVNULL)
    for tool in (dp.BROKER_BIN, dp.BENCH_BIN):
        if not Path(tool).exists():
            subprocess.run(["cargo", "build", "--release", "-p", "shardlog", "-p", "shardlog-bench"], check=True,
                           cwd=REPO)
    work = Path(tempfile.mkdtemp(prefix="shardlog-latency-", dir=args.work))
    runs = []
    try:
        with prealloc.LoopFs("ext4", work) as fs:
            device = f"{fs.device} (ext4 with journal, loop, --direct-io=on)"
            for r in range(args.runs):
                runs.append(one_run(fs.mount, args.duration_s, dict(kv.split("=", 1) for kv in args.set)))
                x = runs[-1]
                total = x["stages"].get("Produce total", {})
                print(f"run {r + 1}: max {x['max_mb_per_s']:.0f} MB/s; half load client p99 "
                      f"{x['client']['p99_us']} us, broker total p99 {total.get('p99_us')} us, "
                      f"fio p99 {x['fio']['p99_us']:.0f} us", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw = {"argv": sys.argv[1:], "commit": prealloc.sh("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
           "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, Linux {platform.release()}",
           "device": device, "runs": runs}
    Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1))
    Path(args.out).write_text(report(args, raw) + "\n")
    print(f"wrote {args.out}")


def median_of(runs, get):
    values = [v for v in (get(x) for x in runs) if v is not None]
    return statistics.median(values) if values else None


def report(args, raw):
    runs = raw["runs"]

    def ms(us):
        return "–" if us is None else f"{us / 1000:.2f}"

    lines = ["# Where the half-load produce latency goes", "",
             f"Measured {raw['date']} at {raw['commit']} on this machine ({raw['machine']}) by", "",
             f"    scripts/bench-produce-latency.py {' '.join(raw['argv'])}".rstrip(), "",
             f"On {raw['device']}. Each run: a fresh one-shard broker at max rate for {args.duration_s} s "
             f"(`shardlog-bench {' '.join(PRODUCE)}`), then another fresh broker with the same producer at half "
             "that rate, then fio writing what the broker writes (6 files in turn, extending, O_DIRECT, "
             f"io_uring, {FIO_BLOCK} writes, 4 in flight) at the half-load MB/s. Client latency is measured from "
             "each request's scheduled send time, so a stall counts for every request it held back. Broker "
             "stages are the `latency` lines the shard logs at its clean stop (`engine/src/latency.rs`). "
             f"Medians of {len(runs)} runs; times in ms.", "",
             f"Max rate {median_of(runs, lambda x: x['max_mb_per_s']):.1f} MB/s, half load "
             f"{median_of(runs, lambda x: x['half_mb_per_s']):.1f} MB/s. Against `../shared/PERFORMANCE.md`: "
             "this disk's O_DIRECT limit for 64 KiB writes at depth 1 is 0.83 GB/s.", "",
             "| where | p50 | p99 | p99.9 | max |", "| --- | ---: | ---: | ---: | ---: |"]

    def row(label, get):
        cells = [ms(median_of(runs, lambda x, q=q: (get(x) or {}).get(q))) for q in
                 ("p50_us", "p99_us", "p999_us", "max_us")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("client: ack latency", lambda x: x["client"])
    row("client: send lag behind schedule", lambda x: x["send_lag"])
    for api, stage in STAGES:
        row(f"broker: {api} {stage}", lambda x, k=f"{api} {stage}": x["stages"].get(k))
    row("fio: the same writes, alone", lambda x: x["fio"])
    lines += ["", "Each run:", "", "| run | client p99 | broker total p99 | segment write p99 / max | fio p99 / max |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for i, x in enumerate(runs, 1):
        total = x["stages"].get("Produce total", {})
        write = x["stages"].get("storage segment_write", {})
        lines.append(f"| {i} | {ms(x['client']['p99_us'])} | {ms(total.get('p99_us'))} | "
                     f"{ms(write.get('p99_us'))} / {ms(write.get('max_us'))} | "
                     f"{ms(x['fio']['p99_us'])} / {ms(x['fio']['max_us'])} |")
    total = {q: median_of(runs, lambda x, q=q: x["stages"].get("Produce total", {}).get(q)) for q in
             ("p50_us", "p99_us", "p999_us")}
    write = {q: median_of(runs, lambda x, q=q: x["stages"].get("storage segment_write", {}).get(q)) for q in
             ("p50_us", "p99_us", "p999_us")}
    device = {q: median_of(runs, lambda x, q=q: x["fio"][q]) for q in ("p50_us", "p99_us", "p999_us", "max_us")}
    if None not in total.values() and None not in write.values():
        lines += ["", "## What it shows", "",
                  f"- Everything the broker does besides the segment write (reading and checking the request, "
                  f"the queues, copying into the DMA buffer, encoding and sending the answer) is "
                  f"{ms(total['p50_us'] - write['p50_us'])} ms at p50 and {ms(total['p99_us'] - write['p99_us'])} "
                  "ms at p99 (Produce total minus segment write, medians).",
                  f"- The segment write is the rest: {ms(write['p50_us'])} / {ms(write['p99_us'])} / "
                  f"{ms(write['p999_us'])} ms at p50 / p99 / p99.9, against {ms(device['p50_us'])} / "
                  f"{ms(device['p99_us'])} / {ms(device['p999_us'])} ms for fio's same writes alone.",
                  f"- The device alone stalls: fio's longest write took {ms(device['max_us'])} ms (median of the "
                  "runs' maxima). The producer has 4 requests in flight, so a stall of T ms holds back every "
                  "request scheduled in those T ms, and at half load (~2,500 requests/s) a few stalls of several "
                  "ms fill the top 1% of the client's samples: the client's p99 follows the device's longest "
                  "stalls, not the broker's p99."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
