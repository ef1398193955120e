"""Produce/consume round trips with three real Kafka clients, plus the admin APIs
(CreateTopics, DeleteTopics, CreatePartitions, ListOffsets, DescribeConfigs,
DescribeCluster) and topic auto-creation."""

import asyncio
import time
from collections import Counter

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (AdminClient, ConfigResource, NewPartitions, NewTopic, OffsetSpec,
                                   ResourceType)

import kafka_raw
from clients import (CODECS, confluent_consume_all, confluent_consumer, confluent_produce, keyed_records,
                     verify_keyed)
from conftest import create_topic, unique_topic, wait_until

N_RECORDS = 100_000
PARTITIONS = 6
ALL_PARTITIONS = list(range(PARTITIONS))


def _metadata_node_id(bootstrap):
    a = AdminClient({"bootstrap.servers": bootstrap})
    md = a.list_topics(timeout=10)
    assert len(md.brokers) == 1, md.brokers
    return next(iter(md.brokers))


def _kafka_error(excinfo_value) -> KafkaError:
    e = excinfo_value
    assert isinstance(e, KafkaException), repr(e)
    return e.args[0]


# --- confluent-kafka (librdkafka) ----------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_keyed_100k_roundtrip_preserves_offsets_and_per_key_order(broker, codec):
    topic = unique_topic(f"ck-{codec}")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    records = keyed_records(N_RECORDS, n_keys=1000, seed=hash(codec) & 0xFFFF)
    delivered = confluent_produce(broker.bootstrap, topic, records, compression=codec)
    read, marks = confluent_consume_all(broker.bootstrap, topic, ALL_PARTITIONS)
    assert sum(h for _, h in marks.values()) == N_RECORDS, f"high watermarks {marks}"
    assert all(lo == 0 for lo, _ in marks.values()), f"low watermarks {marks}"
    verify_keyed(read, delivered, N_RECORDS)
    # a 1000-key pool over 6 partitions: every partition gets some
    assert all(len(read[p]) > 0 for p in ALL_PARTITIONS), {p: len(r) for p, r in read.items()}


def test_confluent_unkeyed_records_spread_over_partitions(broker):
    topic = unique_topic("unkeyed")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    n = 3000
    records = [(None, f"unkeyed-{i:06d}".encode()) for i in range(n)]
    # sticky.partitioning.linger.ms=0: every null-key message gets a random partition
    delivered = confluent_produce(broker.bootstrap, topic, records, **{"sticky.partitioning.linger.ms": 0,
                                                                       "linger.ms": 1})
    per_partition = Counter(p for p, _ in delivered.values())
    assert len(per_partition) >= 4, f"unkeyed records landed only in {dict(per_partition)}"
    read, _ = confluent_consume_all(broker.bootstrap, topic, ALL_PARTITIONS)
    got = {(p, off): v for p, recs in read.items() for off, k, v, _ in recs}
    assert all(k is None for recs in read.values() for _, k, _, _ in recs)
    assert len(got) == n
    assert all(got[loc] == v for v, loc in delivered.items())


# --- kafka-python --------------------------------------------------------------------

# kafka-python is pure Python: ~100k records per codec round trip takes tens of
# seconds on 2 shared cores, still inside the suite budget, so the full count is kept.
KP_RECORDS = N_RECORDS


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_keyed_roundtrip_preserves_offsets_and_per_key_order(broker, codec):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP

    topic = unique_topic(f"kp-{codec}")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    records = keyed_records(KP_RECORDS, n_keys=1000, seed=7 + len(codec))
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type=None if codec == "none" else codec,
                             acks="all", linger_ms=5, batch_size=256 * 1024,
                             # kafka-python 3's default idempotence stays on: InitProducerId and
                             # per-partition sequence checks are exercised on every codec.
                             max_request_size=8 * 1024 * 1024, request_timeout_ms=30000, max_block_ms=60000)
    try:
        futures = [(v, producer.send(topic, key=k, value=v)) for k, v in records]
        producer.flush(timeout=180)
        delivered = {}
        for v, f in futures:
            md = f.get(timeout=10)
            delivered[v] = (md.partition, md.offset)
    finally:
        producer.close(timeout=10)
    assert len(delivered) == KP_RECORDS

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                             max_poll_records=20000, fetch_max_wait_ms=100, request_timeout_ms=30000,
                             consumer_timeout_ms=1000)
    try:
        tps = [KTP(topic, p) for p in ALL_PARTITIONS]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        begins = consumer.beginning_offsets(tps)
        assert all(o == 0 for o in begins.values()), begins
        assert sum(ends.values()) == KP_RECORDS, ends
        for tp in tps:
            consumer.seek(tp, 0)
        read = {p: [] for p in ALL_PARTITIONS}
        deadline = time.monotonic() + 180
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "timed out consuming with kafka-python"
            for tp, msgs in consumer.poll(timeout_ms=500).items():
                read[tp.partition].extend((m.offset, m.key, m.value, m.timestamp) for m in msgs)
    finally:
        consumer.close()
    verify_keyed(read, delivered, KP_RECORDS)


