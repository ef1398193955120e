#!/usr/bin/env python3
"""The 100,000-partition version of tests/test_partition_scale.py (too long
for the test command): one broker on its default shards, a topic of
--partitions partitions created, one record produced to every partition
with confluent-kafka (acks=all), a clean restart (which must not run
recovery), a second record to every partition, kill -9, a restart, and
every acknowledged record read back at its offset. Prints the time of each
step; exits non-zero on any loss.

    scripts/partition-scale.py [--partitions 100000]
"""

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, Broker  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from partition_scale import check_every_record, produce_one_per_partition  # noqa: E402


def step(name, started):
    print(f"{name}: {time.monotonic() - started:.2f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", type=int, default=100_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shardlog-partition-scale-"))
    b = Broker(work)
    try:
        b.start()
        t = time.monotonic()
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        admin.create_topics([NewTopic("wide", num_partitions=args.partitions, replication_factor=1)],
                            operation_timeout=600, request_timeout=600)["wide"].result(timeout=600)
        step(f"create {args.partitions:,} partitions", t)
        t = time.monotonic()
        acked = produce_one_per_partition(b.bootstrap, "wide", args.partitions, b"first", timeout_s=900)
        step("produce one record per partition", t)
        took = b.stop(signal.SIGTERM)
        code = b.proc.returncode
        print(f"clean stop: {took:.2f} s, exit {code}", flush=True)
        assert code == 0, "clean stop failed"
        b.start()
        print(f"clean restart: {b.start_s:.2f} s", flush=True)
        assert "recovery: scanned" not in b.run_log(), "a clean stop left logs to recover"
        t = time.monotonic()
        acked.update(produce_one_per_partition(b.bootstrap, "wide", args.partitions, b"second", timeout_s=900))
        step("produce a second record per partition", t)
        b.stop(signal.SIGKILL)
        b.start()
        print(f"restart after kill -9: {b.start_s:.2f} s", flush=True)
        t = time.monotonic()
        check_every_record(b.bootstrap, "wide", acked, timeout_s=1800)
        step(f"read back all {len(acked):,} acknowledged records", t)
        b.stop(signal.SIGTERM)
        print("every acknowledged record intact")
    finally:
        if b.proc and b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
