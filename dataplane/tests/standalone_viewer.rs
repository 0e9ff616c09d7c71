//! The built-in stream viewer in a real browser (headless Chromium over the DevTools protocol)
//! against the real `eventstream-dataplane standalone` process:
//!
//! 1. the page connects to `standalone --demo`, shows live events, follows one channel picked
//!    from the channels it discovered, sends a test event through `/produce` and sees it arrive;
//!    when the process is killed it shows "disconnected", and when it is started again it
//!    reconnects by itself (to a new, empty embedded broker: it says so and follows live);
//! 2. with the broker in another process (`standalone --demo` acting as the broker and
//!    `standalone --kafka-bootstrap` serving the page), the page's server is killed with SIGKILL
//!    and restarted on the same port while events keep coming: the page resumes with its
//!    positions, and every event arrives exactly once (no hole, no duplicate, per partition).
//!
//! Screenshots go to `test-artifacts/`. A missing Chromium fails the test (never skipped).

mod standalone_support;

use std::time::Duration;

use standalone_support::*;

/// One browser test at a time: two Chromiums and several servers on two cores make timing noise.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_shows_demo_events_follows_a_channel_sends_and_reconnects() {
    let _serial = SERIAL.lock().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Standalone::start(&["--demo", "--demo-rate", "40", "--listen", &listen]);
    let url = server.banner("viewer");
    assert_eq!(url, format!("http://{listen}/"));
    assert!(server.banner("kafka").starts_with("127.0.0.1:"));

    let mut browser = Browser::launch().await;
    browser.navigate(&url).await;
    browser
        .wait_for(
            "the page to connect",
            SECS(20),
            "document.body.dataset.state === 'connected'",
        )
        .await;
    browser
        .wait_for(
            "demo events on *",
            SECS(20),
            "Number(document.body.dataset.received) >= 40",
        )
        .await;
    assert_eq!(browser.body("holes").await, "0", "events missing on *");
    assert_eq!(browser.body("dups").await, "0");
    let rows = browser
        .eval("document.querySelectorAll('#rows tr').length")
        .await;
    assert!(rows.as_u64().unwrap_or(0) >= 20, "table rows: {rows}");

    // The channel picker learned the demo's sessions from the events.
    browser
        .wait_for(
            "session-monza among the channel suggestions",
            SECS(10),
            "[...document.querySelectorAll('#channels option')].some(o => o.value === 'session-monza')",
        )
        .await;
    browser
        .eval("document.getElementById('channel').value = 'session-monza'; document.getElementById('follow').click(); true")
        .await;
    browser
        .wait_for(
            "only session-monza rows",
            SECS(20),
            "(() => { const keys = [...document.querySelectorAll('#rows tr td:nth-child(2)')].map(td => td.textContent); \
               return document.body.dataset.channel === 'session-monza' && keys.length >= 5 && keys.every(k => k === 'session-monza'); })()",
        )
        .await;

    // "Send test event": through /produce, Kafka and the fan-out back into the table.
    browser
        .eval(
            "const e = JSON.parse(document.getElementById('event').value); \
             e.sessionId = 'session-monza'; e.message = 'hello from the browser test'; \
             document.getElementById('event').value = JSON.stringify(e); \
             document.getElementById('send').click(); true",
        )
        .await;
    browser
        .wait_for(
            "the send to be acknowledged",
            SECS(15),
            "document.getElementById('send-result').className === 'ok'",
        )
        .await;
    let result = browser
        .eval("document.getElementById('send-result').textContent")
        .await;
    assert!(
        result
            .as_str()
            .unwrap_or_default()
            .starts_with("Stored in Kafka: partition"),
        "{result}"
    );
    browser
        .wait_for(
            "the test event in the table",
            SECS(15),
            "[...document.querySelectorAll('#rows td')].some(td => td.textContent.includes('hello from the browser test'))",
        )
        .await;
    // Let the sparklines draw a few seconds.
    tokio::time::sleep(SECS(3)).await;
    browser
        .screenshot(&artifacts_dir().join("standalone-viewer.png"))
        .await;

    // The server goes away: the page says so.
    server.kill();
    browser
        .wait_for(
            "the disconnected state",
            SECS(15),
            "document.body.dataset.state === 'disconnected' && Number(document.body.dataset.disconnects) >= 1",
        )
        .await;
    let status = browser
        .eval("document.getElementById('state-text').textContent")
        .await;
    assert!(
        status
            .as_str()
            .unwrap_or_default()
            .starts_with("Disconnected"),
        "{status}"
    );
    tokio::time::sleep(SECS(2)).await;
    assert_eq!(browser.body("state").await, "disconnected");

    // It comes back (same port, new empty embedded broker): the page reconnects by itself,
    // notices the new broker, keeps its channel and follows live.
    let received = browser.count("received").await;
    let _server = Standalone::start(&["--demo", "--demo-rate", "40", "--listen", &listen]);
    browser
        .wait_for(
            "the page to reconnect",
            SECS(30),
            "document.body.dataset.state === 'connected' && Number(document.body.dataset.resets) >= 1",
        )
        .await;
    browser
        .wait_for(
            "session-monza events after the restart",
            SECS(30),
            &format!(
                "Number(document.body.dataset.received) >= {} ",
                received + 3
            ),
        )
        .await;
    assert_eq!(browser.body("channel").await, "session-monza");
    assert_eq!(browser.body("dups").await, "0");
    let notice = browser
        .eval("document.getElementById('notice').textContent")
        .await;
    assert!(
        notice
            .as_str()
            .unwrap_or_default()
            .contains("new, empty embedded broker"),
        "{notice}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_resumes_without_a_gap_after_its_server_is_killed_and_restarted() {
    let _serial = SERIAL.lock().await;
    // The broker (and the demo generator) live in their own process, as Kafka does in
    // production; the page talks to a second standalone that uses it.
    let broker_port = free_port();
    let _broker = Standalone::start(&[
        "--demo",
        "--demo-rate",
        "100",
        "--listen",
        &format!("127.0.0.1:{broker_port}"),
    ]);
    let bootstrap = _broker.banner("kafka");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let bridge_args = [
        "--kafka-bootstrap",
        bootstrap.as_str(),
        "--listen",
        listen.as_str(),
    ];
    let mut bridge = Standalone::start(&bridge_args);

    let mut browser = Browser::launch().await;
    browser.navigate(&format!("http://{listen}/")).await;
    browser
        .wait_for(
            "the page to connect",
            SECS(20),
            "document.body.dataset.state === 'connected'",
        )
        .await;
    browser
        .wait_for(
            "events",
            SECS(20),
            "Number(document.body.dataset.received) >= 100",
        )
        .await;

    for round in 1..=2u64 {
        bridge.kill();
        browser
            .wait_for(
                "the disconnected state",
                SECS(15),
                &format!("document.body.dataset.state === 'disconnected' && Number(document.body.dataset.disconnects) >= {round}"),
            )
            .await;
        let before = browser.count("received").await;
        // ~300 events are produced while no bridge runs: they must all arrive after the resume.
        tokio::time::sleep(SECS(3)).await;
        assert!(browser.count("received").await == before);
        bridge = Standalone::start(&bridge_args);
        browser
            .wait_for(
                "the page to resume",
                SECS(30),
                &format!("document.body.dataset.state === 'connected' && Number(document.body.dataset.resumes) >= {round}"),
            )
            .await;
        browser
            .wait_for(
                "the events produced while the server was down",
                SECS(30),
                &format!("Number(document.body.dataset.received) >= {}", before + 300),
            )
            .await;
        // The replay is over (`subscribed` came); live delivery goes on after it.
        browser
            .wait_for(
                "the subscription to be live",
                SECS(15),
                "document.body.dataset.subscribing === '0'",
            )
            .await;
        let resumed = browser.count("received").await;
        browser
            .wait_for(
                "live events after the resume",
                SECS(15),
                &format!(
                    "Number(document.body.dataset.received) >= {} && document.getElementById('latency').textContent !== '–'",
                    resumed + 150
                ),
            )
            .await;
        assert_eq!(
            browser.body("holes").await,
            "0",
            "round {round}: a gap in the offsets"
        );
        assert_eq!(
            browser.body("dups").await,
            "0",
            "round {round}: an event twice"
        );
        assert_eq!(
            browser.body("gaps").await,
            "0",
            "round {round}: a gap frame"
        );
        assert_eq!(
            browser.body("resets").await,
            "0",
            "round {round}: positions thrown away"
        );
    }
    let positions = browser
        .eval("document.getElementById('positions').dataset.positions")
        .await;
    println!("positions after two restarts: {positions}");
    browser
        .screenshot(&artifacts_dir().join("standalone-viewer-resumed.png"))
        .await;
}
