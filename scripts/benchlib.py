"""What the benchmark scripts share: a release broker on a free loopback port
with its own data dir, and shardlog-bench runs that return their JSON.

Import from a script in scripts/ with `sys.path.insert(0, str(Path(__file__).parent))`.
"""

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BROKER_BIN = Path(os.environ.get("SHARDLOG_BIN", REPO / "target/release/shardlog"))
BENCH_BIN = REPO / "target/release/shardlog-bench"
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine():
    return f"nproc {os.cpu_count()}, kernel {platform.release()}"


class Broker:
    """One broker process; its log (stdout and stderr) goes to WORK/broker.log."""

    def __init__(self, work, shards=None, sets=None, binary=BROKER_BIN):
        self.work = Path(work)
        self.data = self.work / "data"
        self.log_path = self.work / "broker.log"
        self.port = free_port()
        self.binary = binary
        self.shards = shards
        # Read at each start: a restart may change settings.
        self.sets = dict(sets or {})
        self.proc = None

    def args(self):
        args = [str(self.binary), "--listen", self.bootstrap, "--data-dir", str(self.data)]
        if self.shards:
            args += ["--shards", str(self.shards)]
        for key, value in self.sets.items():
            args += ["--set", f"{key}={value}"]
        return args

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s=600):
        """Starts the broker and waits for its "listening on" line; the
        seconds that took are in `start_s`."""
        self.work.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.run_log_offset = offset
        started = time.monotonic()
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"))
        while time.monotonic() - started < timeout_s:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                if b"listening on" in log.read():
                    self.start_s = time.monotonic() - started
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited at start: see {self.log_path}")
            time.sleep(0.02)
        raise RuntimeError(f"broker did not start within {timeout_s} s")

    def run_log(self):
        """The broker's log since its latest start."""
        with open(self.log_path, "rb") as log:
            log.seek(self.run_log_offset)
            return log.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout_s=600):
        """Seconds from the signal to the exit (its code: `proc.returncode`)."""
        if not self.proc or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.monotonic() - started

    def destroy(self):
        """Stops the broker and removes its data."""
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)

    def rss_bytes(self):
        return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * PAGE_BYTES

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def cpu_s(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(broker, *args, background=False):
    """Runs shardlog-bench against `broker` and returns its JSON "results";
    with `background`, returns at once a handle for `finish`."""
    out = Path(tempfile.mktemp(suffix=".json", dir=broker.work))
    cmd = [str(BENCH_BIN), *args, "--bootstrap", broker.bootstrap, "--quiet", "--json", str(out)]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return (proc, out, args) if background else finish((proc, out, args))


def finish(running):
    """Waits for a `bench(..., background=True)` run; returns its results."""
    proc, out, args = running
    stdout, _ = proc.communicate()
    sys.stderr.write(stdout.decode(errors="replace"))
    if proc.returncode != 0:
        raise RuntimeError(f"shardlog-bench failed: {args}")
    return json.loads(out.read_text())["results"]
