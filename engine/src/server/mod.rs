//! The broker process: startup (metadata, the port, one executor per core),
//! each shard's startup order and periodic work, the accept loop, and
//! shutdown with the clean-shutdown marker.
//!
//! Lives on: `run` on the main thread; `shard_main`, `serve` and the timers
//! on every shard's executor. Called by `main`. Calls `shard` (a `Shard` per
//! executor, its mesh, its periodic work) and `protocol` (one task per
//! connection).

pub(crate) mod listener;
mod meta_properties;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;

use crate::config::BrokerConfig;
use crate::controller::metadata_log::MetadataLog;
use crate::controller::placement::Placement;
use crate::controller::quorum::{apply_entry, raft_id, Quorum, QuorumSettings};
use crate::controller::{self, transport, BrokerMeta, MetadataImage, NodeView};
use crate::shard::{ControlPlane, Shard, ShardMsg, CONTROLLER_SHARD};
use crate::storage::RecoveryMode;

pub use listener::Listener;

/// Name of the clean-shutdown marker in the data directory, as Kafka names it.
pub const CLEAN_SHUTDOWN_MARKER: &str = ".kafka_cleanshutdown";
/// Every log's end at the last clean stop, as Kafka names the file (its
/// format: `storage::offset_checkpoint`). Written before the marker and
/// trusted only with it.
pub const RECOVERY_POINT_CHECKPOINT: &str = "recovery-point-offset-checkpoint";

