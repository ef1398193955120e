//! The wire between nodes' controller shards, on the CONTROLLER listener:
//! length-prefixed frames `[u32 length][u8 kind][payload]` over TCP.
//!
//! - `RAFT`: a raft-rs message (its protobuf encoding), one way. Each node
//!   keeps one outbound connection per other voter (`Peer`), fed by a
//!   bounded queue; a full queue drops its oldest message, which raft
//!   tolerates (it resends what a peer still needs).
//! - `REQUEST`/`RESPONSE`: a broker's heartbeat or a forwarded admin
//!   request, JSON, answered on the same connection (`call`).
//!
//! Lives on: the controller shard. The accept loop belongs to `server`,
//! which hands each accepted connection to `serve_connection`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use event_listener::Event;
use futures::future::LocalBoxFuture;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use protobuf::Message as _;
use raft::prelude::Message;

pub const FRAME_RAFT: u8 = 1;
pub const FRAME_REQUEST: u8 = 2;
pub const FRAME_RESPONSE: u8 = 3;
/// Raft messages queued for one peer before the oldest are dropped.
const PEER_QUEUE_MAX: usize = 1024;
const CONNECT_TIMEOUT_MS: u64 = 1_000;
const RECONNECT_BACKOFF_MS: u64 = 200;

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// A frame's length prefix, refused when empty or longer than `max_bytes`.
fn frame_len(prefix: [u8; 4], max_bytes: usize) -> std::io::Result<usize> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 || len > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("controller frame of {len} bytes (limit {max_bytes})"),
        ));
    }
    Ok(len)
}

/// Splits a frame's body into its kind and payload.
fn split_kind(mut body: Vec<u8>) -> (u8, Vec<u8>) {
    let kind = body.remove(0);
    (kind, body)
}

/// The payload of a RESPONSE frame, or why it is none.
fn response_payload((kind, payload): (u8, Vec<u8>)) -> std::io::Result<Vec<u8>> {
    if kind != FRAME_RESPONSE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("expected a response frame, got kind {kind}"),
        ));
    }
    Ok(payload)
}

/// Reads one frame; refuses one longer than `max_bytes`.
async fn read_frame(stream: &mut TcpStream, max_bytes: usize) -> std::io::Result<(u8, Vec<u8>)> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await?;
    let mut body = vec![0u8; frame_len(prefix, max_bytes)?];
    stream.read_exact(&mut body).await?;
    Ok(split_kind(body))
}

/// Outbound raft messages to one other voter.
pub struct Peer {
    id: i32,
    addr: SocketAddr,
    /// Encoded frames, each marked when it carries a snapshot.
    queue: RefCell<VecDeque<(bool, Vec<u8>)>>,
    queued: Event,
    connected: Cell<bool>,
    /// What became of the last snapshot sent (true: written to the peer's
    /// socket; false: lost), for raft's `report_snapshot`: until raft
    /// hears, it sends that follower nothing else.
    snapshot_outcome: Cell<Option<bool>>,
    /// Messages were lost since raft last heard (`report_unreachable`).
    unreachable: Cell<bool>,
}

impl Peer {
    /// The peer's queue, with its writer task spawned on this executor.
    pub fn start(id: i32, addr: SocketAddr) -> Rc<Peer> {
        let peer = Rc::new(Peer {
            id,
            addr,
            queue: RefCell::new(VecDeque::new()),
            queued: Event::new(),
            connected: Cell::new(false),
            snapshot_outcome: Cell::new(None),
            unreachable: Cell::new(false),
        });
        glommio::spawn_local(peer.clone().write_loop()).detach();
        peer
    }

    pub fn send_raft(&self, m: &Message) {
        let Ok(bytes) = m.write_to_bytes() else { return };
        let is_snapshot = m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot;
        let mut queue = self.queue.borrow_mut();
        if queue.len() >= PEER_QUEUE_MAX {
            if let Some((dropped_snapshot, _)) = queue.pop_front() {
                self.lost(dropped_snapshot);
            }
        }
        queue.push_back((is_snapshot, frame(FRAME_RAFT, &bytes)));
        drop(queue);
        self.queued.notify(1);
    }

    fn lost(&self, snapshot: bool) {
        self.unreachable.set(true);
        if snapshot {
            self.snapshot_outcome.set(Some(false));
        }
    }

    /// True once after messages to this peer were lost.
    pub fn take_unreachable(&self) -> bool {
        self.unreachable.replace(false)
    }

    /// The outcome of the last snapshot sent, once.
    pub fn take_snapshot_outcome(&self) -> Option<bool> {
        self.snapshot_outcome.take()
    }