# --- aiokafka -------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "gzip", "lz4", "zstd", "snappy"])
def test_aiokafka_roundtrip(broker, codec):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import TopicPartition as ATP

    topic = unique_topic(f"aio-{codec}")
    create_topic(broker.bootstrap, topic, 3)
    records = keyed_records(5000, n_keys=50, seed=3)

    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5,
                                    compression_type=None if codec == "none" else codec, request_timeout_ms=30000)
        await asyncio.wait_for(producer.start(), 30)
        try:
            futs = [await producer.send(topic, key=k, value=v) for k, v in records]
            await asyncio.wait_for(producer.flush(), 60)
            delivered = {}
            for (k, v), f in zip(records, futs):
                md = await asyncio.wait_for(f, 30)
                delivered[v] = (md.partition, md.offset)
        finally:
            await asyncio.wait_for(producer.stop(), 30)

        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=100, request_timeout_ms=30000)
        await asyncio.wait_for(consumer.start(), 30)
        try:
            tps = [ATP(topic, p) for p in range(3)]
            consumer.assign(tps)
            ends = await asyncio.wait_for(consumer.end_offsets(tps), 30)
            for tp in tps:
                consumer.seek(tp, 0)  # explicit offsets (seek_to_beginning can race the initial reset)
            read = {p: [] for p in range(3)}
            deadline = time.monotonic() + 60
            while sum(len(r) for r in read.values()) < sum(ends.values()):
                assert time.monotonic() < deadline, (
                    f"timed out consuming with aiokafka: ends {ends}, read {[(p, len(r)) for p, r in read.items()]}")
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, msgs in batch.items():
                    read[tp.partition].extend((m.offset, m.key, m.value, m.timestamp) for m in msgs)
        finally:
            await asyncio.wait_for(consumer.stop(), 30)
        return delivered, read, ends

    delivered, read, ends = asyncio.run(asyncio.wait_for(run(), 240))
    assert sum(ends.values()) == len(records)
    verify_keyed(read, delivered, len(records))


# --- topic auto-creation ----------------------------------------------------------------


def test_topic_auto_created_by_metadata_request(broker_factory):
    b = broker_factory(sets={"auto.create.topics.enable": "true", "num.partitions": 3})
    topic = unique_topic("auto-md")

    def created():
        with kafka_raw.Conn(b.bootstrap) as c:
            t = c.metadata([topic])["topics"].get(topic)
        # the first answer may be LEADER_NOT_AVAILABLE (5) while the topic is created
        return t if t and t["error_code"] == 0 and len(t["partitions"]) == 3 else None

    t = wait_until(created, 20, interval=0.2, what=f"auto-created topic {topic}")
    assert all(p["error_code"] == 0 and p["leader"] >= 0 for p in t["partitions"]), t


def test_topic_auto_created_by_produce(broker_factory):
    b = broker_factory(sets={"auto.create.topics.enable": "true", "num.partitions": 4})
    topic = unique_topic("auto-produce")
    records = [(f"k{i}".encode(), f"auto-{i}".encode()) for i in range(200)]
    delivered = confluent_produce(b.bootstrap, topic, records, timeout=60)
    md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(topic=topic, timeout=10)
    assert topic in md.topics and md.topics[topic].error is None
    assert len(md.topics[topic].partitions) == 4
    read, _ = confluent_consume_all(b.bootstrap, topic, range(4), timeout=60)
    assert sorted(v for recs in read.values() for _, _, v, _ in recs) == sorted(delivered)


def test_unknown_topic_not_created_when_auto_create_disabled(broker_factory):
    b = broker_factory(sets={"auto.create.topics.enable": "false"})
    topic = unique_topic("no-auto")
    with kafka_raw.Conn(b.bootstrap) as c:
        t = c.metadata([topic])["topics"].get(topic)
        assert t is not None and t["error_code"] == kafka_raw.UNKNOWN_TOPIC_OR_PARTITION, t
        time.sleep(0.5)
        assert topic not in c.metadata(None)["topics"]


# --- CreateTopics / DeleteTopics / CreatePartitions ----------------------------------------


