"""The metrics endpoint (metrics.listen): a real Prometheus (Debian's package)
scrapes it while confluent-kafka produces and a group consumes with lag;
/health and /ready; bad input on the metrics port; log.format=json.

Every wait is bounded; only processes started here are stopped, by PID."""

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import broker_bin, create_topic, free_port, unique_topic, wait_until

_METRICS_ON = re.compile(r"metrics on http://([\d.]+):(\d+)")


def metrics_addr(broker):
    m = wait_until(lambda: _METRICS_ON.search(broker.run_log()), 10, what="'metrics on' in the log")
    return m.group(1), int(m.group(2))


def http_get(host, port, path, timeout=10):
    """(status, body) of GET path."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def health_ok(port):
    try:
        return http_get("127.0.0.1", port, "/health", timeout=5)[0] == 200
    except OSError:
        return False


def parse_metrics(text):
    """{(name, frozenset(labels)): value} of a Prometheus text page; also checks
    that every family's samples are together under one HELP/TYPE."""
    samples, seen_families, current = {}, set(), None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert name not in seen_families, f"family {name} appears twice"
            seen_families.add(name)
            current = name
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group(1), m.group(3) or ""
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert current in (name, base), f"{name} outside its family block ({current})"
        pairs = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
        samples[(name, pairs)] = float(m.group(4))
    return samples


def value(samples, name, **labels):
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    return sum(found) if found else None


