//! A page on another origin uses the bridge from a real browser (headless Chromium, driven as in
//! `standalone_viewer.rs`), against the real `eventstream-dataplane bridge` process whose
//! `ingest.corsOrigins` lists the page's origin:
//!
//! 1. the page's `EventSource` on `/sse` receives the events, its `fetch` of `/health` and
//!    `/stats` is allowed, and its WebSocket opens; after the bridge is SIGKILLed and started
//!    again on the same port, the `EventSource` reconnects by itself (sending `Last-Event-ID`
//!    across origins) and gets exactly the events it missed;
//! 2. the same page served from an origin that is not listed gets nothing: `EventSource` and
//!    `fetch` are blocked by CORS, the WebSocket upgrade is refused (403, also checked from a
//!    non-browser client, which without an `Origin` header is let through).

mod bridge_support;
mod standalone_support;

use std::time::Duration;

use axum::response::Html;
use bridge_support::BridgeProcess;
use eventstream_testkit::MockKafka;
use serde_json::{Value, json};
use standalone_support::Browser;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The page: an `EventSource` on `*`, `fetch` of `/health` and `/stats`, and a WebSocket, all to
/// the bridge at `bridge` (another origin); what happened is kept in `window.t`.
fn page(bridge: &str) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>cross-origin</title></head><body><div id="notice"></div><div id="state-text"></div><script>
const bridge = "{bridge}";
window.t = {{ got: [], ids: [], subscribed: 0, errors: 0, health: null, stats: null, ws: "connecting" }};
const es = new EventSource(`http://${{bridge}}/sse?channel=*`);
window.es = es;
es.addEventListener("subscribed", () => {{ t.subscribed++; }});
es.onmessage = (e) => {{ const f = JSON.parse(e.data); t.got.push(f.data.n); t.ids.push(e.lastEventId); }};
es.onerror = () => {{ t.errors++; }};
fetch(`http://${{bridge}}/health`).then(r => r.json()).then(j => {{ t.health = j.status; }}, () => {{ t.health = "blocked"; }});
fetch(`http://${{bridge}}/stats`).then(r => r.json()).then(j => {{ t.stats = j.stream; }}, () => {{ t.stats = "blocked"; }});
const ws = new WebSocket(`ws://${{bridge}}/ws`);
ws.onopen = () => {{ t.ws = "open"; }};
ws.onclose = (e) => {{ if (t.ws !== "open") t.ws = `closed:${{e.code}}`; }};
// What a failed wait prints (standalone_support's Browser reads these two elements).
setInterval(() => {{ document.getElementById("state-text").textContent = JSON.stringify(t); }}, 200);
</script></body></html>"#
    )
}

async fn produce(bridge: &BridgeProcess, n: u64) {
    let response = reqwest::Client::new()
        .post(bridge.url("/produce"))
        .json(&json!({ "n": n }))
        .send()
        .await
        .expect("produce");
    assert_eq!(response.status().as_u16(), 200, "produce {n}");
}

