#!/usr/bin/env bash
# End-to-end throughput benchmark: builds the release broker, starts it on a
# temp data dir and a free loopback port, runs results/bench_e2e.py (3 runs),
# and writes results/e2e-produce-consume.md with the ratios to this machine's
# limits from PERFORMANCE.md.
#   scripts/bench.sh [--records N] [--partitions N] [--acks 1|all] [--compression none|lz4|...]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

RECORDS=1000000 PARTITIONS=6 ACKS=1 COMPRESSION=none RUNS=3
while [ $# -gt 0 ]; do
    case "$1" in
        --records) RECORDS="$2"; shift 2 ;;
        --partitions) PARTITIONS="$2"; shift 2 ;;
        --acks) ACKS="$2"; shift 2 ;;
        --compression) COMPRESSION="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

# limits measured on this machine (shared/PERFORMANCE.md)
LOOPBACK_MBPS=3270
ODIRECT_WRITE_MBPS=2600

python3 -c 'import confluent_kafka' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore -r tests/requirements.txt
cargo build --release -p shardlog
BIN="${SHARDLOG_BIN:-$REPO/target/release/shardlog}"

WORK="$(mktemp -d /tmp/shardlog-bench.XXXXXX)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
LOG="$WORK/broker.log"
"$BIN" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
    --set num.partitions="$PARTITIONS" --set message.max.bytes=16777216 >"$LOG" 2>&1 &
BROKER_PID=$!
cleanup() {
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

for _ in $(seq 1 200); do
    grep -q "listening on" "$LOG" && break
    kill -0 "$BROKER_PID" 2>/dev/null || { cat "$LOG"; echo "broker exited" >&2; exit 1; }
    sleep 0.1
done
grep -q "listening on" "$LOG" || { cat "$LOG"; echo "broker not listening after 20s" >&2; exit 1; }

COMMIT="$(git describe --always --dirty 2>/dev/null || echo uncommitted)"
JSON="$WORK/result.json"
python3 results/bench_e2e.py --bootstrap "127.0.0.1:$PORT" --records "$RECORDS" --partitions "$PARTITIONS" \
    --acks "$ACKS" --compression "$COMPRESSION" --runs "$RUNS" --json "$JSON" --label "commit $COMMIT" --broker-pid "$BROKER_PID"

OUT=results/e2e-produce-consume.md
python3 - "$JSON" "$OUT" "$LOOPBACK_MBPS" "$ODIRECT_WRITE_MBPS" <<'PY'
import json, sys
res = json.load(open(sys.argv[1])); out = sys.argv[2]
loop, odw = float(sys.argv[3]), float(sys.argv[4])
p, m, e, med = res["params"], res["runs"], res["env"], res["median"]
lines = [
    "# shardlog end-to-end produce/consume throughput",
    "",
    f"{p['records']:,} records x {p['record_size']} B, {p['partitions']} partitions, acks={p['acks']}, "
    f"compression={p['compression']}, {p['runs']} runs, client confluent-kafka {e['confluent_kafka']} "
    f"(librdkafka {e['librdkafka']}); broker and client share the machine ({e['nproc']} cores, kernel {e['uname_r']}).",
    "",
    f"- when: {res['when']}; {res['label']}",
    f"- command: `scripts/bench.sh` -> `{res['command']}`",
    "",
    "| run | produce MB/s | produce msg/s | consume MB/s | consume msg/s | cores client / broker, produce | cores client / broker, consume |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
]
for i, r in enumerate(m, 1):
    lines.append(f"| {i} | {r['produce_MBps']} | {r['produce_msgps']:,} | {r['consume_MBps']} | {r['consume_msgps']:,} "
                 f"| {r['produce_client_cores']} / {r['produce_broker_cores']} | {r['consume_client_cores']} / {r['consume_broker_cores']} |")
lines += [
    f"| **median** | **{med['produce_MBps']}** | **{med['produce_msgps']:,.0f}** | **{med['consume_MBps']}** | **{med['consume_msgps']:,.0f}** | | |",
    "",
    "cores = CPU seconds per wall second (client: the Python process incl. librdkafka threads; broker: all its threads). "
    "A side near 1.0 per thread it can use is the bottleneck; the machine has 2 cores for both.",
    "",
    "Against this machine's limits (shared/PERFORMANCE.md):",
    "",
    "| figure | median MB/s | / loopback TCP 3.27 GB/s | / O_DIRECT write 2.6 GB/s |",
    "| --- | ---: | ---: | ---: |",
    f"| produce | {med['produce_MBps']} | {med['produce_MBps'] / loop:.1%} | {med['produce_MBps'] / odw:.1%} |",
    f"| consume | {med['consume_MBps']} | {med['consume_MBps'] / loop:.1%} | n/a |",
    "",
    "MB = 10^6 bytes of record values. Peers on this machine: Tansu (Kafka API, confluent-kafka, 1 partition) "
    "produce 543 MB/s / consume 448 MB/s; Iggy (own protocol) produce 840 MB/s / consume 1,461 MB/s.",
    "",
]
open(out, "w").write("\n".join(lines))
print(open(out).read())
PY
