//! What `Log::open` does to the files it finds: choose clean or unclean
//! recovery, find the log end offset, truncate torn tails and rebuild
//! indexes. It runs before the log serves anything, so it works on the bare
//! segment map rather than on a `Log`.

use std::path::Path;

use glommio::io::DmaFile;

use crate::storage::index::{IndexBounds, SegmentIndex};
use crate::storage::segment::{self, file_name, file_path, is_not_found, open_for_read, LOG_SUFFIX};

use super::{LogConfig, Segments, StorageError};

/// How `Log::open` treats the files it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryMode {
    /// After a clean close: trust indexes, probe only the last segment's tail.
    Clean,
    /// After a crash: CRC-check everything from the recovery point on.
    Unclean,
}

/// What `Log::open` (and later lazy index loads) had to do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments scanned from their start (unclean recovery, index rebuilds).
    pub segments_scanned: u32,
    /// Batches read and checked, including the clean-open probe of the last
    /// segment's tail (the batches after its last index entry).
    pub batches_scanned: u64,
    /// Bytes cut off torn or invalid tails. Zero-filled space after the
    /// last batch (O_DIRECT padding, preallocation) is cut too, uncounted.
    pub bytes_truncated: u64,
    /// Indexes rebuilt from the log because they were missing or invalid.
    pub indexes_rebuilt: u32,
}

impl RecoveryReport {
    /// Adds `other`'s counts (a shard's sum over the logs it opened).
    pub fn add(&mut self, other: &RecoveryReport) {
        self.segments_scanned += other.segments_scanned;
        self.batches_scanned += other.batches_scanned;
        self.bytes_truncated += other.bytes_truncated;
        self.indexes_rebuilt += other.indexes_rebuilt;
    }

    /// Whether the open did more than a clean open's tail probe.
    pub fn recovered_anything(&self) -> bool {
        self.segments_scanned > 0 || self.bytes_truncated > 0 || self.indexes_rebuilt > 0
    }
}

/// Result of recovering the segments found at open.
pub(super) struct Recovered {
    pub(super) report: RecoveryReport,
    pub(super) log_end_offset: i64,
    pub(super) files_changed: bool,
    /// The active segment file's size as found (clean opens); u64::MAX
    /// when the caller cuts it to the data (unclean).
    pub(super) active_file_bytes: u64,
    /// The active segment's bytes from its last block boundary to its end
    /// (the writer's tail), when the scan read them already.
    pub(super) tail: Option<Vec<u8>>,
}

/// An active segment this small is scanned whole at a clean open rather
/// than resumed from its index files (`recover_clean`): the block size, at
/// most the default `index.interval.bytes`.
pub(super) const SMALL_SEGMENT_BYTES: u64 = super::BLOCK_BYTES;

/// Clean open: trust the sealed segments; find the end of the last one by
/// scanning from its last index entry (or rebuild its index if unusable).
/// `file` is the last segment's, which the log then keeps for writing (one
/// open per log at start, not two).
pub(super) async fn recover_clean(
    dir: &Path,
    segments: &mut Segments,
    config: &LogConfig,
    file: &DmaFile,
) -> Result<Recovered, StorageError> {
    let mut report = RecoveryReport::default();
    let Some(last) = segments.values_mut().next_back() else {
        return Err(StorageError::Corrupt("no segment".into()));
    };
    let base = last.base_offset;
    let file_bytes = file.file_size().await?;
    if file_bytes == 0 {
        // Empty (a new log closed before its first write keeps no index
        // files): nothing to load, scan or rebuild.
        last.size_bytes = 0;
        last.index = Some(SegmentIndex::new(base));
        return Ok(Recovered {
            report,
            log_end_offset: base,
            files_changed: false,
            active_file_bytes: 0,
            tail: None,
        });
    }
    let bounds = IndexBounds {
        base_offset: base,
        next_offset: i64::MAX,
        log_bytes: file_bytes,
    };
    let loaded = if file_bytes <= SMALL_SEGMENT_BYTES {
        // One block: it holds no offset index entry (the first comes after
        // `index.interval.bytes`), so `resume_point` would start the scan at
        // 0 with a fresh index anyway; reading the two files is all cost
        // (four operations per log, 100,000 logs at a start).
        Ok(SegmentIndex::new(base))
    } else {
        segment::load_indexes(dir, file, bounds).await?
    };
    let (mut index, position, expected_offset) = match loaded {
        Ok(mut index) => {
            let (position, offset) = index.resume_point();
            (index, position, offset)
        }
        Err(reason) => {
            tracing::warn!(dir = %dir.display(), base, %reason, "rebuilding active segment index");
            report.segments_scanned += 1;
            report.indexes_rebuilt += 1;
            (SegmentIndex::new(base), 0, base)
        }
    };
    let mut window = segment::Window::new(file, file_bytes);
    let outcome = segment::scan_in(
        &mut window,
        position,
        expected_offset,
        i64::MAX,
        &mut index,
        config.index_interval_bytes,
    )
    .await?;
    // The writer's tail block is usually in the last window read (all of
    // a small segment is): one device read per log at a start, not two.
    let tail_start = super::align_down(outcome.valid_bytes);
    let tail = window
        .held(tail_start, (outcome.valid_bytes - tail_start) as usize)
        .map(<[u8]>::to_vec);
    report.batches_scanned += outcome.batches;
    let torn = outcome.torn_bytes(file_bytes);
    if torn > 0 {
        warn_truncation(dir, base, &outcome, torn);
        report.bytes_truncated += torn;
    }
    last.size_bytes = outcome.valid_bytes;
    last.index = Some(index);
    Ok(Recovered {
        report,
        log_end_offset: outcome.next_offset,
        // Zero padding after the last batch is no change: `Log::open`
        // keeps it.
        files_changed: torn > 0,
        active_file_bytes: file_bytes,
        tail,
    })
}

