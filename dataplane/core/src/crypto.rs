//! The one place that owns crypto policy: the aws-lc-rs provider, suites, key-exchange groups,
//! protocol floors and certificate verifiers. Nothing else in osgate builds a rustls config.
//!
//! Perfect forward secrecy always: TLS 1.3, or TLS 1.2 with ECDHE suites only (every TLS 1.2
//! suite of the aws-lc-rs provider's default set is ECDHE; a test keeps it so).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, RootCertStore,
    ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::outcome::{Reason, TlsParams};

mod control;
mod sessions;
pub use sessions::SessionCache;

/// A key-exchange group osgate can offer, by its configuration name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KxGroup {
    /// Post-quantum hybrid, offered first by default (draft-ietf-tls-ecdhe-mlkem).
    X25519Mlkem768,
    X25519,
    Secp256r1,
    Secp384r1,
}

impl KxGroup {
    /// The groups offered when the configuration names none, most preferred first.
    pub const DEFAULT: &'static [KxGroup] = &[
        Self::X25519Mlkem768,
        Self::X25519,
        Self::Secp256r1,
        Self::Secp384r1,
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "x25519mlkem768" => Self::X25519Mlkem768,
            "x25519" => Self::X25519,
            "secp256r1" => Self::Secp256r1,
            "secp384r1" => Self::Secp384r1,
            _ => return None,
        })
    }

    fn provider_group(self) -> &'static dyn SupportedKxGroup {
        use aws_lc_rs::kx_group;
        match self {
            Self::X25519Mlkem768 => kx_group::X25519MLKEM768,
            Self::X25519 => kx_group::X25519,
            Self::Secp256r1 => kx_group::SECP256R1,
            Self::Secp384r1 => kx_group::SECP384R1,
        }
    }
}

/// The lowest TLS version a connection may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsFloor {
    Tls12,
    Tls13,
}

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

impl TlsFloor {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        match self {
            Self::Tls12 => rustls::ALL_VERSIONS,
            Self::Tls13 => TLS13_ONLY,
        }
    }
}

/// The crypto settings of one node.
#[derive(Clone, Debug)]
pub struct CryptoPolicy {
    provider: Arc<CryptoProvider>,
    floor: TlsFloor,
    resumption: bool,
}

/// Failure to build a TLS configuration from local material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("no key-exchange group configured")]
    NoGroups,
    #[error(
        "the certificate and private key do not belong together, or the key type is not supported: {0}"
    )]
    KeyMismatch(rustls::Error),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

impl CryptoPolicy {
    /// The aws-lc-rs provider restricted to `groups` (in preference order) and PFS suites.
    pub fn new(groups: &[KxGroup], floor: TlsFloor) -> Result<Self, CryptoError> {
        if groups.is_empty() {
            return Err(CryptoError::NoGroups);
        }
        let provider = CryptoProvider {
            cipher_suites: aws_lc_rs::DEFAULT_CIPHER_SUITES.to_vec(),
            kx_groups: groups.iter().map(|g| g.provider_group()).collect(),
            ..aws_lc_rs::default_provider()
        };
        Ok(Self {
            provider: Arc::new(provider),
            floor,
            resumption: true,
        })
    }

    /// The node's TLS floor.
    pub fn floor(&self) -> TlsFloor {
        self.floor
    }

    /// Turns TLS session resumption (client session cache, server tickets) on or off.
    pub fn with_resumption(mut self, on: bool) -> Self {
        self.resumption = on;
        self
    }

    /// Seeds this thread's random generator now. aws-lc seeds each thread's DRBG on first
    /// use, which takes tens of milliseconds; without this the first handshake on every
    /// worker thread stalls every connection on that thread.
    pub fn warm_up_thread(&self) -> Result<(), CryptoError> {
        let mut seed = [0u8; 32];
        self.provider
            .secure_random
            .fill(&mut seed)
            .map_err(|_| CryptoError::Rustls(rustls::Error::FailedToGetRandomBytes))
    }

