//! Whole-tool smoke tests: `sink-test` always; a tiny e2e run against the
//! release broker when `target/release/shardlog` exists (skipped, with a
//! message, otherwise). Everything binds 127.0.0.1.

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

fn broker_binary() -> Option<PathBuf> {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/shardlog");
    bin.exists().then_some(bin)
}

fn start_broker(bin: &Path) -> (Broker, String) {
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
    let Some(bin) = broker_binary() else {
        println!("skipped: no target/release/shardlog (cargo build --release -p shardlog)");
        return;
    };
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
