//! `shardlog-bench capacity`: sweeps the partition count at a fixed total
//! load and at max rate, and records per step throughput, produce-ack and
//! end-to-end latency, the broker's RSS and open descriptors, topic
//! creation time, and (when the tool runs the broker itself) restart times
//! after a clean (SIGTERM) and an unclean (SIGKILL) shutdown. Writes
//! capacity.json, capacity.md and three SVG charts into --out-dir.
//!
//! With --broker-bin each step gets a fresh broker on a fresh data dir, so
//! one step's partitions do not weigh on the next one's figures. With
//! --bootstrap the broker is someone else's: topics are new per step
//! (`cap-<partitions>-<unix s>`), restarts are skipped, and /proc figures
//! need --broker-pid.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};

use crate::broker::{self, ManagedBroker, ProcStats, Restart};
use crate::chart::{self, Series};
use crate::wire::{Conn, Error, Result};

#[derive(Clone, Debug, Serialize)]
pub struct CapacityParams {
    pub partitions_list: Vec<i32>,
    pub broker_bin: Option<PathBuf>,
    pub broker_args: Vec<String>,
    pub bootstrap: Option<String>,
    pub broker_pid: Option<u32>,
    pub work_dir: PathBuf,
    pub out_dir: PathBuf,
    /// Total load of the fixed-rate run, MB/s of record values.
    pub fixed_mb_per_s: f64,
    pub max_rate: bool,
    pub restarts: bool,
    /// Runs of each measurement per step; figures are medians.
    pub runs: usize,
    pub record_bytes: usize,
    pub duration_s: f64,
    pub drain_s: f64,
    /// Producer and consumer flags for every run (batch, producers, ...).
    pub load_args: Vec<String>,
    pub partitions_per_request: usize,
    pub quiet: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub partitions: i32,
    pub topic: String,
    pub topic_creation_ms: f64,
    pub fixed_load: Option<Value>,
    pub max_rate: Option<Value>,
    /// After the runs (RSS, peak RSS, descriptors, threads).
    pub broker: Option<ProcStats>,
    pub restart_clean: Option<Restart>,
    pub restart_unclean: Option<Restart>,
}

