"""A multi-node shardlog cluster on loopback, for tests/test_cluster.py.

`Cluster(base_dir, n)` prepares N nodes (node ids 1..N), each with its own
Kafka port, CONTROLLER port, data dir and log; every node has
process.roles=broker,controller (the default) and they share one
controller.quorum.voters string and one cluster.id. `start_all()` spawns every
node first and only then waits for their Kafka ports (a broker may wait for
the quorum before it listens, so starting them one by one could deadlock),
then waits until every live node's Metadata agrees on the brokers and on one
active controller.

Also here: raw-socket requests the tests need at a precise version or sent to
one precise node (Metadata v7 for leader epochs, CreateTopics v2,
FindCoordinator v1, Fetch v4), built on kafka_raw, and Kafka's group ->
`__consumer_offsets` partition mapping.

Every wait is bounded; failures carry each node's log tail.
"""

import base64
import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import kafka_raw as kr
from conftest import START_TIMEOUT, Broker, BrokerStartError, _LISTEN, free_port, held_sockets

# Short failure detection so the tests run in seconds, not minutes.
SESSION_TIMEOUT_MS = 3000
HEARTBEAT_MS = 500
ELECTION_TIMEOUT_MS = 1000
CLUSTER_SETS = {
    "broker.session.timeout.ms": SESSION_TIMEOUT_MS,
    "broker.heartbeat.interval.ms": HEARTBEAT_MS,
    "controller.quorum.election.timeout.ms": ELECTION_TIMEOUT_MS,
    # group tests: a quick first rebalance, short client sessions allowed
    "group.initial.rebalance.delay.ms": 300,
    "group.min.session.timeout.ms": 1000,
}
# Executors per node: explicit, so N nodes on a many-core machine stay light.
DEFAULT_SHARDS = int(os.environ.get("SHARDLOG_CLUSTER_SHARDS", "2"))
CLUSTER_START_TIMEOUT = float(os.environ.get("SHARDLOG_CLUSTER_START_TIMEOUT", "60"))

OFFSETS_TOPIC = "__consumer_offsets"
LOG_TAIL_LINES = 40

# error codes used by the tests
NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
LEADER_NOT_AVAILABLE = 5
NOT_LEADER_OR_FOLLOWER = 6
REQUEST_TIMED_OUT = 7
TOPIC_ALREADY_EXISTS = 36
INVALID_REPLICATION_FACTOR = 38
NOT_CONTROLLER = 41
ERROR_NAMES = {
    0: "NONE", 3: "UNKNOWN_TOPIC_OR_PARTITION", 5: "LEADER_NOT_AVAILABLE", 6: "NOT_LEADER_OR_FOLLOWER",
    7: "REQUEST_TIMED_OUT", 15: "COORDINATOR_NOT_AVAILABLE", 36: "TOPIC_ALREADY_EXISTS",
    37: "INVALID_PARTITIONS", 38: "INVALID_REPLICATION_FACTOR", 41: "NOT_CONTROLLER", 74: "FENCED_LEADER_EPOCH",
}

FIND_COORDINATOR = 10


def error_name(code):
    return f"{ERROR_NAMES.get(code, 'ERROR')}({code})"


