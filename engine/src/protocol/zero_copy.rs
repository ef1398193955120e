//! Zero-copy Fetch answers: the response frame as a list of chunks (encoded
//! bytes and segment-file ranges), sent by one blocking job that writes the
//! bytes with send(2) and the file ranges with sendfile(2).
//!
//! - **Lives on:** every shard; `encode_fetch` runs on the shard that serves
//!   the connection, `send_chunks` on that shard's blocking-thread pool
//!   (`num.io.threads`), never on the executor: sendfile blocks on page-cache
//!   misses (a cold catch-up read goes to disk) and on a full socket buffer.
//! - **Called by:** `protocol::connection` for a Fetch whose answer holds at
//!   least one `Records::File`.
//!
//! Why by hand: the kafka-protocol crate encodes a response into one buffer,
//! which would copy every record byte. Here only the outer layers (header,
//! top-level fields, topic arrays) are written by hand; each partition is
//! still encoded by the crate, with empty records whose length field is then
//! replaced by the file range's. `tests` proves the frames byte-identical
//! to the crate's for every Fetch version served.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::FetchResponse;
use kafka_protocol::protocol::Encodable;

use crate::storage::{FileSlice, Records};

/// First flexible (compact arrays, tagged fields) Fetch version.
const FLEXIBLE_VERSION: i16 = 12;
/// First Fetch version naming topics by id instead of by name.
const TOPIC_IDS_VERSION: i16 = 13;
/// First Fetch version with top-level error_code and session_id.
const SESSION_VERSION: i16 = 7;

/// File-backed records of a response: (topic index, partition index) in
/// `FetchResponse::responses` -> the slice to send in place of `records`.
pub type FileParts = HashMap<(usize, usize), FileSlice>;

/// The whole response frame (size prefix included) as chunks. Partitions in
/// `files` must have `records == Some(empty)` in `response`.
pub fn encode_fetch(
    correlation_id: i32,
    version: i16,
    response: &FetchResponse,
    files: &FileParts,
) -> anyhow::Result<Vec<Records>> {
    let flexible = version >= FLEXIBLE_VERSION;
    anyhow::ensure!(
        response.node_endpoints.is_empty() && response.unknown_tagged_fields.is_empty(),
        "zero-copy Fetch answers carry no top-level tagged fields"
    );
    let mut chunks = Vec::new();
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0); // frame size, patched below
    buf.put_i32(correlation_id);
    if flexible {
        buf.put_u8(0); // response header tagged fields
    }
    buf.put_i32(response.throttle_time_ms);
    if version >= SESSION_VERSION {
        buf.put_i16(response.error_code);
        buf.put_i32(response.session_id);
    }
    put_array_len(&mut buf, response.responses.len(), flexible);
    for (t, topic) in response.responses.iter().enumerate() {
        anyhow::ensure!(
            topic.unknown_tagged_fields.is_empty(),
            "zero-copy Fetch topics carry no tagged fields"
        );
        if version >= TOPIC_IDS_VERSION {
            buf.put_slice(topic.topic_id.as_bytes());
        } else {
            put_string(&mut buf, topic.topic.as_bytes(), flexible);
        }
        put_array_len(&mut buf, topic.partitions.len(), flexible);
        for (p, partition) in topic.partitions.iter().enumerate() {
            match files.get(&(t, p)) {
                None => partition.encode(&mut buf, version)?,
                Some(slice) => {
                    put_partition_head(&mut buf, partition, version, flexible)?;
                    put_bytes_len(&mut buf, slice.len(), flexible);
                    chunks.push(Records::Memory(buf.split().freeze()));
                    chunks.push(Records::File(slice.clone()));
                    if flexible {
                        buf.put_u8(0); // partition tagged fields
                    }
                }
            }
        }
        if flexible {
            buf.put_u8(0); // topic tagged fields
        }
    }
    if flexible {
        buf.put_u8(0); // top-level tagged fields
    }
    chunks.push(Records::Memory(buf.freeze()));
    let total: usize = chunks.iter().map(Records::len).sum();
    let size = i32::try_from(total - 4).map_err(|_| anyhow::anyhow!("Fetch answer of {total} bytes"))?;
    // The first chunk is always the frame header written above.
    if let Some(Records::Memory(first)) = chunks.first_mut() {
        let mut head = BytesMut::from(&first[..]);
        head[..4].copy_from_slice(&size.to_be_bytes());
        *first = head.freeze();
    }
    Ok(chunks)
}

/// A partition's encoding up to (not including) its records length: the
/// crate encodes it with empty records, and the empty-records suffix
/// (`records` length 0, then the tagged-fields count when flexible) is cut.
fn put_partition_head(
    buf: &mut BytesMut,
    partition: &PartitionData,
    version: i16,
    flexible: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        partition.records.as_ref().is_some_and(Bytes::is_empty),
        "a file-backed partition is encoded with empty records"
    );
    let before = buf.len();
    partition.encode(buf, version)?;
    let suffix: &[u8] = if flexible { &[1, 0] } else { &[0, 0, 0, 0] };
    anyhow::ensure!(
        buf.len() - before >= suffix.len() && buf.ends_with(suffix),
        "unexpected partition encoding (tagged fields set?)"
    );
    buf.truncate(buf.len() - suffix.len());
    Ok(())
}

fn put_uvarint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn put_array_len(buf: &mut BytesMut, len: usize, flexible: bool) {
    if flexible {
        put_uvarint(buf, len as u64 + 1);
    } else {
        buf.put_i32(len as i32);
    }
}

fn put_bytes_len(buf: &mut BytesMut, len: usize, flexible: bool) {
    put_array_len(buf, len, flexible);
}

