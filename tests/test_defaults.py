"""The README's start command: defaults with a relative data dir (./data)."""

import subprocess
import time

from conftest import broker_bin, free_port


def test_relative_data_dir_serves_produce_and_consume(tmp_path):
    port = free_port()
    log = tmp_path / "broker.log"
    proc = subprocess.Popen([str(broker_bin()), "--listen", f"127.0.0.1:{port}", "--data-dir", "data"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        deadline = time.monotonic() + 20
        while b"listening on" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        bs = f"127.0.0.1:{port}"
        subprocess.run(["kcat", "-b", bs, "-t", "rel", "-P"], input=b"hello\n", check=True, timeout=30)
        out = subprocess.run(["kcat", "-b", bs, "-t", "rel", "-C", "-e", "-q"], capture_output=True,
                             check=True, timeout=30).stdout
        assert out == b"hello\n", log.read_text()
        assert (tmp_path / "data" / "rel-0").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
