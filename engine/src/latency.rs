//! Where a request's time goes on this shard: one latency histogram per
//! (request type, stage), as Kafka's `RequestMetrics` keeps
//! `RequestQueueTimeMs`, `LocalTimeMs`, `ResponseQueueTimeMs`,
//! `ResponseSendTimeMs` and `TotalTimeMs` per request type, plus the two
//! storage stages under a produce (waiting for the log's writer, and the
//! device write itself), in microseconds.
//!
//! Each shard records into its own thread-local histograms (state owned by
//! the shard's thread, no lock). A histogram is allocated at its key's first
//! sample and never again, so recording costs a clock read and a map lookup.
//! Every shard logs a summary of its histograms at a clean stop
//! (`log_summary`); the benchmarks read those lines, and the metrics
//! endpoint exports them as Prometheus histograms (`metrics::collect`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;

/// The longest time a histogram tells apart; longer samples count as this.
const LATENCY_MAX_US: u64 = 600_000_000;
/// Two significant figures: each histogram stays a few KiB.
const SIGNIFICANT_FIGURES: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Request read whole → its handler starts (Kafka's RequestQueueTime).
    RequestQueue,
    /// Handler start → answer encoded (Kafka's LocalTime plus RemoteTime:
    /// for acks=all it includes waiting for the followers).
    Handle,
    /// Answer encoded → the connection starts sending it (answers leave in
    /// request order, so this is waiting for the answers before it).
    ResponseQueue,
    /// Writing the answer to the socket.
    ResponseSend,
    /// Request read whole → answer sent.
    Total,
    /// An append waiting for its log's writer (a write in flight ahead of it).
    AppendQueue,
    /// One segment write: submitted to io_uring → completed.
    SegmentWrite,
    /// An append queued → its bytes written to the segment (and synced,
    /// when the flush policy asks for it at that write): how long a
    /// produce waits for its data to be durable on this node.
    AppendDurable,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::RequestQueue => "request_queue",
            Stage::Handle => "handle",
            Stage::ResponseQueue => "response_queue",
            Stage::ResponseSend => "response_send",
            Stage::Total => "total",
            Stage::AppendQueue => "append_queue",
            Stage::SegmentWrite => "segment_write",
            Stage::AppendDurable => "append_durable",
        }
    }
}

/// Request stages carry the request's API key; storage stages carry none.
type Key = (Option<i16>, Stage);

thread_local! {
    static HISTOGRAMS: RefCell<BTreeMap<Key, Histogram<u64>>> = const { RefCell::new(BTreeMap::new()) };
}

/// Records the time since `since` for request type `api_key` (None for a
/// storage stage). Keys Kafka does not define are not recorded: a client
/// sending every i16 must not make the shard allocate a histogram for each.
pub fn record(api_key: Option<i16>, stage: Stage, since: Instant) {
    if api_key.is_some_and(|key| kafka_protocol::messages::ApiKey::try_from(key).is_err()) {
        return;
    }
    let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
    HISTOGRAMS.with(|histograms| {
        let mut histograms = histograms.borrow_mut();
        let histogram = histograms.entry((api_key, stage)).or_insert_with(|| {
            Histogram::new_with_bounds(1, LATENCY_MAX_US, SIGNIFICANT_FIGURES)
                .expect("valid histogram bounds")
        });
        histogram.saturating_record(us.clamp(1, LATENCY_MAX_US));
    });
}

/// One line per recorded (request type, stage) of this thread:
/// `<api> <stage> n=.. p50_us=.. p99_us=.. p999_us=.. max_us=..`, the API
/// by its Kafka name (`Produce`), `storage` for storage stages.
pub fn summary() -> Vec<String> {
    HISTOGRAMS.with(|histograms| {
        histograms
            .borrow()
            .iter()
            .map(|((api_key, stage), h)| {
                let api = match api_key {
                    Some(key) => kafka_protocol::messages::ApiKey::try_from(*key)
                        .map(|k| format!("{k:?}"))
                        .unwrap_or_else(|_| format!("api{key}")),
                    None => "storage".to_string(),
                };
                format!(
                    "{api} {} n={} p50_us={} p99_us={} p999_us={} max_us={}",
                    stage.name(),
                    h.len(),
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    h.value_at_quantile(0.999),
                    h.max()
                )
            })
            .collect()
    })
}

/// Calls `f` with each of this thread's histograms: its request type
/// (None for storage stages), its stage and its samples in microseconds.
pub fn for_each(mut f: impl FnMut(Option<i16>, Stage, &Histogram<u64>)) {
    HISTOGRAMS.with(|histograms| {
        for ((api_key, stage), h) in histograms.borrow().iter() {
            f(*api_key, *stage, h);
        }
    });
}

/// Logs this shard's `summary`, one line each.
pub fn log_summary(shard: usize) {
    for line in summary() {
        tracing::info!(shard, "latency {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn samples_land_in_their_own_key_and_the_summary_names_them() {
        let start = Instant::now() - Duration::from_millis(3);
        record(Some(0), Stage::Handle, start);
        record(Some(0), Stage::Handle, start);
        record(None, Stage::SegmentWrite, Instant::now());
        let lines = summary();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let handle = lines.iter().find(|l| l.starts_with("Produce handle ")).unwrap();
        assert!(handle.contains(" n=2 "), "{handle}");
        let p50: u64 = handle
            .split_whitespace()
            .find_map(|f| f.strip_prefix("p50_us="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(p50 >= 3_000, "{handle}");
        assert!(lines.iter().any(|l| l.starts_with("storage segment_write n=1 ")));
        // Unknown request types are not kept.
        for key in [-1, 999, i16::MAX] {
            record(Some(key), Stage::Total, start);
        }
        assert_eq!(summary().len(), 2);
    }
}
