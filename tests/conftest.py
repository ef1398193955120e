"""Shared fixtures for the shardlog end-to-end tests.

`broker_factory(...)` starts the real broker binary on a free 127.0.0.1 port
with a temporary data directory and returns a `Broker` handle; `broker` is a
broker with default settings. Every wait is bounded. On teardown only the
processes started here are signalled (by PID), and the broker log is printed
when a test using it failed.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_BIN = REPO / "target" / "release" / "shardlog"
START_TIMEOUT = 20.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LISTEN = re.compile(r"listening on\s+(?:\w+://)?\[?([^\s\]]+?)\]?:(\d+)")


def broker_bin() -> Path:
    return Path(os.environ.get("SHARDLOG_BIN", str(DEFAULT_BIN)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def held_sockets(port):
    """TCP sockets on this machine whose local port is `port` and that are not in
    TIME_WAIT (/proc/net/tcp*): what a stopped process may still hold."""
    held = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] != "06":
                        held.append((parts[1], parts[2], parts[3]))
        except FileNotFoundError:
            continue
    return held


class BrokerStartError(RuntimeError):
    pass


class Broker:
    """One broker instance (across restarts: same port, same data dir)."""

    def __init__(self, data_dir: Path, log_path: Path, sets=None, shards=None, extra_args=(), port=None):
        self.bin = broker_bin()
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.sets = dict(sets or {})
        self.shards = shards
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.proc = None
        self.starts = 0
        self.run_log_offset = 0  # byte offset in log_path where the current run starts
        self.exit_codes = []

    # --- properties -----------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def args(self):
        a = [str(self.bin), "--listen", f"{self.host}:{self.port}", "--data-dir", str(self.data_dir)]
        if self.shards is not None:
            a += ["--shards", str(self.shards)]
        for k, v in self.sets.items():
            a += ["--set", f"{k}={v}"]
        return a + self.extra_args

    # --- logs -----------------------------------------------------------------
    def log_text(self) -> str:
        """The whole log of every run of this broker (ANSI colour stripped)."""
        try:
            return _ANSI.sub("", self.log_path.read_bytes().decode("utf-8", "replace"))
        except FileNotFoundError:
            return ""

    def run_log(self) -> str:
        """Only the log of the current (latest) run."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.run_log_offset)
                return _ANSI.sub("", f.read().decode("utf-8", "replace"))
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_log_growth(self, since: int, timeout=5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_size() > since:
                return True
            time.sleep(0.05)
        return self.log_size() > since

    # --- lifecycle ------------------------------------------------------------
    def spawn(self):
        """Start the process and return at once, without waiting for it to serve."""
        if self.alive():
            raise RuntimeError("broker already running")
        if not self.bin.exists():
            raise BrokerStartError(f"broker binary not found: {self.bin} (build with cargo build --release -p shardlog)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.run_log_offset = self.log_size()
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")
        env.setdefault("RUST_BACKTRACE", "1")
        logf = open(self.log_path, "ab")
        logf.write(f"=== start #{self.starts}: {' '.join(self.args())}\n".encode())
        logf.flush()
        self.run_log_offset = self.log_size()
        try:
            self.proc = subprocess.Popen(self.args(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=str(self.data_dir.parent))
        finally:
            logf.close()

    def start(self, timeout=START_TIMEOUT):
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.run_log()
            m = _LISTEN.search(log)
            if m or "listening on" in log:
                port = int(m.group(2)) if m else self.port
                if port != self.port:
                    raise BrokerStartError(f"broker listens on {port}, asked for {self.port}")
                # the log line may precede accept(); make sure the port answers
                if self._port_open(deadline):
                    return self
            if self.proc.poll() is not None:
                log, socks = self.run_log(), self._sockets()
                hint = ""
                if "already in use" in log.lower() and re.search(rf"TIME-WAIT\s+\d+\s+\d+\s+\S+:{self.port}\s", socks):
                    hint = ("\nhint: a TIME_WAIT connection of the previous run (local port = broker port) holds the "
                            "address; a broker restarting on its port needs SO_REUSEADDR on its listening socket")
                raise BrokerStartError(f"broker exited with code {self.proc.returncode} during startup:\n"
                                       f"{log[-8000:]}\nsockets on port {self.port}:\n{socks}{hint}")
            time.sleep(0.05)
        self._hard_kill()
        raise BrokerStartError(f"broker did not log 'listening on' within {timeout}s:\n{self.run_log()[-8000:]}")

    def _sockets(self) -> str:
        """`ss` lines for our port (diagnostics for 'address in use')."""
        try:
            out = subprocess.run(["ss", "-tanpo"], capture_output=True, text=True, timeout=10).stdout
        except Exception as e:  # ss missing: not essential
            return f"(ss unavailable: {e})"
        return "\n".join(l for l in out.splitlines() if f":{self.port} " in l) or "(none)"

    def _port_open(self, deadline) -> bool:
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self, sig=signal.SIGTERM, timeout=30.0) -> int:
        """Send `sig` to the broker PID and wait (bounded) for it to exit.
        Returns the exit code; raises if it did not exit in time (after killing it)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._hard_kill()
                raise AssertionError(f"broker pid {self.proc.pid} did not exit within {timeout}s after {sig!r}")
        self.exit_codes.append(self.proc.returncode)
        self._wait_port_released()
        return self.proc.returncode

    def reap(self, sig):
        """Send `sig` and wait (bounded) for the process to exit, nothing more:
        unlike stop() and kill9(), do not wait for the kernel to release the port."""
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.exit_codes.append(self.proc.returncode)
        return self.proc.returncode

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.exit_codes.append(self.proc.returncode)
        self._wait_port_released()

    def _held_sockets(self):
        """What the old broker process still holds on our port (see held_sockets)."""
        return held_sockets(self.port)

    def _wait_port_released(self, timeout=10.0):
        """After the PID is reaped the kernel may still hold its sockets for a few
        ms (io_uring tears down asynchronously; ~5-7 ms measured here). Wait
        (bounded) until no socket but TIME_WAIT ones uses the port, so a restart
        tests the broker and not that race. TIME_WAIT leftovers are not waited
        for: a broker restarting on its port must cope with them (SO_REUSEADDR)."""
        deadline = time.monotonic() + timeout
        while self._held_sockets():
            if time.monotonic() > deadline:
                raise AssertionError(f"port {self.port} still in use {timeout}s after broker pid {self.pid} exited:\n"
                                     f"{self._sockets()}")
            time.sleep(0.005)

    def _hard_kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
            except Exception:
                pass

    def restart(self, timeout=START_TIMEOUT):
        """Start again on the same port and data dir (after stop() or kill9())."""
        if self.alive():
            self.stop()
        return self.start(timeout=timeout)

    def __repr__(self):
        return f"<Broker {self.bootstrap} pid={self.pid} data={self.data_dir}>"


def _dump_logs(brokers, header):
    for b in brokers:
        text = b.log_text()
        if len(text) > 60000:
            text = "... (truncated) ...\n" + text[-60000:]
        sys.stderr.write(f"\n===== {header}: broker log {b!r} ({b.log_path}) =====\n{text}\n===== end broker log =====\n")


def _make_factory(request, tmp_path_factory, name):
    brokers = []
    failed_before = request.session.testsfailed

    def factory(sets=None, shards=None, extra_args=(), start=True, **kw_sets):
        """broker_factory(sets={'num.partitions': 6}) or broker_factory(num_partitions=6):
        keyword arguments become --set keys with '_' replaced by '.'."""
        all_sets = dict(sets or {})
        for k, v in kw_sets.items():
            all_sets[k.replace("_", ".")] = v
        base = tmp_path_factory.mktemp(f"{name}-broker")
        b = Broker(base / "data", base / "broker.log", sets=all_sets, shards=shards, extra_args=extra_args)
        brokers.append(b)
        if start:
            b.start()
        return b

    yield factory

    failed = request.session.testsfailed > failed_before or getattr(request.node, "_shardlog_failed", False)
    for b in brokers:
        if b.alive():
            try:
                b.stop(signal.SIGTERM, timeout=15)
            except AssertionError as e:
                sys.stderr.write(f"\n{e}\n")
                failed = True
    if failed:
        _dump_logs(brokers, f"failure in {request.node.nodeid}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        item._shardlog_failed = True


@pytest.fixture
def broker_factory(request, tmp_path_factory):
    yield from _make_factory(request, tmp_path_factory, request.node.name[:40].replace("/", "_"))


@pytest.fixture(scope="module")
def module_broker_factory(request, tmp_path_factory):
    yield from _make_factory(request, tmp_path_factory, request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture
def broker(broker_factory):
    return broker_factory()


# --- helpers shared by tests ---------------------------------------------------


def wait_until(pred, timeout, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    last = pred()
    if last:
        return last
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def unique_topic(prefix="t"):
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


@pytest.fixture
def admin(broker):
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def create_topic(bootstrap, name, partitions, timeout=30.0, config=None):
    from confluent_kafka.admin import AdminClient, NewTopic
    a = AdminClient({"bootstrap.servers": bootstrap})
    fs = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
                         operation_timeout=timeout, request_timeout=timeout)
    fs[name].result(timeout=timeout)
    wait_until(lambda: _partition_count(a, name) == partitions, timeout, what=f"topic {name} with {partitions} partitions in metadata")
    return a


def _partition_count(admin, name):
    md = admin.list_topics(topic=name, timeout=10)
    t = md.topics.get(name)
    if t is None or t.error is not None:
        return -1
    return len(t.partitions)
