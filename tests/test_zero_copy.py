"""Catch-up reads served with sendfile(2) from the segment files.

With `log.cache.bytes=0` every fetch misses the tail cache, so sealed
segments (and whole blocks of the active one) go out as zero-copy file
ranges. Checked here: three third-party clients read everything back intact;
the raw batches are byte-identical to the tail-cache reads of the same
offsets; a client that stops reading times out its send without blocking
other consumers.
"""

import random
import socket
import struct
import time

from clients import confluent_consume_all, confluent_produce, keyed_records, verify_keyed
from conftest import create_topic, unique_topic
import kafka_raw
from test_kcat import kcat

FETCH = 1
RECORDS = 20_000
PARTITIONS = 2
ZERO_COPY_SETS = {"log.cache.bytes": 0, "log.segment.bytes": 1 << 20}


def _fetch_v11_body(topic, partition, offset, partition_max_bytes, max_wait_ms=0):
    k = kafka_raw
    partitions = k.array(
        [(partition, offset, partition_max_bytes)],
        lambda p: k.int32(p[0]) + k.int32(-1) + k.int64(p[1]) + k.int64(-1) + k.int32(p[2]),
    )
    return (
        k.int32(-1)  # replica id
        + k.int32(max_wait_ms)
        + k.int32(1)  # min bytes
        + k.int32(64 << 20)  # max bytes
        + k.int8(0)  # read uncommitted
        + k.int32(0)  # session id
        + k.int32(-1)  # session epoch: no session
        + k.array([topic], lambda t: k.string(t) + partitions)
        + k.array([], k.string)  # forgotten topics
        + k.string("")  # rack
    )


def raw_fetch_v11(conn, topic, partition, offset, partition_max_bytes):
    """One Fetch v11 of one partition: (error code, high watermark, records bytes)."""
    r = conn.request(FETCH, 11, _fetch_v11_body(topic, partition, offset, partition_max_bytes))
    r.int32()  # throttle
    assert r.int16() == 0
    r.int32()  # session
    assert r.int32() == 1
    assert r.string() == topic
    assert r.int32() == 1
    assert r.int32() == partition
    error = r.int16()
    high_watermark = r.int64()
    r.int64()  # last stable offset
    r.int64()  # log start offset
    aborted = r.int32()
    for _ in range(max(aborted, 0)):
        r.int64()
        r.int64()
    r.int32()  # preferred read replica
    size = r.int32()
    records = r._take(size) if size > 0 else b""
    assert r.remaining() == 0
    return error, high_watermark, records


def split_batches(records: bytes):
    """[(base offset, last offset, whole batch bytes)]; a partial batch is an error."""
    out = []
    pos = 0
    while pos < len(records):
        base, length = struct.unpack_from(">qi", records, pos)
        end = pos + 12 + length
        assert end <= len(records), f"partial batch at {pos}"
        (last_delta,) = struct.unpack_from(">i", records, pos + 23)
        out.append((base, base + last_delta, records[pos:end]))
        pos = end
    return out


def read_all_batches(bootstrap, topic, partition, partition_max_bytes):
    batches = {}
    with kafka_raw.Conn(bootstrap, timeout=30) as conn:
        offset = 0
        while True:
            error, high_watermark, records = raw_fetch_v11(conn, topic, partition, offset, partition_max_bytes)
            assert error == 0, f"fetch at {offset}: error {error}"
            if offset >= high_watermark:
                return batches, high_watermark
            got = split_batches(records)
            assert got, f"no batch at {offset} below the high watermark {high_watermark}"
            assert got[0][0] <= offset <= got[0][1]
            for base, last, raw in got:
                batches[base] = raw
                offset = last + 1


