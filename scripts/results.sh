#!/usr/bin/env bash
# Regenerates the headline figures in results/ with one command:
#   1. `shardlog-bench limits` --runs times (loopback TCP, O_DIRECT writes),
#   2. `shardlog-bench capacity` over --partitions-list with a broker it
#      starts itself (medians of --runs runs per figure) -> results/capacity/
#      (capacity.json, capacity.md, throughput.svg, p99.svg, recovery.svg),
#   3. `shardlog-bench plan` on that sweep for an example target,
#   4. scripts/compare.sh (shardlog vs Tansu, --runs runs each),
# then rewrites the generated section of results/README.md (between the
# results.sh markers) with each figure's command, date, commit, machine and
# its ratio to this run's measured limits and to shared/PERFORMANCE.md.
#   scripts/results.sh [--runs 3] [--duration-s 5] [--partitions-list 1,10,100,1000,10000,100000]
#                      [--fixed-mb-per-s 50] [--workloads] [--report-only]
# --workloads also runs scripts/bench-workloads.sh (every named workload,
# --runs times, results/workloads.md; adds ~15 min at --duration-s 5).
# --report-only skips the measurements and rewrites the README section from
# the files already in results/ (same arguments as the run that made them).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

RUNS=3 DURATION_S=5 PARTITIONS_LIST=1,10,100,1000,10000,100000 FIXED_MB_PER_S=50 REPORT_ONLY= WORKLOADS=
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --duration-s) DURATION_S="$2"; shift 2 ;;
        --partitions-list) PARTITIONS_LIST="$2"; shift 2 ;;
        --fixed-mb-per-s) FIXED_MB_PER_S="$2"; shift 2 ;;
        --report-only) REPORT_ONLY=1; shift ;;
        --workloads) WORKLOADS=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
ARGS="--runs $RUNS --duration-s $DURATION_S --partitions-list $PARTITIONS_LIST --fixed-mb-per-s $FIXED_MB_PER_S${WORKLOADS:+ --workloads}"

CAPACITY_CMD="shardlog-bench capacity --broker-bin target/release/shardlog --partitions-list $PARTITIONS_LIST --fixed-mb-per-s $FIXED_MB_PER_S --duration-s $DURATION_S --runs $RUNS --out-dir results/capacity"
CAPACITY_PPR_CMD="shardlog-bench capacity --broker-bin target/release/shardlog --partitions-list $PARTITIONS_LIST --fixed-mb-per-s $FIXED_MB_PER_S --duration-s $DURATION_S --runs $RUNS --partitions-per-request 100 --batch-bytes 4096 --producers 4 --out-dir results/capacity-many-per-request"
PLAN_CMD="shardlog-bench plan --capacity results/capacity/capacity.json --target-mb-per-s 200 --consumer-parallelism 12 --retention-hours 24 --replication-factor 1"
if [ -z "$REPORT_ONLY" ]; then
cargo build --release -p shardlog -p shardlog-bench
BROKER="${SHARDLOG_BIN:-$REPO/target/release/shardlog}"
BENCH="$REPO/target/release/shardlog-bench"
WORK="$(mktemp -d /tmp/shardlog-results.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

mkdir -p results/limits
rm -f results/limits/limits-*.json
for i in $(seq 1 "$RUNS"); do
    echo "+ shardlog-bench limits --duration-s 2 --dir $WORK (run $i)" >&2
    "$BENCH" limits --duration-s 2 --dir "$WORK" --json "results/limits/limits-$i.json" >&2
done

echo "+ $CAPACITY_CMD" >&2
rm -rf results/capacity
"$BENCH" capacity --broker-bin "$BROKER" --partitions-list "$PARTITIONS_LIST" --fixed-mb-per-s "$FIXED_MB_PER_S" \
    --duration-s "$DURATION_S" --runs "$RUNS" --out-dir results/capacity --work-dir "$WORK/capacity" --quiet \
    >"$WORK/capacity.out"
git rev-parse --short HEAD >results/capacity/commit

# The same sweep with the many-partitions-per-request shape (OMB-style:
# 4 KiB batches, 100 partitions per request, 4 producers).
echo "+ $CAPACITY_PPR_CMD" >&2
rm -rf results/capacity-many-per-request
ARGV="${CAPACITY_PPR_CMD#shardlog-bench }"
"$BENCH" ${ARGV/target\/release\/shardlog /$BROKER } --work-dir "$WORK/capacity-ppr" --quiet >"$WORK/capacity-ppr.out"
git rev-parse --short HEAD >results/capacity-many-per-request/commit

