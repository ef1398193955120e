"""One consumer-group member in its own process, so a test can SIGKILL it.

    python3 group_member.py CLIENT BOOTSTRAP GROUP TOPIC OUT_FILE [SESSION_TIMEOUT_MS]

CLIENT is confluent, kafka-python or aiokafka. The member subscribes to TOPIC
in GROUP with auto-commit off, and appends JSON lines to OUT_FILE (flushed
before every commit, so a SIGKILL never loses a line about a record whose
offset was committed):

    {"assignment": [partitions...]}       whenever its assignment changes
    {"records": [[partition, offset], ...]}  each batch it consumed
    {"committed": true}                    after each synchronous commit

It runs until SIGTERM/SIGKILL (SIGTERM closes it, which leaves the group).
"""

import asyncio
import json
import signal
import sys

CLIENT, BOOTSTRAP, GROUP, TOPIC, OUT = sys.argv[1:6]
SESSION_TIMEOUT_MS = int(sys.argv[6]) if len(sys.argv) > 6 else 6000
HEARTBEAT_MS = 1000
MAX_POLL_INTERVAL_MS = 20000

stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
out = open(OUT, "a", buffering=1)


def emit(obj):
    out.write(json.dumps(obj) + "\n")
    out.flush()


class Tracker:
    def __init__(self):
        self.last = None

    def report(self, partitions):
        now = sorted(partitions)
        if now != self.last:
            self.last = now
            emit({"assignment": now})


def run_confluent():
    from confluent_kafka import Consumer

    c = Consumer({
        "bootstrap.servers": BOOTSTRAP,
        "group.id": GROUP,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": HEARTBEAT_MS,
        "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
    })
    c.subscribe([TOPIC])
    t = Tracker()
    while not stop:
        msgs = c.consume(num_messages=500, timeout=0.3)
        t.report(tp.partition for tp in c.assignment())
        recs = [[m.partition(), m.offset()] for m in msgs if m.error() is None]
        if recs:
            emit({"records": recs})
            try:
                c.commit(asynchronous=False)
                emit({"committed": True})
            except Exception as e:  # a rebalance in between: the next owner re-reads
                emit({"commit_error": str(e)})
    c.close()


def run_kafka_python():
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        TOPIC,
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_MS,
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
    )
    t = Tracker()
    while not stop:
        batches = c.poll(timeout_ms=300, max_records=500)
        t.report(tp.partition for tp in c.assignment())
        recs = [[m.partition, m.offset] for msgs in batches.values() for m in msgs]
        if recs:
            emit({"records": recs})
            try:
                c.commit()
                emit({"committed": True})
            except Exception as e:
                emit({"commit_error": str(e)})
    c.close()


async def run_aiokafka_async():
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_MS,
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
    )
    await c.start()
    t = Tracker()
    try:
        while not stop:
            batches = await c.getmany(timeout_ms=300, max_records=500)
            t.report(tp.partition for tp in c.assignment())
            recs = [[m.partition, m.offset] for msgs in batches.values() for m in msgs]
            if recs:
                emit({"records": recs})
                try:
                    await c.commit()
                    emit({"committed": True})
                except Exception as e:
                    emit({"commit_error": str(e)})
    finally:
        await c.stop()


if CLIENT == "confluent":
    run_confluent()
elif CLIENT == "kafka-python":
    run_kafka_python()
elif CLIENT == "aiokafka":
    asyncio.run(run_aiokafka_async())
else:
    sys.exit(f"unknown client {CLIENT}")
