//! TLS to PostgreSQL with rustls: libpq's `sslmode`s as rustls client configurations, and what
//! an open session's link is.
//!
//! | `sslmode` | server certificate check |
//! |---|---|
//! | `require` (and `allow`, `prefer`) without `sslrootcert` | none ([`Unverified`]: the handshake signature only) |
//! | `verify-ca`, or `require`/`allow`/`prefer` with `sslrootcert` (as libpq) | the chain up to a root ([`ChainOnly`]) |
//! | `verify-full` | the chain and the host name (webpki) |
//!
//! The crypto provider is `ring`, given explicitly to every builder: nothing here depends on
//! (or installs) rustls' process-level default provider, which panics when a build has two
//! providers or none.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::Socket;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::SinkError;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// No TLS, unless the server refuses connections without it.
    Allow,
    /// TLS when the server offers it (libpq's default).
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, the server certificate chains to a trusted CA.
    VerifyCa,
    /// TLS, the certificate chains to a trusted CA and names the host.
    VerifyFull,
}

impl SslMode {
    /// The `sslmode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    pub(super) fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file (`sslrootcert=/path`).
    File(PathBuf),
    /// The system's trust store (`sslrootcert=system`, or `verify-*` without `sslrootcert`).
    System,
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "sslrootcert={}", path.display()),
            Self::System => f.write_str("the system's trusted roots"),
        }
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Nothing: encrypted, but anyone in the path could present a certificate.
    None,
    /// The chain up to a trusted CA, not the host name.
    Chain(Roots),
    /// The chain and the host name.
    Full(Roots),
}

/// The TLS settings of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode` (default `prefer`).
    pub mode: SslMode,
    /// What is verified when TLS is used.
    pub verification: Verification,
    /// `sslcert` and `sslkey`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `sslsni` (default on).
    pub sni: bool,
    /// `sslnegotiation=direct`: TLS from the first byte (PostgreSQL 17), ALPN `postgresql`.
    pub direct: bool,
}

impl TlsSettings {
    /// What a session with these settings is, before connecting: `sslmode=verify-full`, …
    pub fn summary(&self) -> String {
        match (&self.mode, &self.verification) {
            (SslMode::Disable, _) => "sslmode=disable".to_string(),
            (mode, Verification::None) => format!("sslmode={}", mode.as_str()),
            (mode, Verification::Chain(roots) | Verification::Full(roots)) => {
                format!("sslmode={}, {roots}", mode.as_str())
            }
        }
    }

    /// A rustls client configuration for these settings, reading the certificate files now (so
    /// that rotated files are picked up by the next session).
    pub fn client_config(&self, var: &'static str) -> Result<rustls::ClientConfig, SinkError> {
        let bad = |message: String| SinkError::TlsConfig { var, message };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match &self.verification {
            Verification::None => Arc::new(Unverified(provider.clone())),
            Verification::Chain(roots) => {
                Arc::new(ChainOnly(webpki_verifier(roots, provider.clone(), var)?))
            }
            Verification::Full(roots) => webpki_verifier(roots, provider.clone(), var)?,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs(cert, "sslcert", var)?;
                let pem = std::fs::read(key)
                    .map_err(|e| bad(format!("cannot read sslkey {}: {e}", key.display())))?;
                let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    bad(format!(
                        "sslkey {} holds no usable private key (PEM PKCS#8, PKCS#1 or SEC1, unencrypted): {e}",
                        key.display()
                    ))
                })?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    bad(format!(
                        "sslcert {} and sslkey {} do not make a client certificate: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
        };
        config.enable_sni = self.sni;
        if self.direct {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        Ok(config)
    }
}

fn read_certs(
    path: &Path,
    param: &str,
    var: &'static str,
) -> Result<Vec<CertificateDer<'static>>, SinkError> {
    let bad = |message: String| SinkError::TlsConfig { var, message };
    let pem = std::fs::read(path)
        .map_err(|e| bad(format!("cannot read {param} {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{param} {} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(bad(format!(
            "{param} {} holds no certificate (want PEM `BEGIN CERTIFICATE` blocks)",
            path.display()
        )));
    }
    Ok(certs)
}

fn webpki_verifier(
    roots: &Roots,
    provider: Arc<CryptoProvider>,
    var: &'static str,
) -> Result<Arc<WebPkiServerVerifier>, SinkError> {
    let bad = |message: String| SinkError::TlsConfig { var, message };
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            for cert in read_certs(path, "sslrootcert", var)? {
                store.add(cert).map_err(|e| {
                    bad(format!(
                        "sslrootcert {}: a certificate is not a usable CA: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors = found
                    .errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(bad(format!(
                    "no system CA certificates found ({}); install ca-certificates or name the CA file with sslrootcert=/path/ca.pem",
                    if errors.is_empty() {
                        "none loaded"
                    } else {
                        &errors
                    }
                )));
            }
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| bad(format!("TLS setup: {e}")))
}

/// `sslmode=require` without a root certificate: encrypted, the certificate is not checked (the
/// handshake signature still is).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
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
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: webpki's chain verification, the host name not checked (webpki checks the name
/// after the chain, so a name error means the chain was good).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What an open session's link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionTls {
    /// Plain TCP (or a Unix socket).
    None {
        /// The `sslmode` that allowed it.
        mode: SslMode,
    },
    /// TLS.
    Tls {
        /// The `sslmode` asked for.
        mode: SslMode,
        /// What was verified.
        verification: Verification,
    },
}

impl SessionTls {
    /// Whether the session is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls { .. })
    }
}

impl fmt::Display for SessionTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None { mode } => write!(f, "no TLS (sslmode={})", mode.as_str()),
            Self::Tls { mode, verification } => {
                let mode = mode.as_str();
                match verification {
                    Verification::None => {
                        write!(f, "TLS, server certificate not verified (sslmode={mode})")
                    }
                    Verification::Chain(roots) => write!(
                        f,
                        "TLS, certificate chain verified against {roots} (sslmode={mode})"
                    ),
                    Verification::Full(roots) => write!(
                        f,
                        "TLS, certificate and host name verified against {roots} (sslmode={mode})"
                    ),
                }
            }
        }
    }
}

/// rustls through tokio-postgres-rustls, remembering whether a handshake completed.
#[derive(Clone)]
pub(super) struct Tracked {
    /// The connector.
    pub(super) inner: MakeRustlsConnect,
    /// Set when a handshake of this connection attempt completed.
    pub(super) done: Arc<AtomicBool>,
}

type InnerConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
type InnerStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

impl MakeTlsConnect<Socket> for Tracked {
    type Stream = InnerStream;
    type TlsConnect = TrackedConnect;
    type Error = Infallible;

    fn make_tls_connect(&mut self, domain: &str) -> Result<TrackedConnect, Infallible> {
        let inner = MakeTlsConnect::<Socket>::make_tls_connect(&mut self.inner, domain)?;
        Ok(TrackedConnect {
            inner,
            done: self.done.clone(),
        })
    }
}

pub(super) struct TrackedConnect {
    inner: InnerConnect,
    done: Arc<AtomicBool>,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<InnerStream, std::io::Error>> + Send>>;

impl TlsConnect<Socket> for TrackedConnect {
    type Stream = InnerStream;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn connect(self, stream: Socket) -> ConnectFuture {
        let handshake = self.inner.connect(stream);
        let done = self.done;
        Box::pin(async move {
            let stream = handshake.await?;
            done.store(true, Ordering::Release);
            Ok(stream)
        })
    }
}
