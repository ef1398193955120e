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
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from partition_scale import check_every_record, produce_one_per_partition  # noqa: E402

BIN = Path(os.environ.get("SHARDLOG_BIN", REPO / "target" / "release" / "shardlog"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, work, port):
        self.args = [str(BIN), "--listen", f"127.0.0.1:{port}", "--data-dir", str(work / "data")]
        self.log = work / "broker.log"
        self.bootstrap = f"127.0.0.1:{port}"
        self.proc = None

    def start(self, timeout_s=600):
        offset = self.log.stat().st_size if self.log.exists() else 0
        started = time.monotonic()
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        while b"listening on" not in self.log.read_bytes()[offset:]:
            assert self.proc.poll() is None, f"broker exited at start: see {self.log}"
            assert time.monotonic() - started < timeout_s, "broker did not start"
            time.sleep(0.05)
        return time.monotonic() - started, self.log.read_bytes()[offset:].decode(errors="replace")

    def stop(self, sig):
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=600)
        return time.monotonic() - started, code


def step(name, started):
    print(f"{name}: {time.monotonic() - started:.2f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", type=int, default=100_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shardlog-partition-scale-"))
    b = Broker(work, free_port())
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
        took, code = b.stop(signal.SIGTERM)
        print(f"clean stop: {took:.2f} s, exit {code}", flush=True)
        assert code == 0, "clean stop failed"
        took, log = b.start()
        print(f"clean restart: {took:.2f} s", flush=True)
        assert "recovery: scanned" not in log, "a clean stop left logs to recover"
        t = time.monotonic()
        acked.update(produce_one_per_partition(b.bootstrap, "wide", args.partitions, b"second", timeout_s=900))
        step("produce a second record per partition", t)
        b.stop(signal.SIGKILL)
        took, _ = b.start()
        print(f"restart after kill -9: {took:.2f} s", flush=True)
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
