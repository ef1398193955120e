"""`shardlog tune`, the production profiles and the systemd unit in tuning/.

- `tune --check --json` reports what this test reads from /proc and /sys itself.
- `tune --apply` changes a setting once and is then idempotent, inside a new
  network namespace (net.core.somaxconn is per namespace), so the host is
  not touched.
- Every profile loads and serves a record through the real broker.
- The unit's limits cover the broker's need, its ExecStart serves a record
  under those limits, its ExecStartPre's check runs, and `systemd-analyze
  verify` accepts it when systemd-analyze is installed.

Every wait is bounded; only processes started here are signalled, by PID.
"""

import configparser
import json
import math
import os
import re
import resource
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from clients import confluent_consume_all, confluent_produce
from conftest import REPO, Broker, broker_bin, free_port

TUNING = REPO / "tuning"
PROFILES = ["throughput", "low-latency", "many-partitions"]
UNIT = TUNING / "shardlog.service"
# The config the unit's ExecStart names is installed from this profile (tuning/README.md).
UNIT_PROFILE = TUNING / "throughput.toml"
CHECK_NAMES = {
    "io_uring", "memlock", "nofile", "fs.type", "fs.o_direct", "block.scheduler", "block.nr_requests", "thp",
    "vm.swappiness", "cpu.governor", "clocksource", "irq.affinity", "net.core.somaxconn", "net.core.rmem_max",
    "net.core.wmem_max", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "fs.aio-max-nr",
}
RUN_TIMEOUT = 60
MIB = 1 << 20


