"""OffsetForLeaderEpoch answers from the partition's leader-epoch checkpoint
(Kafka's `leader-epoch-checkpoint` file), as Kafka does."""

import kafka_raw as kr
from clients import confluent_produce
from conftest import create_topic, unique_topic

OFFSET_FOR_LEADER_EPOCH = 23
UNKNOWN_LEADER_EPOCH = 75


def offset_for_leader_epoch(conn, topic, partition, leader_epoch, current_leader_epoch=-1):
    """OffsetForLeaderEpoch v2 (non-flexible). Returns (error, epoch, end_offset)."""
    body = kr.array(
        [topic],
        lambda t: kr.string(t)
        + kr.array([partition], lambda p: kr.int32(p) + kr.int32(current_leader_epoch) + kr.int32(leader_epoch)),
    )
    r = conn.request(OFFSET_FOR_LEADER_EPOCH, 2, body)
    r.int32()  # throttle
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.int16(), r.int32(), r.int32(), r.int64()))))
    (name, parts), = topics
    assert name == topic
    (error, got_partition, epoch, end_offset), = parts
    assert got_partition == partition
    return error, epoch, end_offset


def test_offset_for_leader_epoch_answers_from_the_checkpoint(broker):
    topic = unique_topic("epoch")
    create_topic(broker.bootstrap, topic, 1)
    confluent_produce(broker.bootstrap, topic, [(None, b"v%d" % i) for i in range(25)], partition=0)
    checkpoint = (broker.data_dir / f"{topic}-0" / "leader-epoch-checkpoint").read_text()
    assert checkpoint == "0\n1\n0 0\n"
    with kr.Conn(broker.bootstrap) as c:
        # The current epoch ends at the log end offset.
        assert offset_for_leader_epoch(c, topic, 0, 0) == (0, 0, 25)
        assert offset_for_leader_epoch(c, topic, 0, 5) == (0, 0, 25)
        # The client's view of the current epoch is checked as Kafka checks it.
        assert offset_for_leader_epoch(c, topic, 0, 0, current_leader_epoch=3)[0] == UNKNOWN_LEADER_EPOCH
        assert offset_for_leader_epoch(c, topic, 0, 0, current_leader_epoch=0)[0] == 0
        assert offset_for_leader_epoch(c, topic, 9, 0)[0] == 3  # UNKNOWN_TOPIC_OR_PARTITION
    broker.stop()
    broker.restart()
    with kr.Conn(broker.bootstrap) as c:
        assert offset_for_leader_epoch(c, topic, 0, 0) == (0, 0, 25)
