"""A shard's partition budget (shard.partitions.max) is enforced when topics
are created or grown: POLICY_VIOLATION with a message, nothing created."""

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import NewPartitions, NewTopic

from conftest import create_topic, unique_topic

POLICY_VIOLATION = 44


def test_partitions_beyond_the_shard_budget_are_refused(broker_factory):
    b = broker_factory(sets={"shard.partitions.max": 4}, shards=2)
    admin = create_topic(b.bootstrap, unique_topic("fits"), 6)

    over = unique_topic("over")
    fs = admin.create_topics([NewTopic(over, num_partitions=3, replication_factor=1)], request_timeout=30)
    with pytest.raises(KafkaException) as err:
        fs[over].result(timeout=30)
    assert err.value.args[0].code() == POLICY_VIOLATION
    assert "shard.partitions.max" in err.value.args[0].str()
    assert over not in admin.list_topics(timeout=10).topics

    grow = unique_topic("grow")
    create_topic(b.bootstrap, grow, 1)
    fs = admin.create_partitions([NewPartitions(grow, 3)], request_timeout=30)
    with pytest.raises(KafkaException) as err:
        fs[grow].result(timeout=30)
    assert err.value.args[0].code() == POLICY_VIOLATION
    assert len(admin.list_topics(timeout=10).topics[grow].partitions) == 1
    # Exactly filling the budget still works.
    fs = admin.create_partitions([NewPartitions(grow, 2)], request_timeout=30)
    fs[grow].result(timeout=30)


def test_a_descriptor_budget_above_the_open_files_limit_is_reported_at_start(broker_factory):
    # 10 million cached files per shard is above any open-files limit Linux
    # allows (fs.nr_open caps it near a million): one warning line at start
    # with the settings to change, and the broker serves as usual.
    b = broker_factory(sets={"log.fd.cache.size": 10_000_000}, shards=2)
    warnings = [line for line in b.run_log().splitlines() if "above the open-files limit" in line]
    assert len(warnings) == 1, b.run_log()
    assert "log.fd.cache.size (10000000) x 2 (cached files, zero-copy slices) x 2 shards" in warnings[0]
    assert "EMFILE" in warnings[0]
    topic = unique_topic("fds")
    admin = create_topic(b.bootstrap, topic, 2)
    assert len(admin.list_topics(timeout=10).topics[topic].partitions) == 2

    quiet = broker_factory()
    assert "above the open-files limit" not in quiet.run_log(), "the defaults fit this machine's limit"
