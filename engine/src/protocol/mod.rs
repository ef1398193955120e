//! Kafka wire protocol: framing, per-connection request loop, API dispatch.
//!
//! Runs on every shard: each shard accepts connections on the shared port
//! (SO_REUSEPORT) and serves them itself; handlers split work that belongs
//! to other shards through `Shard::call`. Message schemas come from the
//! `kafka-protocol` crate; this module only frames, dispatches and maps
//! errors to Kafka's codes.
//!
//! Requests on one connection are served one at a time, in order, as Kafka
//! does (it mutes a connection until its response is sent): that keeps
//! per-partition order for pipelining producers without any bookkeeping.

mod admin;
mod fetch;
mod groups;
mod list_offsets;
mod metadata;
mod offsets;
mod produce;
mod producer_id;
pub mod versions;

use std::rc::Rc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ApiVersionsRequest, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteGroupsRequest, DeleteRecordsRequest, DeleteTopicsRequest, DescribeClusterRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest, HeartbeatRequest,
    IncrementalAlterConfigsRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, OffsetDeleteRequest,
    OffsetFetchRequest, OffsetForLeaderEpochRequest, ProduceRequest, RequestHeader, ResponseHeader,
    SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use crate::shard::Shard;

/// Smallest valid request: api key, api version, correlation id.
const REQUEST_HEADER_MIN_BYTES: usize = 8;

/// Accepts connections until the shard stops; each connection is its own task.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(shard = shard.id, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        if !shard.try_open_connection() {
            tracing::warn!(shard = shard.id, %peer, "max.connections reached; closing the new connection");
            continue;
        }
        let shard = shard.clone();
        glommio::spawn_local(async move {
            if let Err(e) = connection(&shard, stream, &peer).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            shard.close_connection();
        })
        .detach();
    }
}

/// What to do after one request.
enum Outcome {
    Respond(Bytes),
    /// Produce with acks=0.
    Silent,
    /// Kafka closes the connection on malformed or unsupported requests.
    Close(String),
}

async fn connection(shard: &Rc<Shard>, mut stream: TcpStream, peer: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(shard.config.connections_max_idle_ms)))?;
    let max_bytes = shard.config.socket_request_max_bytes;
    loop {
        let mut size_buf = [0u8; 4];
        match stream.read_exact(&mut size_buf).await {
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
        if let Err(e) = stream.read_exact(&mut body).await {
            tracing::warn!(%peer, "truncated request of {size} bytes ({e}); closing connection");
            return Ok(());
        }
        match handle_request(shard, body.freeze(), peer).await {
            Outcome::Respond(bytes) => stream.write_all(&bytes).await?,
            Outcome::Silent => {}
            Outcome::Close(reason) => {
                tracing::warn!(%peer, "{reason}; closing connection");
                return Ok(());
            }
        }
        if shard.is_stopping() {
            return Ok(());
        }
    }
}

