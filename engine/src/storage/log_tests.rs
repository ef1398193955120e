use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;

use super::*;
use crate::storage::batch::{split_validated, validate};
use crate::storage::testutil::make_batch;

fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    let executor = glommio::LocalExecutorBuilder::default()
        .make()
        .expect("glommio executor");
    executor.run(test());
}

fn small_segments(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 512,
        ..LogConfig::default()
    }
}

async fn open(dir: &Path, config: LogConfig, mode: RecoveryMode) -> Rc<Log> {
    Log::open(dir, config, mode).await.expect("open log")
}

/// Appends `count` single-batch appends of `records` records each.
async fn append_batches(log: &Log, count: usize, records: usize, value_bytes: usize) -> Vec<AppendResult> {
    let mut results = Vec::new();
    for i in 0..count {
        let batch = make_batch(0, records, value_bytes, 1_000 + i as i64 * 10);
        results.push(log.append(vec![batch]).await.expect("append"));
    }
    results
}

/// Headers of the whole, CRC-valid batches in `bytes`: (base, last) offsets.
fn batch_offsets(bytes: &Bytes) -> Vec<(i64, i64)> {
    split_validated(bytes)
        .expect("reads return whole valid batches")
        .iter()
        .map(|b| {
            let header = validate(b).expect("valid");
            (header.base_offset.get(), header.last_offset())
        })
        .collect()
}

fn segment_files(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == suffix))
        .collect();
    files.sort();
    files
}

/// Simulates a crash: the log is dropped without close.
fn crash(log: Rc<Log>) {
    drop(log);
}

#[test]
fn append_assigns_contiguous_offsets_and_reads_back_the_same_bytes() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        assert_eq!(log.log_end_offset(), 0);
        let sent = make_batch(777, 5, 100, 1_000);
        let first = log.append(vec![sent.clone()]).await.expect("append");
        assert_eq!((first.base_offset, first.last_offset), (0, 4));
        let second = log
            .append(vec![make_batch(0, 2, 10, 2_000), make_batch(0, 3, 10, 2_000)])
            .await
            .expect("append");
        assert_eq!((second.base_offset, second.last_offset), (5, 9));
        assert_eq!(log.log_end_offset(), 10);

        let read = log.read(0, 1 << 20).await.expect("read");
        assert_eq!(batch_offsets(&read), vec![(0, 4), (5, 6), (7, 9)]);
        // Only baseOffset differs from what the client sent.
        assert_eq!(&read[8..sent.len()], &sent[8..]);
        assert_eq!(&read[..8], &0i64.to_be_bytes());
        log.close().await.expect("close");
    });
}

#[test]
fn append_and_read_across_segment_rolls() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
        let results = append_batches(&log, 60, 4, 300).await;
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.base_offset, i as i64 * 4);
        }
        assert!(log.segment_count() > 5, "segments: {}", log.segment_count());
        assert_eq!(segment_files(dir.path(), "log").len(), log.segment_count());
        // Every offset reads back the batch holding it; reads stop at segment ends.
        for offset in 0..log.log_end_offset() {
            let read = log.read(offset, 1 << 20).await.expect("read");
            let batches = batch_offsets(&read);
            assert_eq!(batches[0].0, offset / 4 * 4);
            for pair in batches.windows(2) {
                assert_eq!(pair[0].1 + 1, pair[1].0, "contiguous");
            }
        }
        // A consumer loop reading from offset 0 sees every offset exactly once.
        let mut next = 0;
        while next < log.log_end_offset() {
            let read = log.read(next, 4096).await.expect("read");
            let batches = batch_offsets(&read);
            assert_eq!(batches[0].0, next);
            next = batches.last().map(|b| b.1 + 1).unwrap_or(next);
        }
        assert_eq!(next, 240);
        // Sealed segments have their indexes on disk.
        assert_eq!(segment_files(dir.path(), "index").len(), log.segment_count() - 1);
        log.close().await.expect("close");
    });
}

#[test]
fn read_returns_whole_batch_containing_offset() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        append_batches(&log, 3, 10, 50).await;
        let read = log.read(15, 1).await.expect("read");
        assert_eq!(batch_offsets(&read), vec![(10, 19)]);
        let read = log.read(19, 1 << 20).await.expect("read");
        assert_eq!(batch_offsets(&read), vec![(10, 19), (20, 29)]);
    });
}

#[test]
fn read_returns_first_batch_even_when_larger_than_max_bytes() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        append_batches(&log, 2, 1, 10_000).await;
        let read = log.read(0, 100).await.expect("read");
        assert_eq!(batch_offsets(&read), vec![(0, 0)]);
        assert!(read.len() > 10_000);
    });
}

