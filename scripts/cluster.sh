#!/usr/bin/env bash
# A local shardlog cluster on 127.0.0.1: N nodes, each broker+controller
# (process.roles' default), node ids 1..N.
#
#   scripts/cluster.sh start [N]   start N nodes (default 3), wait until every
#                                  Kafka port listens, print a bootstrap string
#   scripts/cluster.sh stop        SIGTERM each node by its pid file, SIGKILL
#                                  whatever is left after STOP_TIMEOUT (30 s)
#   scripts/cluster.sh status      which nodes are running
#
# Node i listens for Kafka on BASE_PORT + 2(i-1) and for its CONTROLLER peers
# on the port above (defaults: 9092/9093, 9094/9095, 9096/9097, ...), and
# serves Prometheus metrics on METRICS_BASE_PORT + i - 1 (9644, 9645, ...).
# Everything lives under CLUSTER_DIR (default ./cluster, from the directory
# the script is run in):
#   cluster.id            the cluster's id, generated at the first start, kept
#   cluster.conf          the node count and base port the data dirs were made with
#   node-N/data           data dir      node-N/shardlog.log   log (appended)
#   node-N/shardlog.pid   pid of the running process
#
# Environment: BASE_PORT (9092), METRICS_BASE_PORT (9644), CLUSTER_DIR (./cluster), SHARDLOG_BIN
# (target/release/shardlog, built with cargo if missing), SHARDS (--shards per
# node; default: the binary's), SHARDLOG_SETS (extra "key=value key=value"
# passed as --set to every node), START_TIMEOUT (60 s), STOP_TIMEOUT (30 s),
# RUST_LOG (info).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_DIR="${CLUSTER_DIR:-./cluster}"
SHOW_DIR="${CLUSTER_DIR%/}"  # as given, for messages; CLUSTER_DIR becomes absolute
BASE_PORT="${BASE_PORT:-9092}"
SHARDLOG_BIN="${SHARDLOG_BIN:-$REPO/target/release/shardlog}"
START_TIMEOUT="${START_TIMEOUT:-60}"
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"
HOST=127.0.0.1

die() { echo "cluster.sh: $*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

kafka_port() { echo $((BASE_PORT + 2 * ($1 - 1))); }
ctrl_port() { echo $((BASE_PORT + 2 * ($1 - 1) + 1)); }
metrics_port() { echo $((${METRICS_BASE_PORT:-9644} + $1 - 1)); }
node_dir() { echo "$CLUSTER_DIR/node-$1"; }
show_dir() { echo "$SHOW_DIR/node-$1"; }
pid_file() { echo "$(node_dir "$1")/shardlog.pid"; }
log_file() { echo "$(node_dir "$1")/shardlog.log"; }

# Node numbers that have a directory under CLUSTER_DIR, ascending.
known_nodes() {
    local d
    [ -d "$CLUSTER_DIR" ] || return 0
    for d in "$CLUSTER_DIR"/node-*; do
        [ -d "$d" ] || continue
        d="${d##*/node-}"
        if is_uint "$d"; then echo "$d"; fi
    done | sort -n
}

# The pid of node $1 if its pid file names a live shardlog process serving
# that node's data dir (a stale file whose pid was reused is ignored).
running_pid() {
    local f pid cmd
    f="$(pid_file "$1")"
    [ -f "$f" ] || return 1
    pid="$(cat "$f" 2>/dev/null || true)"
    is_uint "$pid" || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    case "$cmd" in
        *"$(node_dir "$1")/data"*) echo "$pid" ;;
        *) return 1 ;;
    esac
}

