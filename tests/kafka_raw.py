"""Minimal hand-written Kafka wire-protocol encoder/decoder for raw-socket tests.

Only what the bad-input tests need:
  * request framing (int32 size + request header v1, or v2 for flexible ApiVersions)
  * ApiVersions v0 request/response (also the v0-format fallback answer)
  * Metadata v1 request/response
  * Produce v3 request/response (non-flexible)
  * RecordBatch v2 (magic 2) builder with varints and a pure-Python CRC-32C

Everything here is deliberately independent of any Kafka client library, so
that the broker is checked against the protocol, not against a client's quirks.
"""

import socket
import struct
import time

# --- API keys and error codes ------------------------------------------------

PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
API_VERSIONS = 18
CREATE_TOPICS = 19

NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
INVALID_TOPIC_EXCEPTION = 17
UNSUPPORTED_VERSION = 35
INVALID_REQUEST = 42

# --- CRC-32C (Castagnoli), table driven, reflected poly 0x82F63B78 -----------

_CRC32C_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)
del _i, _c


def crc32c(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283, "crc32c self-check (RFC 3720 check value)"

# --- primitive encoders ---------------------------------------------------------


def int8(v):
    return struct.pack(">b", v)


def int16(v):
    return struct.pack(">h", v)


def int32(v):
    return struct.pack(">i", v)


def int64(v):
    return struct.pack(">q", v)


def string(s):
    if s is None:
        return int16(-1)
    b = s.encode() if isinstance(s, str) else s
    return int16(len(b)) + b


def nbytes(b):
    if b is None:
        return int32(-1)
    return int32(len(b)) + b


def array(items, enc):
    if items is None:
        return int32(-1)
    return int32(len(items)) + b"".join(enc(i) for i in items)


def uvarint(v):
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint(v):
    # zig-zag encoding, as used inside v2 records
    return uvarint((v << 1) ^ (v >> 63))


def compact_string(s):
    b = s.encode()
    return uvarint(len(b) + 1) + b


def compact_array(items, enc):
    """A flexible-version array; None encodes as null."""
    if items is None:
        return uvarint(0)
    return uvarint(len(items) + 1) + b"".join(enc(i) for i in items)


TAGS = uvarint(0)  # no tagged fields


# --- decoder ------------------------------------------------------------------


class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError(f"short response: need {n} bytes at {self.pos}, have {len(self.data)}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def int8(self):
        return struct.unpack(">b", self._take(1))[0]

    def int16(self):
        return struct.unpack(">h", self._take(2))[0]

    def int32(self):
        return struct.unpack(">i", self._take(4))[0]

    def int64(self):
        return struct.unpack(">q", self._take(8))[0]

    def bool(self):
        return self.int8() != 0

    def string(self):
        n = self.int16()
        if n < 0:
            return None
        return self._take(n).decode()

    def array(self, dec):
        n = self.int32()
        if n < 0:
            return None
        return [dec(self) for _ in range(n)]

    def remaining(self):
        return len(self.data) - self.pos

    # flexible versions (KIP-482): varint lengths, tagged fields
    def uvarint(self):
        shift = value = 0
        while True:
            b = self._take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def compact_string(self):
        n = self.uvarint() - 1
        return None if n < 0 else self._take(n).decode()

    def compact_array(self, dec):
        n = self.uvarint() - 1
        return None if n < 0 else [dec(self) for _ in range(n)]

    def tagged_fields(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self._take(self.uvarint())


# --- framing ------------------------------------------------------------------


def request_header_v1(api_key, api_version, correlation_id, client_id="raw-test"):
    return int16(api_key) + int16(api_version) + int32(correlation_id) + string(client_id)


def request_header_v2(api_key, api_version, correlation_id, client_id="raw-test"):
    # flexible header: v1 + empty tagged fields
    return request_header_v1(api_key, api_version, correlation_id, client_id) + uvarint(0)


def frame(payload: bytes) -> bytes:
    return int32(len(payload)) + payload


def encode_request(api_key, api_version, correlation_id, body=b"", client_id="raw-test", flexible_header=False):
    hdr = (request_header_v2 if flexible_header else request_header_v1)(api_key, api_version, correlation_id, client_id)
    return frame(hdr + body)


class ConnectionClosed(Exception):
    pass


def recv_exact(sock, n, deadline):
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out reading {n} bytes (got {len(buf)})")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(n - len(buf))
        except (ConnectionResetError, BrokenPipeError) as e:
            raise ConnectionClosed(str(e)) from e
        if not chunk:
            raise ConnectionClosed(f"peer closed after {len(buf)}/{n} bytes")
        buf += chunk
    return bytes(buf)


def recv_frame(sock, timeout=10.0) -> bytes:
    deadline = time.monotonic() + timeout
    (size,) = struct.unpack(">i", recv_exact(sock, 4, deadline))
    if size < 4 or size > 256 * 1024 * 1024:
        raise ValueError(f"bad response size {size}")
    return recv_exact(sock, size, deadline)


def wait_closed(sock, timeout=10.0) -> bool:
    """True if the peer closes the connection (EOF/reset) within timeout.

    Any bytes received meanwhile are discarded (returns False if a full
    response arrives instead and the connection stays open until the deadline).
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not chunk:
            return True


def connect(host, port, timeout=10.0):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Conn:
    """A raw connection with request/response helpers."""

    def __init__(self, bootstrap: str, timeout=10.0):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = connect(host, int(port), timeout)
        self.timeout = timeout
        self.corr = 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def next_corr(self):
        self.corr += 1
        return self.corr

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def request(self, api_key, api_version, body=b"", flexible_header=False):
        corr = self.next_corr()
        self.sock.sendall(encode_request(api_key, api_version, corr, body, flexible_header=flexible_header))
        resp = recv_frame(self.sock, self.timeout)
        r = Reader(resp)
        got = r.int32()
        if got != corr:
            raise AssertionError(f"correlation id mismatch: sent {corr}, got {got}")
        return r

    # ApiVersions v0 ---------------------------------------------------------
    def api_versions(self, version=0, body=b"", flexible_header=False):
        r = self.request(API_VERSIONS, version, body, flexible_header=flexible_header)
        return decode_api_versions_v0(r)

    # Metadata v1 ------------------------------------------------------------
    def metadata(self, topics=None):
        body = array(topics, string) if topics is not None else int32(-1)
        r = self.request(METADATA, 1, body)
        return decode_metadata_v1(r)

    # Produce v3 -------------------------------------------------------------
    def produce(self, topic, partition, records: bytes, acks=-1, timeout_ms=10000):
        body = encode_produce_v3(topic, partition, records, acks, timeout_ms)
        if acks == 0:
            corr = self.next_corr()
            self.sock.sendall(encode_request(PRODUCE, 3, corr, body))
            return None
        r = self.request(PRODUCE, 3, body)
        return decode_produce_v3(r)


def decode_api_versions_v0(r: Reader):
    err = r.int16()
    apis = r.array(lambda r: (r.int16(), r.int16(), r.int16()))
    return {"error_code": err, "api_keys": {k: (lo, hi) for k, lo, hi in (apis or [])}}


def decode_metadata_v1(r: Reader):
    brokers = r.array(lambda r: {"node_id": r.int32(), "host": r.string(), "port": r.int32(), "rack": r.string()})
    controller = r.int32()

    def part(r):
        return {
            "error_code": r.int16(),
            "partition": r.int32(),
            "leader": r.int32(),
            "replicas": r.array(lambda r: r.int32()),
            "isr": r.array(lambda r: r.int32()),
        }

    def topic(r):
        return {"error_code": r.int16(), "name": r.string(), "is_internal": r.bool(), "partitions": r.array(part)}

    topics = r.array(topic)
    return {"brokers": brokers, "controller_id": controller, "topics": {t["name"]: t for t in topics}}


def encode_produce_v3(topic, partition, records, acks=-1, timeout_ms=10000):
    return (
        string(None)  # transactional_id
        + int16(acks)
        + int32(timeout_ms)
        + array([(topic, [(partition, records)])],
                lambda t: string(t[0]) + array(t[1], lambda p: int32(p[0]) + nbytes(p[1])))
    )


def decode_produce_v3(r: Reader):
    def part(r):
        return {"partition": r.int32(), "error_code": r.int16(), "base_offset": r.int64(), "log_append_time": r.int64()}

    topics = r.array(lambda r: (r.string(), r.array(part)))
    throttle = r.int32()
    out = {}
    for name, parts in topics:
        for p in parts:
            out[(name, p["partition"])] = p
    return {"partitions": out, "throttle_time_ms": throttle}


# --- RecordBatch v2 -------------------------------------------------------------


def encode_record(offset_delta, timestamp_delta, key, value, headers=()):
    body = (
        int8(0)  # attributes
        + varint(timestamp_delta)
        + varint(offset_delta)
        + (varint(-1) if key is None else varint(len(key)) + key)
        + (varint(-1) if value is None else varint(len(value)) + value)
        + varint(len(headers))
        + b"".join(varint(len(hk)) + hk + varint(len(hv)) + hv for hk, hv in headers)
    )
    return varint(len(body)) + body


def record_batch(records, base_timestamp=None, base_offset=0, attributes=0, producer_id=-1, producer_epoch=-1,
                 base_sequence=-1):
    """records: list of (key, value) bytes tuples. Returns an uncompressed v2 batch."""
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    encoded = b"".join(encode_record(i, 0, k, v) for i, (k, v) in enumerate(records))
    after_crc = (
        int16(attributes)
        + int32(len(records) - 1)  # lastOffsetDelta
        + int64(base_timestamp)  # baseTimestamp
        + int64(base_timestamp)  # maxTimestamp
        + int64(producer_id)
        + int16(producer_epoch)
        + int32(base_sequence)
        + int32(len(records))
        + encoded
    )
    crc = crc32c(after_crc)
    # batchLength counts from partitionLeaderEpoch to the end
    batch_length = 4 + 1 + 4 + len(after_crc)
    return int64(base_offset) + int32(batch_length) + int32(-1) + int8(2) + struct.pack(">I", crc) + after_crc


# offset of the first byte covered by the CRC inside a v2 batch
BATCH_CRC_OFFSET = 8 + 4 + 4 + 1
BATCH_ATTRIBUTES_OFFSET = BATCH_CRC_OFFSET + 4


def corrupt_batch(batch: bytes, marker: bytes) -> bytes:
    """Flip one byte in the middle of `marker` (which must occur in a record
    value). The batch stays structurally valid; only its CRC no longer matches."""
    b = bytearray(batch)
    pos = batch.index(marker) + len(marker) // 2
    assert pos >= BATCH_ATTRIBUTES_OFFSET
    b[pos] ^= 0x01
    return bytes(b)
