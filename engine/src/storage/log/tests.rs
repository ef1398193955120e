use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;

use super::*;
use crate::storage::batch::{split_validated, validate, BatchError};
use crate::storage::segment;
use crate::storage::testutil::make_batch;
use crate::storage::Records;

use crate::test_executor::run;

fn small_segments(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 512,
        ..LogConfig::default()
    }
}

/// A shard's file cache as tests use it: small, so evictions happen.
fn file_cache(capacity: usize) -> Rc<FileCache> {
    FileCache::new(capacity)
}

async fn open(dir: &Path, config: LogConfig, mode: RecoveryMode) -> Rc<Log> {
    Log::open(dir, config, mode, file_cache(4))
        .await
        .expect("open log")
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
fn zero_copy_reads_return_the_same_whole_batches_as_copying_reads() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_segments(16 * 1024), RecoveryMode::Clean).await;
        append_batches(&log, 120, 3, 250).await;
        assert!(log.segment_count() > 3);
        let mut slices = 0;
        for max_bytes in [1, 1000, 4096, 1 << 20] {
            for offset in 0..log.log_end_offset() {
                let copied = log.read(offset, max_bytes).await.expect("read");
                let records = log.read_records(offset, max_bytes, true).await.expect("read");
                slices += usize::from(records.is_file());
                let sent = records.to_bytes().expect("slice bytes");
                // Same first batch; both whole, contiguous batches; a slice may
                // stop earlier (cut at an indexed batch start), never later.
                let (copied_batches, sent_batches) = (batch_offsets(&copied), batch_offsets(&sent));
                assert_eq!(sent_batches[0], copied_batches[0], "offset {offset}");
                assert!(sent.len() <= copied.len(), "offset {offset} max {max_bytes}");
                assert_eq!(
                    &copied[..sent.len()],
                    &sent[..],
                    "offset {offset} max {max_bytes}"
                );
                for pair in sent_batches.windows(2) {
                    assert_eq!(pair[0].1 + 1, pair[1].0, "contiguous");
                }
            }
        }
        assert!(slices > 0, "sealed segments are served as file slices");
        // The active segment's partial block is never a slice: the tail read
        // is copied.
        let last = log.log_end_offset() - 1;
        assert!(!log
            .read_records(last, 1 << 20, true)
            .await
            .expect("read")
            .is_file());
        log.close().await.expect("close");
    });
}

#[test]
fn flush_is_overdue_only_for_unsynced_data_older_than_flush_ms() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            flush_interval_ms: 50,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config, RecoveryMode::Clean).await;
        let now = now_ms();
        assert!(!log.flush_overdue(now + 1_000), "nothing unsynced");
        append_batches(&log, 1, 2, 100).await;
        // flush.ms counts from the last flush (here: the open), as Kafka's.
        assert!(!log.flush_overdue(now), "not yet flush.ms since the open");
        assert!(log.flush_overdue(now_ms() + 1_000));
        log.flush().await.expect("flush");
        assert!(!log.flush_overdue(now_ms() + 1_000), "synced");
        assert_eq!(log.flush_interval_ms(), 50);
        log.close().await.expect("close");
    });
}

/// One record with `key` and `value` (None: a tombstone), as a v2 batch.
fn keyed_batch(key: &str, value: Option<&str>, compression: kafka_protocol::records::Compression) -> Bytes {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_000,
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        headers: Default::default(),
    };
    let mut out = bytes::BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut out, [&record], &options).expect("encode");
    out.freeze()
}

/// Every record readable from the log: (offset, key, value).
async fn all_records(log: &Log) -> Vec<(i64, String, Option<String>)> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    while next < log.log_end_offset() {
        let mut bytes = log.read(next, 1 << 20).await.expect("read");
        assert!(!bytes.is_empty(), "no batch at {next}");
        while !bytes.is_empty() {
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).expect("decode");
            for r in set.records {
                assert!(r.offset >= next, "offsets only increase");
                let text = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
                out.push((r.offset, text(r.key).unwrap(), text(r.value)));
                next = r.offset + 1;
            }
        }
    }
    out
}