def test_catch_up_reads_match_tail_reads_byte_for_byte(broker_factory):
    # First read from the tail cache, then (after a restart empties it) from
    # the files with zero-copy sends: every batch must be the same bytes.
    broker = broker_factory(sets={"log.segment.bytes": 1 << 20})
    topic = unique_topic("zc-bytes")
    create_topic(broker.bootstrap, topic, 1)
    rng = random.Random(3)
    records = [(None, b"%06d" % i + rng.randbytes(500)) for i in range(8000)]  # ~4 MB after lz4
    confluent_produce(broker.bootstrap, topic, records, partition=0, compression="lz4",
                      **{"batch.size": 16384})
    sizes = (1, 50_000, 1 << 20)
    tail = {m: read_all_batches(broker.bootstrap, topic, 0, m) for m in sizes}
    broker.restart()
    for max_bytes in sizes:
        disk, high = read_all_batches(broker.bootstrap, topic, 0, max_bytes)
        tail_batches, tail_high = tail[max_bytes]
        assert high == tail_high == 8000
        assert sorted(disk) == sorted(tail_batches)
        for base, raw in tail_batches.items():
            assert disk[base] == raw, f"batch {base} differs (max_bytes {max_bytes})"
    segments = sorted((broker.data_dir / f"{topic}-0").glob("*.log"))
    assert len(segments) > 1, "the records span sealed segments"


def test_three_clients_read_a_disk_backlog_through_zero_copy(broker_factory):
    broker = broker_factory(sets=ZERO_COPY_SETS)
    topic = unique_topic("zc-clients")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    records = keyed_records(RECORDS, seed=11)
    delivered = confluent_produce(broker.bootstrap, topic, records, **{"batch.size": 65536})
    broker.restart()  # nothing in memory: everything below comes from the files

    read, _ = confluent_consume_all(broker.bootstrap, topic, range(PARTITIONS))
    verify_keyed(read, delivered, RECORDS)

    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                             max_poll_records=20000, fetch_max_wait_ms=100, consumer_timeout_ms=1000)
    try:
        tps = [KTP(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        kp_read = {p: [] for p in range(PARTITIONS)}
        deadline = time.monotonic() + 120
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "timed out consuming with kafka-python"
            for tp, msgs in consumer.poll(timeout_ms=500).items():
                kp_read[tp.partition].extend((m.offset, m.key, m.value) for m in msgs)
    finally:
        consumer.close()
    verify_keyed(kp_read, delivered, RECORDS)

    out, _ = kcat("-b", broker.bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q",
                  "-f", "%o %s\n", timeout=120)
    lines = out.splitlines()
    expected = sorted((o, v) for v, (p, o) in delivered.items() if p == 0)
    assert [int(line.split(" ", 1)[0]) for line in lines] == [o for o, _ in expected]
    assert [line.split(" ", 1)[1].encode() for line in lines] == [v for _, v in expected]
    assert "zero-copy fetch answer failed" not in broker.log_text()


def test_a_client_that_stops_reading_times_out_without_blocking_others(broker_factory):
    # One big segment, so the stuck answer is far larger than socket buffers.
    broker = broker_factory(sets={"log.cache.bytes": 0, "num.io.threads": 1, "socket.send.timeout.ms": 1500},
                            shards=1)
    topic = unique_topic("zc-stuck")
    create_topic(broker.bootstrap, topic, 1)
    records = [(None, b"%08d" % i + b"z" * 4000) for i in range(12_000)]  # ~48 MB
    confluent_produce(broker.bootstrap, topic, records, partition=0, **{"batch.size": 1 << 20})
    broker.restart()

    # A client asks for 40 MB and never reads: the one I/O thread blocks in
    # sendfile until the socket send timeout fails it.
    host, port = broker.bootstrap.rsplit(":", 1)
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((host, int(port)))
    body = _fetch_v11_body(topic, 0, 0, 40 << 20)
    stuck.sendall(kafka_raw.encode_request(FETCH, 11, 1, body))
    try:
        started = time.monotonic()
        read, _ = confluent_consume_all(broker.bootstrap, topic, [0], timeout=60)
        assert len(read[0]) == len(records)
        assert time.monotonic() - started < 60
        deadline = time.monotonic() + 20
        while "zero-copy fetch answer failed" not in broker.log_text():
            assert time.monotonic() < deadline, "the stuck send never timed out"
            time.sleep(0.2)
        assert kafka_raw.wait_closed(stuck, timeout=20), "the stuck connection is closed"
    finally:
        stuck.close()
    assert broker.alive()
    with kafka_raw.Conn(broker.bootstrap) as conn:
        error, high, _ = raw_fetch_v11(conn, topic, 0, 0, 1 << 20)
        assert (error, high) == (0, len(records))
