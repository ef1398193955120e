//! `shardlog-bench limits`: this host's loopback TCP bandwidth and O_DIRECT
//! sequential write bandwidth, so every report can carry ratios to what the
//! machine can do, measured in the same run (shared/PERFORMANCE.md has the
//! iperf3/fio figures of the development machine for comparison).
//!
//! Loopback: one sender thread writes 128 KiB buffers (iperf3's default
//! length) to one receiver thread over 127.0.0.1 for the duration. Disk: one
//! thread writes a new file in the given directory with O_DIRECT, queue
//! depth 1, 1 MiB and then 64 KiB writes, timing each write, with one
//! fdatasync at the end counted in the elapsed time; the file is removed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::{self, Latency};
use crate::wire::{Error, Result};

/// iperf3 -c 127.0.0.1, development machine (shared/PERFORMANCE.md).
pub const REFERENCE_LOOPBACK_GB_PER_S: f64 = 3.27;
/// fio O_DIRECT sequential write 1 MiB qd1, same machine.
pub const REFERENCE_ODIRECT_1MIB_GB_PER_S: f64 = 2.6;
/// fio O_DIRECT sequential write 64 KiB qd1, same machine.
pub const REFERENCE_ODIRECT_64KIB_GB_PER_S: f64 = 0.83;

const LOOPBACK_WRITE_BYTES: usize = 128 << 10;
/// O_DIRECT needs buffers, offsets and lengths aligned to the logical block.
const DIRECT_ALIGN_BYTES: usize = 4096;

