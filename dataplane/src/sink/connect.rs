//! Opening a PostgreSQL session: the URL with libpq's TLS parameters, TLS (see [`super::tls`]),
//! and connection errors that name their cause.
//!
//! tokio-postgres understands `sslmode=disable|prefer|require` and nothing else about TLS, and
//! refuses options it does not know. libpq's TLS parameters are therefore taken out of the URL
//! here (URL or `key=value` form) before tokio-postgres parses the rest:
//!
//! | parameter | meaning |
//! |---|---|
//! | `sslmode` | `disable`, `allow`, `prefer` (default), `require`, `verify-ca`, `verify-full` |
//! | `sslrootcert` | PEM file of the CA certificate(s) the server's certificate must chain to, or `system` |
//! | `sslcert`, `sslkey` | PEM client certificate (chain) and its private key |
//! | `sslsni` | `0` to send no SNI |
//!
//! As in libpq: a parameter missing from the URL is taken from `PGSSLMODE`, `PGSSLROOTCERT`,
//! `PGSSLCERT`, `PGSSLKEY`, `PGSSLSNI` when set; `require` without `sslrootcert` encrypts but
//! verifies nothing; with `sslrootcert`, `allow`, `prefer` and `require` verify the chain as
//! `verify-ca` does; `sslrootcert=system` needs `verify-full` (its default). Unlike libpq,
//! `verify-ca` and `verify-full` without `sslrootcert` use the system's roots rather than
//! `~/.postgresql/root.crt`.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustls::CertificateError;
use tokio_postgres::config::{SslMode as PgSslMode, SslNegotiation};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::SinkError;
use super::tls::Tracked;
pub use super::tls::{Roots, SessionTls, SslMode, TlsSettings, Verification};

/// Default connect timeout (TCP) when the URL sets none.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to the TCP connect timeout for the TLS handshake and the login.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `EVENTSTREAM_POSTGRES_URL`: what tokio-postgres takes, plus the TLS settings.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Everything but TLS (its `ssl_mode` is set per connection attempt).
    pub config: Config,
    /// `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslsni`.
    pub tls: TlsSettings,
    /// Where the URL came from, for messages.
    pub var: &'static str,
}

impl From<Config> for Endpoint {
    /// A tokio-postgres config as is: its `sslmode` (disable, prefer, require), no verification.
    fn from(config: Config) -> Self {
        let mode = match config.get_ssl_mode() {
            PgSslMode::Disable => SslMode::Disable,
            PgSslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        let direct = config.get_ssl_negotiation() == SslNegotiation::Direct;
        Self {
            config,
            tls: TlsSettings {
                mode,
                verification: Verification::None,
                client_cert: None,
                sni: true,
                direct,
            },
            var: "the PostgreSQL config",
        }
    }
}

impl Endpoint {
    /// Parses a PostgreSQL URL (`postgres://…?sslmode=verify-full&sslrootcert=/ca.pem`) or
    /// `key=value` string read from `var`, and checks that its certificate files can be used.
    /// TLS parameters the URL does not set come from libpq's `PGSSL*` environment variables.
    pub fn parse(url: &str, var: &'static str) -> Result<Self, SinkError> {
        Self::parse_with_env(url, var, |name| std::env::var(name).ok())
    }

    /// [`parse`](Self::parse) with the environment given as a function (tests).
    pub fn parse_with_env(
        url: &str,
        var: &'static str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SinkError> {
        let bad = |message: String| SinkError::TlsConfig { var, message };
        let (rest, mut params) = split_tls_params(url).map_err(bad)?;
        params.fill_from_env(env);
        let mut config =
            Config::from_str(&rest).map_err(|source| SinkError::InvalidUrl { var, source })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("eventstream-sink");
        }
        config.keepalives_idle(Duration::from_secs(30));
        let direct = config.get_ssl_negotiation() == SslNegotiation::Direct;
        let tls = params.settings(direct).map_err(bad)?;
        tls.client_config(var)?;
        // What tokio-postgres alone would do closest to the mode, never weaker than asked.
        config.ssl_mode(match tls.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        Ok(Self { config, tls, var })
    }

