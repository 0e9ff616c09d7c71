//! `eventstream-dataplane standalone` as a user runs it: bad input gets one clear line and a
//! non-zero exit; Ctrl-C stops it cleanly; several streams are served at `/streams/{name}/`
//! with the first also at the root; `--postgres-url` persists the demo into PostgreSQL.

mod standalone_support;

use std::process::Command;
use std::time::{Duration, Instant};

use eventstream_testkit::TestPostgres;
use serde_json::{Value, json};
use standalone_support::*;

/// Runs `standalone ARGS` to completion (it must fail fast) and returns (code, stdout, stderr).
fn fails(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("standalone")
        .args(args)
        .output()
        .expect("run standalone");
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line(stderr: &str, needles: &[&str]) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} missing in: {stderr}");
    }
}

#[test]
fn a_port_in_use_is_one_line_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, _, stderr) = fails(&["--demo", "--listen", &addr]);
    assert_ne!(code, 0);
    assert_one_line(&stderr, &[&addr, "in use", "--listen"]);
}

#[test]
fn an_unreadable_or_invalid_config_is_reported() {
    let (code, _, stderr) = fails(&["--config", "/nonexistent/stream.yaml"]);
    assert_ne!(code, 0);
    assert_one_line(
        &stderr,
        &[
            "cannot read config file /nonexistent/stream.yaml",
            "--config",
        ],
    );

    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("stream.yaml");
    std::fs::write(
        &path,
        "stream: {namespace: shop, name: orders}\ntopic: orders\nwebsocket: {queueMesages: 3}\n",
    )
    .expect("write");
    let (code, _, stderr) = fails(&["--config", path.to_str().expect("utf8")]);
    assert_ne!(code, 0);
    // The first line says what, the next ones list every problem with its path.
    assert!(stderr.starts_with("error: config file"), "{stderr}");
    assert!(
        stderr.contains("websocket.queueMesages: unknown key"),
        "{stderr}"
    );

    let (code, _, stderr) = fails(&["--stream", "Bad_Name"]);
    assert_ne!(code, 0);
    assert_one_line(&stderr, &["--stream", "not a valid stream name"]);
}

#[test]
fn a_bad_postgres_url_is_one_line_before_anything_starts() {
    let listen = format!("127.0.0.1:{}", free_port());
    let (code, stdout, stderr) =
        fails(&["--listen", &listen, "--postgres-url", "postgres://x:y@[::1"]);
    assert_ne!(code, 0);
    assert_one_line(
        &stderr,
        &[
            "--postgres-url",
            "invalid",
            "postgres://user:password@host:port/database",
        ],
    );
    assert!(!stdout.contains("running"), "{stdout}");

    let port = free_port();
    let url = format!("postgres://someone:secret@127.0.0.1:{port}/db");
    let (code, _, stderr) = fails(&["--listen", &listen, "--postgres-url", &url]);
    assert_ne!(code, 0);
    assert_one_line(
        &stderr,
        &[
            "cannot connect to PostgreSQL",
            &format!("127.0.0.1:{port}"),
            "start PostgreSQL or fix the URL",
        ],
    );
    assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
}

#[test]
fn bad_flags_are_refused_by_the_parser() {
    let (code, _, stderr) = fails(&["--demo-rate", "0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--demo-rate"), "{stderr}");
    let (code, _, stderr) = fails(&["--key-field", "/userId"]);
    assert_ne!(code, 0);
    assert_one_line(&stderr, &["--key-field", "--stream"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_it_cleanly_and_several_streams_have_their_paths() {
    let dir = tempfile::tempdir().expect("dir");
    let orders = dir.path().join("orders.yaml");
    // No kafka section: standalone provides the broker.
    std::fs::write(
        &orders,
        "stream: {namespace: shop, name: orders}\ntopic: shop.orders\n\
         ingest: {keyField: /userId, requiredFields: [userId]}\n",
    )
    .expect("write");
    let mut server = Standalone::start(&[
        "--listen",
        "127.0.0.1:0",
        "--demo",
        "--stream",
        "telemetry",
        "--key-field",
        "/sessionId",
        "--config",
        orders.to_str().expect("utf8"),
    ]);
    let url = server.banner("viewer");
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":0/"),
        "{url}"
    );
    let base = url.trim_end_matches('/').to_string();
    let http = reqwest::Client::new();

    let streams: Value = http
        .get(format!("{base}/streams"))
        .send()
        .await
        .expect("GET /streams")
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = streams["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    // Config files first, then --stream: the first one is also at the root.
    assert_eq!(names, ["orders", "telemetry"], "{streams}");
    assert_eq!(streams["streams"][0]["paths"]["ws"], "/ws");
    assert_eq!(
        streams["streams"][1]["paths"]["ws"],
        "/streams/telemetry/ws"
    );
    assert_eq!(streams["broker"]["embedded"], true);

    // Ingest of each stream at its own path, with its own rules.
    let r = http
        .post(format!("{base}/streams/orders/produce"))
        .json(&json!({"userId": "u1", "total": 3}))
        .send()
        .await
        .expect("produce");
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{base}/produce"))
        .json(&json!({"total": 3}))
        .send()
        .await
        .expect("produce");
    assert_eq!(
        r.status(),
        400,
        "the root is the orders stream, which requires userId"
    );
    for path in [
        "/health",
        "/streams/telemetry/health",
        "/streams/orders/stats",
        "/healthz",
        "/readyz",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.expect(path);
        assert_eq!(r.status(), 200, "{path}");
    }
    // One exposition for every stream: one TYPE line per family, a series per stream.
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(
        metrics
            .matches("# TYPE eventstream_ws_connections gauge")
            .count(),
        1,
        "{metrics}"
    );
    assert!(metrics.contains(r#"stream="shop/orders""#));
    assert!(metrics.contains(r#"stream="standalone/telemetry""#));
    let page = http
        .get(&url)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(page.contains("EventStream viewer"));

    let started = Instant::now();
    let status = server
        .interrupt(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("still running 15s after Ctrl-C\n{}", server.stderr()));
    assert!(status.success(), "{status}\n{}", server.stderr());
    assert!(
        server.stdout().trim_end().ends_with("stopped"),
        "{}",
        server.stdout()
    );
    assert!(
        server.stderr().trim().is_empty(),
        "stderr: {}",
        server.stderr()
    );
    println!("stopped {:?} after Ctrl-C", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_the_demo_is_persisted() {
    let pg = TestPostgres::start().expect("PostgreSQL (scripts/test installs postgresql-15)");
    let mut server = Standalone::start(&[
        "--listen",
        "127.0.0.1:0",
        "--demo",
        "--demo-rate",
        "50",
        "--postgres-url",
        &pg.url(),
    ]);
    assert!(
        server.stdout().contains("postgres  table telemetry"),
        "{}",
        server.stdout()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows: u64 = pg
            .psql("postgres", "SELECT count(*) FROM telemetry")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if rows >= 50 {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} rows after 30s\nstdout:\n{}\nstderr:\n{}",
            server.stdout(),
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let status = server.interrupt(Duration::from_secs(20)).expect("stops");
    assert!(status.success(), "{status}\n{}", server.stderr());
    println!("{rows} rows persisted");
}
