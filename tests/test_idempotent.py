"""Idempotent producer (librdkafka enable.idempotence=true): InitProducerId,
per-partition sequence checks, and producer state rebuilt after restarts, so
retries forced by killing the broker never duplicate or lose a record."""

import threading
import time

from confluent_kafka import KafkaError, Producer

import kafka_raw as kr
from clients import confluent_consume_all
from conftest import create_topic, unique_topic

N_RECORDS = 100_000
PARTITIONS = 3


def test_idempotent_producer_survives_broker_restarts_without_duplicates_or_gaps(broker):
    topic = unique_topic("idem")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    p = Producer({
        "bootstrap.servers": broker.bootstrap,
        "enable.idempotence": True,
        "linger.ms": 5,
        "batch.num.messages": 2000,
        "message.timeout.ms": 120000,
        "retry.backoff.ms": 100,
        "reconnect.backoff.max.ms": 500,
    })
    errors, fatal = [], []
    delivered = {}

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[int(msg.value())] = (msg.partition(), msg.offset())

    # A second thread takes the broker away twice while batches are in
    # flight: kill -9 (state rebuilt from the log) and SIGTERM (snapshot).
    def restarter():
        for threshold, how in ((N_RECORDS // 3, "kill9"), (2 * N_RECORDS // 3, "sigterm")):
            deadline = time.monotonic() + 120
            while len(delivered) < threshold and time.monotonic() < deadline:
                time.sleep(0.005)
            if how == "kill9":
                broker.kill9()
            else:
                broker.stop()
            broker.restart()
            restarted.append(how)

    restarted = []
    thread = threading.Thread(target=restarter, daemon=True)
    thread.start()
    in_flight_max = 20_000
    for i in range(N_RECORDS):
        # Bounded lead over the acknowledgements, so records are still being
        # produced when the broker goes away.
        while i - len(delivered) > in_flight_max:
            p.poll(0.01)
        while True:
            try:
                p.produce(topic, key=b"k%d" % (i % 97), value=b"%d" % i, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(120) == 0, "records left undelivered"
    thread.join(timeout=60)
    assert restarted == ["kill9", "sigterm"], restarted
    err = p.fatal_error() if hasattr(p, "fatal_error") else None
    assert not errors, f"{len(errors)} delivery errors, first {errors[:3]}"
    assert err is None or err.code() == KafkaError.NO_ERROR, err
    assert sorted(delivered) == list(range(N_RECORDS))

    read, _ = confluent_consume_all(broker.bootstrap, topic, list(range(PARTITIONS)), timeout=120)
    values = [int(v) for rows in read.values() for (_, _, v, _) in rows]
    assert len(values) == N_RECORDS, f"read {len(values)} records, {len(values) - len(set(values))} duplicates"
    assert sorted(values) == list(range(N_RECORDS)), "gaps or duplicates"
    for partition, rows in read.items():
        offsets = [o for (o, _, _, _) in rows]
        assert offsets == sorted(set(offsets)), f"partition {partition}: offsets not increasing"
        seqs = [int(v) for (_, _, v, _) in rows]
        assert seqs == sorted(seqs), f"partition {partition} out of producer order"
        for (o, _, v, _) in rows:
            assert delivered[int(v)] == (partition, o)
    # The kill -9 restart rebuilt producer state by replaying the log tail.
    assert "producer state rebuilt" in broker.log_text()


def test_init_producer_id_hands_out_fresh_ids_that_survive_restart(broker):
    def init():
        with kr.Conn(broker.bootstrap) as c:
            # InitProducerId v0: transactional_id (null), transaction_timeout_ms
            r = c.request(22, 0, kr.int16(-1) + kr.int32(60000))
            r.int32()  # throttle
            return r.int16(), r.int64(), r.int16()

    first = init()
    second = init()
    assert first[0] == 0 and second[0] == 0
    assert second[1] != first[1] and first[2] == 0
    broker.stop()
    broker.restart()
    third = init()
    assert third[0] == 0 and third[1] not in (first[1], second[1])
