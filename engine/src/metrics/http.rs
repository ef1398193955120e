//! The metrics listener (`metrics.listen`): `GET /metrics` (Prometheus'
//! text format), `GET /health` (200 while the process runs), `GET /ready`
//! (200 once the broker serves: its logs are recovered, its port is open
//! and the controller has not fenced it; 503 with the reason before).
//!
//! Lives on the controller shard (shard 0). Written by hand rather than
//! with an HTTP crate: the endpoint answers three GETs, and the HTTP
//! servers on crates.io run on tokio, which the engine does not use.
//!
//! Bounds, so a slow or hostile client cannot hurt the shard: at most
//! `metrics.connections.max` connections (more are closed at accept), a
//! request head of at most `REQUEST_HEAD_MAX_BYTES`, one request per
//! connection, and the whole exchange (reading the request, writing the
//! answer) within `metrics.request.timeout.ms`. Every connection is its own
//! task that only awaits its socket, so a client that stops reading holds
//! its own task and nothing else.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::config::MetricsConfig;
use crate::shard::Shard;

/// Pending connections on the metrics port (a scraper or two, health checks).
const METRICS_BACKLOG: i32 = 64;

/// Longer request heads are answered 431 and closed.
const REQUEST_HEAD_MAX_BYTES: usize = 8 * 1024;

/// Binds the listener: None when metrics are off, or when the default
/// address is taken (a warning); an address the operator set that cannot
/// be bound is an error, which stops the broker.
pub fn bind(config: &MetricsConfig) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    match bind_exclusive(addr) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if !config.listen_explicit => {
            tracing::warn!(
                "metrics endpoint off: cannot listen on the default metrics.listen {addr} ({e}); \
                 set metrics.listen to another address"
            );
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!("cannot listen on metrics.listen {addr}: {e}")),
    }
}

/// Without SO_REUSEPORT: two brokers on one host must not share the
/// metrics port silently (the Kafka port is shared by the shards of one
/// broker, see `server::listener`).
fn bind_exclusive(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = crate::server::listener::listening_socket(addr, METRICS_BACKLOG, false)?;
    // SAFETY: `into_raw_fd` hands over the only owner of a bound, listening
    // TCP socket; the glommio listener becomes its sole owner and closes it.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Accepts until the shard stops. Logs `metrics on http://HOST:PORT` first.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!("metrics on http://{addr}"),
        Err(e) => tracing::warn!("metrics listener has no address: {e}"),
    }
    let open = Rc::new(Cell::new(0usize));
    let limits = &shard.config.metrics;
    let (connections_max, timeout) = (
        limits.connections_max,
        Duration::from_millis(limits.request_timeout_ms),
    );
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(_) if shard.is_stopping() => return,
            Err(e) => {
                tracing::warn!("metrics accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.is_stopping() {
            return;
        }
        if open.get() >= connections_max {
            super::with(|c| {
                c.metrics_connections_refused
                    .set(c.metrics_connections_refused.get() + 1)
            });
            tracing::debug!("metrics.connections.max ({connections_max}) reached; closing a new connection");
            continue;
        }
        open.set(open.get() + 1);
        let (shard, open) = (shard.clone(), open.clone());
        glommio::spawn_local(async move {
            let exchange = glommio::timer::timeout(timeout, async {
                answer(&shard, stream).await;
                Ok(())
            })
            .await;
            if exchange.is_err() {
                tracing::debug!("a metrics client took longer than metrics.request.timeout.ms; closed");
            }
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// Reads one request and writes its answer; the connection closes after.
async fn answer(shard: &Rc<Shard>, mut stream: TcpStream) {
    let head = match read_head(&mut stream).await {
        Ok(Some(head)) => head,
        Ok(None) => {
            let _ = respond(&mut stream, 431, "text/plain", b"request head too large\n", false).await;
            return;
        }
        Err(_) => return,
    };
    let (status, content_type, body, head_only) = route(shard, &head).await;
    let _ = respond(&mut stream, status, content_type, body.as_bytes(), head_only).await;
}

/// The request head (up to the blank line), None when it outgrows
/// `REQUEST_HEAD_MAX_BYTES`.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_blank_line(&head) {
            head.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > REQUEST_HEAD_MAX_BYTES {
            return Ok(None);
        }
    }
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| bytes.windows(2).position(|w| w == b"\n\n"))
}

/// (status, content type, body, HEAD request) for a request head.
async fn route(shard: &Rc<Shard>, head: &str) -> (u16, &'static str, String, bool) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut request_line = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (
        request_line.next().unwrap_or(""),
        request_line.next().unwrap_or(""),
    );
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (405, TEXT, "only GET and HEAD\n".into(), head_only);
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/health" => (200, TEXT, "ok\n".into(), head_only),
        "/ready" => match not_ready(shard) {
            None => (200, TEXT, "ready\n".into(), head_only),
            Some(reason) => (503, TEXT, format!("not ready: {reason}\n"), head_only),
        },
        "/metrics" => {
            if !shard.is_serving() {
                return (503, TEXT, "starting: logs are being opened\n".into(), head_only);
            }
            let body = super::collect::scrape(shard, not_ready(shard).is_none()).await;
            (200, "text/plain; version=0.0.4; charset=utf-8", body, head_only)
        }
        _ => (
            404,
            TEXT,
            "not found: try /metrics, /health or /ready\n".into(),
            head_only,
        ),
    }
}

/// Why the broker does not serve yet, or None when it does.
fn not_ready(shard: &Shard) -> Option<&'static str> {
    if !shard.is_serving() {
        return Some("starting: logs are being opened");
    }
    if shard.is_stopping() {
        return Some("shutting down");
    }
    let view = shard.view();
    if shard.config.cluster.roles.broker {
        if !view.image.brokers.contains_key(&shard.config.node_id) {
            return Some("not registered with the controller yet");
        }
        if view.fenced {
            return Some("fenced by the controller (catching up on metadata)");
        }
    }
    None
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.flush().await?;
    stream.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(
            find_blank_line(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"),
            Some(23)
        );
        assert_eq!(find_blank_line(b"GET / HTTP/1.0\n\n"), Some(14));
        assert_eq!(find_blank_line(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
