"""Multi-node clustering end to end: real shardlog processes on loopback, each
node broker+controller (node ids 1..N, one controller.quorum.voters string,
one cluster.id), real clients (confluent-kafka, kcat) and raw requests sent to
one precise node (tests/cluster.py).

What is checked, as Kafka behaves:
  * every node's Metadata lists every broker (ids 1..N, their Kafka host:port),
    the same leader and leader epoch for every partition, and (as KRaft
    brokers do) itself as the controller id clients should use, forwarding
    their admin requests to the active controller (librdkafka's
    describe_cluster reads the same);
  * CreateTopics sent to any node is forwarded to the active controller;
    a replication factor above the live brokers is refused (INVALID_REPLICATION_FACTOR); a new
    topic's partitions are spread round-robin (12 over 3 nodes: 4/4/4);
  * Produce/Fetch to a node that does not lead the partition: NOT_LEADER_OR_FOLLOWER,
    while clients bootstrapped with any node route by themselves;
  * FindCoordinator from any node names the leader of the group's
    `__consumer_offsets` partition; a 3-member group reads 100k keyed records
    exactly once and its committed offsets add up;
  * the active controller SIGKILLed while topics are being created: another
    node is elected, creation carries on, and after a full restart every
    acknowledged topic exists and no topic exists with part of its partitions;
  * a quorum of 5 accepts CreateTopics with 2 nodes down, refuses (an error in
    bounded time, no success) with 3 down, and after restarting them every
    earlier topic is there;
  * a SIGKILLed broker is fenced after broker.session.timeout.ms: its
    partitions show leader -1 until it restarts, then come back led by it with
    a higher leader epoch, their records and the group's committed offsets intact;
  * bad cluster configuration is refused at start with one error line.

Timeouts are short on purpose (broker session 3 s, heartbeat 0.5 s, election
1 s; see cluster.CLUSTER_SETS). Every wait is bounded; a failure message carries
the tail of each node's log, and a failed test prints the nodes' full logs.
Node logs and data dirs stay in pytest's tmp dir (basetemp) for a post-mortem.
"""

import concurrent.futures
import re
import signal
import sys
import threading
import time
import traceback
from collections import Counter

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from clients import confluent_consume_all, confluent_produce, keyed_records, verify_keyed
from cluster import (ELECTION_TIMEOUT_MS, INVALID_REPLICATION_FACTOR, NONE, NOT_LEADER_OR_FOLLOWER, OFFSETS_TOPIC,
                     SESSION_TIMEOUT_MS, Cluster, create_topics_raw, describe_cluster, error_lines, error_name,
                     fetch_error, find_coordinator, kcat_metadata, leaders, metadata, offsets_partition_for,
                     produce_error, tail, wait_exit)
from conftest import _dump_logs, create_topic, free_port, unique_topic

pytestmark = pytest.mark.timeout(300)


# --- fixtures ----------------------------------------------------------------------------


def _cluster_fixture(request, tmp_path_factory, name, failed_before):
    clusters = []

    def make(n, sets=None, **kw):
        c = Cluster(tmp_path_factory.mktemp(f"{name}-cluster{len(clusters)}"), n, sets=sets, **kw)
        clusters.append(c)  # before starting: teardown covers a failed start
        c.start_all()
        return c

    yield make

    failed = request.session.testsfailed > failed_before or getattr(request.node, "_shardlog_failed", False)
    for c in clusters:
        note = c.teardown()
        if note:
            sys.stderr.write(f"\n{note}\n")
            failed = True
    if failed:
        for c in clusters:
            _dump_logs(c.nodes, f"failure in {request.node.nodeid}")


@pytest.fixture
def cluster_factory(request, tmp_path_factory):
    """cluster_factory(n, sets=None, shards=...) -> a started Cluster, stopped at teardown."""
    yield from _cluster_fixture(request, tmp_path_factory, request.node.name[:40].replace("/", "_"),
                                request.session.testsfailed)


@pytest.fixture(scope="module")
def shared3(request, tmp_path_factory):
    """One 3-node cluster for the tests that kill nothing."""
    gen = _cluster_fixture(request, tmp_path_factory, "shared3", request.session.testsfailed)
    make = next(gen)
    try:
        yield make(3)
    finally:
        next(gen, None)  # teardown: stop the nodes (also after a failed start)


# --- helpers ------------------------------------------------------------------------------


def agreed_leaders(c, topic, ids=None, partitions=None, timeout=30.0):
    """Wait until every node in `ids` (default: live) answers Metadata for `topic`
    with the same {partition: (leader, epoch)}, all partitions present and led
    by a live node; returns it."""
    ids = ids or c.alive_ids()
    last = {}

    def check():
        views = c.metadata_views(ids, topics=[topic])
        seen = []
        for i, md in views.items():
            if isinstance(md, Exception):
                last[i] = repr(md)
                return None
            ld = leaders(md, topic)
            last[i] = ld if ld is not None else md["topics"].get(topic)
            if ld is None or (partitions is not None and len(ld) != partitions):
                return None
            if any(leader not in ids for leader, _ in ld.values()):
                return None
            seen.append(ld)
        return seen[0] if all(s == seen[0] for s in seen) else None

    return c.wait(check, timeout, f"nodes {ids} to agree on live leaders of {topic}", state=lambda: last)


def admin_create(bootstrap, name, partitions, rf=1, timeout=10.0):
    """One CreateTopics through AdminClient. Returns None on success, else the KafkaError."""
    a = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 2000})
    fs = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=rf)],
                         operation_timeout=timeout / 2, request_timeout=timeout)
    try:
        fs[name].result(timeout=timeout + 10)
        return None
    except KafkaException as e:
        return e.args[0]
    except concurrent.futures.TimeoutError:
        return KafkaError(KafkaError._TIMED_OUT, f"no result within {timeout + 10}s (client-side)")


