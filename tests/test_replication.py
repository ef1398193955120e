"""Replicated partitions on a real multi-node cluster (loopback only).

What is checked, with confluent-kafka (librdkafka) and raw requests:
  * RF=3, min.insync.replicas=2, acks=all with a ledger of acknowledged
    records: the leader's node is SIGKILLed mid-stream (REPLICATION_ROUNDS
    times, a random partition's leader each round); produce resumes within the
    broker session plus an election; the old node restarts, truncates to the
    new leader's history and rejoins the ISR; at the end every acknowledged
    record is read back at its offset, from leaders that were followers;
  * a follower cut off (SIGSTOP) leaves the ISR and acks=all goes on with 2 of
    3; with 2 of 3 cut off acks=all fails with NOT_ENOUGH_REPLICAS while acks=1
    works; after SIGCONT the ISR grows back to all three;
  * unclean.leader.election.enable off vs on with every ISR member gone: off
    keeps the partition offline until the ISR member returns (and loses
    nothing); on elects the surviving replica, and exactly the offsets only
    the old leader had are lost (the old leader truncates them when it returns);
  * a consumer group's committed offsets survive its coordinator's node being
    killed (`__consumer_offsets` replicated 3 ways); an idempotent producer
    across a leader kill leaves no duplicate and no gap.

Every wait is bounded; failures carry every node's log tail.
"""

import os
import random
import re
import signal
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kafka_raw as kr
from cluster import Cluster
from conftest import _dump_logs, unique_topic

pytestmark = pytest.mark.timeout(420)

ROUNDS = int(os.environ.get("REPLICATION_ROUNDS", "2"))
LAG_MS = 2000
REPLICATION_SETS = {
    "replica.lag.time.max.ms": LAG_MS,
    "offsets.topic.replication.factor": 3,
    "offsets.topic.num.partitions": 6,
}
NOT_ENOUGH_REPLICAS = 19
# _DESTROY_BROKER: librdkafka decommissions a broker handle when Metadata
# stops listing that broker (a node fenced until its restart registers, as
# Kafka's KRaft Metadata omits fenced brokers too) and fails what was queued
# on it; the next attempt goes through the current handle.
RETRIABLE = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.OFFSET_NOT_AVAILABLE,
             KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError._TRANSPORT, KafkaError._DESTROY_BROKER}


