"""The KIP-848 consumer group protocol (issue 13) with librdkafka's
`group.protocol=consumer`: the broker assigns partitions itself through
ConsumerGroupHeartbeat, incrementally (a partition moves only once its old
owner gave it up). A group of 3 shares a topic's partitions, rebalances
when a member joins and when one leaves, commits, and a new member resumes
from the commits; a classic group of another name works beside it;
ConsumerGroupDescribe and ListGroups show the group.
"""

import threading
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from conftest import create_topic, unique_topic
import kafka_raw as kr

PARTITIONS = 6
FAST = {"group.consumer.heartbeat.interval.ms": 300, "group.consumer.session.timeout.ms": 6000}
CONSUMER_GROUP_DESCRIBE = 69


class Member:
    """One librdkafka consumer polling in its own thread; records what it
    reads and commits after each poll that returned records."""

    def __init__(self, bootstrap, group, topic, protocol="consumer"):
        conf = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                "enable.auto.commit": False}
        if protocol == "consumer":
            conf["group.protocol"] = "consumer"
        else:
            conf.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
        self.consumer = Consumer(conf)
        self.consumer.subscribe([topic])
        self.values = []
        self.errors = []
        self.assigned = set()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            msgs = self.consumer.consume(num_messages=100, timeout=0.2)
            got = [m for m in msgs if not m.error()]
            self.errors += [m.error() for m in msgs if m.error()]
            with self.lock:
                self.values += [m.value() for m in got]
                self.assigned = {tp.partition for tp in self.consumer.assignment()}
            if got:
                try:
                    self.consumer.commit(asynchronous=False)
                except Exception as e:  # noqa: BLE001 - a commit racing a rebalance is retried by the next one
                    self.errors.append(e)

    def partitions(self):
        with self.lock:
            return set(self.assigned)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=30)
        self.consumer.close()


def wait_split(members, timeout=30.0):
    """Waits until the members own every partition exactly once, each a share within one of the others."""
    deadline = time.monotonic() + timeout
    while True:
        owned = [m.partitions() for m in members]
        flat = [p for o in owned for p in o]
        sizes = [len(o) for o in owned]
        if sorted(flat) == list(range(PARTITIONS)) and max(sizes) - min(sizes) <= 1:
            return owned
        assert time.monotonic() < deadline, f"no balanced split: {owned}"
        time.sleep(0.1)


def produce(bootstrap, topic, start, n):
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(start, start + n):
        p.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    assert p.flush(30) == 0
    return {f"v{i}".encode() for i in range(start, start + n)}


def wait_values(members, wanted, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        seen = set()
        for m in members:
            with m.lock:
                seen |= set(m.values)
        if wanted <= seen:
            return
        assert time.monotonic() < deadline, f"{len(wanted - seen)} records never consumed"
        time.sleep(0.1)


def describe(bootstrap, group):
    body = kr.compact_array([group], kr.compact_string) + kr.int8(0) + kr.TAGS
    with kr.Conn(bootstrap) as conn:
        r = conn.request(CONSUMER_GROUP_DESCRIBE, 0, body, flexible_header=True)
    r.tagged_fields()
    r.int32()

    def assignment(r):
        def tp(r):
            r._take(16)  # topic id
            name = r.compact_string()
            parts = r.compact_array(lambda r: r.int32())
            r.tagged_fields()
            return name, parts
        out = r.compact_array(tp)
        r.tagged_fields()
        return out

    def member(r):
        out = {"id": r.compact_string(), "instance": r.compact_string(), "rack": r.compact_string(),
               "epoch": r.int32(), "client_id": r.compact_string(), "host": r.compact_string(),
               "topics": r.compact_array(lambda r: r.compact_string()), "regex": r.compact_string(),
               "assignment": assignment(r), "target": assignment(r)}
        r.tagged_fields()
        return out

    def group_(r):
        out = {"error": r.int16(), "message": r.compact_string(), "id": r.compact_string(),
               "state": r.compact_string(), "epoch": r.int32(), "assignment_epoch": r.int32(),
               "assignor": r.compact_string(), "members": r.compact_array(member)}
        r.int32()  # authorized operations
        r.tagged_fields()
        return out

    (g,) = r.compact_array(group_)
    return g


def test_group_of_three_rebalances_on_join_and_leave_and_resumes_from_commits(broker_factory):
    broker = broker_factory(shards=2, sets=FAST)
    topic = unique_topic("kip848")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    classic_topic = unique_topic("classic")
    create_topic(broker.bootstrap, classic_topic, PARTITIONS)
    sent = produce(broker.bootstrap, topic, 0, 300)

    members = [Member(broker.bootstrap, "g848", topic)]
    wait_split(members)
    # A classic group of another name, on its own topic, at the same time.
    classic = Member(broker.bootstrap, "g-classic", classic_topic, protocol="classic")
    classic_sent = produce(broker.bootstrap, classic_topic, 0, 60)
    for _ in range(2):
        members.append(Member(broker.bootstrap, "g848", topic))
        owned = wait_split(members)
    assert all(len(o) == 2 for o in owned), owned
    wait_values(members, sent)
    wait_values([classic], classic_sent)

    g = describe(broker.bootstrap, "g848")
    assert (g["error"], g["state"], g["assignor"]) == (0, "Stable", "uniform"), g
    assert len(g["members"]) == 3
    assert all(m["epoch"] == g["assignment_epoch"] for m in g["members"])
    described = sorted(p for m in g["members"] for _, parts in m["assignment"] for p in parts)
    assert described == list(range(PARTITIONS))
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    listed = admin.list_consumer_groups().result(30)
    kinds = {g.group_id: (str(g.type), str(g.state)) for g in listed.valid}
    assert kinds["g848"] == ("ConsumerGroupType.CONSUMER", "ConsumerGroupState.STABLE"), kinds
    assert kinds["g-classic"][0] == "ConsumerGroupType.CLASSIC", kinds

    # One leaves: the other two take its partitions.
    members.pop().close()
    owned = wait_split(members)
    assert sorted(len(o) for o in owned) == [3, 3]
    more = produce(broker.bootstrap, topic, 300, 120)
    wait_values(members, more)
    time.sleep(1)  # the last commits
    for m in members:
        m.close()
    classic.close()

    # A new member of the group resumes after the commits: only new records.
    newest = produce(broker.bootstrap, topic, 420, 30)
    late = Member(broker.bootstrap, "g848", topic)
    wait_values([late], newest)
    time.sleep(1.5)
    late.close()
    assert set(late.values) == newest, sorted(set(late.values) - newest)[:5]
    assert not [e for m in members + [late] for e in m.errors if "FATAL" in str(e).upper()]
