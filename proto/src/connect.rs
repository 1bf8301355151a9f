//! Connecting to the control plane: TCP, then TLS 1.3 that accepts only the pinned control
//! plane key (and presents the node key when given), then HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

/// The pin of the key in the first certificate of a PEM file: how a certificate file names
/// the key to expect (the control plane's, an admin's, a node's).
pub fn pin_of_certificate_file(path: &std::path::Path) -> Option<osgate_core::pin::SpkiPin> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let first = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
    osgate_core::pin::SpkiPin::of_certificate(&first)
}

/// The name sent as SNI: identities are keys, so it is only a label.
pub const SERVER_NAME: &str = "osgate-controlplane";

/// How a client reaches the control plane.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port`.
    pub address: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    /// HTTP/2 PINGs on an idle stream: a silently dead control plane is found within
    /// `keepalive` + `keepalive_timeout` (CONFORMANCE G.46).
    pub keepalive: Duration,
    pub keepalive_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("`{0}` is not a host:port address")]
    Address(String),
    #[error("cannot connect to the control plane at {address}: {source}")]
    Transport {
        address: String,
        source: tonic::transport::Error,
    },
}

impl Target {
    /// Opens an HTTP/2 channel.
    pub async fn connect(&self) -> Result<Channel, ConnectError> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.address))
            .map_err(|_| ConnectError::Address(self.address.clone()))?
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone());
        let address = self.address.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let tls = tls.clone();
            let address = address.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(address.as_str()).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(SERVER_NAME)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let stream = tls.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|source| ConnectError::Transport {
                address: self.address.clone(),
                source,
            })
    }
}
