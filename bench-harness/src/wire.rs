//! Kafka framing over blocking `TcpStream`s, version negotiation and the
//! admin calls the benchmark needs (ApiVersions, Metadata, CreateTopics,
//! ListOffsets).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, ListOffsetsRequest, MetadataRequest, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

/// Largest response frame accepted (a 50 MiB fetch plus framing headroom).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// How long a blocking read or write may stall before the run fails.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "shardlog-bench";
const TOPIC_ALREADY_EXISTS: i16 = 36;

#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// Malformed or unexpected bytes from the peer, or an encode failure.
    Protocol(String),
    /// The broker answered with an error code.
    Broker(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o: {e}"),
            Error::Protocol(m) => write!(f, "protocol: {m}"),
            Error::Broker(m) => write!(f, "broker: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

pub fn protocol_error(what: &str, e: impl fmt::Display) -> Error {
    Error::Protocol(format!("{what}: {e}"))
}

pub type Result<T> = std::result::Result<T, Error>;

/// Reads size-prefixed frames into one reused buffer. Decoding from the
/// frozen `Bytes` keeps record sets zero-copy; once the caller has dropped
/// every slice the buffer is reclaimed for the next frame.
#[derive(Default)]
pub struct FrameReader {
    buf: Option<BytesMut>,
}

impl FrameReader {
    pub fn read<R: Read, T>(&mut self, reader: &mut R, f: impl FnOnce(Bytes) -> Result<T>) -> Result<T> {
        let mut size = [0u8; 4];
        reader.read_exact(&mut size)?;
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > FRAME_BYTES_MAX {
            return Err(Error::Protocol(format!("frame of {size} bytes")));
        }
        let size = size as usize;
        let mut buf = self.buf.take().unwrap_or_default();
        if buf.len() < size {
            buf.resize(size, 0);
        }
        reader.read_exact(&mut buf[..size])?;
        let all = buf.freeze();
        let out = f(all.slice(..size));
        self.buf = all.try_into_mut().ok();
        out
    }
}

/// Encodes `[size][header][body]` for request `req` at `version`.
pub fn encode_frame<R: Request>(req: &R, version: i16, correlation_id: i32) -> Result<Vec<u8>> {
    let key = ApiKey::try_from(R::KEY).map_err(|_| Error::Protocol(format!("api key {}", R::KEY)))?;
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut out = vec![0u8; 4];
    header
        .encode(&mut out, key.request_header_version(version))
        .map_err(|e| protocol_error("encode header", e))?;
    req.encode(&mut out, version)
        .map_err(|e| protocol_error("encode request", e))?;
    let size = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Ok(out)
}

/// Offset of the correlation id inside a frame from `encode_frame`
/// (size i32, api key i16, api version i16, then correlation id).
pub const FRAME_CORRELATION_ID_OFFSET: usize = 8;

/// Decodes a response frame: header (checking the correlation id) then body.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<R::Response> {
    let key = ApiKey::try_from(R::KEY).map_err(|_| Error::Protocol(format!("api key {}", R::KEY)))?;
    let header = ResponseHeader::decode(&mut frame, key.response_header_version(version))
        .map_err(|e| protocol_error("decode response header", e))?;
    if header.correlation_id != correlation_id {
        return Err(Error::Protocol(format!(
            "correlation id {} where {correlation_id} was expected",
            header.correlation_id
        )));
    }
    R::Response::decode(&mut frame, version).map_err(|e| protocol_error("decode response", e))
}

/// Version ranges both sides support, from ApiVersions.
#[derive(Clone, Debug, Default)]
pub struct Versions {
    broker: HashMap<i16, (i16, i16)>,
}

impl Versions {
    /// The highest version <= `preferred` that the broker and the crate
    /// both support.
    pub fn pick(&self, key: ApiKey, preferred: i16) -> Result<i16> {
        let &(broker_min, broker_max) = self
            .broker
            .get(&(key as i16))
            .ok_or_else(|| Error::Protocol(format!("broker does not serve {key:?}")))?;
        let crate_range = key.valid_versions();
        let version = preferred.min(broker_max).min(crate_range.max);
        if version < broker_min.max(crate_range.min) {
            return Err(Error::Protocol(format!(
                "no common version of {key:?}: broker {broker_min}..{broker_max}, client {crate_range}"
            )));
        }
        Ok(version)
    }

    #[cfg(test)]
    pub fn from_ranges(ranges: &[(ApiKey, i16, i16)]) -> Versions {
        Versions {
            broker: ranges.iter().map(|&(k, lo, hi)| (k as i16, (lo, hi))).collect(),
        }
    }
}

/// A blocking request/response connection for control-plane calls.
pub struct Conn {
    pub stream: TcpStream,
    reader: FrameReader,
    next_correlation_id: i32,
    pub versions: Versions,
}

pub fn connect(addr: &str) -> Result<TcpStream> {
    let mut last = None;
    for sock in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sock, Duration::from_secs(10)) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
                stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .map(Error::Io)
        .unwrap_or_else(|| Error::Protocol(format!("{addr} resolves to nothing"))))
}