#[test]
fn compaction_keeps_the_last_record_per_key_with_its_offset_and_drops_old_tombstones() {
    run(|| async {
        use kafka_protocol::records::Compression;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            segment_bytes: 2048,
            cleanup_compact: true,
            cleanup_delete: false,
            delete_retention_ms: 0,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config.clone(), RecoveryMode::Clean).await;
        // 300 updates of 11 keys; key k0 ends with a tombstone. Half the
        // batches are lz4-compressed.
        for i in 0..300 {
            // k0's last record is the tombstone at 250.
            let key = if i % 10 == 0 && i > 250 {
                "k10".to_string()
            } else {
                format!("k{}", i % 10)
            };
            let value = format!("v{i}");
            let value = (i != 250).then_some(value.as_str());
            let codec = if i % 2 == 0 {
                Compression::None
            } else {
                Compression::Lz4
            };
            log.append(vec![keyed_batch(&key, value, codec)])
                .await
                .expect("append");
        }
        let before = all_records(&log).await;
        assert_eq!(before.len(), 300);
        assert!(log.segment_count() > 5);
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        let output = log
            .compact(now_ms(), 1 << 20, f64::INFINITY)
            .await
            .expect("compact")
            .expect("a pass was due");
        assert!(output.records_removed > 200, "removed {}", output.records_removed);
        assert!(output.bytes_after < output.bytes_before);
        let check = |after: &[(i64, String, Option<String>)]| {
            // Offsets keep their values; every key's last record survives.
            for (offset, key, value) in after {
                let (o, k, v) = &before[*offset as usize];
                assert_eq!(
                    (o, k, v),
                    (offset, key, value),
                    "offset {offset} moved or changed"
                );
            }
            for (i, (offset, key, _)) in before.iter().enumerate() {
                // The map covers the sealed segments only: a key's last
                // record there stays even when the active segment has a newer one.
                let last_of_key = before
                    .iter()
                    .rposition(|(o, k, _)| k == key && *o < output.clean_up_to_offset)
                    .unwrap_or(usize::MAX);
                let in_sealed = *offset < output.clean_up_to_offset;
                let kept = after.iter().any(|(o, _, _)| o == offset);
                if i == 250 {
                    assert!(
                        *offset < output.clean_up_to_offset,
                        "the tombstone is in a sealed segment"
                    );
                    assert!(!kept, "the expired tombstone is dropped");
                } else if !in_sealed || i == last_of_key {
                    assert!(kept, "offset {offset} ({key}) must stay");
                } else {
                    assert!(!kept, "offset {offset} ({key}) is superseded");
                }
            }
        };
        let after = all_records(&log).await;
        check(&after);
        // Appends continue, and the compacted files survive a reopen.
        log.append(vec![keyed_batch("k1", Some("late"), Compression::None)])
            .await
            .expect("append after compaction");
        log.close().await.expect("close");
        let log = open(dir.path(), config, RecoveryMode::Clean).await;
        let reopened = all_records(&log).await;
        assert_eq!(&reopened[..after.len()], &after[..]);
        assert_eq!(reopened.last().unwrap().2.as_deref(), Some("late"));
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".cleaned")
            })
            .count();
        assert_eq!(leftovers, 0);
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
        // An active segment of one block is scanned whole at a clean open,
        // its index files unread: make it larger.
        while file_len(segment_files(dir.path(), "log").last().expect("active")) <= 4096 {
            append_batches(&log, 1, 2, 500).await;
        }
        let end = log.log_end_offset();
        log.close().await.expect("close");
        let indexes = segment_files(dir.path(), "index");
        std::fs::remove_file(&indexes[0]).expect("remove sealed index");
        std::fs::remove_file(indexes.last().expect("active index")).expect("remove active index");

        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
        assert_eq!(log.recovery_report().indexes_rebuilt, 1, "the active one at open");
        for offset in 0..end {
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
        // Close trimmed the O_DIRECT padding.
        let active = segment_files(dir.path(), "log").pop().expect("active");
        let sizes: u64 = segment_files(dir.path(), "log")
            .iter()
            .map(|p| std::fs::metadata(p).expect("stat").len())
            .sum();
        assert_eq!(sizes, size);
        assert!(std::fs::metadata(&active).expect("stat").len() > 0);

        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
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
fn closing_a_log_unchanged_since_a_clean_open_or_since_it_was_created_writes_nothing() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
        append_batches(&log, 10, 2, 400).await;
        let (end, size) = (log.log_end_offset(), log.size_bytes());
        log.close().await.expect("close");
        let files = |dir: &Path| {
            let mut names: Vec<(String, std::time::SystemTime)> = std::fs::read_dir(dir)
                .expect("read_dir")
                .map(|e| {
                    let e = e.expect("entry");
                    let modified = e.metadata().expect("stat").modified().expect("mtime");
                    (e.file_name().to_string_lossy().into_owned(), modified)
                })
                .collect();
            names.sort();
            names
        };
        let after_close = files(dir.path());
        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
        assert!(!log.read(0, 1 << 20).await.expect("read").is_empty());
        log.close().await.expect("close");
        assert_eq!(
            files(dir.path()),
            after_close,
            "an unchanged log's close touches no file"
        );
        assert!(matches!(
            log.append(vec![make_batch(0, 1, 1, 0)]).await,
            Err(StorageError::Closed)
        ));
        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
        assert_eq!((log.log_end_offset(), log.size_bytes()), (end, size));
        assert_eq!(log.recovery_report().segments_scanned, 0);
        crash(log);

        // Created and closed empty: reopened clean as new, nothing rebuilt.
        let empty = tempfile::tempdir().expect("tempdir");
        let log = open(empty.path(), LogConfig::default(), RecoveryMode::Clean).await;
        log.close().await.expect("close");
        let log = open(empty.path(), LogConfig::default(), RecoveryMode::Clean).await;
        let report = log.recovery_report();
        assert_eq!((report.indexes_rebuilt, report.segments_scanned), (0, 0));
        assert!(log.state.borrow().dir_unsynced, "still a new log");
        let appended = log.append(vec![make_batch(0, 2, 10, 0)]).await.expect("append");
        assert_eq!(appended.base_offset, 0);
        log.close().await.expect("close");
        let log = open(empty.path(), LogConfig::default(), RecoveryMode::Clean).await;
        assert_eq!(log.log_end_offset(), 2);
        crash(log);
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
fn a_brand_new_log_opens_without_syncs_and_its_first_flush_syncs_the_directory() {
    run(|| async {
        let config = LogConfig {
            flush_interval_messages: 1,
            ..LogConfig::default()
        };
        // A crash before anything was written: recovered from its first segment.
        let empty = tempfile::tempdir().expect("tempdir");
        let log = open(empty.path(), config.clone(), RecoveryMode::Unclean).await;
        assert!(log.state.borrow().dir_unsynced, "nothing synced at open");
        assert!(
            !empty.path().join(RECOVERY_POINT_FILE).exists(),
            "no recovery point for an empty log"
        );
        crash(log);
        let log = open(empty.path(), config.clone(), RecoveryMode::Unclean).await;
        assert_eq!(log.log_end_offset(), 0);
        crash(log);

        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), config.clone(), RecoveryMode::Clean).await;
        assert!(log.state.borrow().dir_unsynced);
        append_batches(&log, 2, 3, 10).await;
        assert!(
            !log.state.borrow().dir_unsynced,
            "the first flush synced the directory"
        );
        assert_eq!(log.state.borrow().recovery_point, 6);
        crash(log);
        let log = open(dir.path(), config, RecoveryMode::Unclean).await;
        assert_eq!(log.log_end_offset(), 6);
        assert_eq!(
            batch_offsets(&log.read(0, 1 << 20).await.expect("read")),
            vec![(0, 2), (3, 5)]
        );
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

/// `batch` with `epoch` in its partitionLeaderEpoch (not CRC covered), as a
/// client or a leader may have sent it.
fn with_epoch(batch: &Bytes, epoch: i32) -> Bytes {
    let mut bytes = batch.to_vec();
    bytes[12..16].copy_from_slice(&epoch.to_be_bytes());
    Bytes::from(bytes)
}

/// Whole, CRC-valid batches of a read, with their headers.
fn read_headers(bytes: &Bytes) -> Vec<crate::storage::BatchHeader> {
    split_validated(bytes)
        .expect("reads return whole valid batches")
        .iter()
        .map(|b| *validate(b).expect("valid"))
        .collect()
}

#[test]
fn append_with_epoch_stamps_the_leader_epoch_and_keeps_the_crc_valid() {
    run(|| async {
        for log_append_time in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = LogConfig {
                log_append_time,
                ..LogConfig::default()
            };
            let log = open(dir.path(), config, RecoveryMode::Clean).await;
            let sent = [make_batch(0, 3, 50, 1_000), make_batch(0, 2, 50, 1_000)];
            let stamped = log.append_with_epoch(sent.to_vec(), 7).await.expect("append");
            assert_eq!((stamped.base_offset, stamped.last_offset), (0, 4));
            // A plain append leaves the field as the client sent it.
            let plain = log
                .append(vec![with_epoch(&make_batch(0, 1, 50, 1_000), 3)])
                .await
                .expect("append");
            assert_eq!(plain.base_offset, 5);

            let read = log.read(0, 1 << 20).await.expect("read");
            let headers = read_headers(&read);
            let epochs: Vec<i32> = headers.iter().map(|h| h.partition_leader_epoch.get()).collect();
            assert_eq!(epochs, vec![7, 7, 3], "log_append_time {log_append_time}");
            let offsets: Vec<(i64, i64)> = headers
                .iter()
                .map(|h| (h.base_offset.get(), h.last_offset()))
                .collect();
            assert_eq!(offsets, vec![(0, 2), (3, 4), (5, 5)]);
            assert_eq!(
                headers.iter().all(|h| h.timestamp_type_log_append()),
                log_append_time
            );
            if !log_append_time {
                // Only baseOffset and the epoch differ from what was sent.
                assert_eq!(&read[16..sent[0].len()], &sent[0][16..]);
            }
            log.close().await.expect("close");
        }
    });
}

#[test]
fn append_replicated_keeps_the_leaders_offsets_takes_compaction_gaps_and_refuses_overlaps() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        let first = [
            with_epoch(&make_batch(0, 3, 40, 500), 4),
            with_epoch(&make_batch(3, 2, 40, 600), 5),
        ];
        let result = log.append_replicated(first.to_vec()).await.expect("replicate");
        assert_eq!((result.base_offset, result.last_offset), (0, 4));
        let read = log.read(0, 1 << 20).await.expect("read");
        assert_eq!(
            read,
            Bytes::from([&first[0][..], &first[1][..]].concat()),
            "byte for byte"
        );
        let size = log.size_bytes();

        let refused = [
            (vec![make_batch(4, 2, 40, 700)], 5, 4),
            (vec![make_batch(5, 2, 40, 700), make_batch(6, 1, 40, 700)], 7, 6),
            (vec![make_batch(9, 1, 40, 700), make_batch(9, 1, 40, 700)], 10, 9),
        ];
        for (batches, want_expected, want_got) in refused {
            match log.append_replicated(batches).await {
                Err(StorageError::NonContiguous { expected, got }) => {
                    assert_eq!((expected, got), (want_expected, want_got));
                }
                other => panic!("overlap accepted: {other:?}"),
            }
            assert_eq!(
                (log.log_end_offset(), log.size_bytes()),
                (5, size),
                "nothing written"
            );
        }

        let next = log
            .append_replicated(vec![make_batch(5, 2, 40, 700)])
            .await
            .expect("replicate");
        assert_eq!((next.base_offset, next.last_offset), (5, 6));

        // Queued together: one that would go back below the log end is
        // refused alone; a gap (offsets compaction removed on the leader)
        // is kept, as Kafka's followers keep it.
        let queued = [
            make_batch(7, 2, 40, 800),
            make_batch(12, 1, 40, 800),
            make_batch(9, 1, 40, 800),
            make_batch(14, 1, 40, 800),
        ];
        let tasks: Vec<_> = queued
            .iter()
            .map(|batch| {
                let (log, batch) = (log.clone(), batch.clone());
                glommio::spawn_local(async move { log.append_replicated(vec![batch]).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await);
        }
        assert!(matches!(&results[0], Ok(r) if r.base_offset == 7));
        assert!(matches!(&results[1], Ok(r) if r.base_offset == 12));
        assert!(matches!(
            &results[2],
            Err(StorageError::NonContiguous { expected: 13, got: 9 })
        ));
        assert!(matches!(&results[3], Ok(r) if r.base_offset == 14));
        assert_eq!(log.log_end_offset(), 15);
        let read = log.read(0, 1 << 20).await.expect("read");
        assert_eq!(
            batch_offsets(&read),
            vec![(0, 2), (3, 4), (5, 6), (7, 8), (12, 12), (14, 14)]
        );
        log.close().await.expect("close");
    });
}

