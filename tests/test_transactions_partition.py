"""Transactions on the partition side (issue 13): the test plays the
transaction coordinator over the wire (transactional batches through
Produce, then WriteTxnMarkers to end them, as Kafka's coordinator asks a
partition leader), and real consumers read: confluent-kafka with
isolation.level=read_committed sees committed and non-transactional records
only, never past an open transaction, and read_uncommitted sees them all.
The aborted-transaction index (.txnindex) survives a kill -9.
"""

import time

from confluent_kafka import KafkaError, TopicPartition

from clients import confluent_consumer, confluent_produce
from conftest import create_topic, unique_topic
import kafka_raw as kr
from test_replication import cluster_of  # noqa: F401  (the fixture)

INIT_PRODUCER_ID = 22
WRITE_TXN_MARKERS = 27
TRANSACTIONAL = 0x10
INVALID_RECORD = 87
INVALID_TXN_STATE = 48
INVALID_PRODUCER_EPOCH = 47
PARTITIONS = 3


def init_producer_id(conn):
    r = conn.request(INIT_PRODUCER_ID, 0, kr.int16(-1) + kr.int32(60000))
    r.int32()  # throttle
    assert r.int16() == 0
    return r.int64(), r.int16()


class TxnProducer:
    """A transactional producer made of raw requests: one producer id,
    a sequence per partition."""

    def __init__(self, conn, topic):
        self.conn, self.topic = conn, topic
        self.producer_id, self.epoch = init_producer_id(conn)
        self.sequence = {}

    def send(self, partition, values, transactional=True):
        seq = self.sequence.get(partition, 0)
        batch = kr.record_batch([(None, v) for v in values], attributes=TRANSACTIONAL if transactional else 0,
                                producer_id=self.producer_id, producer_epoch=self.epoch, base_sequence=seq)
        result = self.conn.produce(self.topic, partition, batch, acks=-1)
        code = result["partitions"][(self.topic, partition)]["error_code"]
        if code == 0:
            self.sequence[partition] = seq + len(values)
        return code


def write_markers(conn, markers):
    """markers: [(producer_id, epoch, commit, {topic: [partitions]}, coordinator_epoch)].
    Returns {(producer_id, topic, partition): error_code}."""
    def marker(m):
        producer_id, epoch, commit, topics, coordinator_epoch = m
        return (kr.int64(producer_id) + kr.int16(epoch) + kr.int8(1 if commit else 0)
                + kr.compact_array(sorted(topics.items()), lambda t: kr.compact_string(t[0])
                                   + kr.compact_array(t[1], kr.int32) + kr.TAGS)
                + kr.int32(coordinator_epoch) + kr.TAGS)
    r = conn.request(WRITE_TXN_MARKERS, 1, kr.compact_array(markers, marker) + kr.TAGS, flexible_header=True)
    r.tagged_fields()  # response header v1
    out = {}

    def partition(r):
        return r.int32(), r.int16(), r.tagged_fields()

    def topic(r):
        name = r.compact_string()
        parts = r.compact_array(partition)
        r.tagged_fields()
        return name, parts

    def result(r):
        producer_id = r.int64()
        for name, parts in r.compact_array(topic):
            for index, code, _ in parts:
                out[(producer_id, name, index)] = code
        r.tagged_fields()

    r.compact_array(result)
    return out


def consume(bootstrap, topic, isolation, expect_at_least, timeout=20.0, settle=1.5, partitions=None):
    """Values read from every partition from offset 0 with `isolation`: reads
    until `expect_at_least` values came and nothing more arrives for `settle` s."""
    c = confluent_consumer(bootstrap, **{"isolation.level": isolation, "enable.partition.eof": True})
    got = []
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions or PARTITIONS)])
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            msgs = c.consume(num_messages=1000, timeout=0.3)
            fresh = False
            for m in msgs:
                if m.error():
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    continue
                got.append(m.value())
                fresh = True
            if fresh:
                quiet_since = time.monotonic()
            elif len(got) >= expect_at_least and time.monotonic() - quiet_since > settle:
                break
    finally:
        c.close()
    return got


