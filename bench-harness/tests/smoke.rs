//! Whole-tool smoke tests: `sink-test` and `limits`; against the release
//! broker (SHARDLOG_BIN or `target/release/shardlog`; a missing or stale
//! binary fails the test): a tiny e2e run, tiny workloads through `run`,
//! a tiny `capacity` sweep followed by `plan`, and consumer-group runs. Everything binds
//! 127.0.0.1. No timing assertions: counts and report completeness only.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_shardlog-bench");

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("shardlog-bench-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("json written")).expect("valid json")
}

fn assert_latency(v: &serde_json::Value) {
    for key in ["count", "p50_us", "p99_us", "p999_us", "p9999_us", "max_us"] {
        assert!(v[key].as_u64().is_some(), "latency lacks {key}: {v}");
    }
    assert!(v["p50_us"].as_u64() <= v["max_us"].as_u64());
}

fn run_bench(args: &[&str]) -> String {
    let out = Command::new(BENCH)
        .args(args)
        .output()
        .expect("run shardlog-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "shardlog-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn sink_test_produces_and_writes_json() {
    let dir = temp_dir("sink");
    let json = dir.join("sink.json");
    let stdout = run_bench(&[
        "sink-test",
        "--duration-s",
        "1",
        "--quiet",
        "--record-bytes",
        "200",
        "--batch-bytes",
        "20000",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(stdout.contains("msgs/s"), "{stdout}");
    let doc = read_json(&json);
    let produce = &doc["results"]["produce"];
    assert!(produce["records"].as_u64().unwrap() > 0);
    assert_eq!(produce["errors"], 0);
    assert_eq!(
        produce["records"].as_u64().unwrap() % 100,
        0,
        "whole batches of 100"
    );
    assert_eq!(doc["results"]["sink"]["produce_requests"], produce["requests"]);
    assert_latency(&produce["ack_latency"]);
    let _ = std::fs::remove_dir_all(dir);
}

struct Broker {
    child: Child,
    dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SHARDLOG_BIN, or the workspace's release build; fails when it is missing
/// or older than the engine's sources (a stale build would be tested).
fn broker_binary() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = std::env::var_os("SHARDLOG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/release/shardlog"));
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "no broker binary at {} ({e}): cargo build --release -p shardlog first (scripts/test.sh does)",
                bin.display()
            )
        });
    let sources = [
        workspace.join("engine/src"),
        workspace.join("engine/vendor"),
        workspace.join("engine/Cargo.toml"),
        workspace.join("Cargo.lock"),
    ];
    if let Some(newer) = sources.iter().find_map(|path| newer_than(path, built)) {
        panic!(
            "{} is older than {}: cargo build --release -p shardlog first",
            bin.display(),
            newer.display()
        );
    }
    bin
}

/// A file under `path` (or `path` itself) modified after `time`.
fn newer_than(path: &Path, time: std::time::SystemTime) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta
            .modified()
            .ok()
            .filter(|m| *m > time)
            .map(|_| path.to_path_buf());
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| newer_than(&entry.path(), time))
}

fn start_broker(bin: &Path) -> (Broker, String) {
    start_broker_with(bin, &[])
}

