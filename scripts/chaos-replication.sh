#!/usr/bin/env bash
# Long chaos rounds for replication (issue 11), outside CI: the e2e test
# "acks=all survives leader kills" with ROUNDS rounds (default 10), each
# SIGKILLing the leader of a random partition of a 3-node RF=3 cluster while
# a confluent-kafka producer keeps a ledger of acknowledged records, then
# restarting it and waiting for full ISRs; at the end every acknowledged
# record must be read back at its offset. SEEDS (default "11 12 13") picks
# the victims. Appends the outcome and the failover times to
# results/replication-chaos.md.
#
#     scripts/chaos-replication.sh [ROUNDS]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
ROUNDS="${1:-10}"
OUT="$REPO/results/replication-chaos.md"
cargo build --release -p shardlog >/dev/null
export SHARDLOG_BIN="${SHARDLOG_BIN:-$REPO/target/release/shardlog}"
[ -f "$OUT" ] || printf '# Replication chaos rounds\n\n| date | commit | seed | rounds | outcome | failover per round, s |\n| --- | --- | ---: | ---: | --- | --- |\n' >"$OUT"
for seed in ${SEEDS:-11 12 13}; do
    log="$(mktemp)"
    if REPLICATION_ROUNDS="$ROUNDS" REPLICATION_SEED="$seed" timeout 1800 python3 -m pytest -q -s -p no:cacheprovider \
        tests/test_replication.py -k acks_all_survives >"$log" 2>&1; then
        outcome="passed"
    else
        outcome="FAILED (log: $log)"
    fi
    times="$(sed -n 's/^failover (kill -> first acks=all ack) per round: \[\(.*\)\] s.*/\1/p' "$log" | tail -1)"
    printf '| %s | %s | %s | %s | %s | %s |\n' "$(date -u +%F)" "$(git rev-parse --short HEAD)" "$seed" "$ROUNDS" \
        "$outcome" "${times:-}" >>"$OUT"
    echo "seed $seed: $outcome ${times:-}"
    [ "$outcome" = "passed" ] && rm -f "$log"
done