@pytest.fixture
def cluster_of(request, tmp_path_factory):
    clusters = []

    def make(n, sets=None, shards=1):
        c = Cluster(tmp_path_factory.mktemp(f"repl-{request.node.name[:30]}"), n,
                    sets={**REPLICATION_SETS, **(sets or {})}, shards=shards)
        clusters.append(c)
        c.start_all()
        return c

    yield make
    failed = getattr(request.node, "_shardlog_failed", False)
    for c in clusters:
        for n in c.nodes:
            if n.alive():
                try:
                    os.kill(n.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        note = c.teardown()
        failed = failed or bool(note)
    if failed:
        for c in clusters:
            _dump_logs(c.nodes, f"failure in {request.node.nodeid}")


def create(c, name, partitions=1, rf=3, config=None, assignment=None, timeout=30.0):
    a = AdminClient({"bootstrap.servers": c.live_bootstrap})
    if assignment is not None:
        t = NewTopic(name, num_partitions=len(assignment), replication_factor=-1, replica_assignment=assignment,
                     config=config or {})
    else:
        t = NewTopic(name, num_partitions=partitions, replication_factor=rf, config=config or {})
    a.create_topics([t], request_timeout=timeout)[name].result(timeout=timeout + 10)
    n = partitions if assignment is None else len(assignment)
    for i in c.alive_ids():  # every node knows it before the test sends to one
        c.wait(lambda: c.partitions_of(name, ids=[i]) is not None, timeout, f"node {i} to know {name}")
    return wait_isr(c, name, n, full=True)


def wait_isr(c, name, partitions, full=False, pred=None, timeout=40.0, what=None):
    """Wait until every partition of `name` has a live leader and (full) an ISR of all
    its replicas, or `pred(parts)` holds. Returns the partitions' metadata."""
    last = {}

    def check():
        parts = c.partitions_of(name)
        last["parts"] = parts
        if parts is None or len(parts) != partitions:
            return None
        if pred is not None:
            return parts if pred(parts) else None
        for p in parts.values():
            if p["leader"] not in c.alive_ids():
                return None
            if full and sorted(p["isr"]) != sorted(p["replicas"]):
                return None
        return parts

    return c.wait(check, timeout, what or f"{name}: live leaders{' and full ISRs' if full else ''}",
                  state=lambda: last)


class LedgerProducer:
    """A background confluent-kafka producer (acks=all) keeping a ledger of
    every acknowledged record: value -> (partition, offset)."""

    def __init__(self, bootstrap, topic, **conf):
        self.p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                           "message.timeout.ms": 60000, "request.timeout.ms": 10000,
                           "reconnect.backoff.max.ms": 500, "topic.metadata.refresh.interval.ms": 1000,
                           **conf})
        self.topic = topic
        self.acked = {}
        self.sent_at = {}
        self.errors = []
        self.sent = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_delivery(self, err, msg):
        if err is not None:
            self.errors.append(err)
        else:
            self.acked[msg.value()] = (msg.partition(), msg.offset(), time.monotonic())

    def _run(self):
        while not self.stop_flag.is_set():
            try:
                value = b"v%08d" % self.sent
                # Taken before the call: a record counted as sent after some
                # moment really was (a thread stalled after produce() would
                # otherwise date an earlier record late).
                self.sent_at[value] = time.monotonic()
                self.p.produce(self.topic, value=value, key=b"k%d" % (self.sent % 97), on_delivery=self._on_delivery)
                self.sent += 1
            except BufferError:
                pass
            self.p.poll(0.001 if self.sent % 50 else 0.01)
            if self.sent - len(self.acked) > 20000:
                time.sleep(0.01)

    def start(self):
        self.thread.start()
        return self

    def acked_after(self, t):
        return sum(1 for (_, _, at) in list(self.acked.values()) if at > t)

    def acks_of_sent_after(self, t):
        """Acknowledgement times of the records produced after `t` (not of
        those already in flight then, which the surviving replicas may
        complete at once)."""
        sent_at = dict(self.sent_at)
        return [at for value, (_, _, at) in list(self.acked.items()) if sent_at.get(value, 0.0) > t]

    def finish(self, timeout=60.0):
        self.stop_flag.set()
        self.thread.join(timeout=10)
        left = self.p.flush(timeout)
        assert left == 0, f"{left} records still unacknowledged after {timeout}s"


def watermark(consumer, topic, partition, timeout=30.0):
    """The high watermark, retrying what a leader change answers meanwhile
    (NOT_LEADER_OR_FOLLOWER, and KIP-207's OFFSET_NOT_AVAILABLE while a new
    leader's watermark catches up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10.0)[1]
        except KafkaException as e:
            if time.monotonic() > deadline or e.args[0].code() not in RETRIABLE:
                raise
            time.sleep(0.2)


def read_all(bootstrap, topic, partitions, timeout=90.0):
    """{partition: [(offset, value)]} of everything below each high watermark."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{random.random()}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "auto.offset.reset": "earliest", "topic.metadata.refresh.interval.ms": 1000})
    try:
        marks = {p: watermark(c, topic, p) for p in range(partitions)}
        out = {p: [] for p in range(partitions)}
        todo = {p for p in range(partitions) if marks[p] > 0}
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while todo:
            assert time.monotonic() < deadline, f"timed out reading {topic}: {({p: len(v) for p, v in out.items()})} of {marks}"
            for m in c.consume(num_messages=10000, timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"consume error: {m.error()}")
                out[m.partition()].append((m.offset(), m.value()))
                if m.offset() + 1 >= marks[m.partition()]:
                    todo.discard(m.partition())
        return out, marks
    finally:
        c.close()