/// Runs the sweep; `run_step` runs one e2e command line and returns its
/// results (the same path as `shardlog-bench e2e`).
pub fn run(params: &CapacityParams, run_step: &dyn Fn(&[String]) -> Result<Value>) -> Result<Value> {
    std::fs::create_dir_all(&params.out_dir)?;
    std::fs::create_dir_all(&params.work_dir)?;
    assert!(params.runs >= 1);
    let phases = 1 + 1 + usize::from(params.max_rate) + if params.restarts { 2 } else { 0 };
    let bar = ProgressBar::with_draw_target(
        Some((params.partitions_list.len() * phases) as u64),
        if params.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut steps = Vec::new();
    let swept = (|| -> Result<()> {
        for &partitions in &params.partitions_list {
            let step = run_one(params, partitions, run_step, &bar)?;
            steps.push(step);
            // Keep what is done, should a later step fail.
            write_outputs(params, &steps)?;
        }
        Ok(())
    })();
    // Only now, not after each step (see `run_one`).
    for &partitions in &params.partitions_list {
        let _ = std::fs::remove_dir_all(step_dir(params, partitions));
    }
    swept?;
    bar.finish_and_clear();
    let summary = write_outputs(params, &steps)?;
    print!(
        "{}",
        std::fs::read_to_string(params.out_dir.join("capacity.md")).unwrap_or_default()
    );
    Ok(summary)
}

/// A step's broker data, under `--work-dir`.
fn step_dir(params: &CapacityParams, partitions: i32) -> PathBuf {
    params.work_dir.join(format!("p{partitions}"))
}

fn run_one(
    params: &CapacityParams,
    partitions: i32,
    run_step: &dyn Fn(&[String]) -> Result<Value>,
    bar: &ProgressBar,
) -> Result<Step> {
    let mut managed = match &params.broker_bin {
        Some(bin) => {
            let dir = step_dir(params, partitions);
            let _ = std::fs::remove_dir_all(&dir);
            bar.set_message(format!("{partitions} partitions: starting broker"));
            Some(ManagedBroker::start(bin, &dir, &params.broker_args)?)
        }
        None => None,
    };
    let addr = match (&managed, &params.bootstrap) {
        (Some(b), _) => b.addr.clone(),
        (None, Some(addr)) => addr.clone(),
        (None, None) => {
            return Err(Error::Protocol(
                "capacity needs --broker-bin or --bootstrap".into(),
            ))
        }
    };
    let pid = managed.as_ref().and_then(|b| b.pid()).or(params.broker_pid);
    let topic = if managed.is_some() {
        format!("cap-{partitions}")
    } else {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("cap-{partitions}-{now_s}")
    };

    bar.set_message(format!("{partitions} partitions: creating topic"));
    let created = Instant::now();
    Conn::open(&addr)?.ensure_topic(&topic, partitions)?;
    // CreateTopics answers once the topic is committed; the broker opens
    // the new logs after that, and a produce before then is refused (which
    // ends a run). With one managed broker, wait until every partition
    // answers ListOffsets, and count that in the creation time.
    if let Some(b) = managed.as_mut() {
        b.wait_ready(Some((&topic, partitions)))?;
    }
    let topic_creation_ms = (created.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    bar.inc(1);

    let argv = |rate: Option<f64>| -> Vec<String> {
        let mut a: Vec<String> = [
            "shardlog-bench",
            "e2e",
            "--bootstrap",
            &addr,
            "--topic",
            &topic,
            "--partitions",
            &partitions.to_string(),
            "--record-bytes",
            &params.record_bytes.to_string(),
            "--duration-s",
            &params.duration_s.to_string(),
            "--drain-s",
            &params.drain_s.to_string(),
            "--partitions-per-request",
            &params.partitions_per_request.min(partitions as usize).to_string(),
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(params.load_args.iter().cloned());
        if let Some(r) = rate {
            a.extend(["--rate".to_string(), format!("{r:.0}")]);
        }
        a
    };
    let rate_msgs_per_s = params.fixed_mb_per_s * 1e6 / params.record_bytes as f64;
    bar.set_message(format!(
        "{partitions} partitions: fixed {} MB/s",
        params.fixed_mb_per_s
    ));
    let mut fixed_runs = Vec::with_capacity(params.runs);
    for i in 0..params.runs {
        bar.set_message(format!(
            "{partitions} partitions: fixed {} MB/s, run {}",
            params.fixed_mb_per_s,
            i + 1
        ));
        fixed_runs.push(run_step(&argv(Some(rate_msgs_per_s)))?);
    }
    let mut fixed = median_run(&fixed_runs);
    fixed["rate_msgs_per_s"] = json!(rate_msgs_per_s.round());
    bar.inc(1);
    let max_rate = if params.max_rate {
        let mut runs = Vec::with_capacity(params.runs);
        for i in 0..params.runs {
            bar.set_message(format!("{partitions} partitions: max rate, run {}", i + 1));
            runs.push(run_step(&argv(None))?);
        }
        bar.inc(1);
        Some(median_run(&runs))
    } else {
        None
    };
    let stats = pid.and_then(broker::proc_stats);

    let (mut restart_clean, mut restart_unclean) = (None, None);
    if let (Some(b), true) = (managed.as_mut(), params.restarts) {
        let (mut clean, mut unclean) = (Vec::new(), Vec::new());
        for i in 0..params.runs {
            bar.set_message(format!("{partitions} partitions: clean restart {}", i + 1));
            clean.push(b.restart(libc::SIGTERM, &topic, partitions)?);
            bar.set_message(format!("{partitions} partitions: unclean restart {}", i + 1));
            unclean.push(b.restart(libc::SIGKILL, &topic, partitions)?);
        }
        restart_clean = median_restart(clean);
        restart_unclean = median_restart(unclean);
        bar.inc(2);
    }
    if let Some(mut b) = managed {
        let _ = b.stop(libc::SIGTERM);
        // The data stays until the sweep ends (`run`): ext4
        // without a journal checks every inode it allocates against those
        // deleted in the last minute or more (`recently_deleted`), so
        // deleting one step's 100,000 logs slowed the next step's creates
        // several-fold.
    }
    Ok(Step {
        partitions,
        topic,
        topic_creation_ms,
        fixed_load: Some(fixed),
        max_rate,
        broker: stats,
        restart_clean,
        restart_unclean,
    })
}

/// Figures taken as the median over runs (each on its own).
const MEDIAN_FIGURES: [&[&str]; 8] = [
    &["produce", "mb_per_s"],
    &["produce", "msgs_per_s"],
    &["produce", "ack_latency", "p50_us"],
    &["produce", "ack_latency", "p99_us"],
    &["produce", "ack_latency", "p999_us"],
    &["consume", "e2e_latency", "p50_us"],
    &["consume", "e2e_latency", "p99_us"],
    &["consume", "e2e_latency", "p999_us"],
];

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// One e2e result whose headline figures (MEDIAN_FIGURES) are the medians
/// over `runs`; counts_match only if every run matched; all runs kept
/// under "runs".
pub fn median_run(runs: &[Value]) -> Value {
    let Some(first) = runs.first() else {
        return Value::Null;
    };
    let mut out = first.clone();
    for path in MEDIAN_FIGURES {
        let values: Vec<f64> = runs
            .iter()
            .filter_map(|r| f(path.iter().fold(r, |v, k| &v[*k])))
            .collect();
        if let (Some(m), Some(slot)) = (median(values), path_mut(&mut out, path)) {
            // Latencies stay whole microseconds, as in a single run's report.
            let integral = path.last().is_some_and(|k| k.ends_with("_us"));
            *slot = if integral {
                json!(m.round() as u64)
            } else {
                json!(m)
            };
        }
    }
    out["counts_match"] = json!(runs.iter().all(|r| r["counts_match"].as_bool() == Some(true)));
    out["runs"] = json!(runs);
    out
}

fn path_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(*k))
}

fn median_restart(runs: Vec<Restart>) -> Option<Restart> {
    let first = runs.first()?.clone();
    Some(Restart {
        signal: first.signal,
        shutdown_ms: median(runs.iter().map(|r| r.shutdown_ms).collect())?,
        ready_ms: median(runs.iter().map(|r| r.ready_ms).collect())?,
        runs: runs.iter().map(|r| r.ready_ms).collect(),
    })
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Points (partitions, value) over the steps that have the value.
fn curve(steps: &[Step], value: impl Fn(&Step) -> Option<f64>) -> Vec<(f64, f64)> {
    steps
        .iter()
        .filter_map(|s| value(s).map(|v| (f64::from(s.partitions), v)))
        .collect()
}

fn fixed_run(s: &Step) -> Option<&Value> {
    s.fixed_load.as_ref()
}

fn max_run(s: &Step) -> Option<&Value> {
    s.max_rate.as_ref()
}

fn us_to_ms(v: &Value) -> Option<f64> {
    f(v).map(|us| us / 1000.0)
}

/// Writes capacity.json (results part), capacity.md and the charts.
fn write_outputs(params: &CapacityParams, steps: &[Step]) -> Result<Value> {
    let results = json!({
        "params": params,
        "broker_managed": params.broker_bin.is_some(),
        "steps": steps,
    });
    let out = &params.out_dir;
    std::fs::write(out.join("capacity.md"), markdown(params, steps))?;
    let fixed_mb = |s: &Step| s.fixed_load.as_ref().and_then(|r| f(&r["produce"]["mb_per_s"]));
    let max_mb = |s: &Step| s.max_rate.as_ref().and_then(|r| f(&r["produce"]["mb_per_s"]));
    chart::line_chart(
        &out.join("throughput.svg"),
        "Produce throughput vs partitions",
        "MB/s (record values)",
        &[
            Series {
                name: "max rate".into(),
                points: curve(steps, max_mb),
            },
            Series {
                name: format!("fixed {} MB/s", params.fixed_mb_per_s),
                points: curve(steps, fixed_mb),
            },
        ],
    )?;
    let lat = |run: fn(&Step) -> Option<&Value>, side: &'static str, key: &'static str| {
        move |s: &Step| run(s).and_then(|r| us_to_ms(&r[side][key]["p99_us"]))
    };
    chart::line_chart(
        &out.join("p99.svg"),
        "p99 latency vs partitions",
        "ms",
        &[
            Series {
                name: "produce ack, fixed load".into(),
                points: curve(steps, lat(fixed_run, "produce", "ack_latency")),
            },
            Series {
                name: "end-to-end, fixed load".into(),
                points: curve(steps, lat(fixed_run, "consume", "e2e_latency")),
            },
            Series {
                name: "produce ack, max rate".into(),
                points: curve(steps, lat(max_run, "produce", "ack_latency")),
            },
        ],
    )?;
    chart::line_chart(
        &out.join("recovery.svg"),
        "Restart until every partition is served",
        "s",
        &[
            Series {
                name: "after clean shutdown (SIGTERM)".into(),
                points: curve(steps, |s| s.restart_clean.as_ref().map(|r| r.ready_ms / 1000.0)),
            },
            Series {
                name: "after unclean shutdown (SIGKILL)".into(),
                points: curve(steps, |s| s.restart_unclean.as_ref().map(|r| r.ready_ms / 1000.0)),
            },
        ],
    )?;
    Ok(results)
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.decimals$}"))
}

fn markdown(params: &CapacityParams, steps: &[Step]) -> String {
    let mut m = String::new();
    m += "# Capacity sweep\n\n";
    m += &format!(
        "Fixed load {} MB/s of {}-byte records, then max rate; {} s per run; medians of {} run(s) per figure. MB = 10^6 bytes of record values; latencies p99 in ms; topic create = CreateTopics until every partition has a leader and (managed broker) answers ListOffsets; restart = spawn until every partition answers ListOffsets.\n\n",
        params.fixed_mb_per_s, params.record_bytes, params.duration_s, params.runs
    );
    m += "| partitions | topic create ms | fixed MB/s | fixed ack p99 | fixed e2e p99 | max MB/s | max ack p99 | max e2e p99 | RSS MiB | peak RSS MiB | fds | clean restart s | unclean restart s | counts match |\n";
    m += "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
    for s in steps {
        let fx = s.fixed_load.as_ref();
        let mx = s.max_rate.as_ref();
        let get = |r: Option<&Value>, path: &[&str]| r.and_then(|v| f(path.iter().fold(v, |v, k| &v[*k])));
        let counts = [fx, mx]
            .iter()
            .flatten()
            .all(|r| r["counts_match"].as_bool() == Some(true));
        m += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.partitions,
            cell(Some(s.topic_creation_ms), 1),
            cell(get(fx, &["produce", "mb_per_s"]), 1),
            cell(get(fx, &["produce", "ack_latency", "p99_us"]).map(|x| x / 1e3), 2),
            cell(get(fx, &["consume", "e2e_latency", "p99_us"]).map(|x| x / 1e3), 2),
            cell(get(mx, &["produce", "mb_per_s"]), 1),
            cell(get(mx, &["produce", "ack_latency", "p99_us"]).map(|x| x / 1e3), 2),
            cell(get(mx, &["consume", "e2e_latency", "p99_us"]).map(|x| x / 1e3), 2),
            cell(s.broker.as_ref().map(|b| b.rss_bytes as f64 / 1048576.0), 1),
            cell(s.broker.as_ref().map(|b| b.rss_peak_bytes as f64 / 1048576.0), 1),
            cell(s.broker.as_ref().map(|b| b.open_fds as f64), 0),
            cell(s.restart_clean.as_ref().map(|r| r.ready_ms / 1e3), 2),
            cell(s.restart_unclean.as_ref().map(|r| r.ready_ms / 1e3), 2),
            counts,
        );
    }
    m += "\nCharts: [throughput](throughput.svg), [p99 latency](p99.svg), [restart](recovery.svg).\n";
    m
}

