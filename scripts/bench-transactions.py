#!/usr/bin/env python3
"""Transactions benchmark (issue 13), written to results/transactions.md
and results/transactions.json.

    scripts/bench-transactions.py [--runs 3] [--duration-s 10] [--value-bytes 1024]
        [--sizes 1,10,100] [--consume-records 300000] [--out results/transactions.md]

Every run starts a fresh release broker (target/release/shardlog, or
SHARDLOG_BIN; temp data dir, free 127.0.0.1 port, one shard per core) and
creates a topic of 6 partitions. Figures are medians of the runs.

Produce: one confluent-kafka producer (librdkafka, linger.ms 5, acks=all)
writes keyed records of --value-bytes for --duration-s:
  - idempotent, no transactions (enable.idempotence=true), flushed at the end;
  - transactional (transactional.id), --sizes records per transaction, each
    transaction committed before the next begins (commit_transaction waits
    for every record and for the EndTxn answer, as an application does).
Records/s and MB/s count what was acknowledged (committed), with the time
from the first produce to the last ack.

Consume: a topic filled with --consume-records records in transactions of
100 (committed), read from offset 0 by one confluent-kafka consumer
(assign, no group) with isolation.level read_uncommitted and then
read_committed, until every record came, after one untimed read (so both
find the data cached alike).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import benchlib  # noqa: E402

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

PARTITIONS = 6
LOOPBACK_MB_S = 3270  # PERFORMANCE.md: loopback TCP, 1 stream


def create_topic(bootstrap, name):
    a = AdminClient({"bootstrap.servers": bootstrap})
    a.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result(30)


def produce_plain(bootstrap, topic, duration_s, value):
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                  "queue.buffering.max.messages": 200000})
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < duration_s:
        try:
            p.produce(topic, key=str(sent % 1000).encode(), value=value)
            sent += 1
        except BufferError:
            p.poll(0.01)
        p.poll(0)
    assert p.flush(120) == 0
    return sent, time.monotonic() - start


def produce_txn(bootstrap, topic, duration_s, value, per_txn):
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"bench-{per_txn}-{time.monotonic_ns()}",
                  "linger.ms": 5})
    p.init_transactions(30)
    sent = txns = 0
    start = time.monotonic()
    while time.monotonic() - start < duration_s:
        p.begin_transaction()
        for _ in range(per_txn):
            p.produce(topic, key=str(sent % 1000).encode(), value=value)
            sent += 1
        p.commit_transaction(60)
        txns += 1
    return sent, time.monotonic() - start, txns


def consume(bootstrap, topic, isolation, expect):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{isolation}", "isolation.level": isolation,
                  "enable.auto.commit": False, "fetch.max.bytes": 52428800})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got = 0
    nbytes = 0
    start = time.monotonic()
    deadline = start + 300
    while got < expect and time.monotonic() < deadline:
        for m in c.consume(num_messages=10000, timeout=0.5):
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                continue
            got += 1
            nbytes += len(m.value())
    elapsed = time.monotonic() - start
    c.close()
    assert got == expect, f"{isolation}: {got} of {expect} records"
    return got, nbytes, elapsed


def one_run(a, run):
    value = b"x" * a.value_bytes
    out = {"produce": {}, "consume": {}}
    with tempfile.TemporaryDirectory(prefix="bench-txn-") as work:
        broker = benchlib.Broker(work).start()
        try:
            topic = "plain"
            create_topic(broker.bootstrap, topic)
            n, secs = produce_plain(broker.bootstrap, topic, a.duration_s, value)
            out["produce"]["idempotent"] = {"records_s": n / secs, "mb_s": n * a.value_bytes / secs / 1e6}
            for size in a.sizes:
                topic = f"txn-{size}"
                create_topic(broker.bootstrap, topic)
                n, secs, txns = produce_txn(broker.bootstrap, topic, a.duration_s, value, size)
                out["produce"][f"txn-{size}"] = {"records_s": n / secs, "mb_s": n * a.value_bytes / secs / 1e6,
                                                 "txns_s": txns / secs}
            topic = "consume"
            create_topic(broker.bootstrap, topic)
            p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "filler", "linger.ms": 5})
            p.init_transactions(30)
            for t in range(a.consume_records // 100):
                p.begin_transaction()
                for k in range(100):
                    p.produce(topic, key=str(k).encode(), value=value)
                p.commit_transaction(60)
            # An untimed read first: both timed reads then find the log in
            # the page cache and the tail cache alike.
            consume(broker.bootstrap, topic, "read_uncommitted", a.consume_records // 100 * 100)
            for isolation in ("read_uncommitted", "read_committed"):
                n, nbytes, secs = consume(broker.bootstrap, topic, isolation, a.consume_records // 100 * 100)
                out["consume"][isolation] = {"records_s": n / secs, "mb_s": nbytes / secs / 1e6}
        finally:
            broker.stop()
    print(f"run {run}: {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def median(runs, *path):
    vals = []
    for r in runs:
        v = r
        for k in path:
            v = v[k]
        vals.append(v)
    return statistics.median(vals)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--value-bytes", type=int, default=1024)
    p.add_argument("--sizes", default="1,10,100")
    p.add_argument("--consume-records", type=int, default=300000)
    p.add_argument("--out", default=str(benchlib.REPO / "results/transactions.md"))
    a = p.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",")]
    runs = [one_run(a, i + 1) for i in range(a.runs)]
    command = "scripts/bench-transactions.py " + " ".join(sys.argv[1:])
    base = median(runs, "produce", "idempotent", "records_s")
    lines = [
        "# Transactions: produce and consume throughput",
        "",
        f"Command: `{command.strip()}` (release build; {benchlib.machine()}).",
        f"Medians of {a.runs} runs, each on a fresh broker (one shard per core), topics of "
        f"{PARTITIONS} partitions, {a.value_bytes}-byte values, one confluent-kafka "
        f"(librdkafka) client on the same machine. Script docstring: what each figure counts.",
        "",
        "## Produce, acks=all, linger.ms 5",
        "",
        "| producer | records/s | MB/s | transactions/s | vs idempotent | vs loopback (3,270 MB/s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    mb = median(runs, "produce", "idempotent", "mb_s")
    lines.append(f"| idempotent, no transactions | {base:,.0f} | {mb:,.1f} | — | 1.00 | {mb / LOOPBACK_MB_S:.3f} |")
    for size in a.sizes:
        key = f"txn-{size}"
        rs = median(runs, "produce", key, "records_s")
        mb = median(runs, "produce", key, "mb_s")
        ts = median(runs, "produce", key, "txns_s")
        lines.append(f"| transactional, {size} per transaction | {rs:,.0f} | {mb:,.1f} | {ts:,.0f} | "
                     f"{rs / base:.2f} | {mb / LOOPBACK_MB_S:.3f} |")
    lines += ["", f"## Consume {a.consume_records // 100 * 100:,} committed records (transactions of 100)", "",
              "| isolation.level | records/s | MB/s | vs read_uncommitted |", "| --- | ---: | ---: | ---: |"]
    ru = median(runs, "consume", "read_uncommitted", "records_s")
    for iso in ("read_uncommitted", "read_committed"):
        rs = median(runs, "consume", iso, "records_s")
        mb = median(runs, "consume", iso, "mb_s")
        lines.append(f"| {iso} | {rs:,.0f} | {mb:,.1f} | {rs / ru:.2f} |")
    lines += ["", "## Every run", "", "```", *[json.dumps(r) for r in runs], "```", ""]
    Path(a.out).write_text("\n".join(lines))
    Path(a.out).with_suffix(".json").write_text(json.dumps({"command": command, "machine": benchlib.machine(),
                                                             "runs": runs}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