/// Frames a response: size, header (version chosen by the API), body.
fn encode_response<R: Encodable + HeaderVersion>(correlation_id: i32, version: i16, body: &R) -> Outcome {
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
            return encode_response(correlation_id, 0, &versions::unsupported_version_response());
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
            encode_response(correlation_id, version, &versions::api_versions_response())
        }
        ApiKey::Metadata => {
            let req = decode!(MetadataRequest);
            encode_response(
                correlation_id,
                version,
                &metadata::handle(shard, req, version).await,
            )
        }
        ApiKey::Produce => {
            let req = decode!(ProduceRequest);
            match produce::handle(shard, req, version).await {
                Some(resp) => encode_response(correlation_id, version, &resp),
                None => Outcome::Silent,
            }
        }
        ApiKey::Fetch => {
            let req = decode!(FetchRequest);
            encode_response(correlation_id, version, &fetch::handle(shard, req, version).await)
        }
        ApiKey::ListOffsets => {
            let req = decode!(ListOffsetsRequest);
            encode_response(
                correlation_id,
                version,
                &list_offsets::handle(shard, req, version).await,
            )
        }
        ApiKey::CreateTopics => {
            let req = decode!(CreateTopicsRequest);
            encode_response(
                correlation_id,
                version,
                &admin::create_topics(shard, req, version).await,
            )
        }
        ApiKey::DeleteTopics => {
            let req = decode!(DeleteTopicsRequest);
            encode_response(
                correlation_id,
                version,
                &admin::delete_topics(shard, req, version).await,
            )
        }
        ApiKey::CreatePartitions => {
            let req = decode!(CreatePartitionsRequest);
            encode_response(
                correlation_id,
                version,
                &admin::create_partitions(shard, req).await,
            )
        }
        ApiKey::DescribeConfigs => {
            let req = decode!(DescribeConfigsRequest);
            encode_response(correlation_id, version, &admin::describe_configs(shard, req))
        }
        ApiKey::DescribeCluster => {
            let req = decode!(DescribeClusterRequest);
            encode_response(
                correlation_id,
                version,
                &admin::describe_cluster(shard, req, version),
            )
        }
        ApiKey::AlterConfigs => {
            let req = decode!(AlterConfigsRequest);
            encode_response(correlation_id, version, &admin::alter_configs(shard, req).await)
        }
        ApiKey::IncrementalAlterConfigs => {
            let req = decode!(IncrementalAlterConfigsRequest);
            encode_response(
                correlation_id,
                version,
                &admin::incremental_alter_configs(shard, req).await,
            )
        }
        ApiKey::InitProducerId => {
            let req = decode!(InitProducerIdRequest);
            encode_response(
                correlation_id,
                version,
                &producer_id::init_producer_id(shard, req).await,
            )
        }
        ApiKey::DeleteRecords => {
            let req = decode!(DeleteRecordsRequest);
            encode_response(
                correlation_id,
                version,
                &offsets::delete_records(shard, req).await,
            )
        }
        ApiKey::OffsetForLeaderEpoch => {
            let req = decode!(OffsetForLeaderEpochRequest);
            encode_response(
                correlation_id,
                version,
                &offsets::offset_for_leader_epoch(shard, req).await,
            )
        }
        ApiKey::FindCoordinator => {
            let req = decode!(FindCoordinatorRequest);
            encode_response(
                correlation_id,
                version,
                &groups::find_coordinator(shard, req, version),
            )
        }
        ApiKey::JoinGroup => {
            let req = decode!(JoinGroupRequest);
            let resp =
                groups::join_group(shard, req, version, client_id.to_string(), client_host(peer)).await;
            encode_response(correlation_id, version, &resp)
        }
        ApiKey::SyncGroup => {
            let req = decode!(SyncGroupRequest);
            encode_response(correlation_id, version, &groups::sync_group(shard, req).await)
        }
        ApiKey::Heartbeat => {
            let req = decode!(HeartbeatRequest);
            encode_response(correlation_id, version, &groups::heartbeat(shard, req).await)
        }
        ApiKey::LeaveGroup => {
            let req = decode!(LeaveGroupRequest);
            encode_response(
                correlation_id,
                version,
                &groups::leave_group(shard, req, version).await,
            )
        }
        ApiKey::OffsetCommit => {
            let req = decode!(OffsetCommitRequest);
            encode_response(correlation_id, version, &groups::offset_commit(shard, req).await)
        }
        ApiKey::OffsetFetch => {
            let req = decode!(OffsetFetchRequest);
            encode_response(
                correlation_id,
                version,
                &groups::offset_fetch(shard, req, version).await,
            )
        }
        ApiKey::ListGroups => {
            let req = decode!(ListGroupsRequest);
            encode_response(correlation_id, version, &groups::list_groups(shard, req).await)
        }
        ApiKey::DescribeGroups => {
            let req = decode!(DescribeGroupsRequest);
            encode_response(
                correlation_id,
                version,
                &groups::describe_groups(shard, req, version).await,
            )
        }
        ApiKey::DeleteGroups => {
            let req = decode!(DeleteGroupsRequest);
            encode_response(correlation_id, version, &groups::delete_groups(shard, req).await)
        }
        ApiKey::OffsetDelete => {
            let req = decode!(OffsetDeleteRequest);
            encode_response(correlation_id, version, &groups::offset_delete(shard, req).await)
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

/// Kafka's "no authorized operations requested" sentinel.
pub(crate) const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}