    fn signatures(&self) -> Signatures {
        Signatures(self.provider.clone())
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// A client config that completes the handshake with any certificate whose handshake
    /// signature is valid. Connections made with it are `encrypted` unless something checks
    /// the peer afterwards ([`ChainVerifier`]).
    pub fn unauthenticated_client(&self) -> Result<Arc<ClientConfig>, CryptoError> {
        self.unauthenticated_client_with(None)
    }

    /// [`Self::unauthenticated_client`] keeping its sessions in `sessions` (when resumption
    /// is on), so the caller can forget a peer's sessions.
    pub fn unauthenticated_client_with(
        &self,
        sessions: Option<Arc<SessionCache>>,
    ) -> Result<Arc<ClientConfig>, CryptoError> {
        self.client_presenting(sessions, None)
    }

    /// [`Self::unauthenticated_client_with`], presenting the node's own certificate when the
    /// server asks: for connections to fleet nodes, which authenticate it by its node key.
    /// Its sessions carry that identity, so they need a cache of their own.
    pub fn fleet_client(
        &self,
        sessions: Arc<SessionCache>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<ClientConfig>, CryptoError> {
        self.client_presenting(Some(sessions), Some((chain, key)))
    }

    fn client_presenting(
        &self,
        sessions: Option<Arc<SessionCache>>,
        identity: Option<Identity>,
    ) -> Result<Arc<ClientConfig>, CryptoError> {
        let verifier = Arc::new(danger::UnauthenticatedServer {
            signatures: self.signatures(),
        });
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(self.floor.versions())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = presenting(builder, identity)?;
        config.resumption = match (self.resumption, sessions) {
            (false, _) => rustls::client::Resumption::disabled(),
            (true, Some(store)) => rustls::client::Resumption::store(store),
            (true, None) => rustls::client::Resumption::default(),
        };
        Ok(Arc::new(config))
    }

    /// A server config presenting `chain` with `key`, with TLS 1.3 tickets for resumption.
    /// It asks every client for a certificate and requires none: the key a client proves
    /// (the handshake signature is checked) is only a claim until [`crate::clients::admit`]
    /// finds it among the fleet's node keys or the listener's pins.
    pub fn server(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<ServerConfig>, CryptoError> {
        let clients = Arc::new(control::AnyClientKey {
            signatures: self.signatures(),
            tls12: true,
        });
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(self.floor.versions())?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain, key)
            .map_err(CryptoError::KeyMismatch)?;
        if self.resumption {
            config.ticketer = aws_lc_rs::Ticketer::new()?;
        } else {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        Ok(Arc::new(config))
    }
}

/// A client's own certificate chain and key.
type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The config, presenting `identity` when a server asks for a client certificate.
fn presenting(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    identity: Option<Identity>,
) -> Result<ClientConfig, CryptoError> {
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(CryptoError::KeyMismatch),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Checks a peer's chain against trusted roots for the peer's name (PKIX, RFC 5280 and 6125).
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
}

impl ChainVerifier {
    /// A verifier over `roots`; with no roots at all, every chain is `certificate-not-trusted`.
    pub fn new(roots: RootCertStore, policy: &CryptoPolicy) -> Self {
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), policy.provider.clone())
                .build()
                .ok();
        Self { inner }
    }

    /// The operating system's trust store (`/etc/ssl/certs` on Debian).
    pub fn system_roots() -> RootCertStore {
        let mut roots = RootCertStore::empty();
        let loaded = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(loaded.certs);
        roots
    }

    /// `Ok` when the peer's chain validates for `name` at `now`, else the RFC 8460 reason.
    pub fn check(
        &self,
        chain: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), Reason> {
        let Some(inner) = &self.inner else {
            return Err(Reason::CertificateNotTrusted);
        };
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err(Reason::ValidationFailure);
        };
        inner
            .verify_server_cert(end_entity, intermediates, name, &[], now)
            .map(|_| ())
            .map_err(|e| chain_reason(&e))
    }
}

/// DANE-TA (RFC 7671 §5.2): validates `chain[0]` up to `chain[anchor]`, which a TLSA record
/// matched, as the only trust anchor — with the name checked, as PKIX does.
pub fn check_dane_ta(
    policy: &CryptoPolicy,
    chain: &[CertificateDer<'_>],
    anchor: usize,
    name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), Reason> {
    let (Some(end_entity), Some(anchor_cert)) = (chain.first(), chain.get(anchor)) else {
        return Err(Reason::ValidationFailure);
    };
    let mut roots = RootCertStore::empty();
    roots
        .add(anchor_cert.clone().into_owned())
        .map_err(|_| Reason::TlsaInvalid)?;
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), policy.provider.clone())
            .build()
            .map_err(|_| Reason::TlsaInvalid)?;
    let intermediates = chain.get(1..anchor).unwrap_or_default();
    verifier
        .verify_server_cert(end_entity, intermediates, name, &[], now)
        .map(|_| ())
        .map_err(|e| chain_reason(&e))
}

fn chain_reason(error: &rustls::Error) -> Reason {
    use CertificateError as E;
    match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            E::Expired
            | E::ExpiredContext { .. }
            | E::NotValidYet
            | E::NotValidYetContext { .. } => Reason::CertificateExpired,
            E::NotValidForName | E::NotValidForNameContext { .. } => {
                Reason::CertificateHostMismatch
            }
            E::UnknownIssuer | E::BadSignature | E::UnknownRevocationStatus | E::Revoked => {
                Reason::CertificateNotTrusted
            }
            _ => Reason::CertificateNotTrusted,
        },
        _ => Reason::ValidationFailure,
    }
}

/// The negotiated version, suite and group of a finished handshake.
pub fn tls_params(state: &CommonState) -> TlsParams {
    TlsParams {
        version: state
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("unknown"),
        suite: state
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown"),
        group: state
            .negotiated_key_exchange_group()
            .and_then(|g| g.name().as_str())
            .unwrap_or("none"),
        resumed: matches!(state.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
    }
}

/// Digests, from aws-lc-rs.
pub mod sha {
    use aws_lc_rs::digest;

    pub fn sha256(data: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, data).as_ref().to_vec()
    }

    pub fn sha512(data: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA512, data).as_ref().to_vec()
    }
}

/// Verifiers that do not authenticate the peer. Reachable only through the `encrypted` path.
pub mod danger {
    use super::*;

    /// Accepts any server certificate, but still checks that the server signed the handshake
    /// with the key in it (RFC 8446 §4.4.3), so the session keys are bound to that key and a
    /// later pin or chain check over the certificate means something.
    #[derive(Debug)]
    pub struct UnauthenticatedServer {
        pub(super) signatures: Signatures,
    }

    impl ServerCertVerifier for UnauthenticatedServer {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.signatures.tls12(message, cert, dss)
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
}

/// The handshake-signature checks every verifier makes, whatever it decides about the
/// certificate: the peer signed the handshake with the key in the certificate it showed.
#[derive(Debug, Clone)]
struct Signatures(Arc<CryptoProvider>);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
