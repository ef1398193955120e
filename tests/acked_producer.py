#!/usr/bin/env python3
"""Continuous acks=all producer used by test_crash_recovery.py (run as a subprocess).

Appends one line per acknowledged record to --out: "<partition> <offset> <value>".
Values are deterministic ASCII (no spaces) from a sequence number, so the test
can recompute and compare them. Stops when --stop-file exists or after
--max-seconds, flushes (bounded), prints a JSON summary on stdout and exits 0
(1 if any delivery failed).
"""

import argparse
import json
import os
import sys
import time

from confluent_kafka import Producer


def value_for(seq: int, size: int) -> bytes:
    head = f"{seq:010d}-"
    word = f"{(seq * 2654435761) % 2**32:08x}"
    body = (word * (size // len(word) + 1))[: max(0, size - len(head))]
    return (head + body).encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--max-queued", type=int, default=20000)
    a = ap.parse_args()

    p = Producer({
        "bootstrap.servers": a.bootstrap,
        "acks": "all",
        "linger.ms": 2,
        "batch.num.messages": 1000,
        "message.timeout.ms": 120000,
        "retry.backoff.ms": 100,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 500,
        "enable.idempotence": False,
        "queue.buffering.max.messages": 200000,
    })
    out = open(a.out, "a", buffering=1 << 20)
    acked = 0
    failed = []

    def on_delivery(err, msg):
        nonlocal acked
        if err is not None:
            if len(failed) < 20:
                failed.append(str(err))
            else:
                failed.append(None)
            return
        out.write(f"{msg.partition()} {msg.offset()} {msg.value().decode()}\n")
        acked += 1

    start = time.monotonic()
    seq = 0
    while not os.path.exists(a.stop_file) and time.monotonic() - start < a.max_seconds:
        if len(p) >= a.max_queued:
            p.poll(0.02)
            out.flush()
            continue
        try:
            p.produce(a.topic, key=f"k{seq % 60}".encode(), value=value_for(seq, a.value_size), on_delivery=on_delivery)
            seq += 1
        except BufferError:
            p.poll(0.02)
        if seq % 200 == 0:
            p.poll(0)
            out.flush()
    left = p.flush(90)
    out.flush()
    out.close()
    summary = {"produced": seq, "acked": acked, "failed": len(failed), "failed_examples": [f for f in failed if f][:5],
               "unflushed": left, "seconds": round(time.monotonic() - start, 1)}
    print(json.dumps(summary), flush=True)
    sys.exit(0 if not failed and left == 0 else 1)


if __name__ == "__main__":
    main()