class Prometheus:
    """Debian's prometheus, scraping one target every second."""

    def __init__(self, tmp_path, target):
        self.port = free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
            "scrape_configs:\n  - job_name: shardlog\n    static_configs:\n"
            f"      - targets: ['{target}']\n")
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [shutil.which("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(tmp_path))
        wait_until(lambda: self._ready(), 30, what="prometheus ready")

    def _ready(self):
        assert self.proc.poll() is None, "prometheus exited"
        try:
            return http_get("127.0.0.1", self.port, "/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def query(self, expr):
        """The instant vector of `expr` as [(labels, float)]."""
        q = urllib.parse.urlencode({"query": expr})
        status, body = http_get("127.0.0.1", self.port, f"/api/v1/query?{q}")
        assert status == 200, body
        data = json.loads(body)["data"]["result"]
        return [(r["metric"], float(r["value"][1])) for r in data]

    def scalar(self, expr):
        result = self.query(expr)
        return result[0][1] if result else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def metrics_broker(broker_factory):
    port = free_port()
    b = broker_factory(sets={"metrics.listen": f"127.0.0.1:{port}", "group.initial.rebalance.delay.ms": 0})
    assert metrics_addr(b) == ("127.0.0.1", port)
    return b, port


def produce(bootstrap, topic, count, partitions):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(count):
        p.produce(topic, value=b"v" * 200, partition=i % partitions)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def consume_and_commit(bootstrap, topic, group, upto):
    """Reads each partition up to offset `upto` (from the group's committed
    position) and commits exactly `upto` for each."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    try:
        c.subscribe([topic])
        position = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assignment = c.assignment()
            if assignment and all(position.get(tp.partition, 0) >= upto for tp in assignment):
                break
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            position[m.partition()] = max(position.get(m.partition(), 0), m.offset() + 1)
        assert position and all(n >= upto for n in position.values()), position
        c.commit(offsets=[TopicPartition(topic, p, upto) for p in position], asynchronous=False)
    finally:
        c.close()


def test_prometheus_sees_traffic_and_consumer_lag_reaching_zero(metrics_broker, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed (scripts/test.sh installs Debian's package)")
    b, port = metrics_broker
    topic, group = unique_topic("metrics"), "lagging"
    create_topic(b.bootstrap, topic, 3)
    prom = Prometheus(tmp_path, f"127.0.0.1:{port}")
    try:
        wait_until(lambda: prom.scalar('up{job="shardlog"}') == 1, 30, what="prometheus scraping shardlog")
        produce(b.bootstrap, topic, 3000, 3)
        # The series move: records in, per topic, as Prometheus stored them.
        wait_until(lambda: (prom.scalar(f'sum(shardlog_topic_records_in_total{{topic="{topic}"}})') or 0) >= 3000,
                   30, what="3000 records in Prometheus")
        assert prom.scalar("sum(shardlog_produce_records_total)") >= 3000
        assert prom.scalar('sum(shardlog_requests_total{api="Produce"})') > 0
        assert prom.scalar('sum(shardlog_request_latency_seconds_count{api="Produce",stage="total"})') > 0
        assert prom.scalar("sum(shardlog_produce_durable_latency_seconds_count)") > 0
        # A group that read 400 of each partition's 1000 records lags 600 each.
        consume_and_commit(b.bootstrap, topic, group, 400)
        wait_until(lambda: prom.scalar(f'shardlog_consumer_group_lag_sum{{group="{group}"}}') == 1800, 30,
                   what="lag 1800 in Prometheus")
        assert prom.scalar(f'shardlog_consumer_group_lag_max{{group="{group}"}}') == 600
        per_partition = prom.query(f'shardlog_consumer_group_lag{{group="{group}",topic="{topic}"}}')
        assert sorted(v for _, v in per_partition) == [600, 600, 600], per_partition
        # More data raises the lag; catching up brings it to zero.
        produce(b.bootstrap, topic, 300, 3)
        wait_until(lambda: prom.scalar(f'shardlog_consumer_group_lag_sum{{group="{group}"}}') == 2100, 30,
                   what="lag 2100 after 300 more records")
        consume_and_commit(b.bootstrap, topic, group, 1100)
        wait_until(lambda: prom.scalar(f'shardlog_consumer_group_lag_sum{{group="{group}"}}') == 0, 30,
                   what="lag 0 once the group caught up")
        # Consumer reads and the headroom are there too.
        assert prom.scalar(f'sum(shardlog_topic_bytes_out_total{{topic="{topic}"}})') > 0
        assert prom.scalar("min(shardlog_shard_headroom_partitions)") > 0
        assert prom.scalar("min(shardlog_shard_capacity_bytes_per_second)") > 0
        assert prom.scalar("shardlog_controller_active") == 1
        assert prom.scalar("shardlog_under_replicated_partitions") == 0
    finally:
        prom.stop()


def test_the_page_is_valid_and_bounded(broker_factory):
    port = free_port()
    b = broker_factory(sets={"metrics.listen": f"127.0.0.1:{port}", "metrics.partition.series.max": 4,
                             "metrics.topic.series.max": 2, "num.partitions": 1})
    topics = [unique_topic(f"bounded{i}") for i in range(3)]
    for t in topics:
        create_topic(b.bootstrap, t, 4)
        produce(b.bootstrap, t, 40, 4)
    status, text = http_get("127.0.0.1", port, "/metrics")
    assert status == 200
    samples = parse_metrics(text)
    # At most 4 partitions of the node get per-partition series (2 per shard
    # at the default 2 shards, or 4 on one); the rest count in the sums.
    listed = {dict(ls).get("topic") + "-" + dict(ls).get("partition")
              for (n, ls) in samples if n == "shardlog_partition_records_in_total"}
    assert 0 < len(listed) <= 4, listed
    assert value(samples, "shardlog_metrics_partitions_unlisted") > 0
    # Topic series are capped per shard too; nothing is lost from the sums.
    assert value(samples, "shardlog_produce_records_total") >= 120
    topic_sum = value(samples, "shardlog_topic_records_in_total")
    assert topic_sum >= 120, topic_sum
    topic_labels = {dict(ls)["topic"] for (n, ls) in samples if n == "shardlog_topic_records_in_total"}
    assert "_other" in topic_labels, topic_labels


def test_health_ready_and_what_else_the_port_answers(metrics_broker):
    b, port = metrics_broker
    assert http_get("127.0.0.1", port, "/health") == (200, "ok\n")
    assert http_get("127.0.0.1", port, "/ready") == (200, "ready\n")
    assert http_get("127.0.0.1", port, "/nope")[0] == 404
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 405 ")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 20000 + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"HEAD /health HTTP/1.1\r\n\r\n")
        head = s.recv(1000)
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n"), head


def test_a_malformed_or_taken_metrics_address_refuses_start(tmp_path):
    for bad in ("nonsense", "127.0.0.1:99999"):
        r = subprocess.run([str(broker_bin()), "--listen", f"127.0.0.1:{free_port()}", "--data-dir",
                            str(tmp_path / "d1"), "--set", f"metrics.listen={bad}"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0
        lines = [l for l in (r.stdout + r.stderr).splitlines() if "metrics.listen" in l]
        assert len(lines) == 1, r.stderr
    # An address another process holds, set explicitly: refused with one line.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        r = subprocess.run([str(broker_bin()), "--listen", f"127.0.0.1:{free_port()}", "--data-dir",
                            str(tmp_path / "d2"), "--set", f"metrics.listen=127.0.0.1:{taken}"],
                           capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "cannot listen on metrics.listen" in r.stderr, r.stderr


def test_slow_and_hostile_metrics_clients_cannot_stall_the_broker(broker_factory):
    port = free_port()
    b = broker_factory(sets={"metrics.listen": f"127.0.0.1:{port}", "metrics.connections.max": 4,
                             "metrics.request.timeout.ms": 2000})
    metrics_addr(b)
    topic = unique_topic("hostile")
    create_topic(b.bootstrap, topic, 2)
    idle = []
    try:
        # Four silent connections take every slot; a fifth is closed at accept.
        for _ in range(4):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        extra.sendall(b"GET /health HTTP/1.1\r\n\r\n")
        extra.settimeout(5)
        try:
            assert extra.recv(100) == b""
        except ConnectionResetError:
            pass
        extra.close()
        # Meanwhile the Kafka port serves as ever.
        produce(b.bootstrap, topic, 2000, 2)
        # The silent ones are cut at metrics.request.timeout.ms; then the
        # endpoint answers again.
        wait_until(lambda: health_ok(port), 15, what="/health after the silent clients were cut")
        # A slow-loris client dribbling its request head is cut at the timeout.
        loris = socket.create_connection(("127.0.0.1", port), timeout=10)
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 10:
            try:
                loris.sendall(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        held_s = time.monotonic() - t0
        loris.close()
        assert closed and held_s >= 1.5, f"a client dribbling its request: closed={closed} after {held_s:.1f}s"
        # A client that asks for /metrics and never reads holds only itself.
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(("127.0.0.1", port))
        reader.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        produce(b.bootstrap, topic, 2000, 2)
        status, text = http_get("127.0.0.1", port, "/metrics")
        assert status == 200
        samples = parse_metrics(text)
        assert value(samples, "shardlog_metrics_connections_refused_total") >= 1
        assert value(samples, "shardlog_produce_records_total") >= 4000
        reader.close()
    finally:
        for s in idle:
            s.close()


def test_json_logs_are_one_object_per_line_with_shard_and_partition(broker_factory):
    b = broker_factory(sets={"log.format": "json", "metrics.listen": f"127.0.0.1:{free_port()}"})
    topic = unique_topic("jsonlog")
    create_topic(b.bootstrap, topic, 1, config={"max.message.bytes": "1000"})
    p = Producer({"bootstrap.servers": b.bootstrap, "message.timeout.ms": 5000, "retries": 0})
    results = []
    p.produce(topic, value=b"small", on_delivery=lambda err, m: results.append(err))
    p.flush(30)
    # Larger than the topic allows: refused, and the refusal names the partition.
    p.produce(topic, value=b"x" * 5000, on_delivery=lambda err, m: results.append(err))
    p.flush(30)
    assert len(results) == 2 and results[0] is None and results[1] is not None, results
    b.stop()

    def events_of(text):
        return [json.loads(line) for line in text.splitlines() if line.strip() and not line.startswith("=== ")]

    events = events_of(b.log_text())  # every line is one JSON object
    assert all({"ts", "level", "target", "message"} <= set(e) for e in events), events[:3]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", e["ts"]) for e in events)
    listening = [e for e in events if e["message"].startswith("listening on")]
    assert listening and all(e["shard"] == 0 for e in listening), listening
    stopped = {e["shard"] for e in events if e["message"] == "shard stopped"}
    assert stopped == set(range(len(stopped))) and stopped, stopped
    refused = [e for e in events if e.get("partition") == f"{topic}-0" and "refused" in e["message"]]
    assert refused and refused[0]["level"] == "WARN", [e for e in events if e["level"] == "WARN"]


def node_metrics(node):
    try:
        status, text = http_get("127.0.0.1", node.metrics_port, "/metrics", timeout=10)
    except OSError:
        return None
    return parse_metrics(text) if status == 200 else None


def test_cluster_state_under_replication_and_isr_changes(tmp_path):
    """3 nodes, a topic on all of them: killing one shows under-replicated
    partitions and ISR shrinks on the leaders, one active controller and no
    offline partition; its return brings the ISR back (expands) and the
    under-replicated count to 0. Lag is reported by the group's coordinator
    from its node's replicas."""
    from cluster import Cluster
    c = Cluster(tmp_path, 3, sets={"replica.lag.time.max.ms": 2000, "offsets.topic.replication.factor": 3,
                                   "offsets.topic.num.partitions": 3}, shards=1)
    try:
        c.start_all()
        topic, group = unique_topic("cmetrics"), "cluster-lag"
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": c.bootstrap_of()})
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=3)],
                            request_timeout=30)[topic].result(timeout=40)
        c.wait(lambda: c.partitions_of(topic) and len(c.partitions_of(topic)) == 3, 30, "topic in metadata")
        produce(c.bootstrap_of(), topic, 300, 3)
        consume_and_commit(c.bootstrap_of(), topic, group, 40)

        def all_nodes(ids):
            got = {i: node_metrics(c.node(i)) for i in ids}
            return got if all(got.values()) else None

        got = wait_until(lambda: all_nodes([1, 2, 3]), 30, what="metrics from every node")
        assert sum(value(m, "shardlog_controller_active") for m in got.values()) == 1
        assert sum(value(m, "shardlog_partitions_led") for m in got.values()) >= 3 + 3
        assert all(value(m, "shardlog_under_replicated_partitions") == 0 for m in got.values())
        # The group's lag: 60 per partition, from whichever node coordinates it.
        wait_until(lambda: any(value(m, "shardlog_consumer_group_lag_sum", group=group) == 180
                               for m in (all_nodes([1, 2, 3]) or {}).values()), 30, what="lag 180")
        victim = 3
        c.kill(victim)
        live = [1, 2]

        def degraded():
            got = all_nodes(live)
            if not got:
                return None
            under = sum(value(m, "shardlog_under_replicated_partitions") for m in got.values())
            shrinks = sum(value(m, "shardlog_isr_changes_total", change="shrink") for m in got.values())
            return got if under > 0 and shrinks > 0 else None

        got = wait_until(degraded, 60, what="under-replicated partitions and ISR shrinks after a kill")
        active = [m for m in got.values() if value(m, "shardlog_controller_active") == 1]
        assert len(active) == 1
        assert value(active[0], "shardlog_offline_partitions") == 0
        c.node(victim).restart()

        def healed():
            got = all_nodes([1, 2, 3])
            if not got:
                return None
            under = sum(value(m, "shardlog_under_replicated_partitions") for m in got.values())
            expands = sum(value(m, "shardlog_isr_changes_total", change="expand") for m in got.values())
            return got if under == 0 and expands > 0 else None

        wait_until(healed, 60, what="ISR expanded and nothing under-replicated after the restart")
    finally:
        c.teardown()