def create_with_retries(c, name, partitions, timeout, ids=None):
    """CreateTopics until acknowledged (TOPIC_ALREADY_EXISTS after an earlier
    attempt counts: that attempt was committed). Returns the errors met on the way."""
    deadline = time.monotonic() + timeout
    errors = []
    while time.monotonic() < deadline:
        err = admin_create(c.bootstrap_of(ids or c.alive_ids()), name, partitions)
        if err is None or (err.code() == KafkaError.TOPIC_ALREADY_EXISTS and errors):
            return errors
        assert err.code() != KafkaError.TOPIC_ALREADY_EXISTS, f"{name}: fresh name already exists"
        errors.append(err)
        time.sleep(0.3)
    c.fail(f"CreateTopics {name} not acknowledged within {timeout}s; errors: {[str(e) for e in errors[-5:]]}")


def assert_complete_topics(c, names, partitions, ids=None, timeout=30.0):
    """Every node in `ids` lists each of `names` with all its partitions, each led by a live node."""
    ids = ids or c.alive_ids()
    last = {}

    def check():
        bad = {}
        for i, md in c.metadata_views(ids, topics=sorted(names)).items():
            if isinstance(md, Exception):
                bad[i] = repr(md)
                continue
            for n in names:
                t = md["topics"].get(n)
                if t is None or t["error_code"] != 0 or len(t["partitions"]) != partitions or any(
                        p["error_code"] != 0 or p["leader"] not in ids for p in t["partitions"].values()):
                    bad.setdefault(i, {})[n] = t and {"error": t["error_code"], "partitions": {
                        k: (p["leader"], p["error_code"]) for k, p in t["partitions"].items()}}
        last.clear()
        last.update(bad)
        return not bad

    c.wait(check, timeout, f"{len(names)} topics complete ({partitions} partitions, live leaders) on nodes {ids}",
           state=lambda: last)


def topics_with_prefix(c, prefix, node_id):
    md = metadata(c.node(node_id).bootstrap)
    return {n: t for n, t in md["topics"].items() if n.startswith(prefix)}


def committed_offsets(bootstrap, group, topic, partitions, timeout=20.0):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        for tp in tps:
            assert tp.error is None, f"committed offset of {topic}/{tp.partition} for {group}: {tp.error}"
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


class GroupMember(threading.Thread):
    """A confluent-kafka group member in a thread: subscribes, records every
    (partition, offset, key, value), commits synchronously after each batch
    and once more when told to stop, then closes (leaving the group)."""

    def __init__(self, name, bootstrap, group, topic):
        super().__init__(name=name, daemon=True)
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.records = []
        self.assignment = []
        self.events = []  # (monotonic time, "assign"/"revoke", partitions)
        self.commits = 0
        self.commit_errors = []
        self.error = None
        self.stopping = threading.Event()

    def _on_assign(self, consumer, partitions):
        self.assignment = sorted(p.partition for p in partitions)
        self.events.append((time.monotonic(), "assign", self.assignment))

    def _on_revoke(self, consumer, partitions):
        self.assignment = []
        self.events.append((time.monotonic(), "revoke", sorted(p.partition for p in partitions)))

    def run(self):
        try:
            c = Consumer({
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 1000,
                "max.poll.interval.ms": 120000,
                "fetch.wait.max.ms": 100,
            })
            c.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
            dirty = False
            while not self.stopping.is_set():
                msgs = c.consume(num_messages=2000, timeout=0.3)
                batch = []
                for m in msgs:
                    if m.error() is not None:
                        if m.error().code() != KafkaError._PARTITION_EOF:
                            self.commit_errors.append(f"consume: {m.error()}")
                        continue
                    batch.append((m.partition(), m.offset(), m.key(), m.value()))
                if batch:
                    self.records.extend(batch)
                    dirty = True
                if dirty:
                    try:
                        c.commit(asynchronous=False)
                        self.commits += 1
                        dirty = False
                    except KafkaException as e:
                        if e.args[0].code() != KafkaError._NO_OFFSET:
                            self.commit_errors.append(str(e))
            if dirty:
                try:
                    c.commit(asynchronous=False)
                    self.commits += 1
                except KafkaException as e:
                    if e.args[0].code() != KafkaError._NO_OFFSET:
                        self.commit_errors.append(f"final commit: {e}")
            c.close()
        except BaseException:  # noqa: BLE001 - reported by the test
            self.error = traceback.format_exc()


# --- tests ------------------------------------------------------------------------------------