def check_ledger(acked, read):
    at = {(p, o): v for p, rows in read.items() for o, v in rows}
    missing = [(v, po) for v, (*po, _) in acked.items() if at.get(tuple(po)) != v]
    assert not missing, f"{len(missing)} acknowledged records not at their offsets, e.g. {missing[:5]}"
    for p, rows in read.items():
        offsets = [o for o, _ in rows]
        assert offsets == sorted(set(offsets)), f"partition {p}: offsets not unique and increasing"


def test_acks_all_survives_leader_kills_and_the_old_leader_rejoins(cluster_of):
    c = cluster_of(3)
    topic = unique_topic("ledger")
    create(c, topic, partitions=3, config={"min.insync.replicas": "2"})
    prod = LedgerProducer(c.bootstrap, topic).start()
    rng = random.Random(int(os.environ.get("REPLICATION_SEED", "11")))
    failovers = []
    try:
        c.wait(lambda: len(prod.acked) > 2000, 30, "first acknowledgements")
        for rnd in range(ROUNDS):
            parts = wait_isr(c, topic, 3, full=True, timeout=60, what=f"round {rnd}: full ISRs before the kill")
            victim = parts[rng.randrange(3)]["leader"]
            killed_at = time.monotonic()
            c.kill(victim)
            # Records sent once the victim is gone: those sent while it was
            # dying may have reached it and be acknowledged at once.
            dead_at = time.monotonic()
            c.wait(lambda: len(prod.acks_of_sent_after(dead_at)) > 100, 30,
                   f"round {rnd}: acks=all produce to resume after node {victim} was killed",
                   state=lambda: {"errors": [str(e) for e in prod.errors[-3:]]})
            resumed = min(prod.acks_of_sent_after(dead_at))
            failovers.append(resumed - killed_at)
            c.node(victim).restart()
            wait_isr(c, topic, 3, full=True, timeout=60, what=f"round {rnd}: node {victim} back in every ISR")
        c.wait(lambda: len(prod.acked) > 2000 * (ROUNDS + 1), 60, "more acknowledgements")
    finally:
        prod.finish()
    assert not prod.errors, f"{len(prod.errors)} delivery errors, e.g. {prod.errors[:3]}"
    # Every acknowledged record at its offset, read from the current leaders.
    read, marks = read_all(c.bootstrap, topic, 3)
    check_ledger(prod.acked, read)
    # And once more after moving every leadership: followers held them too.
    leaders_now = {p["leader"] for p in c.partitions_of(topic).values()}
    victim = sorted(leaders_now)[0]
    c.kill(victim)
    wait_isr(c, topic, 3, pred=lambda ps: all(p["leader"] not in (victim, -1) for p in ps.values()), timeout=30,
             what=f"leaders away from node {victim}")
    read, _ = read_all(c.live_bootstrap, topic, 3)
    check_ledger(prod.acked, read)
    print(f"failover (kill -> first acks=all ack) per round: {[round(f, 2) for f in failovers]} s; "
          f"{len(prod.acked)} records acknowledged")
    budget_s = 3.0 + 2 * 1.0 + 5.0  # session + election + client metadata refresh
    assert max(failovers) < budget_s, f"failover took {failovers} s"


def raw_produce(bootstrap, topic, partition, acks, n=1):
    with kr.Conn(bootstrap, timeout=15) as conn:
        resp = conn.produce(topic, partition, kr.record_batch([(b"k", b"x" * 10)] * n), acks=acks, timeout_ms=5000)
    return resp["partitions"][(topic, partition)]