/// The default directory for per-step broker data.
pub fn default_work_dir() -> PathBuf {
    std::env::temp_dir().join(format!("shardlog-bench-capacity-{}", std::process::id()))
}

pub fn remove_work_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_run_takes_each_figure_median_and_all_counts() {
        let run = |mb: f64, p99: u64, ok: bool| {
            json!({
                "counts_match": ok,
                "produce": {"mb_per_s": mb, "msgs_per_s": mb * 1000.0, "ack_latency": {"p99_us": p99}},
                "consume": {"e2e_latency": {"p99_us": p99 + 1}},
            })
        };
        let m = median_run(&[run(100.0, 9, true), run(300.0, 1, true), run(200.0, 5, true)]);
        assert_eq!(m["produce"]["mb_per_s"], 200.0);
        assert_eq!(m["produce"]["ack_latency"]["p99_us"], 5);
        assert_eq!(m["consume"]["e2e_latency"]["p99_us"], 6);
        assert_eq!(m["counts_match"], true);
        assert_eq!(m["runs"].as_array().unwrap().len(), 3);
        let m = median_run(&[run(100.0, 9, true), run(300.0, 1, false)]);
        assert_eq!(m["produce"]["mb_per_s"], 200.0);
        assert_eq!(m["counts_match"], false);
        assert_eq!(median(vec![]), None);
    }
}
