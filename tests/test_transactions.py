"""Transactions end to end (issue 13) with librdkafka's transactional
producer (confluent-kafka): the broker's transaction coordinator
(`__transaction_state`, InitProducerId with a transactional.id,
AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn, markers to
every partition leader) against read_committed and read_uncommitted
consumers, on one node and on three.

Covered: commit and abort interleaved across 6 partitions; zombie fencing by
a second producer of the same transactional.id; a transaction left open is
aborted at its timeout and its producer fenced; transaction.timeout.ms above
transaction.max.timeout.ms is refused; DescribeTransactions and
ListTransactions; kill -9 of the coordinator with a transaction prepared
and one open; transactional offsets hidden from a stable OffsetFetch until
the commit, dropped by an abort, kept across kill -9; a consume-transform-produce loop with
send_offsets_to_transaction that loses its coordinator's node to SIGKILL
and still writes every input record exactly once.
"""

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from conftest import create_topic, unique_topic
import kafka_raw as kr
from test_replication import cluster_of, create  # noqa: F401  (cluster_of is a fixture)

PARTITIONS = 6
FAST_TIMEOUT_CHECK = {"transaction.abort.timed.out.transaction.cleanup.interval.ms": 300}
DESCRIBE_TRANSACTIONS = 65
LIST_TRANSACTIONS = 66


def txn_producer(bootstrap, txn_id, **conf):
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 5, **conf})
    p.init_transactions(30)
    return p


def read_all(bootstrap, topic, isolation, expect, partitions=PARTITIONS, timeout=30.0, settle=1.5):
    """(partition, key, value) of every record from offset 0 with
    `isolation`: reads until `expect` came and nothing more for `settle` s."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
                  "isolation.level": isolation, "enable.auto.commit": False, "enable.partition.eof": True})
    got = []
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            fresh = False
            for m in c.consume(num_messages=1000, timeout=0.3):
                if m.error():
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    continue
                got.append((m.partition(), m.key(), m.value()))
                fresh = True
            if fresh:
                quiet_since = time.monotonic()
            elif len(got) >= expect and time.monotonic() - quiet_since > settle:
                break
    finally:
        c.close()
    return got


def run_transactions(p, topic, plan, per_txn=30):
    """One transaction per entry of `plan` (True = commit, False = abort),
    each with `per_txn` keyed records over every partition. Aborted records
    are flushed first, so they are in the log when the abort comes.
    Returns the values committed and the values aborted."""
    committed, aborted = [], []
    for i, commit in enumerate(plan):
        p.begin_transaction()
        values = [f"t{i}-r{k}".encode() for k in range(per_txn)]
        for k, v in enumerate(values):
            p.produce(topic, key=f"k{k}".encode(), value=v)
        if commit:
            p.commit_transaction(30)
            committed += values
        else:
            assert p.flush(30) == 0
            p.abort_transaction(30)
            aborted += values
    return committed, aborted


def check_order(records):
    """Within each partition, one transaction's records keep their order."""
    last = {}
    for partition, _, value in records:
        txn, rec = value.decode().split("-r")
        key = (partition, txn)
        assert last.get(key, -1) < int(rec), (partition, value)
        last[key] = int(rec)


def describe_transaction(bootstrap, txn_id):
    body = kr.compact_array([txn_id], kr.compact_string) + kr.TAGS
    with kr.Conn(bootstrap) as conn:
        r = conn.request(DESCRIBE_TRANSACTIONS, 0, body, flexible_header=True)
    r.tagged_fields()
    r.int32()  # throttle

    def partition_list(r):
        topic = r.compact_string()
        parts = r.compact_array(lambda r: r.int32())
        r.tagged_fields()
        return topic, parts

    def state(r):
        out = {"error": r.int16(), "id": r.compact_string(), "state": r.compact_string(),
               "timeout_ms": r.int32(), "start_ms": r.int64(), "producer_id": r.int64(),
               "epoch": r.int16(), "topics": r.compact_array(partition_list)}
        r.tagged_fields()
        return out

    (out,) = r.compact_array(state)
    return out


def list_transactions(bootstrap, states=()):
    body = (kr.compact_array(list(states), kr.compact_string) + kr.compact_array([], kr.int64)
            + kr.int64(-1) + kr.TAGS)
    with kr.Conn(bootstrap) as conn:
        r = conn.request(LIST_TRANSACTIONS, 1, body, flexible_header=True)
    r.tagged_fields()
    r.int32()
    error = r.int16()
    unknown = r.compact_array(lambda r: r.compact_string())

    def state(r):
        out = (r.compact_string(), r.int64(), r.compact_string())
        r.tagged_fields()
        return out

    return error, unknown, r.compact_array(state)


