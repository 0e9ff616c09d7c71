//! A TLS listener in front of a plaintext server: what a Kafka `SSL` or `SASL_SSL` listener
//! looks like to a client, for a broker that serves no TLS itself (tansu 0.6 parses `--cert`
//! and `--key` but never uses them).
//!
//! [`TlsFront::start`] binds a free port on 127.0.0.1 at once, makes a throw-away CA and a
//! server certificate for `localhost` and `127.0.0.1`, writes the CA to `ca.pem` in a temp
//! dir (for `ssl.ca.location`), and serves on a thread of its own: each connection's TLS
//! handshake is completed, then its bytes are copied to and from the upstream port as they
//! are. The upstream port can change while it runs ([`TlsFront::forward_to`]), so a broker
//! can be told to advertise the front's address before the broker's own port is known.
//! Dropping the value stops the thread; connections in progress end with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use tokio::sync::oneshot;

use crate::HarnessError;
use crate::postgres::TestCa;

/// A running TLS front; see the [module docs](self).
#[derive(Debug)]
pub struct TlsFront {
    port: u16,
    upstream: Arc<AtomicU16>,
    ca_file: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TlsFront {
    /// Binds and serves; connections wait for an upstream port (see [`forward_to`](Self::forward_to))
    /// and are closed while there is none.
    pub fn start() -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("eventstream-tls-front-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the TLS front's temp dir", e))?;
        let ca = TestCa::new("eventstream-kafka-test-ca")?;
        let ca_file = dir.path().join("ca.pem");
        ca.write_cert(&ca_file)?;
        let leaf = ca.issue("localhost", &["localhost", "127.0.0.1"])?;
        let acceptor = acceptor(&leaf.cert_pem, &leaf.key_pem)?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| HarnessError::io("binding the TLS front", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| HarnessError::io("making the TLS front's listener non-blocking", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| HarnessError::io("reading the TLS front's port", e))?
            .port();
        let upstream = Arc::new(AtomicU16::new(0));
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HarnessError::io("building the TLS front's runtime", e))?;
        let to = upstream.clone();
        let thread = std::thread::Builder::new()
            .name("tls-front".into())
            .spawn(move || runtime.block_on(serve(listener, acceptor, to, stopped)))
            .map_err(|e| HarnessError::io("spawning the TLS front's thread", e))?;
        Ok(Self {
            port,
            upstream,
            ca_file,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        })
    }

    /// Connections accepted from now on go to `127.0.0.1:port`.
    pub fn forward_to(&self, port: u16) {
        self.upstream.store(port, Ordering::Release);
    }

    /// The TLS port (on 127.0.0.1; the certificate names `localhost` and `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `localhost:PORT`, for `bootstrap.servers` and for a broker to advertise.
    pub fn bootstrap(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// The CA certificate (PEM) that signed the front's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn acceptor(cert_pem: &str, key_pem: &str) -> Result<tokio_rustls::TlsAcceptor, HarnessError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: String| HarnessError::InvalidState(format!("TLS front {what}: {e}"));
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad("key", e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("protocol versions", e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad("certificate and key", e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    upstream: Arc<AtomicU16>,
    mut stopped: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let tcp = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        let port = upstream.load(Ordering::Acquire);
        tokio::spawn(async move {
            if port == 0 {
                return;
            }
            // A failed handshake (a client that does not trust the CA, or speaks plaintext)
            // just ends the connection, as a broker's TLS listener does.
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(mut plain) =
                tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await
            else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        });
    }
}
