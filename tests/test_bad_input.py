"""Malformed and hostile input over raw sockets.

One broker serves the whole module (started with small socket.request.max.bytes
and message.max.bytes). After every bad input: the broker process is alive, it
logged something about it (loosely: its log grew), an already-open raw
connection and a fresh one still get Metadata answers, and at the end real
clients still produce and consume.
"""

import socket
import struct
import time

import pytest
from confluent_kafka.admin import AdminClient

import kafka_raw as kr
from clients import confluent_consume_all, confluent_produce
from conftest import create_topic, unique_topic

SOCKET_REQUEST_MAX = 1024 * 1024
MESSAGE_MAX = 100_000
TOPIC = "raw-topic"


@pytest.fixture(scope="module")
def b(module_broker_factory):
    broker = module_broker_factory(sets={
        "socket.request.max.bytes": SOCKET_REQUEST_MAX,
        "message.max.bytes": MESSAGE_MAX,
        "auto.create.topics.enable": "false",
    })
    create_topic(broker.bootstrap, TOPIC, 2)
    return broker


@pytest.fixture(scope="module")
def bystander(b):
    """A raw connection opened before any bad input, kept for the whole module."""
    c = kr.Conn(b.bootstrap)
    assert c.metadata([TOPIC])["topics"][TOPIC]["error_code"] == 0
    yield c
    c.close()


def high_watermark(b, partition=0):
    _, marks = confluent_consume_all(b.bootstrap, TOPIC, [partition], timeout=30)
    return marks[partition][1]


def assert_still_serving(b, bystander, log_before=None, what="bad input"):
    assert b.alive(), f"broker died after {what} (exit code {b.proc.returncode})"
    if log_before is not None:
        assert b.wait_log_growth(log_before, timeout=5), f"broker logged nothing about {what}"
    md = bystander.metadata([TOPIC])
    assert md["topics"][TOPIC]["error_code"] == 0 and len(md["topics"][TOPIC]["partitions"]) == 2
    with kr.Conn(b.bootstrap) as fresh:
        md = fresh.metadata(None)
        assert len(md["brokers"]) == 1 and TOPIC in md["topics"]
    assert b.alive()


def response_or_close(sock, corr, timeout=10.0):
    """('closed', None) if the broker drops the connection, else ('response', Reader)
    for a response carrying our correlation id."""
    try:
        data = kr.recv_frame(sock, timeout)
    except kr.ConnectionClosed:
        return "closed", None
    r = kr.Reader(data)
    got = r.int32()
    assert got == corr, f"response correlation id {got}, sent {corr}"
    return "response", r


# --- the valid baseline (checks kafka_raw itself) --------------------------------------------


def test_api_versions_v0_lists_supported_apis(b, bystander):
    with kr.Conn(b.bootstrap) as c:
        av = c.api_versions(0)
    assert av["error_code"] == 0
    for key in (kr.PRODUCE, kr.FETCH, kr.LIST_OFFSETS, kr.METADATA, kr.API_VERSIONS, kr.CREATE_TOPICS):
        assert key in av["api_keys"], f"api {key} missing from ApiVersions: {av['api_keys']}"
    assert av["api_keys"][kr.PRODUCE][0] <= 3 <= av["api_keys"][kr.PRODUCE][1]
    assert av["api_keys"][kr.METADATA][0] <= 1 <= av["api_keys"][kr.METADATA][1]


def test_handmade_record_batch_is_accepted_and_readable(b, bystander):
    before = high_watermark(b)
    recs = [(f"rk{i}".encode(), f"raw-value-{i}".encode()) for i in range(5)]
    with kr.Conn(b.bootstrap) as c:
        res = c.produce(TOPIC, 0, kr.record_batch(recs))
    p = res["partitions"][(TOPIC, 0)]
    assert p["error_code"] == 0, p
    assert p["base_offset"] == before
    read, marks = confluent_consume_all(b.bootstrap, TOPIC, [0], timeout=30)
    tail = [(k, v) for off, k, v, _ in read[0] if off >= before]
    assert tail == recs
    assert_still_serving(b, bystander)


