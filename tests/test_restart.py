"""A restarted broker serves the clients that reconnect the instant its port
accepts (issue 9, part 2).

Before the fix, the listening sockets of a killed broker stayed in LISTEN for
~10 ms after the process was reaped (its io_uring ring, torn down later by the
kernel, still held them through pending accepts): a client that reconnected at
once completed a handshake with the dead socket and was reset, and kcat gave up
with "All broker connections are down". Now a refused connect is the only thing
a client can meet before the new process listens, and it retries.
"""

import signal
import socket
import time

import pytest

from test_kcat import kcat

RECORDS = 20_000
ROUNDS = 20


def connect_the_instant_it_accepts(broker, timeout=20.0):
    """Spin on connect() until the port accepts; returns nothing, closes the probe."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((broker.host, broker.port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.001)
        assert broker.proc.poll() is None, f"broker exited during startup:\n{broker.run_log()[-4000:]}"
    raise AssertionError(f"port {broker.port} did not accept within {timeout}s")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_consumer_started_the_instant_the_port_accepts_reads_every_record(broker_factory, sig):
    broker = broker_factory()
    topic = "restarted"
    lines = "".join(f"{i}\n" for i in range(RECORDS)).encode()
    kcat("-b", broker.bootstrap, "-P", "-t", topic, "-X", "acks=all", input=lines)
    for round_ in range(ROUNDS):
        assert broker.reap(sig) in (-sig, 0), f"round {round_}: exit code {broker.proc.returncode}"
        broker.spawn()
        connect_the_instant_it_accepts(broker)
        out, _ = kcat("-b", broker.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q")
        got = out.splitlines()
        assert got == [str(i) for i in range(RECORDS)], (
            f"round {round_} after {sig.name}: read {len(got)} of {RECORDS} records"
        )