/// Everything `main` hands to each shard thread.
#[derive(Clone)]
pub struct Startup {
    pub config: Arc<BrokerConfig>,
    pub view: Arc<NodeView>,
    /// Taken by the controller shard, which drives the quorum over it.
    pub metadata_log: Arc<Mutex<Option<MetadataLog>>>,
    /// The quorum's voters and their CONTROLLER listeners (empty for a quorum of one).
    pub voter_addrs: BTreeMap<i32, SocketAddr>,
    pub voters: Vec<i32>,
    pub controller_listener: Option<(Arc<Listener>, SocketAddr)>,
    pub recovery_mode_clean: bool,
    /// The recovery-point checkpoint of the last clean stop (empty after an
    /// unclean one); see `Shard::clean_log_ends`.
    pub clean_log_ends: Arc<Mutex<crate::storage::offset_checkpoint::Offsets>>,
    pub mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    /// shard id -> mesh peer id (mesh ids follow join order, not shard ids).
    pub peer_of_shard: Arc<Mutex<Vec<usize>>>,
    pub barrier: Arc<Barrier>,
    /// Set by a shard that cannot start, so the others leave the barriers too.
    pub startup_failed: Arc<AtomicBool>,
    pub shutdown: Arc<AtomicBool>,
    /// Set by the controller shard once a controlled shutdown moved this
    /// node's leaderships away (or gave up): the other shards serve until then.
    pub leadership_released: Arc<AtomicBool>,
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
    let node_id = config.node_id;
    let mut voter_addrs = BTreeMap::new();
    for v in &config.cluster.voters {
        voter_addrs.insert(v.id, v.addr()?);
    }
    let voters: Vec<i32> = if voter_addrs.is_empty() {
        vec![node_id]
    } else {
        voter_addrs.keys().copied().collect()
    };
    let voter_ids: Vec<u64> = voters.iter().map(|v| raft_id(*v)).collect();
    // A data dir with neither metadata log nor the old metadata file is new:
    // nothing to recover.
    let fresh = !data_dir.join(controller::metadata_log::METADATA_LOG_DIR).exists()
        && !data_dir.join(controller::METADATA_FILE).exists()
        && !data_dir.join(meta_properties::META_PROPERTIES_FILE).exists();
    let (metadata_log, image) = if config.cluster.roles.controller {
        let (log, recovered) = MetadataLog::open(&data_dir, &voter_ids, || {
            bootstrap_image(&config, &data_dir, voters.len() == 1, nr_shards)
        })?;
        let mut image = recovered.image;
        for entry in &recovered.committed {
            if let Some(next) = apply_entry(&image, entry) {
                image = next.map_err(|e| anyhow::anyhow!("metadata log entry {}: {e}", entry.index))?;
            }
        }
        (Some(log), image)
    } else {
        // A broker-only node keeps no metadata log: it starts from the
        // controllers' image and follows it.
        let image = crate::shard::fetch_first_image(
            &voter_addrs,
            config.cluster.quorum_request_timeout_ms,
            config.socket_request_max_bytes,
        );
        if let Some(id) = config
            .cluster
            .cluster_id
            .as_ref()
            .filter(|id| **id != image.cluster_id)
        {
            anyhow::bail!(
                "cluster.id is {id} but the controllers of controller.quorum.voters belong to cluster {}",
                image.cluster_id
            );
        }
        (None, image)
    };
    tracing::info!(
        "metadata: {} topics, {} brokers at offset {} (cluster {})",
        image.topics.len(),
        image.brokers.len(),
        image.offset,
        image.cluster_id
    );
    meta_properties::check_or_write(&data_dir, &image.cluster_id, config.node_id)
        .map_err(anyhow::Error::msg)?;
    let marker = data_dir.join(CLEAN_SHUTDOWN_MARKER);
    let clean = marker.exists() || fresh;
    if !clean {
        tracing::warn!(
            "no clean-shutdown marker in {}: running log recovery",
            data_dir.display()
        );
    }
    let checkpoint_path = data_dir.join(RECOVERY_POINT_CHECKPOINT);
    let clean_log_ends = if clean {
        crate::storage::offset_checkpoint::read(&checkpoint_path).unwrap_or_else(|e| {
            // Only a shortcut is lost: producer state is rebuilt from the
            // snapshots and the log, as after an older release.
            tracing::warn!("ignoring the recovery-point checkpoint: {e}");
            None
        })
    } else {
        None
    };
    let controller_addr = config
        .cluster
        .controller_listen
        .or_else(|| voter_addrs.get(&node_id).copied());
    let controller_listener = match controller_addr {
        Some(addr)
            if config.cluster.roles.controller
                && (voters.len() > 1 || config.cluster.controller_listen.is_some()) =>
        {
            listener::wait_for_port(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (CONTROLLER): {e}"))?;
            let l = Listener::bind(addr, config.socket_listen_backlog_size)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (CONTROLLER): {e}"))?;
            Some((Arc::new(l), addr))
        }
        _ => None,
    };
    let controller_id = if voters.len() == 1 { node_id } else { -1 };
    let view = ControlPlane::view_for(
        node_id,
        controller_id,
        Arc::new(image),
        &Placement::default(),
        nr_shards,
        false,
    );
    // Every shard binds with SO_REUSEPORT, which would silently share the port
    // with another process of this user: check it is free first.
    if config.cluster.roles.broker {
        listener::wait_for_port(config.listen_addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen_addr))?;
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, shutdown.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, shutdown.clone())?;

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let channel_capacity = config.shard_channel_capacity;
    // `num.io.threads` for zero-copy sends, one for glommio's own blocking
    // file operations, one waiting in the listener's accept, one in the
    // CONTROLLER listener's.
    let io_threads = config.num_io_threads + 3;
    let startup = Startup {
        config: Arc::new(config),
        view: Arc::new(view),
        metadata_log: Arc::new(Mutex::new(metadata_log)),
        voter_addrs,
        voters,
        controller_listener,
        recovery_mode_clean: clean,
        clean_log_ends: Arc::new(Mutex::new(clean_log_ends.unwrap_or_default())),
        mesh: MeshBuilder::full(nr_shards, channel_capacity),
        peer_of_shard: Arc::new(Mutex::new(vec![usize::MAX; nr_shards])),
        barrier: Arc::new(Barrier::new(nr_shards)),
        startup_failed: Arc::new(AtomicBool::new(false)),
        shutdown,
        leadership_released: Arc::new(AtomicBool::new(false)),
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
    let mut log_ends = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(Ok(Some(ends))) => log_ends.extend(ends),
            Ok(Ok(None)) => all_clean = false,
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
        log_ends.sort_unstable();
        crate::storage::offset_checkpoint::write_durably(&checkpoint_path, &log_ends)?;
        std::fs::write(&marker, b"")?;
        std::fs::File::open(&data_dir)?.sync_all()?;
        tracing::info!("clean shutdown complete");
        Ok(())
    } else {
        anyhow::bail!("shutdown was not clean; the next start runs recovery")
    }
}