def fetch_as_replica(bootstrap, topic, partition, replica_id):
    """Fetch v4 naming `replica_id` as the fetching replica -> partition error code."""
    body = (kr.int32(replica_id) + kr.int32(100) + kr.int32(1) + kr.int32(1 << 20) + kr.int8(0)
            + kr.array([topic], lambda t: kr.string(t) + kr.array(
                [partition], lambda p: kr.int32(p) + kr.int64(0) + kr.int32(1 << 20))))
    with kr.Conn(bootstrap, timeout=10) as conn:
        r = conn.request(kr.FETCH, 4, body)
    r.int32()  # throttle
    assert r.int32() == 1 and r.string() == topic and r.int32() == 1
    assert r.int32() == partition
    return r.int16()  # the rest (watermarks, records) is not needed


def test_isr_shrinks_and_grows_with_stopped_followers(cluster_of):
    # Five voters, so the controller quorum outlives two stopped nodes.
    c = cluster_of(5)
    topic = unique_topic("isr")
    create(c, topic, assignment=[[1, 2, 3]], config={"min.insync.replicas": "2"})
    leader = c.node(1).bootstrap
    assert raw_produce(leader, topic, 0, -1)["error_code"] == 0
    # Only a replica may read past the high watermark: broker 4 is none.
    assert fetch_as_replica(leader, topic, 0, 4) == 6, "a non-replica's follower fetch: NOT_LEADER_OR_FOLLOWER"
    stopped = []
    try:
        os.kill(c.node(3).pid, signal.SIGSTOP)
        stopped.append(3)
        wait_isr(c, topic, 1, pred=lambda ps: sorted(ps[0]["isr"]) == [1, 2], timeout=30,
                 what="ISR to shrink to [1, 2] with node 3 stopped")
        r = raw_produce(leader, topic, 0, -1, n=10)
        assert r["error_code"] == 0, f"acks=all with 2 of 3 in sync: {r}"
        os.kill(c.node(2).pid, signal.SIGSTOP)
        stopped.append(2)
        wait_isr(c, topic, 1, pred=lambda ps: sorted(ps[0]["isr"]) == [1], timeout=30,
                 what="ISR to shrink to [1] with nodes 2 and 3 stopped")
        r = raw_produce(leader, topic, 0, -1)
        assert r["error_code"] == NOT_ENOUGH_REPLICAS, f"acks=all with 1 of 3 in sync: {r}"
        r = raw_produce(leader, topic, 0, 1, n=5)
        assert r["error_code"] == 0, f"acks=1 with 1 of 3 in sync: {r}"
    finally:
        for i in stopped:
            os.kill(c.node(i).pid, signal.SIGCONT)
    wait_isr(c, topic, 1, pred=lambda ps: sorted(ps[0]["isr"]) == [1, 2, 3] and ps[0]["leader"] == 1, timeout=40,
             what="ISR to grow back to [1, 2, 3] after SIGCONT")
    r = raw_produce(leader, topic, 0, -1)
    assert r["error_code"] == 0, f"acks=all with the ISR healed: {r}"
    read, marks = read_all(c.bootstrap, topic, 1)
    assert marks[0] == 1 + 10 + 5 + 1, marks
    assert len(read[0]) == marks[0]


def offline(parts):
    return parts[0]["leader"] == -1