def wait_state(bootstrap, txn_id, wanted, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        d = describe_transaction(bootstrap, txn_id)
        if d["error"] == 0 and d["state"] == wanted:
            return d
        assert time.monotonic() < deadline, f"{txn_id} never reached {wanted}: {d}"
        time.sleep(0.1)


def test_commit_and_abort_interleaved_across_partitions(broker_factory):
    broker = broker_factory(shards=2)
    topic = unique_topic("txn")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    p = txn_producer(broker.bootstrap, "interleaved")
    committed, aborted = run_transactions(p, topic, [True, False, True, False, False, True])
    # Plain records after the transactions: visible to both isolation levels.
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for k in range(6):
        plain.produce(topic, key=f"k{k}".encode(), value=f"plain-r{k}".encode())
    assert plain.flush(30) == 0

    rc = read_all(broker.bootstrap, topic, "read_committed", len(committed) + 6)
    ru = read_all(broker.bootstrap, topic, "read_uncommitted", len(committed) + len(aborted) + 6)
    plain_values = [f"plain-r{k}".encode() for k in range(6)]
    assert sorted(v for _, _, v in rc) == sorted(committed + plain_values)
    assert sorted(v for _, _, v in ru) == sorted(committed + aborted + plain_values)
    assert len({part for part, _, _ in rc}) == PARTITIONS
    check_order(rc)
    # Keyed records stay on their key's partition across transactions.
    where = {}
    for part, key, _ in ru:
        assert where.setdefault(key, part) == part

    d = describe_transaction(broker.bootstrap, "interleaved")
    assert (d["error"], d["state"], d["epoch"], d["topics"]) == (0, "CompleteCommit", 0, [])
    error, unknown, listed = list_transactions(broker.bootstrap, ["CompleteCommit", "Nonsense"])
    assert (error, unknown) == (0, ["Nonsense"])
    assert ("interleaved", d["producer_id"], "CompleteCommit") in listed
    assert describe_transaction(broker.bootstrap, "never-used")["error"] == 105  # TRANSACTIONAL_ID_NOT_FOUND


def test_zombie_is_fenced_by_a_new_producer_of_the_same_id(broker_factory):
    broker = broker_factory(shards=2)
    topic = unique_topic("txn-zombie")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    zombie = txn_producer(broker.bootstrap, "fenced-id")
    zombie.begin_transaction()
    for k in range(12):
        zombie.produce(topic, key=f"k{k}".encode(), value=f"zombie-r{k}".encode())
    assert zombie.flush(30) == 0
    first = describe_transaction(broker.bootstrap, "fenced-id")
    assert first["state"] == "Ongoing" and len(first["topics"]) == 1

    # The new instance's init aborts the zombie's open transaction at the
    # next epoch and takes the one after.
    fresh = txn_producer(broker.bootstrap, "fenced-id")
    d = wait_state(broker.bootstrap, "fenced-id", "Empty")
    assert (d["producer_id"], d["epoch"]) == (first["producer_id"], first["epoch"] + 2)
    with pytest.raises(KafkaException) as fenced:
        zombie.commit_transaction(10)
    assert fenced.value.args[0].fatal() or fenced.value.args[0].code() == KafkaError._FENCED, fenced.value

    committed, _ = run_transactions(fresh, topic, [True])
    rc = read_all(broker.bootstrap, topic, "read_committed", len(committed))
    assert sorted(v for _, _, v in rc) == sorted(committed)
    ru = read_all(broker.bootstrap, topic, "read_uncommitted", len(committed) + 12)
    assert len(ru) == len(committed) + 12


def test_open_transaction_times_out_and_its_producer_is_fenced(broker_factory):
    broker = broker_factory(shards=2, sets=FAST_TIMEOUT_CHECK)
    topic = unique_topic("txn-timeout")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    slow = txn_producer(broker.bootstrap, "slow", **{"transaction.timeout.ms": 2000})
    slow.begin_transaction()
    for k in range(12):
        slow.produce(topic, key=f"k{k}".encode(), value=f"slow-r{k}".encode())
    assert slow.flush(30) == 0
    before = describe_transaction(broker.bootstrap, "slow")
    assert (before["state"], before["timeout_ms"]) == ("Ongoing", 2000)
    after = wait_state(broker.bootstrap, "slow", "CompleteAbort", timeout=20)
    assert after["epoch"] == before["epoch"] + 1
    with pytest.raises(KafkaException):
        slow.commit_transaction(10)

    # The abort ended the transaction on every partition: a later commit
    # by another producer is visible to read_committed, the slow one's
    # records are not.
    other = txn_producer(broker.bootstrap, "other")
    committed, _ = run_transactions(other, topic, [True])
    rc = read_all(broker.bootstrap, topic, "read_committed", len(committed))
    assert sorted(v for _, _, v in rc) == sorted(committed)


def test_transaction_timeout_above_the_broker_maximum_is_refused(broker_factory):
    broker = broker_factory(sets={"transaction.max.timeout.ms": 30000})
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "too-long",
                  "transaction.timeout.ms": 60000})
    with pytest.raises(KafkaException) as refused:
        p.init_transactions(20)
    assert refused.value.args[0].code() == KafkaError.INVALID_TRANSACTION_TIMEOUT, refused.value
    # The broker keeps serving transactional producers that ask for less.
    ok = txn_producer(broker.bootstrap, "short-enough", **{"transaction.timeout.ms": 20000})
    ok.begin_transaction()
    ok.abort_transaction(10)