@pytest.mark.parametrize("name", ["bad name!", ".", "..", "x" * 250, "a/b", "tab\there", "ünïcode"],
                         ids=["space-bang", "dot", "dotdot", "250chars", "slash", "tab", "unicode"])
def test_create_topics_rejects_invalid_topic_name(broker, admin, name):
    fs = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)], request_timeout=15)
    with pytest.raises(KafkaException) as ei:
        fs[name].result(timeout=20)
    err = _kafka_error(ei.value)
    assert err.code() == KafkaError.TOPIC_EXCEPTION, f"expected INVALID_TOPIC_EXCEPTION (17), got {err}"
    md = admin.list_topics(timeout=10)
    assert name not in md.topics


def test_create_topics_accepts_legal_edge_names(broker, admin):
    names = ["a" * 249, "A.b_c-9", "_x"]
    fs = admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names], request_timeout=15)
    for n in names:
        fs[n].result(timeout=20)
    md = wait_until(lambda: (m := admin.list_topics(timeout=10)) and all(n in m.topics for n in names) and m, 15,
                    what="legal topics in metadata")
    assert all(md.topics[n].error is None for n in names)


def test_create_topics_duplicate_is_topic_already_exists(broker, admin):
    topic = unique_topic("dup")
    create_topic(broker.bootstrap, topic, 2)
    fs = admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)], request_timeout=15)
    with pytest.raises(KafkaException) as ei:
        fs[topic].result(timeout=20)
    assert _kafka_error(ei.value).code() == KafkaError.TOPIC_ALREADY_EXISTS


def test_delete_topics_removes_topic_from_metadata(broker, admin):
    keep, gone = unique_topic("keep"), unique_topic("gone")
    create_topic(broker.bootstrap, keep, 2)
    create_topic(broker.bootstrap, gone, 3)
    confluent_produce(broker.bootstrap, gone, [(None, f"v{i}".encode()) for i in range(100)], timeout=60)
    fs = admin.delete_topics([gone], operation_timeout=20, request_timeout=20)
    fs[gone].result(timeout=30)
    wait_until(lambda: gone not in admin.list_topics(timeout=10).topics, 20, what=f"{gone} gone from metadata")
    assert keep in admin.list_topics(timeout=10).topics
    # deleting it again: UNKNOWN_TOPIC_OR_PARTITION
    fs = admin.delete_topics([gone], operation_timeout=20, request_timeout=20)
    with pytest.raises(KafkaException) as ei:
        fs[gone].result(timeout=30)
    assert _kafka_error(ei.value).code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_delete_then_recreate_topic_starts_empty(broker, admin):
    topic = unique_topic("recreate")
    create_topic(broker.bootstrap, topic, 1)
    confluent_produce(broker.bootstrap, topic, [(None, f"old{i}".encode()) for i in range(50)], timeout=60)
    admin.delete_topics([topic], operation_timeout=20)[topic].result(timeout=30)
    wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, 20, what="topic deleted")
    create_topic(broker.bootstrap, topic, 1)
    read, marks = confluent_consume_all(broker.bootstrap, topic, [0], timeout=30)
    assert marks[0] == (0, 0), f"recreated topic still has data: {marks}"


def test_create_partitions_increases_partition_count(broker, admin):
    topic = unique_topic("grow")
    create_topic(broker.bootstrap, topic, 2)
    fs = admin.create_partitions([NewPartitions(topic, 5)], operation_timeout=20, request_timeout=20)
    fs[topic].result(timeout=30)
    wait_until(lambda: len(admin.list_topics(topic=topic, timeout=10).topics[topic].partitions) == 5, 20,
               what="5 partitions in metadata")
    delivered = confluent_produce(broker.bootstrap, topic, [(None, b"to-p4")], partition=4, timeout=60)
    assert delivered[b"to-p4"] == (4, 0)
    # shrinking is refused with INVALID_PARTITIONS
    fs = admin.create_partitions([NewPartitions(topic, 3)], request_timeout=20)
    with pytest.raises(KafkaException) as ei:
        fs[topic].result(timeout=30)
    assert _kafka_error(ei.value).code() == KafkaError.INVALID_PARTITIONS


# --- ListOffsets ------------------------------------------------------------------------


