//! Kafka framing over blocking `TcpStream`s, version negotiation, the
//! admin calls the benchmark needs (ApiVersions, Metadata, CreateTopics,
//! ListOffsets) and routing: which broker leads which partition (`Route`,
//! `Cluster`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
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
// Error codes routing reacts to (Kafka's `Errors`).
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const LEADER_NOT_AVAILABLE: i16 = 5;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// How long a run waits at its start for every partition to have a leader
/// that serves it (a new topic's leaders appear a little after
/// CreateTopics returns, on other nodes a little later still).
pub const LEADER_WAIT: Duration = Duration::from_secs(30);
/// Pause between Metadata refreshes while waiting for leaders.
const LEADER_RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// Codes meaning "ask Metadata again, the leader is not (yet) here":
/// during the start-up wait only; mid-run they end the run (`Error::NotLeader`).
pub fn leader_moved(code: i16) -> bool {
    matches!(
        code,
        UNKNOWN_TOPIC_OR_PARTITION | LEADER_NOT_AVAILABLE | NOT_LEADER_OR_FOLLOWER
    )
}

#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// Malformed or unexpected bytes from the peer, or an encode failure.
    Protocol(String),
    /// The broker answered with an error code.
    Broker(String),
    /// A broker answered NOT_LEADER_OR_FOLLOWER during a run: it no longer
    /// leads a partition Metadata said it led at the start (fenced, or
    /// leadership moved). Runs stop on it rather than re-route (see `Cluster`).
    NotLeader {
        /// The request that was refused: "Produce" or "Fetch".
        request: &'static str,
        topic: String,
        partition: i32,
        leader_id: i32,
        addr: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o: {e}"),
            Error::Protocol(m) => write!(f, "protocol: {m}"),
            Error::Broker(m) => write!(f, "broker: {m}"),
            Error::NotLeader {
                request,
                topic,
                partition,
                leader_id,
                addr,
            } => write!(
                f,
                "broker: {request} {topic}/{partition}: NOT_LEADER_OR_FOLLOWER from broker {leader_id} at {addr}, \
                 which Metadata named its leader at the start: it stopped leading the partition during \
                 the run (fenced, or leadership moved), and shardlog-bench does not retry or re-route mid-run"
            ),
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
    /// The address it was opened with ("host:port"), for error messages
    /// and as the leader address of a broker whose Metadata lists no brokers.
    pub addr: String,
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
            addr: addr.to_string(),
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
        self.create_topic(topic, partitions)?;
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let meta = self.metadata(topic)?;
            if meta.partitions.iter().all(|p| p.leader_id >= 0) && !meta.partitions.is_empty() {
                return Ok(meta);
            }
            if Instant::now() > deadline {
                return Err(Error::Broker(format!(
                    "topic {topic} has no leaders after {} s",
                    LEADER_WAIT.as_secs()
                )));
            }
            std::thread::sleep(LEADER_RETRY_BACKOFF);
        }
    }

    /// CreateTopics for `topic` with `partitions` (replication factor 1);
    /// an existing topic is fine. Does not wait for leaders.
    pub fn create_topic(&mut self, topic: &str, partitions: i32) -> Result<()> {
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
        Ok(())
    }

    /// `topic`'s partitions and leaders; a topic-level error is an `Err`.
    pub fn metadata(&mut self, topic: &str) -> Result<TopicMeta> {
        self.topic_metadata(topic)?
            .map_err(|code| Error::Broker(format!("metadata for {topic}: error {code}")))
    }

    /// `topic`'s partitions and leaders, or its topic-level error code
    /// (UNKNOWN_TOPIC_OR_PARTITION when the answer leaves it out).
    pub fn topic_metadata(&mut self, topic: &str) -> Result<std::result::Result<TopicMeta, i16>> {
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
        let Some(t) = resp
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
        else {
            return Ok(Err(UNKNOWN_TOPIC_OR_PARTITION));
        };
        if t.error_code != 0 {
            return Ok(Err(t.error_code));
        }
        // A broker that lists no brokers at all can only mean itself (what
        // this tool assumed before it routed by leader).
        let leader_addr = |id: i32| {
            if resp.brokers.is_empty() && id >= 0 {
                Some(self.addr.clone())
            } else {
                brokers.get(&id).cloned()
            }
        };
        let mut partitions: Vec<PartitionMeta> = t
            .partitions
            .iter()
            .map(|p| PartitionMeta {
                partition: p.partition_index,
                leader_id: p.leader_id.0,
                leader_addr: leader_addr(p.leader_id.0),
            })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        Ok(Ok(TopicMeta { partitions }))
    }

    /// Offsets per partition at `timestamp` (-1 latest, -2 earliest).
    pub fn list_offsets(&mut self, topic: &str, partitions: &[i32], timestamp: i64) -> Result<Vec<i64>> {
        self.list_offsets_codes(topic, partitions, timestamp)?
            .into_iter()
            .zip(partitions)
            .map(|((code, offset), p)| {
                if code != 0 {
                    return Err(Error::Broker(format!("ListOffsets {topic}/{p}: error {code}")));
                }
                Ok(offset)
            })
            .collect()
    }

    /// (error code, offset) per partition at `timestamp`, aligned with
    /// `partitions`; a partition the answer leaves out (or answers with no
    /// error and no offset) is an `Err`.
    pub fn list_offsets_codes(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<(i16, i64)>> {
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
        let mut answers: Vec<Option<(i16, i64)>> = vec![None; partitions.len()];
        for t in &resp.topics {
            for p in &t.partitions {
                if let Some(i) = partitions.iter().position(|&x| x == p.partition_index) {
                    answers[i] = Some((p.error_code, p.offset));
                }
            }
        }
        answers
            .into_iter()
            .map(|a| match a {
                Some((0, -1)) | None => {
                    Err(Error::Broker(format!("ListOffsets {topic}: partitions missing")))
                }
                Some(a) => Ok(a),
            })
            .collect()
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
    pub fn partition_ids(&self) -> Vec<i32> {
        self.partitions.iter().map(|p| p.partition).collect()
    }
}

/// A partition of one of the run's topics: (index into the topic list, id).
pub type TopicPartition = (usize, i32);

/// One broker and the partitions it leads: what its connections carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub leader_id: i32,
    /// "host:port" as Metadata advertises it.
    pub addr: String,
    /// Sorted by (topic index, partition id).
    pub partitions: Vec<TopicPartition>,
}

