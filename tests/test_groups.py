"""Consumer groups end to end: the real broker, real clients (confluent-kafka,
kafka-python, aiokafka, AdminClient), members in their own processes so one
can be SIGKILLed, and committed offsets across broker restarts.

Timeouts are small on purpose (session 6 s, initial rebalance delay 300 ms)
so the module stays within a couple of minutes; every wait is bounded.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from clients import confluent_produce, keyed_records
from conftest import create_topic, unique_topic, wait_until

HERE = Path(__file__).resolve().parent
SESSION_TIMEOUT_MS = 6000
GROUP_SETS = {
    "group.initial.rebalance.delay.ms": 300,
    "group.min.session.timeout.ms": 1000,
}


@pytest.fixture(scope="module")
def gb(module_broker_factory):
    return module_broker_factory(sets=GROUP_SETS)


class Member:
    """A group_member.py subprocess and what it reported."""

    def __init__(self, client, bootstrap, group, topic, out_dir, name):
        self.out = Path(out_dir) / f"{name}.jsonl"
        self.log = open(Path(out_dir) / f"{name}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "group_member.py"), client, bootstrap, group, topic, str(self.out),
             str(SESSION_TIMEOUT_MS)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def lines(self):
        try:
            text = self.out.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by SIGKILL
        return out

    def assignment(self):
        a = [l["assignment"] for l in self.lines() if "assignment" in l]
        return a[-1] if a else None

    def records(self):
        return [tuple(r) for l in self.lines() if "records" in l for r in l["records"]]

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()

    def log_text(self):
        try:
            return (self.out.parent / (self.out.stem + ".log")).read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""


@pytest.mark.parametrize("client", ["confluent", "kafka-python", "aiokafka"])
def test_group_of_three_survives_a_sigkilled_member(gb, client, tmp_path):
    topic = unique_topic(f"grp-{client}")
    group = f"g-{topic}"
    create_topic(gb.bootstrap, topic, 6)
    # Values are unique within one keyed_records() call; the prefix keeps
    # them unique across the two batches (delivered is keyed by value).
    first = [(k, b"before|" + v) for k, v in keyed_records(3000, seed=1)]
    delivered = confluent_produce(gb.bootstrap, topic, first)
    assert len(delivered) == len(first)
    members = [Member(client, gb.bootstrap, group, topic, tmp_path, f"m{i}") for i in range(3)]
    try:
        def balanced():
            a = [m.assignment() for m in members]
            return all(x is not None and len(x) == 2 for x in a) and sorted(sum(a, [])) == list(range(6))

        wait_until(balanced, 60, interval=0.2, what="3 members owning 2 partitions each")
        victim, survivors = members[0], members[1:]
        lost = victim.assignment()
        victim.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        second = [(k, b"after|" + v) for k, v in keyed_records(3000, seed=2)]
        delivered.update(confluent_produce(gb.bootstrap, topic, second))
        assert len(delivered) == len(first) + len(second)

        def taken_over():
            a = [m.assignment() for m in survivors]
            return all(x for x in a) and sorted(sum(a, [])) == list(range(6))

        limit_s = SESSION_TIMEOUT_MS / 1000 + 10
        wait_until(taken_over, limit_s, interval=0.1, what=f"survivors owning all 6 partitions (had {lost} lost)")
        takeover_s = time.monotonic() - killed_at
        print(f"\n{client}: survivors own all partitions {takeover_s:.1f}s after SIGKILL "
              f"(session.timeout.ms={SESSION_TIMEOUT_MS})")

        wanted = set(delivered.values())

        def all_consumed():
            seen = set()
            for m in members:
                seen.update(m.records())
            return wanted <= seen

        wait_until(all_consumed, 60, interval=0.2, what="every produced record consumed")
        counts = Counter(r for m in members for r in m.records())
        duplicates = sum(c - 1 for c in counts.values() if c > 1)
        print(f"{client}: {len(wanted)} records, {duplicates} consumed more than once")
        assert set(counts) >= wanted
    except AssertionError:
        for i, m in enumerate(members):
            sys.stderr.write(f"\n--- member {i}: {m.lines()[-5:]}\n{m.log_text()}\n")
        raise
    finally:
        for m in members:
            m.stop()


def _consumer(bootstrap, group, **conf):
    c = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": 500,
    }
    c.update(conf)
    return Consumer(c)


def _first_offset(bootstrap, group, topic, timeout=30):
    """The offset of the first record a fresh member of `group` gets."""
    c = _consumer(bootstrap, group)
    c.subscribe([topic])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                return m.offset()
        raise AssertionError(f"no record for group {group} within {timeout}s")
    finally:
        c.close()


def _consume_and_commit(bootstrap, group, topic, n, timeout=30):
    """Consumes n records and commits the offset after the last one."""
    c = _consumer(bootstrap, group)
    c.subscribe([topic])
    try:
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got.append(m)
        assert len(got) == n
        last = got[-1]
        c.commit(offsets=[TopicPartition(topic, 0, last.offset() + 1)], asynchronous=False)
        return last.offset() + 1
    finally:
        c.close()


def test_committed_offset_survives_close_and_broker_restarts(broker_factory):
    b = broker_factory(sets=GROUP_SETS)
    topic = unique_topic("resume")
    group = f"g-{topic}"
    create_topic(b.bootstrap, topic, 1)
    confluent_produce(b.bootstrap, topic, keyed_records(100))
    committed = _consume_and_commit(b.bootstrap, group, topic, 40)
    assert committed == 40
    assert _first_offset(b.bootstrap, group, topic) == 40

    b.stop(signal.SIGTERM)
    b.start()
    assert _first_offset(b.bootstrap, group, topic) == 40

    # One more commit, then a crash: the acknowledged commit must survive it.
    c = _consumer(b.bootstrap, group)
    c.commit(offsets=[TopicPartition(topic, 0, 60)], asynchronous=False)
    c.close()
    b.kill9()
    b.start()
    assert _first_offset(b.bootstrap, group, topic) == 60
    c = _consumer(b.bootstrap, group)
    got = c.committed([TopicPartition(topic, 0)], timeout=10)
    c.close()
    assert got[0].offset == 60


def _poll_all(consumers, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for c in consumers:
            c.poll(0.05)


def test_cooperative_sticky_revokes_only_what_moves(gb):
    topic = unique_topic("coop")
    group = f"g-{topic}"
    create_topic(gb.bootstrap, topic, 6)
    events = {"a": [], "b": []}

    def callbacks(name):
        return {
            "on_assign": lambda c, parts: events[name].append(("assign", sorted(p.partition for p in parts))),
            "on_revoke": lambda c, parts: events[name].append(("revoke", sorted(p.partition for p in parts))),
        }

    a = _consumer(gb.bootstrap, group, **{"partition.assignment.strategy": "cooperative-sticky"})
    b = _consumer(gb.bootstrap, group, **{"partition.assignment.strategy": "cooperative-sticky"})
    try:
        a.subscribe([topic], **callbacks("a"))
        wait_until(lambda: (a.poll(0.1), len(a.assignment()) == 6)[1], 30, interval=0, what="a owns all 6")
        b.subscribe([topic], **callbacks("b"))

        def split():
            for c in (a, b):
                c.poll(0.05)
            return len(a.assignment()) == 3 and len(b.assignment()) == 3

        wait_until(split, 30, interval=0, what="a and b own 3 partitions each")
        revoked = [p for kind, p in events["a"] if kind == "revoke"]
        # Eager protocols revoke everything (6); cooperative revokes only the 3 that move.
        assert revoked and all(len(r) <= 3 for r in revoked), events["a"]
        assert sorted(p.partition for p in a.assignment() + b.assignment()) == list(range(6))
    finally:
        a.close()
        b.close()


def test_static_member_restart_within_session_timeout_causes_no_rebalance(gb):
    topic = unique_topic("static")
    group = f"g-{topic}"
    create_topic(gb.bootstrap, topic, 4)
    events = []
    conf = {"session.timeout.ms": 10000}
    a = _consumer(gb.bootstrap, group, **{"group.instance.id": "static-a"}, **conf)
    b = _consumer(gb.bootstrap, group, **{"group.instance.id": "static-b"}, **conf)
    b.subscribe([topic], on_assign=lambda c, p: events.append("assign"), on_revoke=lambda c, p: events.append("revoke"))
    a.subscribe([topic])

    def split():
        for c in (a, b):
            c.poll(0.05)
        return len(a.assignment()) == 2 and len(b.assignment()) == 2

    wait_until(split, 30, interval=0, what="a and b own 2 partitions each")
    a_parts = sorted(p.partition for p in a.assignment())
    _poll_all([a, b], 2.0)  # let any trailing rebalance settle
    before = list(events)
    # A static member's close does not leave the group (KIP-345): restart it.
    a.close()
    a = _consumer(gb.bootstrap, group, **{"group.instance.id": "static-a"}, **conf)
    a.subscribe([topic])
    try:
        wait_until(lambda: (a.poll(0.1), b.poll(0.05), len(a.assignment()) == 2)[2], 30, interval=0,
                   what="restarted static member gets its partitions back")
        assert sorted(p.partition for p in a.assignment()) == a_parts
        _poll_all([a, b], 3.0)
        assert events == before, f"b saw a rebalance: {events[len(before):]}"
        admin = AdminClient({"bootstrap.servers": gb.bootstrap})
        desc = admin.describe_consumer_groups([group])[group].result(10)
        assert desc.state.name == "STABLE"
        assert sorted(m.group_instance_id for m in desc.members) == ["static-a", "static-b"]
    finally:
        a.close()
        b.close()


def test_admin_client_sees_the_committed_state(gb):
    topic = unique_topic("admin")
    group = f"g-{topic}"
    create_topic(gb.bootstrap, topic, 3)
    confluent_produce(gb.bootstrap, topic, keyed_records(30))
    admin = AdminClient({"bootstrap.servers": gb.bootstrap})
    c = _consumer(gb.bootstrap, group)
    c.subscribe([topic])
    try:
        wait_until(lambda: (c.poll(0.1), len(c.assignment()) == 3)[1], 30, interval=0, what="assignment")
        offsets = [TopicPartition(topic, p, 5 + p) for p in range(3)]
        c.commit(offsets=offsets, asynchronous=False)

        listed = admin.list_consumer_groups().result(10)
        mine = [g for g in listed.valid if g.group_id == group]
        assert len(mine) == 1 and mine[0].state.name == "STABLE"

        desc = admin.describe_consumer_groups([group])[group].result(10)
        assert desc.state.name == "STABLE" and len(desc.members) == 1
        assert desc.partition_assignor == "range"
        assigned = sorted(tp.partition for tp in desc.members[0].assignment.topic_partitions)
        assert assigned == [0, 1, 2]

        from confluent_kafka import ConsumerGroupTopicPartitions
        got = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
        assert sorted((tp.partition, tp.offset) for tp in got.topic_partitions) == [(0, 5), (1, 6), (2, 7)]

        # An active group cannot be deleted.
        with pytest.raises(KafkaException) as err:
            admin.delete_consumer_groups([group])[group].result(10)
        assert "NON_EMPTY_GROUP" in str(err.value)
    finally:
        c.close()
    wait_until(lambda: admin.describe_consumer_groups([group])[group].result(10).state.name == "EMPTY", 10,
               what="group empty after close")
    admin.delete_consumer_groups([group])[group].result(10)
    listed = admin.list_consumer_groups().result(10)
    assert group not in [g.group_id for g in listed.valid]
    with pytest.raises(KafkaException) as err:
        admin.delete_consumer_groups([group])[group].result(10)
    assert "GROUP_ID_NOT_FOUND" in str(err.value)


# --- Burrow --------------------------------------------------------------------------


def _http_json(url, timeout=2.0):
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _commit_simple(bootstrap, group, topic, offsets):
    """Commits as a client outside group management (generation -1)."""
    c = _consumer(bootstrap, group)
    c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    c.close()


BURROW_TOML = """
[general]
pidfile="{dir}/burrow.pid"
[logging]
level="info"
[zookeeper]
servers=["{zk}"]
timeout=6
root-path="/burrow"
[client-profile.shardlog]
client-id="burrow-test"
kafka-version="2.0.0"
[cluster.shardlog]
class-name="kafka"
servers=["{bootstrap}"]
client-profile="shardlog"
topic-refresh=1
offset-refresh=1
[consumer.shardlog]
class-name="kafka"
cluster="shardlog"
servers=["{bootstrap}"]
client-profile="shardlog"
start-latest=false
[httpserver.default]
address="127.0.0.1:{http_port}"
[storage.default]
class-name="inmemory"
workers=2
intervals=10
min-distance=1
"""


def test_burrow_reports_lag_from_consumer_offsets(gb, tmp_path):
    """Burrow (Debian's 1.2) reads __consumer_offsets with its own Kafka
    client and decodes our records; its lag must be produced - committed."""
    import shutil
    from conftest import free_port
    from fake_zookeeper import FakeZooKeeper

    burrow = shutil.which("Burrow") or shutil.which("burrow")
    assert burrow, "Burrow is not installed (scripts/test.sh installs the Debian package burrow)"
    topic = unique_topic("burrow")
    group = f"g-{topic}"
    create_topic(gb.bootstrap, topic, 2)
    delivered = confluent_produce(gb.bootstrap, topic, keyed_records(200))
    end = Counter(p for p, _ in delivered.values())
    assert min(end[0], end[1]) > 30, end
    _commit_simple(gb.bootstrap, group, topic, {0: 10, 1: 3})

    zk = FakeZooKeeper()
    http_port = free_port()
    (tmp_path / "burrow.toml").write_text(BURROW_TOML.format(
        dir=tmp_path, zk=zk.address, bootstrap=gb.bootstrap, http_port=http_port))
    log = open(tmp_path / "burrow.log", "wb")
    proc = subprocess.Popen([burrow, "--config-dir", str(tmp_path)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=str(tmp_path))
    base = f"http://127.0.0.1:{http_port}/v3/kafka/shardlog"
    try:
        def broker_offsets_seen():
            t = _http_json(f"{base}/topic/{topic}")
            return t is not None and t.get("offsets") == [end[0], end[1]]

        wait_until(broker_offsets_seen, 30, interval=0.3, what="Burrow sees the topic's log end offsets")
        # Committed after Burrow knows the topic, so its storage keeps it.
        committed = {0: 20, 1: 5}
        _commit_simple(gb.bootstrap, group, topic, committed)
        expected = {p: end[p] - committed[p] for p in (0, 1)}

        def lag():
            r = _http_json(f"{base}/consumer/{group}/lag")
            if not r or r.get("error"):
                return None
            parts = {p["partition"]: p["current_lag"] for p in r["status"].get("partitions") or []}
            return (r["status"]["totallag"], parts) if parts == expected else None

        total, parts = wait_until(lag, 30, interval=0.3, what=f"Burrow lag {expected}")
        assert total == sum(expected.values())
        print(f"\nBurrow: lag {parts}, total {total} (produced {dict(end)}, committed {committed})")
        decode_failures = [l for l in (tmp_path / "burrow.log").read_text(errors="replace").splitlines()
                           if "failed to decode" in l and group in l]
        assert not decode_failures, decode_failures[:3]
    except AssertionError:
        sys.stderr.write((tmp_path / "burrow.log").read_text(errors="replace")[-6000:])
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        zk.stop()


def test_offsets_of_empty_groups_expire_and_stay_expired_after_restart(broker_factory):
    """offsets.retention.minutes (Kafka's minimum unit: one minute): an empty
    group's offsets expire, tombstones are written, and a restart does not
    bring them back."""
    b = broker_factory(sets={**GROUP_SETS, "offsets.retention.minutes": 1,
                             "offsets.retention.check.interval.ms": 1000})
    topic = unique_topic("expire")
    create_topic(b.bootstrap, topic, 1)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    from confluent_kafka import ConsumerGroupTopicPartitions

    simple, managed = f"simple-{topic}", f"managed-{topic}"
    _commit_simple(b.bootstrap, simple, topic, {0: 5})
    c = _consumer(b.bootstrap, managed)
    c.subscribe([topic])
    wait_until(lambda: (c.poll(0.1), len(c.assignment()) == 1)[1], 30, interval=0, what="assignment")
    c.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)
    c.close()  # leaves: the group is Empty from now on

    def offsets(group):
        got = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
        return sorted((tp.partition, tp.offset) for tp in got.topic_partitions or [])

    assert offsets(simple) == [(0, 5)] and offsets(managed) == [(0, 7)]
    started = time.monotonic()

    def expired():
        listed = [g.group_id for g in admin.list_consumer_groups().result(10).valid]
        return simple not in listed and managed not in listed and not offsets(simple) and not offsets(managed)

    wait_until(expired, 60 + 20, interval=1.0, what="offsets expired and groups removed")
    assert time.monotonic() - started >= 50, "expired before offsets.retention.minutes passed"
    b.stop(signal.SIGTERM)
    b.start()
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    assert not offsets(simple) and not offsets(managed)
    assert managed not in [g.group_id for g in admin.list_consumer_groups().result(10).valid]


def test_deleting_a_topic_deletes_its_committed_offsets(gb):
    """As Kafka (KAFKA-2000): a re-created topic does not inherit old positions."""
    topic = unique_topic("deltopic")
    group = f"g-{topic}"
    admin = create_topic(gb.bootstrap, topic, 2)
    _commit_simple(gb.bootstrap, group, topic, {0: 4, 1: 9})
    from confluent_kafka import ConsumerGroupTopicPartitions

    def offsets():
        got = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
        return sorted((tp.partition, tp.offset) for tp in got.topic_partitions or [])

    assert offsets() == [(0, 4), (1, 9)]
    admin.delete_topics([topic], operation_timeout=30)[topic].result(30)
    wait_until(lambda: offsets() == [], 10, interval=0.2, what="offsets of the deleted topic gone")
    create_topic(gb.bootstrap, topic, 2)
    assert offsets() == []
