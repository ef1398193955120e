"""Memory-safety stress (issue 9, part 1): the produce load that once aborted
the broker with `free(): double free detected in tcache 2`, widened.

For STRESS_SECONDS (default 20), all at once against one broker of 2 shards:
- a confluent-kafka producer: acks=all, linger.ms=5, 1 KiB values, written
  round-robin over 100 partitions (so every connection produces to partitions
  of both shards: cross-shard calls), pipelined (librdkafka keeps many
  requests in flight; `connection.max.inflight.requests` 5);
- a consumer reading the same partitions, closed and reopened every few
  seconds (fetches long-polling when their connection goes);
- raw connections that pipeline Produce requests over both shards and close
  mid-request: after a truncated frame, with an RST, or before reading any
  answer (handlers still running when their connection ends).

scripts/test.sh runs this file twice: with the release binary, and with a
build under AddressSanitizer (SHARDLOG_BIN pointing at it). The broker must
survive, log no sanitizer report or panic, keep every acknowledged record at
the offset it was acknowledged with, and shut down cleanly.
"""

import os
import random
import signal
import socket
import struct
import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

import kafka_raw
from clients import confluent_consume_all
from conftest import create_topic, wait_until

PARTITIONS = 100
STRESS_SECONDS = float(os.environ.get("STRESS_SECONDS", "20"))
# Bounds what the producer writes (and the test reads back): ~1 KiB each.
RECORDS_MAX = int(os.environ.get("STRESS_RECORDS_MAX", "400000"))
VALUE_BYTES = 1024
FATAL_LOG_MARKERS = ("AddressSanitizer", "double free", "panicked", "free():", "LeakSanitizer")


def sockets_held(pid):
    """Sockets the broker process holds open (its listeners included)."""
    fd_dir = f"/proc/{pid}/fd"
    held = 0
    for fd in os.listdir(fd_dir):
        try:
            held += os.readlink(f"{fd_dir}/{fd}").startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return held


def produce_load(bootstrap, topic, stop, acked, errors):
    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": 120_000,
    })

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked[msg.value()[:16]] = (msg.partition(), msg.offset())

    filler = b"x" * (VALUE_BYTES - 16)
    i = 0
    while not stop.is_set() and i < RECORDS_MAX:
        try:
            p.produce(topic, value=b"%016d" % i + filler, partition=i % PARTITIONS, on_delivery=on_delivery)
            i += 1
        except BufferError:
            p.poll(0.01)
        if i % 1000 == 0:
            p.poll(0)
    remaining = p.flush(120)
    if remaining:
        errors.append(f"{remaining} records not delivered within 120 s of the end")
    return i


def consume_load(bootstrap, topic, stop, counts):
    while not stop.is_set():
        c = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": "stress-assign-only",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 200,
        })
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        reopen_at = time.monotonic() + random.uniform(1.0, 4.0)
        while not stop.is_set() and time.monotonic() < reopen_at:
            for m in c.consume(num_messages=5000, timeout=0.2):
                if m.error() is None:
                    counts["consumed"] += 1
                elif m.error().code() != KafkaError._PARTITION_EOF:
                    counts["consume_errors"] += 1
        c.close()
        counts["consumer_sessions"] += 1


DESCRIBE_LOG_DIRS = 35


