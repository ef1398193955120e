"""Log compaction (cleanup.policy=compact) with real clients: a topic with
many updates per key shrinks to the last value per key and still reads in
offset order with the original offsets, across a restart."""

from clients import confluent_consume_all, confluent_produce
from conftest import create_topic, unique_topic, wait_until

KEYS = 20
UPDATES = 200


def updates():
    # Values carry their key and update number; later updates win.
    return [(b"key-%02d" % (i % KEYS), b"key-%02d|%05d|" % (i % KEYS, i) + b"x" * 80) for i in range(KEYS * UPDATES)]


def test_compacted_topic_keeps_the_last_value_per_key_with_original_offsets(broker_factory):
    broker = broker_factory(sets={"log.cleaner.backoff.ms": 200})
    topic = unique_topic("compact")
    create_topic(broker.bootstrap, topic, 1, config={"cleanup.policy": "compact", "segment.bytes": "16384"})
    records = updates()
    delivered = confluent_produce(broker.bootstrap, topic, records, partition=0, **{"batch.size": 4096})
    by_offset = {offset: value for value, (_, offset) in delivered.items()}
    wait_until(lambda: "compacted partition=" in broker.log_text(), 30, what="a compaction pass")

    def records_left():
        return len(confluent_consume_all(broker.bootstrap, topic, [0])[0][0])

    # A pass that began before the last batches were sealed leaves them to
    # the next pass (every log.cleaner.backoff.ms): wait for one that saw them.
    wait_until(lambda: records_left() < len(records) // 2, 30, interval=0.5, what="compaction of the sealed segments")

    def check():
        read, marks = confluent_consume_all(broker.bootstrap, topic, [0])
        got = read[0]
        offsets = [r[0] for r in got]
        assert offsets == sorted(set(offsets)), "offset order kept, no duplicates"
        assert len(got) < len(records) // 2, f"compaction removed records: {len(got)} of {len(records)} left"
        for offset, key, value, _ in got:
            assert by_offset[offset] == value, f"offset {offset} kept its record"
            assert value.startswith(key + b"|")
        last = {}
        for offset, key, value, _ in got:
            last[key] = value
        final = {}
        for key, value in records:
            final[key] = value
        assert last == final, "every key reads back its last value"
        assert marks[0][1] == len(records), "the log end offset is unchanged"
        return len(got)

    kept = check()
    broker.restart()
    # Later passes (the first after a restart compacts everything again) may
    # only remove more.
    assert check() <= kept


def test_cleanup_policy_is_validated_and_described(broker, admin):
    import pytest
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ConfigResource

    topic = unique_topic("policy")
    create_topic(broker.bootstrap, topic, 1, config={"cleanup.policy": "compact,delete"})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([res])[res].result(timeout=30)
    assert configs["cleanup.policy"].value == "compact,delete"
    assert configs["min.cleanable.dirty.ratio"].value == "0.5"
    with pytest.raises(KafkaException) as err:
        create_topic(broker.bootstrap, unique_topic("bad-policy"), 1, config={"cleanup.policy": "shred"})
    assert "cleanup.policy" in str(err.value)
