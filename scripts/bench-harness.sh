#!/usr/bin/env bash
# First numbers from the native load generator (bench-harness/, shardlog-bench).
# Builds both release binaries, then for each of --runs runs, on a fresh
# release broker (temp data dir, free loopback port):
#   (a) produce at max rate: 1 KiB records, 6 partitions, acks=1, 64 KiB
#       batches, 1 producer, 4 in flight, --duration-s (15) seconds;
#   (c) catch-up consume of what (a) wrote;
#   extra: (a) with 6 partitions per Produce request (Kafka clients' shape);
# then, each on a fresh broker, (b) tail e2e at 50% of (a)'s median rate
# with acks=1 and acks=-1; and sink-test (the tool against a fake broker).
# Writes results/harness-first-numbers.md (medians of the runs).
#   scripts/bench-harness.sh [--runs N] [--duration-s S]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

RUNS=3 DURATION_S=15
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --duration-s) DURATION_S="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

cargo build --release -p shardlog-bench
# The broker is built separately (cargo build --release -p shardlog), or set SHARDLOG_BIN.
BROKER="${SHARDLOG_BIN:-$REPO/target/release/shardlog}"
[ -x "$BROKER" ] || { echo "no broker binary at $BROKER (cargo build --release -p shardlog)" >&2; exit 1; }
BENCH="$REPO/target/release/shardlog-bench"
WORK="$(mktemp -d /tmp/shardlog-harness.XXXXXX)"
BROKER_PID=""

stop_broker() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PID=""
    rm -rf "$WORK/data"
}
trap 'stop_broker; rm -rf "$WORK"' EXIT

# Starts a broker on a fresh data dir; sets PORT and BROKER_PID.
start_broker() {
    stop_broker
    PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    "$BROKER" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
        --set num.partitions=6 --set message.max.bytes=16777216 >"$WORK/broker.log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 1 200); do
        grep -q "listening on" "$WORK/broker.log" && return 0
        kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/broker.log"; echo "broker exited" >&2; exit 1; }
        sleep 0.1
    done
    cat "$WORK/broker.log"; echo "broker not listening after 20s" >&2; exit 1
}

# Broker CPU seconds so far (utime + stime from /proc).
broker_cpu_s() {
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$BROKER_PID/stat"
}

# run NAME ARGS...: runs shardlog-bench with --json, records the broker's CPU
# seconds over the run next to the JSON, echoes the command.
run() {
    local name="$1"; shift
    local before after
    before="$(broker_cpu_s)"
    echo "+ shardlog-bench $*" >&2
    "$BENCH" "$@" --quiet --json "$WORK/$name.json" | sed 's/^/    /' >&2
    after="$(broker_cpu_s)"
    python3 -c "print($after - $before)" >"$WORK/$name.broker_cpu_s"
    echo "shardlog-bench $*" >"$WORK/$name.cmd"
}

COMMON=(--partitions 6 --record-bytes 1024 --batch-bytes 65536 --producers 1 --inflight 4)
for i in $(seq 1 "$RUNS"); do
    start_broker
    B="127.0.0.1:$PORT"
    run "a-$i" produce --bootstrap "$B" --topic harness-a "${COMMON[@]}" --acks 1 --duration-s "$DURATION_S"
    run "c-$i" consume --bootstrap "$B" --topic harness-a --record-bytes 1024 --from earliest --duration-s 120
    # Extra, for context: the same load with one batch per partition in each
    # request, the shape Kafka's own producer sends.
    run "a6-$i" produce --bootstrap "$B" --topic harness-a6 "${COMMON[@]}" --acks 1 --duration-s "$DURATION_S" \
        --partitions-per-request 6
done
stop_broker

RATE="$(python3 - "$WORK" "$RUNS" <<'PY'
import json, statistics, sys
w, runs = sys.argv[1], int(sys.argv[2])
rates = [json.load(open(f"{w}/a-{i}.json"))["results"]["produce"]["msgs_per_s"] for i in range(1, runs + 1)]
print(int(statistics.median(rates) * 0.5))
PY
)"
echo "tail e2e at $RATE msgs/s (50% of (a)'s median)" >&2

for acks in 1 -1; do
    for i in $(seq 1 "$RUNS"); do
        start_broker
        run "b${acks}-$i" e2e --bootstrap "127.0.0.1:$PORT" --topic harness-b "${COMMON[@]}" --acks "$acks" \
            --rate "$RATE" --duration-s "$DURATION_S"
    done
done
stop_broker

for i in $(seq 1 "$RUNS"); do
    echo "+ shardlog-bench sink-test ..." >&2
    "$BENCH" sink-test "${COMMON[@]}" --acks 1 --duration-s "$DURATION_S" --quiet --json "$WORK/sink-$i.json" \
        | sed 's/^/    /' >&2
    echo "shardlog-bench sink-test ${COMMON[*]} --acks 1 --duration-s $DURATION_S" >"$WORK/sink-$i.cmd"
done

COMMIT="$(git describe --always --dirty 2>/dev/null || echo uncommitted)"
python3 - "$WORK" "$RUNS" "$RATE" "$COMMIT" "results/harness-first-numbers.md" <<'PY'
import json, re, statistics, sys, time
w, runs, rate, commit, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
LOOPBACK_MBPS, ODIRECT_WRITE_MBPS = 3270.0, 2600.0  # shared/PERFORMANCE.md

