//! The built-in stream viewer: `/` serves a page embedded in the binary (no CDN, works offline),
//! and `GET /streams` tells it which streams exist and where their `/ws` and `/produce` are.
//!
//! The page (`dataplane/viewer/`) speaks protocol v1 (`docs/protocol.md`) like any client. The
//! `broker.epoch` in `/streams` changes whenever the embedded broker is new (a restarted
//! process starts with an empty broker whose offsets mean nothing to the page's saved
//! positions); with `--kafka-bootstrap` it is the broker's address, so a restarted standalone
//! keeps it and the page resumes where it was.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use eventstream_crds::config::DataplaneConfig;
use serde_json::{Value, json};

use crate::relay::Shared;

const INDEX_HTML: &str = include_str!("../../viewer/index.html");
const VIEWER_JS: &str = include_str!("../../viewer/viewer.js");
const VIEWER_CSS: &str = include_str!("../../viewer/viewer.css");
const FAVICON_SVG: &str = include_str!("../../viewer/favicon.svg");

/// Scripts and styles from this origin only; WebSocket and fetch to it.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Where the page's Kafka is.
#[derive(Debug, Clone)]
pub struct BrokerInfo {
    /// The embedded mock cluster (true) or `--kafka-bootstrap` (false).
    pub embedded: bool,
    /// Its bootstrap list.
    pub bootstrap: String,
    /// Changes when the embedded broker is a new one; see the [module docs](self).
    pub epoch: String,
}

/// One stream as the page sees it.
pub struct StreamInfo {
    /// The stream's config.
    pub config: DataplaneConfig,
    /// Path prefix of its routes: `""` (served at the root) or `/streams/{name}`.
    pub prefix: String,
    /// Whether the demo generator writes into it.
    pub demo: bool,
    /// The fan-out (for the partition count).
    pub relay: Arc<Shared>,
}

struct Page {
    broker: BrokerInfo,
    streams: Vec<StreamInfo>,
}

/// `/`, `/viewer/*` and `/streams`.
pub fn routes(broker: BrokerInfo, streams: Vec<StreamInfo>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/viewer/viewer.js",
            get(|| async { asset("text/javascript; charset=utf-8", VIEWER_JS) }),
        )
        .route(
            "/viewer/viewer.css",
            get(|| async { asset("text/css; charset=utf-8", VIEWER_CSS) }),
        )
        .route(
            "/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON_SVG) }),
        )
        .route("/streams", get(list))
        .with_state(Arc::new(Page { broker, streams }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn list(State(page): State<Arc<Page>>) -> impl IntoResponse {
    let streams: Vec<Value> = page.streams.iter().map(describe).collect();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "broker": {
                "embedded": page.broker.embedded,
                "bootstrap": page.broker.bootstrap,
                "epoch": page.broker.epoch,
            },
            "streams": streams,
        })),
    )
}

fn describe(s: &StreamInfo) -> Value {
    let c = &s.config;
    let channel = match (&c.websocket.channel.field, &c.websocket.channel.header) {
        (Some(field), _) => json!({"source": "field", "pointer": field}),
        (None, Some(name)) => json!({"source": "header", "name": name}),
        (None, None) => json!({"source": "key"}),
    };
    let p = &s.prefix;
    json!({
        "name": c.stream.name,
        "topic": c.topic,
        "partitions": s.relay.hub.partitions().len(),
        "paths": {
            "ws": format!("{p}/ws"),
            "sse": format!("{p}/sse"),
            "produce": format!("{p}/produce"),
            "health": format!("{p}/health"),
            "stats": format!("{p}/stats"),
        },
        "websocket": c.websocket.enabled,
        "ingest": c.ingest.enabled,
        "auth": c.auth.is_some(),
        "channel": channel,
        "keyField": c.ingest.key_field,
        "requiredFields": c.ingest.required_fields,
        "sinkTable": c.sink.as_ref().map(|s| s.table.clone()),
        "demo": s.demo,
        "example": example(c, s.demo),
    })
}

/// A test event that passes the stream's required fields and key (not its JSON Schema, which
/// the page cannot guess: the user edits the event and the answer names what is missing).
pub fn example(config: &DataplaneConfig, demo: bool) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut event = serde_json::Map::new();
    event.insert("eventType".into(), json!("test"));
    if demo {
        event.insert("sessionId".into(), json!("session-spa"));
        event.insert("driver".into(), json!("You"));
        event.insert("speedKph".into(), json!(212.5));
    }
    event.insert("message".into(), json!("hello from the stream viewer"));
    event.insert("timestamp".into(), json!(now));
    let key = config.ingest.key_field.iter();
    for field in config.ingest.required_fields.iter().chain(key) {
        // Only top-level names can be filled in without guessing the shape of nested ones.
        let name = field.strip_prefix('/').unwrap_or(field);
        if !name.is_empty() && !name.contains('/') && !event.contains_key(name) {
            event.insert(name.into(), json!(format!("test-{name}")));
        }
    }
    Value::Object(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_satisfies_required_fields_and_key() {
        let config =
            crate::standalone::streams::from_flags("orders", Some("/orderId")).expect("config");
        let mut config = config;
        config.ingest.required_fields = vec!["userId".into(), "/amount".into()];
        let e = example(&config, false);
        for f in ["orderId", "userId", "amount", "timestamp", "eventType"] {
            assert!(e.get(f).is_some(), "{f} missing in {e}");
        }
        let demo = example(&crate::standalone::streams::default_stream(), true);
        assert_eq!(demo["sessionId"], "session-spa");
    }

    #[test]
    fn assets_are_embedded() {
        assert!(INDEX_HTML.contains("viewer.js"));
        assert!(VIEWER_JS.contains("eventstream.v1.json"));
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
    }
}
