"""A stand-in ZooKeeper that is just enough for Burrow 1.2 to run.

Burrow's zookeeper coordinator must connect and create its root path, and
its notifier takes a ZooKeeper lock, even though shardlog needs no
ZooKeeper (Burrow reads offsets from `__consumer_offsets` over the Kafka
protocol). This server speaks ZooKeeper's jute framing for what those use:
the session handshake, ping, create (sequential names too), exists,
getChildren2, delete, close; any other request gets NoNode. Node names
live in memory, data is not kept. Binds 127.0.0.1 only; every socket wait
is bounded by twice the session timeout.
"""

import socket
import struct
import threading

OP_CREATE = 1
OP_DELETE = 2
OP_EXISTS = 3
OP_GET_CHILDREN2 = 12
OP_PING = 11
OP_CLOSE = -11
FLAG_SEQUENTIAL = 2
STAT = b"\0" * 68  # czxid..pzxid, all zero
ERR_OK = 0
ERR_NO_NODE = -101
ERR_NODE_EXISTS = -110
SESSION_TIMEOUT_MS = 6000
FRAME_MAX_BYTES = 1 << 20


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return bytes(buf)


def _recv_frame(sock):
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    if size < 0 or size > FRAME_MAX_BYTES:
        raise ConnectionError(f"bad frame size {size}")
    return _recv_exact(sock, size)


def _read_string(buf, pos):
    """A jute ustring: int32 length, UTF-8 bytes."""
    (n,) = struct.unpack(">i", buf[pos:pos + 4])
    return buf[pos + 4:pos + 4 + max(n, 0)].decode()


def _string(s):
    b = s.encode()
    return struct.pack(">i", len(b)) + b


def _send_frame(sock, payload):
    sock.sendall(struct.pack(">i", len(payload)) + payload)


class FakeZooKeeper:
    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.5)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.zxid = 0
        self.nodes = {"/"}
        self.sequence = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(SESSION_TIMEOUT_MS / 1000 * 2)
        try:
            _recv_frame(conn)  # ConnectRequest: protocol version, zxid, timeout, session, password
            _send_frame(conn, struct.pack(">iiqi", 0, SESSION_TIMEOUT_MS, 0x5A5A, 16) + b"\0" * 16)
            while not self.stopping.is_set():
                req = _recv_frame(conn)
                xid, op = struct.unpack(">ii", req[:8])
                with self.lock:
                    err, body = self._handle(op, req[8:])
                    self.zxid += 1
                    _send_frame(conn, struct.pack(">iqi", xid, self.zxid, err) + body)
                if op == OP_CLOSE:
                    return
        except (ConnectionError, OSError, struct.error):
            pass
        finally:
            conn.close()

    def _handle(self, op, body):
        if op in (OP_PING, OP_CLOSE):
            return ERR_OK, b""
        path = _read_string(body, 0)
        if op == OP_CREATE:
            (flags,) = struct.unpack(">i", body[-4:])
            if flags & FLAG_SEQUENTIAL:
                self.sequence += 1
                path = f"{path}{self.sequence:010d}"
            parent = path.rsplit("/", 1)[0] or "/"
            if parent not in self.nodes:
                return ERR_NO_NODE, b""
            if path in self.nodes:
                return ERR_NODE_EXISTS, b""
            self.nodes.add(path)
            return ERR_OK, _string(path)
        if op == OP_DELETE:
            self.nodes.discard(path)
            return ERR_OK, b""
        if op == OP_EXISTS:
            return (ERR_OK, STAT) if path in self.nodes else (ERR_NO_NODE, b"")
        if op == OP_GET_CHILDREN2:
            if path not in self.nodes:
                return ERR_NO_NODE, b""
            prefix = path.rstrip("/") + "/"
            children = [n[len(prefix):] for n in self.nodes if n.startswith(prefix) and "/" not in n[len(prefix):]]
            return ERR_OK, struct.pack(">i", len(children)) + b"".join(_string(c) for c in children) + STAT
        return ERR_NO_NODE, b""

    def stop(self):
        self.stopping.set()
        self.listener.close()
        self.thread.join(timeout=5)