/// Groups the partitions of `topics` (Metadata per topic, index = topic
/// index) by leader, routes sorted by leader id. Partitions that cannot be
/// routed (leader -1, or a leader Metadata gives no address for) are the
/// `Err`, as (partition, leader id), so the caller can wait and ask again.
pub fn group_by_leader(topics: &[TopicMeta]) -> std::result::Result<Vec<Route>, Vec<(TopicPartition, i32)>> {
    let mut routes: BTreeMap<i32, Route> = BTreeMap::new();
    let mut unroutable = Vec::new();
    for (t, meta) in topics.iter().enumerate() {
        for p in &meta.partitions {
            let tp = (t, p.partition);
            match &p.leader_addr {
                Some(addr) if p.leader_id >= 0 => routes
                    .entry(p.leader_id)
                    .or_insert_with(|| Route {
                        leader_id: p.leader_id,
                        addr: addr.clone(),
                        partitions: Vec::new(),
                    })
                    .partitions
                    .push(tp),
                _ => unroutable.push((tp, p.leader_id)),
            }
        }
    }
    if !unroutable.is_empty() {
        return Err(unroutable);
    }
    let mut routes: Vec<Route> = routes.into_values().collect();
    for r in &mut routes {
        r.partitions.sort_unstable();
    }
    Ok(routes)
}

/// Control-plane view of a cluster for one run: Metadata from the
/// bootstrap broker, partitions grouped by leader (`routes`), ListOffsets
/// sent to each partition's leader.
///
/// Leaders are waited for at the start only (bounded by `LEADER_WAIT`): a
/// partition without a leader, or whose leader does not serve it yet,
/// makes it refresh Metadata and try again. Load connections are routed
/// once, from `routes`; a NOT_LEADER_OR_FOLLOWER during the run fails the
/// run (`Error::NotLeader`, worded by `explain`) instead of re-routing:
/// with replication factor 1 a partition has one replica, so Metadata can
/// only name the same broker again (once it is back, e.g. unfenced) or
/// none; there is nowhere else to send its records, and waiting and
/// resending refused batches would measure an outage, not the load asked for.
pub struct Cluster {
    pub topics: Vec<String>,
    /// Metadata per topic (index = topic index) as last read.
    pub metas: Vec<TopicMeta>,
    pub routes: Vec<Route>,
    /// Control connections: [0] to the bootstrap broker, then one per other
    /// leader, opened when first needed. A leader whose address resolves to
    /// an open connection's peer reuses it, so a single broker still gets
    /// one control connection.
    conns: Vec<Conn>,
}

