//! Clock, latency histograms and the summary/JSON shapes.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram keeps exactly (60 s); larger values saturate.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// Maps `Instant`s to wall-clock microseconds from one anchor, so producer
/// and consumer threads of one process stamp and compare on one monotonic
/// clock, and other processes on this machine can compare wall clocks.
struct Anchor {
    instant: Instant,
    wall_us: u64,
}

fn anchor() -> &'static Anchor {
    static ANCHOR: OnceLock<Anchor> = OnceLock::new();
    ANCHOR.get_or_init(|| Anchor {
        instant: Instant::now(),
        wall_us: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0),
    })
}

pub fn wall_us(at: Instant) -> u64 {
    let a = anchor();
    let since = at.saturating_duration_since(a.instant).as_micros() as u64;
    a.wall_us + since
}

pub fn now_wall_us() -> u64 {
    wall_us(Instant::now())
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// Records `value_us` (clamped to the histogram's range).
pub fn record(h: &mut Histogram<u64>, value_us: u64) {
    h.saturating_record(value_us.clamp(1, LATENCY_US_MAX));
}

pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    into.add(from).expect("histograms share bounds");
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        Some(Latency {
            count: h.len(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
        })
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {} µs, p99 {} µs, p99.9 {} µs, p99.99 {} µs, max {} µs ({} samples)",
            self.p50_us, self.p99_us, self.p999_us, self.p9999_us, self.max_us, self.count
        )
    }
}

/// One side's figures (produce or consume).
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub records: u64,
    /// Record value bytes (what MB/s counts).
    pub value_bytes: u64,
    /// RecordBatch bytes on the wire (headers and record framing included).
    pub batch_bytes: u64,
    pub batches: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub msgs_per_s: f64,
    /// 10^6 bytes of record values per second.
    pub mb_per_s: f64,
}

impl Throughput {
    pub fn new(
        records: u64,
        value_bytes: u64,
        batch_bytes: u64,
        batches: u64,
        errors: u64,
        elapsed_s: f64,
    ) -> Self {
        let secs = elapsed_s.max(1e-9);
        Throughput {
            records,
            value_bytes,
            batch_bytes,
            batches,
            errors,
            elapsed_s: round3(elapsed_s),
            msgs_per_s: (records as f64 / secs).round(),
            mb_per_s: round3(value_bytes as f64 / secs / 1e6),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} msgs in {:.2} s: {:.0} msgs/s, {:.1} MB/s ({} batches, {} errors)",
            self.records, self.elapsed_s, self.msgs_per_s, self.mb_per_s, self.batches, self.errors
        )
    }
}

/// One partition leader's part of a run (produce or consume side).
#[derive(Clone, Debug, Serialize)]
pub struct LeaderReport {
    pub leader_id: i32,
    /// "host:port" the connections went to (Metadata's advertised address).
    pub addr: String,
    /// (topic, partition) pairs it leads in this run.
    pub partitions: usize,
    pub connections: usize,
    /// Records it acked (sent, for acks=0), or that were read from it.
    pub records: u64,
}

impl LeaderReport {
    /// "broker 1 at host:port: 4 partitions, 1 connections, 1200 records" per leader.
    pub fn lines(leaders: &[LeaderReport]) -> Vec<String> {
        leaders
            .iter()
            .map(|l| {
                format!(
                    "broker {} at {}: {} partitions, {} connections, {} records",
                    l.leader_id, l.addr, l.partitions, l.connections, l.records
                )
            })
            .collect()
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
}

impl Machine {
    pub fn current() -> Machine {
        Machine {
            nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_hold_both_sides() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for _ in 0..1500 {
            record(&mut a, 100);
        }
        for _ in 0..499 {
            record(&mut b, 10_000);
        }
        record(&mut b, u64::MAX);
        merge(&mut a, &b);
        let l = Latency::of(&a).unwrap();
        assert_eq!(l.count, 2000);
        assert_eq!(l.p50_us, 100);
        assert!((9_990..=10_010).contains(&l.p99_us), "p99 {}", l.p99_us);
        // Saturated at the bound, not lost.
        assert!(l.max_us >= LATENCY_US_MAX - LATENCY_US_MAX / 1000);
    }

    #[test]
    fn empty_histogram_has_no_latency() {
        assert!(Latency::of(&new_histogram()).is_none());
    }

    #[test]
    fn throughput_counts_value_megabytes() {
        let t = Throughput::new(1_000_000, 1_024_000_000, 1_100_000_000, 15_625, 0, 2.0);
        assert_eq!(t.msgs_per_s, 500_000.0);
        assert_eq!(t.mb_per_s, 512.0);
    }

    #[test]
    fn wall_clock_follows_instants() {
        now_wall_us(); // set the anchor before `a`
        let a = Instant::now();
        let b = a + std::time::Duration::from_millis(5);
        assert_eq!(wall_us(b) - wall_us(a), 5000);
    }
}
