//! The ingest HTTP API over real HTTP (mock Kafka behind it): every kind of bad input gets its
//! status and error body, and the server keeps serving; auth answers 401/403 before any work;
//! CORS and security headers; metrics.

mod ingest_support;

use std::time::Duration;

use eventstream_testkit::{HarnessError, MockKafka, consume_all};
use ingest_support::{TestServer, client, config, serve};
use serde_json::{Value, json};

const STREAM: &str = "ingest:
  keyField: /userId
  requiredFields: [eventType, userId, timestamp]
  maxBodyBytes: 4096
  maxBatchBytes: 65536
  maxBatchItems: 10
  corsOrigins: ['https://app.example']
  schema:
    type: object
    properties:
      timestamp: { type: string, format: date-time }
      count: { type: integer, minimum: 0 }
";

const GOOD: &str = r#"{"eventType":"like_clicked","userId":"user-123","timestamp":"2024-01-01T12:00:00.000Z","screen":"main_post"}"#;

struct Case {
    name: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// Pointers that must be listed in `error.details` (exactly, as a set), when non-empty.
    pointers: &'static [&'static str],
}

fn case(
    name: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
    pointers: &'static [&'static str],
) -> Case {
    Case {
        name,
        path,
        content_type,
        body: body.into(),
        status,
        code,
        pointers,
    }
}

fn cases() -> Vec<Case> {
    const JSON: Option<&str> = Some("application/json");
    let mut ten_mb = Vec::with_capacity(10 * 1024 * 1024);
    ten_mb.extend_from_slice(b"{\"eventType\":\"x\",\"pad\":\"");
    ten_mb.resize(10 * 1024 * 1024 - 2, b'a');
    ten_mb.extend_from_slice(b"\"}");
    vec![
        case(
            "malformed JSON",
            "/produce",
            JSON,
            r#"{"eventType":"#,
            400,
            "malformed_json",
            &[],
        ),
        case(
            "trailing garbage",
            "/produce",
            JSON,
            format!("{GOOD} x"),
            400,
            "malformed_json",
            &[],
        ),
        case(
            "wrong types",
            "/produce",
            JSON,
            r#"{"eventType":"a","userId":"u","timestamp":"2024-01-01T00:00:00Z","count":"many"}"#,
            400,
            "validation_failed",
            &["/count"],
        ),
        case(
            "missing required fields (and so the key)",
            "/produce",
            JSON,
            r#"{"screen":"main"}"#,
            400,
            "validation_failed",
            &["/eventType", "/userId", "/timestamp"],
        ),
        case(
            "fields failing the schema",
            "/produce",
            JSON,
            r#"{"eventType":"a","userId":"u","timestamp":"yesterday","count":-3}"#,
            400,
            "validation_failed",
            &["/timestamp", "/count"],
        ),
        case("empty body", "/produce", JSON, "", 400, "empty_body", &[]),
        case(
            "whitespace body",
            "/produce",
            JSON,
            "  \n",
            400,
            "empty_body",
            &[],
        ),
        case(
            "10 MB body",
            "/produce",
            JSON,
            ten_mb.clone(),
            413,
            "body_too_large",
            &[],
        ),
        case(
            "10 MB batch",
            "/produce/batch",
            JSON,
            ten_mb,
            413,
            "body_too_large",
            &[],
        ),
        case(
            "invalid UTF-8",
            "/produce",
            JSON,
            b"{\"eventType\":\"\xc3\x28\"}".to_vec(),
            400,
            "invalid_utf8",
            &[],
        ),
        case(
            "wrong content type",
            "/produce",
            Some("text/plain"),
            GOOD,
            415,
            "unsupported_media_type",
            &[],
        ),
        case(
            "no content type",
            "/produce",
            None,
            GOOD,
            415,
            "unsupported_media_type",
            &[],
        ),
        case(
            "form post",
            "/produce/batch",
            Some("application/x-www-form-urlencoded"),
            "a=b",
            415,
            "unsupported_media_type",
            &[],
        ),
        case(
            "latin-1 charset",
            "/produce",
            Some("application/json; charset=iso-8859-1"),
            GOOD,
            415,
            "unsupported_media_type",
            &[],
        ),
        case(
            "key pointer resolves to an object",
            "/produce",
            JSON,
            r#"{"eventType":"a","userId":{"id":1},"timestamp":"2024-01-01T00:00:00Z"}"#,
            400,
            "validation_failed",
            &["/userId"],
        ),
        case(
            "garbage protobuf",
            "/produce",
            Some("application/x-protobuf"),
            b"\xff\xff\xff\xff".to_vec(),
            400,
            "invalid_protobuf",
            &[],
        ),
        case(
            "batch that is not an array",
            "/produce/batch",
            JSON,
            GOOD,
            400,
            "invalid_batch",
            &[],
        ),
        case(
            "empty batch",
            "/produce/batch",
            JSON,
            "[]",
            400,
            "empty_body",
            &[],
        ),
        case(
            "too many batch items",
            "/produce/batch",
            JSON,
            format!("[{}]", [GOOD; 11].join(",")),
            413,
            "too_many_items",
            &[],
        ),
        case(
            "NDJSON on /produce",
            "/produce",
            Some("application/x-ndjson"),
            GOOD,
            415,
            "unsupported_media_type",
            &[],
        ),
    ]
}