def test_unclean_election_off_waits_for_the_isr_and_on_loses_exactly_the_unreplicated_offsets(cluster_of):
    c = cluster_of(5)
    clean, dirty = unique_topic("clean"), unique_topic("dirty")
    create(c, clean, assignment=[[4, 5]], config={"min.insync.replicas": "1"})
    create(c, dirty, assignment=[[4, 5]], config={"min.insync.replicas": "1",
                                                    "unclean.leader.election.enable": "true"})
    for t in (clean, dirty):
        assert raw_produce(c.node(4).bootstrap, t, 0, -1, n=100)["error_code"] == 0
    c.kill(5)
    for t in (clean, dirty):
        wait_isr(c, t, 1, pred=lambda ps: ps[0]["isr"] == [4], timeout=30, what=f"{t}: ISR [4] without node 5")
        assert raw_produce(c.node(4).bootstrap, t, 0, -1, n=50)["error_code"] == 0
    c.kill(4)
    for t in (clean, dirty):
        wait_isr(c, t, 1, pred=offline, timeout=30, what=f"{t}: offline with nodes 4 and 5 gone")
    c.node(5).restart()
    wait_isr(c, dirty, 1, pred=lambda ps: ps[0]["leader"] == 5 and ps[0]["isr"] == [5], timeout=30,
             what="the unclean topic led by node 5 alone")
    # Unclean off: node 5 was not in the ISR, so no leader, for as long as we look.
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        assert offline(c.partitions_of(clean)), f"{clean} got a leader without an ISR member: {c.partitions_of(clean)}"
        time.sleep(0.5)
    read, marks = read_all(c.live_bootstrap, dirty, 1)
    assert marks[0] == 100, f"the unclean leader holds offsets 0..{marks[0]}, expected 0..100"
    c.node(4).restart()
    wait_isr(c, clean, 1, pred=lambda ps: ps[0]["leader"] == 4, timeout=30, what="the clean topic led by node 4 again")
    read, marks = read_all(c.live_bootstrap, clean, 1)
    assert marks[0] == 150 and len(read[0]) == 150, f"unclean off lost nothing: {marks}"
    wait_isr(c, dirty, 1, pred=lambda ps: sorted(ps[0]["isr"]) == [4, 5], timeout=40,
             what="node 4 back in the unclean topic's ISR after truncating")
    m = c.wait(lambda: re.search(rf"{dirty}-0.*truncated from (\d+) to (\d+)", c.node(4).run_log()), 10,
               "node 4 to log its truncation")
    assert (int(m.group(1)), int(m.group(2))) == (150, 100), f"lost offsets: {m.group(0)}"
    # One line says how many committed offsets the unclean election lost.
    assert re.search(rf"{dirty}-0: unclean leader election lost 50 committed offsets \(100\.\.150\)",
                     c.node(4).run_log()), c.node(4).run_log()[-3000:]
    read, marks = read_all(c.live_bootstrap, dirty, 1)
    assert marks[0] == 100 and [o for o, _ in read[0]] == list(range(100))


def test_group_offsets_and_idempotent_producer_survive_node_kills(cluster_of):
    c = cluster_of(3)
    topic = unique_topic("grp")
    create(c, topic, partitions=3, config={"min.insync.replicas": "2"})
    # Idempotent producer across a leader kill: no duplicate, no gap.
    prod = LedgerProducer(c.bootstrap, topic, **{"enable.idempotence": True}).start()
    try:
        c.wait(lambda: len(prod.acked) > 3000, 30, "first acknowledgements")
        victim = c.partitions_of(topic)[0]["leader"]
        c.kill(victim)
        killed_at = time.monotonic()
        c.wait(lambda: prod.acked_after(killed_at) > 3000, 40, "idempotent produce to resume")
        c.node(victim).restart()
        wait_isr(c, topic, 3, full=True, timeout=60)
    finally:
        prod.finish()
    assert not prod.errors, prod.errors[:3]
    read, marks = read_all(c.bootstrap, topic, 3)
    check_ledger(prod.acked, read)
    values = [v for rows in read.values() for _, v in rows]
    assert len(values) == len(set(values)), f"{len(values) - len(set(values))} duplicates"
    assert set(values) == set(prod.acked), "records read that were never acknowledged, or gaps"
    total = sum(marks.values())

    # A group commits half, its coordinator's node dies, the group resumes there.
    group = unique_topic("g")
    conf = {"bootstrap.servers": c.bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "topic.metadata.refresh.interval.ms": 1000}
    cons = Consumer(conf)
    cons.subscribe([topic])
    seen = []
    deadline = time.monotonic() + 60
    while len(seen) < total // 2:
        assert time.monotonic() < deadline, f"first consumer read {len(seen)} of {total // 2}"
        for m in cons.consume(500, timeout=0.5):
            if not m.error():
                seen.append((m.partition(), m.offset()))
    cons.commit(asynchronous=False)
    committed = {tp.partition: tp.offset for tp in cons.committed([TopicPartition(topic, p) for p in range(3)],
                                                                   timeout=10)}
    cons.close()
    from cluster import find_coordinator
    err, coord, _, _ = find_coordinator(c.bootstrap.split(",")[0], group)
    assert err == 0
    c.kill(coord)
    cons = Consumer({**conf, "bootstrap.servers": c.live_bootstrap})
    cons.subscribe([topic])
    first = {}
    rest = []
    deadline = time.monotonic() + 90
    while len(rest) < total - sum(max(o, 0) for o in committed.values()):
        assert time.monotonic() < deadline, (
            f"second consumer read {len(rest)}; committed {committed}, total {total}\n{c.tails()}")
        for m in cons.consume(500, timeout=0.5):
            if not m.error():
                first.setdefault(m.partition(), m.offset())
                rest.append((m.partition(), m.offset()))
    cons.close()
    for p, o in first.items():
        assert o == max(committed[p], 0), f"partition {p} resumed at {o}, committed {committed[p]}"
    assert len(rest) == len(set(rest)), "duplicates after the coordinator moved"