    /// `user@host:port/database`, never the password.
    pub fn describe(&self) -> String {
        describe(&self.config)
    }
}

/// `user@host:port/database` of a config, never the password.
pub fn describe(config: &Config) -> String {
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let host = if host.is_empty() {
        config
            .get_hostaddrs()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    } else {
        host
    };
    let port = config
        .get_ports()
        .first()
        .map_or_else(|| "5432".to_string(), u16::to_string);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("(default user)"),
        config.get_dbname().unwrap_or("(default database)")
    )
}

/// The libpq TLS parameters found in a URL.
#[derive(Debug, Default)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    sni: Option<String>,
}

impl TlsParams {
    /// Takes `key = value` if it is one of ours.
    fn take(&mut self, key: &str, value: &str) -> bool {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.root_cert,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            "sslsni" => &mut self.sni,
            _ => return false,
        };
        *slot = Some(value.to_string());
        true
    }

    /// libpq's environment defaults for what the URL left out.
    fn fill_from_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        for (slot, name) in [
            (&mut self.mode, "PGSSLMODE"),
            (&mut self.root_cert, "PGSSLROOTCERT"),
            (&mut self.cert, "PGSSLCERT"),
            (&mut self.key, "PGSSLKEY"),
            (&mut self.sni, "PGSSLSNI"),
        ] {
            if slot.is_none() {
                *slot = env(name).filter(|v| !v.is_empty());
            }
        }
    }

    fn settings(self, direct: bool) -> Result<TlsSettings, String> {
        let explicit = match self.mode.as_deref() {
            None => None,
            Some(value) => Some(SslMode::parse(value).ok_or_else(|| {
                format!(
                    "sslmode={value} is not a libpq sslmode (disable, allow, prefer, require, verify-ca, verify-full)"
                )
            })?),
        };
        let roots = match self.root_cert.as_deref() {
            None | Some("") => None,
            Some("system") => Some(Roots::System),
            Some(path) => Some(Roots::File(PathBuf::from(path))),
        };
        let mode = match (explicit, &roots) {
            (None, Some(Roots::System)) => SslMode::VerifyFull,
            (Some(mode), Some(Roots::System)) if mode != SslMode::VerifyFull => {
                return Err(format!(
                    "sslmode={} may not be used with sslrootcert=system (use sslmode=verify-full)",
                    mode.as_str()
                ));
            }
            (None, _) => SslMode::Prefer,
            (Some(mode), _) => mode,
        };
        let verification = match (mode, roots) {
            (SslMode::VerifyFull, roots) => Verification::Full(roots.unwrap_or(Roots::System)),
            (SslMode::VerifyCa, roots) => Verification::Chain(roots.unwrap_or(Roots::System)),
            // libpq: with a root certificate, the weaker modes verify the chain too.
            (SslMode::Allow | SslMode::Prefer | SslMode::Require, Some(roots)) => {
                Verification::Chain(roots)
            }
            (_, _) => Verification::None,
        };
        let client_cert = match (self.cert, self.key) {
            (None, None) => None,
            (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => {
                Some((PathBuf::from(cert), PathBuf::from(key)))
            }
            _ => return Err("sslcert and sslkey must be given together".to_string()),
        };
        let sni = match self.sni.as_deref() {
            None | Some("1") => true,
            Some("0") => false,
            Some(other) => return Err(format!("sslsni={other}: write 0 or 1")),
        };
        if direct && mode < SslMode::Require {
            return Err(format!(
                "sslmode={} may not be used with sslnegotiation=direct (use sslmode=require, verify-ca or verify-full)",
                mode.as_str()
            ));
        }
        Ok(TlsSettings {
            mode,
            verification,
            client_cert,
            sni,
            direct,
        })
    }
}

/// Splits libpq's TLS parameters off a URL or `key=value` string; the rest is for
/// tokio-postgres.
fn split_tls_params(url: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    let trimmed = url.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), params));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            let value = percent_decode(value)?;
            if !params.take(&key, &value) {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, params));
    }
    let mut kept = Vec::new();
    for (key, value) in key_values(url)? {
        if !params.take(&key, &value) {
            kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
    }
    Ok((kept.join(" "), params))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a URL parameter has an invalid percent escape".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a URL parameter is not UTF-8".to_string())
}

