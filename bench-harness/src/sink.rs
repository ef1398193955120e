//! A fake broker for `sink-test`: accepts Kafka connections on loopback and
//! answers ApiVersions, Metadata, CreateTopics and Produce (success, nothing
//! stored). Its per-request work is a header decode plus a zero-copy
//! Produce decode, so a produce run against it measures the tool itself.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, CreateTopicsRequest, CreateTopicsResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable, Encodable, StrBytes};

use crate::wire::{self, protocol_error, Error, FrameReader, Result};

/// Connections the sink serves at once; more are closed on accept.
const CONNECTIONS_MAX: usize = 256;

const SERVED: [(ApiKey, i16, i16); 4] = [
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::Produce, 3, 9),
];

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    connections: AtomicU64,
    produce_requests: AtomicU64,
    produce_bytes: AtomicU64,
    topics: Mutex<HashMap<String, i32>>,
}

pub struct FakeBroker {
    pub addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    default_partitions: i32,
}

impl FakeBroker {
    /// Binds 127.0.0.1 on a free port and starts accepting.
    pub fn start(default_partitions: i32) -> Result<FakeBroker> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared::default());
        let accept = {
            let shared = Arc::clone(&shared);
            let addr = addr.clone();
            std::thread::spawn(move || accept_loop(listener, shared, addr, default_partitions))
        };
        Ok(FakeBroker {
            addr,
            shared,
            accept: Some(accept),
            default_partitions,
        })
    }

    pub fn produce_requests(&self) -> u64 {
        self.shared.produce_requests.load(Ordering::Relaxed)
    }

    /// Bytes of Produce frames received.
    pub fn produce_bytes(&self) -> u64 {
        self.shared.produce_bytes.load(Ordering::Relaxed)
    }

    pub fn default_partitions(&self) -> i32 {
        self.default_partitions
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Polls for connections until stopped (10 ms granularity).
fn accept_loop(listener: TcpListener, shared: Arc<Shared>, addr: String, default_partitions: i32) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if shared.connections.load(Ordering::Relaxed) >= CONNECTIONS_MAX as u64 {
                    continue; // dropped: closes the connection
                }
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let shared = Arc::clone(&shared);
                let addr = addr.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(stream, &shared, &addr, default_partitions) {
                        if !matches!(&e, Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof) {
                            eprintln!("sink connection: {e}");
                        }
                    }
                    shared.connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                eprintln!("sink accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Serves one connection until the peer closes it (or a read times out).
fn serve(stream: TcpStream, shared: &Shared, addr: &str, default_partitions: i32) -> Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(wire::SOCKET_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(256 << 10, stream);
    let mut frames = FrameReader::default();
    let mut out = Vec::with_capacity(4096);
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| Error::Protocol(addr.into()))?;
    let port: i32 = port.parse().map_err(|e| protocol_error("port", e))?;
    loop {
        out.clear();
        let respond = frames.read(&mut reader, |mut frame| {
            let size = frame.len() as u64;
            let header =
                decode_request_header_from_buffer(&mut frame).map_err(|e| protocol_error("header", e))?;
            let key = ApiKey::try_from(header.request_api_key)
                .map_err(|_| Error::Protocol(format!("api key {}", header.request_api_key)))?;
            let version = header.request_api_version;
            match key {
                ApiKey::ApiVersions => {
                    let resp = ApiVersionsResponse::default().with_api_keys(
                        SERVED
                            .iter()
                            .map(|&(k, lo, hi)| {
                                ApiVersion::default()
                                    .with_api_key(k as i16)
                                    .with_min_version(lo)
                                    .with_max_version(hi)
                            })
                            .collect(),
                    );
                    // ApiVersions responses always use header v0.
                    respond_with(&mut out, &header, key, version.min(3), &resp)?;
                }
                ApiKey::Metadata => {
                    let req =
                        MetadataRequest::decode(&mut frame, version).map_err(|e| protocol_error("md", e))?;
                    let topics = shared.topics.lock().expect("topics lock").clone();
                    let resp = MetadataResponse::default()
                        .with_brokers(vec![MetadataResponseBroker::default()
                            .with_node_id(0.into())
                            .with_host(StrBytes::from_string(host.to_string()))
                            .with_port(port)])
                        .with_controller_id(0.into())
                        .with_topics(
                            req.topics
                                .unwrap_or_default()
                                .into_iter()
                                .filter_map(|t| t.name)
                                .map(|name| {
                                    let n =
                                        topics.get(name.0.as_str()).copied().unwrap_or(default_partitions);
                                    MetadataResponseTopic::default()
                                        .with_name(Some(name))
                                        .with_partitions(
                                            (0..n)
                                                .map(|p| {
                                                    MetadataResponsePartition::default()
                                                        .with_partition_index(p)
                                                        .with_leader_id(0.into())
                                                        .with_replica_nodes(vec![0.into()])
                                                        .with_isr_nodes(vec![0.into()])
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        );
                    respond_with(&mut out, &header, key, version, &resp)?;
                }
                ApiKey::CreateTopics => {
                    let req = CreateTopicsRequest::decode(&mut frame, version)
                        .map_err(|e| protocol_error("ct", e))?;
                    let mut topics = shared.topics.lock().expect("topics lock");
                    let results = req
                        .topics
                        .into_iter()
                        .map(|t| {
                            topics.insert(t.name.0.to_string(), t.num_partitions.max(1));
                            CreatableTopicResult::default()
                                .with_name(t.name)
                                .with_num_partitions(t.num_partitions)
                        })
                        .collect();
                    drop(topics);
                    respond_with(
                        &mut out,
                        &header,
                        key,
                        version,
                        &CreateTopicsResponse::default().with_topics(results),
                    )?;
                }
                ApiKey::Produce => {
                    let req = ProduceRequest::decode(&mut frame, version)
                        .map_err(|e| protocol_error("produce", e))?;
                    shared.produce_requests.fetch_add(1, Ordering::Relaxed);
                    shared.produce_bytes.fetch_add(size, Ordering::Relaxed);
                    if req.acks != 0 {
                        let resp = ProduceResponse::default().with_responses(
                            req.topic_data
                                .into_iter()
                                .map(|t| {
                                    TopicProduceResponse::default()
                                        .with_name(t.name)
                                        .with_partition_responses(
                                            t.partition_data
                                                .iter()
                                                .map(|p| {
                                                    PartitionProduceResponse::default()
                                                        .with_index(p.index)
                                                        .with_base_offset(0)
                                                        .with_log_append_time_ms(-1)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        );
                        respond_with(&mut out, &header, key, version, &resp)?;
                    }
                }
                _ => return Err(Error::Protocol(format!("sink does not serve {key:?}"))),
            }
            Ok(())
        });
        respond?;
        if !out.is_empty() {
            writer.write_all(&out)?;
        }
    }
}

fn respond_with<M: Encodable>(
    out: &mut Vec<u8>,
    req: &RequestHeader,
    key: ApiKey,
    version: i16,
    body: &M,
) -> Result<()> {
    out.extend_from_slice(&[0; 4]);
    ResponseHeader::default()
        .with_correlation_id(req.correlation_id)
        .encode(out, key.response_header_version(version))
        .map_err(|e| protocol_error("encode response header", e))?;
    body.encode(out, version)
        .map_err(|e| protocol_error("encode response", e))?;
    let size = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}
