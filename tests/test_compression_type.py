"""Topic `compression.type` (issue 13): every Kafka value is accepted by
CreateTopics and IncrementalAlterConfigs and reported by DescribeConfigs;
with a codec set, a batch that arrives in another codec is stored in the
topic's (read back from the segment file) and consumers get every record;
`producer` stores batches as sent. The legacy `message.format.version` is
accepted and ignored with a warning, as Kafka 4.0 does.
"""

import struct
import time

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic
import kafka

from clients import confluent_consume_all, confluent_produce, keyed_records
from conftest import create_topic, unique_topic
import kafka_raw

VALUES = ["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"]
CODEC_IDS = {"uncompressed": 0, "none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
INVALID_CONFIG = 40


def topic_configs(admin, topic):
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return {k: v.value for k, v in admin.describe_configs([res])[res].result(timeout=30).items()}


def stored_codecs(broker, topic, partition):
    """The codec id of every batch in the partition's segment files."""
    codecs = []
    for path in sorted((broker.data_dir / f"{topic}-{partition}").glob("*.log")):
        data = path.read_bytes()
        at = 0
        while at + 61 <= len(data):
            length = struct.unpack(">i", data[at + 8:at + 12])[0]
            if length <= 0:
                break
            attributes = struct.unpack(">h", data[at + 21:at + 23])[0]
            codecs.append(attributes & 7)
            at += 12 + length
    return codecs


def test_every_value_is_accepted_reported_and_a_bad_one_refused(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for value in VALUES:
        topic = unique_topic(f"ct-{value}")
        create_topic(broker.bootstrap, topic, 1, config={"compression.type": value})
        assert topic_configs(admin, topic)["compression.type"] == value
    # The broker default is `producer`.
    plain = unique_topic("ct-default")
    create_topic(broker.bootstrap, plain, 1)
    assert topic_configs(admin, plain)["compression.type"] == "producer"
    for value in VALUES:
        res = ConfigResource(ConfigResource.Type.TOPIC, plain, incremental_configs=[
            ConfigEntry("compression.type", value, incremental_operation=AlterConfigOpType.SET)])
        admin.incremental_alter_configs([res])[res].result(timeout=30)
        assert topic_configs(admin, plain)["compression.type"] == value
    bad = unique_topic("ct-bad")
    fs = admin.create_topics([NewTopic(bad, 1, 1, config={"compression.type": "brotli"})], operation_timeout=30)
    with pytest.raises(KafkaException) as e:
        fs[bad].result(timeout=30)
    assert e.value.args[0].code() == INVALID_CONFIG
    assert "compression.type" in e.value.args[0].str()


def test_message_format_version_is_accepted_and_ignored(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = unique_topic("ct-mfv")
    create_topic(broker.bootstrap, topic, 1, config={"message.format.version": "2.8-IV1"})
    assert "message.format.version" not in topic_configs(admin, topic)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("message.format.version", "3.0", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(timeout=30)
    assert "message.format.version" not in topic_configs(admin, topic)
    assert "message.format.version is ignored" in broker.log_text()


@pytest.mark.parametrize("sent,topic_codec,idempotent", [
    ("gzip", "lz4", True), ("gzip", "lz4", False), ("snappy", "uncompressed", True), ("none", "zstd", True),
    ("lz4", "producer", True)])
def test_batches_are_stored_in_the_topic_codec_and_read_back_whole(broker_factory, sent, topic_codec, idempotent):
    broker = broker_factory(shards=2)
    topic = unique_topic(f"ct-{sent}-{topic_codec}")
    partitions = 3
    create_topic(broker.bootstrap, topic, partitions, config={"compression.type": topic_codec})
    records = keyed_records(3000)
    # Several requests in flight: order within each partition must hold
    # while batches wait for the blocking pool.
    delivered = confluent_produce(broker.bootstrap, topic, records, compression=sent,
                                  **{"enable.idempotence": idempotent, "linger.ms": 2, "batch.num.messages": 100,
                                     "max.in.flight.requests.per.connection": 5})
    want = CODEC_IDS[sent] if topic_codec == "producer" else CODEC_IDS[topic_codec]
    for p in range(partitions):
        codecs = stored_codecs(broker, topic, p)
        assert codecs, f"no batches in partition {p}"
        assert set(codecs) == {want}, f"partition {p}: stored codecs {set(codecs)}, want {want}"
    read, _ = confluent_consume_all(broker.bootstrap, topic, range(partitions))
    got = {v: (p, off) for p, rows in read.items() for off, _k, v, _ts in rows}
    assert got == delivered
    # Per partition, the offsets follow the order records were produced in.
    order = {v: i for i, (_k, v) in enumerate(records)}
    for p, rows in read.items():
        produced = [order[v] for _off, _k, v, _ts in rows]
        assert produced == sorted(produced), f"partition {p} out of produce order"
    # A second client reads the stored codec too.
    consumer = kafka.KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                   enable_auto_commit=False)
    seen = set()
    try:
        consumer.assign([kafka.TopicPartition(topic, p) for p in range(partitions)])
        deadline = time.monotonic() + 60
        while len(seen) < len(delivered) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                seen.update(m.value for m in batch)
    finally:
        consumer.close()
    assert seen == set(delivered)
    assert "panicked" not in broker.log_text()


def test_a_batch_that_does_not_decode_is_refused_and_the_broker_keeps_serving(broker):
    topic = unique_topic("ct-corrupt")
    create_topic(broker.bootstrap, topic, 1, config={"compression.type": "zstd"})
    # A gzip batch (attributes codec 1) whose payload is not gzip, with a
    # valid CRC: it passes the checks a producer-codec topic makes, and
    # fails only when decoded.
    body = b"\x00" * 40
    batch_without_crc = (struct.pack(">hiqqqhii", 1, 0, 0, 0, -1, -1, -1, 1) + body)
    crc = kafka_raw.crc32c(batch_without_crc)
    inner = struct.pack(">ibI", 0, 2, crc) + batch_without_crc
    batch = struct.pack(">qi", 0, len(inner)) + inner
    with kafka_raw.Conn(broker.bootstrap) as conn:
        result = conn.produce(topic, 0, batch, acks=1)
    assert result["partitions"][(topic, 0)]["error_code"] == 2, result  # CORRUPT_MESSAGE
    assert "cannot store the batch in the topic's compression.type" in broker.log_text()
    delivered = confluent_produce(broker.bootstrap, topic, keyed_records(10), compression="gzip")
    assert len(delivered) == 10
    assert set(stored_codecs(broker, topic, 0)) == {CODEC_IDS["zstd"]}
    c_read, _ = confluent_consume_all(broker.bootstrap, topic, [0])
    assert len(c_read[0]) == 10
    assert broker.alive()
