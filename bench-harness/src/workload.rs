//! Named workloads: TOML files under `bench-harness/workloads/`, modelled on
//! the OpenMessaging Benchmark's (`1-topic-100-partitions-1kb-4p-4c`, ...)
//! and scaled to a 2-core machine that runs broker and client together.
//!
//! A workload is a list of steps run one after the other on one topic:
//! `e2e` mode runs tail consumers and producers together per step (max
//! rate first when `max_rate`, then each absolute rate, then each fraction
//! of the max step's achieved rate: OMB's rate ladder); `backlog` mode
//! produces with no consumer for `duration_s`, then drains the backlog with
//! `consumers` catch-up readers (OMB's backlog test, minus the producers
//! that OMB keeps running during the drain).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batch::{Compression, Keys};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    E2e,
    Backlog,
}

fn default_batch_bytes() -> usize {
    65536
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn default_acks() -> i16 {
    1
}
fn default_drain_s() -> f64 {
    30.0
}
fn default_max_wait_ms() -> i32 {
    100
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub description: String,
    pub mode: Mode,
    /// Topic name; default `wl-<file name>`.
    pub topic: Option<String>,
    /// Topics (N > 1: TOPIC-0 .. TOPIC-(N-1)), each with `partitions`.
    #[serde(default = "one")]
    pub topics: usize,
    pub partitions: i32,
    pub record_bytes: usize,
    /// Uniform record sizes record_bytes..=record_bytes_max when set.
    pub record_bytes_max: Option<usize>,
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    #[serde(default = "one")]
    pub partitions_per_request: usize,
    #[serde(default = "one")]
    pub producers: usize,
    #[serde(default = "one")]
    pub consumers: usize,
    #[serde(default = "four")]
    pub inflight: usize,
    #[serde(default = "default_acks")]
    pub acks: i16,
    #[serde(default = "default_keys")]
    pub keys: Keys,
    pub key_count: Option<u64>,
    pub zipf_exponent: Option<f64>,
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Length of each step (e2e) or of the backlog build (backlog).
    pub duration_s: f64,
    /// Consumers' time to catch up after producing stops.
    #[serde(default = "default_drain_s")]
    pub drain_s: f64,
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: i32,
    /// Run a max-rate step first.
    #[serde(default)]
    pub max_rate: bool,
    /// Fixed-rate steps, msgs/s over all producers.
    #[serde(default)]
    pub rates_msgs_per_s: Vec<f64>,
    /// Fixed-rate steps as fractions of the max step's achieved msgs/s
    /// (needs `max_rate`).
    #[serde(default)]
    pub rate_fractions_of_max: Vec<f64>,
}

fn default_keys() -> Keys {
    Keys::None
}
fn default_compression() -> Compression {
    Compression::None
}

impl Workload {
    pub fn parse(text: &str) -> Result<Workload, String> {
        let w: Workload = toml::from_str(text).map_err(|e| e.to_string())?;
        w.check()?;
        Ok(w)
    }

    fn check(&self) -> Result<(), String> {
        if self.mode == Mode::E2e && !self.max_rate && self.rates_msgs_per_s.is_empty() {
            return Err("an e2e workload needs max_rate or rates_msgs_per_s".into());
        }
        if !self.rate_fractions_of_max.is_empty() && !self.max_rate {
            return Err("rate_fractions_of_max needs max_rate = true".into());
        }
        if self
            .rate_fractions_of_max
            .iter()
            .chain(&self.rates_msgs_per_s)
            .any(|r| !(r.is_finite() && *r > 0.0))
        {
            return Err("rates and fractions must be > 0".into());
        }
        Ok(())
    }

    /// The producer/consumer flags shared by every step, as argv.
    pub fn args(&self, name: &str, bootstrap: &str, duration_s: f64) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--bootstrap".into(),
            bootstrap.into(),
            "--topic".into(),
            self.topic.clone().unwrap_or_else(|| format!("wl-{name}")),
            "--topics".into(),
            self.topics.to_string(),
            "--partitions".into(),
            self.partitions.to_string(),
            "--record-bytes".into(),
            self.record_bytes.to_string(),
            "--duration-s".into(),
            duration_s.to_string(),
        ];
        if let Some(m) = self.record_bytes_max {
            a.extend(["--record-bytes-max".into(), m.to_string()]);
        }
        a
    }

    pub fn producer_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--batch-bytes".into(),
            self.batch_bytes.to_string(),
            "--partitions-per-request".into(),
            self.partitions_per_request.to_string(),
            "--producers".into(),
            self.producers.to_string(),
            "--inflight".into(),
            self.inflight.to_string(),
            format!("--acks={}", self.acks),
            "--keys".into(),
            enum_name(&self.keys),
            "--compression".into(),
            enum_name(&self.compression),
        ];
        if let Some(n) = self.key_count {
            a.extend(["--key-count".into(), n.to_string()]);
        }
        if let Some(s) = self.zipf_exponent {
            a.extend(["--zipf-exponent".into(), s.to_string()]);
        }
        a
    }

    pub fn consumer_args(&self) -> Vec<String> {
        vec![
            "--consumers".into(),
            self.consumers.to_string(),
            "--max-wait-ms".into(),
            self.max_wait_ms.to_string(),
        ]
    }
}

