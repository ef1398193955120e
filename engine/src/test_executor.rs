//! The executor unit tests run on: a glommio `LocalExecutor` on the test's
//! own thread, watched by a thread that turns a stuck test into a failure
//! with evidence instead of a hang.
//!
//! Why: a CI run once spent its whole 90 minutes inside one storage test
//! (`a_follower_replicating_every_batch_holds_the_same_files_as_its_leader`)
//! that takes a fraction of a second, and the log said only that it had
//! been running for over 60 seconds. If a test ever sticks again, the
//! watchdog prints what every thread of the process is waiting on (the
//! kernel's view: state, wait channel and kernel stack, which shows an
//! io_uring wait or an io-wq worker blocked in the filesystem) and aborts,
//! so the run fails within minutes and says why.

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

/// How long one test may run before the watchdog aborts the test process.
/// The slowest unit test takes about a second in release builds; the
/// margin covers a debug build on a loaded machine.
/// `SHARDLOG_TEST_STUCK_S` overrides it.
const STUCK_AFTER_S_DEFAULT: u64 = 240;

/// Runs `test` to completion on a new glommio executor on this thread.
pub fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    let _watchdog = Watchdog::start(std::thread::current().name().unwrap_or("?").to_string());
    let executor = glommio::LocalExecutorBuilder::default()
        .make()
        .expect("glommio executor");
    executor.run(test());
}

/// Dropped when the test ends, by return or by panic; either way the
/// watchdog thread sees its channel close and exits.
struct Watchdog {
    _done: mpsc::Sender<()>,
}

impl Watchdog {
    fn start(test_name: String) -> Self {
        let stuck_after_s = std::env::var("SHARDLOG_TEST_STUCK_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(STUCK_AFTER_S_DEFAULT);
        let (done, finished) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) =
                finished.recv_timeout(Duration::from_secs(stuck_after_s))
            {
                // Written to the stderr handle, not with `eprintln!`: the
                // test harness captures the macros' output (in this thread
                // too) and the abort would discard it.
                let report = format!(
                    "\n{test_name}: still running after {stuck_after_s} s; what each thread waits on:\n{}",
                    thread_report()
                );
                let _ = std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes());
                std::process::abort();
            }
        });
        Watchdog { _done: done }
    }
}

/// For every thread of this process: name, scheduler state, wait channel
/// and (where readable: root) kernel stack.
fn thread_report() -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return "(no /proc/self/task)".to_string();
    };
    let mut report = String::new();
    for task in tasks.flatten() {
        let path = task.path();
        let read = |name: &str| std::fs::read_to_string(path.join(name)).unwrap_or_default();
        // The state is the field after the parenthesised name in `stat`.
        let stat = read("stat");
        let state = stat.rsplit_once(") ").map_or("?", |(_, rest)| &rest[..1]);
        report.push_str(&format!(
            "-- tid {} {} state {} wchan {}\n{}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            state,
            read("wchan"),
            read("stack")
        ));
    }
    report
}