#[test]
fn read_stops_before_the_batch_that_would_exceed_max_bytes() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        append_batches(&log, 10, 1, 1_000).await;
        let one = log.read(0, 1).await.expect("read").len();
        let read = log.read(0, one * 3 + one / 2).await.expect("read");
        assert_eq!(batch_offsets(&read), vec![(0, 0), (1, 1), (2, 2)]);
    });
}

#[test]
fn read_at_log_end_is_empty_and_outside_the_log_is_out_of_range() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        assert!(log.read(0, 100).await.expect("empty log").is_empty());
        append_batches(&log, 1, 3, 10).await;
        assert!(log.read(3, 100).await.expect("at LEO").is_empty());
        assert!(matches!(
            log.read(4, 100).await,
            Err(StorageError::OffsetOutOfRange {
                requested: 4,
                log_start_offset: 0,
                log_end_offset: 3
            })
        ));
        assert!(matches!(
            log.read(-1, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
    });
}

#[test]
fn index_lookups_find_every_batch_in_a_large_segment() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            index_interval_bytes: 1_000,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config.clone(), RecoveryMode::Clean).await;
        append_batches(&log, 300, 2, 200).await;
        for offset in (0..600).step_by(7) {
            let read = log.read(offset, 1).await.expect("read");
            assert_eq!(batch_offsets(&read), vec![(offset / 2 * 2, offset / 2 * 2 + 1)]);
        }
        log.close().await.expect("close");
        let index = std::fs::read(dir.path().join("00000000000000000000.index")).expect("index");
        assert_eq!(index.len() % 8, 0);
        // ~270 bytes a batch, an entry every > 1000 bytes: about one in four.
        let entries = index.len() / 8;
        assert!((60..=100).contains(&entries), "entries: {entries}");
        let timeindex = std::fs::read(dir.path().join("00000000000000000000.timeindex")).expect("timeindex");
        assert_eq!(timeindex.len() % 12, 0);
        // Reopened, the loaded index answers the same.
        let log = open(dir.path(), config, RecoveryMode::Clean).await;
        for offset in (1..600).step_by(13) {
            let read = log.read(offset, 1).await.expect("read");
            assert_eq!(batch_offsets(&read)[0].0, offset / 2 * 2);
        }
    });
}

#[test]
fn retention_by_size_deletes_oldest_whole_segments_and_advances_log_start() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_segments(4 * 1024), RecoveryMode::Clean).await;
        append_batches(&log, 40, 1, 900).await;
        let segments_before = log.segment_count();
        assert!(segments_before >= 8);
        let size_before = log.size_bytes();
        let retention_bytes = (size_before / 2) as i64;
        log.set_config(LogConfig {
            retention_bytes,
            ..small_segments(4 * 1024)
        });
        let deleted = log.enforce_retention(now_ms()).await.expect("retention");
        assert!(deleted > 0);
        assert_eq!(log.segment_count(), segments_before - deleted as usize);
        assert!(
            log.size_bytes() as i64 >= retention_bytes,
            "never below the limit"
        );
        assert!(log.size_bytes() < size_before);
        assert_eq!(segment_files(dir.path(), "log").len(), log.segment_count());
        let start = log.log_start_offset();
        assert!(start > 0);
        let read = log.read(start, 1).await.expect("read at log start");
        assert_eq!(batch_offsets(&read)[0].0, start);
        assert!(matches!(
            log.read(start - 1, 1).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // Nothing more to delete.
        assert_eq!(log.enforce_retention(now_ms()).await.expect("retention"), 0);
    });
}

#[test]
fn retention_by_time_deletes_segments_last_written_before_retention_ms() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            retention_ms: 60_000,
            ..small_segments(4 * 1024)
        };
        let log = open(dir.path(), config, RecoveryMode::Clean).await;
        append_batches(&log, 20, 1, 900).await;
        let segments = log.segment_count();
        assert_eq!(log.enforce_retention(now_ms()).await.expect("retention"), 0);
        let deleted = log.enforce_retention(now_ms() + 60_001).await.expect("retention");
        // Every non-active segment; the active one stays.
        assert_eq!(deleted as usize, segments - 1);
        assert_eq!(log.segment_count(), 1);
        assert!(log.read(log.log_start_offset(), 1).await.is_ok());
    });
}

fn set_mtime(path: &Path, mtime_ms: i64) {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let time = libc::timespec {
        tv_sec: mtime_ms / 1000,
        tv_nsec: (mtime_ms % 1000) * 1_000_000,
    };
    let times = [time, time];
    // SAFETY: c_path is a valid NUL-terminated string and times has 2 entries.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat");
}