def test_twelve_partitions_spread_four_per_node_and_every_node_agrees(shared3):
    c = shared3
    topic = unique_topic("spread")
    ctrl = c.wait_ready()

    # CreateTopics through AdminClient bootstrapped with node 2 only.
    err = admin_create(c.node(2).bootstrap, topic, 12, timeout=20)
    assert err is None, f"CreateTopics {topic} (12 partitions) via node 2: {err}\n{c.tails()}"
    ld = agreed_leaders(c, topic, partitions=12)

    # Every node's Metadata: the same 3 brokers at their Kafka ports, the same controller.
    for n in c.nodes:
        md = metadata(n.bootstrap, topics=[topic])
        assert md["brokers"] == {m.node_id: ("127.0.0.1", m.port) for m in c.nodes}, (
            f"node {n.node_id} lists brokers {md['brokers']}")
        # KRaft: a broker names itself as the controller for clients, and forwards.
        assert md["controller_id"] == n.node_id, f"node {n.node_id} says controller {md['controller_id']}"
        assert leaders(md, topic) == ld, f"node {n.node_id}: leaders {leaders(md, topic)} != {ld}"
        for p in md["topics"][topic]["partitions"].values():
            assert p["replicas"] == [p["leader"]] and p["isr"] == [p["leader"]], (
                f"node {n.node_id} partition {p['partition']}: RF 1 expected, replicas {p['replicas']} isr {p['isr']}")
    counts = Counter(leader for leader, _ in ld.values())
    print(f"\nleaders of {topic}: {[ld[p][0] for p in range(12)]}, epochs {[ld[p][1] for p in range(12)]}")
    assert counts == {1: 4, 2: 4, 3: 4}, f"12 partitions over 3 nodes not spread 4/4/4: {dict(counts)}"
    assert all(epoch >= 0 for _, epoch in ld.values()), ld
    assert "became active controller" in c.node(ctrl).log_text(), (
        f"node {ctrl} is the controller but never logged 'became active controller'\n{c.tails()}")
    for n in c.nodes:
        assert re.search(rf"controller listening on\s+(?:\w+://)?127\.0\.0\.1:{n.ctrl_port}\b", n.log_text()), (
            f"node {n.node_id} never logged 'controller listening on 127.0.0.1:{n.ctrl_port}'\n{c.tails()}")

    # DescribeCluster agrees with Metadata.
    d_ctrl, d_nodes, d_cluster = describe_cluster(c.node(3).bootstrap)
    # librdkafka's describe_cluster reads Metadata: the broker asked names itself.
    assert (d_ctrl, d_nodes, d_cluster) == (3, [1, 2, 3], c.cluster_id), (d_ctrl, d_nodes, d_cluster)
    # The DescribeCluster API itself names the active controller, from every node.
    for n in c.nodes:
        assert raw_describe_cluster_controller(n.bootstrap) == ctrl, f"node {n.node_id}"

    # librdkafka (kcat -L -J) bootstrapped with each node alone sees the same.
    for n in c.nodes:
        md = kcat_metadata(n.bootstrap, topic)
        brokers = sorted((b["id"], b["name"]) for b in md["brokers"])
        assert brokers == [(m.node_id, m.bootstrap) for m in c.nodes], f"kcat via node {n.node_id}: {md['brokers']}"
        (t,) = [t for t in md["topics"] if t["topic"] == topic]
        assert {p["partition"]: p["leader"] for p in t["partitions"]} == {p: v[0] for p, v in ld.items()}, (
            f"kcat via node {n.node_id}: {t}")

    # Produce/Fetch to a node that does not lead the partition are refused; the leader serves them.
    for p, (leader, _) in ld.items():
        for n in c.nodes:
            code = produce_error(n.bootstrap, topic, p, value=f"raw-{p}-{n.node_id}".encode())
            fcode, _ = fetch_error(n.bootstrap, topic, p)
            want = NONE if n.node_id == leader else NOT_LEADER_OR_FOLLOWER
            assert (code, fcode) == (want, want), (
                f"partition {p} (leader {leader}) via node {n.node_id}: produce {error_name(code)}, "
                f"fetch {error_name(fcode)}, expected {error_name(want)}")

    # Clients bootstrapped with one node route to every leader themselves.
    recs = [(f"k{i}".encode(), f"routed-{i}".encode()) for i in range(1200)]
    delivered = confluent_produce(c.node(1).bootstrap, topic, recs, timeout=60)
    assert len({p for p, _ in delivered.values()}) == 12, "keyed records did not reach all 12 partitions"
    read, _ = confluent_consume_all(c.node(3).bootstrap, topic, range(12), timeout=60)
    got = {(p, off): v for p, rs in read.items() for off, _k, v, _ts in rs}
    missing = [v for v, loc in delivered.items() if got.get(loc) != v]
    assert not missing, f"{len(missing)} records not read back at their offsets, e.g. {missing[:3]}"