#[test]
fn a_follower_replicating_every_batch_holds_the_same_files_as_its_leader() {
    run(|| async {
        let root = tempfile::tempdir().expect("tempdir");
        let (leader_dir, follower_dir) = (root.path().join("leader"), root.path().join("follower"));
        let leader = open(&leader_dir, small_segments(8 * 1024), RecoveryMode::Clean).await;
        let follower = open(&follower_dir, small_segments(8 * 1024), RecoveryMode::Clean).await;
        for i in 0..60usize {
            let batch = make_batch(0, 1 + i % 4, 200 + 13 * i, i as i64);
            leader.append_with_epoch(vec![batch], 3).await.expect("lead");
        }
        // The follower's fetch loop: whatever the leader returns from the
        // follower's end offset on, replicated as is. Each round moves the
        // follower on by at least one batch, so 60 rounds suffice.
        for _round in 0..60 {
            if follower.log_end_offset() == leader.log_end_offset() {
                break;
            }
            let fetched = leader.read(follower.log_end_offset(), 3000).await.expect("fetch");
            let batches = split_validated(&fetched).expect("whole batches");
            follower.append_replicated(batches).await.expect("replicate");
        }
        assert_eq!(follower.log_end_offset(), leader.log_end_offset());
        assert_eq!(follower.segment_count(), leader.segment_count());
        assert!(leader.segment_count() > 3, "segments: {}", leader.segment_count());
        leader.close().await.expect("close");
        follower.close().await.expect("close");
        for suffix in ["log", "index", "timeindex"] {
            let (leader_files, follower_files) = (
                segment_files(&leader_dir, suffix),
                segment_files(&follower_dir, suffix),
            );
            assert_eq!(leader_files.len(), follower_files.len());
            for (l, f) in leader_files.iter().zip(&follower_files) {
                assert_eq!(l.file_name(), f.file_name());
                assert_eq!(
                    std::fs::read(l).expect("read"),
                    std::fs::read(f).expect("read"),
                    "{l:?}"
                );
            }
        }
    });
}

/// Appends `count` batches of 3 records each, returning (assigned base
/// offset, batch as sent) for each.
async fn append_sent(log: &Log, count: usize, value_bytes: usize) -> Vec<(i64, Bytes)> {
    let mut sent = Vec::new();
    for i in 0..count {
        let batch = make_batch(0, 3, value_bytes, 1_000 + i as i64 * 10);
        let appended = log.append(vec![batch.clone()]).await.expect("append");
        sent.push((appended.base_offset, batch));
    }
    sent
}

/// The log holds exactly `sent` and ends at `log_end_offset`, through
/// copying and zero-copy reads alike; nothing is readable at or past the end.
async fn assert_holds(log: &Log, sent: &[(i64, Bytes)], log_end_offset: i64) {
    assert_eq!(log.log_end_offset(), log_end_offset);
    assert_reads_back(log, sent).await;
    let mut next = log.log_start_offset();
    let mut expected = sent.iter();
    while next < log_end_offset {
        let records = log.read_records(next, 8 * 1024, true).await.expect("read");
        let bytes = records.to_bytes().expect("bytes");
        for got in split_validated(&bytes).expect("whole valid batches") {
            let (base_offset, want) = expected.next().expect("no more batches than sent");
            let header = validate(&got).expect("valid");
            assert_eq!(header.base_offset.get(), *base_offset);
            assert_eq!(&got[8..], &want[8..]);
            next = header.last_offset() + 1;
        }
    }
    assert!(expected.next().is_none(), "every batch read back zero-copy");
    assert!(log
        .read(log_end_offset, 1 << 20)
        .await
        .expect("read at end")
        .is_empty());
    assert!(matches!(
        log.read(log_end_offset + 1, 1 << 20).await,
        Err(StorageError::OffsetOutOfRange { .. })
    ));
}

/// The batches of `sent` that end below `log_end_offset`.
fn kept_below(sent: &[(i64, Bytes)], log_end_offset: i64) -> Vec<(i64, Bytes)> {
    let kept: Vec<(i64, Bytes)> = sent
        .iter()
        .filter(|(base, batch)| {
            base + i64::from(validate(batch).expect("valid").last_offset_delta.get()) < log_end_offset
        })
        .cloned()
        .collect();
    let end = kept.last().map_or(0, |(base, batch)| {
        base + i64::from(validate(batch).expect("valid").last_offset_delta.get()) + 1
    });
    assert!(
        kept.is_empty() || end == log_end_offset,
        "the cut is at a batch boundary"
    );
    kept
}

