//! A hostile control plane: it speaks `osgate.v1.Fleet/Watch` over TLS 1.3 with a key the
//! node pins, sends update bytes the test wrote (an unknown field, say — which the real
//! control plane cannot send, since it stores decoded messages), and hands the test every
//! ACK and NACK the node answers. Other methods are unimplemented.

use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use osgate_proto::pb;
use prost::bytes::BufMut;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_stream::{Stream, StreamExt};
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::transport::server::Connected;
use tonic::{Status, Streaming};

use crate::WAIT;
use crate::controlplane::{Key, keygen};

/// A running hostile control plane (its thread ends with the test process).
pub struct HostileControlPlane {
    pub addr: std::net::SocketAddr,
    pub key: Key,
    replies: Receiver<pb::WatchRequest>,
}

impl HostileControlPlane {
    /// Serves `updates` (encoded `osgate.v1.Update`s, in order) to every node that watches,
    /// then keeps the stream open.
    pub fn start(dir: &Path, updates: Vec<Vec<u8>>) -> Self {
        let key = keygen(dir, "hostile-controlplane");
        let tls = server_tls(&key);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, replies) = channel();
        let fleet = Hostile {
            updates: Arc::new(updates),
            replies: tx,
        };
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(listener, tls, fleet));
        });
        Self { addr, key, replies }
    }

    /// The next message the node sent after its Hello.
    pub fn reply(&self) -> pb::watch_request::Msg {
        loop {
            let message = self
                .replies
                .recv_timeout(WAIT)
                .expect("a reply from the node");
            match message.msg {
                Some(pb::watch_request::Msg::Hello(_)) | None => continue,
                Some(msg) => return msg,
            }
        }
    }

    /// The `[controlplane]` section for a node with `key`, persisting to `state`.
    pub fn section(&self, key: &Key, state: &Path) -> String {
        format!(
            "[controlplane]\naddress = \"{}\"\nserver_pin = \"{}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\nstate = \"{}\"\nkeepalive_ms = 1000\n",
            self.addr,
            self.key.pin,
            key.cert.display(),
            key.key.display(),
            state.display()
        )
    }
}

fn server_tls(key: &Key) -> Arc<rustls::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(&key.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let private = PrivateKeyDer::from_pem_file(&key.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .unwrap();
    Arc::new(config)
}

async fn serve(listener: std::net::TcpListener, tls: Arc<rustls::ServerConfig>, fleet: Hostile) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let incoming = async_stream(listener, acceptor);
    let _ = tonic::transport::Server::builder()
        .add_service(fleet)
        .serve_with_incoming(incoming)
        .await;
}

/// Accepted TLS connections, one handshake at a time (a test has one node).
fn async_stream(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl Stream<Item = std::io::Result<Tls>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(stream) = acceptor.accept(tcp).await
                && tx.send(Ok(Tls(stream))).await.is_err()
            {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

struct Tls(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl Connected for Tls {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for Tls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[derive(Clone)]
struct Hostile {
    updates: Arc<Vec<Vec<u8>>>,
    replies: Sender<pb::WatchRequest>,
}

impl tonic::server::NamedService for Hostile {
    const NAME: &'static str = "osgate.v1.Fleet";
}

impl Service<http::Request<tonic::body::Body>> for Hostile {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let fleet = self.clone();
        Box::pin(async move {
            if request.uri().path() != "/osgate.v1.Fleet/Watch" {
                return Ok(Status::unimplemented("a hostile stub").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(grpc.streaming(Watch(fleet), request).await)
        })
    }
}

struct Watch(Hostile);

type Raw = Pin<Box<dyn Stream<Item = Result<Vec<u8>, Status>> + Send>>;

impl tonic::server::StreamingService<pb::WatchRequest> for Watch {
    type Response = Vec<u8>;
    type ResponseStream = Raw;
    type Future = BoxFuture<tonic::Response<Raw>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<pb::WatchRequest>>) -> Self::Future {
        let fleet = self.0.clone();
        Box::pin(async move {
            let mut inbound = request.into_inner();
            let replies = fleet.replies.clone();
            tokio::spawn(async move {
                while let Ok(Some(message)) = inbound.message().await {
                    let _ = replies.send(message);
                }
            });
            let updates: Vec<Result<Vec<u8>, Status>> =
                fleet.updates.iter().cloned().map(Ok).collect();
            let stream = tokio_stream::iter(updates).chain(tokio_stream::pending());
            Ok(tonic::Response::new(Box::pin(stream) as Raw))
        })
    }
}

/// Sends bytes as they are; decodes what the node sends with prost.
#[derive(Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::WatchRequest;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<pb::WatchRequest>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(Default::default())
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}