#[test]
fn retention_by_time_uses_file_mtime_after_restart() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            retention_ms: 30 * 60_000,
            ..small_segments(4 * 1024)
        };
        let log = open(dir.path(), config.clone(), RecoveryMode::Clean).await;
        append_batches(&log, 12, 1, 900).await;
        log.close().await.expect("close");
        let segments = segment_files(dir.path(), "log");
        assert!(segments.len() >= 3);
        set_mtime(&segments[0], now_ms() - 60 * 60_000);
        let log = open(dir.path(), config, RecoveryMode::Clean).await;
        let count = log.segment_count();
        assert_eq!(log.enforce_retention(now_ms()).await.expect("retention"), 1);
        assert_eq!(log.segment_count(), count - 1);
        assert!(!segments[0].exists());
    });
}

#[test]
fn advance_log_start_offset_deletes_segments_below_and_survives_restart() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_segments(4 * 1024), RecoveryMode::Clean).await;
        append_batches(&log, 20, 2, 900).await;
        let before = log.segment_count();
        log.advance_log_start_offset(21).await.expect("advance");
        assert_eq!(log.log_start_offset(), 21);
        assert!(log.segment_count() < before);
        // The batch holding offset 21 starts at 20 and is returned whole.
        let read = log.read(21, 1).await.expect("read");
        assert_eq!(batch_offsets(&read), vec![(20, 21)]);
        assert!(matches!(
            log.read(20, 1).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // Going back is a no-op; beyond the LEO is out of range.
        log.advance_log_start_offset(5).await.expect("no-op");
        assert_eq!(log.log_start_offset(), 21);
        assert!(log.advance_log_start_offset(41).await.is_err());
        log.close().await.expect("close");
        let log = open(dir.path(), small_segments(4 * 1024), RecoveryMode::Clean).await;
        assert_eq!(log.log_start_offset(), 21);
        assert_eq!(log.log_end_offset(), 40);
    });
}

#[test]
fn unclean_recovery_truncates_a_torn_tail_and_appends_continue() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        append_batches(&log, 5, 3, 100).await;
        let logical = log.size_bytes();
        crash(log);
        let path = dir.path().join("00000000000000000000.log");
        let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(logical - 10).expect("chop");
        assert_eq!(detect_recovery_mode(dir.path()), RecoveryMode::Unclean);

        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Unclean).await;
        assert_eq!(log.log_end_offset(), 12);
        let report = log.recovery_report();
        assert_eq!(report.segments_scanned, 1);
        assert_eq!(report.batches_scanned, 4);
        assert!(report.bytes_truncated > 0);
        let appended = log.append(vec![make_batch(0, 2, 10, 5)]).await.expect("append");
        assert_eq!(appended.base_offset, 12);
        let read = log.read(9, 1 << 20).await.expect("read");
        assert_eq!(batch_offsets(&read), vec![(9, 11), (12, 13)]);
    });
}

#[test]
fn unclean_recovery_truncates_only_the_batch_with_a_flipped_byte() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        append_batches(&log, 4, 2, 100).await;
        let logical = log.size_bytes();
        crash(log);
        let path = dir.path().join("00000000000000000000.log");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[logical as usize - 5] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");

        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Unclean).await;
        assert_eq!(log.log_end_offset(), 6);
        assert_eq!(log.recovery_report().batches_scanned, 3);
        let read = log.read(0, 1 << 20).await.expect("read");
        assert_eq!(batch_offsets(&read), vec![(0, 1), (2, 3), (4, 5)]);
    });
}

#[test]
fn unclean_recovery_after_crash_keeps_every_written_batch_and_drops_padding() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_segments(16 * 1024), RecoveryMode::Clean).await;
        append_batches(&log, 30, 3, 333).await;
        let (end, size) = (log.log_end_offset(), log.size_bytes());
        let segments = log.segment_count();
        crash(log);
        let active = segment_files(dir.path(), "log").pop().expect("active");
        assert_eq!(
            std::fs::metadata(&active).expect("stat").len() % 4096,
            0,
            "O_DIRECT padded"
        );
        let log = open(dir.path(), small_segments(16 * 1024), RecoveryMode::Unclean).await;
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.size_bytes(), size);
        assert_eq!(log.segment_count(), segments);
        let report = log.recovery_report();
        // Only the segment holding the recovery point (the active one) is scanned.
        assert_eq!(report.segments_scanned, 1);
        assert!(
            report.bytes_truncated < 4096,
            "padding only: {}",
            report.bytes_truncated
        );
        let file_bytes: u64 = segment_files(dir.path(), "log")
            .iter()
            .map(|p| std::fs::metadata(p).expect("stat").len())
            .sum();
        assert_eq!(file_bytes, size, "padding trimmed");
        assert!(log.read(end - 1, 1).await.is_ok());
    });
}