impl Conn {
    /// Connects and negotiates versions with ApiVersions v3.
    pub fn open(addr: &str) -> Result<Conn> {
        let mut conn = Conn {
            stream: connect(addr)?,
            reader: FrameReader::default(),
            next_correlation_id: 1,
            versions: Versions::default(),
        };
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp = conn.call(&req, 3)?;
        if resp.error_code != 0 {
            return Err(Error::Broker(format!("ApiVersions error {}", resp.error_code)));
        }
        conn.versions.broker = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(conn)
    }

    pub fn next_correlation_id(&mut self) -> i32 {
        let id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1).max(1);
        id
    }

    pub fn call<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response> {
        let id = self.next_correlation_id();
        let frame = encode_frame(req, version, id)?;
        self.stream.write_all(&frame)?;
        let stream = &mut self.stream;
        self.reader.read(stream, |f| decode_response::<R>(f, version, id))
    }

    /// Creates `topic` with `partitions` (an existing topic is fine) and
    /// waits until Metadata shows every partition with a leader.
    pub fn ensure_topic(&mut self, topic: &str, partitions: i32) -> Result<TopicMeta> {
        let version = self.versions.pick(ApiKey::CreateTopics, 7)?;
        let req = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(1)])
            .with_timeout_ms(30_000);
        let resp = self.call(&req, version)?;
        for t in &resp.topics {
            if t.error_code != 0 && t.error_code != TOPIC_ALREADY_EXISTS {
                return Err(Error::Broker(format!(
                    "CreateTopics {topic}: error {} {:?}",
                    t.error_code,
                    t.error_message.as_ref().map(|m| m.to_string())
                )));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let meta = self.metadata(topic)?;
            if meta.partitions.iter().all(|p| p.leader_id >= 0) && !meta.partitions.is_empty() {
                return Ok(meta);
            }
            if Instant::now() > deadline {
                return Err(Error::Broker(format!("topic {topic} has no leaders after 30 s")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metadata(&mut self, topic: &str) -> Result<TopicMeta> {
        let version = self.versions.pick(ApiKey::Metadata, 12)?;
        let req = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
            ]))
            .with_allow_auto_topic_creation(false);
        let resp = self.call(&req, version)?;
        let brokers: HashMap<i32, String> = resp
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let t = resp
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
            .ok_or_else(|| Error::Broker(format!("metadata has no topic {topic}")))?;
        if t.error_code != 0 {
            return Err(Error::Broker(format!(
                "metadata for {topic}: error {}",
                t.error_code
            )));
        }
        let mut partitions: Vec<PartitionMeta> = t
            .partitions
            .iter()
            .map(|p| PartitionMeta {
                partition: p.partition_index,
                leader_id: p.leader_id.0,
                leader_addr: brokers.get(&p.leader_id.0).cloned(),
            })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        Ok(TopicMeta { partitions })
    }

    /// Offsets per partition at `timestamp` (-1 latest, -2 earliest).
    pub fn list_offsets(&mut self, topic: &str, partitions: &[i32], timestamp: i64) -> Result<Vec<i64>> {
        let version = self.versions.pick(ApiKey::ListOffsets, 7)?;
        let req = ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                )]);
        let resp = self.call(&req, version)?;
        let mut offsets = vec![-1i64; partitions.len()];
        for t in &resp.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(Error::Broker(format!(
                        "ListOffsets {topic}/{}: error {}",
                        p.partition_index, p.error_code
                    )));
                }
                if let Some(i) = partitions.iter().position(|&x| x == p.partition_index) {
                    offsets[i] = p.offset;
                }
            }
        }
        if offsets.contains(&-1) {
            return Err(Error::Broker(format!("ListOffsets {topic}: partitions missing")));
        }
        Ok(offsets)
    }
}

pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

#[derive(Clone, Debug)]
pub struct PartitionMeta {
    pub partition: i32,
    pub leader_id: i32,
    pub leader_addr: Option<String>,
}

#[derive(Clone, Debug)]
pub struct TopicMeta {
    pub partitions: Vec<PartitionMeta>,
}

impl TopicMeta {
    /// The one leader every partition has (this tool drives a single
    /// broker for now); falls back to `bootstrap` when the advertised
    /// address is unknown.
    pub fn single_leader(&self, bootstrap: &str) -> Result<String> {
        let mut leaders: Vec<i32> = self.partitions.iter().map(|p| p.leader_id).collect();
        leaders.sort_unstable();
        leaders.dedup();
        if leaders.len() != 1 {
            return Err(Error::Protocol(format!(
                "partitions are led by brokers {leaders:?}; only single-broker runs are supported"
            )));
        }
        Ok(self.partitions[0]
            .leader_addr
            .clone()
            .unwrap_or_else(|| bootstrap.to_string()))
    }

    pub fn partition_ids(&self) -> Vec<i32> {
        self.partitions.iter().map(|p| p.partition).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_takes_the_highest_common_version_up_to_preferred() {
        let v = Versions::from_ranges(&[(ApiKey::Produce, 0, 13), (ApiKey::Fetch, 4, 11)]);
        assert_eq!(v.pick(ApiKey::Produce, 9).unwrap(), 9);
        assert_eq!(v.pick(ApiKey::Fetch, 12).unwrap(), 11);
        assert!(v.pick(ApiKey::Metadata, 12).is_err());
        let old = Versions::from_ranges(&[(ApiKey::Produce, 0, 2)]);
        assert!(old.pick(ApiKey::Produce, 9).is_err(), "crate needs Produce >= 3");
    }

    #[test]
    fn frame_reader_refuses_oversized_frames_and_reuses_its_buffer() {
        let mut data = Vec::new();
        for body in [&b"hello"[..], &b"hi"[..]] {
            data.extend_from_slice(&(body.len() as i32).to_be_bytes());
            data.extend_from_slice(body);
        }
        data.extend_from_slice(&((FRAME_BYTES_MAX + 1) as i32).to_be_bytes());
        let mut input = &data[..];
        let mut reader = FrameReader::default();
        assert_eq!(reader.read(&mut input, |f| Ok(f.to_vec())).unwrap(), b"hello");
        assert_eq!(reader.read(&mut input, |f| Ok(f.to_vec())).unwrap(), b"hi");
        assert!(
            reader.buf.as_ref().is_some_and(|b| b.len() >= 5),
            "buffer reclaimed"
        );
        assert!(matches!(
            reader.read(&mut input, |f| Ok(f.len())),
            Err(Error::Protocol(_))
        ));
    }
}