    async fn write_loop(self: Rc<Self>) {
        loop {
            let connect = TcpStream::connect_timeout(self.addr, Duration::from_millis(CONNECT_TIMEOUT_MS));
            let mut stream = match connect.await {
                Ok(s) => s,
                Err(_) => {
                    if self.connected.replace(false) {
                        tracing::info!("controller {} at {} is unreachable", self.id, self.addr);
                    }
                    // Messages queued while the peer is away are stale by
                    // the time it returns; raft sends fresh ones.
                    let dropped: Vec<bool> = self.queue.borrow_mut().drain(..).map(|(s, _)| s).collect();
                    for snapshot in dropped {
                        self.lost(snapshot);
                    }
                    glommio::timer::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            if !self.connected.replace(true) {
                tracing::info!("connected to controller {} at {}", self.id, self.addr);
            }
            loop {
                let listener = self.queued.listen();
                if self.queue.borrow().is_empty() {
                    // The peer never writes on this connection, so a read
                    // that ends means it closed: reconnect rather than keep
                    // its half-closed socket until the next message.
                    let mut probe = [0u8; 1];
                    let closed = futures::future::select(listener, Box::pin(stream.read(&mut probe))).await;
                    if let futures::future::Either::Right(_) = closed {
                        break;
                    }
                    continue;
                }
                let (snapshots, batch) = {
                    let mut queue = self.queue.borrow_mut();
                    let snapshots = queue.iter().any(|(s, _)| *s);
                    let batch: Vec<u8> = queue.drain(..).flat_map(|(_, f)| f).collect();
                    (snapshots, batch)
                };
                if stream.write_all(&batch).await.is_err() || stream.flush().await.is_err() {
                    self.lost(snapshots);
                    break;
                }
                if snapshots {
                    self.snapshot_outcome.set(Some(true));
                }
            }
        }
    }
}

/// What a node does with an inbound request: JSON in, JSON out.
pub type RequestHandler = Rc<dyn Fn(Vec<u8>) -> LocalBoxFuture<'static, Vec<u8>>>;

/// Serves one inbound connection until the peer closes it or sends damage.
pub async fn serve_connection(
    mut stream: TcpStream,
    on_raft: impl Fn(Message),
    on_request: RequestHandler,
    frame_max_bytes: usize,
) {
    let _ = stream.set_nodelay(true);
    loop {
        let (kind, payload) = match read_frame(&mut stream, frame_max_bytes).await {
            Ok(f) => f,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::info!("controller connection closed: {e}");
                }
                return;
            }
        };
        match kind {
            FRAME_RAFT => match Message::parse_from_bytes(&payload) {
                Ok(m) => on_raft(m),
                Err(e) => {
                    tracing::warn!("controller connection closed: bad raft message: {e}");
                    return;
                }
            },
            FRAME_REQUEST => {
                let answer = on_request(payload).await;
                if stream.write_all(&frame(FRAME_RESPONSE, &answer)).await.is_err() {
                    return;
                }
            }
            other => {
                tracing::warn!("controller connection closed: unknown frame kind {other}");
                return;
            }
        }
    }
}

/// Sends one request to the controller listener at `addr` and waits for
/// its answer, all within `timeout_ms`.
pub async fn call(
    addr: SocketAddr,
    request: &[u8],
    timeout_ms: u64,
    frame_max_bytes: usize,
) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect_timeout(addr, Duration::from_millis(timeout_ms)).await?;
        let _ = stream.set_nodelay(true);
        stream.write_all(&frame(FRAME_REQUEST, request)).await?;
        stream.flush().await?;
        response_payload(read_frame(&mut stream, frame_max_bytes).await?)
    };
    let timeout = glommio::timer::sleep(Duration::from_millis(timeout_ms));
    match futures::future::select(Box::pin(exchange), Box::pin(timeout)).await {
        futures::future::Either::Left((result, _)) => result,
        futures::future::Either::Right(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from {addr} within {timeout_ms} ms"),
        )),
    }
}

/// `call` for a thread that is not an executor (startup, before the shards run).
pub fn call_blocking(
    addr: SocketAddr,
    request: &[u8],
    timeout_ms: u64,
    frame_max_bytes: usize,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let timeout = Duration::from_millis(timeout_ms);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&frame(FRAME_REQUEST, request))?;
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix)?;
    let mut body = vec![0u8; frame_len(prefix, frame_max_bytes)?];
    stream.read_exact(&mut body)?;
    response_payload(split_kind(body))
}