ALTER_PARTITION_REASSIGNMENTS = 45
LIST_PARTITION_REASSIGNMENTS = 46


def reassign(bootstrap, topic, partition, replicas):
    """AlterPartitionReassignments v0 of one partition (replicas None: cancel) -> (error_code, message)."""
    body = (kr.int32(30000)
            + kr.compact_array([topic], lambda t: kr.compact_string(t) + kr.compact_array(
                [partition], lambda p: kr.int32(p) + kr.compact_array(replicas, kr.int32) + kr.TAGS) + kr.TAGS)
            + kr.TAGS)
    with kr.Conn(bootstrap, timeout=35) as conn:
        r = conn.request(ALTER_PARTITION_REASSIGNMENTS, 0, body, flexible_header=True)
    r.tagged_fields()
    r.int32()  # throttle
    top_error, top_message = r.int16(), r.compact_string()
    assert top_error == 0, (top_error, top_message)

    def part(r):
        out = (r.int32(), r.int16(), r.compact_string())
        r.tagged_fields()
        return out

    def topic_result(r):
        name, parts = r.compact_string(), r.compact_array(part)
        r.tagged_fields()
        return name, parts

    results = r.compact_array(topic_result)
    (name, [(index, code, message)]), = results
    assert (name, index) == (topic, partition)
    return code, message


def ongoing_reassignments(bootstrap):
    """ListPartitionReassignments v0 (all topics) -> {(topic, partition): (replicas, adding, removing)}."""
    with kr.Conn(bootstrap, timeout=10) as conn:
        r = conn.request(LIST_PARTITION_REASSIGNMENTS, 0, kr.int32(10000) + kr.compact_array(None, None) + kr.TAGS,
                         flexible_header=True)
    r.tagged_fields()
    r.int32()
    assert r.int16() == 0
    r.compact_string()
    out = {}

    def part(r):
        p = r.int32()
        lists = [r.compact_array(lambda r: r.int32()) for _ in range(3)]
        r.tagged_fields()
        return p, tuple(lists)

    def topic(r):
        name = r.compact_string()
        for p, lists in r.compact_array(part):
            out[(name, p)] = lists
        r.tagged_fields()

    r.compact_array(topic)
    return out


