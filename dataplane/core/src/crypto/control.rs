//! TLS between nodes, `osgatectl` and the control plane. Identities are keys, not names: the
//! control plane is known by the pin of its key, a node by its node key (CONFORMANCE G.47).
//! TLS 1.3 only; the handshake signature is always checked, so the key proved is the key
//! presented.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
    version::TLS13,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::{CryptoError, CryptoPolicy, Signatures};
use crate::pin::SpkiPin;

const ALPN_H2: &[u8] = b"h2";

impl CryptoPolicy {
    /// A client config that accepts only a server key in `pins`, presenting `identity`
    /// (certificate chain and key) when given.
    pub fn pinned_client(
        &self,
        pins: Vec<SpkiPin>,
        identity: Option<super::Identity>,
    ) -> Result<Arc<ClientConfig>, CryptoError> {
        let verifier = Arc::new(PinnedServer {
            pins,
            signatures: self.signatures(),
        });
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = super::presenting(builder, identity)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// A server config for the control plane: any client key is accepted at the TLS layer
    /// and optional (admins may use bearer tokens); who the key belongs to is decided per
    /// request, from the key's pin.
    pub fn control_server(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<ServerConfig>, CryptoError> {
        let verifier = Arc::new(AnyClientKey {
            signatures: self.signatures(),
            tls12: false,
        });
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(CryptoError::KeyMismatch)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// Only TLS 1.3 is configured, so rustls never asks; refuse if it ever did.
fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not used with the control plane".into())
}

/// Accepts a server whose key is one of `pins`.
#[derive(Debug)]
struct PinnedServer {
    pins: Vec<SpkiPin>,
    signatures: Signatures,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match SpkiPin::of_certificate(end_entity) {
            Some(pin) if self.pins.contains(&pin) => Ok(ServerCertVerified::assertion()),
            Some(pin) => Err(rustls::Error::General(format!(
                "the control plane presented key {pin}, which is not the pinned key"
            ))),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Accepts any client key whose handshake signature is valid; the application decides whom
/// it belongs to.
#[derive(Debug)]
pub(super) struct AnyClientKey {
    pub signatures: Signatures,
    /// The node's listeners speak TLS 1.2 too; the control plane does not.
    pub tls12: bool,
}

impl ClientCertVerifier for AnyClientKey {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.tls12 {
            true => self.signatures.tls12(message, cert, dss),
            false => Err(tls12_refused()),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}
