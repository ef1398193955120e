//! A broker process the tool starts and stops itself (`capacity
//! --broker-bin`), and /proc readings of any local broker process.
//!
//! Only the child this tool spawned is ever signalled (by its PID); it is
//! killed when the handle drops. Everything binds 127.0.0.1.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::wire::{Conn, Error, Result};

/// How long a start or a restart may take before the run fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a clean shutdown may take before it is called failed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);

pub struct ManagedBroker {
    child: Option<Child>,
    bin: PathBuf,
    pub data_dir: PathBuf,
    pub addr: String,
    extra_args: Vec<String>,
    log_path: PathBuf,
}

/// Times of one restart.
#[derive(Clone, Debug, Serialize)]
pub struct Restart {
    /// Signal sent to exit (SIGTERM: clean; SIGKILL: unclean).
    pub signal: &'static str,
    /// Signal to process exit.
    pub shutdown_ms: f64,
    /// Spawn to serving: Metadata lists the topic and ListOffsets answers
    /// for every partition.
    pub ready_ms: f64,
    /// Every run's ready_ms when this is a median of several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<f64>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ManagedBroker {
    /// Starts `bin` on a free loopback port with `data_dir` and waits until
    /// it accepts connections.
    pub fn start(bin: &Path, data_dir: &Path, extra_args: &[String]) -> Result<ManagedBroker> {
        std::fs::create_dir_all(data_dir)?;
        let mut broker = ManagedBroker {
            child: None,
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            addr: format!("127.0.0.1:{}", free_port()?),
            extra_args: extra_args.to_vec(),
            log_path: data_dir.with_extension("log"),
        };
        broker.spawn()?;
        broker.wait_ready(None)?;
        Ok(broker)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(&self.bin)
            .arg("--listen")
            .arg(&self.addr)
            .arg("--data-dir")
            .arg(self.data_dir.join("data"))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::Protocol(format!("start {}: {e}", self.bin.display())))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Polls until the broker serves: connects, and with a topic, until
    /// Metadata lists all its partitions and ListOffsets answers for them.
    /// Bounded by READY_TIMEOUT.
    pub fn wait_ready(&mut self, topic: Option<(&str, i32)>) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(Error::Protocol(format!(
                        "broker exited ({status}); log: {}",
                        self.log_path.display()
                    )));
                }
            }
            let polled = Instant::now();
            if serving(&self.addr, topic) {
                return Ok(start.elapsed());
            }
            // At most half of the time polling: Metadata and ListOffsets for
            // 100,000 partitions cost the broker tens of ms each, and polling
            // without pause slowed the very log opens it waits for.
            let poll = polled.elapsed();
            if start.elapsed() > READY_TIMEOUT {
                return Err(Error::Protocol(format!(
                    "broker not serving after {READY_TIMEOUT:?}; log: {}",
                    self.log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20).max(poll));
        }
    }

    /// Sends `signal` to the child (its own PID only) and waits for it to exit.
    pub fn stop(&mut self, signal: i32) -> Result<Duration> {
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        let start = Instant::now();
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        loop {
            if child.try_wait()?.is_some() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > SHUTDOWN_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Protocol(format!(
                    "broker did not exit within {SHUTDOWN_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops with `signal`, starts again on the same port and data, and
    /// times both until the topic is served again.
    pub fn restart(&mut self, signal: i32, topic: &str, partitions: i32) -> Result<Restart> {
        let shutdown = self.stop(signal)?;
        let spawned = Instant::now();
        self.spawn()?;
        self.wait_ready(Some((topic, partitions)))?;
        Ok(Restart {
            signal: if signal == libc::SIGKILL {
                "SIGKILL"
            } else {
                "SIGTERM"
            },
            shutdown_ms: ms(shutdown),
            ready_ms: ms(spawned.elapsed()),
            runs: Vec::new(),
        })
    }
}

impl Drop for ManagedBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn serving(addr: &str, topic: Option<(&str, i32)>) -> bool {
    let Ok(mut conn) = Conn::open(addr) else {
        return false;
    };
    let Some((topic, partitions)) = topic else {
        return true;
    };
    let Ok(meta) = conn.metadata(topic) else {
        return false;
    };
    let ids = meta.partition_ids();
    ids.len() == partitions as usize && conn.list_offsets(topic, &ids, -1).is_ok()
}

/// Resident memory and descriptors of a local process, from /proc.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcStats {
    pub rss_bytes: u64,
    /// VmHWM: the peak resident set so far.
    pub rss_peak_bytes: u64,
    pub open_fds: u64,
    pub threads: u64,
}

pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(ProcStats {
        rss_bytes: field("VmRSS:") * 1024,
        rss_peak_bytes: field("VmHWM:") * 1024,
        open_fds,
        threads: field("Threads:"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stats_reads_this_process() {
        let s = proc_stats(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0 && s.rss_peak_bytes >= s.rss_bytes);
        assert!(s.open_fds >= 3 && s.threads >= 1);
    }
}
