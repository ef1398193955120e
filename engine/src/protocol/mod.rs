//! Kafka wire protocol: framing, per-connection request loop, API dispatch.
//!
//! Runs on every shard: each shard accepts connections on the shared port
//! (SO_REUSEPORT) and serves them itself; handlers split work that belongs
//! to other shards through `Shard::call`. Message schemas come from the
//! `kafka-protocol` crate; this module only frames, dispatches and maps
//! errors to Kafka's codes.
//!
//! Answers on a connection go out in request order. Consecutive Produce
//! requests run pipelined (see `connection`); every other request is served
//! one at a time, as Kafka does (it mutes a connection until its response
//! is sent).

mod admin;
mod elections;
mod error_codes;
mod fetch;
mod groups;
mod list_offsets;
mod log_dirs;
mod metadata;
mod offsets;
mod partition_lists;
pub(crate) mod produce;
mod producer_id;
mod reassignments;
mod transactions;
mod txn_markers;
pub mod versions;
mod zero_copy;

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, AlterConfigsRequest,
    AlterPartitionReassignmentsRequest, ApiKey, ApiVersionsRequest, ConsumerGroupDescribeRequest,
    ConsumerGroupHeartbeatRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteGroupsRequest,
    DeleteRecordsRequest, DeleteTopicsRequest, DescribeClusterRequest, DescribeConfigsRequest,
    DescribeGroupsRequest, DescribeLogDirsRequest, DescribeTopicPartitionsRequest,
    DescribeTransactionsRequest, ElectLeadersRequest, EndTxnRequest, FetchRequest, FindCoordinatorRequest,
    HeartbeatRequest, IncrementalAlterConfigsRequest, InitProducerIdRequest, JoinGroupRequest,
    LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest, ListPartitionReassignmentsRequest,
    ListTransactionsRequest, MetadataRequest, OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest,
    OffsetForLeaderEpochRequest, ProduceRequest, RequestHeader, ResponseHeader, SyncGroupRequest,
    TxnOffsetCommitRequest, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use crate::latency::{self, Stage};
use crate::shard::Shard;
use crate::storage::Records;
use error_codes::ErrorCodes;

/// Smallest valid request: api key, api version, correlation id.
const REQUEST_HEADER_MIN_BYTES: usize = 8;

/// What to do after one request.
enum Outcome {
    Respond(Bytes),
    /// A frame with file-backed records, sent off the shard (`zero_copy`).
    RespondZeroCopy(Vec<Records>),
    /// Produce with acks=0.
    Silent,
    /// Kafka closes the connection on malformed or unsupported requests.
    Close(String),
}

/// One connection: a reader that decodes requests and starts their handlers,
/// and a writer that sends the answers in request order.
///
/// Produce requests are pipelined: up to `connection.max.inflight.requests`
/// run at once. Their handlers start in arrival order and each enqueues its
/// appends before its first real wait, so per-partition order is the
/// request order, and consecutive requests to one partition share one
/// group-commit write instead of waiting for each other's O_DIRECT write.
/// Every other request waits until everything before it is answered, and
/// nothing after it starts until it is answered: Kafka's one-at-a-time
/// semantics, which long-polls (Fetch, JoinGroup) and admin requests keep.
pub async fn connection(shard: &Rc<Shard>, stream: TcpStream, peer: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(shard.config.connections_max_idle_ms)))?;
    set_send_timeout(&stream, shard.config.socket_send_timeout_ms)?;
    let socket = stream.as_raw_fd();
    let (reader, writer) = futures_lite::io::split(stream);
    let (answers, queued_answers) =
        glommio::channels::local_channel::new_bounded(shard.config.connection_max_inflight_requests);
    let in_flight = Rc::new(InFlight::default());
    let writing = glommio::spawn_local(write_answers(
        shard.clone(),
        writer,
        socket,
        queued_answers,
        in_flight.clone(),
        peer.to_string(),
    ));
    let read = read_requests(shard, reader, answers, &in_flight, peer).await;
    // The reader dropped its sender: the writer drains what is queued, then ends.
    writing.await;
    read
}

/// A handled request, queued for the connection's writer.
struct Answer {
    outcome: Outcome,
    api_key: i16,
    /// When the request was read whole, and when its handler finished: the
    /// stage latencies (`crate::latency`).
    read_at: Instant,
    handled_at: Instant,
}