# --- broken framing --------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",  # size field reads as ~1.2 GB
    struct.pack(">i", 12) + b"\xde\xad\xbe\xef" * 3,  # plausible size, nonsense header (api key -8531)
    struct.pack(">i", 6) + b"\x00\x03\x00",  # frame too short to hold a request header
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS ClientHello
], ids=["http", "nonsense-header", "short-header", "tls-hello"])
def test_garbage_bytes_close_the_connection(b, bystander, payload):
    log0 = b.log_size()
    with kr.Conn(b.bootstrap) as c:
        c.send_raw(payload)
        assert kr.wait_closed(c.sock, timeout=10), "broker kept a connection open after garbage"
    assert_still_serving(b, bystander, log0, "garbage bytes")


@pytest.mark.parametrize("size", [-1, -2147483648, 0])
def test_negative_or_zero_length_closes_the_connection(b, bystander, size):
    log0 = b.log_size()
    with kr.Conn(b.bootstrap) as c:
        c.send_raw(struct.pack(">i", size) + b"\x00" * 16)
        assert kr.wait_closed(c.sock, timeout=10), f"broker kept the connection after length {size}"
    assert_still_serving(b, bystander, log0, f"frame length {size}")


def test_length_above_socket_request_max_bytes_is_refused_without_reading_body(b, bystander):
    log0 = b.log_size()
    with kr.Conn(b.bootstrap) as c:
        hdr = kr.request_header_v1(kr.PRODUCE, 3, 1)
        c.send_raw(struct.pack(">i", SOCKET_REQUEST_MAX + 1) + hdr)
        # the body is never sent: the broker must close on the size alone
        t0 = time.monotonic()
        assert kr.wait_closed(c.sock, timeout=10), "oversized request not refused"
        assert time.monotonic() - t0 < 10
    assert_still_serving(b, bystander, log0, "oversized length")


def test_huge_length_does_not_allocate_or_hang(b, bystander):
    log0 = b.log_size()
    with kr.Conn(b.bootstrap) as c:
        c.send_raw(struct.pack(">i", 2**31 - 1))
        assert kr.wait_closed(c.sock, timeout=10)
    assert_still_serving(b, bystander, log0, "2 GiB length")


def test_forged_array_length_closes_the_connection_without_allocating(b, bystander):
    # Metadata v1 claiming 0x7fffffff topics in a 20-byte body: a decoder that
    # reserves what the length prefix claims asks for tens of GiB and aborts.
    log0 = b.log_size()
    with kr.Conn(b.bootstrap) as c:
        body = kr.int32(0x7FFFFFFF) + kr.string("a") * 3
        c.send_raw(kr.encode_request(kr.METADATA, 1, 79, body))
        kind, _ = response_or_close(c.sock, 79)
        assert kind == "closed"
    assert_still_serving(b, bystander, log0, "forged array length")


def test_truncated_frame_then_close(b, bystander):
    log0 = b.log_size()
    full = kr.encode_request(kr.METADATA, 1, 7, kr.int32(-1))
    for cut in (2, 5, len(full) - 1):
        with kr.Conn(b.bootstrap) as c:
            c.send_raw(struct.pack(">i", 100) + full[4:4 + 20] if cut == 5 else full[:cut])
            c.sock.shutdown(socket.SHUT_WR)
            # nothing to answer: the broker must just drop the connection
            assert kr.wait_closed(c.sock, timeout=10), f"no close after truncated frame (cut {cut})"
    assert_still_serving(b, bystander, log0, "truncated frames")