def test_create_topics_forwarded_from_every_node_and_rf_above_the_brokers_refused(shared3):
    c = shared3
    ctrl = c.wait_ready()
    # Raw CreateTopics sent to each node, controller or not: all succeed.
    names = {}
    for n in c.nodes:
        name = unique_topic(f"fwd-{n.node_id}")
        res = create_topics_raw(n.bootstrap, [(name, 3, 1)], timeout_ms=10000)
        assert res.get(name, (None,))[0] == NONE, (
            f"CreateTopics to node {n.node_id} (controller is {ctrl}): {res}\n{c.tails()}")
        names[name] = n.node_id
    assert_complete_topics(c, list(names), 3)

    # Replication factor 4 on 3 brokers is refused, through a non-controller and through AdminClient.
    other = next(n for n in c.nodes if n.node_id != ctrl)
    bad = unique_topic("rf4")
    res = create_topics_raw(other.bootstrap, [(bad, 3, 4)])
    assert res.get(bad, (None,))[0] == INVALID_REPLICATION_FACTOR, f"RF 4 via node {other.node_id}: {res}"
    err = admin_create(c.bootstrap, bad, 3, rf=4)
    assert err is not None and err.code() == KafkaError.INVALID_REPLICATION_FACTOR, f"RF 4 via AdminClient: {err}"
    for n in c.nodes:
        assert bad not in topics_with_prefix(c, bad, n.node_id), f"refused topic {bad} exists on node {n.node_id}"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_keyed_records_across_nodes_consumed_once_by_a_three_member_group(shared3):
    c = shared3
    c.wait_ready()
    topic = unique_topic("grp3")
    group = f"g-{topic}"
    create_topic(c.bootstrap, topic, 12)
    agreed_leaders(c, topic, partitions=12)
    members = [GroupMember(f"member-{i}", c.bootstrap, group, topic) for i in range(3)]
    for m in members:
        m.start()

    def state():
        return {m.name: {"assignment": m.assignment, "records": len(m.records), "commits": m.commits,
                         "errors": m.commit_errors[-3:], "events": m.events[-4:], "crash": m.error} for m in members}

    try:
        # A stable 4/4/4 group before producing, so no rebalance can hand a record to two members.
        def balanced():
            a = [m.assignment for m in members]
            quiet = all(not m.events or time.monotonic() - m.events[-1][0] > 1.0 for m in members)
            return quiet and all(len(x) == 4 for x in a) and sorted(sum(a, [])) == list(range(12))

        c.wait(balanced, 60, "3 members owning 4 partitions each (stable for 1 s)", interval=0.2, state=state)
        produce_start = time.monotonic()
        records = keyed_records(100_000, n_keys=1000, seed=7)
        delivered = confluent_produce(c.bootstrap, topic, records, timeout=120)
        print(f"\nproduced {len(delivered)} records (acks=all) in {time.monotonic() - produce_start:.1f}s")

        def all_seen():
            if any(m.error for m in members):
                c.fail(f"a member crashed: {state()}")
            return sum(len(m.records) for m in members) >= len(records)

        c.wait(all_seen, 180, f"the group to consume {len(records)} records", interval=0.5, state=state)
    finally:
        for m in members:
            m.stopping.set()
        for m in members:
            m.join(30)
    assert not any(m.is_alive() for m in members), f"members did not close within 30s: {state()}"
    assert not any(m.error for m in members), f"member crashed: {state()}"
    late = [(m.name, e) for m in members for e in m.events if e[0] > produce_start]
    counts = Counter((k, v) for m in members for _p, _o, k, v in m.records)
    dupes = [kv for kv, n in counts.items() if n > 1]
    assert not dupes, (f"{len(dupes)} records consumed more than once, e.g. {dupes[:3]}; "
                       f"rebalances after producing began: {late}")
    assert set(counts) == set(records), (
        f"consumed {len(counts)} distinct records, produced {len(records)}; "
        f"missing e.g. {list(set(records) - set(counts))[:3]}")
    print("records per member: " + ", ".join(f"{m.name} {len(m.records)} ({m.commits} commits)" for m in members))
    assert all(m.records for m in members), "a member consumed nothing"
    read = {p: [] for p in range(12)}
    for m in members:
        for p, off, k, v in m.records:
            read[p].append((off, k, v))
    for p in read:
        read[p].sort()
    verify_keyed(read, delivered, len(records))

    committed = committed_offsets(c.bootstrap, group, topic, range(12))
    ends = {p: max(off for off, _k, _v in read[p]) + 1 if read[p] else 0 for p in range(12)}
    assert committed == ends, f"committed offsets {committed} != end of what was consumed {ends}"
    assert sum(committed.values()) == len(records), f"committed offsets add up to {sum(committed.values())}"

    # FindCoordinator from every node names the leader of the group's __consumer_offsets partition.
    md = metadata(c.node(1).bootstrap, topics=[OFFSETS_TOPIC])
    off_ld = leaders(md, OFFSETS_TOPIC)
    assert off_ld, f"{OFFSETS_TOPIC} missing from metadata: {md['topics'].get(OFFSETS_TOPIC)}"
    want = off_ld[offsets_partition_for(group, len(off_ld))][0]
    for n in c.nodes:
        err, node_id, host, port = find_coordinator(n.bootstrap, group)
        assert (err, node_id, host, port) == (NONE, want, "127.0.0.1", c.node(want).port), (
            f"FindCoordinator({group}) via node {n.node_id}: {(error_name(err), node_id, host, port)}, expected node "
            f"{want} (leader of {OFFSETS_TOPIC}-{offsets_partition_for(group, len(off_ld))})")


class TopicCreator(threading.Thread):
    """Creates {prefix}-0, -1, ... (PARTITIONS each) one after the other, each
    retried until acknowledged, paced (PAUSE_S after each), until stopped."""

    PARTITIONS = 3
    PAUSE_S = 0.2  # a few topics a second: hundreds over the test, not thousands

    def __init__(self, cluster, prefix, max_topics=1000, max_seconds=200):
        super().__init__(name="topic-creator", daemon=True)
        self.c, self.prefix, self.max_topics, self.max_seconds = cluster, prefix, max_topics, max_seconds
        self.acked = []
        self.attempt_errors = []  # (name, attempt, error)
        self.fatal = None
        self.stopping = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.max_seconds
        try:
            for i in range(self.max_topics):
                name = f"{self.prefix}-{i}"
                attempt = 0
                while not self.stopping.is_set() and time.monotonic() < deadline:
                    err = admin_create(self.c.live_bootstrap, name, self.PARTITIONS, timeout=8)
                    if err is None or (err.code() == KafkaError.TOPIC_ALREADY_EXISTS and attempt > 0):
                        self.acked.append(name)
                        time.sleep(self.PAUSE_S)
                        break
                    self.attempt_errors.append((name, attempt, str(err)))
                    if err.code() in (KafkaError.TOPIC_ALREADY_EXISTS, KafkaError.INVALID_REPLICATION_FACTOR,
                                      KafkaError.INVALID_PARTITIONS, KafkaError.TOPIC_EXCEPTION):
                        self.fatal = f"{name} attempt {attempt}: {err}"
                        return
                    attempt += 1
                    time.sleep(0.2)
                if self.stopping.is_set() or time.monotonic() >= deadline:
                    return
        except BaseException:  # noqa: BLE001
            self.fatal = traceback.format_exc()