fn enum_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Where workload files live: next to the crate's sources when run from a
/// checkout (compile-time path), or `bench-harness/workloads` under the
/// current directory.
pub fn workload_dirs() -> Vec<PathBuf> {
    vec![
        PathBuf::from("bench-harness/workloads"),
        PathBuf::from("workloads"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads"),
    ]
}

/// Resolves a workload by path, or by name in `workload_dirs()`; returns
/// (name, workload).
pub fn load(name_or_path: &str) -> Result<(String, Workload), String> {
    let direct = PathBuf::from(name_or_path);
    let candidates = std::iter::once(direct.clone()).chain(
        workload_dirs()
            .into_iter()
            .map(|d| d.join(format!("{name_or_path}.toml"))),
    );
    for path in candidates {
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let w = Workload::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| name_or_path.to_string());
            return Ok((name, w));
        }
    }
    Err(format!(
        "no workload {name_or_path} (a path, or a name in bench-harness/workloads/)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_file_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let w = Workload::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(w.partitions >= 1 && w.duration_s > 0.0, "{}", path.display());
                // Its flags are accepted by the CLI.
                let name = path.file_stem().unwrap().to_string_lossy().to_string();
                let mut argv = vec!["shardlog-bench".to_string(), "e2e".into()];
                argv.extend(w.args(&name, "127.0.0.1:1", w.duration_s));
                argv.extend(w.producer_args());
                argv.extend(w.consumer_args());
                crate::parse_cli(&argv).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 5, "only {n} workloads");
        assert!(load("keyed-zipf").is_ok());
    }

    #[test]
    fn bad_workloads_are_refused() {
        let base = "description = 'x'\nmode = 'e2e'\npartitions = 1\nrecord_bytes = 100\nduration_s = 1\n";
        assert!(Workload::parse(base).is_err(), "no steps");
        assert!(Workload::parse(&format!("{base}max_rate = true\n")).is_ok());
        assert!(Workload::parse(&format!("{base}max_rate = true\nbogus = 1\n")).is_err());
        assert!(Workload::parse(&format!("{base}rate_fractions_of_max = [0.5]\n")).is_err());
        assert!(Workload::parse(&format!("{base}rates_msgs_per_s = [-1.0]\n")).is_err());
        let w = Workload::parse(&format!("{base}rates_msgs_per_s = [1000.0]\nkeys = 'zipf'\n")).unwrap();
        assert_eq!(w.keys, Keys::Zipf);
        assert_eq!(w.batch_bytes, 65536);
    }
}
