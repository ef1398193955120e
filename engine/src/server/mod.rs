//! The broker process: startup (metadata, the port, one executor per core),
//! each shard's startup order and periodic work, the accept loop, and
//! shutdown with the clean-shutdown marker.
//!
//! Lives on: `run` on the main thread; `shard_main`, `serve` and the timers
//! on every shard's executor. Called by `main`. Calls `shard` (a `Shard` per
//! executor, its mesh, its periodic work) and `protocol` (one task per
//! connection).

mod listener;
mod meta_properties;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;

use crate::config::BrokerConfig;
use crate::controller::{self, MetadataImage};
use crate::shard::{Shard, ShardMsg};
use crate::storage::RecoveryMode;

pub use listener::Listener;

/// Name of the clean-shutdown marker in the data directory, as Kafka names it.
pub const CLEAN_SHUTDOWN_MARKER: &str = ".kafka_cleanshutdown";

/// Everything `main` hands to each shard thread.
#[derive(Clone)]
pub struct Startup {
    pub config: Arc<BrokerConfig>,
    pub image: Arc<MetadataImage>,
    pub recovery_mode_clean: bool,
    pub mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    /// shard id -> mesh peer id (mesh ids follow join order, not shard ids).
    pub peer_of_shard: Arc<Mutex<Vec<usize>>>,
    pub barrier: Arc<Barrier>,
    /// Set by a shard that cannot start, so the others leave the barriers too.
    pub startup_failed: Arc<AtomicBool>,
    pub shutdown: Arc<AtomicBool>,
}

/// Starts one executor per shard, runs the broker until SIGTERM/SIGINT, and
/// writes the clean-shutdown marker when every shard closed its logs.
pub fn run(mut config: BrokerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    // Absolute from here on: glommio's directory opens fail on relative
    // paths (the README's default is ./data).
    config.data_dir = config.data_dir.canonicalize()?;
    let data_dir: PathBuf = config.data_dir.clone();
    let nr_shards = config.shards.max(1);
    let mut image = MetadataImage::load(&data_dir, nr_shards)?;
    meta_properties::check_or_write(&data_dir, &image.cluster_id, config.node_id)
        .map_err(anyhow::Error::msg)?;
    let marker = data_dir.join(CLEAN_SHUTDOWN_MARKER);
    let clean = marker.exists() || image.topics.is_empty();
    // Kafka creates `__consumer_offsets` on the first FindCoordinator; here it
    // exists from the first start so every shard knows its groups' partitions.
    if let Some(next) = image.with_offsets_topic(config.group.offsets_topic_num_partitions, nr_shards) {
        next.persist(&data_dir)?;
        tracing::info!(
            "created {} with {} partitions",
            controller::OFFSETS_TOPIC,
            config.group.offsets_topic_num_partitions
        );
        image = next;
    }
    if !clean {
        tracing::warn!(
            "no clean-shutdown marker in {}: running log recovery",
            data_dir.display()
        );
    }
    // Every shard binds with SO_REUSEPORT, which would silently share the port
    // with another process of this user: check it is free first.
    listener::wait_for_port(config.listen_addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen_addr))?;
    let shutdown = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, shutdown.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, shutdown.clone())?;

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let channel_capacity = config.shard_channel_capacity;
    // `num.io.threads` for zero-copy sends, one for glommio's own blocking
    // file operations, one waiting in the listener's accept.
    let io_threads = config.num_io_threads + 2;
    let startup = Startup {
        config: Arc::new(config),
        image: Arc::new(image),
        recovery_mode_clean: clean,
        mesh: MeshBuilder::full(nr_shards, channel_capacity),
        peer_of_shard: Arc::new(Mutex::new(vec![usize::MAX; nr_shards])),
        barrier: Arc::new(Barrier::new(nr_shards)),
        startup_failed: Arc::new(AtomicBool::new(false)),
        shutdown,
    };
    let mut handles = Vec::with_capacity(nr_shards);
    for id in 0..nr_shards {
        let placement = match cores.get(id % cores.len().max(1)) {
            Some(core) if !cores.is_empty() => glommio::Placement::Fixed(core.id),
            _ => glommio::Placement::Unbound,
        };
        let startup = startup.clone();
        // Zero-copy fetch sends block in sendfile(2) (page-cache misses,
        // full socket buffers), so they run on this pool, never on the
        // executor; unbound so the kernel can run them on an idle core.
        let handle = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(io_threads))
            .spawn(move || async move { shard_main(id, nr_shards, startup).await })
            .map_err(|e| anyhow::anyhow!("cannot start shard {id}: {e}"))?;
        handles.push(handle);
    }
    let mut all_clean = true;
    for handle in handles {
        match handle.join() {
            Ok(Ok(clean)) => all_clean &= clean,
            Ok(Err(e)) => {
                tracing::error!("shard failed: {e:#}");
                all_clean = false;
            }
            Err(e) => {
                tracing::error!("shard executor failed: {e}");
                all_clean = false;
            }
        }
    }
    if all_clean {
        std::fs::write(&marker, b"")?;
        std::fs::File::open(&data_dir)?.sync_all()?;
        tracing::info!("clean shutdown complete");
        Ok(())
    } else {
        anyhow::bail!("shutdown was not clean; the next start runs recovery")
    }
}