@pytest.mark.slow
def test_active_controller_killed_during_creates(cluster_factory):
    c = cluster_factory(3)
    old = c.wait_ready()
    prefix = unique_topic("ctl")
    creator = TopicCreator(c, prefix)
    creator.start()

    def progress():
        return (f"acked {len(creator.acked)} (last {creator.acked[-1:]}), "
                f"errors {creator.attempt_errors[-5:]}, fatal {creator.fatal}")

    try:
        c.wait(lambda: len(creator.acked) >= 5 or creator.fatal, 60, "5 topics created", state=progress)
        assert not creator.fatal, creator.fatal

        c.kill(old)
        killed_at = time.monotonic()
        acked_at_kill = len(creator.acked)
        survivors = [i for i in c.ids() if i != old]
        new = c.wait_ready(ids=survivors, timeout=15, exact_brokers=False)
        elected_s = time.monotonic() - killed_at
        print(f"\ncontroller {old} SIGKILLed; node {new} is the active controller after {elected_s:.1f}s "
              f"(election timeout {ELECTION_TIMEOUT_MS} ms)")
        assert new != old
        assert "became active controller" in c.node(new).run_log(), (
            f"node {new} is named controller but did not log 'became active controller'\n{c.tails()}")

        def described():
            try:
                d = describe_cluster(c.live_bootstrap, timeout=3)
            except Exception:  # noqa: BLE001 - a request routed to the dead node: ask again
                return None
            return d if d[0] in survivors else None

        # Clients are pointed at a live broker (KRaft), never at the dead controller.
        d = c.wait(described, SESSION_TIMEOUT_MS / 1000 + 15, "DescribeCluster to name a surviving broker")
        assert d[0] in survivors, f"DescribeCluster names {d[0]}, not a survivor {survivors}"

        c.wait(lambda: len(creator.acked) >= acked_at_kill + 5 or creator.fatal, 60,
               "5 more topics created after the controller's death", state=progress)
        assert not creator.fatal, creator.fatal

        c.node(old).start(timeout=60)
        c.wait_ready(timeout=60)
        at_restart = len(creator.acked)
        c.wait(lambda: len(creator.acked) >= at_restart + 3 or creator.fatal, 60,
               "3 more topics created with the old controller back", state=progress)
    finally:
        creator.stopping.set()
        creator.join(30)
    assert not creator.is_alive(), "topic creator did not stop within 30 s"
    assert not creator.fatal, creator.fatal
    acked = list(creator.acked)
    print(f"{len(acked)} topics acknowledged; {len(creator.attempt_errors)} failed attempts, "
          f"e.g. {creator.attempt_errors[:3]}")
    assert_complete_topics(c, acked, TopicCreator.PARTITIONS)

    # Full clean restart: every acknowledged topic is there, every topic is whole.
    codes = c.stop_all(signal.SIGTERM)
    assert all(code == 0 for code in codes.values()), f"SIGTERM exit codes {codes}\n{c.tails()}"
    c.start_all()
    assert_complete_topics(c, acked, TopicCreator.PARTITIONS, timeout=60)
    listed = {}
    for n in c.nodes:
        listed[n.node_id] = topics_with_prefix(c, prefix, n.node_id)
        partial = {name: len(t["partitions"]) for name, t in listed[n.node_id].items()
                   if t["error_code"] != 0 or len(t["partitions"]) != TopicCreator.PARTITIONS}
        assert not partial, f"node {n.node_id}: topics with a partial partition list {partial}"
    names = {i: sorted(v) for i, v in listed.items()}
    assert names[1] == names[2] == names[3], f"nodes list different topics: {names}"
    assert set(acked) <= set(names[1]), f"acknowledged topics missing after restart: {set(acked) - set(names[1])}"
    extra = set(names[1]) - set(acked)
    print(f"after restart: {len(names[1])} topics, {len(extra)} created but never acknowledged: {sorted(extra)}")


@pytest.mark.slow
def test_five_node_quorum_survives_two_losses_and_stops_at_three(cluster_factory):
    c = cluster_factory(5, shards=1)
    ctrl = c.wait_ready()
    prefix = unique_topic("q5")
    created = [f"{prefix}-before"]
    create_with_retries(c, created[0], 5, timeout=30)

    # Two nodes down, the controller among them: 3 of 5 elect a new one and accept creates.
    first_two = [ctrl, next(i for i in c.ids() if i != ctrl)]
    for i in first_two:
        c.kill(i)
    t0 = time.monotonic()
    created.append(f"{prefix}-two-down")
    errs = create_with_retries(c, created[-1], 5, timeout=60)
    print(f"\nnodes {first_two} SIGKILLed; CreateTopics acknowledged after {time.monotonic() - t0:.1f}s "
          f"({len(errs)} failed attempts: {[str(e) for e in errs[:3]]})")
    ctrl2 = c.controller_id(timeout=30)
    assert ctrl2 not in first_two

    # A third node down (not the controller: it stays up without a majority): no create may succeed.
    third = next(i for i in c.alive_ids() if i != ctrl2)
    c.kill(third)
    down = first_two + [third]
    alive = c.alive_ids()
    doomed = f"{prefix}-no-quorum"
    t0 = time.monotonic()
    a = AdminClient({"bootstrap.servers": c.live_bootstrap})
    fut = a.create_topics([NewTopic(doomed, num_partitions=5, replication_factor=1)],
                          operation_timeout=5, request_timeout=15)[doomed]
    raw_name = f"{doomed}-raw"
    raw_via = next(i for i in alive if i != ctrl2)  # the forwarding path, to a controller without a majority
    try:
        raw = create_topics_raw(c.node(raw_via).bootstrap, [(raw_name, 5, 1)], timeout_ms=5000, sock_timeout=45)
    except Exception as e:  # noqa: BLE001
        raw = e
    raw_s = time.monotonic() - t0
    try:
        fut.result(timeout=45)
        admin_err = None
    except KafkaException as e:
        admin_err = e.args[0]
    except Exception as e:  # noqa: BLE001 - concurrent.futures timeout: no answer at all
        c.fail(f"CreateTopics with 3 of 5 nodes down gave no answer within 45s: {e!r}")
    admin_s = time.monotonic() - t0
    print(f"nodes {down} down: AdminClient CreateTopics -> {admin_err} after {admin_s:.1f}s; "
          f"raw CreateTopics to node {raw_via} -> {raw} after {raw_s:.1f}s")
    assert admin_err is not None, f"CreateTopics succeeded with only nodes {alive} of 5 up\n{c.tails()}"
    assert isinstance(raw, dict), f"raw CreateTopics to node {raw_via}: no answer ({raw!r})\n{c.tails()}"
    assert raw.get(raw_name, (NONE,))[0] != NONE, f"raw CreateTopics succeeded without a quorum: {raw}"
    assert raw_s < 45 and admin_s < 60

    # The lost nodes come back: earlier topics are all there, a new create works.
    c.start_all(ids=down)
    assert_complete_topics(c, created, 5, timeout=60)
    for maybe in (doomed, raw_name):
        found = topics_with_prefix(c, maybe, alive[0]).get(maybe)
        if found is not None:  # a timed-out create may still commit later, but never in part
            print(f"{maybe}: timed out without quorum, exists after recovery")
            assert_complete_topics(c, [maybe], 5)
    created.append(f"{prefix}-after")
    create_with_retries(c, created[-1], 5, timeout=30)
    assert_complete_topics(c, created, 5)


