//! Each shard's reactor probe: a timer that asks to wake every
//! `PROBE_PERIOD_MS` and measures how late it ran. A late wake-up is time
//! the shard's ready tasks waited for the CPU (Kafka's "request handler
//! idle" seen from the other side): a long compaction step, a blocking
//! call, or too much work on one core. Wake-ups later than
//! `metrics.stall.threshold.ms` count as stalls and are logged.
//!
//! Every second the probe also notes the shard's produce byte counter, so
//! the scrape can give the shard's ingress rate over the last
//! `RATE_WINDOW_S` seconds, which the MB/s headroom is measured against.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const PROBE_PERIOD_MS: u64 = 100;
/// Probe wake-ups per ingress sample.
const TICKS_PER_RATE_SAMPLE: u32 = 10;
/// The ingress rate is averaged over this many seconds.
const RATE_WINDOW_S: usize = 10;
/// The longest delay a probe histogram tells apart (µs); longer count as it.
const DELAY_MAX_US: u64 = 60_000_000;

struct ProbeState {
    delays_us: Option<Histogram<u64>>,
    /// (when, produce bytes so far), oldest first, `RATE_WINDOW_S` + 1 at most.
    ingress: VecDeque<(Instant, u64)>,
}

thread_local! {
    static PROBE: RefCell<ProbeState> = const {
        RefCell::new(ProbeState { delays_us: None, ingress: VecDeque::new() })
    };
}

/// Runs this shard's probe until the task is dropped.
pub async fn run(shard_id: usize, stall_threshold_ms: u64) {
    let period = Duration::from_millis(PROBE_PERIOD_MS);
    let mut ticks = 0u32;
    loop {
        let asked = Instant::now();
        glommio::timer::sleep(period).await;
        let late = asked.elapsed().saturating_sub(period);
        let late_us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        if late_us >= stall_threshold_ms.saturating_mul(1000) {
            super::with(|c| c.reactor_stalls.set(c.reactor_stalls.get() + 1));
            tracing::debug!(
                shard = shard_id,
                "reactor stall: the probe timer ran {late_us} us late"
            );
        }
        ticks += 1;
        let sample_ingress = ticks.is_multiple_of(TICKS_PER_RATE_SAMPLE);
        let produced = super::with(|c| c.produce_bytes.get());
        PROBE.with(|probe| {
            let mut probe = probe.borrow_mut();
            let delays = probe.delays_us.get_or_insert_with(|| {
                Histogram::new_with_bounds(1, DELAY_MAX_US, 2).expect("valid histogram bounds")
            });
            delays.saturating_record(late_us.clamp(1, DELAY_MAX_US));
            if sample_ingress {
                if probe.ingress.len() > RATE_WINDOW_S {
                    probe.ingress.pop_front();
                }
                probe.ingress.push_back((Instant::now(), produced));
            }
        });
    }
}

/// This shard's reactor delays (µs) so far, if the probe ran.
pub fn with_delays<T>(f: impl FnOnce(&Histogram<u64>) -> T) -> Option<T> {
    PROBE.with(|probe| probe.borrow().delays_us.as_ref().map(f))
}

/// Produce bytes per second into this shard over the last `RATE_WINDOW_S`
/// seconds (0 until two samples exist).
pub fn ingress_bytes_per_second() -> f64 {
    PROBE.with(|probe| {
        let probe = probe.borrow();
        match (probe.ingress.front(), probe.ingress.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                b1.wrapping_sub(b0) as f64 / t1.duration_since(t0).as_secs_f64()
            }
            _ => 0.0,
        }
    })
}

/// One shard's produce capacity at `partitions` from the measured curve
/// (`metrics.shard.capacity.curve`): interpolated on log(partitions),
/// flat beyond its ends. None without a curve.
pub fn capacity_bytes_per_second(curve: &[(u64, u64)], partitions: u64) -> Option<f64> {
    let (&(p_first, r_first), &(p_last, r_last)) = (curve.first()?, curve.last()?);
    let partitions = partitions.max(1);
    if partitions <= p_first {
        return Some(r_first as f64);
    }
    if partitions >= p_last {
        return Some(r_last as f64);
    }
    let pair = curve.windows(2).find(|w| partitions <= w[1].0)?;
    let ((p0, r0), (p1, r1)) = (pair[0], pair[1]);
    let x = ((partitions as f64).ln() - (p0 as f64).ln()) / ((p1 as f64).ln() - (p0 as f64).ln());
    Some(r0 as f64 + x * (r1 as f64 - r0 as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_interpolates_on_log_partitions_and_is_flat_outside() {
        let curve = [(100, 400), (10_000, 100)];
        assert_eq!(capacity_bytes_per_second(&curve, 1), Some(400.0));
        assert_eq!(capacity_bytes_per_second(&curve, 100), Some(400.0));
        assert_eq!(
            capacity_bytes_per_second(&curve, 1_000).map(f64::round),
            Some(250.0)
        );
        assert_eq!(capacity_bytes_per_second(&curve, 10_000), Some(100.0));
        assert_eq!(capacity_bytes_per_second(&curve, 1_000_000), Some(100.0));
        assert_eq!(capacity_bytes_per_second(&[], 10), None);
        assert_eq!(capacity_bytes_per_second(&[(10, 5)], 1_000), Some(5.0));
    }

    #[test]
    fn the_probe_measures_late_wake_ups() {
        crate::test_executor::run(|| async {
            let probe = glommio::spawn_local(run(0, 5));
            glommio::timer::sleep(Duration::from_millis(150)).await;
            // Hold the reactor past the probe's next wake-up.
            std::thread::sleep(Duration::from_millis(120));
            glommio::timer::sleep(Duration::from_millis(150)).await;
            drop(probe);
            let (count, max_us) = with_delays(|h| (h.len(), h.max())).unwrap();
            assert!(count >= 2, "{count}");
            assert!(max_us >= 50_000, "{max_us}");
            assert!(super::super::with(|c| c.reactor_stalls.get()) >= 1);
        });
    }
}
