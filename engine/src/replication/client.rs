//! The follower's side of the node-to-node replication wire: a Kafka
//! client connection from a follower shard to its leader's node.
//!
//! The wire is Kafka's own follower fetch, on the leader's PLAINTEXT
//! listener: Fetch v12 with `replica_id` set to the follower's node id, and
//! OffsetForLeaderEpoch v4 before fetching after a leader change. The leader
//! answers it with the same code that serves consumers (tail cache and
//! zero-copy file ranges), reading up to its log end rather than its high
//! watermark. One connection per (follower shard, leader node), one request
//! in flight: the fetch is long-polled, so a follower at the tail costs one
//! round trip per leader append batch.
//!
//! Lives on: the follower shard, inside its fetcher task (`shard::replica`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

/// The follower fetch's Fetch version: the last with topic names and a
/// top-level `replica_id`.
pub const FETCH_VERSION: i16 = 12;
pub const OFFSET_FOR_LEADER_EPOCH_VERSION: i16 = 4;
const CLIENT_ID: &str = "shardlog-replica-fetcher";

pub struct LeaderConnection {
    stream: TcpStream,
    addr: SocketAddr,
    next_correlation_id: i32,
    response_max_bytes: usize,
}

fn invalid(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

impl LeaderConnection {
    /// Connects within `timeout_ms`; responses larger than
    /// `response_max_bytes` close the connection.
    pub async fn connect(
        addr: SocketAddr,
        timeout_ms: u64,
        response_max_bytes: usize,
    ) -> std::io::Result<LeaderConnection> {
        let stream = TcpStream::connect_timeout(addr, Duration::from_millis(timeout_ms)).await?;
        stream.set_nodelay(true)?;
        Ok(LeaderConnection {
            stream,
            addr,
            next_correlation_id: 0,
            response_max_bytes,
        })
    }

    /// Sends `req` at `version` and reads its response, waiting at most
    /// `timeout_ms` for it (a long-poll's own wait included by the caller).
    pub async fn call<R: Request + Encodable>(
        &mut self,
        req: &R,
        version: i16,
        timeout_ms: u64,
    ) -> std::io::Result<R::Response>
    where
        R::Response: Decodable,
    {
        let key = ApiKey::try_from(R::KEY).map_err(|_| invalid(format!("api key {}", R::KEY)))?;
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut out = vec![0u8; 4];
        header
            .encode(&mut out, key.request_header_version(version))
            .map_err(invalid)?;
        req.encode(&mut out, version).map_err(invalid)?;
        let size = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&size.to_be_bytes());
        let exchange = async {
            self.stream.write_all(&out).await?;
            let mut prefix = [0u8; 4];
            self.stream.read_exact(&mut prefix).await?;
            let len = u32::from_be_bytes(prefix) as usize;
            if len > self.response_max_bytes {
                return Err(invalid(format!(
                    "response of {len} bytes from {} (limit {})",
                    self.addr, self.response_max_bytes
                )));
            }
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).await?;
            Ok(Bytes::from(body))
        };
        let mut frame = glommio::timer::timeout(Duration::from_millis(timeout_ms), async {
            exchange.await.map_err(glommio::GlommioError::from)
        })
        .await
        .map_err(|e| match e {
            glommio::GlommioError::IoError(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::TimedOut, other.to_string()),
        })?;
        let header =
            ResponseHeader::decode(&mut frame, key.response_header_version(version)).map_err(invalid)?;
        if header.correlation_id != correlation_id {
            return Err(invalid(format!(
                "correlation id {} where {correlation_id} was expected",
                header.correlation_id
            )));
        }
        R::Response::decode(&mut frame, version).map_err(invalid)
    }
}