@pytest.mark.slow
def test_killed_broker_partitions_go_leaderless_and_return_with_offsets(cluster_factory):
    c = cluster_factory(3)
    ctrl = c.wait_ready()
    victim = next(i for i in c.ids() if i != ctrl)
    witness = next(i for i in c.ids() if i != victim)
    topic = unique_topic("fence")
    create_topic(c.bootstrap, topic, 6)
    before = agreed_leaders(c, topic, partitions=6)
    victim_parts = sorted(p for p, (leader, _) in before.items() if leader == victim)
    assert len(victim_parts) == 2, f"6 partitions over 3 nodes, victim {victim} leads {victim_parts}: {before}"

    # A group whose coordinator (its __consumer_offsets partition) lives on the victim.
    off_ld = leaders(metadata(c.node(witness).bootstrap, topics=[OFFSETS_TOPIC]), OFFSETS_TOPIC)
    assert off_ld, f"{OFFSETS_TOPIC} missing from metadata"
    group = next((g for g in (f"g-{topic}-{i}" for i in range(5000))
                  if off_ld[offsets_partition_for(g, len(off_ld))][0] == victim), None)
    assert group, f"no group name maps to a {OFFSETS_TOPIC} partition led by node {victim}"

    records = keyed_records(6000, n_keys=200, seed=3)
    delivered = confluent_produce(c.bootstrap, topic, records, timeout=60)
    member = GroupMember("member", c.bootstrap, group, topic)
    member.start()
    try:
        c.wait(lambda: len(member.records) >= len(records) or member.error, 60, "the group to read every record",
               state=lambda: (len(member.records), member.commit_errors[-3:], member.error))
    finally:
        member.stopping.set()
        member.join(30)
    assert not member.error and not member.is_alive(), member.error
    committed = committed_offsets(c.bootstrap, group, topic, range(6))
    assert sum(committed.values()) == len(records), f"committed {committed}"
    # more records after the commit, so "intact" cannot be confused with "at the end"
    delivered.update(confluent_produce(c.bootstrap, topic, [(k, b"late|" + v) for k, v in records[:600]],
                                       timeout=60))

    c.kill(victim)
    killed_at = time.monotonic()
    limit = SESSION_TIMEOUT_MS / 1000 + 10
    last = {}

    def leaderless():
        md = metadata(c.node(witness).bootstrap, topics=[topic])
        last["md"] = leaders(md, topic)
        return last["md"] and all(last["md"][p][0] == -1 for p in victim_parts)

    c.wait(leaderless, limit, f"partitions {victim_parts} of SIGKILLed node {victim} to show leader -1 on node "
                              f"{witness} (session timeout {SESSION_TIMEOUT_MS} ms)", state=lambda: last)
    fenced_s = time.monotonic() - killed_at
    print(f"\nnode {victim} SIGKILLed; its partitions leaderless after {fenced_s:.1f}s")
    for i in c.alive_ids():
        ld = leaders(metadata(c.node(i).bootstrap, topics=[topic]), topic)
        assert ld is not None and len(ld) == 6, f"node {i}: {topic} while node {victim} is fenced: {ld}"
        for p, (leader, _) in before.items():
            want = -1 if p in victim_parts else leader
            assert ld[p][0] == want, f"node {i}, partition {p}: leader {ld[p][0]}, expected {want} ({ld})"
    kmd = kcat_metadata(c.node(witness).bootstrap, topic)
    (kt,) = [t for t in kmd["topics"] if t["topic"] == topic]
    for p in kt["partitions"]:
        if p["partition"] in victim_parts:
            assert p["leader"] == -1 or "error" in p, f"kcat shows a leader for fenced partition: {p}"

    c.node(victim).start(timeout=60)
    c.wait_ready(timeout=60)
    after = agreed_leaders(c, topic, partitions=6)
    for p in victim_parts:
        assert after[p][0] == victim, f"partition {p} led by {after[p][0]} after node {victim} came back: {after}"
        assert after[p][1] > before[p][1], (
            f"partition {p}: leader epoch {after[p][1]} after fencing and return, was {before[p][1]}")
    print(f"epochs of {victim_parts}: {[before[p][1] for p in victim_parts]} -> {[after[p][1] for p in victim_parts]}")

    read, _ = confluent_consume_all(c.bootstrap, topic, range(6), timeout=60)
    got = {(p, off): v for p, rs in read.items() for off, _k, v, _ts in rs}
    lost = [v for v, loc in delivered.items() if got.get(loc) != v]
    assert not lost, f"{len(lost)} acknowledged records not readable after node {victim} returned, e.g. {lost[:3]}"
    assert committed_offsets(c.bootstrap, group, topic, range(6)) == committed, (
        f"committed offsets of {group} (coordinator on node {victim}) changed across its fencing")