def new_cluster_id() -> str:
    """Kafka's cluster id format: a random UUID, base64url without padding (22 chars)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def java_string_hash(s: str) -> int:
    """java.lang.String.hashCode (over UTF-16 code units, 32-bit wrap)."""
    data = s.encode("utf-16-be")
    h = 0
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i:i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def offsets_partition_for(group: str, num_partitions: int) -> int:
    """Kafka: Utils.abs(groupId.hashCode) % offsets.topic.num.partitions."""
    h = java_string_hash(group)
    return (0 if h == -(1 << 31) else abs(h)) % num_partitions


def _distinct_free_ports(n):
    ports = []
    for _ in range(50 * n):
        p = free_port()
        if p not in ports:
            ports.append(p)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"could not find {n} distinct free ports")


def tail(text: str, lines=LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --- raw requests (one node, one precise version) ------------------------------------


def metadata(bootstrap, topics=None, timeout=5.0):
    """Metadata v7 (the first version with leader epochs) from exactly this node.
    Returns {"brokers": {id: (host, port)}, "cluster_id", "controller_id",
    "topics": {name: {"error_code", "partitions": {index: {...}}}}}."""
    body = (kr.array(topics, kr.string) if topics is not None else kr.int32(-1)) + kr.int8(0)
    with kr.Conn(bootstrap, timeout=timeout) as c:
        r = c.request(kr.METADATA, 7, body)
    r.int32()  # throttle_time_ms
    brokers = r.array(lambda r: (r.int32(), r.string(), r.int32(), r.string()))
    cluster_id = r.string()
    controller_id = r.int32()

    def part(r):
        return {
            "error_code": r.int16(),
            "partition": r.int32(),
            "leader": r.int32(),
            "leader_epoch": r.int32(),
            "replicas": r.array(lambda r: r.int32()),
            "isr": r.array(lambda r: r.int32()),
            "offline": r.array(lambda r: r.int32()),
        }

    def topic(r):
        err, name, internal = r.int16(), r.string(), r.bool()
        parts = r.array(part) or []
        return name, {"error_code": err, "is_internal": internal, "partitions": {p["partition"]: p for p in parts}}

    topics_out = dict(r.array(topic) or [])
    return {
        "brokers": {b[0]: (b[1], b[2]) for b in brokers or []},
        "cluster_id": cluster_id,
        "controller_id": controller_id,
        "topics": topics_out,
    }


def leaders(md, topic):
    """{partition: (leader, leader_epoch)} of `topic` in a metadata() answer."""
    t = md["topics"].get(topic)
    if t is None or t["error_code"] != 0:
        return None
    return {p: (v["leader"], v["leader_epoch"]) for p, v in sorted(t["partitions"].items())}


def create_topics_raw(bootstrap, topics, timeout_ms=10000, validate_only=False, sock_timeout=30.0):
    """CreateTopics v2 sent to exactly this node. topics: [(name, partitions, replication_factor)].
    Returns {name: (error_code, error_message)}."""

    def enc(t):
        name, parts, rf = t
        return (kr.string(name) + kr.int32(parts) + kr.int16(rf)
                + kr.array([], lambda a: b"")  # assignments
                + kr.array([], lambda c: b""))  # configs

    body = kr.array(topics, enc) + kr.int32(timeout_ms) + kr.int8(1 if validate_only else 0)
    with kr.Conn(bootstrap, timeout=sock_timeout) as c:
        r = c.request(kr.CREATE_TOPICS, 2, body)
    r.int32()  # throttle
    out = r.array(lambda r: (r.string(), r.int16(), r.string()))
    return {name: (code, msg) for name, code, msg in out}


def find_coordinator(bootstrap, group, timeout=10.0):
    """FindCoordinator v1 (group) sent to exactly this node -> (error_code, node_id, host, port)."""
    with kr.Conn(bootstrap, timeout=timeout) as c:
        r = c.request(FIND_COORDINATOR, 1, kr.string(group) + kr.int8(0))
    r.int32()  # throttle
    err = r.int16()
    r.string()  # error message
    return err, r.int32(), r.string(), r.int32()


def fetch_error(bootstrap, topic, partition, offset=0, timeout=10.0):
    """Fetch v4 of one partition from exactly this node -> (error_code, high_watermark)."""
    body = (kr.int32(-1) + kr.int32(100) + kr.int32(1) + kr.int32(1 << 20) + kr.int8(0)
            + kr.array([topic], lambda t: kr.string(t) + kr.array(
                [partition], lambda p: kr.int32(p) + kr.int64(offset) + kr.int32(1 << 20))))
    with kr.Conn(bootstrap, timeout=timeout) as c:
        r = c.request(kr.FETCH, 4, body)
    r.int32()  # throttle
    n_topics = r.int32()
    assert n_topics == 1, f"fetch answered {n_topics} topics"
    assert r.string() == topic
    n_parts = r.int32()
    assert n_parts == 1, f"fetch answered {n_parts} partitions"
    got = r.int32()
    assert got == partition
    return r.int16(), r.int64()


def produce_error(bootstrap, topic, partition, value=b"probe", timeout=10.0):
    """Produce v3 (acks=all) of one record to exactly this node -> error code."""
    with kr.Conn(bootstrap, timeout=timeout) as c:
        resp = c.produce(topic, partition, kr.record_batch([(b"probe", value)]), acks=-1)
    return resp["partitions"][(topic, partition)]["error_code"]


def kcat_metadata(bootstrap, topic=None, timeout=30):
    """`kcat -L -J` against one bootstrap node: librdkafka's view, as JSON."""
    from test_kcat import kcat

    args = ["-b", bootstrap, "-L", "-J", "-m", "10"]
    if topic:
        args += ["-t", topic]
    out, _ = kcat(*args, timeout=timeout)
    return json.loads(out)


