"""Durability across kill -9 and clean (SIGTERM) restarts.

A subprocess producer (acks=all) writes continuously to a 6-partition topic with
1 MiB segments (so segments roll) and logs every acknowledged record. The broker
is killed with SIGKILL mid-produce (three times) and restarted on the same data
dir and port: each restart must log recovery and the same producer must carry
on. A SIGTERM stop under load and an idle one must need no recovery. At the end
every acknowledged record is read back at its exact offset with its exact value.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from clients import confluent_consume_all, confluent_produce
from conftest import create_topic, unique_topic, wait_until

HERE = Path(__file__).resolve().parent
PARTITIONS = 6
ACKS_BEFORE_KILL = 30_000
ACKS_AFTER_RESTART = 10_000
KILL_CYCLES = 3
SEGMENT_BYTES = 1 << 20

_RECOVERY = re.compile(r"recover", re.I)
# lines that mention recovery only to say none was needed
_NO_RECOVERY = re.compile(r"clean|no recovery|skip|not needed|unnecessary", re.I)


def recovery_lines(log: str):
    return [l for l in log.splitlines() if _RECOVERY.search(l) and not _NO_RECOVERY.search(l)]


def read_acks(path: Path):
    """Complete lines of the ack log -> {(partition, offset): value}."""
    acks = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return acks
    for line in data.split(b"\n")[:-1]:  # last piece may be partial
        p, off, v = line.split(b" ", 2)
        key = (int(p), int(off))
        assert key not in acks or acks[key] == v, f"two different values acknowledged at {key}: {acks[key]!r} / {v!r}"
        acks[key] = v
    return acks


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_all(bootstrap, topic):
    read, marks = confluent_consume_all(bootstrap, topic, range(PARTITIONS), timeout=180)
    contents = {}
    for p, recs in read.items():
        offs = [r[0] for r in recs]
        assert offs == list(range(marks[p][0], marks[p][1])), f"partition {p}: offsets {offs[:3]}..{offs[-3:]} vs marks {marks[p]}"
        for off, _k, v, _ts in recs:
            contents[(p, off)] = v
    return contents, marks


def check_acked_present(acks, contents):
    missing = [loc for loc in acks if loc not in contents]
    wrong = [(loc, acks[loc][:20], contents[loc][:20]) for loc in acks if loc in contents and contents[loc] != acks[loc]]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:10]}"
    assert not wrong, f"{len(wrong)} acknowledged offsets hold a different value, e.g. {wrong[:5]}"


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture
def crash_broker(broker_factory):
    return broker_factory(sets={"log.segment.bytes": SEGMENT_BYTES, "num.partitions": PARTITIONS})


def test_kill9_mid_produce_keeps_every_acked_record_then_clean_restart_needs_no_recovery(crash_broker, tmp_path):
    b = crash_broker
    topic = unique_topic("crash")
    create_topic(b.bootstrap, topic, PARTITIONS)
    acks_path = tmp_path / "acks.txt"
    stop_file = tmp_path / "stop"
    prod = subprocess.Popen(
        [sys.executable, str(HERE / "acked_producer.py"), "--bootstrap", b.bootstrap, "--topic", topic,
         "--out", str(acks_path), "--stop-file", str(stop_file), "--max-seconds", "400"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_acks(n, timeout, what):
        wait_until(lambda: count_lines(acks_path) >= n or prod.poll() is not None, timeout, interval=0.05, what=what)
        assert prod.poll() is None, f"producer exited early ({what}): {prod.communicate(timeout=10)}"

    try:
        # kill -9 three times mid-produce; the same producer carries on each time
        target = ACKS_BEFORE_KILL
        for cycle in range(KILL_CYCLES):
            wait_acks(target, 180, f"{target} acknowledged records before kill #{cycle + 1}")
            b.kill9()
            acked_at_kill = count_lines(acks_path)
            b.restart()
            rl = recovery_lines(b.run_log())
            assert rl, f"restart after kill -9 #{cycle + 1} logged no recovery:\n{b.run_log()[-4000:]}"
            target = acked_at_kill + ACKS_AFTER_RESTART

        # a clean SIGTERM stop while the producer is still producing: no recovery on restart
        wait_acks(target, 120, f"{ACKS_AFTER_RESTART} more acks after the last kill -9")
        rc = b.stop(signal.SIGTERM, timeout=30)
        assert rc == 0, f"SIGTERM shutdown under load exited with {rc}"
        acked_at_term = count_lines(acks_path)
        b.restart()
        assert not recovery_lines(b.run_log()), (
            "restart after a clean SIGTERM shutdown ran recovery:\n" + "\n".join(recovery_lines(b.run_log())))

        wait_acks(acked_at_term + ACKS_AFTER_RESTART, 120, "more acks after the SIGTERM restart")
        stop_file.write_text("stop")
        out, err = prod.communicate(timeout=120)
    finally:
        if prod.poll() is None:
            prod.kill()
            prod.wait(timeout=10)
    summary = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    assert prod.returncode == 0, f"producer failed: rc={prod.returncode} {summary} {err.decode()[-3000:]}"
    acks = read_acks(acks_path)
    assert summary["acked"] == count_lines(acks_path) == len(acks), summary

    md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(topic=topic, timeout=10)
    assert len(md.topics[topic].partitions) == PARTITIONS, "topic lost partitions across restarts"

    contents, marks = read_all(b.bootstrap, topic)
    check_acked_present(acks, contents)
    assert du(b.data_dir) >= sum(len(v) for v in acks.values()), "data dir smaller than the acknowledged payload"
    print(f"acked {len(acks)}, log holds {len(contents)} (extra = unacknowledged or retried); "
          f"data dir {du(b.data_dir)} bytes in {sum(1 for f in b.data_dir.rglob('*') if f.is_file())} files")

    # --- idle clean stop and restart: byte-for-byte the same log, no recovery ------------
    rc = b.stop(signal.SIGTERM, timeout=30)
    assert rc == 0, f"SIGTERM shutdown exited with {rc}"
    b.restart()
    assert not recovery_lines(b.run_log()), (
        "restart after a clean SIGTERM shutdown ran recovery:\n" + "\n".join(recovery_lines(b.run_log())))
    contents2, marks2 = read_all(b.bootstrap, topic)
    assert marks2 == marks, f"watermarks changed across clean restart: {marks} -> {marks2}"
    assert contents2 == contents, "log contents changed across a clean restart"

    # and the broker still takes writes, appended after the old data
    more = [(b"after", f"after-clean-{i}".encode()) for i in range(100)]
    delivered = confluent_produce(b.bootstrap, topic, more, timeout=60)
    for v, (p, off) in delivered.items():
        assert off >= marks[p][1], f"new record at {p}/{off} overlaps old data (high watermark {marks[p][1]})"


def test_sigint_is_a_clean_shutdown(broker_factory):
    b = broker_factory(sets={"log.segment.bytes": SEGMENT_BYTES})
    topic = unique_topic("sigint")
    create_topic(b.bootstrap, topic, 2)
    delivered = confluent_produce(b.bootstrap, topic, [(None, f"v{i}".encode()) for i in range(1000)], timeout=60)
    rc = b.stop(signal.SIGINT, timeout=30)
    assert rc == 0, f"SIGINT shutdown exited with {rc}"
    b.restart()
    assert not recovery_lines(b.run_log()), b.run_log()[-3000:]
    read, _ = confluent_consume_all(b.bootstrap, topic, range(2), timeout=60)
    got = {(p, off): v for p, recs in read.items() for off, _k, v, _ts in recs}
    assert all(got.get(loc) == v for v, loc in delivered.items())


def test_topics_and_acks1_data_survive_kill9_when_idle(broker_factory):
    b = broker_factory(sets={"log.segment.bytes": SEGMENT_BYTES})
    empty, full = unique_topic("empty"), unique_topic("full")
    create_topic(b.bootstrap, empty, 3)
    create_topic(b.bootstrap, full, 2)
    records = [(f"k{i % 10}".encode(), f"acks1-{i:06d}".encode() * 20) for i in range(20000)]
    delivered = confluent_produce(b.bootstrap, full, records, timeout=120, acks=1)
    b.kill9()
    b.restart()
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    md = admin.list_topics(timeout=10)
    assert empty in md.topics and len(md.topics[empty].partitions) == 3, "topic created before kill -9 is gone"
    assert full in md.topics and len(md.topics[full].partitions) == 2
    read, marks = confluent_consume_all(b.bootstrap, full, range(2), timeout=120)
    got = {(p, off): v for p, recs in read.items() for off, _k, v, _ts in recs}
    lost = [v for v, loc in delivered.items() if got.get(loc) != v]
    assert not lost, f"{len(lost)} acks=1 records lost after kill -9 of an idle broker"
    # a second crash right after recovery is also survived
    b.kill9()
    b.restart()
    read2, marks2 = confluent_consume_all(b.bootstrap, full, range(2), timeout=120)
    assert marks2 == marks
