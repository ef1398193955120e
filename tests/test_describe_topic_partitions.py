"""DescribeTopicPartitions (KIP-966, Kafka 4's admin path; issue 13) with
kafka-python's admin client: named topics and all topics, in name order,
leaders and replicas as Metadata reports them, an unknown topic's error,
and paging with the cursor when the answer holds fewer partitions than the
topics have (the client's limit, and the broker's
max.request.partition.size.limit).
"""

import uuid

from kafka.admin import KafkaAdminClient

from conftest import create_topic, unique_topic

UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_REQUEST = 42


def all_pages(admin, topics, limit):
    """Every (topic, partition) the pages name, following next_cursor."""
    seen, cursor, pages = [], None, 0
    while True:
        answer = admin.describe_topic_partitions(topics, response_partition_limit=limit, cursor=cursor)
        pages += 1
        for t in answer["topics"]:
            assert t["error_code"] == 0, t
            seen += [(t["name"], p["partition_index"]) for p in t["partitions"]]
        assert sum(len(t["partitions"]) for t in answer["topics"]) <= limit
        cursor = answer["next_cursor"]
        if cursor is None:
            return seen, pages
        assert pages < 100, "the cursor never ends"


def test_topics_partitions_and_paging(broker_factory):
    broker = broker_factory(shards=2, sets={"max.request.partition.size.limit": 7})
    b = unique_topic("dtp-b")
    a = unique_topic("dtp-a")
    create_topic(broker.bootstrap, b, 5)
    create_topic(broker.bootstrap, a, 4)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        missing = f"dtp-missing-{uuid.uuid4().hex[:8]}"
        answer = admin.describe_topic_partitions([b, missing, a], response_partition_limit=100)
        # Name order; the broker's limit (7) cuts the answer after a's 4
        # partitions and 3 of b's.
        names = [t["name"] for t in answer["topics"]]
        assert names == [a, b], names
        by_name = {t["name"]: t for t in answer["topics"]}
        assert [p["partition_index"] for p in by_name[a]["partitions"]] == [0, 1, 2, 3]
        assert [p["partition_index"] for p in by_name[b]["partitions"]] == [0, 1, 2]
        assert answer["next_cursor"] == {"topic_name": b, "partition_index": 3}
        node_id = broker_node_id(admin)
        for t in (by_name[a], by_name[b]):
            assert t["is_internal"] is False
            assert t["topic_id"] is not None
            for p in t["partitions"]:
                assert p["error_code"] == 0
                assert p["leader_id"] == node_id
                assert p["replica_nodes"] == [node_id] and p["isr_nodes"] == [node_id]
                assert p["offline_replicas"] == []
        # Following the cursor reaches b's last partitions, then the
        # unknown topic's error.
        rest = admin.describe_topic_partitions([b, missing, a], response_partition_limit=100,
                                               cursor=answer["next_cursor"])
        by_name = {t["name"]: t for t in rest["topics"]}
        assert [p["partition_index"] for p in by_name[b]["partitions"]] == [3, 4]
        assert by_name[missing]["error_code"] == UNKNOWN_TOPIC_OR_PARTITION
        assert a not in by_name
        assert rest["next_cursor"] is None
        # The client's own limit pages too, and every partition comes once.
        seen, pages = all_pages(admin, [a, b], 2)
        assert seen == [(a, i) for i in range(4)] + [(b, i) for i in range(5)]
        assert pages == 5
        # No names: every topic, __consumer_offsets among them (internal).
        everything, _ = all_pages(admin, [], 7)
        topics = {t for t, _ in everything}
        assert {a, b, "__consumer_offsets"} <= topics
        assert [t for t, _ in everything] == sorted(t for t, _ in everything)
        # A cursor on a topic not asked for is refused.
        bad = admin.describe_topic_partitions([a], cursor={"topic_name": b, "partition_index": 0})
        assert [t["error_code"] for t in bad["topics"]] == [INVALID_REQUEST]
    finally:
        admin.close()
    assert broker.alive()


def broker_node_id(admin):
    brokers = admin.describe_cluster()["brokers"]
    assert len(brokers) == 1, brokers
    broker = brokers[0]
    return broker.get("node_id", broker.get("broker_id"))
