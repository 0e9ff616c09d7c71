//! IncrementalAlterConfigs (KIP-339), the one admin request the rdkafka binding does not expose:
//! the fallback when a broker refuses the legacy AlterConfigs (tansu implements only the
//! incremental form). The messages are encoded and decoded by the `kafka-protocol` crate; this
//! module owns only the connection around them, which that crate leaves to its users: TCP, TLS
//! (rustls, the CA from the stream's Secret or the system's), SASL (PLAIN, SCRAM-SHA-256/512) and
//! version negotiation through ApiVersions, so the fallback works over every security protocol
//! the CRD offers.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use eventstream_crds::v1alpha1::{SaslMechanism, SecurityProtocol};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, StrBytes};
use ring::rand::SecureRandom as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::connection::KafkaConnection;

const CLIENT_ID: &str = "eventstream-operator";
/// `resource_type` of a topic in the admin APIs.
const RESOURCE_TOPIC: i8 = 2;
/// Largest response accepted: answers name one resource, and a larger size prefix means the
/// peer is not speaking Kafka (e.g. a TLS listener answering a plaintext client).
const MAX_RESPONSE: usize = 1 << 20;
/// Kafka's SASL_AUTHENTICATION_FAILED, for a SCRAM server signature that does not verify.
const SASL_AUTHENTICATION_FAILED: i16 = 58;
/// Kafka's UNSUPPORTED_VERSION, when the broker and this client share no version.
const UNSUPPORTED_VERSION: i16 = 35;

/// One config operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    /// Set `key` to `value`.
    Set(String, String),
    /// Remove the topic-level override of `key` (back to the broker default).
    Delete(String),
}

/// Why IncrementalAlterConfigs did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlterError {
    /// The connection settings cannot be used (e.g. a CA that is not PEM).
    #[error("{0}")]
    Config(String),
    /// No bootstrap broker could be asked (connect, TLS handshake, timeout, garbled answer).
    #[error("{0}")]
    Unreachable(String),
    /// A broker answered with an error (authentication, authorization, invalid config...).
    #[error("{message}")]
    Refused {
        /// Kafka's error code.
        code: i16,
        /// Kafka's name of the code and the broker's message.
        message: String,
    },
}

/// Sends IncrementalAlterConfigs for `topic` to the first bootstrap broker that can be asked,
/// over `conn`'s security protocol, each broker attempt bounded by `timeout`.
pub async fn incremental_alter_configs(
    conn: &KafkaConnection,
    topic: &str,
    ops: &[ConfigOp],
    timeout: Duration,
) -> Result<(), AlterError> {
    let tls = match conn.security_protocol {
        SecurityProtocol::Ssl | SecurityProtocol::SaslSsl => Some(tls_config(conn)?),
        SecurityProtocol::Plaintext | SecurityProtocol::SaslPlaintext => None,
    };
    let mut last = AlterError::Unreachable("no bootstrap server".into());
    for addr in conn
        .bootstrap
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let attempt = async {
            let mut broker = Broker::connect(addr, tls.clone()).await?;
            if let Some(mechanism) = sasl_mechanism(conn) {
                broker.authenticate(conn, mechanism).await?;
            }
            broker.alter(topic, ops).await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(())) => return Ok(()),
            // The broker's answer is the cluster's answer: asking the next one would not help.
            Ok(Err(e @ (AlterError::Refused { .. } | AlterError::Config(_)))) => return Err(e),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = AlterError::Unreachable(format!("{addr}: timed out after {timeout:?}"))
            }
        }
    }
    Err(last)
}

/// The SASL mechanism to authenticate with, when the protocol uses SASL (the CRD's default,
/// SCRAM-SHA-512, when none is named; the operator always names one).
fn sasl_mechanism(conn: &KafkaConnection) -> Option<SaslMechanism> {
    match conn.security_protocol {
        SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl => {
            Some(conn.sasl_mechanism.unwrap_or(SaslMechanism::ScramSha512))
        }
        SecurityProtocol::Plaintext | SecurityProtocol::Ssl => None,
    }
}

