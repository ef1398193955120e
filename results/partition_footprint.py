#!/usr/bin/env python3
"""Broker cost of idle partitions: RSS and open fds with 1, 1,000 and 10,000
partitions (one small record each), open fds once `log.fd.idle.ms` passed,
the clean stop (SIGTERM -> exit) with data in every partition, and restart
time after a clean (SIGTERM) and an unclean (kill -9) shutdown. Starts its
own broker on a free loopback port and a temp data dir; writes a markdown
report.

    python3 results/partition_footprint.py --bin target/release/shardlog \
        --counts 1 1000 10000 --out results/partition-footprint.md [--set KEY=VALUE ...]
"""

import argparse
import calendar
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

PAGE = os.sysconf("SC_PAGE_SIZE")
# Short, so the run sees idle files closed; the default is 60 s.
FD_IDLE_MS = 3000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Broker:
    def __init__(self, binary, data_dir, port, log_path, sets=()):
        self.args = [binary, "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
                     "--set", "log.retention.check.interval.ms=3600000",
                     "--set", f"log.fd.idle.ms={FD_IDLE_MS}"]
        for kv in sets:
            self.args += ["--set", kv]
        self.log_path = log_path
        self.proc = None

    def start(self, timeout=300):
        start = time.monotonic()
        offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"))
        while time.monotonic() - start < timeout:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                if b"listening on" in f.read():
                    return time.monotonic() - start
            if self.proc.poll() is not None:
                sys.exit(f"broker exited: see {self.log_path}")
            time.sleep(0.01)
        sys.exit("broker did not start")

    def stop(self, sig):
        """Seconds from the signal to the exit."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=300)
        return time.monotonic() - start

    def rss_bytes(self):
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def logs_open_s(log_path, t0_wall, partitions, timeout_s=300):
    """Seconds from the CreateTopics request to the last shard's
    `opened N logs` line: CreateTopics answers once the topic is committed,
    and each shard opens its new logs after that (as a Kafka broker does);
    until then produce gets NOT_LEADER_OR_FOLLOWER. The broker logs the line
    from 100 logs on; fewer open at once are reported as the answer time."""
    if partitions < 100:
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stamps = []
        with open(log_path) as f:
            for line in f:
                m = re.match(r"(\S+)Z .*opened (\d+) logs in \d+ ms", line)
                if m and int(m.group(2)) >= 100:
                    stamps.append(calendar.timegm(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S"))
                                  + float("0" + m.group(1)[19:]))
        stamps = [s for s in stamps if s >= t0_wall]
        # One line per shard (the broker's default: one per core); a shard
        # given fewer than 100 new logs logs none.
        if len(stamps) >= os.cpu_count() or (stamps and partitions < 100 * os.cpu_count()):
            return max(stamps) - t0_wall
        time.sleep(0.2)
    sys.exit("the broker did not report its new logs open")


def measure(binary, partitions, workdir, sets):
    data = os.path.join(workdir, f"data-{partitions}")
    log = os.path.join(workdir, f"broker-{partitions}.log")
    port = free_port()
    b = Broker(binary, data, port, log, sets)
    b.start()
    base_rss, base_fds = b.rss_bytes(), b.fds()
    bootstrap = f"127.0.0.1:{port}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    t0, t0_wall = time.monotonic(), time.time()
    fs = admin.create_topics([NewTopic("footprint", num_partitions=partitions, replication_factor=1)],
                             operation_timeout=600, request_timeout=600)
    fs["footprint"].result(timeout=600)
    create_s = time.monotonic() - t0
    usable_s = logs_open_s(log, t0_wall, partitions)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "queue.buffering.max.messages": 2000000})
    # CreateTopics answers before every new log is open (at 100,000 that
    # takes tens of seconds), so early records may be refused: send those
    # again until every partition holds one, bounded.
    todo = list(range(partitions))
    for _ in range(10):
        failed = []
        for i in todo:
            p.produce("footprint", value=b"x" * 100, partition=i,
                      on_delivery=lambda err, msg: err is not None and failed.append(msg.partition()))
            if i % 10000 == 0:
                p.poll(0)
        assert p.flush(600) == 0
        if not failed:
            break
        todo = failed
        time.sleep(5)
    assert not failed, f"{len(failed)} partitions got no record"
    time.sleep(1)
    rss, fds = b.rss_bytes(), b.fds()
    # Idle expiry runs every FD_IDLE_MS / 2: after 2x the files are closed.
    time.sleep(2 * FD_IDLE_MS / 1000)
    idle_fds = b.fds()
    stop_s = b.stop(signal.SIGTERM)
    clean_s = b.start()
    clean_rss, clean_fds = b.rss_bytes(), b.fds()
    b.stop(signal.SIGKILL)
    unclean_s = b.start()
    # Every log was opened by a recovery; the stop must still be clean (at
    # 100,000 partitions it once overran shutdown.timeout.ms).
    stop_after_unclean_s = b.stop(signal.SIGTERM)
    assert b.proc.returncode == 0, f"the stop after the unclean restart exited {b.proc.returncode}"
    # The data stays until every row is done: ext4 without a journal checks
    # each inode it allocates against those deleted in the last minute or
    # more (`recently_deleted`), so deleting a row's logs slows the next
    # row's creates several-fold.
    return {
        "partitions": partitions, "create_s": create_s, "usable_s": usable_s,
        "rss_mib": rss / 2**20, "rss_per_partition_kib": (rss - base_rss) / 1024 / partitions,
        "fds": fds, "fds_per_partition": (fds - base_fds) / partitions, "idle_fds": idle_fds,
        "clean_stop_s": stop_s,
        "restart_rss_mib": clean_rss / 2**20, "restart_fds": clean_fds,
        "clean_restart_s": clean_s, "unclean_restart_s": unclean_s,
        "stop_after_unclean_s": stop_after_unclean_s,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/shardlog")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 1000, 10000])
    ap.add_argument("--out", default="results/partition-footprint.md")
    ap.add_argument("--set", action="append", default=[], help="broker setting KEY=VALUE, repeatable")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="shardlog-footprint-")
    rows = [measure(os.path.abspath(args.bin), n, work, args.set) for n in args.counts]
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Idle partitions: memory, open files, restart time",
        "",
        f"- command: `python3 {' '.join(sys.argv)}`",
        f"- when: {time.strftime('%Y-%m-%d %H:%M:%S %z')}; commit {commit}",
        f"- machine: {os.cpu_count()} cores, kernel {platform.release()}; broker on its default shards, one topic",
        "  with N partitions, one 100-byte record in each, then idle.",
        "",
        "| partitions | create s | new logs open s | RSS MiB | RSS per partition KiB | open fds | fds per partition | "
        f"open fds after {FD_IDLE_MS / 1000:g} s idle | clean stop s | after clean restart: RSS MiB / fds | "
        "clean restart s | unclean restart s | clean stop after it s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['partitions']:,} | {r['create_s']:.2f} | "
            f"{'-' if r['usable_s'] is None else format(r['usable_s'], '.2f')} | {r['rss_mib']:.1f} | {r['rss_per_partition_kib']:.1f} | "
            f"{r['fds']} | {r['fds_per_partition']:.2f} | {r['idle_fds']} | {r['clean_stop_s']:.2f} | "
            f"{r['restart_rss_mib']:.1f} / {r['restart_fds']} | "
            f"{r['clean_restart_s']:.2f} | {r['unclean_restart_s']:.2f} | {r['stop_after_unclean_s']:.2f} |")
    lines.append("")
    lines.append("`new logs open s`: from the CreateTopics request to the last shard's `opened N logs` log "
                 "line (the broker's wall clock; CreateTopics answers at commit, before the shards open the "
                 "new logs, and produce gets NOT_LEADER_OR_FOLLOWER until they have; `-` below 100 partitions, "
                 "where the broker does not log it).")
    lines.append(f"Restart time is from process start to the `listening on` log line; clean stop from SIGTERM "
                 f"to the exit, with a record in every partition. `log.fd.idle.ms={FD_IDLE_MS}` for the run (the "
                 "default is 60000). One run per row.")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