impl Cluster {
    /// Connects to `bootstrap`, creates the topics with `create_partitions`
    /// each when given (existing ones are fine), and waits until every
    /// partition of every topic has a routable leader.
    pub fn open(bootstrap: &str, topics: Vec<String>, create_partitions: Option<i32>) -> Result<Cluster> {
        let mut conn = Conn::open(bootstrap)?;
        if let Some(partitions) = create_partitions {
            for topic in &topics {
                conn.create_topic(topic, partitions)?;
            }
        }
        let mut cluster = Cluster {
            topics,
            metas: Vec::new(),
            routes: Vec::new(),
            conns: vec![conn],
        };
        cluster.refresh(create_partitions.is_some())?;
        Ok(cluster)
    }

    /// Every (topic, partition) of the run's topics, topic by topic.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        self.metas
            .iter()
            .enumerate()
            .flat_map(|(t, m)| m.partitions.iter().map(move |p| (t, p.partition)))
            .collect()
    }

    /// Reads Metadata for every topic until every partition is routable
    /// (bounded by `LEADER_WAIT`). `created`: the topics were just created,
    /// so a topic-level "unknown" or "no leader" from a broker that has not
    /// caught up is waited out too rather than fatal.
    fn refresh(&mut self, created: bool) -> Result<()> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let why = match self.read_metadata(created)? {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() > deadline {
                return Err(Error::Broker(format!(
                    "{why}, still after {} s of Metadata refreshes from {}",
                    LEADER_WAIT.as_secs(),
                    self.conns[0].addr
                )));
            }
            std::thread::sleep(LEADER_RETRY_BACKOFF);
        }
    }

    /// One Metadata pass: Ok(Ok) when every partition is routable (routes
    /// updated), Ok(Err(what is missing)) when waiting may help.
    fn read_metadata(&mut self, created: bool) -> Result<std::result::Result<(), String>> {
        let mut metas = Vec::with_capacity(self.topics.len());
        for topic in &self.topics {
            match self.conns[0].topic_metadata(topic)? {
                Ok(meta) if meta.partitions.is_empty() => {
                    return Ok(Err(format!("topic {topic} has no partitions in Metadata")))
                }
                Ok(meta) => metas.push(meta),
                Err(code) if created && leader_moved(code) => {
                    return Ok(Err(format!("Metadata for {topic}: error {code}")))
                }
                Err(code) => return Err(Error::Broker(format!("metadata for {topic}: error {code}"))),
            }
        }
        match group_by_leader(&metas) {
            Ok(routes) => {
                self.metas = metas;
                self.routes = routes;
                Ok(Ok(()))
            }
            Err(unroutable) => Ok(Err(describe_unroutable(&self.topics, &unroutable))),
        }
    }

    /// The control connection for `addr`: an open one to it, else a new one.
    fn conn_to(&mut self, addr: &str) -> Result<&mut Conn> {
        let at = match self.conn_index(addr)? {
            Some(i) => i,
            None => {
                self.conns.push(Conn::open(addr)?);
                self.conns.len() - 1
            }
        };
        Ok(&mut self.conns[at])
    }

    /// The open connection opened with `addr`, or whose peer `addr` resolves to.
    fn conn_index(&self, addr: &str) -> Result<Option<usize>> {
        if let Some(i) = self.conns.iter().position(|c| c.addr == addr) {
            return Ok(Some(i));
        }
        let wanted: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        Ok(self
            .conns
            .iter()
            .position(|c| c.stream.peer_addr().is_ok_and(|peer| wanted.contains(&peer))))
    }

    /// Checks, before any load starts, that every leader other than the
    /// bootstrap broker serves its partitions (ListOffsets, retried as
    /// `offsets_at` does): a node may learn that it leads a new partition a
    /// little after the node that answered Metadata. The bootstrap broker
    /// answered Metadata itself and is not asked, so a single broker sees no
    /// extra request.
    pub fn confirm_leaders(&mut self) -> Result<()> {
        let mut elsewhere = Vec::new();
        for r in &self.routes {
            if self.conn_index(&r.addr)? != Some(0) {
                elsewhere.extend(r.partitions.iter().copied());
            }
        }
        if !elsewhere.is_empty() {
            self.offsets_at(&elsewhere, -1)?;
        }
        Ok(())
    }

    /// Offsets at `timestamp` (-1 latest, -2 earliest) aligned with
    /// `partitions`: one ListOffsets per (leader, topic). A partition its
    /// broker does not lead (yet) refreshes Metadata and retries, bounded by
    /// `LEADER_WAIT`.
    pub fn offsets_at(&mut self, partitions: &[TopicPartition], timestamp: i64) -> Result<Vec<i64>> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let why = match self.try_offsets_at(partitions, timestamp)? {
                Ok(offsets) => return Ok(offsets),
                Err(why) => why,
            };
            if Instant::now() > deadline {
                return Err(Error::Broker(format!(
                    "{why}, still after {} s of Metadata refreshes",
                    LEADER_WAIT.as_secs()
                )));
            }
            std::thread::sleep(LEADER_RETRY_BACKOFF);
            self.refresh(false)?;
        }
    }

    /// One pass of `offsets_at`: Ok(Err(why)) when a leader refused a
    /// partition with a code that a Metadata refresh may fix.
    fn try_offsets_at(
        &mut self,
        partitions: &[TopicPartition],
        timestamp: i64,
    ) -> Result<std::result::Result<Vec<i64>, String>> {
        let mut found: HashMap<TopicPartition, i64> = HashMap::with_capacity(partitions.len());
        for route in self.routes.clone() {
            // This leader's share of `partitions`, per topic.
            let mut by_topic: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
            for tp in partitions {
                if route.partitions.binary_search(tp).is_ok() {
                    by_topic.entry(tp.0).or_default().push(tp.1);
                }
            }
            for (t, ids) in by_topic {
                let topic = self.topics[t].clone();
                let answers = self
                    .conn_to(&route.addr)?
                    .list_offsets_codes(&topic, &ids, timestamp)?;
                for (&p, (code, offset)) in ids.iter().zip(answers) {
                    match code {
                        0 => {
                            found.insert((t, p), offset);
                        }
                        code if leader_moved(code) => {
                            return Ok(Err(format!(
                                "ListOffsets {topic}/{p}: error {code} from broker {} at {}, its leader in Metadata",
                                route.leader_id, route.addr
                            )))
                        }
                        code => return Err(Error::Broker(format!("ListOffsets {topic}/{p}: error {code}"))),
                    }
                }
            }
        }
        let mut offsets = Vec::with_capacity(partitions.len());
        for tp in partitions {
            match found.get(tp) {
                Some(&o) => offsets.push(o),
                None => {
                    return Err(Error::Protocol(format!(
                        "no offset for {}/{}: not in Metadata",
                        self.topics[tp.0], tp.1
                    )))
                }
            }
        }
        Ok(Ok(offsets))
    }

    /// Words a mid-run `Error::NotLeader` with what Metadata names as the
    /// partition's leader now; other errors pass unchanged.
    pub fn explain(&mut self, e: Error) -> Error {
        let Error::NotLeader { topic, partition, .. } = &e else {
            return e;
        };
        let now = match self.conns[0].metadata(topic) {
            Ok(meta) => match meta.partitions.iter().find(|p| p.partition == *partition) {
                Some(p) if p.leader_id >= 0 => format!("broker {}", p.leader_id),
                Some(_) => "no leader (-1)".to_string(),
                None => "no such partition".to_string(),
            },
            Err(m) => format!("nothing ({m})"),
        };
        let said = e.to_string();
        Error::Broker(format!(
            "{}; Metadata now names {now} as its leader",
            said.trim_start_matches("broker: ")
        ))
    }
}