def churn_load(host, port, topic, stop, counts, seed):
    """Pipelined Produce requests on raw connections that end abruptly."""
    rng = random.Random(seed)
    batches = [kafka_raw.record_batch([(None, b"churn-%d-%d" % (b, r) * 20) for r in range(20)]) for b in range(4)]
    while not stop.is_set():
        try:
            s = socket.create_connection((host, port), timeout=5)
        except OSError:
            counts["churn_connect_errors"] += 1
            time.sleep(0.05)
            continue
        try:
            corr = 0
            for _ in range(rng.randrange(1, 12)):
                corr += 1
                partitions = rng.sample(range(PARTITIONS), rng.randrange(1, 6))
                body = (kafka_raw.string(None) + kafka_raw.int16(rng.choice([-1, 1])) + kafka_raw.int32(10_000)
                        + kafka_raw.array([(topic, partitions)], lambda t: kafka_raw.string(t[0]) + kafka_raw.array(
                            t[1], lambda p: kafka_raw.int32(p) + kafka_raw.nbytes(rng.choice(batches)))))
                s.sendall(kafka_raw.encode_request(kafka_raw.PRODUCE, 3, corr, body))
            if rng.random() < 0.2:  # DescribeLogDirs v1 (its statvfs is `unsafe`: run it under the sanitizer)
                corr += 1
                s.sendall(kafka_raw.encode_request(DESCRIBE_LOG_DIRS, 1, corr, kafka_raw.int32(-1)))
            how = rng.randrange(3)
            if how == 0:  # a truncated frame: the size promises more than comes
                s.sendall(struct.pack(">i", 5000) + b"\x00\x00\x00\x03" + b"\x00" * 100)
            elif how == 1:  # read some answers first
                s.settimeout(2)
                try:
                    s.recv(rng.randrange(1, 4096))
                except OSError:
                    pass
            # Close with an RST (SO_LINGER 0) or a FIN, answers unread.
            if rng.random() < 0.5:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            counts["churn_connections"] += 1
        except OSError:
            counts["churn_send_errors"] += 1
        finally:
            s.close()


def test_produce_load_with_consumers_and_connection_churn_keeps_the_broker_sound(broker_factory):
    broker = broker_factory(shards=2, sets={"connection.max.inflight.requests": 5})
    topic = "stress"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    stop = threading.Event()
    acked, errors = {}, []
    counts = {k: 0 for k in ("consumed", "consume_errors", "consumer_sessions", "churn_connections",
                             "churn_connect_errors", "churn_send_errors")}
    produced = []
    threads = [
        threading.Thread(target=lambda: produced.append(produce_load(broker.bootstrap, topic, stop, acked, errors))),
        threading.Thread(target=consume_load, args=(broker.bootstrap, topic, stop, counts)),
    ] + [threading.Thread(target=churn_load, args=(broker.host, broker.port, topic, stop, counts, seed))
         for seed in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + STRESS_SECONDS
    while time.monotonic() < deadline and broker.alive():
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=180)
        assert not t.is_alive(), "a load thread did not stop within 180 s"

    log = broker.run_log()
    fatal = [m for m in FATAL_LOG_MARKERS if m in log]
    assert broker.alive() and not fatal, (
        f"broker died or reported {fatal} under load (exit {broker.proc.poll()}):\n{log[-6000:]}")
    assert not errors, f"{len(errors)} delivery errors, first: {errors[:3]}"
    assert produced and len(acked) == produced[0] > 0, (produced, len(acked))
    assert counts["churn_connections"] > 0 and counts["consumer_sessions"] > 0, counts
    # Every client has gone: the broker ends their connections (a leak once
    # kept ~15% of the churned ones open until max.connections refused all).
    wait_until(lambda: sockets_held(broker.pid) < 20, 30, interval=0.5,
               what=f"the broker to close the connections of clients that left ({counts['churn_connections']} churned)")

    # Every acknowledged record is where its acknowledgement said.
    read, _ = confluent_consume_all(broker.bootstrap, topic, range(PARTITIONS), timeout=300)
    at = {(p, off): value[:16] for p, recs in read.items() for off, _k, value, _ts in recs}
    missing = [(k, loc) for k, loc in acked.items() if at.get(loc) != k]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged records not found, first: {missing[:3]}"

    assert broker.stop(signal.SIGTERM, timeout=60) == 0, broker.run_log()[-4000:]
    assert "clean shutdown complete" in broker.run_log()
    print(f"stress: {len(acked)} acked over {STRESS_SECONDS:.0f} s, {counts}")