/// libpq's `key = value` connection string (values optionally single-quoted, `\` escapes).
fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("the connection string has no `=` after `{key}`"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value of `{key}`")),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// Opens a session (the connection task is spawned) and tells what its link is.
///
/// `allow` connects without TLS and retries with TLS when the server refuses that; `prefer`
/// connects with TLS when the server offers it and retries without when the handshake fails, as
/// libpq does.
pub async fn connect(endpoint: &Endpoint) -> Result<(Client, SessionTls), SinkError> {
    let tls = &endpoint.tls;
    let rustls_config = tls.client_config(endpoint.var)?;
    let make = MakeRustlsConnect::new(rustls_config);
    match tls.mode {
        SslMode::Disable => attempt(endpoint, &make, PgSslMode::Disable).await,
        SslMode::Allow => match attempt(endpoint, &make, PgSslMode::Disable).await {
            Err(SinkError::TlsRequired { .. }) => {
                attempt(endpoint, &make, PgSslMode::Require).await
            }
            other => other,
        },
        SslMode::Prefer => match attempt(endpoint, &make, PgSslMode::Prefer).await {
            Err(e @ SinkError::TlsHandshake { .. }) => {
                tracing::warn!(error = %e, "TLS failed with sslmode=prefer; connecting without TLS");
                match attempt(endpoint, &make, PgSslMode::Disable).await {
                    // The server wants TLS: the handshake's failure is the one to fix.
                    Err(SinkError::TlsRequired { .. }) => Err(e),
                    other => other,
                }
            }
            other => other,
        },
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            attempt(endpoint, &make, PgSslMode::Require).await
        }
    }
}

async fn attempt(
    endpoint: &Endpoint,
    make: &MakeRustlsConnect,
    mode: PgSslMode,
) -> Result<(Client, SessionTls), SinkError> {
    let mut config = endpoint.config.clone();
    config.ssl_mode(mode);
    let tracked = Tracked {
        inner: make.clone(),
        done: Arc::new(AtomicBool::new(false)),
    };
    let done = tracked.done.clone();
    let hosts = config
        .get_hosts()
        .len()
        .max(config.get_hostaddrs().len())
        .max(1);
    let limit = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT)
        .saturating_mul(u32::try_from(hosts).unwrap_or(u32::MAX))
        .saturating_add(HANDSHAKE_TIMEOUT);
    let (client, connection) = match tokio::time::timeout(limit, config.connect(tracked)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(connect_error(endpoint, e)),
        Err(_) => {
            return Err(SinkError::ConnectTimeout {
                target: endpoint.describe(),
                seconds: limit.as_secs(),
            });
        }
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    let session = if done.load(Ordering::Acquire) {
        SessionTls::Tls {
            mode: endpoint.tls.mode,
            verification: endpoint.tls.verification.clone(),
        }
    } else {
        SessionTls::None {
            mode: endpoint.tls.mode,
        }
    };
    Ok((client, session))
}

/// The rustls error inside a connection error, if the TLS handshake failed.
fn rustls_error(error: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cause = e.source();
    }
    None
}

/// Why a handshake failed, in words, with what to check.
fn handshake_reason(error: &rustls::Error, tls: &TlsSettings, host: &str) -> String {
    let roots = match &tls.verification {
        Verification::Chain(roots) | Verification::Full(roots) => roots.to_string(),
        Verification::None => "the trusted roots".to_string(),
    };
    match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not signed by a CA in {roots} (wrong or incomplete sslrootcert?)"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let names = match cert {
                    CertificateError::NotValidForNameContext { presented, .. } => {
                        format!(" (it names {})", presented.join(", "))
                    }
                    _ => String::new(),
                };
                format!(
                    "the server's certificate is not valid for host {host}{names}; connect with a name in its subjectAltName, or use sslmode=verify-ca to skip the host name check"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the server's certificate has expired ({error})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the server's certificate is not valid yet ({error})")
            }
            CertificateError::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => {
                "the server presents a CA certificate as its own (a self-signed `openssl req -x509` \
                 certificate?), which rustls refuses: give the server a certificate issued by a CA \
                 and trust that CA, or use sslmode=require"
                    .to_string()
            }
            _ => format!("the server's certificate is refused: {error}"),
        },
        _ => error.to_string(),
    }
}

