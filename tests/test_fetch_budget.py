"""The Fetch request's byte budget (issue 13): `max_bytes` bounds the whole
response across partitions and shards, `partition_max_bytes` each
partition's part, and only the first batch of the response may exceed them
(KIP-74), as in Kafka.

The librdkafka case from the issue: a consumer with fetch.max.bytes=1000000
and receive.message.max.bytes=1000512 reading 900 KiB records from three
partitions. A response over receive.message.max.bytes makes librdkafka drop
the connection ("Invalid response size") and retry forever.
"""

import struct
import time

import pytest

from confluent_kafka import KafkaError, TopicPartition

from clients import confluent_consumer, confluent_produce
from conftest import create_topic, unique_topic
import kafka_raw

FETCH = 1
RECORD_BYTES = 900 * 1024
RECORDS_PER_PARTITION = 6
PARTITIONS = 3
# Reads from the tail cache (recent records), and zero-copy reads from the
# segment files (cache off): both must keep the budget.
READ_PATHS = pytest.mark.parametrize("sets", [{}, {"log.cache.bytes": 0}], ids=["tail-cache", "zero-copy"])


def _big_records(partition_count, per_partition):
    return [(None, f"{p}-{i}-".encode().ljust(RECORD_BYTES, b"x")) for i in range(per_partition)
            for p in range(partition_count)]


@READ_PATHS
def test_librdkafka_reads_large_records_within_its_fetch_budget(broker_factory, sets):
    # Two shards: the three partitions' reads run on both, and the budget
    # must hold across them.
    broker = broker_factory(shards=2, sets=sets)
    topic = unique_topic("budget")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    records = _big_records(PARTITIONS, RECORDS_PER_PARTITION)
    # One record per batch: the broker cannot answer with fewer bytes than
    # one batch, so batches of several 900 KiB records would need a larger
    # receive.message.max.bytes (as with Kafka).
    delivered = {}
    for p in range(PARTITIONS):
        mine = [r for r in records if r[1].startswith(f"{p}-".encode())]
        delivered.update(confluent_produce(broker.bootstrap, topic, mine, partition=p, **{"batch.num.messages": 1}))
    assert len(delivered) == len(records)

    c = confluent_consumer(broker.bootstrap, **{
        "fetch.max.bytes": 1_000_000,
        "receive.message.max.bytes": 1_000_512,
        "max.partition.fetch.bytes": 1_048_576,
        "fetch.wait.max.ms": 100,
    })
    errors = []
    got = {}
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 60
        while len(got) < len(records) and time.monotonic() < deadline:
            for m in c.consume(num_messages=100, timeout=0.5):
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        errors.append(m.error())
                    continue
                got[m.value()] = (m.partition(), m.offset())
    finally:
        c.close()
    assert not errors, f"consumer errors: {errors[:3]}"
    assert got == delivered, f"read {len(got)} of {len(records)} records"
    log = broker.log_text()
    assert "panicked" not in log


def _fetch_v11(topic, partitions, max_bytes, partition_max_bytes):
    k = kafka_raw
    parts = k.array(
        partitions,
        lambda p: k.int32(p) + k.int32(-1) + k.int64(0) + k.int64(-1) + k.int32(partition_max_bytes),
    )
    return (
        k.int32(-1)  # replica id
        + k.int32(0)  # max wait
        + k.int32(1)  # min bytes
        + k.int32(max_bytes)
        + k.int8(0)  # read uncommitted
        + k.int32(0)  # session id
        + k.int32(-1)  # no session
        + k.array([topic], lambda t: k.string(t) + parts)
        + k.array([], k.string)  # forgotten topics
        + k.string("")  # rack
    )


def _records_bytes_per_partition(r, topic):
    """{partition: bytes of records} from a Fetch v11 response body."""
    r.int32()  # throttle
    assert r.int16() == 0
    r.int32()  # session
    out = {}
    for _ in range(r.int32()):
        assert r.string() == topic
        for _ in range(r.int32()):
            partition = r.int32()
            assert r.int16() == 0
            r.int64()  # high watermark
            r.int64()  # last stable offset
            r.int64()  # log start offset
            aborted = r.int32()
            assert aborted <= 0
            r.int32()  # preferred read replica
            n = r.int32()
            out[partition] = r._take(n) if n > 0 else b""
    return out


def _batch_sizes(records):
    """Sizes of the whole batches in `records` (a partial last one ignored)."""
    sizes, at = [], 0
    while at + 12 <= len(records):
        length = struct.unpack(">i", records[at + 8:at + 12])[0]
        if at + 12 + length > len(records):
            break
        sizes.append(12 + length)
        at += 12 + length
    return sizes


@READ_PATHS
def test_response_and_partition_budgets_hold_and_the_first_batch_always_comes(broker_factory, sets):
    broker = broker_factory(shards=2, sets=sets)
    topic = unique_topic("budget-raw")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    small = [(None, f"{p}-{i}-".encode().ljust(10_000, b"s")) for i in range(50) for p in range(PARTITIONS)]
    for p in range(PARTITIONS):
        mine = [r for r in small if r[1].startswith(f"{p}-".encode())]
        confluent_produce(broker.bootstrap, topic, mine, partition=p, **{"batch.num.messages": 5})
    with kafka_raw.Conn(broker.bootstrap) as conn:
        # Response budget 100,000 bytes, partitions 60,000 each: at most the
        # budget in total, each partition at most its own.
        body = conn.request(FETCH, 11, _fetch_v11(topic, list(range(PARTITIONS)), 100_000, 60_000))
        parts = _records_bytes_per_partition(body, topic)
        total = sum(len(b) for b in parts.values())
        assert 0 < total <= 100_000, {p: len(b) for p, b in parts.items()}
        assert all(len(b) <= 60_000 for b in parts.values()), {p: len(b) for p, b in parts.items()}
        # Whole batches only, the budget used up to less than one batch:
        # another batch of ~50 KB would not have fit.
        assert all(len(b) == sum(_batch_sizes(b)) for b in parts.values())
        assert total > 100_000 - 60_000
        # A budget below one batch still returns the first batch whole, and
        # nothing else.
        body = conn.request(FETCH, 11, _fetch_v11(topic, list(range(PARTITIONS)), 1_000, 1_000))
        parts = _records_bytes_per_partition(body, topic)
        non_empty = [b for b in parts.values() if b]
        assert len(non_empty) == 1, {p: len(b) for p, b in parts.items()}
        assert len(_batch_sizes(non_empty[0])) == 1 and len(non_empty[0]) > 1_000