def test_coordinator_state_survives_kill_9(broker_factory):
    broker = broker_factory(shards=2, sets=FAST_TIMEOUT_CHECK)
    topic = unique_topic("txn-kill")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    done = txn_producer(broker.bootstrap, "done-before-kill")
    committed, aborted = run_transactions(done, topic, [True, False])
    left_open = txn_producer(broker.bootstrap, "open-at-kill", **{"transaction.timeout.ms": 3000})
    left_open.begin_transaction()
    for k in range(12):
        left_open.produce(topic, key=f"k{k}".encode(), value=f"open-r{k}".encode())
    assert left_open.flush(30) == 0
    pid_before = describe_transaction(broker.bootstrap, "done-before-kill")["producer_id"]

    broker.kill9()
    broker.start()
    # Reloaded from __transaction_state: the finished id as it was, and the
    # open one still open until its timeout aborts it.
    d = describe_transaction(broker.bootstrap, "done-before-kill")
    assert (d["state"], d["producer_id"], d["epoch"]) == ("CompleteAbort", pid_before, 0)
    wait_state(broker.bootstrap, "open-at-kill", "CompleteAbort", timeout=20)
    # The same id resumes with its producer id at the next epoch.
    again = txn_producer(broker.bootstrap, "done-before-kill")
    more, _ = run_transactions(again, topic, [True])
    d = describe_transaction(broker.bootstrap, "done-before-kill")
    assert (d["producer_id"], d["epoch"]) == (pid_before, 1)
    rc = read_all(broker.bootstrap, topic, "read_committed", len(committed) + len(more))
    assert sorted(v for _, _, v in rc) == sorted(committed + more)


