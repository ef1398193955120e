#!/usr/bin/env python3
"""End-to-end produce and consume throughput against a running broker, with
confluent-kafka (librdkafka): 1 KiB records by default.

Each run creates a fresh topic, produces --records records (linger.ms=5,
batch.size=1 MiB) and waits for every delivery report, then a consumer
(assign(), from offset 0, no group) reads them all back. Prints a table and
writes JSON (--json) and a markdown section (--md, appended).

  python3 results/bench_e2e.py --bootstrap 127.0.0.1:9092 --records 1000000 \
      --partitions 6 --acks 1 --compression none --runs 3
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    """utime+stime of a process (all threads), seconds; None without a pid."""
    if not pid:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuMeter:
    """Wall time, this client's CPU time (all threads, incl. librdkafka's) and the broker's."""

    def __init__(self, broker_pid):
        self.pid = broker_pid

    def __enter__(self):
        self.w0, self.c0, self.b0 = time.perf_counter(), time.process_time(), proc_cpu_s(self.pid)
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.client_cpu = time.process_time() - self.c0
        b1 = proc_cpu_s(self.pid)
        self.broker_cpu = None if b1 is None else b1 - self.b0


def create_topic(bootstrap, name, partitions, timeout=60):
    a = AdminClient({"bootstrap.servers": bootstrap})
    a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                    operation_timeout=timeout)[name].result(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = a.list_topics(topic=name, timeout=10).topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return
        time.sleep(0.1)
    raise RuntimeError(f"topic {name} not ready")


def produce(args, topic):
    p = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": str(args.acks),
        "compression.type": args.compression,
        "linger.ms": 5,
        "batch.size": 1_000_000,  # 1 MB, under the default message.max.bytes
        "batch.num.messages": 100000,
        "message.max.bytes": 16 * 1024 * 1024,
        "queue.buffering.max.messages": 1000000,
        "queue.buffering.max.kbytes": 2 * 1024 * 1024,
        "message.timeout.ms": 120000,
        # per-message Python callbacks would make this a benchmark of the client:
        # report failures only, and count successes as records - failures
        "delivery.report.only.error": True,
    })
    payload = (os.urandom(args.record_size // 2).hex().encode() * 2)[: args.record_size]  # ~1 KiB, compressible x2
    errors = [0]
    delivered = [0]

    def cb(err, _msg):
        if err is not None:
            errors[0] += 1
        else:
            delivered[0] += 1

    parts = args.partitions
    t0 = time.perf_counter()
    for i in range(args.records):
        while True:
            try:
                p.produce(topic, payload, partition=i % parts, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.001)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(300)
    dt = time.perf_counter() - t0
    delivered[0] = args.records - errors[0] - left
    if left or errors[0]:
        raise RuntimeError(f"produce incomplete: delivered={delivered[0]} errors={errors[0]} unflushed={left}")
    return dt


def consume(args, topic):
    c = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "bench-assign-only",  # required by the client; no group API is used
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 512 * 1024,
    })
    try:
        highs = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(args.partitions)}
        total = sum(highs.values())
        if total != args.records:
            raise RuntimeError(f"high watermarks {highs} sum to {total}, expected {args.records}")
        t0 = time.perf_counter()
        c.assign([TopicPartition(topic, p, 0) for p in range(args.partitions)])
        n = 0
        nbytes = 0
        deadline = time.monotonic() + 600
        while n < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"consume timed out at {n}/{total}")
            for m in c.consume(num_messages=100000, timeout=1.0):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(str(m.error()))
                n += 1
                nbytes += len(m)  # value length
        dt = time.perf_counter() - t0
        return dt, n, nbytes
    finally:
        c.close()