fn warn_truncation(dir: &Path, base: i64, outcome: &segment::ScanOutcome, truncated: u64) {
    let reason = outcome.stop.as_ref().map_or("", |s| s.reason.as_str());
    tracing::warn!(
        dir = %dir.display(),
        segment = %file_name(base, LOG_SUFFIX),
        position = outcome.valid_bytes,
        bytes = truncated,
        %reason,
        "truncating log at the first torn or invalid batch"
    );
}

/// Unclean open: scan every segment from the one holding the recovery point,
/// rebuild their indexes, truncate at the first torn or invalid batch and
/// delete the segments after it.
pub(super) async fn recover_unclean(
    dir: &Path,
    segments: &mut Segments,
    recovery_point: i64,
    config: &LogConfig,
) -> Result<Recovered, StorageError> {
    let mut report = RecoveryReport::default();
    let mut files_changed = false;
    let first_base = segments.keys().next().copied().unwrap_or(0);
    let start_base = segments
        .range(..=recovery_point)
        .next_back()
        .map_or(first_base, |(b, _)| *b);
    let bases: Vec<i64> = segments.range(start_base..).map(|(b, _)| *b).collect();
    let mut log_end_offset = bases.first().copied().unwrap_or(0);
    // Debug: after a crash every log says this, and the shard sums them up
    // in one line (`Shard::apply`).
    tracing::debug!(
        dir = %dir.display(),
        recovery_point,
        segments = bases.len(),
        "unclean open: scanning segments from the recovery point"
    );
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let offset_limit = bases.get(i + 1).copied().unwrap_or(i64::MAX);
        let path = file_path(dir, base, LOG_SUFFIX);
        let file = match open_for_read(&path).await {
            Ok(file) => file,
            Err(e) if is_not_found(&e) && is_last => {
                log_end_offset = base;
                files_changed = true;
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let file_bytes = file.file_size().await?;
        let mut index = SegmentIndex::new(base);
        let outcome = segment::scan(
            &file,
            file_bytes,
            0,
            base,
            offset_limit,
            &mut index,
            config.index_interval_bytes,
        )
        .await?;
        let _ = file.close().await;
        report.segments_scanned += 1;
        report.indexes_rebuilt += 1;
        report.batches_scanned += outcome.batches;
        log_end_offset = outcome.next_offset;
        let truncated = file_bytes - outcome.valid_bytes;
        let torn = outcome.torn_bytes(file_bytes);
        let Some(segment) = segments.get_mut(&base) else {
            return Err(StorageError::Corrupt(format!("segment {base} vanished")));
        };
        segment.size_bytes = outcome.valid_bytes;
        if truncated > 0 || is_last {
            if torn > 0 {
                warn_truncation(dir, base, &outcome, torn);
                report.bytes_truncated += torn;
            }
            files_changed |= truncated > 0;
            segment.index = Some(index);
            // Everything after a bad batch is lost: it was never acknowledged
            // as durable past the recovery point, and offsets must stay dense.
            for &later in &bases[i + 1..] {
                if let Some(removed) = segments.remove(&later) {
                    report.bytes_truncated += removed.size_bytes;
                    tracing::warn!(dir = %dir.display(), base = later, "deleting segment after truncation point");
                }
                segment::remove_segment_files(dir, later).await?;
            }
            break;
        }
        index.seal();
        segment::write_indexes(dir, &index).await?;
        files_changed = true;
    }
    Ok(Recovered {
        report,
        log_end_offset,
        files_changed,
        active_file_bytes: u64::MAX,
        tail: None,
    })
}
