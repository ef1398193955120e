#!/usr/bin/env bash
# Runs named workloads (bench-harness/workloads/) against shardlog, --runs
# times each on a fresh broker (temp data dir, free 127.0.0.1 port), and
# writes results/workloads.md (medians per step, ratio to the development
# machine's loopback limit) plus the raw JSON under results/workloads/.
#   scripts/bench-workloads.sh [--runs 3] [--duration-s S] [WORKLOAD ...]
# Default: every workload except the peer comparison one.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

RUNS=3 DURATION_S="" WORKLOADS=() NAMED=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --duration-s) DURATION_S="$2"; shift 2 ;;
        -*) echo "unknown argument $1" >&2; exit 2 ;;
        *) WORKLOADS+=("$1"); NAMED="$NAMED $1"; shift ;;
    esac
done
if [ "${#WORKLOADS[@]}" -eq 0 ]; then
    for f in bench-harness/workloads/*.toml; do
        n="$(basename "$f" .toml)"
        [ "$n" = peer-compare-6-partitions-1kb ] || WORKLOADS+=("$n")
    done
fi

cargo build --release -p shardlog -p shardlog-bench
BROKER="${SHARDLOG_BIN:-$REPO/target/release/shardlog}"
BENCH="$REPO/target/release/shardlog-bench"
WORK="$(mktemp -d /tmp/shardlog-workloads.XXXXXX)"
RAW=results/workloads
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
start_broker() {
    PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    "$BROKER" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/broker.log" 2>&1 &
    PID=$!
    # Serving = the log says so and a TCP connect succeeds.
    for _ in $(seq 1 200); do
        if grep -q "listening on" "$WORK/broker.log" &&
            python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null; then
            return 0
        fi
        kill -0 "$PID" 2>/dev/null || { cat "$WORK/broker.log"; echo "broker exited" >&2; exit 1; }
        sleep 0.1
    done
    cat "$WORK/broker.log"; echo "broker not listening after 20 s" >&2; exit 1
}

DUR_ARGS=()
[ -n "$DURATION_S" ] && DUR_ARGS=(--duration-s "$DURATION_S")
for w in "${WORKLOADS[@]}"; do
    rm -f "$RAW/$w"-*.json
    for i in $(seq 1 "$RUNS"); do
        start_broker
        echo "+ [run $i] shardlog-bench run --workload $w ${DUR_ARGS[*]} --bootstrap 127.0.0.1:$PORT" >&2
        "$BENCH" run --workload "$w" "${DUR_ARGS[@]}" --bootstrap "127.0.0.1:$PORT" --quiet \
            --json "$RAW/$w-$i.json" | sed 's/^/    /' >&2
        stop
    done
done

# The commit the binaries were built from (source files only: docs do not count).
COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- '*.rs' '*.toml' '*.sh' Cargo.lock || echo '+uncommitted')"
python3 - "$RAW" "$RUNS" "$COMMIT" "${DURATION_S:-workload default}" "$NAMED" "${WORKLOADS[@]}" <<'PY'
import json, re, statistics, sys, time
raw, runs, commit, duration, named, *workloads = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
LOOPBACK_MBPS = 3270.0  # shared/PERFORMANCE.md
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def get(r, *path):
    for k in path:
        r = r.get(k) if isinstance(r, dict) else None
    return r
def fmt(x, d=1):
    return "-" if x is None else f"{x:,.{d}f}"
machine = None
L = []
for w in workloads:
    docs = [json.load(open(f"{raw}/{w}-{i}.json")) for i in range(1, runs + 1)]
    machine = docs[0]["machine"]
    res = docs[0]["results"]
    L += [f"## {w}", "", res["workload_params"]["description"] + ".", "",
          "| step | msgs/s | MB/s | / loopback 3.27 GB/s | produce ack p99 ms | end-to-end p99 ms | every acked record consumed |",
          "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for k, step in enumerate(res["steps"]):
        rs = [d["results"]["steps"][k]["results"] for d in docs if k < len(d["results"]["steps"])]
        side = "produce" if rs[0].get("produce") else "consume"
        mb = med([get(r, side, "mb_per_s") for r in rs])
        msgs = med([get(r, side, "msgs_per_s") for r in rs])
        ack = med([get(r, "produce", "ack_latency", "p99_us") for r in rs])
        e2e = med([get(r, "consume", "e2e_latency", "p99_us") for r in rs])
        ok = [r.get("counts_match") for r in rs if "counts_match" in r]
        # Labels without run 1's own rate: each run's ladder follows its own max.
        label = re.sub(r" \(.*\)$", "", step["step"])
        L.append(f"| {label} | {fmt(msgs, 0)} | {fmt(mb)} | {fmt(mb / LOOPBACK_MBPS * 100 if mb else None)}% | "
                 f"{fmt(ack / 1e3 if ack else None, 2)} | {fmt(e2e / 1e3 if e2e else None, 2)} | "
                 f"{all(ok) if ok else 'n/a'} |")
    L.append("")
head = ["# Named workloads against shardlog", "",
        f"Each workload {runs} times on a fresh broker (temp data dir, 127.0.0.1), medians per step; "
        f"broker and load generator share the machine (nproc {machine['nproc']}, kernel {machine['kernel']}). "
        "MB = 10^6 bytes of record values (uncompressed); latencies measured from each batch's scheduled send "
        "time on fixed-rate steps (no coordinated omission). Ratio-of-max steps take each run's own max step.", "",
        f"- when: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; commit {commit}; step length: {duration} s",
        f"- command: `scripts/bench-workloads.sh --runs {runs}" + (f" --duration-s {duration}" if duration[0].isdigit() else "") + named + "`",
        "  (per run: `shardlog-bench run --workload NAME --bootstrap 127.0.0.1:$PORT`)", ""]
open("results/workloads.md", "w").write("\n".join(head + L))
print("wrote results/workloads.md")
PY