/// One truncation case, checked both ways round: truncate, crash at once and
/// recover uncleanly, append, close and reopen cleanly; and truncate, append
/// (on the writer state the truncation left), close and reopen cleanly,
/// append, crash and recover uncleanly. After each step the log holds
/// exactly the batches below `expected_end` plus those appended since, and
/// appends continue at its end.
async fn check_truncation(config: LogConfig, batches: usize, offset: i64, expected_end: i64) {
    for crash_first in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), config.clone(), RecoveryMode::Clean).await;
        let sent = append_sent(&log, batches, 300).await;
        log.truncate_to(offset).await.expect("truncate");
        let mut kept = kept_below(&sent, expected_end);
        assert_holds(&log, &kept, expected_end).await;
        assert_eq!(segment_files(dir.path(), "log").len(), log.segment_count());
        let active = segment::file_path(dir.path(), log.active_base_offset(), "index");
        assert!(!active.exists(), "no stale index for the active segment");
        let mut end = expected_end;
        if !crash_first {
            // Odd size: the next append starts inside a partial block.
            let batch = make_batch(0, 3, 111, 8_000);
            let appended = log.append(vec![batch.clone()]).await.expect("append");
            assert_eq!((appended.base_offset, appended.last_offset), (end, end + 2));
            kept.push((end, batch));
            end += 3;
            assert_holds(&log, &kept, end).await;
        }

        let mode = if crash_first {
            crash(log);
            RecoveryMode::Unclean
        } else {
            log.close().await.expect("close");
            RecoveryMode::Clean
        };
        let log = open(dir.path(), config.clone(), mode).await;
        assert!(
            log.recovery_report().bytes_truncated < BLOCK_BYTES,
            "O_DIRECT padding only: nothing torn, nothing cut"
        );
        assert_holds(&log, &kept, end).await;
        let batch = make_batch(0, 2, 100, 9_000);
        let appended = log.append(vec![batch.clone()]).await.expect("append");
        assert_eq!((appended.base_offset, appended.last_offset), (end, end + 1));
        kept.push((end, batch));
        end += 2;
        assert_holds(&log, &kept, end).await;

        let mode = if crash_first {
            log.close().await.expect("close");
            RecoveryMode::Clean
        } else {
            crash(log);
            RecoveryMode::Unclean
        };
        let log = open(dir.path(), config.clone(), mode).await;
        if mode == RecoveryMode::Clean {
            assert_eq!(log.recovery_report().segments_scanned, 0);
            assert_eq!(log.recovery_report().indexes_rebuilt, 0);
        }
        assert_holds(&log, &kept, end).await;
        log.close().await.expect("close");
    }
}

#[test]
fn truncate_to_a_batch_boundary_in_the_active_segment() {
    run(|| async {
        check_truncation(LogConfig::default(), 10, 15, 15).await;
    });
}

#[test]
fn truncate_to_mid_batch_removes_the_whole_batch_holding_the_offset() {
    run(|| async {
        check_truncation(LogConfig::default(), 10, 16, 15).await;
        check_truncation(LogConfig::default(), 10, 29, 27).await;
        check_truncation(LogConfig::default(), 10, 1, 0).await;
    });
}

#[test]
fn truncate_to_an_earlier_sealed_segment_deletes_the_later_ones() {
    run(|| async {
        let config = small_segments(8 * 1024);
        // Where the segments start with 60 batches of ~1 KiB.
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), config.clone(), RecoveryMode::Clean).await;
        append_sent(&log, 60, 300).await;
        let bases: Vec<i64> = log.state.borrow().segments.keys().copied().collect();
        assert!(bases.len() > 5, "segments: {bases:?}");
        // Mid-batch in the second segment, a few batches in.
        let base = bases[1];
        let offset = base + 3 * 4 + 1;
        assert!(offset + 3 < bases[2]);
        log.truncate_to(offset).await.expect("truncate");
        assert_eq!(log.log_end_offset(), base + 12);
        assert_eq!(log.segment_count(), 2);
        assert_eq!(log.active_base_offset(), base);
        assert_eq!(segment_files(dir.path(), "log").len(), 2);
        assert_eq!(
            segment_files(dir.path(), "index").len(),
            1,
            "only the sealed one's"
        );
        assert_eq!(segment_files(dir.path(), "timeindex").len(), 1);
        log.close().await.expect("close");

        check_truncation(config.clone(), 60, offset, base + 12).await;
        // At a segment's base: it stays, empty, as the active segment.
        check_truncation(config.clone(), 60, bases[3], bases[3]).await;
        // Inside the first batch of the first segment.
        check_truncation(config, 60, 2, 0).await;
    });
}

#[test]
fn truncate_to_below_the_log_start_starts_over_empty_at_the_offset() {
    run(|| async {
        let config = small_segments(4 * 1024);
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), config.clone(), RecoveryMode::Clean).await;
        append_sent(&log, 40, 300).await;
        log.advance_log_start_offset(61).await.expect("delete records");
        log.truncate_to(30).await.expect("truncate");
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (30, 30));
        assert_eq!(log.segment_count(), 1);
        assert_eq!(
            segment_files(dir.path(), "log"),
            vec![segment::file_path(dir.path(), 30, "log")]
        );
        assert!(segment_files(dir.path(), "index").is_empty());
        assert_holds(&log, &[], 30).await;
        let batch = make_batch(0, 3, 300, 5);
        let appended = log.append(vec![batch.clone()]).await.expect("append");
        assert_eq!(appended.base_offset, 30);
        let sent = vec![(30, batch)];
        assert_holds(&log, &sent, 33).await;
        crash(log);
        let log = open(dir.path(), config.clone(), RecoveryMode::Unclean).await;
        assert_eq!(log.log_start_offset(), 30);
        assert_holds(&log, &sent, 33).await;
        log.close().await.expect("close");
        let log = open(dir.path(), config.clone(), RecoveryMode::Clean).await;
        assert_eq!(log.log_start_offset(), 30);
        assert_holds(&log, &sent, 33).await;

        // A follower behind its leader's log start starts over there.
        log.truncate_fully_and_start_at(1_000).await.expect("start over");
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (1_000, 1_000));
        let batch = make_batch(1_000, 2, 300, 5);
        let replicated = log
            .append_replicated(vec![batch.clone()])
            .await
            .expect("replicate");
        assert_eq!(replicated.base_offset, 1_000);
        let sent = vec![(1_000, batch)];
        assert_holds(&log, &sent, 1_002).await;
        log.close().await.expect("close");
        let log = open(dir.path(), config.clone(), RecoveryMode::Clean).await;
        assert_eq!(log.log_start_offset(), 1_000);
        assert_holds(&log, &sent, 1_002).await;
        crash(log);
        let log = open(dir.path(), config, RecoveryMode::Unclean).await;
        assert_eq!(log.log_start_offset(), 1_000);
        assert_holds(&log, &sent, 1_002).await;
        assert_eq!(segment_files(dir.path(), "log").len(), 1);
    });
}

#[test]
fn truncate_to_at_or_past_the_log_end_changes_nothing() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), small_segments(8 * 1024), RecoveryMode::Clean).await;
        let sent = append_sent(&log, 20, 300).await;
        let files = |dir: &Path| -> Vec<(std::path::PathBuf, u64)> {
            segment_files(dir, "log")
                .into_iter()
                .map(|p| {
                    let len = std::fs::metadata(&p).expect("stat").len();
                    (p, len)
                })
                .collect()
        };
        let before = (log.log_end_offset(), log.size_bytes(), files(dir.path()));
        for offset in [60, 61, i64::MAX] {
            log.truncate_to(offset).await.expect("no-op");
            assert_eq!(
                (log.log_end_offset(), log.size_bytes(), files(dir.path())),
                before
            );
        }
        assert_holds(&log, &sent, 60).await;
        let appended = log.append(vec![make_batch(0, 1, 10, 0)]).await.expect("append");
        assert_eq!(appended.base_offset, 60);
        log.close().await.expect("close");
        assert!(matches!(log.truncate_to(10).await, Err(StorageError::Closed)));
    });
}

