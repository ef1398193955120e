"""Steps shared by tests/test_partition_scale.py (20,000 partitions) and
scripts/partition-scale.py (100,000): one record per partition through
confluent-kafka with acks=all, and reading every acknowledged record back at
its offset. Every wait is bounded."""

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition


def produce_one_per_partition(bootstrap, topic, partitions, tag, timeout_s=300):
    """{(partition, offset): value} of the records the broker acknowledged,
    one per partition, each value unique."""
    acked, failed = {}, []

    def on_delivery(err, msg):
        if err is not None:
            failed.append((msg.partition(), str(err)))
        else:
            acked[(msg.partition(), msg.offset())] = msg.value()

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20,
                  "queue.buffering.max.messages": max(100_000, 2 * partitions),
                  "message.timeout.ms": timeout_s * 1000})
    for i in range(partitions):
        p.produce(topic, value=b"%s-%d" % (tag, i), partition=i, on_delivery=on_delivery)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(timeout_s)
    assert left == 0, f"{left} records not delivered within {timeout_s} s"
    assert not failed, f"{len(failed)} records refused, e.g. {failed[:5]}"
    return acked


def check_every_record(bootstrap, topic, acked, timeout_s=300):
    """Reads every partition from its start until each acknowledged record
    was seen, and fails on one missing or holding another value."""
    partitions = sorted({p for p, _ in acked})
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"scale-check-{uuid.uuid4()}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "queued.max.messages.kbytes": 1024, "fetch.max.bytes": 8 << 20})
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        wanted = set(acked)
        seen = {}
        deadline = time.monotonic() + timeout_s
        while wanted - seen.keys():
            assert time.monotonic() < deadline, \
                f"{len(wanted - seen.keys())} acknowledged records not read within {timeout_s} s, " \
                f"e.g. {sorted(wanted - seen.keys())[:5]}"
            for m in c.consume(num_messages=10_000, timeout=1.0):
                assert m.error() is None, m.error()
                seen[(m.partition(), m.offset())] = m.value()
        wrong = [(k, acked[k], seen[k]) for k in acked if seen[k] != acked[k]]
        assert not wrong, f"{len(wrong)} offsets hold another value, e.g. {wrong[:5]}"
    finally:
        c.close()