def test_list_offsets_earliest_latest_and_by_timestamp(broker, admin):
    topic = unique_topic("offsets")
    create_topic(broker.bootstrap, topic, 2)
    base = int(time.time() * 1000) - 3_600_000  # an hour ago, 10 ms apart
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5})
    errors = []
    for i in range(100):
        p.produce(topic, value=f"ts-{i}".encode(), partition=0, timestamp=base + 10 * i,
                  on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(30) == 0 and not errors, errors

    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    res = admin.list_offsets({tp0: OffsetSpec.earliest(), tp1: OffsetSpec.earliest()}, request_timeout=15)
    assert res[tp0].result(timeout=20).offset == 0
    assert res[tp1].result(timeout=20).offset == 0
    res = admin.list_offsets({tp0: OffsetSpec.latest(), tp1: OffsetSpec.latest()}, request_timeout=15)
    assert res[tp0].result(timeout=20).offset == 100
    assert res[tp1].result(timeout=20).offset == 0
    # first record with timestamp >= base+505 is record 51 (ts base+510)
    res = admin.list_offsets({tp0: OffsetSpec.for_timestamp(base + 505)}, request_timeout=15)
    info = res[tp0].result(timeout=20)
    assert info.offset == 51 and info.timestamp == base + 510, (info.offset, info.timestamp)
    res = admin.list_offsets({tp0: OffsetSpec.for_timestamp(base)}, request_timeout=15)
    assert res[tp0].result(timeout=20).offset == 0

    c = confluent_consumer(broker.bootstrap)
    try:
        got = c.offsets_for_times([TopicPartition(topic, 0, base + 990)], timeout=15)
        assert got[0].offset == 99 and got[0].error is None, got
        got = c.offsets_for_times([TopicPartition(topic, 0, base + 1)], timeout=15)
        assert got[0].offset == 1, got
        # past the last timestamp: no offset (-1, i.e. end)
        got = c.offsets_for_times([TopicPartition(topic, 0, base + 10_000_000)], timeout=15)
        assert got[0].offset == -1, got
        assert c.get_watermark_offsets(tp0, timeout=10) == (0, 100)
    finally:
        c.close()


# --- DescribeConfigs / DescribeCluster ----------------------------------------------------


def test_describe_configs_topic_returns_real_entries(broker_factory):
    b = broker_factory(sets={"log.segment.bytes": 1048576})
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    topic = unique_topic("cfg")
    create_topic(b.bootstrap, topic, 1, config={"retention.ms": "3600000"})
    res = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=15)
    entries = next(iter(res.values())).result(timeout=20)
    for key in ("retention.ms", "segment.bytes", "cleanup.policy", "max.message.bytes"):
        assert key in entries, f"{key} missing from topic config: {sorted(entries)}"
    assert entries["retention.ms"].value == "3600000"
    assert entries["segment.bytes"].value == "1048576", entries["segment.bytes"]
    assert entries["cleanup.policy"].value == "delete"


def test_describe_configs_broker_returns_real_entries(broker_factory):
    b = broker_factory(sets={"num.partitions": 5, "log.segment.bytes": 2097152})
    node = _metadata_node_id(b.bootstrap)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    res = admin.describe_configs([ConfigResource(ResourceType.BROKER, str(node))], request_timeout=15)
    entries = next(iter(res.values())).result(timeout=20)
    assert entries["num.partitions"].value == "5", entries.get("num.partitions")
    assert entries["log.segment.bytes"].value == "2097152"
    assert "message.max.bytes" in entries and int(entries["message.max.bytes"].value) > 0


def test_describe_cluster_reports_the_single_node(broker):
    node = _metadata_node_id(broker.bootstrap)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    desc = admin.describe_cluster(request_timeout=15).result(timeout=20)
    assert len(desc.nodes) == 1, desc.nodes
    n = desc.nodes[0]
    assert n.id == node and n.port == broker.port and n.host in ("127.0.0.1", "localhost"), n
    assert desc.controller is not None and desc.controller.id == node
    assert desc.cluster_id, "cluster id must be set"


# --- fetch behaviour: middle offsets, tailing, headers, large records, acks=0 ----------------


def test_fetch_from_middle_offset_starts_exactly_there(broker):
    topic = unique_topic("middle")
    create_topic(broker.bootstrap, topic, 1)
    records = [(None, f"mid-{i:06d}".encode()) for i in range(20000)]
    confluent_produce(broker.bootstrap, topic, records, timeout=60)
    for start in (1, 9999, 12345, 19999):
        read, marks = confluent_consume_all(broker.bootstrap, topic, [0], timeout=60, start_offset=start)
        got = read[0]
        assert got[0][0] == start, f"asked for offset {start}, first record returned is {got[0][0]}"
        assert [v for _, _, v, _ in got] == [v for _, v in records[start:]]


