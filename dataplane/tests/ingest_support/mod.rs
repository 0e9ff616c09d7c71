//! Shared by the `ingest_*` integration tests: a dataplane config for a test broker, and the
//! ingest routes merged with the ops routes, served over real HTTP on 127.0.0.1.
#![allow(dead_code)]

use std::net::SocketAddr;

use eventstream_crds::config::DataplaneConfig;
use eventstream_dataplane::ingest::Ingest;
use eventstream_dataplane::server::{self, Readiness};
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

/// A served ingest.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The ingest behind it.
    pub ingest: Ingest,
    shutdown: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A config for stream `test/ingest` on `topic` at `bootstrap`, with `extra` YAML appended
/// (e.g. an `ingest:` block).
pub fn config(bootstrap: &str, topic: &str, extra: &str) -> DataplaneConfig {
    let text = format!(
        "stream: {{ namespace: test, name: ingest }}\nkafka: {{ bootstrapServers: '{bootstrap}' }}\ntopic: {topic}\n{extra}"
    );
    DataplaneConfig::from_yaml(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

/// Builds ingest for `config` and serves it with the ops routes.
pub async fn serve(config: &DataplaneConfig, jwt_key: Option<&str>) -> TestServer {
    let registry = Registry::new();
    let ingest = Ingest::with_jwt_key(config, &registry, jwt_key).expect("ingest starts");
    let router = ingest
        .routes()
        .merge(server::ops_routes(registry, Readiness::default()));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    tokio::spawn(server::serve(listener, router, shutdown.clone()));
    TestServer {
        url,
        ingest,
        shutdown,
    }
}

/// An HTTP client for tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(2000)
        .build()
        .expect("client")
}

/// Java's (and librdkafka's `murmur2`) partition of `key` among `partitions`.
pub fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = SEED ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions as u32) as i32
}