def test_truncated_request_body_gets_error_or_close(b, bystander):
    """A complete frame whose Produce body is cut short (the size field matches
    what is sent, the contents are incomplete)."""
    log0 = b.log_size()
    body = kr.encode_produce_v3(TOPIC, 0, kr.record_batch([(b"k", b"v")]))
    with kr.Conn(b.bootstrap) as c:
        c.send_raw(kr.frame(kr.request_header_v1(kr.PRODUCE, 3, 41) + body[:len(body) // 2]))
        kind, r = response_or_close(c.sock, 41)
        if kind == "response":
            # a response is fine only if it reports an error for our partition
            res = kr.decode_produce_v3(r)
            assert all(p["error_code"] != 0 for p in res["partitions"].values()), res
    assert_still_serving(b, bystander, log0, "truncated request body")


# --- unknown / unsupported APIs ------------------------------------------------------------------


def test_unknown_api_key_gets_error_or_close(b, bystander):
    log0 = b.log_size()
    with kr.Conn(b.bootstrap) as c:
        c.send_raw(kr.encode_request(999, 0, 77, b"\x00" * 8))
        kind, _ = response_or_close(c.sock, 77)
        assert kind in ("closed", "response")
    assert_still_serving(b, bystander, log0, "unknown API key 999")


def test_unsupported_metadata_version_gets_error_or_close(b, bystander):
    log0 = b.log_size()
    with kr.Conn(b.bootstrap) as c:
        c.send_raw(kr.encode_request(kr.METADATA, 99, 78, kr.int32(-1)))
        kind, r = response_or_close(c.sock, 78)
        assert kind in ("closed", "response")
    assert_still_serving(b, bystander, log0, "Metadata v99")


@pytest.mark.parametrize("flexible", [True, False], ids=["header-v2", "header-v1"])
def test_api_versions_unsupported_version_gets_v0_fallback_with_error_35(b, bystander, flexible):
    # Not a log-line check here: a client newer than the broker sends this on
    # every connection (KIP-511 negotiation), so it is normal traffic, not an error.
    # what a newer client would send: flexible header + v3-style body (client software name/version)
    body = kr.compact_string("raw-test") + kr.compact_string("1.0") + kr.uvarint(0) if flexible else b""
    with kr.Conn(b.bootstrap) as c:
        av = c.api_versions(99, body=body, flexible_header=flexible)
        assert av["error_code"] == kr.UNSUPPORTED_VERSION, av
        assert av["api_keys"], "fallback ApiVersions response must list the supported APIs"
        assert kr.API_VERSIONS in av["api_keys"] and av["api_keys"][kr.API_VERSIONS][0] == 0
        # the connection stays usable: the client retries with a supported version
        av0 = c.api_versions(0)
        assert av0["error_code"] == 0
    assert_still_serving(b, bystander)


# --- bad produce payloads -----------------------------------------------------------------------


def test_corrupted_crc_gets_corrupt_message_and_nothing_is_appended(b, bystander):
    before = high_watermark(b)
    log0 = b.log_size()
    batch = kr.record_batch([(b"k1", b"fine"), (b"k2", b"CORRUPT-ME-PLEASE"), (b"k3", b"fine too")])
    bad = kr.corrupt_batch(batch, b"CORRUPT-ME-PLEASE")
    assert bad != batch and len(bad) == len(batch)
    with kr.Conn(b.bootstrap) as c:
        res = c.produce(TOPIC, 0, bad)
        p = res["partitions"][(TOPIC, 0)]
        assert p["error_code"] == kr.CORRUPT_MESSAGE, f"expected CORRUPT_MESSAGE (2), got {p}"
        # same connection still works for a valid batch
        ok = c.produce(TOPIC, 0, batch)["partitions"][(TOPIC, 0)]
        assert ok["error_code"] == 0 and ok["base_offset"] == before, ok
    assert high_watermark(b) == before + 3
    assert_still_serving(b, bystander, log0, "corrupt CRC")


def test_bad_magic_is_rejected(b, bystander):
    before = high_watermark(b)
    log0 = b.log_size()
    batch = bytearray(kr.record_batch([(b"k", b"magic")]))
    batch[16] = 7  # magic byte (not covered by the CRC)
    with kr.Conn(b.bootstrap) as c:
        kind, r = "response", None
        corr = c.next_corr()
        c.send_raw(kr.encode_request(kr.PRODUCE, 3, corr, kr.encode_produce_v3(TOPIC, 0, bytes(batch))))
        kind, r = response_or_close(c.sock, corr)
        if kind == "response":
            p = kr.decode_produce_v3(r)["partitions"][(TOPIC, 0)]
            assert p["error_code"] != 0, p
    assert high_watermark(b) == before
    assert_still_serving(b, bystander, log0, "bad magic")


def test_batch_above_message_max_bytes_gets_message_too_large(b, bystander):
    before = high_watermark(b)
    log0 = b.log_size()
    big = kr.record_batch([(b"big", bytes(range(256)) * (2 * MESSAGE_MAX // 256))])
    assert MESSAGE_MAX < len(big) < SOCKET_REQUEST_MAX
    with kr.Conn(b.bootstrap) as c:
        p = c.produce(TOPIC, 0, big)["partitions"][(TOPIC, 0)]
        assert p["error_code"] == kr.MESSAGE_TOO_LARGE, f"expected MESSAGE_TOO_LARGE (10), got {p}"
    assert high_watermark(b) == before
    assert_still_serving(b, bystander, log0, "oversized batch")


@pytest.mark.parametrize("name", ["bad name!", "..", "x" * 250])
def test_produce_to_invalid_topic_name_is_refused(b, bystander, name):
    log0 = b.log_size()
    with kr.Conn(b.bootstrap) as c:
        corr = c.next_corr()
        c.send_raw(kr.encode_request(kr.PRODUCE, 3, corr, kr.encode_produce_v3(name, 0, kr.record_batch([(b"k", b"v")]))))
        kind, r = response_or_close(c.sock, corr)
        if kind == "response":
            res = kr.decode_produce_v3(r)
            p = res["partitions"][(name, 0)]
            # INVALID_TOPIC_EXCEPTION; Apache Kafka itself answers UNKNOWN_TOPIC_OR_PARTITION here
            assert p["error_code"] in (kr.INVALID_TOPIC_EXCEPTION, kr.UNKNOWN_TOPIC_OR_PARTITION), p
    with kr.Conn(b.bootstrap) as c:
        assert name not in c.metadata(None)["topics"]
    assert_still_serving(b, bystander, log0, f"produce to {name[:20]!r}")


def test_produce_to_unknown_partition_is_refused(b, bystander):
    log0 = b.log_size()
    with kr.Conn(b.bootstrap) as c:
        p = c.produce(TOPIC, 99, kr.record_batch([(b"k", b"v")]))["partitions"][(TOPIC, 99)]
        assert p["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION, p
    assert_still_serving(b, bystander, log0, "produce to partition 99")


# --- connection churn and the end state ----------------------------------------------------------


def test_many_connections_opened_and_dropped(b, bystander):
    socks = []
    try:
        for i in range(200):
            s = kr.connect("127.0.0.1", b.port, timeout=5)
            if i % 2:
                s.sendall(kr.encode_request(kr.API_VERSIONS, 0, i)[:7])  # half a request
            socks.append(s)
    finally:
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            s.close()
    assert_still_serving(b, bystander)


def test_broker_alive_and_real_clients_work_after_all_bad_input(b, bystander):
    assert b.alive()
    topic = unique_topic("after-bad")
    create_topic(b.bootstrap, topic, 2)
    records = [(f"k{i % 7}".encode(), f"after-{i}".encode()) for i in range(2000)]
    delivered = confluent_produce(b.bootstrap, topic, records, compression="lz4", timeout=60)
    read, _ = confluent_consume_all(b.bootstrap, topic, range(2), timeout=60)
    got = {(p, off): v for p, recs in read.items() for off, _k, v, _ts in recs}
    assert all(got.get(loc) == v for v, loc in delivered.items())
    assert len(AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10).brokers) == 1
    assert_still_serving(b, bystander)