port_in_use() {
    # a connect that succeeds means someone listens there
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

file_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

new_cluster_id() {
    # Kafka's format: 16 random bytes, base64url without padding (22 chars)
    head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'
}

voters_for() {
    local n=$1 i out=""
    for ((i = 1; i <= n; i++)); do
        out+="${out:+,}$i@$HOST:$(ctrl_port "$i")"
    done
    echo "$out"
}

bootstrap_for() {
    local n=$1 i out=""
    for ((i = 1; i <= n; i++)); do
        out+="${out:+,}$HOST:$(kafka_port "$i")"
    done
    echo "$out"
}

# Has node $1 logged its Kafka listener line after byte $2 of its log?
# (Not the controller's 'controller listening on' line for its own port.)
# awk reads everything: no early exit, so no SIGPIPE under pipefail.
listening_since() {
    local port
    port="$(kafka_port "$1")"
    tail -c +"$(($2 + 1))" "$(log_file "$1")" 2>/dev/null \
        | awk -v re="listening on ([A-Za-z]+://)?${HOST//./\\.}:$port([^0-9]|\$)" \
            '!/controller listening on/ && $0 ~ re { found = 1 } END { exit !found }'
}

# A failed start stops every node (start refuses to run next to running
# nodes, so these are only the ones it started), bounded as `stop` is.
stop_started() {
    cmd_stop >&2 || true
}

# The last lines node $1 logged after byte $2 of its log (this run only).
run_log_tail() {
    echo "last lines of $(show_dir "$1")/shardlog.log:" >&2
    tail -c +"$(($2 + 1))" "$(log_file "$1")" 2>/dev/null | tail -n 20 >&2 || true
}

cmd_start() {
    local n="${1:-3}" i pid id kafka ctrl voters dir log port kv extra=() sets_words=()
    if ! is_uint "$n" || [ "$n" -lt 1 ]; then die "node count must be a positive number, got '$n'"; fi
    is_uint "$BASE_PORT" || die "BASE_PORT must be a number, got '$BASE_PORT'"
    [ $((BASE_PORT + 2 * n - 1)) -le 65535 ] || die "BASE_PORT $BASE_PORT leaves no room for $n nodes"

    if [ ! -x "$SHARDLOG_BIN" ]; then
        echo "building $SHARDLOG_BIN (cargo build --release -p shardlog)"
        (cd "$REPO" && cargo build --release -p shardlog)
        [ -x "$SHARDLOG_BIN" ] || die "no executable at $SHARDLOG_BIN after the build"
    fi

    mkdir -p "$CLUSTER_DIR"
    CLUSTER_DIR="$(cd "$CLUSTER_DIR" && pwd)"
    # The data dirs remember the quorum they were made with: refuse another shape.
    local conf="$CLUSTER_DIR/cluster.conf"
    if [ -f "$conf" ]; then
        local old_n old_base
        old_n="$(sed -n 's/^nodes=//p' "$conf")"
        old_base="$(sed -n 's/^base_port=//p' "$conf")"
        if [ "$old_n" != "$n" ] || [ "$old_base" != "$BASE_PORT" ]; then
            die "$SHOW_DIR holds a cluster of $old_n nodes on base port $old_base; asked for $n on $BASE_PORT" \
                "(run '$0 stop' and remove $SHOW_DIR to start another shape)"
        fi
    fi
    for i in $(known_nodes); do
        if pid="$(running_pid "$i")"; then
            die "node $i is already running (pid $pid); '$0 stop' first"
        fi
    done
    for ((i = 1; i <= n; i++)); do
        for port in "$(kafka_port "$i")" "$(ctrl_port "$i")"; do
            ! port_in_use "$port" || die "port $port (node $i) is already in use"
        done
    done
    printf 'nodes=%s\nbase_port=%s\n' "$n" "$BASE_PORT" >"$conf"

    if [ ! -s "$CLUSTER_DIR/cluster.id" ]; then
        printf '%s\n' "$(new_cluster_id)" >"$CLUSTER_DIR/cluster.id"
    fi
    id="$(tr -d ' \n' <"$CLUSTER_DIR/cluster.id")"
    [ -n "$id" ] || die "$CLUSTER_DIR/cluster.id is empty"
    voters="$(voters_for "$n")"
    if [ -n "${SHARDS:-}" ]; then extra+=(--shards "$SHARDS"); fi
    if [ -n "${SHARDLOG_SETS:-}" ]; then
        read -r -a sets_words <<<"$SHARDLOG_SETS"
        for kv in "${sets_words[@]}"; do extra+=(--set "$kv"); done
    fi

    # Replicated by default, as a production cluster is: every partition on
    # min(3, n) nodes, acks=all needing two copies from three nodes on
    # (SHARDLOG_SETS overrides any of these).
    rf=$((n < 3 ? n : 3))
    min_isr=$((rf < 3 ? 1 : 2))
    defaults=(--set "default.replication.factor=$rf" --set "offsets.topic.replication.factor=$rf"
        --set "min.insync.replicas=$min_isr")
    echo "cluster.id $id, controller.quorum.voters $voters, replication factor $rf, min.insync.replicas $min_isr"
    declare -A offset
    trap 'stop_started; exit 130' INT TERM
    for ((i = 1; i <= n; i++)); do
        kafka="$(kafka_port "$i")"
        ctrl="$(ctrl_port "$i")"
        dir="$(node_dir "$i")"
        log="$(log_file "$i")"
        mkdir -p "$dir/data"
        offset[$i]="$(file_size "$log")"
        printf '=== %s start: node %s\n' "$(date -u +%FT%TZ)" "$i" >>"$log"
        offset[$i]="$(file_size "$log")"
        RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 \
            "$SHARDLOG_BIN" --data-dir "$dir/data" --listen "$HOST:$kafka" \
            --set "node.id=$i" \
            --set "listeners=PLAINTEXT://$HOST:$kafka,CONTROLLER://$HOST:$ctrl" \
            --set "controller.quorum.voters=$voters" \
            --set "cluster.id=$id" \
            --set "metrics.listen=$HOST:$(metrics_port "$i")" \
            "${defaults[@]}" "${extra[@]}" \
            >>"$log" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$(pid_file "$i")"
        echo "node $i: kafka $HOST:$kafka, controller $HOST:$ctrl, data $(show_dir "$i")/data," \
            "log $(show_dir "$i")/shardlog.log, pid $pid"
    done

    # Every node is spawned before any is waited for: a broker may wait for the
    # controller quorum (a majority of the nodes) before it listens.
    local deadline=$((SECONDS + START_TIMEOUT)) waiting
    while :; do
        waiting=()
        for ((i = 1; i <= n; i++)); do
            if ! running_pid "$i" >/dev/null; then
                echo "node $i exited during startup" >&2
                run_log_tail "$i" "${offset[$i]}"
                stop_started
                die "start failed"
            fi
            listening_since "$i" "${offset[$i]}" || waiting+=("$i")
        done
        [ "${#waiting[@]}" -eq 0 ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            for i in "${waiting[@]}"; do
                echo "node $i not listening after ${START_TIMEOUT}s" >&2
                run_log_tail "$i" "${offset[$i]}"
            done
            stop_started
            die "start timed out"
        fi
        sleep 0.2
    done
    trap - INT TERM
    echo "all $n nodes listening"
    echo "bootstrap: $(bootstrap_for "$n")"
}

cmd_stop() {
    local i pid pids=() nodes=() deadline left
    for i in $(known_nodes); do
        if pid="$(running_pid "$i")"; then
            kill -TERM "$pid" 2>/dev/null || true
            echo "node $i: SIGTERM sent to pid $pid"
            pids+=("$pid")
            nodes+=("$i")
        else
            rm -f "$(pid_file "$i")"
        fi
    done
    if [ "${#pids[@]}" -eq 0 ]; then
        echo "no node running under $SHOW_DIR"
        return 0
    fi
    deadline=$((SECONDS + STOP_TIMEOUT))
    while :; do
        left=()
        for i in "${!pids[@]}"; do
            kill -0 "${pids[$i]}" 2>/dev/null && left+=("$i")
        done
        [ "${#left[@]}" -eq 0 ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            for i in "${left[@]}"; do
                echo "node ${nodes[$i]}: pid ${pids[$i]} still running after ${STOP_TIMEOUT}s, SIGKILL" >&2
                kill -KILL "${pids[$i]}" 2>/dev/null || true
            done
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    for i in "${nodes[@]}"; do
        rm -f "$(pid_file "$i")"
    done
    echo "stopped ${#pids[@]} node(s)"
}

cmd_status() {
    local i pid running=0 total=0
    if [ -z "$(known_nodes)" ]; then
        echo "no cluster under $SHOW_DIR"
        return 0
    fi
    [ -f "$CLUSTER_DIR/cluster.conf" ] && BASE_PORT="$(sed -n 's/^base_port=//p' "$CLUSTER_DIR/cluster.conf")"
    [ -s "$CLUSTER_DIR/cluster.id" ] && echo "cluster.id $(cat "$CLUSTER_DIR/cluster.id")"
    for i in $(known_nodes); do
        total=$((total + 1))
        if pid="$(running_pid "$i")"; then
            running=$((running + 1))
            echo "node $i: running (pid $pid), kafka $HOST:$(kafka_port "$i"), controller $HOST:$(ctrl_port "$i")"
        else
            echo "node $i: stopped, kafka $HOST:$(kafka_port "$i"), controller $HOST:$(ctrl_port "$i")"
        fi
    done
    echo "$running of $total node(s) running"
}

# stop/status find the nodes by the absolute data dir in their command line
if [ -d "$CLUSTER_DIR" ]; then CLUSTER_DIR="$(cd "$CLUSTER_DIR" && pwd)"; fi

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