def load(name):
    docs = [json.load(open(f"{w}/{name}-{i}.json")) for i in range(1, runs + 1)]
    for i, d in enumerate(docs, 1):
        try:
            d["broker_cpu_s"] = float(open(f"{w}/{name}-{i}.broker_cpu_s").read())
        except FileNotFoundError:
            d["broker_cpu_s"] = None
    return docs

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def cmd(name):
    return re.sub(r"--bootstrap 127\.0\.0\.1:\d+", "--bootstrap 127.0.0.1:$PORT", open(f"{w}/{name}-1.cmd").read().strip())

a, c, sink, a6 = load("a"), load("c"), load("sink"), load("a6")
b1, ball = load("b1"), load("b-1")
machine = a[0]["machine"]
L = []
L += ["# shardlog-bench: first numbers", ""]
L += [f"Native Kafka-protocol load generator (`bench-harness/`), release broker on a fresh temp data dir and free "
      f"loopback port per run, {runs} runs each, medians. Client and broker share the machine "
      f"({machine['nproc']} cores, kernel {machine['kernel']}).", ""]
L += [f"- when: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; commit {commit}", "- script: `scripts/bench-harness.sh`", ""]
L += ["## Commands", ""]
for tag, name in [("(a) produce, max rate", "a"), ("(c) catch-up consume of (a)", "c"),
                  ("extra: (a) with 6 partitions per request", "a6"),
                  ("(b) tail e2e, acks=1", "b1"), ("(b) tail e2e, acks=-1", "b-1"), ("sink-test", "sink")]:
    L += [f"- {tag}: `{cmd(name)}`"]
L += ["", "MB = 10^6 bytes of record values. Latencies in µs. Broker cores = broker CPU seconds / run seconds.", ""]

def row(label, runs_, side, lat_key=None):
    mbs = [d["results"][side]["mb_per_s"] for d in runs_]
    msgs = [d["results"][side]["msgs_per_s"] for d in runs_]
    cores = [d["broker_cpu_s"] / d["results"][side]["elapsed_s"] if d["broker_cpu_s"] is not None
             and d["results"][side]["elapsed_s"] > 0 else None for d in runs_]
    per_run = ", ".join(f"{x:.1f}" for x in mbs)
    mc = med(cores)
    return (f"| {label} | {med(mbs):.1f} ({per_run}) | {med(msgs):,.0f} | "
            f"{'' if mc is None else f'{mc:.2f}'} | {med(mbs) / LOOPBACK_MBPS:.1%} | "
            f"{med(mbs) / ODIRECT_WRITE_MBPS:.1%} |"), med(mbs)

L += ["## Throughput", "",
      "| figure | median MB/s (runs) | msgs/s | broker cores | / loopback 3.27 GB/s | / O_DIRECT write 2.6 GB/s |",
      "| --- | ---: | ---: | ---: | ---: | ---: |"]
r, produce_mbs = row("(a) produce, acks=1, max rate", a, "produce"); L.append(r)
r, _ = row("(c) catch-up consume", c, "consume"); L.append(r)
r, _ = row("extra: (a) with 6 partitions per request", a6, "produce"); L.append(r)
r, sink_mbs = row("sink-test (tool alone, fake broker)", sink, "produce"); L.append(r)
L += ["", f"The tool alone (sink-test) reaches {sink_mbs / produce_mbs:.1f}x the broker's produce figure, so (a) "
      "measures the broker, not the client. The sink shares the same 2 cores with the tool, so the tool's own "
      "ceiling is higher still.", ""]

def lat_row(label, runs_, side, key):
    ls = [d["results"][side].get(key) for d in runs_]
    ls = [l for l in ls if l]
    if not ls:
        return f"| {label} | n/a | | | | |"
    f = lambda k: f"{med([l[k] for l in ls]):,.0f}"
    return f"| {label} | {f('p50_us')} | {f('p99_us')} | {f('p999_us')} | {f('p9999_us')} | {f('max_us')} |"

L += ["## Latency", "",
      f"(b) runs produce at a fixed {rate:,} msgs/s (50% of (a)'s median) while consumers tail the topic. "
      "Produce latency runs from each batch's scheduled send time (no coordinated omission); end-to-end is "
      "consumer clock minus the µs timestamp in the batch's first record (same process, same clock).", "",
      "| figure | p50 | p99 | p99.9 | p99.99 | max |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
L.append(lat_row("(a) produce ack, max rate, acks=1", a, "produce", "ack_latency"))
L.append(lat_row("extra: (a) with 6 partitions per request", a6, "produce", "ack_latency"))
for label, runs_ in [("acks=1", b1), ("acks=-1", ball)]:
    L.append(lat_row(f"(b) produce ack, {label}", runs_, "produce", "ack_latency"))
    L.append(lat_row(f"(b) end-to-end, {label}", runs_, "consume", "e2e_latency"))
    L.append(lat_row(f"(b) send lag behind schedule (sleep + waiting for an in-flight slot), {label}", runs_, "produce", "send_lag"))
L += [""]
for label, runs_ in [("acks=1", b1), ("acks=-1", ball)]:
    ok = all(d["results"].get("counts_match") for d in runs_)
    got = [d["results"]["produce"]["msgs_per_s"] for d in runs_]
    L += [f"- (b) {label}: achieved {med(got):,.0f} msgs/s; every acked record consumed in all runs: {ok}"]
L += ["", "Send lag is the producer thread's own lateness (sleep granularity, and waiting for an in-flight slot "
      "when the broker is slow); it is included in the produce and end-to-end figures by design.", ""]
open(out, "w").write("\n".join(L))
print(f"wrote {out}")
PY