/// Some(log ends of this shard's partitions) after a clean stop.
async fn shard_main(
    id: usize,
    nr_shards: usize,
    startup: Startup,
) -> anyhow::Result<Option<Vec<(String, i32, i64)>>> {
    let config = startup.config.clone();
    let (senders, receivers) = startup
        .mesh
        .clone()
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
    // The metrics listener opens before the logs, so `/health` answers
    // (and `/ready` says why not) during a long recovery.
    // A bind failure stops the broker after the next barrier, with the
    // other shards (which wait there).
    let (metrics, metrics_failure) = if id == CONTROLLER_SHARD {
        match crate::metrics::http::bind(&config.metrics) {
            Ok(bound) => (
                bound.map(|listener| {
                    glommio::spawn_local(crate::metrics::http::serve(shard.clone(), listener))
                }),
                None,
            ),
            Err(e) => {
                startup.startup_failed.store(true, Ordering::SeqCst);
                (None, Some(e))
            }
        }
    } else {
        (None, None)
    };
    let probe = glommio::spawn_local(crate::metrics::probe::run(id, config.metrics.stall_threshold_ms));
    let mode = if startup.recovery_mode_clean {
        RecoveryMode::Clean
    } else {
        RecoveryMode::Unclean
    };
    shard.open_mode.set(mode);
    *shard.clean_log_ends.borrow_mut() = startup.clean_log_ends.clone();
    // Groups of the `__consumer_offsets` partitions led here are rebuilt
    // inside `apply`, before the port opens, so no request ever sees a
    // half-loaded coordinator (Kafka's COORDINATOR_LOAD_IN_PROGRESS).
    shard.apply(startup.view.clone(), mode).await;

    shard.serve_mesh(receivers);

    // A controller-only node (`process.roles=controller`) serves no Kafka port.
    let listener = if config.cluster.roles.broker {
        listener::Listener::bind(config.listen_addr, config.socket_listen_backlog_size).map(Some)
    } else {
        Ok(None)
    };
    if listener.is_err() {
        startup.startup_failed.store(true, Ordering::SeqCst);
    }
    // Every shard has opened its logs and bound the port; only now is the
    // clean-shutdown marker removed, so a crash from here on runs recovery.
    startup.barrier.wait();
    if let Some(e) = metrics_failure {
        return Err(e);
    }
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
    shard.set_serving();
    if id == 0 && config.cluster.roles.broker {
        tracing::info!(
            "listening on {} ({} shards, data in {})",
            config.listen_addr,
            nr_shards,
            config.data_dir.display()
        );
    }

    let listener = listener.map(Rc::new);
    let accept = listener
        .clone()
        .map(|listener| glommio::spawn_local(serve(shard.clone(), listener)));
    let quorum = if id == CONTROLLER_SHARD {
        start_control_plane(&shard, &startup)?
    } else {
        None
    };
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
        every(
            &shard,
            c.txn.abort_timed_out_cleanup_interval_ms,
            |s| async move { s.txns.abort_timed_out(&s).await },
        ),
        every(&shard, c.log_retention_check_interval_ms, |s| async move {
            s.enforce_retention().await
        }),
        every(
            &shard,
            c.log_flush_offset_checkpoint_interval_ms,
            |s| async move { s.checkpoint_producers().await },
        ),
        every(
            &shard,
            c.cluster.replica_high_watermark_checkpoint_interval_ms,
            |s| async move { s.checkpoint_high_watermarks() },
        ),
        every(&shard, (c.log_fd_idle_ms / 2).max(1), |s| async move {
            let closed = s.file_cache.expire_idle(s.config.log_fd_idle_ms);
            if closed > 0 {
                tracing::debug!(
                    shard = s.id,
                    "closed {closed} segment files idle for log.fd.idle.ms"
                );
            }
        }),
        // Kafka checks lagging followers every replica.lag.time.max.ms / 2.
        every(
            &shard,
            (c.cluster.replica_lag_time_max_ms / 2).max(1),
            |s| async move { s.check_isr().await },
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
    // Controlled shutdown (Kafka's): leaderships move to in-sync followers
    // before any shard stops serving, so a rolling restart loses no
    // availability. Bounded by the controller request timeout.
    if id == CONTROLLER_SHARD {
        if let Some(plane) = shard.control_plane.get() {
            plane.clone().controlled_shutdown().await;
        }
        startup.leadership_released.store(true, Ordering::Relaxed);
    } else {
        let deadline =
            std::time::Instant::now() + Duration::from_millis(config.cluster.quorum_request_timeout_ms * 2);
        while !startup.leadership_released.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }
    shard.stop();
    if let Some(listener) = &listener {
        listener.close();
    }
    if let Some(quorum) = quorum {
        quorum.stop();
    }
    if let Some((l, _)) = &startup.controller_listener {
        if id == CONTROLLER_SHARD {
            l.close();
        }
    }
    drop(accept);
    drop(timers);
    drop(metrics);
    drop(probe);
    let budget = Duration::from_millis(config.shutdown_timeout_ms);
    crate::latency::log_summary(id);
    let log_ends = futures_lite::future::or(shard.close_all(), async {
        glommio::timer::sleep(budget).await;
        tracing::error!(shard = id, "closing logs took longer than shutdown.timeout.ms");
        None
    })
    .await;
    tracing::info!(shard = id, clean = log_ends.is_some(), "shard stopped");
    Ok(log_ends)
}

/// The first image of a data dir: the previous single-node release's
/// metadata file if there is one, else an empty cluster. A quorum of one
/// also registers its own broker and `__consumer_offsets` in it, so a
/// single node serves from its first second as it always did.
fn bootstrap_image(
    config: &BrokerConfig,
    data_dir: &Path,
    quorum_of_one: bool,
    nr_shards: usize,
) -> std::io::Result<MetadataImage> {
    let mut image = match MetadataImage::load_legacy(data_dir, config.node_id)? {
        Some(legacy) => {
            tracing::info!(
                "metadata: taking over {} ({} topics) from the single-node release",
                controller::METADATA_FILE,
                legacy.topics.len()
            );
            legacy
        }
        None => MetadataImage::new(
            config
                .cluster
                .cluster_id
                .clone()
                .unwrap_or_else(|| cluster_id_for(config, quorum_of_one)),
        ),
    };
    image.offset = 0;
    if quorum_of_one {
        image = image.with_broker(BrokerMeta {
            id: config.node_id,
            incarnation: uuid::Uuid::new_v4(),
            host: config.advertised_host.clone(),
            port: config.advertised_port,
            rack: config.cluster.rack.clone(),
            partitions_max: nr_shards * config.shard_partitions_max,
            fenced: false,
        });
        if let Some(next) = image.with_offsets_topic(
            config.group.offsets_topic_num_partitions,
            config.cluster.offsets_topic_replication_factor,
        ) {
            tracing::info!(
                "created {} with {} partitions",
                controller::OFFSETS_TOPIC,
                config.group.offsets_topic_num_partitions
            );
            image = next;
        }
    }
    Ok(image)
}

/// A cluster id when none is configured: random for a single node; for a
/// quorum, derived from `controller.quorum.voters` so every node agrees.
fn cluster_id_for(config: &BrokerConfig, quorum_of_one: bool) -> String {
    if quorum_of_one {
        return controller::random_cluster_id();
    }
    let text: String = config
        .cluster
        .voters
        .iter()
        .map(|v| format!("{}@{}:{},", v.id, v.host, v.port))
        .collect();
    let a = crc32c::crc32c(text.as_bytes());
    let b = crc32c::crc32c_append(a, text.as_bytes());
    let c = crc32c::crc32c_append(b, text.as_bytes());
    format!("{a:08x}{b:08x}{c:08x}")[..22].to_string()
}

/// The controller shard's part: the raft quorum, the control plane, the
/// CONTROLLER listener, heartbeats and the publisher of images to shards.
fn start_control_plane(shard: &Rc<Shard>, startup: &Startup) -> anyhow::Result<Option<Rc<Quorum>>> {
    let config = startup.config.clone();
    let log = startup
        .metadata_log
        .lock()
        .map_err(|_| anyhow::anyhow!("metadata log lock poisoned"))?
        .take();
    let quorum = match log {
        Some(log) => Some(start_quorum(&config, startup, log)?),
        None => None,
    };
    let plane = ControlPlane::new(
        config.clone(),
        shard.nr_shards,
        quorum.clone(),
        startup.voter_addrs.clone(),
        startup.view.clone(),
    );
    if shard.control_plane.set(plane.clone()).is_err() {
        anyhow::bail!("control plane started twice");
    }
    glommio::spawn_local(plane.clone().publish_loop(shard.clone())).detach();
    if config.cluster.roles.broker {
        glommio::spawn_local(plane.clone().heartbeat_loop(shard.clone())).detach();
    }
    let Some(quorum) = quorum else {
        return Ok(None);
    };
    glommio::spawn_local(quorum.clone().run()).detach();
    glommio::spawn_local(plane.clone().leader_loop(shard.clone())).detach();
    if let Some((listener, addr)) = startup.controller_listener.clone() {
        tracing::info!(
            "controller listening on {addr} (node {}, voters {:?})",
            config.node_id,
            startup.voters
        );
        serve_controller_port(shard.clone(), plane, quorum.clone(), listener);
    }
    Ok(Some(quorum))
}

/// The raft quorum over this node's metadata log.
fn start_quorum(config: &BrokerConfig, startup: &Startup, log: MetadataLog) -> anyhow::Result<Rc<Quorum>> {
    let peers = startup
        .voter_addrs
        .iter()
        .filter(|(id, _)| **id != config.node_id)
        .map(|(id, addr)| (raft_id(*id), transport::Peer::start(*id, *addr)))
        .collect();
    let settings = QuorumSettings {
        node_id: config.node_id,
        voters: startup.voters.clone(),
        election_timeout_ms: config.cluster.election_timeout_ms,
        request_timeout_ms: config.cluster.quorum_request_timeout_ms,
        snapshot_interval_bytes: config.cluster.metadata_snapshot_interval_bytes,
    };
    Quorum::new(settings, log, startup.view.image.as_ref().clone(), peers)
        .map_err(|e| anyhow::anyhow!("cannot start the controller quorum: {e}"))
}

/// Accepts peers' raft messages and forwarded requests on the CONTROLLER listener.
fn serve_controller_port(
    shard: Rc<Shard>,
    plane: Rc<ControlPlane>,
    quorum: Rc<Quorum>,
    listener: Arc<Listener>,
) {
    glommio::spawn_local(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) if shard.is_stopping() => return,
                Err(e) => {
                    tracing::warn!("controller accept failed: {e}");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let plane = plane.clone();
            let quorum = quorum.clone();
            let frame_max_bytes = shard.config.socket_request_max_bytes;
            glommio::spawn_local(async move {
                let handler: transport::RequestHandler = Rc::new(move |request| {
                    let plane = plane.clone();
                    Box::pin(async move { plane.handle_request(request).await })
                });
                transport::serve_connection(stream, |m| quorum.step(m), handler, frame_max_bytes).await;
            })
            .detach();
        }
    })
    .detach();
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
