#!/usr/bin/env bash
# The one command that runs every test of shardlog on a fresh machine:
# system packages, Python test deps, release build, Rust unit tests, then the
# end-to-end pytest suite against the real broker binary.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

log() { printf '\n==> %s\n' "$*"; }

# --- system packages (kcat; burrow for the consumer-group lag test; prometheus
# for the metrics test; util-linux's unshare and prlimit for the tune tests) ---
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
fi
need_pkgs=()
command -v kcat >/dev/null 2>&1 || need_pkgs+=(kcat)
# Debian's burrow package installs the binary as /usr/bin/Burrow.
command -v Burrow >/dev/null 2>&1 || need_pkgs+=(burrow)
command -v prometheus >/dev/null 2>&1 || need_pkgs+=(prometheus)
command -v unshare >/dev/null 2>&1 || need_pkgs+=(util-linux)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# --- Python test dependencies ---------------------------------------------------
PYTHON="${PYTHON:-python3}"
log "installing Python test dependencies ($("$PYTHON" --version 2>&1))"
"$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore -r tests/requirements.txt

# --- build and unit tests ---------------------------------------------------------
log "cargo build --release -p shardlog -p shardlog-bench"
cargo build --release -p shardlog -p shardlog-bench
export SHARDLOG_BIN="${SHARDLOG_BIN:-$REPO/target/release/shardlog}"
[ -x "$SHARDLOG_BIN" ] || { echo "broker binary missing: $SHARDLOG_BIN" >&2; exit 1; }

log "cargo test --workspace --release"
# A unit test still running after SHARDLOG_TEST_STUCK_S (240 s) aborts its
# test binary with what every thread is waiting on (engine/src/test_executor.rs).
# One CI run sat 90 minutes in a storage test that takes 0.2 s; ~470 local
# runs under load did not reproduce it. Such a run is repeated once, loudly,
# with its report left above in the log; any other failure fails at once.
unit_log="$(mktemp)"
if ! cargo test --workspace --release 2>&1 | tee "$unit_log"; then
    if grep -q "still running after" "$unit_log"; then
        log "a unit test was stuck (report above); running the unit tests once more"
        cargo test --workspace --release
    else
        exit 1
    fi
fi
rm -f "$unit_log"

# --- end-to-end suite -------------------------------------------------------------------
log "python3 -m pytest -v tests/"
set +e
"$PYTHON" -m pytest -v tests/ "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: treating as a failure" >&2
    exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"

# --- memory-safety stress under AddressSanitizer ------------------------------------
# The broker and glommio carry `unsafe` code (sockets, io_uring, task reference
# counts); a short stress run of a build under AddressSanitizer guards it
# (issue 9). The foreign-waker regression test runs under the sanitizer too.
# A longer campaign: STRESS_SECONDS=600 python3 -m pytest tests/test_stress.py with SHARDLOG_BIN set.
ASAN_TARGET="$(rustc -vV | sed -n 's/^host: //p')"
ASAN_ENV=(env RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address")
log "AddressSanitizer build (nightly, $ASAN_TARGET)"
"${ASAN_ENV[@]}" cargo +nightly build --release -p shardlog --target "$ASAN_TARGET" --target-dir target/asan
log "AddressSanitizer: foreign waker drop test"
"${ASAN_ENV[@]}" cargo +nightly test --release -p shardlog --target "$ASAN_TARGET" --target-dir target/asan \
    --test foreign_waker_drop
log "AddressSanitizer: broker stress (${STRESS_SECONDS:-60} s)"
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" SHARDLOG_BIN="$REPO/target/asan/$ASAN_TARGET/release/shardlog" \
    STRESS_SECONDS="${STRESS_SECONDS:-60}" "$PYTHON" -m pytest -v tests/test_stress.py