def test_reassignment_moves_a_replica_without_losing_a_record_and_elections_follow(cluster_of, tmp_path):
    from confluent_kafka import ElectionType
    c = cluster_of(3)
    topic = unique_topic("move")
    create(c, topic, assignment=[[1, 2]], config={"min.insync.replicas": "1"})
    assert raw_produce(c.node(1).bootstrap, topic, 0, -1, n=500)["error_code"] == 0
    assert reassign(c.node(2).bootstrap, topic, 0, [9])[0] == 39, "an unregistered broker: INVALID_REPLICA_ASSIGNMENT"
    assert reassign(c.node(2).bootstrap, topic, 0, None)[0] == 85, "nothing to cancel: NO_REASSIGNMENT_IN_PROGRESS"
    code, message = reassign(c.node(2).bootstrap, topic, 0, [3, 2])
    assert code == 0, message
    # Node 3 catches up as a follower, then node 1 leaves the replicas.
    parts = wait_isr(c, topic, 1, pred=lambda ps: ps[0]["replicas"] == [3, 2] and sorted(ps[0]["isr"]) == [2, 3],
                     timeout=40, what="replicas [3, 2], both in sync")
    assert parts[0]["leader"] in (2, 3)
    c.wait(lambda: not ongoing_reassignments(c.node(3).bootstrap), 20, "the reassignment to leave the listing")
    c.wait(lambda: not (c.node(1).data_dir / f"{topic}-0").exists(), 20, "node 1 to delete its old replica")
    read, marks = read_all(c.bootstrap, topic, 1)
    assert marks[0] == 500 and [o for o, _ in read[0]] == list(range(500))
    # Preferred election: leadership to node 3, the first replica.
    a = AdminClient({"bootstrap.servers": c.bootstrap})
    tp = TopicPartition(topic, 0)
    if parts[0]["leader"] != 3:
        result = a.elect_leaders(ElectionType.PREFERRED, [tp]).result(timeout=30)
        assert result[tp] is None, f"preferred election: {result}"
        wait_isr(c, topic, 1, pred=lambda ps: ps[0]["leader"] == 3, timeout=20, what="node 3 to lead")
    result = a.elect_leaders(ElectionType.PREFERRED, [tp]).result(timeout=30)
    assert result[tp] is not None and result[tp].code() == KafkaError.ELECTION_NOT_NEEDED, result
    # DescribeLogDirs (raw v1) from node 3 lists the moved replica with its bytes.
    with kr.Conn(c.node(3).bootstrap, timeout=10) as conn:
        r = conn.request(35, 1, kr.int32(-1))
    r.int32()
    dirs = r.array(lambda r: (r.int16(), r.string(), r.array(lambda r: (r.string(), r.array(
        lambda r: (r.int32(), r.int64(), r.int64(), r.bool())))))) or []
    (err, path, topics), = dirs
    sizes = {name: parts for name, parts in topics}
    assert err == 0 and path.endswith("data"), dirs
    assert sizes[topic][0][0] == 0 and sizes[topic][0][1] > 500 * 10, sizes.get(topic)
    assert raw_produce(c.node(3).bootstrap, topic, 0, -1)["error_code"] == 0


def test_rolling_restart_with_controlled_shutdown_loses_no_acknowledged_record(cluster_of):
    c = cluster_of(3)
    topic = unique_topic("roll")
    create(c, topic, partitions=3, config={"min.insync.replicas": "2"})
    prod = LedgerProducer(c.bootstrap, topic).start()
    try:
        c.wait(lambda: len(prod.acked) > 1000, 30, "first acknowledgements")
        for node in c.nodes:
            said = "controlled shutdown: leaderships moved"
            before = node.log_text().count(said)
            node.stop()  # SIGTERM: controlled shutdown first
            assert node.log_text().count(said) == before + 1, node.log_text()[-3000:]
            led = [p for p in c.partitions_of(topic).values() if p["leader"] == node.node_id]
            assert not led, f"node {node.node_id} still leads {led} after its controlled shutdown"
            node.start()
            wait_isr(c, topic, 3, full=True, timeout=60, what=f"node {node.node_id} back in every ISR")
            mark = len(prod.acked)
            c.wait(lambda: len(prod.acked) > mark + 500, 30, "produce to go on")
    finally:
        prod.finish()
    assert not prod.errors, f"{len(prod.errors)} delivery errors, e.g. {prod.errors[:3]}"
    read, _ = read_all(c.bootstrap, topic, 3)
    check_ledger(prod.acked, read)