/// A broker with extra `--set KEY=VALUE` settings.
fn start_broker_with(bin: &Path, settings: &[&str]) -> (Broker, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let dir = temp_dir("broker");
    let log = std::fs::File::create(dir.join("broker.log")).unwrap();
    let child = Command::new(bin)
        .args(["--listen", &addr, "--data-dir"])
        .arg(dir.join("data"))
        .args(["--shards", "1"])
        .args(settings.iter().flat_map(|kv| ["--set", kv]))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start shardlog");
    let broker = Broker { child, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "broker not listening after 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    (broker, addr)
}

#[test]
fn tiny_e2e_against_release_broker_counts_match() {
    let bin = broker_binary();
    let (broker, addr) = start_broker(&bin);
    let json = broker.dir.join("e2e.json");
    let stdout = run_bench(&[
        "e2e",
        "--bootstrap",
        &addr,
        "--topic",
        "smoke",
        "--partitions",
        "3",
        "--duration-s",
        "2",
        "--rate",
        "20000",
        "--record-bytes",
        "100",
        "--batch-bytes",
        "10000",
        "--drain-s",
        "10",
        "--verify-crc",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(stdout.contains("counts match"), "{stdout}");
    let doc = read_json(&json);
    for key in [
        "tool", "version", "command", "argv", "params", "machine", "results",
    ] {
        assert!(!doc[key].is_null(), "json lacks {key}");
    }
    assert!(doc["machine"]["nproc"].as_u64().unwrap() >= 1);
    assert!(doc["machine"]["kernel"].as_str().is_some());
    let results = &doc["results"];
    assert_eq!(results["counts_match"], true);
    let produced = results["produce"]["records"].as_u64().unwrap();
    assert!(produced > 0);
    assert_eq!(results["consume"]["records"].as_u64().unwrap(), produced);
    assert_eq!(results["consume"]["crc_failures"], 0);
    for key in ["msgs_per_s", "mb_per_s", "elapsed_s"] {
        assert!(results["produce"][key].as_f64().is_some(), "produce lacks {key}");
        assert!(results["consume"][key].as_f64().is_some(), "consume lacks {key}");
    }
    assert_latency(&results["produce"]["ack_latency"]);
    assert_latency(&results["produce"]["send_lag"]);
    assert_latency(&results["consume"]["e2e_latency"]);

    // And a catch-up read of the same topic sees everything.
    let stdout = run_bench(&[
        "consume",
        "--bootstrap",
        &addr,
        "--topic",
        "smoke",
        "--duration-s",
        "10",
        "--quiet",
    ]);
    assert!(
        stdout.contains(&format!("expected {produced} records, consumed {produced}")),
        "{stdout}"
    );
}

#[test]
fn limits_reports_loopback_and_direct_writes() {
    let dir = temp_dir("limits");
    let json = dir.join("limits.json");
    let stdout = run_bench(&[
        "limits",
        "--duration-s",
        "0.2",
        "--file-bytes-max",
        "8388608",
        "--dir",
        dir.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(stdout.contains("loopback TCP"), "{stdout}");
    let doc = read_json(&json);
    let r = &doc["results"];
    assert!(r["loopback_tcp"]["gb_per_s"].as_f64().unwrap() > 0.0);
    let disk = r["odirect_write"].as_array().unwrap();
    assert_eq!(disk.len(), 2);
    for d in disk {
        assert!(d["bytes"].as_u64().unwrap() > 0);
        assert_latency(&d["write_latency"]);
    }
    assert!(r["reference"]["loopback_gb_per_s"].as_f64().is_some());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn workloads_run_against_release_broker_and_report_every_step() {
    let bin = broker_binary();
    let (broker, addr) = start_broker(&bin);
    // Every producer knob at once: two topics, zstd, Zipf keys, varying record sizes.
    let e2e = broker.dir.join("tiny-e2e.toml");
    std::fs::write(
        &e2e,
        "description = 'tiny'\nmode = 'e2e'\ntopics = 2\npartitions = 3\nrecord_bytes = 50\nrecord_bytes_max = 300\n\
         batch_bytes = 4000\nkeys = 'zipf'\nkey_count = 50\ncompression = 'zstd'\nduration_s = 1\n\
         drain_s = 10\nmax_rate = true\nrate_fractions_of_max = [0.5]\n",
    )
    .unwrap();
    let json = broker.dir.join("run.json");
    let stdout = run_bench(&[
        "run",
        "--workload",
        e2e.to_str().unwrap(),
        "--bootstrap",
        &addr,
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(stdout.contains("| max rate"), "{stdout}");
    let doc = read_json(&json);
    assert_eq!(doc["command"], "run");
    let results = &doc["results"];
    assert_eq!(results["workload"], "tiny-e2e");
    assert_eq!(results["workload_params"]["compression"], "zstd");
    let steps = results["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "max rate and 50% of it");
    assert!(steps[1]["rate_msgs_per_s"].as_f64().unwrap() > 0.0);
    for step in steps {
        let r = &step["results"];
        assert_eq!(r["counts_match"], true, "{step}");
        assert!(r["produce"]["records"].as_u64().unwrap() > 0);
        assert_eq!(r["consume"]["records"], r["produce"]["records"]);
        assert!(r["produce"]["batch_bytes"].as_u64() < r["produce"]["value_bytes"].as_u64());
        assert_latency(&r["produce"]["ack_latency"]);
        assert_latency(&r["consume"]["e2e_latency"]);
        assert!(step["command"].as_str().unwrap().contains("--compression zstd"));
        assert!(step["command"].as_str().unwrap().contains("--topics 2"));
    }

    let backlog = broker.dir.join("tiny-backlog.toml");
    std::fs::write(
        &backlog,
        "description = 'tiny backlog'\nmode = 'backlog'\npartitions = 2\nrecord_bytes = 100\n\
         batch_bytes = 10000\nconsumers = 2\nduration_s = 1\ndrain_s = 20\n",
    )
    .unwrap();
    let json = broker.dir.join("backlog.json");
    run_bench(&[
        "run",
        "--workload",
        backlog.to_str().unwrap(),
        "--bootstrap",
        &addr,
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    let doc = read_json(&json);
    let steps = doc["results"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    let produced = steps[0]["results"]["produce"]["records"].as_u64().unwrap();
    assert!(produced > 0);
    assert_eq!(
        steps[1]["results"]["consume"]["records"].as_u64().unwrap(),
        produced
    );
    assert_eq!(
        steps[1]["results"]["consume"]["records_expected"]
            .as_u64()
            .unwrap(),
        produced
    );
}

#[test]
fn tiny_capacity_sweep_writes_json_markdown_charts_and_plans() {
    let bin = broker_binary();
    let dir = temp_dir("capacity");
    let out = dir.join("out");
    run_bench(&[
        "capacity",
        "--broker-bin",
        bin.to_str().unwrap(),
        "--broker-arg=--shards",
        "--broker-arg=1",
        "--partitions-list",
        "1,10",
        "--duration-s",
        "1",
        "--drain-s",
        "10",
        "--fixed-mb-per-s",
        "5",
        "--record-bytes",
        "200",
        "--batch-bytes",
        "10000",
        "--work-dir",
        dir.join("work").to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let doc = read_json(&out.join("capacity.json"));
    assert_eq!(doc["command"], "capacity");
    let steps = doc["results"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for (step, partitions) in steps.iter().zip([1, 10]) {
        assert_eq!(step["partitions"], partitions);
        assert!(step["topic_creation_ms"].as_f64().is_some());
        for run in ["fixed_load", "max_rate"] {
            assert_eq!(step[run]["counts_match"], true, "{run}: {step}");
            assert_latency(&step[run]["produce"]["ack_latency"]);
            assert_latency(&step[run]["consume"]["e2e_latency"]);
        }
        assert!(step["broker"]["rss_bytes"].as_u64().unwrap() > 0);
        assert!(step["broker"]["open_fds"].as_u64().unwrap() > 0);
        for restart in ["restart_clean", "restart_unclean"] {
            assert!(step[restart]["ready_ms"].as_f64().is_some(), "{restart}: {step}");
        }
    }
    let md = std::fs::read_to_string(out.join("capacity.md")).unwrap();
    assert!(md.contains("| 1 |") && md.contains("| 10 |"), "{md}");
    for chart in ["throughput.svg", "p99.svg", "recovery.svg"] {
        let svg = std::fs::read_to_string(out.join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<circle"), "{chart}");
    }
    assert!(!dir.join("work").join("p1").exists(), "step data removed");

    let stdout = run_bench(&[
        "plan",
        "--capacity",
        out.join("capacity.json").to_str().unwrap(),
        "--target-mb-per-s",
        "1",
        "--record-bytes",
        "200",
        "--p99-ms-max",
        "100000",
    ]);
    assert!(
        stdout.contains("partitions:") && stdout.contains("evidence:"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn group_consumers_share_partitions_commit_and_resume() {
    let bin = broker_binary();
    // No initial delay: the second member's join is a real rebalance.
    let (broker, addr) = start_broker_with(&bin, &["group.initial.rebalance.delay.ms=0"]);
    let group_flags = [
        "--consumers",
        "2",
        "--session-timeout-ms",
        "10000",
        "--heartbeat-interval-ms",
        "300",
        "--commit-interval-ms",
        "200",
    ];
    let json = broker.dir.join("group-e2e.json");
    let mut args = vec![
        "e2e",
        "--bootstrap",
        addr.as_str(),
        "--topic",
        "grp",
        "--partitions",
        "4",
        "--duration-s",
        "2",
        "--rate",
        "5000",
        "--record-bytes",
        "100",
        "--batch-bytes",
        "2000",
        "--drain-s",
        "20",
        "--group",
        "bench-g",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend(group_flags);
    let stdout = run_bench(&args);
    assert!(stdout.contains("counts match"), "{stdout}");
    let doc = read_json(&json);
    assert_eq!(doc["params"]["group"], "bench-g");
    assert_eq!(doc["params"]["session_timeout_ms"], 10000);
    let results = &doc["results"];
    assert_eq!(results["counts_match"], true);
    let produced = results["produce"]["records"].as_u64().unwrap();
    assert!(produced > 0);
    assert_eq!(results["consume"]["records"].as_u64().unwrap(), produced);
    let group = &results["consume"]["group"];
    assert_eq!(group["group_id"], "bench-g", "{group}");
    assert_eq!(group["members"], 2);
    let generations = group["generations"].as_array().unwrap();
    assert!(
        !generations.is_empty() && generations.iter().all(|g| g.as_i64().unwrap() >= 1),
        "{group}"
    );
    assert!(group["rebalances"].as_u64().is_some());
    assert_latency(&group["time_to_first_assignment"]);
    assert_eq!(group["time_to_first_assignment"]["count"], 2);
    assert!(group["commits"].as_u64().unwrap() > 0);
    assert_latency(&group["commit_latency"]);
    // Checked by the tool with OffsetFetch after the run: committed == end.
    assert_eq!(group["committed_behind_end_records"], 0, "{group}");
    assert_latency(&results["consume"]["e2e_latency"]);

    // The same group again reads nothing: it resumes at its committed
    // offsets, which are the end offsets.
    let json = broker.dir.join("group-resume.json");
    let mut args = vec![
        "consume",
        "--bootstrap",
        addr.as_str(),
        "--topic",
        "grp",
        "--from",
        "earliest",
        "--duration-s",
        "20",
        "--group",
        "bench-g",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend(group_flags);
    let stdout = run_bench(&args);
    assert!(stdout.contains("expected 0 records, consumed 0"), "{stdout}");
    let doc = read_json(&json);
    assert_eq!(
        doc["results"]["consume"]["group"]["committed_behind_end_records"],
        0
    );

    // A new group starts from --from earliest and reads everything once.
    let mut args = vec![
        "consume",
        "--bootstrap",
        addr.as_str(),
        "--topic",
        "grp",
        "--from",
        "earliest",
        "--duration-s",
        "20",
        "--group",
        "bench-fresh",
        "--quiet",
    ];
    args.extend(group_flags);
    let stdout = run_bench(&args);
    assert!(
        stdout.contains(&format!("expected {produced} records, consumed {produced}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("committed offsets are 0 records behind"),
        "{stdout}"
    );

    // Two processes in one group (the second joining while the first reads,
    // when the timing allows: a rebalance hands partitions over at their
    // committed offsets) read every record exactly once between them.
    let split_json = |name: &str| broker.dir.join(format!("split-{name}.json"));
    let split_args = |json: &Path| -> Vec<String> {
        let mut a: Vec<String> = [
            "consume",
            "--bootstrap",
            addr.as_str(),
            "--topic",
            "grp",
            "--from",
            "earliest",
            "--duration-s",
            "30",
            "--group",
            "bench-split",
            "--consumers",
            "1",
            "--heartbeat-interval-ms",
            "300",
            "--session-timeout-ms",
            "10000",
            "--commit-interval-ms",
            "100",
            // One batch per partition per fetch: a slower read, more overlap.
            "--partition-max-bytes",
            "2000",
            "--quiet",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(json.to_str().unwrap().to_string());
        a
    };
    let mut first = Command::new(BENCH)
        .args(split_args(&split_json("a")))
        .stdout(Stdio::null())
        .spawn()
        .expect("start first group member process");
    std::thread::sleep(Duration::from_millis(50));
    let second: Vec<String> = split_args(&split_json("b"));
    run_bench(&second.iter().map(String::as_str).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = first.try_wait().expect("wait for first member process") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = first.kill();
            let _ = first.wait();
            panic!("first group member process still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "first group member process failed");
    let consumed: u64 = ["a", "b"]
        .iter()
        .map(|n| {
            read_json(&split_json(n))["results"]["consume"]["records"]
                .as_u64()
                .unwrap()
        })
        .sum();
    for n in ["a", "b"] {
        let c = &read_json(&split_json(n))["results"]["consume"];
        println!(
            "member process {n}: {} records, group {}",
            c["records"], c["group"]
        );
    }
    assert_eq!(consumed, produced, "records read by the two processes together");
    let stdout = run_bench(&second.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stdout.contains("expected 0 records, consumed 0"), "{stdout}");

    // A member that is in the group when another joins and leaves again
    // rebalances (heartbeat answered REBALANCE_IN_PROGRESS, rejoin). The
    // margins are seconds against a 300 ms heartbeat; nothing is timed.
    let tail_args = |duration_s: &str, json: &Path| -> Vec<String> {
        [
            "consume",
            "--bootstrap",
            addr.as_str(),
            "--topic",
            "grp",
            "--from",
            "latest",
            "--duration-s",
            duration_s,
            "--group",
            "bench-rebalance",
            "--heartbeat-interval-ms",
            "300",
            "--session-timeout-ms",
            "10000",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let long_json = broker.dir.join("rebalance-long.json");
    let mut long = Command::new(BENCH)
        .args(tail_args("6", &long_json))
        .stdout(Stdio::null())
        .spawn()
        .expect("start long member process");
    std::thread::sleep(Duration::from_millis(1500));
    let short = tail_args("2", &broker.dir.join("rebalance-short.json"));
    run_bench(&short.iter().map(String::as_str).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = long.try_wait().expect("wait for long member process") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = long.kill();
            let _ = long.wait();
            panic!("long member process still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "long member process failed");
    let group = &read_json(&long_json)["results"]["consume"]["group"];
    assert!(group["rebalances"].as_u64().unwrap() >= 1, "{group}");
    assert!(group["generations"].as_array().unwrap().len() >= 2, "{group}");
}
