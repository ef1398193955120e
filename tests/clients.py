"""Client-side helpers: produce with delivery reports, read partitions back with
manual assignment (the broker has no consumer groups), and verify what was
read against what was acknowledged. All waits are bounded."""

import random
import time
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


# --- record generation -----------------------------------------------------------


def keyed_records(n, n_keys=1000, seed=1):
    """n (key, value) pairs; keys drawn from a pool of n_keys, each value carries
    the key and a per-key sequence number: b'key-0042|000017|<filler>'."""
    rng = random.Random(seed)
    seq = defaultdict(int)
    out = []
    for _ in range(n):
        k = f"key-{rng.randrange(n_keys):04d}"
        s = seq[k]
        seq[k] += 1
        filler = (f"{k}:{s}:" * 3)[: 20 + (s % 40)]
        out.append((k.encode(), f"{k}|{s:06d}|{filler}".encode()))
    return out


def parse_value(value: bytes):
    k, s, _ = value.decode().split("|", 2)
    return k, int(s)


# --- confluent-kafka -----------------------------------------------------------------


def confluent_producer(bootstrap, **conf):
    c = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "queue.buffering.max.kbytes": 1048576,
        "message.timeout.ms": 60000,
        "acks": "all",
        "reconnect.backoff.max.ms": 1000,
    }
    c.update(conf)
    return Producer(c)


def confluent_produce(bootstrap, topic, records, compression="none", timeout=180.0, partition=None, **conf):
    """Produce records [(key, value)] and wait for every delivery report.
    Returns {value: (partition, offset)}; asserts no delivery errors."""
    p = confluent_producer(bootstrap, **{"compression.type": compression}, **conf)
    delivered = {}
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.value()] = (msg.partition(), msg.offset())

    deadline = time.monotonic() + timeout
    for k, v in records:
        while True:
            try:
                if partition is None:
                    p.produce(topic, value=v, key=k, on_delivery=on_delivery)
                else:
                    p.produce(topic, value=v, key=k, partition=partition, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
                assert time.monotonic() < deadline, "producer queue stayed full"
        p.poll(0)
    remaining = p.flush(max(1.0, deadline - time.monotonic()))
    assert remaining == 0, f"{remaining} messages not delivered within {timeout}s"
    assert not errors, f"{len(errors)} delivery errors, first: {errors[:3]}"
    assert len(delivered) == len(records), f"delivered {len(delivered)} of {len(records)} (values must be unique)"
    return delivered


def confluent_delivery_errors(bootstrap, topic, records, partition=0, timeout=60.0, **conf):
    """Produce records [(key, value)] and return the error code of each failed
    delivery report (KafkaError codes), in report order."""
    p = confluent_producer(bootstrap, **conf)
    codes = []

    def on_delivery(err, msg):
        if err is not None:
            codes.append(err.code())

    for k, v in records:
        p.produce(topic, value=v, key=k, partition=partition, on_delivery=on_delivery)
    assert p.flush(timeout) == 0, f"delivery reports missing after {timeout}s"
    return codes


def confluent_consumer(bootstrap, **conf):
    c = {
        "bootstrap.servers": bootstrap,
        # confluent-kafka insists on a group.id even for assign(); nothing is
        # committed and no group API is used (the broker has none).
        "group.id": "e2e-assign-only",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "fetch.wait.max.ms": 100,
    }
    c.update(conf)
    return Consumer(c)


def watermarks(bootstrap, topic, partitions, timeout=10.0):
    c = confluent_consumer(bootstrap)
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in partitions}
    finally:
        c.close()


def confluent_consume_all(bootstrap, topic, partitions, timeout=180.0, start_offset=0):
    """Read every partition from start_offset up to its high watermark (taken at
    the start). Returns ({partition: [(offset, key, value, timestamp)]}, {partition: (low, high)})."""
    c = confluent_consumer(bootstrap)
    try:
        marks = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0) for p in partitions}
        out = {p: [] for p in partitions}
        pos = {p: start_offset for p in partitions}
        todo = {p for p in partitions if marks[p][1] > start_offset}
        if todo:
            c.assign([TopicPartition(topic, p, start_offset) for p in sorted(todo)])
        deadline = time.monotonic() + timeout
        while todo:
            assert time.monotonic() < deadline, (
                f"timed out reading {topic}: positions {pos}, high watermarks {marks}")
            for m in c.consume(num_messages=10000, timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"consume error: {m.error()}")
                p = m.partition()
                out[p].append((m.offset(), m.key(), m.value(), m.timestamp()[1]))
                pos[p] = m.offset() + 1
                if pos[p] >= marks[p][1]:
                    todo.discard(p)
        return out, marks
    finally:
        c.close()


# --- verification -------------------------------------------------------------------


def verify_keyed(read, delivered, expected_count):
    """read: {partition: [(offset, key, value, ...)]}; delivered: {value: (partition, offset)}."""
    total = sum(len(v) for v in read.values())
    assert total == expected_count, f"read {total} records, expected {expected_count}"
    key_partition = {}
    by_location = {}
    for p, recs in read.items():
        offsets = [r[0] for r in recs]
        assert offsets == sorted(set(offsets)), f"partition {p}: offsets not strictly increasing / duplicated"
        if offsets:
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), (
                f"partition {p}: offsets not contiguous ({offsets[0]}..{offsets[-1]} for {len(offsets)} records)")
        last_seq = {}
        for off, key, value, *_ in recs:
            k, s = parse_value(value)
            assert key == k.encode(), f"p{p}@{off}: key {key!r} does not match value {value[:30]!r}"
            assert key_partition.setdefault(k, p) == p, f"key {k} found in partitions {key_partition[k]} and {p}"
            assert s > last_seq.get(k, -1), f"p{p}@{off}: key {k} seq {s} after seq {last_seq.get(k)} (order broken)"
            last_seq[k] = s
            by_location[(p, off)] = value
    # every acknowledged record is where its delivery report said, and nothing else is there
    mismatched = [(v, loc) for v, loc in delivered.items() if by_location.get(loc) != v]
    assert not mismatched, f"{len(mismatched)} delivered records not at their reported offset, e.g. {mismatched[:3]}"
    assert len(by_location) == len(delivered)
    # per-key sequences are complete (0..n-1) overall
    seqs = defaultdict(list)
    for v in by_location.values():
        k, s = parse_value(v)
        seqs[k].append(s)
    for k, ss in seqs.items():
        assert sorted(ss) == list(range(len(ss))), f"key {k}: sequence numbers missing or duplicated"