def describe_cluster(bootstrap, timeout=5.0):
    """AdminClient.describe_cluster -> (controller id or None, sorted node ids, cluster id)."""
    from confluent_kafka.admin import AdminClient

    a = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 2000})
    r = a.describe_cluster(request_timeout=timeout).result(timeout=timeout + 5)
    return (r.controller.id if r.controller is not None else None), sorted(n.id for n in r.nodes), r.cluster_id


# --- nodes --------------------------------------------------------------------------


class ClusterNode(Broker):
    """One node (broker+controller) of a Cluster: the conftest Broker plus a
    CONTROLLER port. start() only waits for the *Kafka* listener line (the
    controller logs 'controller listening on' for its own port)."""

    def __init__(self, node_id, data_dir, log_path, port, ctrl_port, sets, shards=None):
        super().__init__(data_dir, log_path, sets=sets, shards=shards, port=port)
        self.node_id = node_id
        self.ctrl_port = ctrl_port

    def start(self, timeout=START_TIMEOUT):
        self.spawn()
        return self.wait_listening(timeout)

    def kafka_listening(self) -> bool:
        return any(int(m.group(2)) == self.port for m in _LISTEN.finditer(self.run_log()))

    def wait_listening(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kafka_listening() and self._port_open(deadline):
                return self
            if self.proc.poll() is not None:
                raise BrokerStartError(f"node {self.node_id} exited with code {self.proc.returncode} during startup:\n"
                                       f"{tail(self.run_log(), 80)}")
            time.sleep(0.05)
        raise BrokerStartError(f"node {self.node_id} did not log 'listening on {self.host}:{self.port}' within "
                               f"{timeout:.0f}s:\n{tail(self.run_log(), 80)}")

    def _wait_port_released(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        for port in (self.port, self.ctrl_port):
            while held_sockets(port):
                if time.monotonic() > deadline:
                    raise AssertionError(f"node {self.node_id}: port {port} still in use {timeout}s after pid "
                                         f"{self.pid} exited: {held_sockets(port)}")
                time.sleep(0.005)

    def __repr__(self):
        return (f"<node {self.node_id} kafka {self.bootstrap} controller {self.host}:{self.ctrl_port} "
                f"pid={self.pid} data={self.data_dir}>")


class Cluster:
    def __init__(self, base_dir: Path, n: int, sets=None, shards=DEFAULT_SHARDS, cluster_id=None):
        self.base_dir = Path(base_dir)
        self.cluster_id = cluster_id or new_cluster_id()
        ports = _distinct_free_ports(3 * n)
        kafka_ports, ctrl_ports, metrics_ports = ports[:n], ports[n:2 * n], ports[2 * n:]
        self.voters = ",".join(f"{i + 1}@127.0.0.1:{ctrl_ports[i]}" for i in range(n))
        self.nodes = []
        for i in range(n):
            node_id = i + 1
            node_sets = {
                "node.id": node_id,
                "listeners": f"PLAINTEXT://127.0.0.1:{kafka_ports[i]},CONTROLLER://127.0.0.1:{ctrl_ports[i]}",
                "controller.quorum.voters": self.voters,
                "cluster.id": self.cluster_id,
                "metrics.listen": f"127.0.0.1:{metrics_ports[i]}",
                **CLUSTER_SETS,
                **(sets or {}),
            }
            d = self.base_dir / f"node-{node_id}"
            self.nodes.append(ClusterNode(node_id, d / "data", d / "shardlog.log", kafka_ports[i], ctrl_ports[i],
                                          node_sets, shards=shards))
            self.nodes[-1].metrics_port = metrics_ports[i]

    # --- lookups ------------------------------------------------------------------
    def node(self, node_id) -> ClusterNode:
        return self.nodes[node_id - 1]

    def ids(self):
        return [n.node_id for n in self.nodes]

    def alive_ids(self):
        return [n.node_id for n in self.nodes if n.alive()]

    def bootstrap_of(self, ids=None) -> str:
        ids = self.ids() if ids is None else ids
        return ",".join(self.node(i).bootstrap for i in ids)

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_of()

    @property
    def live_bootstrap(self) -> str:
        return self.bootstrap_of(self.alive_ids())

    # --- diagnostics ----------------------------------------------------------------
    def tails(self, lines=LOG_TAIL_LINES) -> str:
        out = []
        for n in self.nodes:
            state = "running" if n.alive() else f"exited {n.proc.returncode}" if n.proc else "never started"
            out.append(f"--- {n!r} [{state}] last {lines} log lines ---\n{tail(n.run_log(), lines)}")
        return "\n".join(out)

    def fail(self, msg):
        raise AssertionError(f"{msg}\n{self.tails()}")

    def wait(self, pred, timeout, what, interval=0.2, state=None):
        """wait_until with node log tails (and `state()`, the last thing seen) in the failure message."""
        deadline = time.monotonic() + timeout
        while True:
            got = pred()
            if got:
                return got
            if time.monotonic() > deadline:
                seen = f"\nlast seen: {state()}" if state else ""
                self.fail(f"timed out after {timeout}s waiting for {what}{seen}")
            time.sleep(interval)

    # --- lifecycle --------------------------------------------------------------------
    def start_all(self, timeout=CLUSTER_START_TIMEOUT, ids=None):
        """Spawn every given (default: every stopped) node, then wait for their
        Kafka listeners, then for agreement on brokers and controller.
        Returns the active controller id."""
        todo = [self.node(i) for i in (ids or self.ids()) if not self.node(i).alive()]
        for n in todo:
            n.spawn()
        deadline = time.monotonic() + timeout
        for n in todo:
            try:
                n.wait_listening(max(1.0, deadline - time.monotonic()))
            except BrokerStartError as e:
                self.fail(f"cluster start: {e}")
        return self.wait_ready(timeout=max(5.0, deadline - time.monotonic()))

    def metadata_views(self, ids=None, topics=None, timeout=3.0):
        """{node id: metadata() from that node, or the exception it raised}."""
        views = {}
        for i in ids or self.alive_ids():
            try:
                views[i] = metadata(self.node(i).bootstrap, topics=topics, timeout=timeout)
            except Exception as e:  # noqa: BLE001 - a node being down is data here
                views[i] = e
        return views

    def wait_ready(self, timeout=CLUSTER_START_TIMEOUT, ids=None, exact_brokers=None):
        """Wait until every node in `ids` (default: the live ones) answers
        Metadata listing (at least) those brokers, the configured cluster.id and
        the same controller id, one of `ids`. With exact_brokers (default: when
        every node is in `ids`) the broker list must be exactly `ids`.
        Returns the controller id."""
        ids = sorted(ids or self.alive_ids())
        want = set(ids)
        exact = (want == set(self.ids())) if exact_brokers is None else exact_brokers
        last = {}

        def check():
            for i in ids:
                if not self.node(i).alive():
                    self.fail(f"node {i} exited (code {self.node(i).proc.returncode}) while waiting for the cluster")
            views = self.metadata_views(ids, topics=[])
            ctrls = set()
            for i, md in views.items():
                if isinstance(md, Exception):
                    last[i] = repr(md)
                    return None
                listed = set(md["brokers"])
                last[i] = f"brokers {sorted(listed)}, controller {md['controller_id']}, cluster {md['cluster_id']}"
                if md["cluster_id"] != self.cluster_id:
                    self.fail(f"node {i} reports cluster id {md['cluster_id']!r}, configured {self.cluster_id!r}")
                if (listed != want) if exact else not (want <= listed <= set(self.ids())):
                    return None
                ctrls.add(md["controller_id"])
            # As KRaft brokers do, each node names itself as the controller
            # clients should use (it forwards admin requests); which node
            # is the active controller its log says.
            if any(i not in listed for i in ctrls) and exact:
                return None
            active = self.active_controller(ids)
            last["active controller (logs)"] = active
            return active if active in want else None

        return self.wait(check, timeout, f"nodes {ids} to agree on brokers {'==' if exact else '>='} {ids} and "
                                         f"one live controller", state=lambda: last)

    def partitions_of(self, name, ids=None, timeout=3.0):
        """{partition: metadata() partition dict} of topic `name` from the first
        node in `ids` (default: the live ones) that answers, or None."""
        for i in ids or self.alive_ids():
            try:
                md = metadata(self.node(i).bootstrap, topics=[name], timeout=timeout)
            except Exception:  # noqa: BLE001 - a node being down is data here
                continue
            t = md["topics"].get(name)
            if t and t["error_code"] == 0:
                return t["partitions"]
        return None

    def active_controller(self, ids=None):
        """The node whose log last said 'became active controller' (highest
        term) among `ids` (default: the live ones), or None."""
        best = None
        for i in ids or self.alive_ids():
            for m in re.finditer(r"became active controller \(node (\d+), term (\d+)\)", self.node(i).run_log()):
                term = int(m.group(2))
                if best is None or term > best[0]:
                    best = (term, int(m.group(1)))
        return best[1] if best else None

    def controller_id(self, ids=None, timeout=30.0):
        return self.wait_ready(timeout=timeout, ids=ids, exact_brokers=False)

    def kill(self, node_id):
        """SIGKILL one node (by its PID) and wait until it and its ports are gone."""
        self.node(node_id).kill9()

    def stop_all(self, sig=signal.SIGTERM, timeout=30.0):
        """Signal every live node at once, then wait (bounded) for each.
        Returns {node id: exit code}."""
        live = [n for n in self.nodes if n.alive()]
        for n in live:
            n.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        codes, stuck = {}, []
        for n in live:
            try:
                n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stuck.append(n)
                continue
            n.exit_codes.append(n.proc.returncode)
            codes[n.node_id] = n.proc.returncode
        for n in stuck:
            n._hard_kill()
        if stuck:
            self.fail(f"nodes {[n.node_id for n in stuck]} did not exit within {timeout}s after {sig!r} "
                      f"(killed with SIGKILL)")
        for n in live:
            n._wait_port_released()
        return codes

    def teardown(self, timeout=15.0) -> str:
        """Stop every node this cluster started (SIGTERM, then SIGKILL); never raises.
        Returns a note about anything that needed SIGKILL."""
        live = [n for n in self.nodes if n.alive()]
        for n in live:
            try:
                n.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        notes = []
        for n in live:
            try:
                code = n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                notes.append(f"node {n.node_id} (pid {n.pid}) ignored SIGTERM for {timeout}s: SIGKILLed")
                n._hard_kill()
                continue
            if code != 0:
                notes.append(f"node {n.node_id} (pid {n.pid}) exited {code} on SIGTERM at teardown")
        return "\n".join(notes)


def wait_exit(proc, timeout):
    """Wait (bounded) for a process to exit; returns its code or None."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def error_lines(log: str):
    """Log lines at ERROR level (tracing's format: '<time> ERROR <target>: msg')."""
    return [l for l in log.splitlines() if re.search(r"\bERROR\b", l)]