async fn page_value(browser: &mut Browser, expr: &str) -> Value {
    browser.eval(expr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_an_allowed_origin_streams_over_sse_and_others_are_refused() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("xo", 1, 1).expect("topic");
    let bridge_port = bridge_support::free_port();
    let bridge_addr = format!("127.0.0.1:{bridge_port}");

    // The page's own server: another port is another origin. `localhost` and `127.0.0.1` are
    // two origins of the same server; only the second is allowed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind page server");
    let page_port = listener.local_addr().expect("addr").port();
    let html = page(&bridge_addr);
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { Html(html) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let allowed = format!("http://127.0.0.1:{page_port}");
    let refused = format!("http://localhost:{page_port}");

    let config = bridge_support::config(
        bridge_port,
        &kafka.bootstrap(),
        "xo",
        "",
        &format!("corsOrigins: ['{allowed}']"),
    );
    let mut bridge = BridgeProcess::spawn(bridge_port, &config);
    bridge
        .until("ready", "/readyz", |status, _| status == 200)
        .await;

    let mut browser = Browser::launch().await;
    browser.navigate(&format!("{allowed}/")).await;
    browser
        .wait_for(
            "the cross-origin EventSource to subscribe, fetch to succeed, the WebSocket to open",
            SECS(30),
            "t.subscribed >= 1 && t.health !== null && t.stats !== null && t.ws !== 'connecting'",
        )
        .await;
    assert_eq!(page_value(&mut browser, "t.health").await, "healthy");
    assert_eq!(page_value(&mut browser, "t.stats").await, "test/probes");
    assert_eq!(page_value(&mut browser, "t.ws").await, "open");

    for n in 0..3 {
        produce(&bridge, n).await;
    }
    browser
        .wait_for("three events", SECS(30), "t.got.length >= 3")
        .await;
    assert_eq!(page_value(&mut browser, "t.got").await, json!([0, 1, 2]));

    // The bridge crashes and comes back on the same port; events produced meanwhile reach the
    // page once its EventSource reconnected with Last-Event-ID (a cross-origin request too).
    bridge.signal("KILL");
    let _ = bridge.exit().await;
    browser
        .wait_for("the EventSource to notice", SECS(30), "t.errors >= 1")
        .await;
    let mut bridge = BridgeProcess::spawn(bridge_port, &config);
    bridge
        .until("ready again", "/readyz", |status, _| status == 200)
        .await;
    for n in 3..6 {
        produce(&bridge, n).await;
    }
    browser
        .wait_for(
            "the reconnected EventSource to catch up",
            SECS(45),
            "t.got.length >= 6",
        )
        .await;
    // Nothing lost, nothing twice (give a duplicate the chance to show).
    tokio::time::sleep(SECS(1)).await;
    assert_eq!(
        page_value(&mut browser, "t.got").await,
        json!([0, 1, 2, 3, 4, 5]),
        "ids: {}",
        page_value(&mut browser, "t.ids").await
    );
    assert!(
        page_value(&mut browser, "t.subscribed").await.as_u64() >= Some(2),
        "a second subscription after the restart"
    );

    // The same page from an origin that is not listed.
    browser.navigate(&format!("{refused}/")).await;
    browser
        .wait_for(
            "everything to fail on the refused origin",
            SECS(30),
            "window.es && es.readyState === 2 && t.health !== null && t.stats !== null && t.ws !== 'connecting'",
        )
        .await;
    assert_eq!(page_value(&mut browser, "t.health").await, "blocked");
    assert_eq!(page_value(&mut browser, "t.stats").await, "blocked");
    assert_eq!(page_value(&mut browser, "t.ws").await, "closed:1006");
    assert_eq!(page_value(&mut browser, "t.got").await, json!([]));

    // What the browser could not say: the upgrade was refused with 403 by the bridge, and a
    // client without Origin (not a browser) is let through.
    let url = format!("ws://{bridge_addr}/ws");
    let mut request = url.as_str().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("Origin", HeaderValue::from_str(&refused).expect("origin"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    let mut request = url.as_str().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("Origin", HeaderValue::from_str(&allowed).expect("origin"));
    tokio_tungstenite::connect_async(request)
        .await
        .expect("the allowed origin upgrades");
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("no Origin: not a browser, not checked");

    // Security headers on the fan-out's routes too.
    let health = reqwest::get(bridge.url("/health")).await.expect("health");
    assert_eq!(health.headers()["x-content-type-options"], "nosniff");
    let metrics = reqwest::get(bridge.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("eventstream_ws_connections_rejected_total")
                && l.contains("reason=\"forbidden_origin\"")
                && !l.ends_with(" 0")
        ),
        "refusals counted:\n{metrics}"
    );
    drop(browser);
    drop(bridge);
    drop(kafka);
}
