"""kcat (librdkafka's command-line client, Debian package `kcat`) against the broker."""

import re
import shutil
import subprocess

import pytest

from clients import CODECS
from conftest import create_topic, unique_topic

KCAT = shutil.which("kcat") or shutil.which("kafkacat")


def kcat(*args, input=None, timeout=60):
    assert KCAT, "kcat is not installed (apt-get install kcat; scripts/test.sh does this)"
    r = subprocess.run([KCAT, *args], input=input, capture_output=True, timeout=timeout)
    assert r.returncode == 0, f"kcat {' '.join(args)} exited {r.returncode}:\n{r.stderr.decode(errors='replace')}"
    return r.stdout.decode(), r.stderr.decode(errors="replace")


def test_kcat_metadata_lists_broker_and_topic(broker):
    topic = unique_topic("kcat-md")
    create_topic(broker.bootstrap, topic, 3)
    out, _ = kcat("-b", broker.bootstrap, "-L", "-m", "10")
    assert re.search(r"^\s*1 brokers:", out, re.M), out
    m = re.search(r"broker (-?\d+) at ([^:\s]+):(\d+)", out)
    assert m, out
    assert int(m.group(3)) == broker.port and m.group(2) in ("127.0.0.1", "localhost"), out
    assert f'topic "{topic}" with 3 partitions:' in out, out
    for p in range(3):
        assert re.search(rf"partition {p}, leader {m.group(1)}, replicas: {m.group(1)}, isrs: {m.group(1)}", out), out

    # -L -t TOPIC: only that topic
    out, _ = kcat("-b", broker.bootstrap, "-L", "-t", topic, "-m", "10")
    assert f'topic "{topic}" with 3 partitions:' in out, out


def test_kcat_metadata_json(broker):
    import json

    topic = unique_topic("kcat-json")
    create_topic(broker.bootstrap, topic, 2)
    out, _ = kcat("-b", broker.bootstrap, "-L", "-J", "-m", "10")
    md = json.loads(out)
    assert len(md["brokers"]) == 1 and md["brokers"][0]["name"].endswith(f":{broker.port}"), md["brokers"]
    topics = {t["topic"]: t for t in md["topics"]}
    assert topic in topics and len(topics[topic]["partitions"]) == 2


@pytest.mark.parametrize("codec", CODECS)
def test_kcat_produce_keyed_lines_then_consume_in_order(broker, codec):
    topic = unique_topic(f"kcat-{codec}")
    create_topic(broker.bootstrap, topic, 1)
    n = 2000
    lines = [f"k{i % 37}:value-{i:05d}-{'x' * (i % 50)}" for i in range(n)]
    kcat("-b", broker.bootstrap, "-P", "-t", topic, "-p", "0", "-K", ":", "-X", f"compression.codec={codec}",
         "-X", "linger.ms=5", input=("\n".join(lines) + "\n").encode())
    out, err = kcat("-b", broker.bootstrap, "-C", "-t", topic, "-p", "0", "-e", "-o", "beginning",
                    "-f", "%o|%k|%s\\n")
    got = out.splitlines()
    assert len(got) == n, f"read {len(got)} of {n} lines; stderr:\n{err[-2000:]}"
    for i, (line, rec) in enumerate(zip(lines, got)):
        k, v = line.split(":", 1)
        assert rec == f"{i}|{k}|{v}", f"record {i}: expected offset {i} {k}={v}, got {rec!r}"


def test_kcat_multi_partition_keyed_roundtrip(broker):
    topic = unique_topic("kcat-multi")
    create_topic(broker.bootstrap, topic, 4)
    n = 4000
    lines = [f"key{i % 101}:{i}" for i in range(n)]
    kcat("-b", broker.bootstrap, "-P", "-t", topic, "-K", ":", "-X", "compression.codec=lz4",
         input=("\n".join(lines) + "\n").encode())
    out, _ = kcat("-b", broker.bootstrap, "-C", "-t", topic, "-e", "-o", "beginning", "-f", "%p|%o|%k|%s\\n")
    recs = [r.split("|") for r in out.splitlines()]
    assert len(recs) == n
    key_part = {}
    last = {}
    for p, off, k, v in recs:
        assert key_part.setdefault(k, p) == p, f"key {k} in partitions {key_part[k]} and {p}"
        assert int(v) > last.get(k, -1), f"order broken for {k}"
        last[k] = int(v)
    assert sorted(int(v) for _, _, _, v in recs) == list(range(n))
    assert len(set(p for p, *_ in recs)) > 1