#[test]
fn missing_index_is_rebuilt_and_reads_still_work() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
        append_batches(&log, 30, 2, 500).await;
        log.close().await.expect("close");
        let indexes = segment_files(dir.path(), "index");
        std::fs::remove_file(&indexes[0]).expect("remove sealed index");
        std::fs::remove_file(indexes.last().expect("active index")).expect("remove active index");

        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
        assert_eq!(log.recovery_report().indexes_rebuilt, 1, "the active one at open");
        for offset in 0..60 {
            let read = log.read(offset, 1).await.expect("read");
            assert_eq!(batch_offsets(&read)[0].0, offset / 2 * 2);
        }
        assert_eq!(
            log.recovery_report().indexes_rebuilt,
            2,
            "the sealed one on first use"
        );
        assert!(indexes[0].exists(), "rebuilt index written back");
    });
}

#[test]
fn corrupt_index_is_rebuilt_and_reads_still_work() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
        append_batches(&log, 30, 2, 500).await;
        log.close().await.expect("close");
        let indexes = segment_files(dir.path(), "index");
        assert!(indexes.len() >= 3);
        // Wrong size, garbage of the right size, and an entry past the log.
        std::fs::write(&indexes[0], [1u8; 13]).expect("write");
        std::fs::write(&indexes[1], [0xabu8; 16]).expect("write");
        let mut past_end = vec![0, 0, 0, 1];
        past_end.extend_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(&indexes[2], past_end).expect("write");
        let timeindexes = segment_files(dir.path(), "timeindex");
        std::fs::write(&timeindexes[0], [7u8; 5]).expect("write");

        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
        for offset in 0..60 {
            let read = log.read(offset, 1).await.expect("read");
            assert_eq!(batch_offsets(&read)[0].0, offset / 2 * 2);
        }
        assert_eq!(log.recovery_report().indexes_rebuilt, 3);
        assert_eq!(std::fs::metadata(&indexes[0]).expect("stat").len() % 8, 0);
    });
}

#[test]
fn clean_close_then_clean_open_keeps_everything_and_scans_no_segment() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
        append_batches(&log, 40, 2, 400).await;
        let (end, size, segments) = (log.log_end_offset(), log.size_bytes(), log.segment_count());
        log.close().await.expect("close");
        assert!(matches!(
            log.append(vec![make_batch(0, 1, 1, 0)]).await,
            Err(StorageError::Closed)
        ));
        assert_eq!(detect_recovery_mode(dir.path()), RecoveryMode::Clean);
        // Close trimmed the O_DIRECT padding.
        let active = segment_files(dir.path(), "log").pop().expect("active");
        let sizes: u64 = segment_files(dir.path(), "log")
            .iter()
            .map(|p| std::fs::metadata(p).expect("stat").len())
            .sum();
        assert_eq!(sizes, size);
        assert!(std::fs::metadata(&active).expect("stat").len() > 0);

        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
        assert_eq!(
            detect_recovery_mode(dir.path()),
            RecoveryMode::Unclean,
            "marker removed while open"
        );
        let report = log.recovery_report();
        assert_eq!(report.segments_scanned, 0);
        assert_eq!(report.indexes_rebuilt, 0);
        assert_eq!(report.bytes_truncated, 0);
        assert_eq!(
            (log.log_end_offset(), log.size_bytes(), log.segment_count()),
            (end, size, segments)
        );
        let appended = log.append(vec![make_batch(0, 1, 10, 0)]).await.expect("append");
        assert_eq!(appended.base_offset, end);
        let read = log.read(0, 1 << 20).await.expect("read");
        assert_eq!(batch_offsets(&read)[0], (0, 1));
    });
}