/// What keeps partitions unroutable, for the wait's error: partitions
/// without a leader per topic, and leaders with no address.
fn describe_unroutable(topics: &[String], unroutable: &[(TopicPartition, i32)]) -> String {
    let mut no_leader: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    let mut no_addr: BTreeMap<i32, usize> = BTreeMap::new();
    for &((t, p), leader) in unroutable {
        if leader < 0 {
            no_leader.entry(topics[t].as_str()).or_default().push(p);
        } else {
            *no_addr.entry(leader).or_default() += 1;
        }
    }
    let mut parts: Vec<String> = no_leader
        .iter()
        .map(|(t, ps)| format!("topic {t} partitions {ps:?} have no leader (-1)"))
        .collect();
    parts.extend(
        no_addr
            .iter()
            .map(|(b, n)| format!("broker {b} leads {n} partitions but Metadata lists no address for it")),
    );
    parts.join("; ")
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

    fn meta(partitions: &[(i32, i32)], brokers: &[(i32, &str)]) -> TopicMeta {
        TopicMeta {
            partitions: partitions
                .iter()
                .map(|&(partition, leader_id)| PartitionMeta {
                    partition,
                    leader_id,
                    leader_addr: brokers
                        .iter()
                        .find(|(id, _)| *id == leader_id)
                        .map(|(_, a)| a.to_string()),
                })
                .collect(),
        }
    }

    #[test]
    fn partitions_are_grouped_by_leader_across_topics() {
        let brokers = [(1, "h1:9092"), (2, "h2:9094"), (3, "h3:9096")];
        // Topic 0: 6 partitions round-robin over 3 nodes; topic 1: 2
        // partitions on nodes 3 and 1, listed out of order.
        let topics = [
            meta(&[(0, 1), (1, 2), (2, 3), (3, 1), (4, 2), (5, 3)], &brokers),
            meta(&[(1, 1), (0, 3)], &brokers),
        ];
        let routes = group_by_leader(&topics).unwrap();
        assert_eq!(
            routes,
            vec![
                Route {
                    leader_id: 1,
                    addr: "h1:9092".into(),
                    partitions: vec![(0, 0), (0, 3), (1, 1)],
                },
                Route {
                    leader_id: 2,
                    addr: "h2:9094".into(),
                    partitions: vec![(0, 1), (0, 4)],
                },
                Route {
                    leader_id: 3,
                    addr: "h3:9096".into(),
                    partitions: vec![(0, 2), (0, 5), (1, 0)],
                },
            ]
        );
        // Every partition lands in exactly one route.
        let total: usize = routes.iter().map(|r| r.partitions.len()).sum();
        assert_eq!(total, 8);
    }

    #[test]
    fn a_single_broker_is_one_route_with_every_partition() {
        let topics = [meta(&[(0, 0), (1, 0), (2, 0)], &[(0, "127.0.0.1:9092")])];
        let routes = group_by_leader(&topics).unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].partitions, vec![(0, 0), (0, 1), (0, 2)]);
    }

    #[test]
    fn leaderless_and_addressless_partitions_are_not_routed() {
        // Partition 1 has no leader; partition 2's leader (4) is not listed.
        let topics = [meta(&[(0, 1), (1, -1), (2, 4)], &[(1, "h1:1")])];
        let unroutable = group_by_leader(&topics).unwrap_err();
        assert_eq!(unroutable, vec![((0, 1), -1), ((0, 2), 4)]);
        let why = describe_unroutable(&["t".to_string()], &unroutable);
        assert!(
            why.contains("topic t partitions [1] have no leader (-1)"),
            "{why}"
        );
        assert!(
            why.contains("broker 4 leads 1 partitions but Metadata lists no address"),
            "{why}"
        );
    }

    #[test]
    fn not_leader_errors_name_the_partition_and_the_broker() {
        let e = Error::NotLeader {
            request: "Produce",
            topic: "t".into(),
            partition: 3,
            leader_id: 2,
            addr: "h2:9094".into(),
        };
        let m = e.to_string();
        assert!(
            m.contains("Produce t/3: NOT_LEADER_OR_FOLLOWER from broker 2 at h2:9094"),
            "{m}"
        );
        assert!(leader_moved(NOT_LEADER_OR_FOLLOWER) && !leader_moved(0));
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