fn put_string(buf: &mut BytesMut, s: &[u8], flexible: bool) {
    if flexible {
        put_uvarint(buf, s.len() as u64 + 1);
    } else {
        buf.put_i16(s.len() as i16);
    }
    buf.put_slice(s);
}

/// Writes every chunk, in order, to the connection's socket. Blocking: runs
/// on the blocking-thread pool only. The socket has SO_SNDTIMEO set
/// (`socket.send.timeout.ms`), so a client that stops reading fails the
/// send instead of holding the thread. Any error leaves a partial frame on
/// the wire: the caller must close the connection.
pub fn send_chunks(socket: RawFd, chunks: &[Records]) -> io::Result<()> {
    for chunk in chunks {
        match chunk {
            Records::Memory(bytes) => send_all(socket, bytes)?,
            Records::File(slice) => sendfile_all(socket, slice)?,
        }
    }
    Ok(())
}

fn send_all(socket: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length come from a live slice; MSG_NOSIGNAL
        // turns a closed peer into EPIPE instead of a signal.
        let n = unsafe { libc::send(socket, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Err(timed_out()),
                _ => return Err(e),
            }
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

fn sendfile_all(socket: RawFd, slice: &FileSlice) -> io::Result<()> {
    let mut offset = libc::off_t::try_from(slice.position())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file position out of range"))?;
    let mut left = slice.len();
    while left > 0 {
        // SAFETY: both fds are open for the whole call (the slice owns its
        // file; the caller keeps the socket open until this returns) and
        // `offset` is a valid out-pointer.
        let n = unsafe { libc::sendfile(socket, slice.raw_fd(), &mut offset, left) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Err(timed_out()),
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment file ended inside a committed range",
            ));
        }
        left -= n as usize;
    }
    Ok(())
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "client read nothing for socket.send.timeout.ms",
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse};
    use kafka_protocol::messages::{BrokerId, ResponseHeader};
    use kafka_protocol::protocol::{HeaderVersion, StrBytes};

    use super::*;

    fn partition(index: i32, records: Bytes) -> PartitionData {
        PartitionData::default()
            .with_partition_index(index)
            .with_high_watermark(1000 + i64::from(index))
            .with_last_stable_offset(999)
            .with_log_start_offset(7)
            .with_preferred_read_replica(BrokerId(-1))
            .with_aborted_transactions(Some(vec![AbortedTransaction::default()
                .with_producer_id(kafka_protocol::messages::ProducerId(5))
                .with_first_offset(6)]))
            .with_records(Some(records))
    }

    /// The crate's encoding of the same response, frame size included.
    fn crate_frame(correlation_id: i32, version: i16, response: &FetchResponse) -> Vec<u8> {
        let header = ResponseHeader::default().with_correlation_id(correlation_id);
        let header_version = FetchResponse::header_version(version);
        let mut body = BytesMut::new();
        header.encode(&mut body, header_version).unwrap();
        response.encode(&mut body, version).unwrap();
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn frames_match_the_crate_for_every_served_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment.log");
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::File::create(&path).unwrap().write_all(&payload).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        let slices = [(3usize, 200usize), (1000, 129), (4096, 200_000)];
        for version in 4..=18i16 {
            let mut inline = FetchResponse::default()
                .with_throttle_time_ms(3)
                .with_error_code(0)
                .with_session_id(if version >= SESSION_VERSION { 42 } else { 0 });
            let mut zero_copy = inline.clone();
            let mut files = FileParts::new();
            for t in 0..2usize {
                let mut topic = FetchableTopicResponse::default();
                if version >= TOPIC_IDS_VERSION {
                    topic.topic_id = uuid::Uuid::from_u128(0x1234 + t as u128);
                } else {
                    topic.topic =
                        kafka_protocol::messages::TopicName(StrBytes::from_string(format!("topic-{t}")));
                }
                let mut zc_topic = topic.clone();
                for p in 0..3usize {
                    let (position, len) = slices[(t + p) % slices.len()];
                    let bytes = Bytes::copy_from_slice(&payload[position..position + len]);
                    topic.partitions.push(partition(p as i32, bytes.clone()));
                    if p == 1 {
                        // One in-memory partition between file-backed ones.
                        zc_topic.partitions.push(partition(p as i32, bytes));
                    } else {
                        zc_topic.partitions.push(partition(p as i32, Bytes::new()));
                        let slice = FileSlice::reopen(file.as_raw_fd(), position as u64, len, None).unwrap();
                        files.insert((t, p), slice);
                    }
                }
                inline.responses.push(topic);
                zero_copy.responses.push(zc_topic);
            }
            let expected = crate_frame(77, version, &inline);
            let chunks = encode_fetch(77, version, &zero_copy, &files).unwrap();
            assert!(chunks.iter().any(Records::is_file));
            let mut got = Vec::new();
            for chunk in &chunks {
                got.extend_from_slice(&chunk.to_bytes().unwrap());
            }
            assert_eq!(got, expected, "Fetch v{version}");
        }
    }

    #[test]
    fn send_chunks_writes_bytes_and_file_ranges_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment.log");
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &payload).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let chunks = vec![
            Records::Memory(Bytes::from_static(b"head")),
            Records::File(FileSlice::reopen(file.as_raw_fd(), 10, 900_000, None).unwrap()),
            Records::Memory(Bytes::from_static(b"tail")),
        ];
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut &client, &mut got).unwrap();
            got
        });
        send_chunks(server.as_raw_fd(), &chunks).unwrap();
        drop(server);
        let got = reader.join().unwrap();
        let mut expected = b"head".to_vec();
        expected.extend_from_slice(&payload[10..900_010]);
        expected.extend_from_slice(b"tail");
        assert_eq!(got, expected);
    }
}