/// Open descriptors of this process whose target lies under `dir` (tests
/// run in parallel threads of one process, so the total count is noisy).
fn fds_under(dir: &Path) -> usize {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

/// Waits (up to ~1 s) for detached closes to finish until at most `max`
/// descriptors under `dir` are open; returns the count.
async fn settle_fds(dir: &Path, max: usize) -> usize {
    for _ in 0..1000 {
        let open = fds_under(dir);
        if open <= max {
            return open;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    fds_under(dir)
}

/// Reads the whole log like a consumer and checks it holds exactly `sent`
/// (assigned base offset, then every byte the client sent after it).
async fn assert_reads_back(log: &Log, sent: &[(i64, Bytes)]) {
    let mut next = log.log_start_offset();
    let mut expected = sent.iter();
    while next < log.log_end_offset() {
        let read = log.read(next, 8 * 1024).await.expect("read");
        let batches = split_validated(&read).expect("whole valid batches");
        assert!(
            !batches.is_empty(),
            "read at {next} below the LEO returned nothing"
        );
        for got in batches {
            let (base_offset, want) = expected.next().expect("no more batches than sent");
            let header = validate(&got).expect("valid");
            assert_eq!(header.base_offset.get(), *base_offset);
            assert_eq!(&got[8..], &want[8..]);
            next = header.last_offset() + 1;
        }
    }
    assert!(expected.next().is_none(), "every sent batch read back");
}

#[test]
fn fifty_logs_share_an_eight_file_cache_and_read_back_everything() {
    const LOGS: usize = 50;
    const CAPACITY: usize = 8;
    // The LRU may trail capacity by closes still in flight; none are at rest.
    const SLACK: usize = 2;
    run(|| async {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = file_cache(CAPACITY);
        let mut logs = Vec::new();
        for i in 0..LOGS {
            let dir = root.path().join(format!("topic-{i}"));
            let log = Log::open(
                &dir,
                small_segments(16 * 1024),
                RecoveryMode::Clean,
                cache.clone(),
            )
            .await
            .expect("open");
            logs.push(log);
        }
        assert!(
            settle_fds(root.path(), CAPACITY).await <= CAPACITY,
            "open keeps no fd"
        );
        let mut sent: Vec<Vec<(i64, Bytes)>> = vec![Vec::new(); LOGS];
        for round in 0..12usize {
            for i in 0..LOGS {
                // Odd sizes: tails stay partial, so reopened writers must
                // rewrite their in-memory tail block at the right position.
                let batch = make_batch(0, 1 + (round + i) % 3, 100 + 37 * i, (round * 1000 + i) as i64);
                let appended = logs[i].append(vec![batch.clone()]).await.expect("append");
                sent[i].push((appended.base_offset, batch));
                // Reading another log evicts files mid-stream, active ones too.
                let other = (i * 7 + round) % LOGS;
                if let Some((offset, want)) = sent[other].last() {
                    let read = logs[other].read(*offset, 1).await.expect("read");
                    assert_eq!(&read[8..], &want[8..]);
                }
            }
            let open = settle_fds(root.path(), CAPACITY).await;
            assert!(open <= CAPACITY + SLACK, "round {round}: {open} files open");
        }
        assert!(logs.iter().any(|l| l.segment_count() > 1), "some logs rolled");
        for (log, sent) in logs.iter().zip(&sent) {
            assert_reads_back(log, sent).await;
        }
        let stats = cache.stats();
        assert!(
            stats.evictions > 100,
            "files were evicted and reopened: {stats:?}"
        );
        assert_eq!(stats.over_capacity, 0);
        assert!(settle_fds(root.path(), CAPACITY).await <= CAPACITY + SLACK);
        for log in &logs {
            log.close().await.expect("close");
        }
        assert_eq!(settle_fds(root.path(), 0).await, 0);
        assert_eq!(cache.open_files(), 0);
    });
}

#[test]
fn evicted_log_keeps_appending_at_its_position_and_reopens_without_holes() {
    run(|| async {
        let root = tempfile::tempdir().expect("tempdir");
        let dirs = [root.path().join("a"), root.path().join("b")];
        // One file for two logs: every append reopens its log's active file.
        let cache = file_cache(1);
        let mut logs = Vec::new();
        for dir in &dirs {
            let log = Log::open(dir, LogConfig::default(), RecoveryMode::Clean, cache.clone())
                .await
                .expect("open");
            logs.push(log);
        }
        let mut sent: Vec<Vec<(i64, Bytes)>> = vec![Vec::new(), Vec::new()];
        for i in 0..40usize {
            let which = i % 2;
            let batch = make_batch(0, 2, 333 + i, i as i64);
            let appended = logs[which].append(vec![batch.clone()]).await.expect("append");
            sent[which].push((appended.base_offset, batch));
        }
        assert!(cache.stats().evictions >= 38, "{:?}", cache.stats());
        let ends: Vec<(i64, u64)> = logs
            .iter()
            .map(|l| (l.log_end_offset(), l.size_bytes()))
            .collect();
        for log in &logs {
            log.close().await.expect("close");
        }
        for ((dir, sent), (end, size)) in dirs.iter().zip(&sent).zip(&ends) {
            // Whole batches and nothing else: no padding left inside.
            let file_bytes: u64 = segment_files(dir, "log")
                .iter()
                .map(|p| std::fs::metadata(p).expect("stat").len())
                .sum();
            assert_eq!(file_bytes, *size);
            let log = Log::open(dir, LogConfig::default(), RecoveryMode::Clean, file_cache(1))
                .await
                .expect("clean reopen");
            assert_eq!(log.recovery_report().segments_scanned, 0);
            assert_eq!((log.log_end_offset(), log.size_bytes()), (*end, *size));
            assert_reads_back(&log, sent).await;
            crash(log);
            // A full CRC scan agrees: nothing torn, nothing cut.
            let log = Log::open(dir, LogConfig::default(), RecoveryMode::Unclean, file_cache(1))
                .await
                .expect("unclean reopen");
            assert_eq!(log.recovery_report().bytes_truncated, 0);
            assert_eq!(log.recovery_report().batches_scanned, sent.len() as u64);
            assert_eq!(log.log_end_offset(), *end);
        }
    });
}

#[test]
fn close_and_delete_release_the_logs_cached_files() {
    run(|| async {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = file_cache(8);
        let dirs: Vec<_> = (0..3).map(|i| root.path().join(format!("topic-{i}"))).collect();
        let mut logs = Vec::new();
        for dir in &dirs {
            let log = Log::open(dir, small_segments(4 * 1024), RecoveryMode::Clean, cache.clone())
                .await
                .expect("open");
            append_batches(&log, 6, 1, 900).await;
            log.read(0, 1 << 20).await.expect("read sealed");
            logs.push(log);
        }
        for dir in &dirs {
            assert!(fds_under(dir) >= 1);
        }
        let before = cache.open_files();

        logs[0].close().await.expect("close");
        assert_eq!(settle_fds(&dirs[0], 0).await, 0);
        let after_close = cache.open_files();
        assert!(after_close < before);
        // Reads on a closed log work and leave nothing cached or open.
        let read = logs[0].read(0, 1 << 20).await.expect("read after close");
        assert_eq!(batch_offsets(&read)[0], (0, 0));
        assert_eq!(cache.open_files(), after_close);
        assert_eq!(settle_fds(&dirs[0], 0).await, 0);

        logs[1].delete().await.expect("delete");
        assert!(!dirs[1].exists());
        assert_eq!(
            settle_fds(&dirs[1], 0).await,
            0,
            "a deleted log keeps no file open"
        );
        assert!(cache.open_files() < after_close);
        assert!(fds_under(&dirs[2]) >= 1, "other logs keep theirs");
    });
}

#[test]
fn retention_drops_deleted_segments_from_the_cache() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = file_cache(16);
        let config = LogConfig {
            retention_bytes: 0,
            ..small_segments(4 * 1024)
        };
        let log = Log::open(dir.path(), config, RecoveryMode::Clean, cache.clone())
            .await
            .expect("open");
        append_batches(&log, 8, 1, 900).await;
        let mut next = 0;
        while next < log.log_end_offset() {
            let read = log.read(next, 1 << 20).await.expect("read");
            next = batch_offsets(&read).last().expect("batch").1 + 1;
        }
        assert!(cache.open_files() > 1);
        assert!(log.enforce_retention(now_ms()).await.expect("retention") > 0);
        assert_eq!(log.segment_count(), 1);
        assert_eq!(cache.open_files(), 1, "only the active segment stays cached");
        assert_eq!(settle_fds(dir.path(), 1).await, 1);
    });
}

