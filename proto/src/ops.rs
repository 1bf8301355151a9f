//! The operations endpoint of node and control plane: `/metrics` for Prometheus, `/live` and
//! `/ready` for supervisors (Kubernetes probes, load balancers, `curl`).
//!
//! A deliberately small HTTP/1.1 responder on its own thread: one request per connection
//! (`Connection: close`), GET and HEAD only, requests capped in size and time, so a stuck or
//! hostile client costs one bounded task and never the process.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest request head read; a probe or a scrape sends a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the process should get traffic now; `Err` says why not, in one line.
pub type Readiness = Result<(), String>;

/// What the endpoint serves.
pub struct Endpoint {
    /// The Prometheus text exposition.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    pub ready: Box<dyn Fn() -> Readiness + Send + Sync>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Endpoint")
    }
}

/// Binds `addr` now (so a taken port fails the start) and serves on a thread of its own.
pub fn serve(addr: SocketAddr, endpoint: Endpoint) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoint = Arc::new(endpoint);
    std::thread::Builder::new()
        .name("osgate-ops-http".into())
        .spawn(move || runtime.block_on(accept(listener, endpoint)))?;
    Ok(bound)
}

async fn accept(listener: TcpListener, endpoint: Arc<Endpoint>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, endpoint.clone()));
            }
            // Out of descriptors or similar: wait a little rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn answer(mut stream: tokio::net::TcpStream, endpoint: Arc<Endpoint>) {
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => respond(&head, &endpoint),
        Ok(None) => Response::text(400, "bad request\n"),
        Err(_) => return,
    };
    let _ = stream.write_all(&response.encode()).await;
    let _ = stream.shutdown().await;
}

/// Reads up to the end of the request head; `None` for a closed or oversized request.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Some(head)
}

/// The answer to one request head: pure, so the parsing is tested without sockets.
fn respond(head: &[u8], endpoint: &Endpoint) -> Response {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return Response::text(400, "bad request\n");
    };
    if !version.starts_with(b"HTTP/1.") {
        return Response::text(400, "bad request\n");
    }
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return Response::text(405, "only GET and HEAD\n"),
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let response = match path {
        b"/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: (endpoint.metrics)().into_bytes(),
            head_only: false,
        },
        b"/live" => Response::text(200, "live\n"),
        b"/ready" => match (endpoint.ready)() {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, &format!("not ready: {why}\n")),
        },
        _ => Response::text(404, "not found; try /metrics, /live or /ready\n"),
    };
    Response {
        head_only,
        ..response
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// HEAD: the headers of the GET answer, without its body.
    head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            head_only: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Service Unavailable",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

#[cfg(test)]
mod tests;