def consume_transform_produce(bootstrap, source, sink, group, txn_id, stop_after=None, deadline_s=60.0,
                              leave_open=None):
    """Reads `source` with a read_committed group member and writes each
    value upper-cased to `sink`, the input offsets committed in the same
    transaction. Stops after `stop_after` transactions (None: when the input
    is drained). With `leave_open` (a list), one more transaction is
    written and flushed but not ended, and its producer appended to the
    list. Returns the transactions committed."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "isolation.level": "read_committed",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    p = txn_producer(bootstrap, txn_id)
    c.subscribe([source])
    txns, idle_since = 0, time.monotonic()
    deadline = time.monotonic() + deadline_s
    try:
        while time.monotonic() < deadline:
            msgs = [m for m in c.consume(num_messages=20, timeout=0.5) if not m.error()]
            if not msgs:
                if stop_after is None and txns and time.monotonic() - idle_since > 3:
                    return txns
                continue
            idle_since = time.monotonic()
            p.begin_transaction()
            for m in msgs:
                p.produce(sink, key=m.key(), value=m.value().upper())
            p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), 30)
            if leave_open is not None and stop_after is not None and txns >= stop_after:
                assert p.flush(30) == 0
                leave_open.append(p)
                return txns
            p.commit_transaction(30)
            txns += 1
            if leave_open is None and stop_after is not None and txns >= stop_after:
                return txns
        raise AssertionError(f"consume-transform-produce did not finish in {deadline_s} s")
    finally:
        c.close()


def test_consume_transform_produce_survives_sigkill_of_the_coordinators_node(cluster_of):
    c = cluster_of(3, sets={"transaction.state.log.replication.factor": 3,
                            "transaction.state.log.num.partitions": 6,
                            "transaction.state.log.min.isr": 2})
    source, sink = unique_topic("ctp-in"), unique_topic("ctp-out")
    create(c, source, partitions=PARTITIONS, config={"min.insync.replicas": "2"})
    create(c, sink, partitions=PARTITIONS, config={"min.insync.replicas": "2"})
    n = 600
    feeder = Producer({"bootstrap.servers": c.live_bootstrap, "acks": "all"})
    for i in range(n):
        feeder.produce(source, key=f"k{i % 50}".encode(), value=f"rec-{i}".encode())
    assert feeder.flush(60) == 0

    # A few transactions, one more left open (records and offsets sent,
    # no EndTxn), then the node coordinating the id dies.
    txn_id, group = "ctp-1", "ctp-group"
    zombie = []
    consume_transform_produce(c.live_bootstrap, source, sink, group, txn_id, stop_after=3, leave_open=zombie)
    assert len(zombie) == 1
    coordinator = find_coordinator(c, txn_id)
    c.kill(coordinator)
    # A new instance (same id and group) finishes the input on the survivors.
    consume_transform_produce(c.live_bootstrap, source, sink, group, txn_id, deadline_s=120)

    out = read_all(c.live_bootstrap, sink, "read_committed", n, timeout=60)
    values = sorted(v for _, _, v in out)
    assert len(values) == len(set(values)), "duplicates in the output"
    assert values == sorted(f"REC-{i}".encode() for i in range(n))


def find_coordinator(c, txn_id):
    """The node FindCoordinator(key type 1) names for `txn_id`."""
    body = kr.string(txn_id) + kr.int8(1)
    deadline = time.monotonic() + 20
    while True:
        with kr.Conn(c.bootstrap_of([c.alive_ids()[0]])) as conn:
            r = conn.request(10, 1, body)  # FindCoordinator v1
        r.int32()
        error = r.int16()
        r.string()  # error message
        node = r.int32()
        if error == 0:
            return node
        assert time.monotonic() < deadline, f"no coordinator for {txn_id}: error {error}"
        time.sleep(0.2)


def test_commit_and_abort_on_three_nodes(cluster_of):
    c = cluster_of(3, sets={"transaction.state.log.replication.factor": 3,
                            "transaction.state.log.num.partitions": 6})
    topic = unique_topic("txn3")
    create(c, topic, partitions=PARTITIONS)
    leaders = {p["leader"] for p in c.partitions_of(topic).values()}
    assert len(leaders) == 3, leaders  # markers go to every node
    p = txn_producer(c.live_bootstrap, "three-nodes")
    committed, aborted = run_transactions(p, topic, [False, True, False, True])
    rc = read_all(c.live_bootstrap, topic, "read_committed", len(committed))
    ru = read_all(c.live_bootstrap, topic, "read_uncommitted", len(committed) + len(aborted))
    assert sorted(v for _, _, v in rc) == sorted(committed)
    assert sorted(v for _, _, v in ru) == sorted(committed + aborted)
    check_order(rc)


def test_transactional_offsets_count_only_at_commit(broker_factory):
    broker = broker_factory(shards=2)
    topic = unique_topic("txn-offsets")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    group = "offsets-at-commit"
    tp = TopicPartition(topic, 0)

    def committed(timeout=5):
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                      "isolation.level": "read_committed", "enable.auto.commit": False})
        try:
            return c.committed([tp], timeout=timeout)[0].offset
        finally:
            c.close()

    meta = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group}).consumer_group_metadata()
    p = txn_producer(broker.bootstrap, "offsets-txn")
    p.begin_transaction()
    p.produce(topic, key=b"k", value=b"v")
    p.send_offsets_to_transaction([TopicPartition(topic, 0, 5)], meta, 30)
    assert p.flush(30) == 0
    # Pending: a read_committed consumer's stable fetch is told to retry
    # (UNSTABLE_OFFSET_COMMIT) until the transaction ends.
    with pytest.raises(KafkaException):
        committed(timeout=3)
    p.abort_transaction(30)
    assert committed() < 0  # the aborted offset never counted
    p.begin_transaction()
    p.produce(topic, key=b"k", value=b"v")
    p.send_offsets_to_transaction([TopicPartition(topic, 0, 7)], meta, 30)
    p.commit_transaction(30)
    assert committed() == 7
    broker.kill9()
    broker.start()
    assert committed() == 7  # replayed from __consumer_offsets with its marker