async fn shard_main(id: usize, nr_shards: usize, startup: Startup) -> anyhow::Result<bool> {
    let config = startup.config.clone();
    let (senders, receivers) = startup
        .mesh
        .join()
        .await
        .map_err(|_| anyhow::anyhow!("shard {id}: joining the channel mesh failed"))?;
    startup
        .peer_of_shard
        .lock()
        .map_err(|_| anyhow::anyhow!("peer table poisoned"))?[id] = senders.peer_id();
    // Blocking here is fine: nothing else runs on this executor yet.
    startup.barrier.wait();
    let peer_of_shard = startup
        .peer_of_shard
        .lock()
        .map_err(|_| anyhow::anyhow!("peer table poisoned"))?
        .clone();
    let shard = Rc::new(Shard::new(id, nr_shards, config.clone(), senders, peer_of_shard));
    let mode = if startup.recovery_mode_clean {
        RecoveryMode::Clean
    } else {
        RecoveryMode::Unclean
    };
    shard.apply(startup.image.clone(), mode).await;
    // Groups are rebuilt before the port opens, so no request ever sees a
    // half-loaded coordinator (Kafka's COORDINATOR_LOAD_IN_PROGRESS).
    shard.groups.load(&*shard).await;

    shard.serve_mesh(receivers);

    let listener = listener::Listener::bind(config.listen_addr, config.socket_listen_backlog_size);
    if listener.is_err() {
        startup.startup_failed.store(true, Ordering::SeqCst);
    }
    // Every shard has opened its logs and bound the port; only now is the
    // clean-shutdown marker removed, so a crash from here on runs recovery.
    startup.barrier.wait();
    let listener =
        listener.map_err(|e| anyhow::anyhow!("shard {id}: cannot listen on {}: {e}", config.listen_addr))?;
    if startup.startup_failed.load(Ordering::SeqCst) {
        anyhow::bail!("shard {id}: another shard failed to start");
    }
    if id == 0 {
        let marker = config.data_dir.join(CLEAN_SHUTDOWN_MARKER);
        if marker.exists() {
            std::fs::remove_file(&marker)?;
            std::fs::File::open(&config.data_dir)?.sync_all()?;
        }
    }
    startup.barrier.wait();
    if id == 0 {
        tracing::info!(
            "listening on {} ({} shards, data in {})",
            config.listen_addr,
            nr_shards,
            config.data_dir.display()
        );
    }

    let listener = Rc::new(listener);
    let accept = glommio::spawn_local(serve(shard.clone(), listener.clone()));
    let c = &config;
    let mut timers = vec![
        every(&shard, crate::group::GROUP_TICK_MS, |s| async move {
            s.groups.tick(&*s).await
        }),
        every(
            &shard,
            c.group.offsets_retention_check_interval_ms,
            |s| async move { s.groups.expire_offsets(&*s).await },
        ),
        every(&shard, c.log_retention_check_interval_ms, |s| async move {
            s.enforce_retention().await
        }),
        every(
            &shard,
            c.log_flush_offset_checkpoint_interval_ms,
            |s| async move { s.checkpoint_producers().await },
        ),
    ];
    if c.log_cleaner_enable {
        // Compaction of `cleanup.policy=compact` logs, one at a time.
        timers.push(every(&shard, c.log_cleaner_backoff_ms, |s| async move {
            s.compact_logs().await
        }));
    }
    // `flush.ms` / `log.flush.interval.ms` on a timer (default: never due).
    let flusher = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let mut next_check_ms = shard.config.log_flush_scheduler_interval_ms;
            loop {
                glommio::timer::sleep(Duration::from_millis(next_check_ms)).await;
                next_check_ms = shard.flush_overdue().await;
            }
        })
    };
    timers.push(flusher);
    while !startup.shutdown.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
    shard.stop();
    listener.close();
    drop(accept);
    drop(timers);
    let budget = Duration::from_millis(config.shutdown_timeout_ms);
    let clean = futures_lite::future::or(shard.close_all(), async {
        glommio::timer::sleep(budget).await;
        tracing::error!(shard = id, "closing logs took longer than shutdown.timeout.ms");
        false
    })
    .await;
    tracing::info!(shard = id, clean, "shard stopped");
    Ok(clean)
}

/// Accepts connections until the shard stops; each connection is its own task.
async fn serve(shard: Rc<Shard>, listener: Rc<Listener>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) if shard.is_stopping() => return,
            Err(e) => {
                tracing::warn!(shard = shard.id, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = peer.to_string();
        if !shard.try_open_connection() {
            tracing::warn!(shard = shard.id, %peer, "max.connections reached; closing the new connection");
            continue;
        }
        let shard = shard.clone();
        glommio::spawn_local(async move {
            if let Err(e) = crate::protocol::connection(&shard, stream, &peer).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            shard.close_connection();
        })
        .detach();
    }
}

/// Runs `work` every `period_ms` on this shard until the task is dropped.
fn every<F, Fut>(shard: &Rc<Shard>, period_ms: u64, work: F) -> glommio::Task<()>
where
    F: Fn(Rc<Shard>) -> Fut + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(Duration::from_millis(period_ms)).await;
            work(shard.clone()).await;
        }
    })
}