def test_consumer_tails_records_produced_after_it_caught_up(broker):
    """A fetch long-polling on an empty log (fetch.wait.max.ms=5000) must be woken
    by the next append: each record reaches the waiting consumer well before the
    5 s wait would expire."""
    from confluent_kafka import Producer
    topic = unique_topic("tail")
    create_topic(broker.bootstrap, topic, 2)
    c = confluent_consumer(broker.bootstrap, **{"fetch.wait.max.ms": 5000})
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0})
    try:
        c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
        early = [m for m in c.consume(num_messages=10, timeout=1.0) if not m.error()]
        assert early == [], early
        got, latencies = [], []
        for i in range(20):
            p.produce(topic, value=f"live-{i}".encode(), partition=i % 2)
            assert p.flush(10) == 0
            t0 = time.monotonic()
            while len(got) <= i:
                assert time.monotonic() - t0 < 2.0, (
                    f"record live-{i} not delivered to a long-polling consumer within 2 s (fetch.wait.max.ms=5000): "
                    "the fetch is not woken by the append")
                m = c.poll(0.02)
                if m is not None and not m.error():
                    got.append(m.value())
            latencies.append(time.monotonic() - t0)
        assert got == [f"live-{i}".encode() for i in range(20)]
        print(f"append-to-consumer latency: median {sorted(latencies)[10] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    finally:
        c.close()


def test_headers_keys_timestamps_and_null_values_round_trip(broker):
    from confluent_kafka import Producer
    topic = unique_topic("hdr")
    create_topic(broker.bootstrap, topic, 1)
    ts0 = int(time.time() * 1000) - 86_400_000
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "compression.type": "lz4", "linger.ms": 5})
    expected = []
    for i in range(300):
        headers = [("h1", f"v{i}".encode()), ("empty", b""), ("dup", b"a"), ("dup", b"b")] if i % 3 else []
        key = None if i % 5 == 0 else f"key{i}".encode()
        value = None if i % 7 == 0 else f"value{i}".encode() * (i % 13)
        p.produce(topic, key=key, value=value, headers=headers, partition=0, timestamp=ts0 + i)
        expected.append((key, value, headers, ts0 + i))
    assert p.flush(30) == 0
    c = confluent_consumer(broker.bootstrap)
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < len(expected):
            assert time.monotonic() < deadline, f"read {len(got)} of {len(expected)}"
            for m in c.consume(num_messages=1000, timeout=0.5):
                assert not m.error(), m.error()
                got.append((m.key(), m.value(), m.headers() or [], m.timestamp()[1]))
    finally:
        c.close()
    for i, (e, g) in enumerate(zip(expected, got)):
        # an empty value produced as b"" may read back as b"" (never as None) and vice versa
        assert g[0] == e[0] and g[2] == e[2] and g[3] == e[3], f"record {i}: expected {e}, got {g}"
        assert g[1] == e[1] or (not g[1] and e[1] is not None and not e[1]), f"record {i} value: {e[1]!r} -> {g[1]!r}"


def test_large_records_near_message_max_bytes(broker_factory):
    b = broker_factory(sets={"message.max.bytes": 4 * 1024 * 1024})
    topic = unique_topic("large")
    create_topic(b.bootstrap, topic, 2)
    records = [(f"k{i}".encode(), bytes([i]) * (3 * 1024 * 1024 + i)) for i in range(6)]
    delivered = confluent_produce(b.bootstrap, topic, records, timeout=120, **{"message.max.bytes": 5 * 1024 * 1024})
    read, _ = confluent_consume_all(b.bootstrap, topic, range(2), timeout=120)
    got = {(p, off): v for p, recs in read.items() for off, _k, v, _ in recs}
    assert all(got.get(loc) == v for v, loc in delivered.items())


def test_acks0_records_are_appended(broker):
    topic = unique_topic("acks0")
    create_topic(broker.bootstrap, topic, 3)
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": 0, "linger.ms": 5})
    n = 10000
    for i in range(n):
        p.produce(topic, key=f"k{i % 30}".encode(), value=f"fire-and-forget-{i:05d}".encode())
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    # acks=0: no response, so wait (bounded) until everything has been appended
    from clients import watermarks
    wait_until(lambda: sum(h for _, h in watermarks(broker.bootstrap, topic, range(3)).values()) >= n, 30,
               what=f"{n} acks=0 records appended")
    read, _ = confluent_consume_all(broker.bootstrap, topic, range(3), timeout=60)
    values = sorted(v for recs in read.values() for _, _, v, _ in recs)
    assert values == sorted(f"fire-and-forget-{i:05d}".encode() for i in range(n))
