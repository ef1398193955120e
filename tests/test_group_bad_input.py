"""Bad group requests over raw sockets get Kafka's error codes, and the group
they aimed at stays healthy (its member keeps heartbeating and committing).

The raw member speaks JoinGroup v5, SyncGroup v3, Heartbeat v3 and
OffsetCommit v7 (all non-flexible), encoded here by hand from Kafka's
message schemas so the broker is checked against the protocol rather than
against a client library.
"""

import pytest

import kafka_raw as kr
from kafka_raw import array, int16, int32, int64, nbytes, string
from conftest import create_topic, unique_topic

JOIN_GROUP, SYNC_GROUP, HEARTBEAT, OFFSET_COMMIT = 11, 14, 12, 8

NONE = 0
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
INVALID_REQUEST = 42
MEMBER_ID_REQUIRED = 79
FENCED_INSTANCE_ID = 82

SESSION_MS = 10_000
MEMBER_METADATA_MAX = 4096


@pytest.fixture(scope="module")
def b(module_broker_factory):
    return module_broker_factory(sets={
        "group.initial.rebalance.delay.ms": 100,
        "group.min.session.timeout.ms": 1000,
        "group.member.metadata.max.bytes": MEMBER_METADATA_MAX,
    })


def rbytes(r):
    n = r.int32()
    return b"" if n < 0 else r._take(n)


def join(conn, group, member_id="", protocol_type="consumer", protocols=(("range", b"\x00\x01"),),
         session_ms=SESSION_MS, instance=None):
    body = (string(group) + int32(session_ms) + int32(30_000) + string(member_id) + string(instance)
            + string(protocol_type) + array(list(protocols), lambda p: string(p[0]) + nbytes(p[1])))
    r = conn.request(JOIN_GROUP, 5, body)
    r.int32()  # throttle
    resp = {"error": r.int16(), "generation": r.int32(), "protocol": r.string(), "leader": r.string(),
            "member_id": r.string()}
    resp["members"] = r.array(lambda r: (r.string(), r.string(), rbytes(r)))
    return resp


def join_member(conn, group, **kw):
    """KIP-394: first join gets MEMBER_ID_REQUIRED and an id, the second joins."""
    first = join(conn, group, **kw)
    assert first["error"] == MEMBER_ID_REQUIRED
    return join(conn, group, member_id=first["member_id"], **kw)


def sync(conn, group, generation, member_id, assignments=(), instance=None):
    body = (string(group) + int32(generation) + string(member_id) + string(instance)
            + array(list(assignments), lambda a: string(a[0]) + nbytes(a[1])))
    r = conn.request(SYNC_GROUP, 3, body)
    r.int32()
    return {"error": r.int16(), "assignment": rbytes(r)}


def heartbeat(conn, group, generation, member_id, instance=None):
    r = conn.request(HEARTBEAT, 3, string(group) + int32(generation) + string(member_id) + string(instance))
    r.int32()
    return r.int16()


def commit(conn, group, generation, member_id, topic, partition, offset):
    part = int32(partition) + int64(offset) + int32(-1) + string("")
    body = (string(group) + int32(generation) + string(member_id) + string(None)
            + array([topic], lambda t: string(t) + array([part], lambda p: p)))
    r = conn.request(OFFSET_COMMIT, 7, body)
    r.int32()
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.int32(), r.int16()))))
    return topics[0][1][0][1]


@pytest.fixture
def stable_group(b):
    """A group whose one raw member (the leader) completed join and sync."""
    topic = unique_topic("rawgrp")
    create_topic(b.bootstrap, topic, 1)
    group = f"g-{topic}"
    conn = kr.Conn(b.bootstrap, timeout=20)
    j = join_member(conn, group)
    assert j["error"] == NONE and j["generation"] >= 1 and j["leader"] == j["member_id"]
    s = sync(conn, group, j["generation"], j["member_id"], [(j["member_id"], b"assignment-1")])
    assert s == {"error": NONE, "assignment": b"assignment-1"}
    yield {"conn": conn, "group": group, "topic": topic, "member": j["member_id"], "gen": j["generation"]}
    conn.close()


def assert_healthy(b, g):
    assert b.alive()
    assert heartbeat(g["conn"], g["group"], g["gen"], g["member"]) == NONE
    assert commit(g["conn"], g["group"], g["gen"], g["member"], g["topic"], 0, 7) == NONE


def test_join_with_another_protocol_type_is_inconsistent(b, stable_group):
    g = stable_group
    with kr.Conn(b.bootstrap) as other:
        resp = join(other, g["group"], protocol_type="connect")
        assert resp["error"] == INCONSISTENT_GROUP_PROTOCOL
        resp = join(other, g["group"], protocols=[("roundrobin", b"")])
        assert resp["error"] == INCONSISTENT_GROUP_PROTOCOL
    assert_healthy(b, g)


