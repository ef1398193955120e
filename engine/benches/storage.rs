//! Storage micro-benchmarks: batch validation and the append path.
//!
//! `cargo bench -p shardlog --bench storage`. The append benches write to a
//! temp dir on the filesystem holding `$TMPDIR` (O_DIRECT, one glommio
//! executor on the bench thread); each sample uses a fresh log, removed after.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardlog::storage::{split_validated, FileCache, Log, LogConfig, RecoveryMode};

#[path = "../src/storage/testutil.rs"]
#[allow(dead_code)]
mod testutil;

/// ~1 MiB of concatenated batches of 16 records of 1 KiB each.
fn produce_blob() -> Bytes {
    let mut blob = Vec::new();
    let mut offset = 0;
    while blob.len() < (1 << 20) - 20_000 {
        blob.extend_from_slice(&testutil::make_batch(offset, 16, 1024, 1_700_000_000_000));
        offset += 16;
    }
    Bytes::from(blob)
}

fn validation(c: &mut Criterion) {
    let blob = produce_blob();
    let mut group = c.benchmark_group("batch_validation");
    group.throughput(Throughput::Bytes(blob.len() as u64));
    group.bench_function("split_validated_1MiB_1KiB_records", |b| {
        b.iter(|| split_validated(black_box(&blob)).expect("valid"))
    });
    group.finish();
}

/// Appends `iterations` batches with `writers` concurrent appenders (group
/// commit batches the concurrent ones) and returns the elapsed time.
fn append_run(batch: &Bytes, writers: u64, iterations: u64) -> Duration {
    let executor = glommio::LocalExecutorBuilder::default()
        .make()
        .expect("glommio executor");
    let batch = batch.clone();
    executor.run(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            segment_bytes: 256 << 20,
            ..LogConfig::default()
        };
        let log = Log::open(dir.path(), config, RecoveryMode::Clean, FileCache::new(256))
            .await
            .expect("open");
        let start = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let log = log.clone();
                let batch = batch.clone();
                let count = iterations / writers + u64::from(w < iterations % writers);
                glommio::spawn_local(async move {
                    for _ in 0..count {
                        log.append(vec![batch.clone()]).await.expect("append");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let elapsed = start.elapsed();
        log.close().await.expect("close");
        elapsed
    })
}

fn append(c: &mut Criterion) {
    // One 64 KiB batch: 64 records of ~1 KiB.
    let batch = testutil::make_batch(0, 64, 1000, 1_700_000_000_000);
    let mut group = c.benchmark_group("log_append");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(batch.len() as u64));
    for writers in [1u64, 16] {
        group.bench_function(format!("append_64KiB_batches_{writers}_writers"), |b| {
            b.iter_custom(|iterations| append_run(&batch, writers, iterations))
        });
    }
    group.finish();
}

criterion_group!(benches, validation, append);
criterion_main!(benches);