echo "+ $PLAN_CMD" >&2
{ echo "\$ $PLAN_CMD"; $BENCH ${PLAN_CMD#shardlog-bench }; } >results/capacity/plan-example.txt

bash scripts/compare.sh --runs "$RUNS" --duration-s "$DURATION_S" --out results/compare-tansu.md
if [ -n "$WORKLOADS" ]; then bash scripts/bench-workloads.sh --runs "$RUNS" --duration-s "$DURATION_S"; fi
# The commit the binaries were built from (source files only: docs do not count).
git rev-parse --short HEAD >results/limits/commit
git diff --quiet HEAD -- '*.rs' '*.toml' '*.sh' Cargo.lock || echo "+uncommitted" >>results/limits/commit
fi

COMMIT="$(tr -d '\n' <results/limits/commit)"
python3 - "$RUNS" "$COMMIT" "scripts/results.sh $ARGS" "$CAPACITY_CMD" "$PLAN_CMD" "$DURATION_S" <<'PY'
import json, statistics, sys, time, os, re
runs, commit, results_cmd, capacity_cmd, plan_cmd, duration_s = int(sys.argv[1]), *sys.argv[2:]
REF_LOOPBACK, REF_ODIRECT_1M, REF_ODIRECT_64K = 3.27, 2.6, 0.83  # shared/PERFORMANCE.md, GB/s
limits = [json.load(open(f"results/limits/limits-{i}.json")) for i in range(1, runs + 1)]
machine = limits[0]["machine"]
med = lambda xs: statistics.median([x for x in xs if x is not None]) if any(x is not None for x in xs) else None
loop = med([d["results"]["loopback_tcp"]["gb_per_s"] for d in limits])
d1m = med([w["gb_per_s"] for d in limits for w in d["results"]["odirect_write"] if w["block_bytes"] == 1 << 20])
d64 = med([w["gb_per_s"] for d in limits for w in d["results"]["odirect_write"] if w["block_bytes"] == 64 << 10])
cap = json.load(open("results/capacity/capacity.json"))
steps = cap["results"]["steps"]
def g(v, *path):
    for k in path:
        v = v.get(k) if isinstance(v, dict) else None
    return v
def pct(x, ref):
    return "-" if x is None or not ref else f"{x / ref:.1%}"
today = time.strftime("%Y-%m-%d")
# Each figure carries the date and commit of the run that made it: a
# capacity sweep may be rerun alone (its commit in results/capacity/commit).
day = lambda doc: time.strftime("%Y-%m-%d", time.gmtime(doc["started_unix_ms"] / 1000)) if doc.get("started_unix_ms") else today
where = f"{day(limits[0])}, {commit}"
cap_commit = open("results/capacity/commit").read().strip() if os.path.exists("results/capacity/commit") else commit
where_cap = f"{day(cap)}, {cap_commit}"
L = ["<!-- results.sh:begin (generated by scripts/results.sh; edits inside are overwritten) -->",
     "## Generated headline figures", "",
     f"Regenerate: `{results_cmd}`. Machine: nproc {machine['nproc']}, kernel {machine['kernel']} "
     f"(`uname -r`); broker and load generator share it. Each row names its run's date and commit. "
     f"Medians of {runs} runs per figure. MB = 10^6 bytes of record values. Ratios are to this run's "
     f"measured limits (first) and to shared/PERFORMANCE.md's (second: loopback {REF_LOOPBACK} GB/s, "
     f"O_DIRECT write {REF_ODIRECT_1M} GB/s at 1 MiB).", "",
     "Commands: (L) `shardlog-bench limits --duration-s 2 --dir $TMP`; "
     f"(C) `{capacity_cmd}`; (T) `scripts/compare.sh --runs {runs} --duration-s {duration_s}` "
     "(workload `peer-compare-6-partitions-1kb`).", "",
     "| figure | value | ratio to limits (this run / PERFORMANCE.md) | command | date, commit |",
     "| --- | ---: | --- | --- | --- |"]
lim_cmd = "(L)"
L.append(f"| loopback TCP, 1 stream, 128 KiB writes | {loop:.2f} GB/s | {loop / REF_LOOPBACK:.2f}x PERFORMANCE.md's {REF_LOOPBACK} GB/s (iperf3) | {lim_cmd} | {where} |")
L.append(f"| O_DIRECT sequential write, 1 MiB, qd1 | {d1m:.2f} GB/s | {d1m / REF_ODIRECT_1M:.2f}x PERFORMANCE.md's {REF_ODIRECT_1M} GB/s (fio) | {lim_cmd} | {where} |")
L.append(f"| O_DIRECT sequential write, 64 KiB, qd1 | {d64:.2f} GB/s | {d64 / REF_ODIRECT_64K:.2f}x PERFORMANCE.md's {REF_ODIRECT_64K} GB/s (fio) | {lim_cmd} | {where} |")
cc = "(C)"
for s in steps:
    p = s["partitions"]
    mx = g(s, "max_rate", "produce", "mb_per_s")
    if mx is not None:
        L.append(f"| produce+consume at max rate, {p:,} partitions, 1 KiB, acks=1 (1 producer, 1 consumer) | {mx:.1f} MB/s | "
                 f"{pct(mx, loop * 1000)} / {pct(mx, REF_LOOPBACK * 1000)} of loopback; {pct(mx, d1m * 1000)} / {pct(mx, REF_ODIRECT_1M * 1000)} of O_DIRECT write | {cc} | {where_cap} |")
for s in steps:
    p = s["partitions"]
    e2e = g(s, "fixed_load", "consume", "e2e_latency", "p99_us")
    ack = g(s, "fixed_load", "produce", "ack_latency", "p99_us")
    if e2e is not None:
        L.append(f"| p99 at {cap['results']['params']['fixed_mb_per_s']:.0f} MB/s fixed load, {p:,} partitions: produce ack / end-to-end | "
                 f"{ack / 1000:.2f} / {e2e / 1000:.2f} ms | n/a | {cc} | {where_cap} |")
last = steps[-1]
rss = g(last, "broker", "rss_bytes")
if rss:
    L.append(f"| broker RSS / open fds after the {last['partitions']:,}-partition step (single reading) | "
             f"{rss / 1048576:.0f} MiB / {g(last, 'broker', 'open_fds')} | n/a | {cc} | {where_cap} |")
for kind, key in [("clean (SIGTERM)", "restart_clean"), ("unclean (SIGKILL)", "restart_unclean")]:
    r = g(last, key, "ready_ms")
    if r is not None:
        L.append(f"| restart after {kind} shutdown, {last['partitions']:,} partitions, until all served | {r / 1000:.2f} s | n/a | {cc} | {where_cap} |")
cmp_md = open("results/compare-tansu.md").read()
m = re.search(r"^\| max rate \| ([\d,.]+) \| ([\d,.]+) \| ([\d.]+) \|", cmp_md, re.M)
if m:
    L.append(f"| vs Tansu (memory storage), max rate, 6 partitions, 1 KiB | shardlog {m.group(1)} / Tansu {m.group(2)} MB/s | "
             f"shardlog / Tansu = {m.group(3)} | (T) | {where} |")
L += ["", "Details: [capacity sweep](capacity/capacity.md) with charts "
      "([throughput](capacity/throughput.svg), [p99](capacity/p99.svg), [restart](capacity/recovery.svg)), "
      "[plan example](capacity/plan-example.txt) (`" + plan_cmd + "`), "
      + ("[the same sweep, 100 partitions per request](capacity-many-per-request/capacity.md), "
         if os.path.exists("results/capacity-many-per-request/capacity.md") else "")
      + "[shardlog vs Tansu](compare-tansu.md)"
      + (", [named workloads](workloads.md) (`scripts/bench-workloads.sh`)" if os.path.exists("results/workloads.md") else "")
      + "; raw JSON in `limits/`, `capacity/`, `compare-tansu/`"
      + (", `workloads/`" if os.path.exists("results/workloads.md") else "") + ".", "",
      "<!-- results.sh:end -->"]
section = "\n".join(L)
readme = open("results/README.md").read()
pattern = re.compile(r"<!-- results.sh:begin.*?<!-- results.sh:end -->", re.S)
if pattern.search(readme):
    readme = pattern.sub(lambda _: section, readme)
else:
    readme = readme.rstrip("\n") + "\n\n" + section + "\n"
open("results/README.md", "w").write(readme)
print("updated results/README.md")
PY