def test_oversize_member_metadata_is_refused(b, stable_group):
    g = stable_group
    log_before = b.log_size()
    with kr.Conn(b.bootstrap) as other:
        resp = join(other, g["group"], protocols=[("range", b"x" * (MEMBER_METADATA_MAX + 1))])
        assert resp["error"] == INVALID_REQUEST
    assert b.wait_log_growth(log_before), "the broker logged nothing about the refused join"
    assert_healthy(b, g)


def test_session_timeout_outside_the_broker_bounds_is_refused(b, stable_group):
    g = stable_group
    with kr.Conn(b.bootstrap) as other:
        assert join(other, g["group"], session_ms=10)["error"] == INVALID_SESSION_TIMEOUT
    assert_healthy(b, g)


def test_commit_with_a_stale_generation_is_illegal(b, stable_group):
    g = stable_group
    assert commit(g["conn"], g["group"], g["gen"] - 1, g["member"], g["topic"], 0, 3) == ILLEGAL_GENERATION
    assert commit(g["conn"], g["group"], g["gen"], "not-a-member", g["topic"], 0, 3) == UNKNOWN_MEMBER_ID
    assert_healthy(b, g)


def test_sync_and_heartbeat_from_a_non_member_are_unknown(b, stable_group):
    g = stable_group
    with kr.Conn(b.bootstrap) as other:
        assert sync(other, g["group"], g["gen"], "nobody")["error"] == UNKNOWN_MEMBER_ID
        assert heartbeat(other, g["group"], g["gen"], "nobody") == UNKNOWN_MEMBER_ID
        assert sync(other, "no-such-group", 1, "nobody")["error"] == UNKNOWN_MEMBER_ID
    # The real member's stable assignment is untouched.
    assert sync(g["conn"], g["group"], g["gen"], g["member"]) == {"error": NONE, "assignment": b"assignment-1"}
    assert_healthy(b, g)


def test_static_member_rejoin_keeps_generation_and_fences_the_old_id(b):
    topic = unique_topic("rawstatic")
    create_topic(b.bootstrap, topic, 1)
    group = f"g-{topic}"
    with kr.Conn(b.bootstrap, timeout=20) as conn:
        j = join(conn, group, instance="static-1")
        assert j["error"] == NONE, "a static member needs no MEMBER_ID_REQUIRED round"
        assert sync(conn, group, j["generation"], j["member_id"], [(j["member_id"], b"A")],
                    instance="static-1")["error"] == NONE
        again = join(conn, group, instance="static-1")
        assert again["error"] == NONE
        assert again["generation"] == j["generation"], "a static rejoin in Stable must not rebalance"
        assert again["member_id"] != j["member_id"]
        assert heartbeat(conn, group, j["generation"], j["member_id"], instance="static-1") == FENCED_INSTANCE_ID
        assert heartbeat(conn, group, j["generation"], again["member_id"], instance="static-1") == NONE
        assert sync(conn, group, j["generation"], again["member_id"], instance="static-1") == {
            "error": NONE, "assignment": b"A"}


def test_clients_cannot_append_to_consumer_offsets(b, stable_group):
    with kr.Conn(b.bootstrap) as c:
        res = c.produce("__consumer_offsets", 0, kr.record_batch([(b"forged-key", b"forged-value")]))
    assert res["partitions"][("__consumer_offsets", 0)]["error_code"] == kr.INVALID_TOPIC_EXCEPTION
    assert_healthy(b, stable_group)


def test_list_offsets_v0_answers_the_log_end_offset(b):
    """Kafka 4.0 dropped ListOffsets v0; it is served for Burrow 1.2."""
    topic = unique_topic("lov0")
    create_topic(b.bootstrap, topic, 1)
    with kr.Conn(b.bootstrap) as c:
        res = c.produce(topic, 0, kr.record_batch([(b"k", b"v%d" % i) for i in range(3)]))
        assert res["partitions"][(topic, 0)]["error_code"] == NONE

        def list_v0(ts):
            part = int32(0) + int64(ts) + int32(1)
            body = int32(-1) + array([topic], lambda t: string(t) + array([part], lambda p: p))
            r = c.request(kr.LIST_OFFSETS, 0, body)
            topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.int32(), r.int16(), r.array(
                lambda r: r.int64())))))
            return topics[0][1][0]

        assert list_v0(-1) == (0, NONE, [3])
        assert list_v0(-2) == (0, NONE, [0])