def _first(v):
    """confluent_kafka.version()/libversion() return a str or a (str, int) tuple by version."""
    return v[0] if isinstance(v, tuple) else v


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--acks", default="1", choices=["0", "1", "-1", "all"])
    ap.add_argument("--compression", default="none", choices=["none", "gzip", "snappy", "lz4", "zstd"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", default=None, help="write results here (default: results/e2e-<ts>.json)")
    ap.add_argument("--md", default=None, help="append a markdown section to this file")
    ap.add_argument("--label", default="", help="free text for the report (e.g. broker commit)")
    ap.add_argument("--broker-pid", type=int, default=None, help="broker PID on this machine: report its CPU use")
    args = ap.parse_args()
    if args.acks == "all":
        args.acks = "-1"

    runs = []
    for r in range(args.runs):
        topic = f"bench-e2e-{int(time.time())}-{r}"
        create_topic(args.bootstrap, topic, args.partitions)
        with CpuMeter(args.broker_pid) as pm:
            pdt = produce(args, topic)
        with CpuMeter(args.broker_pid) as cm:
            cdt, n, nbytes = consume(args, topic)
        mb = args.records * args.record_size / 1e6
        run = {"topic": topic, "produce_s": round(pdt, 3), "consume_s": round(cdt, 3),
               "produce_MBps": round(mb / pdt, 1), "produce_msgps": round(args.records / pdt),
               "consume_MBps": round(nbytes / 1e6 / cdt, 1), "consume_msgps": round(n / cdt),
               # CPU seconds per wall second (1.0 = one core busy): shows which side is the bottleneck
               "produce_client_cores": round(pm.client_cpu / pm.wall, 2),
               "produce_broker_cores": None if pm.broker_cpu is None else round(pm.broker_cpu / pm.wall, 2),
               "consume_client_cores": round(cm.client_cpu / cm.wall, 2),
               "consume_broker_cores": None if cm.broker_cpu is None else round(cm.broker_cpu / cm.wall, 2)}
        runs.append(run)
        print(f"run {r + 1}/{args.runs}: produce {run['produce_MBps']} MB/s ({run['produce_msgps']} msg/s, "
              f"cores client {run['produce_client_cores']} broker {run['produce_broker_cores']}), "
              f"consume {run['consume_MBps']} MB/s ({run['consume_msgps']} msg/s, "
              f"cores client {run['consume_client_cores']} broker {run['consume_broker_cores']})", flush=True)

    med = {k: statistics.median(r[k] for r in runs)
           for k in ("produce_MBps", "produce_msgps", "consume_MBps", "consume_msgps")}
    env = {"nproc": sh(["nproc"]), "uname_r": sh(["uname", "-r"]), "python": platform.python_version(),
           "confluent_kafka": _first(confluent_kafka.version()),
           "librdkafka": _first(confluent_kafka.libversion())}
    cmdline = " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv])
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": cmdline, "label": args.label,
              "params": {k: getattr(args, k) for k in ("records", "record_size", "partitions", "acks", "compression", "runs")},
              "env": env, "runs": runs, "median": med}
    print(json.dumps(result["median"]))

    out_json = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         f"e2e-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out_json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out_json}")

    md = [f"## End-to-end produce/consume, {args.records:,} x {args.record_size} B records, "
          f"{args.partitions} partitions, acks={args.acks}, compression={args.compression}",
          "",
          f"- command: `{cmdline}`",
          f"- when: {result['when']}; nproc {env['nproc']}; kernel {env['uname_r']}; "
          f"confluent-kafka {env['confluent_kafka']} / librdkafka {env['librdkafka']}"
          + (f"; {args.label}" if args.label else ""),
          "",
          "| run | produce MB/s | produce msg/s | consume MB/s | consume msg/s | cores client/broker (produce) | cores client/broker (consume) |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, r in enumerate(runs, 1):
        md.append(f"| {i} | {r['produce_MBps']} | {r['produce_msgps']:,} | {r['consume_MBps']} | {r['consume_msgps']:,} "
                  f"| {r['produce_client_cores']} / {r['produce_broker_cores']} | {r['consume_client_cores']} / {r['consume_broker_cores']} |")
    md.append(f"| **median** | **{med['produce_MBps']}** | **{med['produce_msgps']:,.0f}** | "
              f"**{med['consume_MBps']}** | **{med['consume_msgps']:,.0f}** | | |")
    md.append("")
    text = "\n".join(md) + "\n"
    if args.md:
        with open(args.md, "a") as f:
            f.write(text)
        print(f"appended to {args.md}")
    else:
        print(text)


if __name__ == "__main__":
    main()
