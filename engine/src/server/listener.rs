//! The shard's listening socket on the Kafka port.
//!
//! Lives on: one per shard, created and used by that shard's executor; the
//! socket itself is shared (`Arc`) with the blocking-pool thread that waits
//! in `accept(2)`.
//!
//! Why accepts run on the blocking pool and not on io_uring: an io_uring
//! accept holds its own reference to the listening socket, and the ring of a
//! process that was killed is torn down asynchronously by the kernel, ~10 ms
//! after the process is reaped (measured here). Until then the dead socket
//! stays in LISTEN state: it completes the handshakes of clients that
//! reconnect at once and resets them when it finally closes, so a restarted
//! broker "drops its first connections". A thread blocked in `accept(2)`
//! gives its reference back as the process dies, so the socket closes with
//! the process's descriptor table and a reconnecting client is refused (and
//! retries) until the new process listens.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::Arc;
use std::time::Duration;

pub struct Listener {
    socket: Arc<std::net::TcpListener>,
}

impl Listener {
    /// Binds with SO_REUSEPORT, so every shard accepts on the port, and
    /// SO_REUSEADDR, so a restart is not refused by TIME_WAIT connections of
    /// the previous process.
    pub fn bind(addr: SocketAddr, backlog: i32) -> std::io::Result<Listener> {
        Ok(Listener {
            socket: Arc::new(listening_socket(addr, backlog, true)?),
        })
    }

    /// The next connection, as a glommio stream of this shard. Holds one
    /// blocking-pool thread while it waits (`run` sizes the pool for it).
    pub async fn accept(&self) -> std::io::Result<(glommio::net::TcpStream, SocketAddr)> {
        let socket = self.socket.clone();
        let (stream, peer) = glommio::executor()
            .spawn_blocking(move || socket.accept())
            .await?;
        // SAFETY: `into_raw_fd` hands over the only owner of a connected TCP
        // socket; the glommio stream becomes its sole owner and closes it.
        let stream = unsafe { glommio::net::TcpStream::from_raw_fd(stream.into_raw_fd()) };
        Ok((stream, peer))
    }

    /// Stops accepting: new connections are refused and a thread waiting in
    /// `accept` returns (EINVAL), so the pool thread is free for shutdown.
    pub fn close(&self) {
        // SAFETY: a socket this listener owns; it stays open (the `Arc`)
        // until every waiting accept returned.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// A listening TCP socket with SO_REUSEADDR (a restart is not refused by
/// the previous process's TIME_WAIT connections), and with SO_REUSEPORT
/// when `shared_port`, so every shard can bind the same port.
pub fn listening_socket(
    addr: SocketAddr,
    backlog: i32,
    shared_port: bool,
) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if shared_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// How long startup waits for a predecessor's listening sockets to close: a
/// process still exiting, or a ring that still holds them (see above).
const PORT_WAIT_MS: u64 = 3_000;

/// Binds (SO_REUSEADDR, no SO_REUSEPORT) and releases the address: fails
/// if anything still listens there after `PORT_WAIT_MS`; connections
/// lingering in TIME_WAIT do not count.
pub fn wait_for_port(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_millis(PORT_WAIT_MS);
    loop {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        match socket.bind(&addr.into()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}
