"""Partition count as a scale axis (issue 12), functional and not timed:
20,000 partitions on one broker (two shards) are created, produced to with
a real Kafka client, restarted cleanly and after kill -9, and every
acknowledged record is read back at its offset. The 100,000-partition run of
the same steps is `scripts/partition-scale.py` (too long for the test
command).

Also: idle partitions give their segment files back after `log.fd.idle.ms`.
"""

import os
import time

from confluent_kafka.admin import AdminClient, NewTopic

from partition_scale import check_every_record, produce_one_per_partition

PARTITIONS = 20_000


def open_segment_files(pid, data_dir):
    """Segment files (`.log` under `data_dir`) the process holds open."""
    fd_dir = f"/proc/{pid}/fd"
    paths = []
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue  # closed meanwhile
        if target.startswith(str(data_dir)) and target.endswith(".log"):
            paths.append(target)
    return paths


def test_twenty_thousand_partitions_survive_clean_and_unclean_restarts(broker_factory):
    b = broker_factory(shards=2, sets={"log.fd.idle.ms": 2000})
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic("wide", num_partitions=PARTITIONS, replication_factor=1)],
                        operation_timeout=300, request_timeout=300)["wide"].result(timeout=300)

    acked = produce_one_per_partition(b.bootstrap, "wide", PARTITIONS, b"first")
    assert len(acked) == PARTITIONS
    # Every partition was written, so each shard's cache filled up to
    # log.fd.cache.size; idle for log.fd.idle.ms, they close them all.
    deadline = time.monotonic() + 30
    while open_segment_files(b.pid, b.data_dir):
        still = open_segment_files(b.pid, b.data_dir)
        assert time.monotonic() < deadline, f"{len(still)} segment files still open while idle: {still[:5]}"
        time.sleep(0.5)

    assert b.stop() == 0
    b.start(timeout=300)
    assert "recovery: scanned" not in b.run_log(), "a clean stop leaves nothing to recover"

    # The read-back after the kill covers both rounds: the first records
    # went through the clean restart too.
    acked.update(produce_one_per_partition(b.bootstrap, "wide", PARTITIONS, b"second"))
    assert len(acked) == 2 * PARTITIONS
    b.kill9()
    b.start(timeout=300)
    check_every_record(b.bootstrap, "wide", acked)