BAD_CONFIGS = {
    "duplicate-voter-ids": ({"controller.quorum.voters": "1@127.0.0.1:{c1},1@127.0.0.1:{c2}"},
                            ("controller.quorum.voters",)),
    "node-id-not-in-voters": ({"node.id": 4}, ("node.id", "controller.quorum.voters")),
    "malformed-voter": ({"controller.quorum.voters": "1@nohost"}, ("controller.quorum.voters",)),
    "unknown-listener": ({"listeners": "PLAINTEXT://127.0.0.1:{k},CONTROLLER://127.0.0.1:{c1},FOO://127.0.0.1:1"},
                         ("listeners", "listener.security.protocol.map")),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_cluster_config_refused_at_start(broker_factory, case):
    override, keys = BAD_CONFIGS[case]
    b = broker_factory(start=False)
    c1, c2, c3 = free_port(), free_port(), free_port()
    ports = {"k": b.port, "c1": c1, "c2": c2}
    sets = {
        "node.id": 1,
        "listeners": f"PLAINTEXT://127.0.0.1:{b.port},CONTROLLER://127.0.0.1:{c1}",
        "controller.quorum.voters": f"1@127.0.0.1:{c1},2@127.0.0.1:{c2},3@127.0.0.1:{c3}",
        "cluster.id": "MkU3OEVBNTcwNTJENDM2Qk",
    }
    sets.update({k: v.format(**ports) if isinstance(v, str) else v for k, v in override.items()})
    b.sets.update(sets)
    b.spawn()
    code = wait_exit(b.proc, 10)
    log = b.run_log()
    assert code is not None, f"{case}: still running 10 s after start with {override}:\n{tail(log)}"
    b.exit_codes.append(code)
    assert code != 0, f"{case}: exited 0 with {override}:\n{tail(log)}"
    assert "listening on" not in log, f"{case}: bad config was served:\n{tail(log)}"
    assert "panicked" not in log, f"{case}: a panic, not an error line:\n{tail(log)}"
    errors = error_lines(log)
    assert len(errors) == 1, f"{case}: expected one ERROR line, got {len(errors)}:\n{tail(log)}"
    assert any(k in errors[0] for k in keys), f"{case}: the error line names none of {keys}: {errors[0]}"


@pytest.mark.slow
def test_broker_only_and_controller_only_nodes(cluster_factory, tmp_path):
    """process.roles: a broker-only node (no metadata log, no CONTROLLER
    port) follows the controllers' image, registers, leads its share of a new
    topic and serves it; a controller-only node (node 3 here) votes but serves
    no Kafka port and is never given partitions."""
    from cluster import CLUSTER_SETS, ClusterNode

    c = cluster_factory(3)
    c.wait_ready()
    port = free_port()
    sets = {
        "node.id": 4,
        "process.roles": "broker",
        "listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.quorum.voters": c.voters,
        "cluster.id": c.cluster_id,
        **CLUSTER_SETS,
    }
    b4 = ClusterNode(4, tmp_path / "node-4" / "data", tmp_path / "node-4" / "shardlog.log", port, free_port(), sets,
                     shards=1)
    b4.start()
    try:
        def four_brokers():
            md = metadata(b4.bootstrap, topics=[])
            return sorted(md["brokers"]) == [1, 2, 3, 4] and md
        md = c.wait(four_brokers, 30, "node 4 to register and see every broker")
        assert md["cluster_id"] == c.cluster_id
        assert "controller listening on" not in b4.run_log()
        assert not (b4.data_dir / "__cluster_metadata-0").exists(), "a broker-only node keeps no metadata log"

        topic = unique_topic("roles")
        admin = AdminClient({"bootstrap.servers": b4.bootstrap})
        admin.create_topics([NewTopic(topic, 8, 1)])[topic].result(30)
        ld = c.wait(lambda: (lambda l: l and len(l) == 8 and l)(leaders(metadata(b4.bootstrap, topics=[topic]), topic)),
                    30, "the topic on node 4")
        assert Counter(leader for leader, _ in ld.values()) == {1: 2, 2: 2, 3: 2, 4: 2}, ld
        records = keyed_records(2000, n_keys=50, seed=4)
        delivered = confluent_produce(b4.bootstrap, topic, records, timeout=60)
        read, _ = confluent_consume_all(b4.bootstrap, topic, range(8), timeout=60)
        verify_keyed(read, delivered, len(records))
    finally:
        b4.stop()

    # Node 3 restarts as controller-only: it keeps voting, serves no Kafka
    # port, and once fenced it is given no partition of a new topic.
    n3 = c.node(3)
    n3.stop()
    n3.sets["process.roles"] = "controller"
    n3.spawn()
    c.wait(lambda: "controller listening on" in n3.run_log(), 30, "node 3 controller-only start")
    assert "listening on 127.0.0.1:%d" % n3.port not in n3.run_log().replace("controller listening on", "")
    c.wait(lambda: sorted(metadata(c.node(1).bootstrap, topics=[])["brokers"]) == [1, 2], 30,
           "node 3 to leave the broker list (fenced)")
    # The quorum still has all three voters: with node 1 down, nodes 2 and 3 elect and accept changes.
    c.kill(1)
    c.wait(lambda: sorted(metadata(c.node(2).bootstrap, topics=[])["brokers"]) == [2], 30,
           "node 1 fenced after its session")
    topic = unique_topic("ctrlonly")
    admin = AdminClient({"bootstrap.servers": c.node(2).bootstrap})
    c.wait(lambda: _created(admin, topic), 60, "a topic created with node 1 down (voters 2 and 3)")
    ld = leaders(metadata(c.node(2).bootstrap, topics=[topic]), topic)
    assert ld and all(leader == 2 for leader, _ in ld.values()), ld


def _created(admin, topic):
    try:
        admin.create_topics([NewTopic(topic, 2, 1)], request_timeout=10)[topic].result(15)
        return True
    except KafkaException as e:
        return e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS


@pytest.mark.slow
def test_a_broker_cut_off_from_the_quorum_stops_leading_until_it_is_heard_again(cluster_factory):
    """Nodes 2 and 3 frozen (SIGSTOP): node 1 has no controller to accept its
    heartbeats; past broker.session.timeout.ms it answers Produce for its own
    partitions with NOT_LEADER_OR_FOLLOWER instead of serving as current a view
    the cluster may have moved past, and says so once. Thawed, it leads again."""
    c = cluster_factory(3)
    c.wait_ready()
    topic = unique_topic("cutoff")
    create_topic(c.bootstrap, topic, 3)
    ld = c.wait(lambda: leaders(metadata(c.node(1).bootstrap, topics=[topic]), topic), 30, "the topic")
    mine = next(p for p, (leader, _) in ld.items() if leader == 1)
    n1 = c.node(1)
    assert produce_error(n1.bootstrap, topic, mine) == NONE
    frozen = [c.node(2), c.node(3)]
    for n in frozen:
        n.proc.send_signal(signal.SIGSTOP)
    try:
        c.wait(lambda: produce_error(n1.bootstrap, topic, mine) == NOT_LEADER_OR_FOLLOWER,
               SESSION_TIMEOUT_MS / 1000 + 15, "node 1 to stop leading without a controller")
        assert "it leads no partition until one does" in n1.run_log()
    finally:
        for n in frozen:
            n.proc.send_signal(signal.SIGCONT)
    c.wait(lambda: produce_error(n1.bootstrap, topic, mine) == NONE, 30, "node 1 to lead again")


@pytest.mark.slow
def test_a_node_far_behind_catches_up_from_a_metadata_snapshot(cluster_factory):
    """Snapshots every few KiB of metadata log: while node 3 is down the
    others create topics well past several snapshots (their logs compacted),
    so node 3 can only catch up from a snapshot sent by the leader; it does,
    serves every topic, and after a full restart all three agree from their
    own snapshots and logs."""
    c = cluster_factory(3, sets={"metadata.log.max.record.bytes.between.snapshots": 4096})
    c.wait_ready()
    c.kill(3)
    admin = AdminClient({"bootstrap.servers": c.bootstrap_of([1, 2])})
    prefix = unique_topic("snap")
    names = [f"{prefix}-{i}" for i in range(40)]
    for name in names:
        c.wait(lambda: _created(admin, name), 30, f"topic {name} with node 3 down")
    for i in (1, 2):
        assert "metadata snapshot at offset" in c.node(i).run_log(), f"node {i} never compacted its metadata log"
    # Long enough for the leader to learn node 3 is unreachable (its queued
    # appends are dropped): from then on it can only offer a snapshot.
    time.sleep(2)
    c.start_all(ids=[3])
    n3 = c.node(3)
    c.wait(lambda: "installed a metadata snapshot" in n3.run_log(), 30, "node 3 to install a snapshot")

    def all_topics_on(i):
        md = metadata(c.node(i).bootstrap, topics=names)
        return all(leaders(md, n) for n in names)
    c.wait(lambda: all_topics_on(3), 30, "every topic in node 3's metadata")
    c.stop_all()
    c.start_all()
    for i in c.ids():
        assert all_topics_on(i), f"node {i} lost topics across the restart"


def test_shardlog_bench_drives_a_three_node_cluster(shared3, tmp_path):
    """The load generator routes each partition to its leader: a 12-partition
    topic over 3 nodes, every acked record consumed, all three leaders used."""
    import json
    import subprocess
    from pathlib import Path
    bench = Path(__file__).resolve().parent.parent / "target" / "release" / "shardlog-bench"
    assert bench.exists(), f"{bench} missing: scripts/test.sh builds it before the tests"
    c = shared3
    topic = unique_topic("bench")
    out = tmp_path / "e2e.json"
    run = subprocess.run([str(bench), "e2e", "--bootstrap", c.node(2).bootstrap, "--topic", topic,
                          "--partitions", "12", "--duration-s", "2", "--rate", "5000", "--record-bytes", "256",
                          "--quiet", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"shardlog-bench failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}\n{c.tails()}"
    results = json.loads(out.read_text())["results"]
    produce, consume = results["produce"], results["consume"]
    assert results["counts_match"] and produce["errors"] == 0 and consume["crc_failures"] == 0, results
    assert produce["records"] > 0 and consume["records"] == produce["records"], results
    by_leader = {entry["leader_id"]: entry for entry in produce["leaders"]}
    assert sorted(by_leader) == [1, 2, 3], produce["leaders"]
    assert all(e["partitions"] == 4 and e["records"] > 0 for e in by_leader.values()), produce["leaders"]


def raw_describe_cluster_controller(bootstrap):
    """DescribeCluster v0 (flexible) sent to exactly this node -> controller_id."""
    import kafka_raw as kr
    with kr.Conn(bootstrap) as conn:
        # include_cluster_authorized_operations=false, no tagged fields
        r = conn.request(60, 0, b"\x00\x00", flexible_header=True)
    r.int8()  # response header v1: empty tagged fields
    r.int32()  # throttle_time_ms
    assert r.int16() == 0, "DescribeCluster error"
    n = r.int8()  # error_message: compact nullable string, null (0) expected
    assert n == 0
    cluster_id_len = r.int8() - 1  # compact string, short here
    r._take(cluster_id_len)
    return r.int32()
