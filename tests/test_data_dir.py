"""A data dir knows its cluster and node (`meta.properties`, Kafka's format),
and one written by the previous release opens with every record and
committed offset intact (issue 10)."""

import re
import tarfile
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from clients import confluent_consume_all
from conftest import BrokerStartError

FIXTURE = Path(__file__).parent / "fixtures" / "datadir-876edc3.tgz"


def meta_properties(broker):
    text = (broker.data_dir / "meta.properties").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_a_data_dir_of_the_previous_release_opens_with_records_and_offsets_intact(broker_factory):
    broker = broker_factory(shards=2, start=False)
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(broker.data_dir.parent, filter="data")
    assert not (broker.data_dir / "meta.properties").exists()
    broker.start()

    read, marks = confluent_consume_all(broker.bootstrap, "legacy", range(3))
    assert {p: m for p, m in marks.items()} == {p: (0, 100) for p in range(3)}
    for p in range(3):
        got = [(off, key, value) for off, key, value, _ in read[p]]
        want = [(i // 3, b"k%d" % (i % 10), b"v%05d" % i) for i in range(p, 300, 3)]
        assert got == want, f"partition {p}"
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "legacy-group"})
    committed = c.committed([TopicPartition("legacy", p) for p in range(3)], timeout=30)
    c.close()
    assert [(tp.partition, tp.offset) for tp in committed] == [(0, 40), (1, 50), (2, 60)]

    # The first start of the new release records whose data dir this is.
    props = meta_properties(broker)
    cluster_id = re.search(r'"cluster_id":\s*"([^"]+)"', (broker.data_dir / "shardlog-metadata.json").read_text())
    assert props == {"node.id": "0", "version": "1", "cluster.id": cluster_id.group(1)}


def test_a_data_dir_of_another_node_or_cluster_is_refused(broker_factory):
    broker = broker_factory(sets={"node.id": 1})
    broker.stop()
    broker.sets["node.id"] = 2
    with pytest.raises(BrokerStartError):
        broker.start()
    assert "belongs to node.id 1" in broker.run_log() and "this broker is node.id 2" in broker.run_log()

    broker.sets["node.id"] = 1
    props = broker.data_dir / "meta.properties"
    props.write_text(props.read_text().replace("cluster.id=", "cluster.id=other-"))
    with pytest.raises(BrokerStartError):
        broker.start()
    assert "belongs to cluster other-" in broker.run_log()

    props.write_text(props.read_text().replace("cluster.id=other-", "cluster.id="))
    broker.start()