def tune(*args, timeout=RUN_TIMEOUT):
    return subprocess.run([str(broker_bin()), "tune", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def tune_json(*args):
    r = tune("--json", *args)
    assert r.returncode in (0, 1), f"tune exited {r.returncode}: {r.stderr}"
    return r.returncode, json.loads(r.stdout)


def by_name(report):
    return {c["name"]: c for c in report["checks"]}


def read(path):
    return Path(path).read_text().strip()


def selected(choice_text):
    m = re.search(r"\[([^\]]+)\]", choice_text)
    return m.group(1) if m else None


def human_bytes(n):
    """The broker's rendering of a byte limit (tune/checks.rs, human_bytes)."""
    if n == resource.RLIM_INFINITY:
        return "unlimited"
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def limit_text(n):
    return "unlimited" if n == resource.RLIM_INFINITY else str(n)


def fstype_of(path):
    """The filesystem type of the mount holding `path`, from /proc/mounts (longest mount point wins)."""
    path = os.path.realpath(path)
    best, best_len = None, -1
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mp = fields[1].replace("\\040", " ").rstrip("/")
        if (mp == "" or path == mp or path.startswith(mp + "/")) and len(mp) >= best_len:
            best, best_len = fields[2], len(mp)
    return best


# --- tune --check on this machine -------------------------------------------------------


def test_check_json_reports_what_proc_and_sys_say(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rc, report = tune_json("--check", "--data-dir", str(data))
    checks = by_name(report)
    assert set(checks) == CHECK_NAMES
    for c in report["checks"]:
        assert c["status"] in ("ok", "warn", "fail", "skip"), c
        assert isinstance(c["changed"], bool) and not c["changed"], c
        for field in ("found", "wanted", "why"):
            assert isinstance(c[field], str), c
    assert rc == (1 if any(c["status"] == "fail" for c in report["checks"]) else 0)

    host = report["host"]
    assert host["kernel"] == os.uname().release
    assert host["nproc"] == len(os.sched_getaffinity(0))
    assert host["shards"] == len(os.sched_getaffinity(0)), "default: one shard per core"
    assert host["data_dir"] == str(data)

    assert checks["vm.swappiness"]["found"] == read("/proc/sys/vm/swappiness")
    assert checks["net.core.somaxconn"]["found"] == read("/proc/sys/net/core/somaxconn")
    assert checks["fs.aio-max-nr"]["found"] == read("/proc/sys/fs/aio-max-nr")
    assert checks["net.core.rmem_max"]["found"] == read("/proc/sys/net/core/rmem_max")
    assert checks["net.ipv4.tcp_rmem"]["found"] == " ".join(read("/proc/sys/net/ipv4/tcp_rmem").split())
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists():
        assert checks["thp"]["found"] == selected(thp.read_text())
    else:
        assert checks["thp"]["status"] == "skip"
    clock = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")
    if clock.exists():
        assert checks["clocksource"]["found"] == clock.read_text().strip()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert checks["nofile"]["found"] == f"soft {limit_text(soft)} hard {limit_text(hard)}"
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    assert checks["memlock"]["found"].startswith(f"soft {human_bytes(soft)} hard {human_bytes(hard)}")
    shards = host["shards"]
    assert checks["memlock"]["wanted"] == f">= {human_bytes(32 * MIB * shards)} ({shards} shards x 32 MiB)"

    assert checks["fs.type"]["found"].split()[0] == fstype_of(data)
    assert checks["fs.o_direct"]["status"] in ("ok", "fail", "skip")
    assert not any(p.name.startswith(".shardlog-tune-odirect") for p in data.iterdir()), "probe file left behind"


def test_check_of_a_missing_data_dir_probes_its_nearest_parent(tmp_path):
    missing = tmp_path / "not" / "yet"
    _, report = tune_json("--only", "fs.type", "--only", "fs.o_direct", "--data-dir", str(missing))
    checks = by_name(report)
    assert set(checks) == {"fs.type", "fs.o_direct"}
    assert str(tmp_path) in checks["fs.o_direct"]["found"]
    assert not missing.exists(), "the check must not create the data dir"


def test_bad_usage_exits_2():
    assert tune("--only", "no.such.check").returncode == 2
    assert tune("--set", "no-equals-sign").returncode == 2
    assert tune("--set", "num.partitions=zero").returncode == 2
    assert tune("--shards", "0").returncode == 2
    assert tune("--check", "--apply").returncode == 2
    assert tune("--config", "/nonexistent/shardlog.toml").returncode == 2


def test_human_output_has_one_aligned_line_per_check():
    r = tune("--check")
    assert r.returncode in (0, 1), r.stderr
    lines = [l for l in r.stdout.splitlines() if re.match(r"^(ok|warn|fail|skip)\s", l)]
    assert len(lines) == len(CHECK_NAMES)
    name_w = max(len(n) for n in CHECK_NAMES)
    names = set()
    for line in lines:
        name, gap = line[6:6 + name_w], line[6 + name_w:8 + name_w]
        assert gap == "  " and line[8 + name_w] != " ", f"not aligned: {line!r}"
        names.add(name.strip())
        assert " wanted " in line, line
    assert names == CHECK_NAMES
    assert re.search(r"^\d+ ok, \d+ warn, \d+ fail, \d+ skip$", r.stdout, re.M)


# --- tune --apply, inside a new network namespace ------------------------------------------


def test_apply_changes_somaxconn_once_in_a_network_namespace():
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    host_before = read("/proc/sys/net/core/somaxconn")
    marker = f"=== {uuid.uuid4().hex} ==="
    bin_ = shlex.quote(str(broker_bin()))
    script = (
        "set -e; echo 128 > /proc/sys/net/core/somaxconn; "
        f"{bin_} tune --apply --only net.core.somaxconn --json; echo '{marker}'; "
        f"{bin_} tune --apply --only net.core.somaxconn --json; echo '{marker}'; "
        "cat /proc/sys/net/core/somaxconn"
    )
    r = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True, text=True,
                       timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    if r.returncode != 0 and ("Operation not permitted" in r.stderr or "Permission denied" in r.stderr):
        pytest.skip(f"cannot create a network namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    first, second, final = r.stdout.split(marker + "\n")
    first, second = by_name(json.loads(first))["net.core.somaxconn"], by_name(json.loads(second))["net.core.somaxconn"]
    assert first["changed"] is True, first
    assert first["previous"] == "128"
    assert first["status"] == "ok" and first["found"] == "4096", first
    assert second["changed"] is False and second["status"] == "ok" and second["found"] == "4096", second
    assert final.strip() == "4096"
    assert read("/proc/sys/net/core/somaxconn") == host_before, "the host's own value must not change"


def test_apply_reports_a_setting_it_may_not_change_and_continues(tmp_path):
    """Without root, a sysctl write is refused: the check says so, the run goes on."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run tune as an unprivileged user")
    if int(read("/proc/sys/vm/swappiness")) <= 1:
        pytest.skip("vm.swappiness is already what tune wants; nothing would be written")
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
                        str(broker_bin()), "tune", "--apply", "--json", "--only", "vm.swappiness", "--only", "thp",
                        "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    assert r.returncode in (0, 1), r.stderr
    checks = by_name(json.loads(r.stdout))
    swap = checks["vm.swappiness"]
    assert swap["changed"] is False and swap["status"] == "warn", swap
    assert "no permission" in swap["error"], swap
    assert "thp" in checks, "the run must continue past the refused write"


# --- the profiles ---------------------------------------------------------------------------


def serve_one_record(bootstrap):
    topic = f"tune-{uuid.uuid4().hex[:8]}"
    value = f"record-{uuid.uuid4().hex}".encode()
    delivered = confluent_produce(bootstrap, topic, [(b"k", value)], timeout=60.0)
    read_back, _ = confluent_consume_all(bootstrap, topic, [0], timeout=60.0)
    assert [r[2] for r in read_back[0]] == [value], (delivered, read_back)


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_loads_and_serves_a_record(profile, broker_factory):
    path = TUNING / f"{profile}.toml"
    assert path.exists()
    # The same file through `tune --config` loads too (exit 2 would be a config error).
    rc, report = tune_json("--config", str(path), "--only", "nofile")
    assert report["host"]["config"] == str(path)
    b = broker_factory(extra_args=["--config", str(path)])
    try:
        serve_one_record(b.bootstrap)
    finally:
        b.stop()
    assert "isn't a known config" not in b.log_text(), "a profile key the broker does not know"


def test_profiles_comment_every_value():
    for profile in PROFILES:
        lines = (TUNING / f"{profile}.toml").read_text().splitlines()
        for i, line in enumerate(lines):
            if "=" in line and not line.lstrip().startswith("#"):
                assert i > 0 and lines[i - 1].lstrip().startswith("#"), f"{profile}.toml: {line!r} has no comment"


def test_profiles_cite_results_that_exist():
    for profile in PROFILES:
        for cited in re.findall(r"results/[\w.-]+\.md", (TUNING / f"{profile}.toml").read_text()):
            assert (REPO / cited).exists(), f"{profile}.toml cites {cited}, which does not exist"


# --- the systemd unit ---------------------------------------------------------------------


def parse_unit():
    unit = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    unit.optionxform = str  # keys are case-sensitive
    unit.read(UNIT)
    return unit


def limit_value(text):
    """A systemd Limit*= value as a number (infinity as math.inf); K/M/G suffixes are 1024-based."""
    text = text.strip()
    if text == "infinity":
        return math.inf
    m = re.fullmatch(r"(\d+)([KMGT]?)", text)
    assert m, f"unparsed limit {text!r}"
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2)]


def descriptors_needed(config, shards):
    _, report = tune_json("--config", str(config), "--shards", str(shards), "--only", "nofile")
    wanted = by_name(report)["nofile"]["wanted"]
    m = re.fullmatch(r">= (\d+)", wanted)
    assert m, wanted
    return int(m.group(1))


def unit_command(line, data_dir, port=None):
    """A unit's command line with the binary, config and data dir made local to the test."""
    argv = shlex.split(line)
    assert argv[0] == "/usr/local/bin/shardlog", argv
    argv[0] = str(broker_bin())
    assert "--config" in argv and argv[argv.index("--config") + 1] == "/etc/shardlog/shardlog.toml", argv
    argv[argv.index("--config") + 1] = str(UNIT_PROFILE)
    assert "--data-dir" in argv and argv[argv.index("--data-dir") + 1].startswith("/var/lib/shardlog"), argv
    argv[argv.index("--data-dir") + 1] = str(data_dir)
    if port is not None:
        argv += ["--listen", f"127.0.0.1:{port}"]
    return argv


def test_unit_limits_cover_the_brokers_need():
    service = parse_unit()["Service"]
    nofile = limit_value(service["LimitNOFILE"])
    memlock = limit_value(service["LimitMEMLOCK"])
    for shards in (len(os.sched_getaffinity(0)), 128):
        assert nofile >= descriptors_needed(UNIT_PROFILE, shards), f"LimitNOFILE below the need at {shards} shards"
        assert memlock >= 32 * MIB * shards, f"LimitMEMLOCK below 32 MiB per shard at {shards} shards"
    assert int(service["TasksMax"]) >= 138 * 128
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    stop_s = int(service["TimeoutStopSec"])
    assert stop_s * 1000 > 30_000, "TimeoutStopSec must exceed shutdown.timeout.ms (30 s)"
    assert service["User"] not in ("root", "0")
    assert service["StateDirectory"] == "shardlog"
    assert "--data-dir /var/lib/shardlog" in service["ExecStart"]
    assert service["ExecStartPre"].split()[1:3] == ["tune", "--check"]


def test_unit_execstart_serves_a_record_under_the_units_limits(tmp_path):
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    service = parse_unit()["Service"]
    # An unprivileged test (and root without CAP_SYS_RESOURCE) cannot raise a hard
    # limit: apply the unit's value, or the current hard limit where that is lower.
    limits = []
    for key, res, flag in (("LimitNOFILE", resource.RLIMIT_NOFILE, "--nofile"),
                           ("LimitMEMLOCK", resource.RLIMIT_MEMLOCK, "--memlock")):
        _, hard = resource.getrlimit(res)
        value = min(limit_value(service[key]), math.inf if hard == resource.RLIM_INFINITY else hard)
        text = "unlimited" if value == math.inf else str(value)
        limits.append(f"{flag}={text}:{text}")
    port = free_port()
    argv = ["prlimit", *limits, *unit_command(service["ExecStart"], tmp_path / "data", port)]

    class UnitBroker(Broker):
        def args(self):
            return argv

    b = UnitBroker(tmp_path / "data", tmp_path / "broker.log", port=port)
    try:
        b.start()
        serve_one_record(b.bootstrap)
        assert b.stop(timeout=int(service["TimeoutStopSec"])) == 0, b.run_log()[-4000:]
    finally:
        if b.alive():
            b.stop(timeout=30)

    pre = ["prlimit", *limits, *unit_command(service["ExecStartPre"], tmp_path / "data")]
    r = subprocess.run(pre, capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    assert r.returncode in (0, 1), f"ExecStartPre exited {r.returncode}: {r.stderr}"
    assert re.search(r"^\d+ ok, \d+ warn, \d+ fail, \d+ skip$", r.stdout, re.M), r.stdout
    r = subprocess.run([*pre, "--json"], capture_output=True, text=True, timeout=RUN_TIMEOUT,
                       stdin=subprocess.DEVNULL)
    checks = by_name(json.loads(r.stdout))
    assert checks["nofile"]["status"] in ("ok", "fail")


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze (Debian package systemd) is not installed")
    text = UNIT.read_text().replace("/usr/local/bin/shardlog", str(broker_bin()))
    copy = tmp_path / "shardlog.service"
    copy.write_text(text)
    r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=RUN_TIMEOUT,
                       stdin=subprocess.DEVNULL)
    # verify also reports problems of other units on the host; keep only ours.
    ours = [l for l in (r.stdout + r.stderr).splitlines() if "shardlog.service" in l]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr
