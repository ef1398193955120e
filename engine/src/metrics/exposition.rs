//! Prometheus' text exposition format (version 0.0.4): one `# HELP` and
//! `# TYPE` line per metric family, then its samples, every sample of a
//! family together. Shards write their own `Exposition` and the scrape
//! merges them family by family (`merge`), so a family's samples stay
//! contiguous whichever shards produced them.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};

use hdrhistogram::Histogram;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metric family's name, type and help text.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

pub const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Counter,
        help,
    }
}

pub const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Gauge,
        help,
    }
}

pub const fn histogram(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Histogram,
        help,
    }
}

/// Upper bounds of the latency histograms' buckets, in microseconds
/// (exported in seconds, Prometheus' base unit): 100 µs to 10 s.
const LATENCY_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Samples by family; a family's samples in the order written.
#[derive(Default)]
pub struct Exposition {
    families: BTreeMap<&'static str, (Family, String)>,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a dyn Display)];

impl Exposition {
    /// One sample of `family` with `labels`.
    pub fn sample(&mut self, family: Family, labels: Labels<'_>, value: impl Display) {
        let body = self.body(family);
        write_series(body, family.name, "", labels, None);
        let _ = writeln!(body, " {value}");
    }

    /// A latency histogram of microsecond samples, in seconds.
    pub fn latency_histogram(&mut self, family: Family, labels: Labels<'_>, h: &Histogram<u64>) {
        debug_assert_eq!(family.kind, Kind::Histogram);
        // One pass over the recorded values (not one per bucket).
        let mut per_bucket = [0u64; LATENCY_BUCKETS_US.len()];
        for v in h.iter_recorded() {
            let bucket =
                LATENCY_BUCKETS_US.partition_point(|&le| le < h.highest_equivalent(v.value_iterated_to()));
            if let Some(n) = per_bucket.get_mut(bucket) {
                *n += v.count_at_value();
            }
        }
        let body = self.body(family);
        let mut cumulative = 0;
        for (le_us, n) in LATENCY_BUCKETS_US.into_iter().zip(per_bucket) {
            cumulative += n;
            let le = le_us as f64 / 1e6;
            write_series(body, family.name, "_bucket", labels, Some(&le));
            let _ = writeln!(body, " {cumulative}");
        }
        write_series(body, family.name, "_bucket", labels, Some(&"+Inf"));
        let _ = writeln!(body, " {}", h.len());
        write_series(body, family.name, "_sum", labels, None);
        let _ = writeln!(body, " {}", h.mean() * h.len() as f64 / 1e6);
        write_series(body, family.name, "_count", labels, None);
        let _ = writeln!(body, " {}", h.len());
    }

    /// Appends lines written by `line` for `family` (a caller writing many
    /// samples of one label set formats the labels once: `labels` is the
    /// text between the braces, escaped with `escape_label`).
    pub fn append_lines(&mut self, family: Family, lines: &str) {
        self.body(family).push_str(lines);
    }

    fn body(&mut self, family: Family) -> &mut String {
        &mut self
            .families
            .entry(family.name)
            .or_insert_with(|| (family, String::new()))
            .1
    }

    /// Appends `other`'s samples after this one's, family by family.
    pub fn merge(&mut self, other: Exposition) {
        for (name, (family, body)) in other.families {
            self.families
                .entry(name)
                .or_insert_with(|| (family, String::new()))
                .1
                .push_str(&body);
        }
    }

    /// The whole text: families by name, each with its header.
    pub fn render(&self) -> String {
        let size: usize = self.families.values().map(|(_, body)| body.len() + 128).sum();
        let mut out = String::with_capacity(size);
        for (family, body) in self.families.values() {
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.name());
            out.push_str(body);
        }
        out
    }
}

/// `name{labels}` (with a histogram bucket's `le` last), no value.
fn write_series(out: &mut String, name: &str, suffix: &str, labels: Labels<'_>, le: Option<&dyn Display>) {
    out.push_str(name);
    out.push_str(suffix);
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let le = le.map(|le| ("le", le));
    for (key, value) in labels.iter().copied().chain(le) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(key);
        out.push_str("=\"");
        escape_into(out, value);
        out.push('"');
    }
    out.push('}');
}

/// One sample line, `name{labels} value`, onto `out` (`labels` already
/// formatted and escaped, see `escape_label`).
pub fn line(out: &mut String, name: &str, labels: &str, value: impl Display) {
    let _ = writeln!(out, "{name}{{{labels}}} {value}");
}

/// `value` as a label value, escaped, onto `out`.
pub fn escape_label(out: &mut String, value: &dyn Display) {
    escape_into(out, value);
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn escape_into(out: &mut String, value: &dyn Display) {
    let start = out.len();
    let _ = write!(out, "{value}");
    if !out[start..].contains(['\\', '"', '\n']) {
        return;
    }
    let raw = out.split_off(start);
    for c in raw.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUESTS: Family = counter("x_requests_total", "Requests.");
    const UP: Family = gauge("x_up", "Up.");

    #[test]
    fn merged_families_keep_their_samples_together_and_labels_are_escaped() {
        let mut a = Exposition::default();
        a.sample(REQUESTS, &[("shard", &0)], 3);
        a.sample(UP, &[], 1);
        let mut b = Exposition::default();
        b.sample(REQUESTS, &[("shard", &1), ("group", &"a\"b\\c\nd")], 4);
        a.merge(b);
        let text = a.render();
        assert_eq!(
            text,
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\n\
             x_requests_total{shard=\"0\"} 3\n\
             x_requests_total{shard=\"1\",group=\"a\\\"b\\\\c\\nd\"} 4\n\
             # HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_the_count() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 2).unwrap();
        for us in [50, 200, 200, 3_000, 20_000_000] {
            h.record(us).unwrap();
        }
        let mut e = Exposition::default();
        e.latency_histogram(histogram("x_seconds", "Latency."), &[("api", &"Produce")], &h);
        let text = e.render();
        assert!(
            text.contains("x_seconds_bucket{api=\"Produce\",le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{api=\"Produce\",le=\"0.00025\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{api=\"Produce\",le=\"0.005\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{api=\"Produce\",le=\"10\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{api=\"Produce\",le=\"+Inf\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_count{api=\"Produce\"} 5\n"), "{text}");
        assert!(text.contains("# TYPE x_seconds histogram\n"));
    }
}