#[derive(Clone, Debug, Serialize)]
pub struct LoopbackReport {
    pub bytes: u64,
    pub elapsed_s: f64,
    pub gb_per_s: f64,
    pub write_bytes: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct DiskWriteReport {
    pub block_bytes: usize,
    pub bytes: u64,
    pub elapsed_s: f64,
    pub gb_per_s: f64,
    /// Per write (one pwrite of block_bytes), queue depth 1.
    pub write_latency: Option<Latency>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LimitsReport {
    pub loopback_tcp: LoopbackReport,
    pub dir: PathBuf,
    pub odirect_write: Vec<DiskWriteReport>,
    /// The development machine's figures, for reading ratios across hosts.
    pub reference: serde_json::Value,
}

pub fn loopback(duration_s: f64) -> Result<LoopbackReport> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        // Ends at EOF: the sender closes after the duration.
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let mut stream = TcpStream::connect(addr)?;
    let buf = vec![0x5au8; LOOPBACK_WRITE_BYTES];
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration_s);
    while Instant::now() < deadline {
        stream.write_all(&buf)?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let bytes = receiver
        .join()
        .map_err(|_| Error::Protocol("loopback receiver panicked".into()))??;
    let elapsed_s = start.elapsed().as_secs_f64();
    Ok(LoopbackReport {
        bytes,
        elapsed_s: round3(elapsed_s),
        gb_per_s: round3(bytes as f64 / elapsed_s / 1e9),
        write_bytes: LOOPBACK_WRITE_BYTES,
    })
}

/// Sequential O_DIRECT writes of `block_bytes` to a new file in `dir`, until
/// `file_bytes_max` or `duration_s`, whichever comes first.
pub fn odirect_write(
    dir: &Path,
    block_bytes: usize,
    file_bytes_max: u64,
    duration_s: f64,
) -> Result<DiskWriteReport> {
    assert!(block_bytes >= DIRECT_ALIGN_BYTES && block_bytes.is_multiple_of(DIRECT_ALIGN_BYTES));
    let path = dir.join(format!(
        "shardlog-bench-limits-{}-{block_bytes}.tmp",
        std::process::id()
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| Error::Protocol(format!("O_DIRECT open {}: {e}", path.display())))?;
    let result = write_direct(&file, block_bytes, file_bytes_max, duration_s);
    drop(file);
    let _ = std::fs::remove_file(&path);
    result
}

fn write_direct(
    file: &std::fs::File,
    block_bytes: usize,
    file_bytes_max: u64,
    duration_s: f64,
) -> Result<DiskWriteReport> {
    use std::os::unix::fs::FileExt;
    // An aligned window inside a slightly larger Vec: no unsafe allocation.
    let mut backing = vec![0xa5u8; block_bytes + DIRECT_ALIGN_BYTES];
    let offset = backing.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
    let buf = &mut backing[offset..offset + block_bytes];
    let mut latency = stats::new_histogram();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration_s);
    let mut written = 0u64;
    while written + block_bytes as u64 <= file_bytes_max && Instant::now() < deadline {
        buf[..8].copy_from_slice(&written.to_be_bytes());
        let t = Instant::now();
        file.write_all_at(buf, written)?;
        stats::record(&mut latency, t.elapsed().as_micros() as u64);
        written += block_bytes as u64;
    }
    file.sync_data()?;
    let elapsed_s = start.elapsed().as_secs_f64();
    Ok(DiskWriteReport {
        block_bytes,
        bytes: written,
        elapsed_s: round3(elapsed_s),
        gb_per_s: round3(written as f64 / elapsed_s / 1e9),
        write_latency: Latency::of(&latency),
    })
}

pub fn measure(dir: &Path, duration_s: f64, file_bytes_max: u64) -> Result<LimitsReport> {
    let loopback_tcp = loopback(duration_s)?;
    let mut odirect = Vec::new();
    for block_bytes in [1 << 20, 64 << 10] {
        odirect.push(odirect_write(dir, block_bytes, file_bytes_max, duration_s)?);
    }
    Ok(LimitsReport {
        loopback_tcp,
        dir: dir.to_path_buf(),
        odirect_write: odirect,
        reference: serde_json::json!({
            "source": "shared/PERFORMANCE.md (iperf3, fio; development machine, 2026-11-22)",
            "loopback_gb_per_s": REFERENCE_LOOPBACK_GB_PER_S,
            "odirect_write_1mib_gb_per_s": REFERENCE_ODIRECT_1MIB_GB_PER_S,
            "odirect_write_64kib_gb_per_s": REFERENCE_ODIRECT_64KIB_GB_PER_S,
        }),
    })
}

pub fn print(report: &LimitsReport) {
    let l = &report.loopback_tcp;
    println!(
        "loopback TCP: {:.2} GB/s ({:.1} GB in {:.2} s; reference {REFERENCE_LOOPBACK_GB_PER_S} GB/s, ratio {:.2})",
        l.gb_per_s,
        l.bytes as f64 / 1e9,
        l.elapsed_s,
        l.gb_per_s / REFERENCE_LOOPBACK_GB_PER_S
    );
    for d in &report.odirect_write {
        let reference = if d.block_bytes == 1 << 20 {
            REFERENCE_ODIRECT_1MIB_GB_PER_S
        } else {
            REFERENCE_ODIRECT_64KIB_GB_PER_S
        };
        println!(
            "O_DIRECT write {} KiB qd1 in {}: {:.2} GB/s (reference {reference} GB/s, ratio {:.2}){}",
            d.block_bytes >> 10,
            report.dir.display(),
            d.gb_per_s,
            d.gb_per_s / reference,
            d.write_latency
                .as_ref()
                .map(|l| format!("; per write p50 {} µs, p99 {} µs", l.p50_us, l.p99_us))
                .unwrap_or_default()
        );
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_moves_bytes() {
        let r = loopback(0.05).unwrap();
        assert!(r.bytes > 0 && r.gb_per_s > 0.0);
    }

    #[test]
    fn odirect_write_writes_whole_blocks_and_removes_its_file() {
        let dir = std::env::temp_dir().join(format!("shardlog-bench-limits-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        match odirect_write(&dir, 64 << 10, 4 << 20, 5.0) {
            Ok(r) => {
                assert_eq!(r.bytes, 4 << 20);
                assert_eq!(r.write_latency.unwrap().count, 64);
            }
            // tmpfs and some overlay filesystems refuse O_DIRECT.
            Err(e) => assert!(e.to_string().contains("O_DIRECT"), "{e}"),
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