async fn post(
    server: &TestServer,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = client().post(format!("{}{path}", server.url)).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON body: {e}: {text}"));
    (status, headers, value)
}

async fn post_good(server: &TestServer) {
    let (status, _, body) = post(server, "/produce", Some("application/json"), GOOD.into()).await;
    assert_eq!(status, 200, "the server keeps serving: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer_and_the_server_keeps_serving() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("api", 1, 1).expect("topic");
    let server = serve(&config(&kafka.bootstrap(), "api", STREAM), None).await;
    post_good(&server).await;
    let mut good = 1;

    for c in cases() {
        let (status, headers, body) = post(&server, c.path, c.content_type, c.body).await;
        assert_eq!(status, c.status, "{}: {body}", c.name);
        assert_eq!(body["error"]["code"], c.code, "{}: {body}", c.name);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}: a message",
            c.name
        );
        assert_eq!(
            headers["content-type"], "application/json",
            "{}: JSON error body",
            c.name
        );
        if !c.pointers.is_empty() {
            let mut got: Vec<&str> = body["error"]["details"]
                .as_array()
                .expect("details")
                .iter()
                .map(|d| {
                    assert!(d["reason"].as_str().is_some_and(|r| !r.is_empty()));
                    d["pointer"].as_str().expect("pointer")
                })
                .collect();
            got.sort_unstable();
            got.dedup();
            let mut want = c.pointers.to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "{}: every failing field: {body}", c.name);
        }
        post_good(&server).await;
        good += 1;
    }

    // Nothing but the good posts reached Kafka.
    let records = consume_all(&kafka.bootstrap(), "api", good, Duration::from_secs(20))
        .await
        .expect("good posts are in Kafka");
    assert_eq!(records.len(), good);
    match consume_all(&kafka.bootstrap(), "api", good + 1, Duration::from_secs(2)).await {
        Err(HarnessError::Incomplete { received, .. }) => assert_eq!(received.len(), good),
        other => panic!("a refused request reached Kafka: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mixing_good_and_bad_items_is_refused_whole_with_per_item_results() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("mixed", 1, 1).expect("topic");
    let server = serve(&config(&kafka.bootstrap(), "mixed", STREAM), None).await;

    // Good, missing fields, good, malformed.
    let body = format!(r#"[{GOOD}, {{"eventType":"x"}}, {GOOD}, {{"broken": }}]"#);
    let (status, headers, report) = post(
        &server,
        "/produce/batch",
        Some("application/json"),
        body.into(),
    )
    .await;
    assert_eq!(status, 400, "{report}");
    assert!(headers.get("retry-after").is_none());
    assert_eq!(report["error"]["code"], "validation_failed");
    assert_eq!(report["accepted"], 0);
    assert_eq!(report["rejected"], 4);
    let results = report["results"].as_array().expect("results");
    assert_eq!(results[0], json!({"index": 0, "status": "skipped"}));
    assert_eq!(results[1]["status"], "rejected");
    assert_eq!(results[1]["error"]["code"], "validation_failed");
    let pointers: Vec<&str> = results[1]["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["pointer"].as_str())
        .collect();
    assert!(
        pointers.contains(&"/userId") && pointers.contains(&"/timestamp"),
        "{pointers:?}"
    );
    assert_eq!(results[2]["status"], "skipped");
    assert_eq!(results[3]["status"], "rejected");
    assert_eq!(results[3]["error"]["code"], "malformed_json");

    // NDJSON with one bad line: the same rule.
    let ndjson = format!("{GOOD}\nnot json\n{GOOD}\n");
    let (status, _, report) = post(
        &server,
        "/produce/batch",
        Some("application/x-ndjson"),
        ndjson.into(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(report["results"][1]["error"]["code"], "malformed_json");

    // Nothing was produced.
    match consume_all(&kafka.bootstrap(), "mixed", 1, Duration::from_secs(2)).await {
        Err(HarnessError::Incomplete { received, .. }) => assert!(received.is_empty()),
        other => panic!("a refused batch reached Kafka: {other:?}"),
    }

    // The same batch without the bad items goes through.
    let body = format!("[{GOOD},{GOOD}]");
    let (status, _, report) = post(
        &server,
        "/produce/batch",
        Some("application/json"),
        body.into(),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["accepted"], 2);
}

fn token(secret: &str, publish: bool) -> String {
    let claims = json!({
        "exp": chrono::Utc::now().timestamp() + 600,
        "iss": "https://issuer.test",
        "publish": publish,
        "channels": ["*"],
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_answers_401_and_403_before_any_work() {
    const SECRET: &str = "ingest-test-secret";
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("authed", 1, 1).expect("topic");
    let cfg = config(
        &kafka.bootstrap(),
        "authed",
        "auth: { algorithm: HS256, issuer: 'https://issuer.test' }\n",
    );
    let server = serve(&cfg, Some(SECRET)).await;
    let http = client();
    let url = format!("{}/produce", server.url);

    let send = |auth: Option<String>, content_type: &'static str, body: &'static str| {
        let mut r = http
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move {
            let resp = r.send().await.expect("answer");
            let status = resp.status().as_u16();
            let www = resp.headers().get("www-authenticate").cloned();
            let body: Value = resp.json().await.expect("json");
            (status, www, body)
        }
    };

    // No token: 401 even though the content type and body are also wrong (auth comes first).
    let (status, www, body) = send(None, "text/plain", "garbage").await;
    assert_eq!(status, 401, "{body}");
    assert!(www.is_some(), "WWW-Authenticate");
    assert_eq!(body["error"]["code"], "unauthorized");

    let (status, _, body) = send(Some("Bearer not.a.jwt".into()), "application/json", "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    let forged = token("another-secret", true);
    let (status, _, _) = send(Some(format!("Bearer {forged}")), "application/json", "{}").await;
    assert_eq!(status, 401);

    let reader = token(SECRET, false);
    let (status, _, body) = send(Some(format!("Bearer {reader}")), "text/plain", "x").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    let writer = token(SECRET, true);
    let (status, _, body) = send(
        Some(format!("Bearer {writer}")),
        "application/json",
        r#"{"ok":1}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let batch = http
        .post(format!("{}/produce/batch", server.url))
        .header("content-type", "application/json")
        .body("[1,2]")
        .send()
        .await
        .expect("answer");
    assert_eq!(batch.status(), 401, "the batch route is protected too");

    let records = consume_all(&kafka.bootstrap(), "authed", 1, Duration::from_secs(10))
        .await
        .expect("the authorised event");
    assert_eq!(records[0].payload_str().as_deref(), Some(r#"{"ok":1}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allow_list_security_headers_and_metrics() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("cors", 1, 1).expect("topic");
    let server = serve(&config(&kafka.bootstrap(), "cors", STREAM), None).await;
    let http = client();

    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{}/produce", server.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.expect("preflight");
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .expect("text");
    assert!(methods.contains("POST"), "{methods}");
    let denied = preflight("https://evil.example").await.expect("preflight");
    assert!(
        denied
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let response = http
        .post(format!("{}/produce", server.url))
        .header("origin", "https://app.example")
        .header("content-type", "application/json")
        .body(GOOD)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let h = response.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h.contains_key("content-security-policy"));
    assert_eq!(h["cache-control"], "no-store");

    // Errors carry the security headers too.
    let (status, headers, _) = post(&server, "/produce", Some("text/plain"), b"x".to_vec()).await;
    assert_eq!(status, 415);
    assert_eq!(headers["x-content-type-options"], "nosniff");

    let metrics = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        r#"eventstream_ingest_requests_total{code="200",route="produce",stream="test/ingest"} 1"#,
        r#"eventstream_ingest_requests_total{code="415",route="produce",stream="test/ingest"} 1"#,
        r#"eventstream_ingest_records_total{stream="test/ingest"} 1"#,
        r#"eventstream_ingest_validation_failures_total{reason="unsupported_media_type",stream="test/ingest"} 1"#,
        r#"eventstream_ingest_produce_seconds_count{stream="test/ingest"} 1"#,
        r#"eventstream_ingest_producer_queue_messages{stream="test/ingest"}"#,
        r#"eventstream_ingest_bytes_total{stream="test/ingest"}"#,
    ] {
        assert!(metrics.contains(line), "missing {line}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_that_does_not_compile_is_a_startup_error() {
    let cfg = config(
        "127.0.0.1:9",
        "t",
        "ingest: { schema: { type: object, properties: { a: { type: strin } } } }\n",
    );
    let err = eventstream_dataplane::ingest::Ingest::with_jwt_key(
        &cfg,
        &prometheus::Registry::new(),
        None,
    )
    .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("ingest.schema") && text.contains("strin"),
        "{text}"
    );

    let cfg = config("127.0.0.1:9", "t", "auth: { algorithm: RS256 }\n");
    let err = eventstream_dataplane::ingest::Ingest::with_jwt_key(
        &cfg,
        &prometheus::Registry::new(),
        None,
    )
    .expect_err("no key");
    assert!(err.to_string().contains("EVENTSTREAM_JWT_KEY"), "{err}");
}
