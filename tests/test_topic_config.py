"""Topic configuration as Kafka has it: AlterConfigs and
IncrementalAlterConfigs through confluent-kafka's AdminClient apply live,
persist across a restart, and bad values get INVALID_CONFIG and change
nothing. DeleteRecords advances the log start offset."""

import os
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    OffsetSpec,
)

from clients import confluent_delivery_errors, confluent_produce, watermarks
from conftest import create_topic, unique_topic, wait_until

INVALID_CONFIG = 40


def topic_configs(admin, topic):
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return {k: v.value for k, v in admin.describe_configs([res])[res].result(timeout=30).items()}


def incremental(admin, topic, entries):
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[ConfigEntry(k, v, incremental_operation=op) for k, v, op in entries],
    )
    return admin.incremental_alter_configs([res])[res].result(timeout=30)


def segment_files(broker, topic, partition=0):
    d = broker.data_dir / f"{topic}-{partition}"
    return sorted(f for f in os.listdir(d) if f.endswith(".log"))


def fill(bootstrap, topic, n, size=1000):
    records = [(None, b"%08d" % i + b"x" * (size - 8)) for i in range(n)]
    # Small batches, so the records span several segments.
    return confluent_produce(bootstrap, topic, records, partition=0, **{"batch.size": 8192})


def test_retention_change_deletes_segments_live_and_survives_restart(broker):
    topic = unique_topic("retention")
    admin = create_topic(broker.bootstrap, topic, 1, config={"segment.bytes": "65536"})
    fill(broker.bootstrap, topic, 400)
    before = segment_files(broker, topic)
    assert len(before) >= 4, before
    low, high = watermarks(broker.bootstrap, topic, [0])[0]
    assert low == 0 and high == 400

    time.sleep(0.1)
    incremental(admin, topic, [("retention.ms", "1", AlterConfigOpType.SET)])
    assert topic_configs(admin, topic)["retention.ms"] == "1"
    # Applied live: every segment but the active one goes, the start offset moves up.
    wait_until(lambda: len(segment_files(broker, topic)) == 1, 10, what="old segments deleted")
    low, high = watermarks(broker.bootstrap, topic, [0])[0]
    assert 0 < low <= high == 400

    incremental(admin, topic, [("retention.ms", "604800000", AlterConfigOpType.SET)])
    broker.stop()
    broker.restart()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    configs = topic_configs(admin, topic)
    assert configs["retention.ms"] == "604800000"
    assert configs["segment.bytes"] == "65536"
    assert watermarks(broker.bootstrap, topic, [0])[0] == (low, high)


def test_delete_config_restores_the_broker_default(broker, admin):
    topic = unique_topic("restore")
    create_topic(broker.bootstrap, topic, 1, config={"retention.ms": "123456"})
    assert topic_configs(admin, topic)["retention.ms"] == "123456"
    incremental(admin, topic, [("retention.ms", None, AlterConfigOpType.DELETE)])
    assert topic_configs(admin, topic)["retention.ms"] == "604800000"


def test_non_incremental_alter_configs_replaces_the_overrides(broker, admin):
    topic = unique_topic("alter")
    create_topic(broker.bootstrap, topic, 1, config={"retention.ms": "123456"})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, set_config={"segment.ms": "60000"})
    admin.alter_configs([res])[res].result(timeout=30)
    configs = topic_configs(admin, topic)
    assert configs["segment.ms"] == "60000"
    assert configs["retention.ms"] == "604800000"


@pytest.mark.parametrize(
    "key,value",
    [("retention.ms", "soon"), ("segment.bytes", "3"), ("max.message.bytes", "0"), ("no.such.config", "1")],
)
def test_bad_config_value_gets_invalid_config_and_changes_nothing(broker, admin, key, value):
    topic = unique_topic("bad")
    create_topic(broker.bootstrap, topic, 1, config={"retention.ms": "123456"})
    before = topic_configs(admin, topic)
    with pytest.raises(KafkaException) as err:
        incremental(
            admin,
            topic,
            [("flush.ms", "999", AlterConfigOpType.SET), (key, value, AlterConfigOpType.SET)],
        )
    kerr = err.value.args[0]
    assert kerr.code() == INVALID_CONFIG, kerr
    assert key in kerr.str(), kerr.str()
    assert topic_configs(admin, topic) == before


