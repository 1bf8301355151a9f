//! Test PKI: a CA and leaf certificates written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A certificate and key on disk.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed leaf for `name`.
pub fn self_signed(dir: &Path, stem: &str, name: &str) -> Pem {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    write(dir, stem, &cert.pem(), &key.serialize_pem())
}

/// A test certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "osgate test CA");
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join("ca.crt");
        std::fs::write(&path, cert.pem()).unwrap();
        Self {
            issuer: Issuer::new(params, key),
            cert: path,
        }
    }

    /// A leaf for `name` issued by this CA; `expired` backdates its validity.
    pub fn leaf(&self, dir: &Path, stem: &str, name: &str, expired: bool) -> Pem {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        write(dir, stem, &cert.pem(), &key.serialize_pem())
    }
}

fn write(dir: &Path, stem: &str, cert: &str, key: &str) -> Pem {
    let pem = Pem {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&pem.cert, cert).unwrap();
    std::fs::write(&pem.key, key).unwrap();
    pem
}

/// A test client's verifier that accepts any server (handshake signatures still checked).
#[derive(Debug)]
pub struct AnyServer(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl Default for AnyServer {
    fn default() -> Self {
        Self(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls server config presenting `pem` (for test servers that misbehave on purpose).
pub fn server_config(pem: &Pem) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_file_iter(&pem.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&pem.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    std::sync::Arc::new(config)
}

/// The SPKI pin (`sha256/...`) of the certificate in `pem`.
pub fn pin_of(pem: &Pem) -> String {
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_file(&pem.cert).unwrap();
    osgate_core::pin::SpkiPin::of_certificate(&cert)
        .unwrap()
        .to_string()
}

/// OpenSSL's own SHA-256 of the certificate's SubjectPublicKeyInfo, in hex: what a TLSA
/// `3 1 1` record carries, computed independently of osgate.
pub fn openssl_spki_sha256(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | sha256sum",
        cert.display()
    );
    let text = crate::process::stdout_of(std::process::Command::new("sh").args(["-c", &script]));
    text.split_whitespace().next().unwrap().to_owned()
}