/// Maps a connection error to what it means for the operator of the sink.
fn connect_error(endpoint: &Endpoint, source: tokio_postgres::Error) -> SinkError {
    let target = endpoint.describe();
    let mode = endpoint.tls.mode.as_str();
    if let Some(db) = source.as_db_error() {
        let code = db.code();
        let message = db.message().to_string();
        if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && message.contains("no pg_hba.conf entry")
            && (message.contains("no encryption") || message.contains("SSL off"))
        {
            return SinkError::TlsRequired {
                target,
                mode,
                message,
            };
        }
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return SinkError::Authentication { target, message };
        }
        if *code == SqlState::INVALID_CATALOG_NAME {
            return SinkError::DatabaseMissing { target, message };
        }
    }
    if let Some(tls_error) = rustls_error(&source) {
        let host = endpoint
            .config
            .get_hosts()
            .iter()
            .find_map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => Some(name.clone()),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(_) => None,
            })
            .unwrap_or_default();
        return SinkError::TlsHandshake {
            target,
            mode,
            reason: handshake_reason(tls_error, &endpoint.tls, &host),
        };
    }
    let cause = std::error::Error::source(&source).map(ToString::to_string);
    match cause.as_deref() {
        Some("server does not support TLS") => SinkError::TlsUnavailable { target, mode },
        Some(reason @ "no hostname provided for TLS handshake") => SinkError::TlsHandshake {
            target,
            mode,
            reason: format!("{reason}: name the server with host=, not only hostaddr="),
        },
        _ => SinkError::Unreachable { target, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Endpoint, SinkError> {
        Endpoint::parse_with_env(url, "TEST_URL", |_| None)
    }

    #[test]
    fn pgssl_variables_fill_in_what_the_url_leaves_out() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("verify-ca".to_string()),
            "PGSSLROOTCERT" => Some("system".to_string()),
            _ => None,
        };
        let err = Endpoint::parse_with_env("postgres://u@h/db", "TEST_URL", env)
            .expect_err("verify-ca with system roots is refused, as by libpq");
        assert!(err.to_string().contains("sslrootcert=system"), "{err}");
        let e = Endpoint::parse_with_env("postgres://u@h/db?sslmode=verify-full", "TEST_URL", env)
            .expect("the URL wins");
        assert_eq!(e.tls.verification, Verification::Full(Roots::System));
        let e = Endpoint::parse_with_env("postgres://u@h/db?sslmode=require", "TEST_URL", |n| {
            (n == "PGSSLMODE").then(|| "disable".to_string())
        })
        .expect("parses");
        assert_eq!(e.tls.mode, SslMode::Require);
    }

    #[test]
    fn default_is_prefer_without_verification() {
        let e = parse("postgres://u:secret@db.example:6543/app").expect("parses");
        assert_eq!(e.tls.mode, SslMode::Prefer);
        assert_eq!(e.tls.verification, Verification::None);
        assert_eq!(e.describe(), "u@db.example:6543/app");
    }

    #[test]
    fn require_and_disable_pass_through() {
        let e = parse("postgres://u@h/db?sslmode=require&application_name=x").expect("parses");
        assert_eq!(e.tls.mode, SslMode::Require);
        assert_eq!(e.tls.verification, Verification::None);
        assert_eq!(e.config.get_application_name(), Some("x"));
        let e = parse("postgresql://u@h/db?sslmode=disable").expect("parses");
        assert_eq!(e.tls.mode, SslMode::Disable);
    }

    #[test]
    fn verify_modes_without_root_cert_use_the_system_roots() {
        let e = parse("postgres://u@h/db?sslmode=verify-full").expect("parses");
        assert_eq!(e.tls.verification, Verification::Full(Roots::System));
        let e = parse("postgres://u@h/db?sslmode=verify-ca").expect("parses");
        assert_eq!(e.tls.verification, Verification::Chain(Roots::System));
    }

    #[test]
    fn system_root_cert_means_verify_full() {
        let e = parse("postgres://u@h/db?sslrootcert=system").expect("parses");
        assert_eq!(e.tls.mode, SslMode::VerifyFull);
        let err = parse("postgres://u@h/db?sslrootcert=system&sslmode=require")
            .expect_err("weak mode refused");
        assert!(err.to_string().contains("use sslmode=verify-full"), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn root_cert_file_is_read_and_checked() {
        let missing =
            parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .expect_err("missing file");
        let text = missing.to_string();
        assert!(
            text.contains("cannot read sslrootcert /nonexistent/ca.pem"),
            "{text}"
        );
        assert!(text.contains("TEST_URL"), "{text}");
        assert!(!missing.is_retryable());

        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let url = format!(
            "postgres://u@h/db?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        );
        let err = parse(&url).expect_err("no certificate");
        assert!(err.to_string().contains("holds no certificate"), "{err}");
    }

    #[test]
    fn unknown_sslmode_is_named() {
        let err = parse("postgres://u@h/db?sslmode=verify").expect_err("refused");
        assert!(
            err.to_string()
                .contains("sslmode=verify is not a libpq sslmode"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_libpq_options_are_named() {
        let err =
            parse("postgres://u:pw@h/db?sslmode=require&sslcrl=/crl.pem").expect_err("refused");
        assert_eq!(
            err.to_string(),
            "the PostgreSQL URL in TEST_URL is invalid: invalid connection string: unknown option `sslcrl`"
        );
    }

    #[test]
    fn client_cert_needs_both_files() {
        let err = parse("postgres://u@h/db?sslmode=require&sslcert=/c.pem").expect_err("refused");
        assert!(err.to_string().contains("sslcert and sslkey"), "{err}");
    }

    #[test]
    fn url_params_are_percent_decoded_and_others_kept() {
        let (rest, params) = split_tls_params(
            "postgres://u:p%3Fw@h:5/db?connect_timeout=3&sslrootcert=%2Fetc%2Fca%20x.pem&sslmode=verify-ca",
        )
        .expect("splits");
        assert_eq!(rest, "postgres://u:p%3Fw@h:5/db?connect_timeout=3");
        assert_eq!(params.root_cert.as_deref(), Some("/etc/ca x.pem"));
        assert_eq!(params.mode.as_deref(), Some("verify-ca"));
        let (rest, _) = split_tls_params("postgres://u@h/db?sslmode=require").expect("splits");
        assert_eq!(rest, "postgres://u@h/db");
    }

    #[test]
    fn key_value_strings_are_split_too() {
        let (rest, params) = split_tls_params(
            "host=db.example user=u password='it\\'s x' sslmode = verify-full sslrootcert='/ca dir/ca.pem' dbname=app",
        )
        .expect("splits");
        assert_eq!(params.mode.as_deref(), Some("verify-full"));
        assert_eq!(params.root_cert.as_deref(), Some("/ca dir/ca.pem"));
        let config = Config::from_str(&rest).expect("tokio-postgres parses the rest");
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(config.get_password(), Some(&b"it's x"[..]));
        assert_eq!(config.get_dbname(), Some("app"));
    }

    #[test]
    fn direct_negotiation_needs_a_strong_mode() {
        let err = parse("postgres://u@h/db?sslnegotiation=direct").expect_err("refused");
        assert!(err.to_string().contains("sslnegotiation=direct"), "{err}");
        let e = parse("postgres://u@h/db?sslnegotiation=direct&sslmode=require").expect("parses");
        assert!(e.tls.direct);
    }

    #[test]
    fn the_password_is_never_in_a_tls_error() {
        let err = parse("postgres://u:hunter2@h/db?sslmode=verify-full&sslrootcert=/nope")
            .expect_err("refused");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