def test_max_message_bytes_change_applies_to_the_next_produce(broker, admin):
    topic = unique_topic("maxmsg")
    create_topic(broker.bootstrap, topic, 1)
    fill(broker.bootstrap, topic, 1, size=5000)
    incremental(admin, topic, [("max.message.bytes", "2000", AlterConfigOpType.SET)])
    codes = confluent_delivery_errors(broker.bootstrap, topic, [(None, b"x" * 5000)], **{"batch.size": 8192})
    assert codes == [KafkaError.MSG_SIZE_TOO_LARGE], codes
    assert watermarks(broker.bootstrap, topic, [0])[0] == (0, 1)


def test_delete_records_advances_the_log_start_offset(broker, admin):
    topic = unique_topic("delrec")
    create_topic(broker.bootstrap, topic, 1, config={"segment.bytes": "65536"})
    fill(broker.bootstrap, topic, 300)
    fs = admin.delete_records([TopicPartition(topic, 0, 150)], request_timeout=30)
    result = list(fs.values())[0].result(timeout=30)
    assert result.low_watermark == 150
    assert watermarks(broker.bootstrap, topic, [0])[0] == (150, 300)
    earliest = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()})
    assert list(earliest.values())[0].result(timeout=30).offset == 150
    # Beyond the high watermark: OFFSET_OUT_OF_RANGE, nothing moves.
    fs = admin.delete_records([TopicPartition(topic, 0, 10_000)], request_timeout=30)
    with pytest.raises(KafkaException):
        list(fs.values())[0].result(timeout=30)
    assert watermarks(broker.bootstrap, topic, [0])[0] == (150, 300)


def test_log_append_time_topic_stamps_records_with_the_broker_time(broker, admin):
    from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, Consumer, Producer

    topic = unique_topic("lat")
    create_topic(broker.bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    p.produce(topic, value=b"create-time", partition=0, timestamp=1_000)
    assert p.flush(30) == 0
    # Switched live: the next batch is stamped by the broker, CRC still valid.
    incremental(admin, topic, [("message.timestamp.type", "LogAppendTime", AlterConfigOpType.SET)])
    before_ms = int(time.time() * 1000)
    p.produce(topic, value=b"append-time", partition=0, timestamp=1_000)
    assert p.flush(30) == 0
    after_ms = int(time.time() * 1000)

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "lat", "enable.auto.commit": False,
                  "check.crcs": True})
    c.assign([TopicPartition(topic, 0, 0)])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 2 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append((m.value(), m.timestamp()))
    c.close()
    assert got[0] == (b"create-time", (TIMESTAMP_CREATE_TIME, 1_000))
    value, (ts_type, ts) = got[1]
    assert value == b"append-time" and ts_type == TIMESTAMP_LOG_APPEND_TIME
    assert before_ms - 1000 <= ts <= after_ms + 1000


def test_min_insync_replicas_above_the_replicas_refuses_acks_all_only(broker, admin):
    topic = unique_topic("isr")
    create_topic(broker.bootstrap, topic, 1, config={"min.insync.replicas": "2"})
    # retries=0: the broker's error is reported as it came, not as a timeout.
    codes = confluent_delivery_errors(broker.bootstrap, topic, [(None, b"all")], acks="all", retries=0)
    assert codes == [KafkaError.NOT_ENOUGH_REPLICAS], codes
    # acks=1 does not wait for replicas and is accepted.
    confluent_produce(broker.bootstrap, topic, [(None, b"one")], partition=0, acks="1")
    assert watermarks(broker.bootstrap, topic, [0])[0] == (0, 1)
