"""The data dir's `recovery-point-offset-checkpoint` (Kafka's name and text
format), written at a clean stop in place of a recovery point, a marker and
a producer snapshot per log (issue 12): what it holds, that a clean restart
trusts it (no producer-state replay, idempotent producers carry on), and
that after kill -9 it is not trusted and every acknowledged record is kept.
"""

from confluent_kafka import Producer

from clients import confluent_consume_all
from conftest import create_topic, unique_topic

PARTITIONS = 4


def read_checkpoint(data_dir):
    lines = (data_dir / "recovery-point-offset-checkpoint").read_text().splitlines()
    assert lines[0] == "0", "format version"
    assert int(lines[1]) == len(lines) - 2, "count line"
    ends = {}
    for line in lines[2:]:
        topic, partition, offset = line.split(" ")
        ends[(topic, int(partition))] = int(offset)
    return ends


def produce(bootstrap, topic, values, idempotent, producer=None):
    p = producer or Producer({"bootstrap.servers": bootstrap, "enable.idempotence": idempotent,
                              "linger.ms": 5, "message.timeout.ms": 60000})
    acked, errors = {}, []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked[msg.value()] = (msg.partition(), msg.offset())

    for v in values:
        p.produce(topic, value=v, partition=int(v.split(b"-")[1]) % PARTITIONS, on_delivery=on_delivery)
    assert p.flush(60) == 0, "records left undelivered"
    assert not errors, errors[:3]
    return p, acked


def read_values(bootstrap, topic):
    read, _ = confluent_consume_all(bootstrap, topic, list(range(PARTITIONS)), timeout=60)
    return {v: (p, o) for p, rows in read.items() for (o, _, v, _) in rows}


def test_a_clean_stop_checkpoints_every_log_end_and_a_clean_restart_trusts_it(broker_factory):
    b = broker_factory(shards=2)
    plain, idem = unique_topic("plain"), unique_topic("idem")
    create_topic(b.bootstrap, plain, PARTITIONS)
    create_topic(b.bootstrap, idem, PARTITIONS)
    _, plain_acked = produce(b.bootstrap, plain, [b"p-%d" % i for i in range(400)], idempotent=False)
    idem_producer, idem_acked = produce(b.bootstrap, idem, [b"i-%d" % i for i in range(400)], idempotent=True)

    assert b.stop() == 0
    ends = read_checkpoint(b.data_dir)
    for topic, acked in ((plain, plain_acked), (idem, idem_acked)):
        for partition in range(PARTITIONS):
            last = max(o for (p, o) in acked.values() if p == partition)
            assert ends[(topic, partition)] == last + 1, (topic, partition)
    assert ("__consumer_offsets", 0) in ends
    plain_dir = b.data_dir / f"{plain}-0"
    assert not (plain_dir / "clean-shutdown").exists(), "no per-log marker"
    assert not list(plain_dir.glob("*.snapshot")), "no producer state, no snapshot"
    idem_dir = b.data_dir / f"{idem}-0"
    assert (idem_dir / f"{ends[(idem, 0)]:020d}.snapshot").exists(), "idempotent state is snapshotted"

    b.restart()
    log = b.run_log()
    assert "running log recovery" not in log
    assert "producer state rebuilt" not in log, "a clean restart replays nothing"
    # The same idempotent producer carries on across the restart: its
    # sequences continue, with neither duplicates nor refusals.
    _, more = produce(b.bootstrap, idem, [b"i-%d" % i for i in range(400, 600)], idempotent=True,
                      producer=idem_producer)
    idem_acked.update(more)
    assert read_values(b.bootstrap, idem) == idem_acked
    assert read_values(b.bootstrap, plain) == plain_acked

    # kill -9: the checkpoint is not trusted, recovery runs, nothing acked is lost.
    _, after = produce(b.bootstrap, plain, [b"p-%d" % i for i in range(400, 500)], idempotent=False)
    plain_acked.update(after)
    b.kill9()
    b.restart()
    assert "running log recovery" in b.run_log()
    assert read_values(b.bootstrap, plain) == plain_acked
    assert read_values(b.bootstrap, idem) == idem_acked
    assert b.stop() == 0
    ends = read_checkpoint(b.data_dir)
    for partition in range(PARTITIONS):
        last = max(o for (p, o) in plain_acked.values() if p == partition)
        assert ends[(plain, partition)] == last + 1