/// Requests started but not yet answered on one connection.
#[derive(Default)]
struct InFlight {
    count: std::cell::Cell<usize>,
    answered: event_listener::Event,
    /// The writer stopped (the client left): what is still queued is never
    /// answered, so a reader waiting for the answers must stop waiting
    /// (else the connection, and its socket, would be held forever).
    writer_gone: std::cell::Cell<bool>,
}

impl InFlight {
    async fn drained(&self) {
        loop {
            let listener = self.answered.listen();
            if self.count.get() == 0 || self.writer_gone.get() {
                return;
            }
            listener.await;
        }
    }

    fn finish(&self) {
        self.count.set(self.count.get() - 1);
        self.answered.notify(usize::MAX);
    }

    fn writer_stopped(&self) {
        self.writer_gone.set(true);
        self.answered.notify(usize::MAX);
    }
}

async fn read_requests(
    shard: &Rc<Shard>,
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
    answers: glommio::channels::local_channel::LocalSender<glommio::Task<Answer>>,
    in_flight: &InFlight,
    peer: &str,
) -> std::io::Result<()> {
    let max_bytes = shard.config.socket_request_max_bytes;
    loop {
        let mut size_buf = [0u8; 4];
        match reader.read_exact(&mut size_buf).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let size = i32::from_be_bytes(size_buf);
        if size < REQUEST_HEADER_MIN_BYTES as i32 || size as usize > max_bytes {
            tracing::warn!(
                %peer,
                "request size {size} outside {REQUEST_HEADER_MIN_BYTES}..={max_bytes} (socket.request.max.bytes); closing connection"
            );
            return Ok(());
        }
        let mut body = BytesMut::zeroed(size as usize);
        if let Err(e) = reader.read_exact(&mut body).await {
            tracing::warn!(%peer, "truncated request of {size} bytes ({e}); closing connection");
            return Ok(());
        }
        let read_at = Instant::now();
        let frame = body.freeze();
        let api_key = i16::from_be_bytes([frame[0], frame[1]]);
        crate::metrics::count_request(api_key);
        let pipelined = api_key == ApiKey::Produce as i16;
        if !pipelined {
            in_flight.drained().await;
        }
        if in_flight.writer_gone.get() {
            return Ok(()); // the writer stopped: the connection is closing
        }
        in_flight.count.set(in_flight.count.get() + 1);
        let handler_shard = shard.clone();
        let handler_peer = peer.to_string();
        // Spawned tasks first run in spawn order: this handler reaches its
        // appends before any later request's handler does.
        let handler = glommio::spawn_local(async move {
            latency::record(Some(api_key), Stage::RequestQueue, read_at);
            let started = Instant::now();
            let outcome = handle_request(&handler_shard, frame, &handler_peer).await;
            latency::record(Some(api_key), Stage::Handle, started);
            Answer {
                outcome,
                api_key,
                read_at,
                handled_at: Instant::now(),
            }
        });
        if answers.send(handler).await.is_err() {
            return Ok(()); // the writer stopped: the connection is closing
        }
        if !pipelined {
            in_flight.drained().await;
        }
        if shard.is_stopping() {
            return Ok(());
        }
    }
}

/// Sends each answer once its handler is done, in request order. Stops at
/// the first failure or `Outcome::Close`, shutting the socket down so the
/// reader stops too.
async fn write_answers(
    shard: Rc<Shard>,
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    socket: std::os::fd::RawFd,
    queued: glommio::channels::local_channel::LocalReceiver<glommio::Task<Answer>>,
    in_flight: Rc<InFlight>,
    peer: String,
) {
    while let Some(handler) = queued.recv().await {
        let answer = handler.await;
        let api_key = Some(answer.api_key);
        latency::record(api_key, Stage::ResponseQueue, answer.handled_at);
        let send_start = Instant::now();
        let sent = send_outcome(&shard, &mut writer, socket, answer.outcome, &peer).await;
        latency::record(api_key, Stage::ResponseSend, send_start);
        latency::record(api_key, Stage::Total, answer.read_at);
        in_flight.finish();
        if !sent {
            in_flight.writer_stopped();
            // SAFETY: shutting down a socket this connection owns; the fd
            // stays open until both halves drop.
            unsafe { libc::shutdown(socket, libc::SHUT_RDWR) };
            return;
        }
    }
}