#[test]
fn flush_of_a_synced_idle_log_does_not_reopen_its_file() {
    run(|| async {
        let root = tempfile::tempdir().expect("tempdir");
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        let cache = file_cache(1);
        let idle = Log::open(&a, LogConfig::default(), RecoveryMode::Clean, cache.clone())
            .await
            .expect("open a");
        append_batches(&idle, 1, 1, 10).await;
        idle.flush().await.expect("flush");
        let busy = Log::open(&b, LogConfig::default(), RecoveryMode::Clean, cache.clone())
            .await
            .expect("open b");
        append_batches(&busy, 1, 1, 10).await;
        assert_eq!(settle_fds(&a, 0).await, 0, "evicted");
        idle.flush().await.expect("flush idle");
        assert_eq!(fds_under(&a), 0, "nothing to sync, nothing reopened");
        // Unsynced data is synced through a reopened file.
        append_batches(&idle, 1, 1, 10).await;
        busy.flush().await.expect("flush busy");
        idle.flush().await.expect("flush after append");
        assert_eq!(idle.log_end_offset(), 2);
    });
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn open_fds_total() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

/// Opens `count` logs under `root` through `cache` in `mode`, one at a time
/// (as a shard does at startup); returns them and the elapsed time.
async fn open_many(
    root: &Path,
    count: usize,
    mode: RecoveryMode,
    cache: &Rc<FileCache>,
) -> (Vec<Rc<Log>>, std::time::Duration) {
    let start = std::time::Instant::now();
    let mut logs = Vec::with_capacity(count);
    for i in 0..count {
        let dir = root.join(format!("topic-{i}"));
        let log = Log::open(&dir, LogConfig::default(), mode, cache.clone())
            .await
            .expect("open");
        logs.push(log);
    }
    (logs, start.elapsed())
}

/// Closes `logs`, 64 at a time (setup for the next measurement only).
async fn close_all(logs: Vec<Rc<Log>>) -> std::time::Duration {
    let start = std::time::Instant::now();
    for chunk in logs.chunks(64) {
        let closes: Vec<_> = chunk
            .iter()
            .map(|log| {
                let log = log.clone();
                glommio::spawn_local(async move { log.close().await.expect("close") })
            })
            .collect();
        for close in closes {
            close.await;
        }
    }
    start.elapsed()
}

/// Creates `count` logs with one small append each, 64 at a time.
async fn create_many(
    root: &Path,
    count: usize,
    cache: &Rc<FileCache>,
) -> (Vec<Rc<Log>>, std::time::Duration) {
    let start = std::time::Instant::now();
    let mut logs = Vec::with_capacity(count);
    for first in (0..count).step_by(64) {
        let opens: Vec<_> = (first..count.min(first + 64))
            .map(|i| {
                let (dir, cache) = (root.join(format!("topic-{i}")), cache.clone());
                glommio::spawn_local(async move {
                    let log = Log::open(&dir, LogConfig::default(), RecoveryMode::Clean, cache)
                        .await
                        .expect("open");
                    log.append(vec![make_batch(0, 1, 100, 1_000)])
                        .await
                        .expect("append");
                    log
                })
            })
            .collect();
        for open in opens {
            logs.push(open.await);
        }
    }
    (logs, start.elapsed())
}

async fn footprint(count: usize) {
    let root = tempfile::tempdir().expect("tempdir");
    let cache = FileCache::new(256);
    let (rss0, fds0) = (vm_rss_kib(), open_fds_total());
    let (logs, opened) = create_many(root.path(), count, &cache).await;
    settle_fds(root.path(), 256).await;
    let (rss1, fds1) = (vm_rss_kib(), open_fds_total());
    println!(
        "{count:>6} logs new:      create+append (64 at a time) {:>7.1} ms, RSS +{:>8} KiB ({:>6.0} B/log), fds +{} (cache holds {})",
        opened.as_secs_f64() * 1e3,
        rss1 - rss0,
        (rss1 - rss0) as f64 * 1024.0 / count as f64,
        fds1 as i64 - fds0 as i64,
        cache.open_files()
    );
    let closed = close_all(logs).await;
    settle_fds(root.path(), 0).await;
    let (rss2, fds2) = (vm_rss_kib(), open_fds_total());
    let (logs, reopened) = open_many(root.path(), count, RecoveryMode::Clean, &cache).await;
    settle_fds(root.path(), 256).await;
    let (rss3, fds3) = (vm_rss_kib(), open_fds_total());
    println!(
        "{count:>6} logs clean:    close (64 at a time) {:>7.1} ms, reopen one at a time {:>7.1} ms ({:>5.0} us/log), \
         RSS +{} KiB vs before the reopen, +{} KiB vs start, fds after close +{}, after reopen +{}",
        closed.as_secs_f64() * 1e3,
        reopened.as_secs_f64() * 1e3,
        reopened.as_secs_f64() * 1e6 / count as f64,
        rss3 as i64 - rss2 as i64,
        rss3 as i64 - rss0 as i64,
        fds2 as i64 - fds0 as i64,
        fds3 as i64 - fds0 as i64,
    );
    assert!(logs.iter().all(|l| l.recovery_report().segments_scanned == 0));
    close_all(logs).await;
    let (logs, unclean) = open_many(root.path(), count, RecoveryMode::Unclean, &cache).await;
    settle_fds(root.path(), 256).await;
    println!(
        "{count:>6} logs unclean:  reopen one at a time {:>7.1} ms ({:>5.0} us/log), fds +{}",
        unclean.as_secs_f64() * 1e3,
        unclean.as_secs_f64() * 1e6 / count as f64,
        open_fds_total() as i64 - fds0 as i64,
    );
    assert!(logs.iter().all(|l| l.log_end_offset() == 1));
    close_all(logs).await;
}

/// Memory and descriptors per idle partition, and startup time. Run alone:
/// `cargo test --release -p shardlog --lib -- --ignored --nocapture footprint`
/// (`FOOTPRINT_COUNTS=1,100` for a quick run).
#[test]
#[ignore = "measurement: run alone, in release"]
fn footprint_of_idle_logs() {
    use std::mem::size_of;
    println!(
        "sizes: Log {} (State {}), Segment {}, SegmentIndex {}, LogConfig {}, segment map leaf ~{} (11 slots)",
        size_of::<Log>(),
        size_of::<State>(),
        size_of::<Segment>(),
        size_of::<SegmentIndex>(),
        size_of::<LogConfig>(),
        11 * (size_of::<i64>() + size_of::<Box<Segment>>()) + 16,
    );
    let counts: Vec<usize> = std::env::var("FOOTPRINT_COUNTS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 1_000, 10_000]);
    run(|| async move {
        for count in counts {
            footprint(count).await;
        }
    });
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

#[test]
fn preallocation_reserves_ahead_in_steps_and_close_trims_it() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            preallocate: true,
            preallocate_step_max_bytes: 64 * 1024,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config.clone(), RecoveryMode::Clean).await;
        let path = dir.path().join("00000000000000000000.log");
        append_batches(&log, 1, 3, 100).await;
        let logical = log.size_bytes();
        // The first step is as large as the data written so far.
        assert_eq!(file_len(&path), 2 * BLOCK_BYTES, "logical {logical}");
        append_batches(&log, 200, 3, 333).await;
        let logical = log.size_bytes();
        let reserved = file_len(&path);
        assert!(reserved >= logical, "{reserved} < {logical}");
        assert!(
            reserved <= align_up(logical) + 64 * 1024,
            "never more than one step ahead: {reserved} for {logical}"
        );
        log.close().await.expect("close");
        assert_eq!(file_len(&path), logical, "close trims the reservation");
        let log = open(dir.path(), config, RecoveryMode::Clean).await;
        assert_eq!(log.log_end_offset(), 603);
        assert_eq!(log.size_bytes(), logical);
    });
}