#[test]
fn concurrent_appends_are_group_committed_with_contiguous_offsets() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_segments(64 * 1024), RecoveryMode::Clean).await;
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    let records = 1 + i % 3;
                    let result = log.append(vec![make_batch(0, records, 200, i as i64)]).await;
                    (records, result.expect("append"))
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await);
        }
        results.sort_by_key(|(_, r)| r.base_offset);
        let mut next = 0;
        for (records, result) in &results {
            assert_eq!(result.base_offset, next);
            assert_eq!(result.last_offset, next + *records as i64 - 1);
            next = result.last_offset + 1;
        }
        assert_eq!(log.log_end_offset(), next);
        let writes = log.state.borrow().writes_completed;
        assert!(
            writes < 100,
            "appends shared writes: {writes} writes for 100 appends"
        );
        let mut offset = 0;
        while offset < next {
            let read = log.read(offset, 1 << 20).await.expect("read");
            offset = batch_offsets(&read).last().expect("batch").1 + 1;
        }
        assert_eq!(offset, next);
    });
}

#[test]
fn appends_roll_when_segment_ms_elapsed() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            segment_ms: 0,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config, RecoveryMode::Clean).await;
        append_batches(&log, 3, 1, 10).await;
        assert_eq!(log.segment_count(), 3);
    });
}

#[test]
fn appends_roll_when_the_index_is_full() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            index_interval_bytes: 1,
            segment_index_bytes: 48,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config, RecoveryMode::Clean).await;
        append_batches(&log, 12, 1, 10).await;
        assert!(log.segment_count() >= 3, "segments: {}", log.segment_count());
        for offset in 0..12 {
            assert_eq!(
                batch_offsets(&log.read(offset, 1).await.expect("read"))[0].0,
                offset
            );
        }
    });
}

#[test]
fn flush_policy_by_message_count_advances_the_durable_point() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            flush_interval_messages: 1,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config, RecoveryMode::Clean).await;
        append_batches(&log, 3, 2, 10).await;
        assert_eq!(log.state.borrow().recovery_point, 6);
        log.flush().await.expect("flush");
    });
}

#[test]
fn find_batch_by_timestamp_and_max_timestamp_batch() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_segments(4 * 1024), RecoveryMode::Clean).await;
        assert!(log.find_batch_by_timestamp(0).await.expect("find").is_none());
        assert!(log.max_timestamp_batch().await.expect("max").is_none());
        // Batch i (offsets 2i, 2i+1) has max timestamp 1_000 + 10 i + 1, except
        // a late, out-of-order batch 7 whose max is 50_000.
        for i in 0..20 {
            let timestamp = if i == 7 { 49_999 } else { 1_000 + i * 10 };
            log.append(vec![make_batch(0, 2, 900, timestamp)])
                .await
                .expect("append");
        }
        assert!(log.segment_count() > 3);
        let at = |bytes: Option<Bytes>| bytes.map(|b| batch_offsets(&b)[0].0);
        assert_eq!(at(log.find_batch_by_timestamp(0).await.expect("find")), Some(0));
        assert_eq!(
            at(log.find_batch_by_timestamp(1_031).await.expect("find")),
            Some(6)
        );
        assert_eq!(
            at(log.find_batch_by_timestamp(1_032).await.expect("find")),
            Some(8)
        );
        assert_eq!(
            at(log.find_batch_by_timestamp(1_150).await.expect("find")),
            Some(14)
        );
        assert_eq!(
            at(log.find_batch_by_timestamp(50_000).await.expect("find")),
            Some(14)
        );
        assert_eq!(at(log.find_batch_by_timestamp(50_001).await.expect("find")), None);
        assert_eq!(at(log.max_timestamp_batch().await.expect("max")), Some(14));
        log.close().await.expect("close");
        // Same answers from indexes loaded from disk.
        let log = open(dir.path(), small_segments(4 * 1024), RecoveryMode::Clean).await;
        assert_eq!(
            at(log.find_batch_by_timestamp(1_032).await.expect("find")),
            Some(8)
        );
        assert_eq!(at(log.max_timestamp_batch().await.expect("max")), Some(14));
    });
}

#[test]
fn delete_removes_the_directory() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("topic-0");
        let log = open(&path, small_segments(4 * 1024), RecoveryMode::Clean).await;
        append_batches(&log, 10, 1, 900).await;
        log.delete().await.expect("delete");
        assert!(!path.exists());
        assert!(matches!(
            log.append(vec![make_batch(0, 1, 1, 0)]).await,
            Err(StorageError::Closed)
        ));
    });
}

#[test]
fn append_rejects_an_empty_append_and_a_malformed_batch() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        assert!(matches!(
            log.append(Vec::new()).await,
            Err(StorageError::InvalidBatch(BatchError::Empty))
        ));
        let batch = make_batch(0, 1, 10, 0);
        let truncated = batch.slice(..batch.len() - 1);
        assert!(matches!(
            log.append(vec![truncated]).await,
            Err(StorageError::InvalidBatch(_))
        ));
        assert_eq!(log.log_end_offset(), 0);
    });
}
