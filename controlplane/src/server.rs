//! The control plane's gRPC server: TLS 1.3 with optional client keys, the auth layer, and
//! the admin, fleet, health and reflection services.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use osgate_core::caps::Caps;
use osgate_core::pin::SpkiPin;
use osgate_proto::pb::{admin_server::AdminServer, fleet_server::FleetServer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::Connected;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::admin::AdminService;
use crate::auth::{Auth, PeerKey};
use crate::caps::Counted;
use crate::config::Admin;
use crate::ctx::Ctx;
use crate::fleet::FleetService;
use crate::lifecycle::Lifecycle;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS connection, with the key its client presented and its place under the caps.
pub struct TlsIo {
    stream: TlsStream<TcpStream>,
    /// Held while the connection lives: dropping it frees the place.
    _slot: Counted,
}

impl Connected for TlsIo {
    type ConnectInfo = PeerKey;

    fn connect_info(&self) -> PeerKey {
        let (_, session) = self.stream.get_ref();
        let key = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(SpkiPin::of_certificate);
        PeerKey(key)
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts connections within the caps and runs their TLS handshakes off the accept loop.
/// Stops, closing the listener, when the control plane starts draining.
fn accept(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    caps: Arc<Caps>,
    lifecycle: Arc<Lifecycle>,
) -> ReceiverStream<io::Result<TlsIo>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = lifecycle.drain_begun() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Descriptor exhaustion and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match crate::caps::admit(&caps, peer.ip()) {
                Ok(slot) => slot,
                Err(cap) => {
                    // Closed unread: no handshake, no allocation beyond the socket.
                    tracing::debug!(%peer, cap = cap.as_str(), "connection over the cap closed");
                    drop(tcp);
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx
                            .send(Ok(TlsIo {
                                stream,
                                _slot: slot,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
        tracing::info!("listener closed: draining");
    });
    ReceiverStream::new(rx)
}

/// Serves until the control plane drains: then HTTP/2 GOAWAY on every connection, and
/// returns when their streams have finished.
pub async fn serve(
    ctx: Arc<Ctx>,
    admins: Vec<Admin>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    caps: Arc<Caps>,
    health: HealthReporter,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let lifecycle = ctx.lifecycle.clone();
    lifecycle.publish().await;
    let health = HealthServer::new(HealthService::from_health_reporter(health));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(osgate_proto::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let limit = osgate_proto::MAX_MESSAGE_BYTES;
    let admin = AdminServer::new(AdminService { ctx: ctx.clone() })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let fleet = FleetServer::new(FleetService { ctx: ctx.clone() })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let auth = Auth {
        admins: Arc::new(admins),
        state: ctx.state.clone(),
    };
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(auth)
        .add_service(health)
        .add_service(reflection)
        .add_service(admin)
        .add_service(fleet)
        .serve_with_incoming_shutdown(
            accept(listener, tls, caps, lifecycle.clone()),
            lifecycle.drain_begun(),
        )
        .await?;
    Ok(())
}