/// Writes one answer; false when the connection must close.
async fn send_outcome(
    shard: &Shard,
    writer: &mut futures_lite::io::WriteHalf<TcpStream>,
    socket: std::os::fd::RawFd,
    outcome: Outcome,
    peer: &str,
) -> bool {
    match outcome {
        Outcome::Respond(bytes) => match writer.write_all(&bytes).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(%peer, "connection ended: {e}");
                false
            }
        },
        Outcome::RespondZeroCopy(chunks) => {
            let Ok(_permit) = shard.io_sends.acquire_permit(1).await else {
                return false;
            };
            // The socket outlives the job: the connection awaits it before
            // writing anything else (answers go out one at a time, here).
            let sent = glommio::executor()
                .spawn_blocking(move || zero_copy::send_chunks(socket, &chunks))
                .await;
            match sent {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(%peer, "zero-copy fetch answer failed: {e}; closing connection");
                    false
                }
            }
        }
        Outcome::Silent => true,
        Outcome::Close(reason) => {
            tracing::warn!(%peer, "{reason}; closing connection");
            false
        }
    }
}

/// SO_SNDTIMEO bounds the blocking zero-copy sends only: glommio's own
/// writes never block in the kernel (MSG_DONTWAIT, then io_uring polling).
fn set_send_timeout(stream: &TcpStream, timeout_ms: u64) -> std::io::Result<()> {
    let timeout = libc::timeval {
        tv_sec: (timeout_ms / 1000) as libc::time_t,
        tv_usec: ((timeout_ms % 1000) * 1000) as libc::suseconds_t,
    };
    // SAFETY: a valid socket fd and a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Frames a response: size, header (version chosen by the API), body.
fn encode_response<R: Encodable + HeaderVersion + ErrorCodes>(
    key: ApiKey,
    correlation_id: i32,
    version: i16,
    body: &R,
) -> Outcome {
    body.error_codes(&mut |code| {
        if code != 0 {
            crate::metrics::count_errors(key as i16, [code]);
        }
    });
    let header_version = R::header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encoded = (|| -> anyhow::Result<Bytes> {
        let size = header.compute_size(header_version)? + body.compute_size(version)?;
        let mut buf = BytesMut::with_capacity(4 + size);
        buf.put_i32(size as i32);
        header.encode(&mut buf, header_version)?;
        body.encode(&mut buf, version)?;
        debug_assert_eq!(buf.len(), 4 + size);
        Ok(buf.freeze())
    })();
    match encoded {
        Ok(bytes) => Outcome::Respond(bytes),
        Err(e) => Outcome::Close(format!("cannot encode response v{version}: {e}")),
    }
}

/// Decodes one request, runs its handler, encodes the answer.
async fn handle_request(shard: &Rc<Shard>, frame: Bytes, peer: &str) -> Outcome {
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(key) = ApiKey::try_from(api_key) else {
        return Outcome::Close(format!("unknown API key {api_key}"));
    };
    if key == ApiKey::ListOffsets && version == 0 {
        return list_offsets_v0(shard, frame, correlation_id).await;
    }
    let Some(range) = versions::supported(key) else {
        return Outcome::Close(format!("unsupported API {key:?}"));
    };
    if version < range.0 || version > range.1 {
        if key == ApiKey::ApiVersions {
            // Kafka answers an ApiVersions it cannot parse in v0 format with
            // UNSUPPORTED_VERSION and its own list, so the client can downgrade.
            return encode_response(key, correlation_id, 0, &versions::unsupported_version_response());
        }
        return Outcome::Close(format!("unsupported version {version} of {key:?}"));
    }
    let mut buf = frame.clone();
    let header = match RequestHeader::decode(&mut buf, key.request_header_version(version)) {
        Ok(h) => h,
        Err(e) => return Outcome::Close(format!("malformed {key:?} v{version} request header: {e}")),
    };
    macro_rules! decode {
        ($ty:ty) => {
            match <$ty>::decode(&mut buf, version) {
                Ok(r) => r,
                Err(e) => return Outcome::Close(format!("malformed {key:?} v{version} request: {e}")),
            }
        };
    }
    let client_id = header.client_id.unwrap_or_else(|| StrBytes::from_static_str(""));
    match key {
        ApiKey::ApiVersions => {
            let _req = decode!(ApiVersionsRequest);
            encode_response(key, correlation_id, version, &versions::api_versions_response())
        }
        ApiKey::Metadata => {
            let req = decode!(MetadataRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &metadata::handle(shard, req, version).await,
            )
        }
        ApiKey::Produce => {
            let req = decode!(ProduceRequest);
            match produce::handle(shard, req, version).await {
                Some(resp) => encode_response(key, correlation_id, version, &resp),
                None => Outcome::Silent,
            }
        }
        ApiKey::Fetch => {
            let req = decode!(FetchRequest);
            let (response, files) = fetch::handle(shard, req, version).await;
            if files.is_empty() {
                return encode_response(key, correlation_id, version, &response);
            }
            match zero_copy::encode_fetch(correlation_id, version, &response, &files) {
                Ok(chunks) => Outcome::RespondZeroCopy(chunks),
                Err(e) => Outcome::Close(format!("cannot encode Fetch v{version} answer: {e}")),
            }
        }
        ApiKey::ListOffsets => {
            let req = decode!(ListOffsetsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &list_offsets::handle(shard, req, version).await,
            )
        }
        ApiKey::CreateTopics => {
            let req = decode!(CreateTopicsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &admin::create_topics(shard, req, version).await,
            )
        }
        ApiKey::DeleteTopics => {
            let req = decode!(DeleteTopicsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &admin::delete_topics(shard, req, version).await,
            )
        }
        ApiKey::AlterPartitionReassignments => {
            let req = decode!(AlterPartitionReassignmentsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &reassignments::alter(shard, req).await,
            )
        }
        ApiKey::ListPartitionReassignments => {
            let req = decode!(ListPartitionReassignmentsRequest);
            encode_response(key, correlation_id, version, &reassignments::list(shard, req))
        }
        ApiKey::DescribeLogDirs => {
            let req = decode!(DescribeLogDirsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &log_dirs::describe_log_dirs(shard, req).await,
            )
        }
        ApiKey::ElectLeaders => {
            let req = decode!(ElectLeadersRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &elections::elect_leaders(shard, req).await,
            )
        }
        ApiKey::CreatePartitions => {
            let req = decode!(CreatePartitionsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &admin::create_partitions(shard, req).await,
            )
        }
        ApiKey::DescribeConfigs => {
            let req = decode!(DescribeConfigsRequest);
            encode_response(key, correlation_id, version, &admin::describe_configs(shard, req))
        }
        ApiKey::AddPartitionsToTxn => {
            let req = decode!(AddPartitionsToTxnRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &transactions::add_partitions(shard, req, version).await,
            )
        }
        ApiKey::AddOffsetsToTxn => {
            let req = decode!(AddOffsetsToTxnRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &transactions::add_offsets(shard, req, version).await,
            )
        }
        ApiKey::TxnOffsetCommit => {
            let req = decode!(TxnOffsetCommitRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &groups::txn_offset_commit(shard, req, version).await,
            )
        }
        ApiKey::EndTxn => {
            let req = decode!(EndTxnRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &transactions::end_txn(shard, req, version).await,
            )
        }
        ApiKey::DescribeTransactions => {
            let req = decode!(DescribeTransactionsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &transactions::describe(shard, req).await,
            )
        }
        ApiKey::ListTransactions => {
            let req = decode!(ListTransactionsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &transactions::list(shard, req).await,
            )
        }
        ApiKey::WriteTxnMarkers => {
            let req = decode!(WriteTxnMarkersRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &txn_markers::handle(shard, req).await,
            )
        }
        ApiKey::DescribeTopicPartitions => {
            let req = decode!(DescribeTopicPartitionsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &metadata::describe_topic_partitions(shard, req),
            )
        }
        ApiKey::DescribeCluster => {
            let req = decode!(DescribeClusterRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &admin::describe_cluster(shard, req, version),
            )
        }
        ApiKey::AlterConfigs => {
            let req = decode!(AlterConfigsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &admin::alter_configs(shard, req).await,
            )
        }
        ApiKey::IncrementalAlterConfigs => {
            let req = decode!(IncrementalAlterConfigsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &admin::incremental_alter_configs(shard, req).await,
            )
        }
        ApiKey::InitProducerId => {
            let req = decode!(InitProducerIdRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &producer_id::init_producer_id(shard, req, version).await,
            )
        }
        ApiKey::DeleteRecords => {
            let req = decode!(DeleteRecordsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &offsets::delete_records(shard, req).await,
            )
        }
        ApiKey::OffsetForLeaderEpoch => {
            let req = decode!(OffsetForLeaderEpochRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &offsets::offset_for_leader_epoch(shard, req).await,
            )
        }
        ApiKey::FindCoordinator => {
            let req = decode!(FindCoordinatorRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &groups::find_coordinator(shard, req, version),
            )
        }
        ApiKey::JoinGroup => {
            let req = decode!(JoinGroupRequest);
            let resp =
                groups::join_group(shard, req, version, client_id.to_string(), client_host(peer)).await;
            encode_response(key, correlation_id, version, &resp)
        }
        ApiKey::ConsumerGroupHeartbeat => {
            let req = decode!(ConsumerGroupHeartbeatRequest);
            let resp =
                groups::consumer_heartbeat(shard, req, version, client_id.to_string(), client_host(peer))
                    .await;
            encode_response(key, correlation_id, version, &resp)
        }
        ApiKey::ConsumerGroupDescribe => {
            let req = decode!(ConsumerGroupDescribeRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &groups::consumer_describe(shard, req).await,
            )
        }
        ApiKey::SyncGroup => {
            let req = decode!(SyncGroupRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &groups::sync_group(shard, req).await,
            )
        }
        ApiKey::Heartbeat => {
            let req = decode!(HeartbeatRequest);
            encode_response(key, correlation_id, version, &groups::heartbeat(shard, req).await)
        }
        ApiKey::LeaveGroup => {
            let req = decode!(LeaveGroupRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &groups::leave_group(shard, req, version).await,
            )
        }
        ApiKey::OffsetCommit => {
            let req = decode!(OffsetCommitRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &groups::offset_commit(shard, req).await,
            )
        }
        ApiKey::OffsetFetch => {
            let req = decode!(OffsetFetchRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &groups::offset_fetch(shard, req, version).await,
            )
        }
        ApiKey::ListGroups => {
            let req = decode!(ListGroupsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &groups::list_groups(shard, req).await,
            )
        }
        ApiKey::DescribeGroups => {
            let req = decode!(DescribeGroupsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &groups::describe_groups(shard, req, version).await,
            )
        }
        ApiKey::DeleteGroups => {
            let req = decode!(DeleteGroupsRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &groups::delete_groups(shard, req).await,
            )
        }
        ApiKey::OffsetDelete => {
            let req = decode!(OffsetDeleteRequest);
            encode_response(
                key,
                correlation_id,
                version,
                &groups::offset_delete(shard, req).await,
            )
        }
        other => Outcome::Close(format!("unsupported API {other:?}")),
    }
}

/// ListOffsets v0 (see `list_offsets::handle_v0`): header v1 in, v0 out.
async fn list_offsets_v0(shard: &Rc<Shard>, frame: Bytes, correlation_id: i32) -> Outcome {
    let mut buf = frame.clone();
    if let Err(e) = RequestHeader::decode(&mut buf, 1) {
        return Outcome::Close(format!("malformed ListOffsets v0 request header: {e}"));
    }
    match list_offsets::handle_v0(shard, &buf).await {
        Ok(body) => {
            let mut out = BytesMut::with_capacity(8 + body.len());
            out.put_i32(4 + body.len() as i32);
            out.put_i32(correlation_id);
            out.put_slice(&body);
            Outcome::Respond(out.freeze())
        }
        Err(reason) => Outcome::Close(reason),
    }
}

/// Kafka reports a member's host as Java's `InetAddress.toString`: "/1.2.3.4".
fn client_host(peer: &str) -> String {
    let ip = peer.rsplit_once(':').map_or(peer, |(ip, _)| ip);
    format!("/{}", ip.trim_start_matches('[').trim_end_matches(']'))
}
