//! Seed 001's front end against EventStream, unchanged but for its server URL:
//!
//! 1. its dashboard page (`tests/socketio_client/seed001/index.html`: socket.io-client in the
//!    browser, `join_dashboard`, `dashboard_joined`, `new_event`) in headless Chromium, served
//!    from its own origin, against a bridge configured with the seed's alias and that origin
//!    in `corsOrigins`: events POSTed to `/produce` appear on the page;
//! 2. `standalone` with nothing configured: its default `telemetry` stream answers the same
//!    join from the real Node client, and a record arrives as `new_event` with the bare payload.
//!
//! Screenshots go to `test-artifacts/`. A missing Chromium or npm fixture fails the test.

mod socketio_support;
mod standalone_support;

use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use eventstream_crds::config::DataplaneConfig;
use eventstream_testkit::MockKafka;
use serde_json::json;
use socketio_support::*;
use standalone_support::{Browser, Standalone, artifacts_dir};

/// One browser test at a time: two Chromiums and several servers on two cores make timing noise.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serves the seed's page and the socket.io-client browser bundle, as the seed's own web
/// server would, on a port (an origin) of its own.
async fn serve_page() -> std::net::SocketAddr {
    let dir = require_fixture();
    let page = std::fs::read_to_string(dir.join("seed001/index.html")).expect("page");
    let bundle =
        std::fs::read_to_string(dir.join("node_modules/socket.io-client/dist/socket.io.min.js"))
            .expect("socket.io-client browser bundle");
    let app = Router::new()
        .route(
            "/",
            get(move || {
                let page = page.clone();
                async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page) }
            }),
        )
        .route(
            "/socket.io.min.js",
            get(move || {
                let bundle = bundle.clone();
                async move { ([(header::CONTENT_TYPE, "text/javascript")], bundle) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_dashboard_in_chromium_shows_events_posted_to_produce() {
    let _serial = SERIAL.lock().await;
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("user_events", 1, 1).expect("topic");
    let page = serve_page().await;
    let origin = format!("http://{page}");
    let yaml = format!(
        "stream: {{ namespace: seeds, name: neo-analytics }}\n\
         kafka: {{ bootstrapServers: '{}', properties: {{ fetch.wait.max.ms: '10' }} }}\n\
         topic: user_events\n\
         server: {{ listen: '127.0.0.1:0', shutdownGrace: 5s }}\n\
         ingest: {{ keyField: /userId, requiredFields: [eventType, userId], corsOrigins: ['{origin}'] }}\n\
         websocket:\n  socketio:\n    aliases:\n\
         \x20     - {{ join: join_dashboard, channel: '*', ack: dashboard_joined, event: new_event, payload: payload }}\n",
        kafka.bootstrap()
    );
    let config = DataplaneConfig::from_yaml(&yaml).expect("config");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = eventstream_dataplane::bridge::start_with_key(
        config,
        prometheus::Registry::new(),
        shutdown.clone(),
        None,
    )
    .await
    .expect("bridge starts");
    let bridge = format!("http://{}", running.local_addr);

    let mut browser = Browser::launch().await;
    browser
        .navigate(&format!("{origin}/?server={bridge}"))
        .await;
    browser
        .wait_for(
            "the dashboard to join",
            WAIT,
            "document.body.dataset.joined === 'yes'",
        )
        .await;

    let http = reqwest::Client::new();
    let types = [
        "like_clicked",
        "comment_posted",
        "share_clicked",
        "page_view",
        "logout",
    ];
    for (i, event_type) in types.iter().enumerate() {
        let response = http
            .post(format!("{bridge}/produce"))
            .json(&json!({
                "eventType": event_type,
                "userId": format!("user-{i}"),
                "timestamp": "2024-01-01T12:00:00.000Z",
                "screen": "main_post",
            }))
            .send()
            .await
            .expect("POST /produce");
        assert!(response.status().is_success(), "{}", response.status());
    }
    browser
        .wait_for(
            "the five events on the page",
            WAIT,
            "document.querySelectorAll('li.event').length >= 5",
        )
        .await;
    let shown = browser
        .eval("[...document.querySelectorAll('li.event')].map(li => li.dataset.type).reverse().join(',')")
        .await;
    assert_eq!(shown, json!(types.join(",")), "in order, each once");
    let text = browser
        .eval("document.querySelector('li.event').textContent")
        .await;
    assert_eq!(text, json!("logout user-4 main_post"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    browser
        .screenshot(&artifacts_dir().join("socketio-seed001.png"))
        .await;
    drop(browser);
    shutdown.cancel();
    let _ = tokio::time::timeout(WAIT, running.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_default_stream_answers_seed_001_join_with_nothing_configured() {
    let _serial = SERIAL.lock().await;
    let port = standalone_support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Standalone::start(&["--listen", &listen]);
    let mut client = NodeClient::spawn(&json!({
        "url": format!("http://{listen}"),
        "joins": [{"event": "join_dashboard"}],
    }));
    client.until_events("dashboard_joined", 1).await;
    let event = json!({
        "eventType": "like_clicked",
        "sessionId": "session-1",
        "userId": "user-123",
        "timestamp": "2024-01-01T12:00:00.000Z",
        "screen": "main_post",
    });
    let response = reqwest::Client::new()
        .post(format!("http://{listen}/produce"))
        .json(&event)
        .send()
        .await
        .expect("POST /produce");
    assert!(response.status().is_success(), "{}", response.status());
    let got = client.until_events("new_event", 1).await;
    let payload = &got[0][0];
    assert_eq!(
        payload["eventType"], "like_clicked",
        "the bare payload: {payload}"
    );
    assert_eq!(payload["userId"], "user-123");
    assert!(payload.get("type").is_none(), "not the v1 event: {payload}");
    assert_eq!(got[0][1]["channel"], "*");
    drop(client);
    drop(server);
}