#[test]
fn unclean_recovery_trims_preallocated_space_without_counting_it_torn() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            preallocate: true,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config.clone(), RecoveryMode::Clean).await;
        let mut kept = Vec::new();
        for i in 0..50 {
            // Odd sizes: most writes rewrite a partial tail block, which the
            // writer then sends as two writes.
            let batch = make_batch(0, 1 + i % 4, 77 + i * 13, 1_000 + i as i64);
            let appended = log.append(vec![batch.clone()]).await.expect("append");
            kept.push((appended.base_offset, batch));
        }
        let (end, logical) = (log.log_end_offset(), log.size_bytes());
        crash(log);
        let path = dir.path().join("00000000000000000000.log");
        assert!(file_len(&path) > align_up(logical), "reserved past the padding");
        let log = open(dir.path(), config, RecoveryMode::Unclean).await;
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.size_bytes(), logical);
        assert_eq!(
            log.recovery_report().bytes_truncated,
            0,
            "zeros are not torn batches"
        );
        assert_eq!(file_len(&path), logical, "reservation cut at open");
        let read = log.read(0, 1 << 20).await.expect("read");
        let batches = split_validated(&read).expect("whole batches");
        assert_eq!(batches.len(), kept.len());
        for (got, (base, sent)) in batches.iter().zip(&kept) {
            assert_eq!(validate(got).expect("valid").base_offset.get(), *base);
            assert_eq!(&got[12..], &sent[12..], "bytes after the base offset as sent");
        }
        // Appends continue where the data ended, not after the zeros.
        let appended = log.append(vec![make_batch(0, 2, 10, 5)]).await.expect("append");
        assert_eq!(appended.base_offset, end);
    });
}

#[test]
fn rolled_segments_keep_no_reservation_and_truncation_resets_it() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            preallocate: true,
            ..small_segments(16 * 1024)
        };
        let log = open(dir.path(), config.clone(), RecoveryMode::Clean).await;
        append_batches(&log, 40, 3, 333).await;
        let sealed: Vec<(i64, u64)> = log
            .state
            .borrow()
            .segments
            .values()
            .map(|s| (s.base_offset, s.size_bytes))
            .collect();
        assert!(sealed.len() > 2);
        for (base, size) in &sealed[..sealed.len() - 1] {
            assert_eq!(
                file_len(&segment::file_path(dir.path(), *base, LOG_SUFFIX)),
                *size
            );
        }
        let active = segment::file_path(dir.path(), sealed.last().expect("active").0, LOG_SUFFIX);
        assert!(
            file_len(&active) <= align_up(16 * 1024),
            "reservation within the segment size"
        );
        // Cut into the active segment, then append: the writer reserves
        // again from the cut, and the bytes read back are the new ones.
        let end = log.log_end_offset();
        log.truncate_to(end - 3).await.expect("truncate");
        let batch = make_batch(0, 5, 200, 77);
        let appended = log.append(vec![batch]).await.expect("append");
        assert_eq!(appended.base_offset, end - 3);
        let read = log.read(end - 3, 1 << 20).await.expect("read");
        assert_eq!(batch_offsets(&read), vec![(end - 3, end + 1)]);
        assert!(file_len(&active) >= log.state.borrow().active().expect("active").size_bytes);
    });
}

#[test]
fn without_preallocation_the_file_is_only_padded_to_the_block() {
    assert!(!LogConfig::default().preallocate, "Kafka's default");
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            preallocate: false,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config, RecoveryMode::Clean).await;
        append_batches(&log, 30, 3, 333).await;
        let path = dir.path().join("00000000000000000000.log");
        assert_eq!(file_len(&path), align_up(log.size_bytes()));
    });
}

#[test]
fn a_deferred_close_writes_no_recovery_point_and_keeps_the_padding_a_clean_open_ignores() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        append_batches(&log, 20, 3, 333).await;
        let (end, size) = (log.log_end_offset(), log.size_bytes());
        assert!(log.close_deferred().await.expect("close"), "files written");
        let path = dir.path().join("00000000000000000000.log");
        assert_eq!(file_len(&path), align_up(size), "padding left");
        assert_ne!(
            read_offset_file(dir.path(), RECOVERY_POINT_FILE)
                .await
                .expect("read"),
            Some(end),
            "no recovery point claims the data before the caller's sync"
        );
        // The broker syncs the filesystem here (`sync_filesystem`) and
        // writes the data dir's checkpoint and marker; left out of the unit
        // test, since syncfs waits for everything dirty on the machine.
        drop(log);
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        assert_eq!((log.log_end_offset(), log.size_bytes()), (end, size));
        let report = log.recovery_report();
        assert_eq!((report.segments_scanned, report.bytes_truncated), (0, 0));
        assert_eq!(file_len(&path), align_up(size), "a clean open keeps the zeros");
        // Unchanged since that clean open: a deferred close writes nothing.
        assert!(!log.close_deferred().await.expect("close"));
        drop(log);
        // Appends after a clean open overwrite the zeros; all reads back.
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        let appended = log.append(vec![make_batch(0, 2, 10, 0)]).await.expect("append");
        assert_eq!(appended.base_offset, end);
        log.close().await.expect("close");
        assert_eq!(file_len(&path), log.size_bytes(), "a single close trims");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Unclean).await;
        assert_eq!(log.log_end_offset(), end + 2);
        let read = log.read(0, 1 << 20).await.expect("read");
        assert_eq!(batch_offsets(&read).len(), 21);
    });
}

#[test]
fn a_clean_open_scans_a_one_block_active_segment_whole_without_its_index_files() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        append_batches(&log, 3, 2, 300).await;
        let end = log.log_end_offset();
        assert!(log.size_bytes() <= 4096);
        log.close().await.expect("close");
        // Garbage index files would fail validation if they were read.
        for suffix in ["index", "timeindex"] {
            let path = segment_files(dir.path(), suffix).pop().expect("index file");
            std::fs::write(&path, [0xffu8; 24]).expect("scribble");
        }
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        let report = log.recovery_report();
        assert_eq!(
            (report.indexes_rebuilt, report.segments_scanned),
            (0, 0),
            "not read"
        );
        assert_eq!(report.batches_scanned, 3, "the tail probe covers the segment");
        assert_eq!(log.log_end_offset(), end);
        let newest = log.max_timestamp_batch().await.expect("read").expect("a batch");
        assert_eq!(
            batch_offsets(&newest),
            vec![(4, 5)],
            "max timestamp found by the scan"
        );
        let read = log.read(0, 1 << 20).await.expect("read");
        assert_eq!(batch_offsets(&read).len(), 3);
    });
}