/// rustls settings: the stream's CA when it names one (`ssl.ca.pem`), else the system's roots,
/// as librdkafka does.
fn tls_config(conn: &KafkaConnection) -> Result<Arc<rustls::ClientConfig>, AlterError> {
    let mut roots = rustls::RootCertStore::empty();
    match &conn.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert =
                    cert.map_err(|e| AlterError::Config(format!("the Kafka CA is not PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| AlterError::Config(format!("the Kafka CA is unusable: {e}")))?;
            }
            if roots.is_empty() {
                return Err(AlterError::Config(
                    "the Kafka CA holds no certificate".into(),
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    // The ring provider explicitly: the process may hold no default provider (see Cargo.toml).
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AlterError::Config(format!("TLS settings: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A request this client sends, with its API key and response. kafka-protocol's own `Request`
/// trait exists only with its `broker` feature, which would compile every request decoder too.
trait Request: Message + Encodable + HeaderVersion {
    const KEY: ApiKey;
    type Response: Decodable + HeaderVersion;
}

impl Request for ApiVersionsRequest {
    const KEY: ApiKey = ApiKey::ApiVersions;
    type Response = ApiVersionsResponse;
}

impl Request for SaslHandshakeRequest {
    const KEY: ApiKey = ApiKey::SaslHandshake;
    type Response = SaslHandshakeResponse;
}

impl Request for SaslAuthenticateRequest {
    const KEY: ApiKey = ApiKey::SaslAuthenticate;
    type Response = SaslAuthenticateResponse;
}

impl Request for IncrementalAlterConfigsRequest {
    const KEY: ApiKey = ApiKey::IncrementalAlterConfigs;
    type Response = IncrementalAlterConfigsResponse;
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection to one broker.
struct Broker {
    addr: String,
    io: Box<dyn Io>,
    correlation_id: i32,
}

impl Broker {
    async fn connect(
        addr: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, AlterError> {
        let unreachable = |e: std::io::Error| AlterError::Unreachable(format!("{addr}: {e}"));
        let tcp = TcpStream::connect(addr).await.map_err(unreachable)?;
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(config) => {
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr, |(host, _)| host)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = ServerName::try_from(host.to_string()).map_err(|e| {
                    AlterError::Config(format!("{addr}: {host:?} is not a TLS server name: {e}"))
                })?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        AlterError::Unreachable(format!("{addr}: TLS handshake failed: {e}"))
                    })?;
                Box::new(tls)
            }
        };
        Ok(Self {
            addr: addr.to_string(),
            io,
            correlation_id: 0,
        })
    }

    fn garbled(&self, what: impl std::fmt::Display) -> AlterError {
        AlterError::Unreachable(format!("{}: {what}", self.addr))
    }

    /// One request and its response, at `version` (which the caller negotiated).
    async fn call<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, AlterError> {
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY as i16;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str(CLIENT_ID));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, R::header_version(version))
            .and_then(|()| request.encode(&mut buf, version))
            .map_err(|e| self.garbled(format!("cannot encode the request: {e}")))?;
        let size = i32::try_from(buf.len()).map_err(|_| self.garbled("request too large"))?;
        let io_err =
            |addr: &str, e: std::io::Error| AlterError::Unreachable(format!("{addr}: {e}"));
        self.io
            .write_all(&size.to_be_bytes())
            .await
            .map_err(|e| io_err(&self.addr, e))?;
        self.io
            .write_all(&buf)
            .await
            .map_err(|e| io_err(&self.addr, e))?;
        self.io.flush().await.map_err(|e| io_err(&self.addr, e))?;
        let size = self
            .io
            .read_i32()
            .await
            .map_err(|e| io_err(&self.addr, e))?;
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s <= MAX_RESPONSE)
            .ok_or_else(|| {
                self.garbled(format!("answer of {size} bytes is not a Kafka response"))
            })?;
        let mut body = vec![0; size];
        self.io
            .read_exact(&mut body)
            .await
            .map_err(|e| io_err(&self.addr, e))?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(|e| self.garbled(format!("garbled response header: {e}")))?;
        if header.correlation_id != self.correlation_id {
            return Err(self.garbled("response to another request"));
        }
        R::Response::decode(&mut body, version)
            .map_err(|e| self.garbled(format!("garbled response: {e}")))
    }

    /// The version of `R` both sides speak: the highest this crate encodes that the broker
    /// lists. ApiVersions v0 is understood by every broker since Kafka 0.10.
    async fn negotiate<R: Request>(&mut self) -> Result<i16, AlterError> {
        let versions: ApiVersionsResponse = self.call(&ApiVersionsRequest::default(), 0).await?;
        if versions.error_code != 0 {
            return Err(refused(versions.error_code, None));
        }
        let ours = R::VERSIONS;
        versions
            .api_keys
            .iter()
            .find(|k| k.api_key == R::KEY as i16)
            .map(|k| (ours.min.max(k.min_version), ours.max.min(k.max_version)))
            .filter(|(min, max)| min <= max)
            .map(|(_, max)| max)
            .ok_or_else(|| AlterError::Refused {
                code: UNSUPPORTED_VERSION,
                message: format!(
                    "the broker at {} offers no version {ours} of {:?}",
                    self.addr,
                    R::KEY
                ),
            })
    }

    /// SaslHandshake v1 then SaslAuthenticate (KIP-152), as librdkafka does.
    async fn authenticate(
        &mut self,
        conn: &KafkaConnection,
        mechanism: SaslMechanism,
    ) -> Result<(), AlterError> {
        let name = match mechanism {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        };
        let mut handshake = SaslHandshakeRequest::default();
        handshake.mechanism = StrBytes::from_static_str(name);
        let answer = self.call(&handshake, 1).await?;
        if answer.error_code != 0 {
            let offered: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(refused(
                answer.error_code,
                Some(&format!("SASL {name}; the broker offers {offered:?}")),
            ));
        }
        let user = conn.username.as_deref().unwrap_or_default();
        let password = conn.password.as_deref().unwrap_or_default();
        match mechanism {
            SaslMechanism::Plain => {
                self.sasl_step(format!("\0{user}\0{password}").into_bytes())
                    .await?;
            }
            SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                let mut nonce = [0u8; 24];
                ring::rand::SystemRandom::new()
                    .fill(&mut nonce)
                    .map_err(|_| AlterError::Config("no randomness for the SCRAM nonce".into()))?;
                let mut scram = Scram::new(mechanism, user, password, &B64.encode(nonce));
                let server_first = self.sasl_step(scram.client_first().into_bytes()).await?;
                let client_final = scram.client_final(&server_first)?;
                let server_final = self.sasl_step(client_final.into_bytes()).await?;
                scram.verify_server(&server_final)?;
            }
        }
        Ok(())
    }

    async fn sasl_step(&mut self, auth_bytes: Vec<u8>) -> Result<Vec<u8>, AlterError> {
        let mut request = SaslAuthenticateRequest::default();
        request.auth_bytes = Bytes::from(auth_bytes);
        let answer = self.call(&request, 0).await?;
        if answer.error_code != 0 {
            let message = answer.error_message.as_ref().map(|m| m.to_string());
            return Err(refused(answer.error_code, message.as_deref()));
        }
        Ok(answer.auth_bytes.to_vec())
    }

    async fn alter(&mut self, topic: &str, ops: &[ConfigOp]) -> Result<(), AlterError> {
        let version = self.negotiate::<IncrementalAlterConfigsRequest>().await?;
        let mut request = IncrementalAlterConfigsRequest::default();
        request.resources = vec![
            AlterConfigsResource::default()
                .with_resource_type(RESOURCE_TOPIC)
                .with_resource_name(StrBytes::from_string(topic.to_string()))
                .with_configs(ops.iter().map(alterable).collect()),
        ];
        let answer = self.call(&request, version).await?;
        match answer.responses.iter().find(|r| r.error_code != 0) {
            None => Ok(()),
            Some(r) => {
                let message = r.error_message.as_ref().map(|m| m.to_string());
                Err(refused(r.error_code, message.as_deref()))
            }
        }
    }
}

fn alterable(op: &ConfigOp) -> AlterableConfig {
    // config_operation: 0 SET, 1 DELETE (KIP-339).
    match op {
        ConfigOp::Set(k, v) => AlterableConfig::default()
            .with_name(StrBytes::from_string(k.clone()))
            .with_config_operation(0)
            .with_value(Some(StrBytes::from_string(v.clone()))),
        ConfigOp::Delete(k) => AlterableConfig::default()
            .with_name(StrBytes::from_string(k.clone()))
            .with_config_operation(1)
            .with_value(None),
    }
}

/// The broker's refusal, named as Kafka names the code.
fn refused(code: i16, message: Option<&str>) -> AlterError {
    let name = match ResponseError::try_from_code(code) {
        Some(ResponseError::Unknown(_)) | None => "unknown error".to_string(),
        Some(e) => e.to_string(),
    };
    let text = format!("broker error {code} ({name})");
    AlterError::Refused {
        code,
        message: match message {
            Some(m) if !m.is_empty() => format!("{text}: {m}"),
            _ => text,
        },
    }
}

/// The client side of SCRAM (RFC 5802) as Kafka uses it (KIP-84): no channel binding, the
/// username escaped as a saslname.
struct Scram {
    mechanism: SaslMechanism,
    user: String,
    password: String,
    client_nonce: String,
    /// The server signature expected in the final message, known after `client_final`.
    server_signature: Option<Vec<u8>>,
}

impl Scram {
    fn new(mechanism: SaslMechanism, user: &str, password: &str, client_nonce: &str) -> Self {
        Self {
            mechanism,
            user: user.replace('=', "=3D").replace(',', "=2C"),
            password: password.to_string(),
            client_nonce: client_nonce.to_string(),
            server_signature: None,
        }
    }

    fn client_first_bare(&self) -> String {
        format!("n={},r={}", self.user, self.client_nonce)
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare())
    }

    fn algorithms(
        &self,
    ) -> (
        ring::pbkdf2::Algorithm,
        ring::hmac::Algorithm,
        &'static ring::digest::Algorithm,
    ) {
        match self.mechanism {
            SaslMechanism::ScramSha512 => (
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                ring::hmac::HMAC_SHA512,
                &ring::digest::SHA512,
            ),
            _ => (
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                ring::hmac::HMAC_SHA256,
                &ring::digest::SHA256,
            ),
        }
    }

    fn client_final(&mut self, server_first: &[u8]) -> Result<String, AlterError> {
        let bad = |what: &str| AlterError::Refused {
            code: SASL_AUTHENTICATION_FAILED,
            message: format!("SCRAM: the server's first message {what}"),
        };
        let server_first = std::str::from_utf8(server_first).map_err(|_| bad("is not UTF-8"))?;
        let attr = |name: &str| {
            server_first
                .split(',')
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        };
        let nonce = attr("r").ok_or_else(|| bad("has no nonce"))?;
        if !nonce.starts_with(&self.client_nonce) {
            return Err(bad("does not extend our nonce"));
        }
        let salt = attr("s")
            .and_then(|s| B64.decode(s).ok())
            .ok_or_else(|| bad("has no salt"))?;
        let iterations = attr("i")
            .and_then(|i| i.parse::<u32>().ok())
            .and_then(std::num::NonZeroU32::new)
            .ok_or_else(|| bad("has no iteration count"))?;
        let (pbkdf2, hmac, digest) = self.algorithms();
        let mut salted = vec![0u8; digest.output_len()];
        ring::pbkdf2::derive(
            pbkdf2,
            iterations,
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let salted = ring::hmac::Key::new(hmac, &salted);
        let client_key = ring::hmac::sign(&salted, b"Client Key");
        let stored_key = ring::digest::digest(digest, client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{server_first},{without_proof}",
            self.client_first_bare()
        );
        let client_signature = ring::hmac::sign(
            &ring::hmac::Key::new(hmac, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = ring::hmac::sign(&salted, b"Server Key");
        let server_signature = ring::hmac::sign(
            &ring::hmac::Key::new(hmac, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        self.server_signature = Some(server_signature.as_ref().to_vec());
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server's proof that it knows the password too.
    fn verify_server(&self, server_final: &[u8]) -> Result<(), AlterError> {
        let text = String::from_utf8_lossy(server_final);
        let fail = |message: String| AlterError::Refused {
            code: SASL_AUTHENTICATION_FAILED,
            message,
        };
        if let Some(e) = text.strip_prefix("e=") {
            return Err(fail(format!("SCRAM: the server refused: {e}")));
        }
        let signature = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v.trim()).ok());
        match (&signature, &self.server_signature) {
            (Some(got), Some(want)) if got == want => Ok(()),
            _ => Err(fail(
                "SCRAM: the server's signature does not verify; it does not know the password"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scram_sha256_follows_rfc_7677() {
        // The example exchange of RFC 7677 section 3.
        let mut scram = Scram::new(
            SaslMechanism::ScramSha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        assert_eq!(scram.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            scram.client_final(server_first).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        scram
            .verify_server(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        let forged = scram
            .verify_server(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap_err();
        assert!(forged.to_string().contains("does not verify"), "{forged}");
    }

    #[test]
    fn scram_refuses_a_server_that_changes_our_nonce() {
        let mut scram = Scram::new(SaslMechanism::ScramSha512, "u", "p", "abc");
        let err = scram.client_final(b"r=xyz,s=AAAA,i=4096").unwrap_err();
        assert!(err.to_string().contains("nonce"), "{err}");
    }

    #[test]
    fn usernames_are_escaped_as_saslnames() {
        let scram = Scram::new(SaslMechanism::ScramSha256, "a=b,c", "p", "n");
        assert_eq!(scram.client_first(), "n,,n=a=3Db=2Cc,r=n");
    }

    #[test]
    fn refusals_carry_kafkas_name_of_the_code() {
        let err = refused(40, Some("bad"));
        assert_eq!(err.to_string(), "broker error 40 (InvalidConfig): bad");
    }
}