def test_committed_aborted_and_open_transactions_as_consumers_see_them(broker_factory):
    broker = broker_factory(shards=2)
    topic = unique_topic("txn")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    plain = [f"plain-{i}".encode() for i in range(6)]
    with kr.Conn(broker.bootstrap) as conn:
        committer = TxnProducer(conn, topic)
        aborter = TxnProducer(conn, topic)
        confluent_produce(broker.bootstrap, topic, [(None, v) for v in plain[:3]], partition=0)
        # Transaction A (to commit) on partitions 0 and 1, B (to abort) on 0 and 2.
        assert committer.send(0, [b"commit-0a", b"commit-0b"]) == 0
        assert aborter.send(0, [b"abort-0a"]) == 0
        assert committer.send(1, [b"commit-1a"]) == 0
        assert aborter.send(2, [b"abort-2a", b"abort-2b"]) == 0
        confluent_produce(broker.bootstrap, topic, [(None, v) for v in plain[3:]], partition=0)
        # While both are open: a plain batch from a producer inside its
        # transaction is refused, and read_committed stops at the first
        # open transaction on each partition.
        assert committer.send(1, [b"not-in-txn"], transactional=False) == INVALID_TXN_STATE
        open_view = consume(broker.bootstrap, topic, "read_committed", 3)
        assert sorted(open_view) == sorted(plain[:3])
        everything = consume(broker.bootstrap, topic, "read_uncommitted", 12)
        assert len(everything) == 12 and b"not-in-txn" not in everything
        # The coordinator ends them.
        codes = write_markers(conn, [
            (committer.producer_id, committer.epoch, True, {topic: [0, 1]}, 0),
            (aborter.producer_id, aborter.epoch, False, {topic: [0, 2]}, 0),
        ])
        assert set(codes.values()) == {0}, codes
        # An older epoch's marker is refused.
        stale = write_markers(conn, [(committer.producer_id, committer.epoch - 1, True, {topic: [0]}, 0)])
        assert list(stale.values()) == [INVALID_PRODUCER_EPOCH]
        # A control batch from a producer is refused.
        control = kr.record_batch([(b"\x00\x00\x00\x01", b"\x00\x00\x00\x00\x00\x00")], attributes=0x30,
                                  producer_id=committer.producer_id, producer_epoch=committer.epoch)
        result = conn.produce(topic, 1, control, acks=-1)
        assert result["partitions"][(topic, 1)]["error_code"] == INVALID_RECORD
    committed = sorted(plain + [b"commit-0a", b"commit-0b", b"commit-1a"])
    assert sorted(consume(broker.bootstrap, topic, "read_committed", len(committed))) == committed
    all_data = committed + [b"abort-0a", b"abort-2a", b"abort-2b"]
    assert sorted(consume(broker.bootstrap, topic, "read_uncommitted", len(all_data))) == sorted(all_data)
    # The aborted transactions are indexed on disk, and after kill -9 a
    # read_committed consumer still drops them.
    assert list((broker.data_dir / f"{topic}-0").glob("*.txnindex"))
    assert list((broker.data_dir / f"{topic}-2").glob("*.txnindex"))
    assert not list((broker.data_dir / f"{topic}-1").glob("*.txnindex"))
    broker.kill9()
    broker.restart()
    assert sorted(consume(broker.bootstrap, topic, "read_committed", len(committed))) == committed


def test_an_open_transaction_survives_a_restart_and_holds_the_stable_offset(broker_factory):
    broker = broker_factory()
    topic = unique_topic("txn-open")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    with kr.Conn(broker.bootstrap) as conn:
        producer = TxnProducer(conn, topic)
        assert producer.send(0, [b"pending-1", b"pending-2"]) == 0
    confluent_produce(broker.bootstrap, topic, [(None, b"after-1")], partition=0)
    broker.kill9()
    broker.restart()
    # Still open after the crash: read_committed sees nothing on partition 0.
    assert consume(broker.bootstrap, topic, "read_committed", 0, timeout=6) == []
    with kr.Conn(broker.bootstrap) as conn:
        codes = write_markers(conn, [(producer.producer_id, producer.epoch, False, {topic: [0]}, 0)])
        assert set(codes.values()) == {0}, codes
    assert consume(broker.bootstrap, topic, "read_committed", 1) == [b"after-1"]
    broker.stop()
    broker.restart()
    assert consume(broker.bootstrap, topic, "read_committed", 1) == [b"after-1"]


def test_a_new_leader_keeps_open_and_aborted_transactions_of_the_old_one(cluster_of):
    from test_replication import create, wait_isr

    c = cluster_of(3)
    topic = unique_topic("txn-fail")
    create(c, topic, partitions=1, config={"min.insync.replicas": "2"})
    leader = c.partitions_of(topic)[0]["leader"]
    with kr.Conn(c.bootstrap_of([leader])) as conn:
        plain = TxnProducer(conn, topic)
        aborted = TxnProducer(conn, topic)
        committed = TxnProducer(conn, topic)
        still_open = TxnProducer(conn, topic)
        assert plain.send(0, [b"plain-1"], transactional=False) == 0
        assert aborted.send(0, [b"aborted-1", b"aborted-2"]) == 0
        assert committed.send(0, [b"committed-1"]) == 0
        codes = write_markers(conn, [(aborted.producer_id, aborted.epoch, False, {topic: [0]}, 0),
                                     (committed.producer_id, committed.epoch, True, {topic: [0]}, 0)])
        assert set(codes.values()) == {0}, codes
        assert still_open.send(0, [b"open-1"]) == 0
        assert plain.send(0, [b"plain-2"], transactional=False) == 0
    # Every replica has it all (acks=all, full ISR), then the leader dies.
    wait_isr(c, topic, 1, full=True)
    c.kill(leader)
    wait_isr(c, topic, 1, pred=lambda parts: parts[0]["leader"] not in (leader, -1), what="a new leader")
    new_leader = c.partitions_of(topic)[0]["leader"]
    # The new leader still holds the open transaction (plain-2 after it
    # stays hidden) and knows the abort.
    assert consume(c.live_bootstrap, topic, "read_committed", 2, timeout=15, partitions=1) == [
        b"plain-1", b"committed-1"]
    with kr.Conn(c.bootstrap_of([new_leader])) as conn:
        codes = write_markers(conn, [(still_open.producer_id, still_open.epoch, True, {topic: [0]}, 0)])
        assert set(codes.values()) == {0}, codes
    assert consume(c.live_bootstrap, topic, "read_committed", 4, timeout=15, partitions=1) == [
        b"plain-1", b"committed-1", b"open-1", b"plain-2"]
