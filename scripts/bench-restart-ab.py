#!/usr/bin/env python3
"""A/B of broker restart times on one data dir (issue 12, aim 3): two (or
more) broker binaries take turns on the same data, so filesystem state and
page cache are shared and only the binary differs.

  --mode clean: each turn starts the binary on the data dir (left by a
      clean stop), times the start to its "listening on" line, and stops it
      with SIGTERM.
  --mode kill: each turn starts the binary, produces --fill-s seconds of
      small batches to every partition (shardlog-bench, up to 1,000 partitions per
      request), kills it with SIGKILL, then times the restart (log recovery)
      and stops it cleanly.

Without an existing DIR/data the first binary fills it first: a topic
`wide` of --partitions partitions, created with confluent-kafka's
AdminClient, and then either one record per partition from librdkafka
(--fill librdkafka, as tests/partition_scale.py does: slow, the client is
the bound at 100,000) or 3 s of shardlog-bench produce (--fill bench), and
a clean stop. Prints every time and the median per binary.

--cold drops the kernel's caches before each timed start, as a reboot would.

  scripts/bench-restart-ab.py --work DIR [--partitions 100000] [--rounds 3]
      [--mode clean|kill] [--fill librdkafka|bench] [--cold] BINARY_A BINARY_B ...
"""

import argparse
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, Broker, bench, machine  # noqa: E402

TOPIC = "wide"


def bench_produce(broker, partitions, seconds):
    """Small batches to every partition; repeated while the new logs are
    still opening (the broker refuses produce until they are)."""
    for attempt in range(20):
        try:
            bench(broker, "produce", "--topic", TOPIC, "--partitions", str(partitions),
                  "--partitions-per-request", str(min(1000, partitions)), "--batch-bytes", "128", "--record-bytes", "100",
                  "--duration-s", str(seconds))
            return
        except RuntimeError:
            if attempt == 19:
                raise
            time.sleep(3)


def fill(work, binary, partitions, how):
    from confluent_kafka.admin import AdminClient, NewTopic
    broker = Broker(work, binary=binary)
    broker.start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic(TOPIC, partitions, 1)])[TOPIC].result(timeout=300)
        started = time.monotonic()
        if how == "librdkafka":
            sys.path.insert(0, str(REPO / "tests"))
            from partition_scale import produce_one_per_partition
            produce_one_per_partition(broker.bootstrap, TOPIC, partitions, b"ab", timeout_s=3600)
        else:
            bench_produce(broker, partitions, 3)
        print(f"filled {partitions:,} partitions ({how}) in {time.monotonic() - started:.1f} s", flush=True)
    finally:
        print(f"clean stop {broker.stop(signal.SIGTERM):.2f} s, exit {broker.proc.returncode}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--partitions", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", choices=["clean", "kill"], default="clean")
    ap.add_argument("--fill", choices=["librdkafka", "bench"], default="librdkafka")
    ap.add_argument("--fill-s", type=int, default=2, help="produce before each kill (--mode kill)")
    ap.add_argument("--cold", action="store_true",
                    help="drop the page, dentry and inode caches before each timed start (root), as after a reboot")
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    print(f"{machine()}; data in {args.work}", flush=True)
    if not (args.work / "data").exists():
        fill(args.work, args.binaries[0], args.partitions, args.fill)
    times = {binary: [] for binary in args.binaries}
    for _ in range(args.rounds):
        for binary in args.binaries:
            broker = Broker(args.work, binary=binary)
            if args.mode == "kill":
                broker.start()
                bench_produce(broker, args.partitions, args.fill_s)
                broker.stop(signal.SIGKILL)
            if args.cold:
                subprocess.run(["sync"], check=True)
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            broker.start()
            times[binary].append(broker.start_s)
            stop_s = broker.stop(signal.SIGTERM)
            print(f"{binary}: {args.mode} restart {broker.start_s:.2f} s; clean stop {stop_s:.2f} s, "
                  f"exit {broker.proc.returncode}", flush=True)
            if broker.proc.returncode != 0:
                raise SystemExit(f"{binary} did not stop cleanly: see {broker.log_path}")
    for binary, seconds in times.items():
        print(f"{binary}: median {statistics.median(seconds):.2f} s of "
              f"{', '.join(f'{s:.2f}' for s in seconds)}")


if __name__ == "__main__":
    main()