#[test]
fn a_deferred_close_writes_index_files_only_where_a_clean_open_reads_them() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        append_batches(&log, 2, 2, 300).await;
        assert!(log.close_deferred().await.expect("close"), "closed");
        assert!(
            segment_files(dir.path(), "index").is_empty(),
            "one block: none written"
        );
        drop(log);
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        assert_eq!(log.log_end_offset(), 4);
        // Past one block, the next clean open resumes from them.
        append_batches(&log, 10, 2, 300).await;
        let end = log.log_end_offset();
        assert!(log.close_deferred().await.expect("close"));
        assert_eq!(segment_files(dir.path(), "index").len(), 1, "written");
        drop(log);
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.recovery_report().indexes_rebuilt, 0);
        let read = log.read(0, 1 << 20).await.expect("read");
        assert_eq!(batch_offsets(&read).len(), 12);
    });
}

/// `close_writes_files` decides whether a shutdown syncs each log itself or
/// the filesystem once: it must count logs a recovery opened (their rebuilt
/// indexes are written at close), not only logs appended to.
#[test]
fn close_writes_files_counts_appends_and_recoveries_only() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        assert!(!log.close_writes_files(), "a new, empty log has nothing to write");
        append_batches(&log, 3, 2, 100).await;
        assert!(log.close_writes_files(), "appended");
        assert!(log.close_deferred().await.expect("close"));
        assert!(!log.close_writes_files(), "closed");

        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        assert!(!log.close_writes_files(), "opened clean, unchanged");
        crash(log);

        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Unclean).await;
        assert_eq!(log.log_end_offset(), 6);
        assert!(log.close_writes_files(), "opened by a recovery");
        assert!(log.close_deferred().await.expect("close"));
    });
}

/// Zero-copy slices hold an fd each until sent; the shard's file cache caps
/// how many are open (its capacity) and a read past the cap copies.
#[test]
fn zero_copy_reads_copy_once_the_slice_fds_are_used_up() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = file_cache(2);
        let log = Log::open(
            dir.path(),
            small_segments(16 * 1024),
            RecoveryMode::Clean,
            cache.clone(),
        )
        .await
        .expect("open log");
        append_batches(&log, 120, 3, 250).await;
        assert!(log.segment_count() > 3);
        let held: Vec<Records> = {
            let mut held = Vec::new();
            for offset in [0, 3] {
                let records = log.read_records(offset, 1000, true).await.expect("read");
                assert!(records.is_file(), "offset {offset} within the budget");
                held.push(records);
            }
            held
        };
        assert_eq!(cache.open_slices(), 2);
        let over = log.read_records(6, 1000, true).await.expect("read");
        assert!(!over.is_file(), "past the budget the read copies");
        assert_eq!(
            batch_offsets(&over.to_bytes().expect("bytes"))[0],
            batch_offsets(&log.read(6, 1000).await.expect("read"))[0]
        );
        // A clone shares its slice's fd and permit.
        let clone = held[0].clone();
        drop(held);
        assert_eq!(cache.open_slices(), 1);
        drop(clone);
        assert_eq!(cache.open_slices(), 0);
        assert!(log.read_records(6, 1000, true).await.expect("read").is_file());
        log.close().await.expect("close");
    });
}

#[test]
fn a_clean_open_takes_the_writer_tail_from_its_scan_and_appends_keep_earlier_batches_whole() {
    run(|| async {
        // One-block and multi-block active segments, both ending mid-block:
        // the writer's first append rewrites that block from the bytes the
        // open's scan read, so a wrong tail would break an earlier batch.
        for (batches, value_bytes) in [(3usize, 300usize), (30, 700)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
            append_batches(&log, batches, 2, value_bytes).await;
            assert_ne!(log.size_bytes() % BLOCK_BYTES, 0, "ends mid-block");
            log.close().await.expect("close");
            for round in 0..2 {
                let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
                append_batches(&log, 2, 2, 100).await;
                let read = log.read(0, 1 << 24).await.expect("read");
                let offsets = batch_offsets(&read);
                assert_eq!(
                    offsets.len(),
                    batches + 2 * (round + 1),
                    "every batch reads back valid"
                );
                assert!(
                    offsets.windows(2).all(|w| w[1].0 == w[0].1 + 1),
                    "no gap: {offsets:?}"
                );
                log.close().await.expect("close");
            }
            let log = open(dir.path(), LogConfig::default(), RecoveryMode::Unclean).await;
            assert_eq!(log.recovery_report().bytes_truncated, 0, "nothing torn");
            assert_eq!(log.log_end_offset(), 2 * (batches as i64 + 4));
        }
    });
}

/// A clean open that reads `leader-epoch-checkpoint` with its listing, as
/// a shard opens a partition's log.
async fn open_reading_checkpoint(dir: &Path) -> Rc<Log> {
    Log::open_reading(
        dir,
        LogConfig::default(),
        RecoveryMode::Clean,
        file_cache(4),
        &["leader-epoch-checkpoint"],
    )
    .await
    .expect("open")
}

#[test]
fn the_open_listing_hands_over_the_partition_files_once() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        assert_eq!(
            log.take_other_files(),
            Some(Vec::new()),
            "a new directory holds nothing"
        );
        append_batches(&log, 2, 2, 100).await;
        log.close().await.expect("close");
        std::fs::write(dir.path().join("leader-epoch-checkpoint"), "0\n1\n0 0\n").expect("write");
        std::fs::write(dir.path().join("00000000000000000004.snapshot"), b"x").expect("write");
        std::fs::write(dir.path().join("00000000000000000000.index"), b"").expect("write");
        std::fs::write(dir.path().join("00000000000000000000.timeindex"), b"").expect("write");
        let log = open_reading_checkpoint(dir.path()).await;
        let mut listed = log.take_other_files().expect("listed at open");
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            listed,
            [
                OtherFile {
                    name: "00000000000000000004.snapshot".into(),
                    bytes: None
                },
                OtherFile {
                    name: "leader-epoch-checkpoint".into(),
                    bytes: Some(b"0\n1\n0 0\n".to_vec())
                }
            ],
            "only the file asked for is read"
        );
        assert_eq!(log.take_other_files(), None, "taken once");
    });
}

#[test]
fn slow_listings_move_to_the_blocking_pool_and_fast_ones_come_back() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
        append_batches(&log, 3, 2, 100).await;
        log.close().await.expect("close");
        std::fs::write(dir.path().join("leader-epoch-checkpoint"), "0\n1\n0 0\n").expect("write");
        // As after a reboot: the recent listings waited for the device.
        LISTING_US_MEAN.set(10.0 * LISTING_ON_POOL_FROM_US);
        let log = open_reading_checkpoint(dir.path()).await;
        assert_eq!(log.log_end_offset(), 6);
        let listed = log.take_other_files().expect("listed");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].bytes.as_deref(), Some(&b"0\n1\n0 0\n"[..]));
        log.close().await.expect("close");
        // Each fast listing pulls the mean down until they run inline again.
        for _ in 0..40 {
            let log = open(dir.path(), LogConfig::default(), RecoveryMode::Clean).await;
            log.close().await.expect("close");
        }
        assert!(
            LISTING_US_MEAN.get() < LISTING_ON_POOL_FROM_US,
            "back on the shard thread: {} µs",
            LISTING_US_MEAN.get()
        );
    });
}
