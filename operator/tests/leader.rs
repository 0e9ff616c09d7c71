//! The leader-election loop against an in-memory Lease API with the API server's optimistic
//! concurrency (a write carrying a stale `resourceVersion` gets 409 Conflict). What two replicas
//! rely on: never two leaders, a crashed leader is replaced after its Lease expires, a leader that
//! cannot renew steps down before another takes over, and two candidates racing for an expired
//! Lease cannot both win.
//!
//! "Never two leaders" is checked by the API itself, at the moment it accepts a write: every
//! other candidate must have published `false` by then. Sampling the candidates' flags from the
//! test would order events by when the test happened to look, not by when they happened.
//!
//! Two transports: `tower-test` in-process with tokio's paused clock, where the order of timers
//! is the same on every run however busy the machine is; and the real kube client stack
//! ([`lease_client`]: hyper, timeouts, no retry layer) over TCP to an HTTP server, for an API
//! that never answers and one that answers 503 slowly.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use eventstream_operator::leader::{LeaderElector, Timing, lease_client};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta};
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Barrier, watch};
use tokio::time::Instant;

const NS: &str = "eventstream-system";
const NAME: &str = "eventstream-operator";
const LEASE: Duration = Duration::from_secs(1);
const RENEW: Duration = Duration::from_millis(150);
const CANDIDATE_HEADER: &str = "x-candidate";

/// How the API treats one candidate's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Healthy,
    /// 503 at once (the API server is overloaded or the connection is broken).
    Fails,
    /// 503 after this long.
    SlowFails(Duration),
    /// Never answers.
    Silent,
}

/// The Lease as the API server stores it, and switches for the tests.
#[derive(Default)]
struct LeaseStore {
    lease: Mutex<Option<(Value, u64)>>,
    links: Mutex<HashMap<String, Link>>,
    /// What each running candidate last published (a crashed one is forgotten).
    published: Mutex<Vec<(String, watch::Receiver<bool>)>>,
    /// Writes accepted while another candidate still said it was leading.
    violations: Mutex<Vec<String>>,
    /// GETs wait here until every candidate has read (to force a race).
    hold_reads: Mutex<Option<Arc<Barrier>>>,
    conflicts: Mutex<usize>,
    /// Requests received per candidate.
    requests: Mutex<HashMap<String, usize>>,
}

fn status(code: u16, reason: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": reason, "message": reason, "code": code}),
    )
}

impl LeaseStore {
    fn link(&self, who: &str, link: Link) {
        self.links.lock().insert(who.into(), link);
    }

    fn requests(&self, who: &str) -> usize {
        self.requests.lock().get(who).copied().unwrap_or(0)
    }

    /// A write making `holder` the holder was accepted: nobody else may still be leading.
    fn accepted(&self, holder: &str) {
        for (who, rx) in self.published.lock().iter() {
            if who != holder && *rx.borrow() {
                self.violations
                    .lock()
                    .push(format!("{holder} wrote the Lease while {who} was leading"));
            }
        }
    }

    fn assert_never_two_leaders(&self) {
        let v = self.violations.lock();
        assert!(v.is_empty(), "{v:?}");
    }

    async fn answer(&self, who: &str, method: &str, body: Value) -> (StatusCode, Value) {
        *self.requests.lock().entry(who.into()).or_default() += 1;
        let link = self.links.lock().get(who).copied().unwrap_or(Link::Healthy);
        match link {
            Link::Healthy => {}
            Link::Fails => return status(503, "ServiceUnavailable"),
            Link::SlowFails(after) => {
                tokio::time::sleep(after).await;
                return status(503, "ServiceUnavailable");
            }
            Link::Silent => std::future::pending().await,
        }
        match method {
            "GET" => {
                let barrier = self.hold_reads.lock().clone();
                if let Some(barrier) = barrier {
                    barrier.wait().await;
                }
                match self.lease.lock().clone() {
                    Some((mut lease, rv)) => {
                        lease["metadata"]["resourceVersion"] = json!(rv.to_string());
                        (StatusCode::OK, lease)
                    }
                    None => status(404, "NotFound"),
                }
            }
            "POST" => {
                let mut stored = self.lease.lock();
                if stored.is_some() {
                    return status(409, "AlreadyExists");
                }
                *stored = Some((body.clone(), 1));
                self.accepted(body["spec"]["holderIdentity"].as_str().unwrap_or_default());
                let mut lease = body;
                lease["metadata"]["resourceVersion"] = json!("1");
                (StatusCode::CREATED, lease)
            }
            "PUT" => {
                let mut stored = self.lease.lock();
                let current = stored.as_ref().map(|(_, rv)| rv.to_string());
                let sent = body["metadata"]["resourceVersion"]
                    .as_str()
                    .map(String::from);
                if current.is_none() || sent != current {
                    *self.conflicts.lock() += 1;
                    return status(409, "Conflict");
                }
                let rv = stored.as_ref().map_or(0, |(_, rv)| rv + 1);
                *stored = Some((body.clone(), rv));
                self.accepted(body["spec"]["holderIdentity"].as_str().unwrap_or_default());
                let mut lease = body;
                lease["metadata"]["resourceVersion"] = json!(rv.to_string());
                (StatusCode::OK, lease)
            }
            _ => status(405, "MethodNotAllowed"),
        }
    }

    fn holder(&self) -> Option<String> {
        self.lease
            .lock()
            .as_ref()
            .and_then(|(l, _)| l["spec"]["holderIdentity"].as_str().map(String::from))
    }

    fn transitions(&self) -> i64 {
        self.lease
            .lock()
            .as_ref()
            .and_then(|(l, _)| l["spec"]["leaseTransitions"].as_i64())
            .unwrap_or(0)
    }
}

fn check_path(method: &str, path: &str) {
    assert!(
        path.starts_with(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
        )),
        "unexpected request {method} {path}"
    );
}

/// A `kube::Client` for candidate `who`, served in process by `store`.
fn mock_client(store: &Arc<LeaseStore>, who: &str) -> Client {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let store = store.clone();
    let who = who.to_string();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let store = store.clone();
            let who = who.clone();
            // Each request on its own task, so a held GET does not block the next request.
            tokio::spawn(async move {
                let method = req.method().to_string();
                check_path(&method, req.uri().path());
                let bytes = req.into_body().collect_bytes().await.unwrap();
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                let (code, body) = store.answer(&who, &method, body).await;
                send.send_response(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            });
        }
    });
    Client::new(svc, NS)
}

/// The Lease API over HTTP on a free port; candidates say who they are in a header.
async fn http_api(store: &Arc<LeaseStore>) -> SocketAddr {
    async fn handle(
        axum::extract::State(store): axum::extract::State<Arc<LeaseStore>>,
        method: http::Method,
        uri: http::Uri,
        headers: http::HeaderMap,
        body: axum::body::Bytes,
    ) -> (StatusCode, axum::Json<Value>) {
        check_path(method.as_str(), uri.path());
        let who = headers
            .get(CANDIDATE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        let (code, body) = store.answer(&who, method.as_str(), body).await;
        (code, axum::Json(body))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(store.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The client the operator builds for its elector, against `addr`, as candidate `who`.
fn real_client(addr: SocketAddr, who: &str, timing: &Timing) -> Client {
    let mut config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    config.default_namespace = NS.into();
    config.headers.push((
        HeaderName::from_static(CANDIDATE_HEADER),
        HeaderValue::from_str(who).unwrap(),
    ));
    lease_client(config, timing).unwrap()
}

struct Candidate {
    leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn campaign(store: &Arc<LeaseStore>, who: &str, client: Client, timing: &Timing) -> Candidate {
    let (tx, leading) = watch::channel(false);
    store.published.lock().push((who.into(), leading.clone()));
    let elector = LeaderElector::new(client, NS, NAME, who)
        .timing(timing.lease_duration, timing.retry_period);
    let task = tokio::spawn(elector.run(tx));
    Candidate { leading, task }
}

fn leading(c: &Candidate) -> bool {
    *c.leading.borrow()
}

/// Waits until `check` holds. `within` only keeps a broken build from hanging the suite: on the
/// paused clock it costs nothing, on the real one it is many times what the step takes.
async fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn timing() -> Timing {
    Timing::new(LEASE, RENEW)
}

#[tokio::test(start_paused = true)]
async fn one_leader_and_a_takeover_when_it_crashes() {
    let store = Arc::new(LeaseStore::default());
    let a = campaign(
        &store,
        "operator-a",
        mock_client(&store, "operator-a"),
        &timing(),
    );
    let b = campaign(
        &store,
        "operator-b",
        mock_client(&store, "operator-b"),
        &timing(),
    );
    wait_for("a leader", LEASE * 10, || leading(&a) || leading(&b)).await;
    // Several lease durations of renewals: the leader keeps it, the other waits.
    tokio::time::sleep(LEASE * 3).await;
    store.assert_never_two_leaders();
    assert!(leading(&a) ^ leading(&b), "exactly one leader");
    let (leader, leader_name, follower, follower_name) = if leading(&a) {
        (a, "operator-a", b, "operator-b")
    } else {
        (b, "operator-b", a, "operator-a")
    };
    assert_eq!(store.holder().as_deref(), Some(leader_name));
    assert_eq!(store.transitions(), 1);

    // The leader's pod dies without releasing the Lease (and stops reconciling with it).
    leader.task.abort();
    store.published.lock().retain(|(who, _)| who != leader_name);
    let crashed = Instant::now();
    wait_for("the follower to take over", LEASE * 10, || {
        leading(&follower)
    })
    .await;
    // On the paused clock: the follower waited for the Lease to expire, counted from when it
    // last saw it renewed (at most one retry period before the crash).
    assert!(
        crashed.elapsed() >= LEASE - RENEW,
        "taken over {:?} after the crash, before the Lease of {LEASE:?} expired",
        crashed.elapsed()
    );
    assert_eq!(store.holder().as_deref(), Some(follower_name));
    assert_eq!(store.transitions(), 2);
    store.assert_never_two_leaders();
    follower.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_leader_cut_off_from_the_api_steps_down_before_another_takes_over() {
    let store = Arc::new(LeaseStore::default());
    let a = campaign(
        &store,
        "operator-a",
        mock_client(&store, "operator-a"),
        &timing(),
    );
    wait_for("a to lead", LEASE * 10, || leading(&a)).await;
    let b = campaign(
        &store,
        "operator-b",
        mock_client(&store, "operator-b"),
        &timing(),
    );
    tokio::time::sleep(LEASE * 2).await;
    assert!(leading(&a) && !leading(&b));

    store.link("operator-a", Link::Fails);
    wait_for("b to take over", LEASE * 10, || leading(&b)).await;
    assert!(!leading(&a));
    // Checked by the API when it accepted b's takeover: a had stepped down already.
    store.assert_never_two_leaders();
    assert_eq!(store.holder().as_deref(), Some("operator-b"));
    a.task.abort();
    b.task.abort();
}

#[tokio::test(start_paused = true)]
async fn expiry_is_judged_on_the_candidates_clock_and_a_race_has_one_winner() {
    let store = Arc::new(LeaseStore::default());
    // A Lease whose renewTime is years old by our clock: the holder's clock may be that far off,
    // so only a Lease this candidate has seen unchanged for a whole duration is expired.
    let stale = Lease {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("operator-gone".into()),
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(Timestamp::from_second(1_000_000_000).unwrap())),
            lease_transitions: Some(1),
            ..LeaseSpec::default()
        }),
    };
    *store.lease.lock() = Some((serde_json::to_value(&stale).unwrap(), 7));
    let mut a = LeaderElector::new(mock_client(&store, "operator-a"), NS, NAME, "operator-a")
        .timing(LEASE, RENEW);
    let mut b = LeaderElector::new(mock_client(&store, "operator-b"), NS, NAME, "operator-b")
        .timing(LEASE, RENEW);
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    assert!(
        !ra.unwrap() && !rb.unwrap(),
        "taken over at first sight, on the strength of another machine's clock"
    );
    tokio::time::sleep(LEASE).await;

    // Both read resourceVersion 7 before either writes.
    *store.hold_reads.lock() = Some(Arc::new(Barrier::new(2)));
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra ^ rb, "exactly one wins: a={ra} b={rb}");
    assert_eq!(*store.conflicts.lock(), 1, "the loser's write was refused");
    let winner = if ra { "operator-a" } else { "operator-b" };
    assert_eq!(store.holder().as_deref(), Some(winner));
    assert_eq!(store.transitions(), 2);
}

/// Real clock from here: hyper's timeouts run on it. A longer Lease gives the real scheduler
/// a wide margin (a third of the Lease) between the deadline and the takeover.
fn real_timing() -> Timing {
    Timing::new(Duration::from_secs(3), Duration::from_millis(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_elector_client_neither_retries_nor_waits_forever() {
    let store = Arc::new(LeaseStore::default());
    let addr = http_api(&store).await;
    let leases: Api<Lease> = Api::namespaced(real_client(addr, "operator-a", &real_timing()), NS);

    store.link("operator-a", Link::Fails);
    let err = leases.get_opt(NAME).await.unwrap_err();
    assert!(err.to_string().contains("ServiceUnavailable"), "{err}");
    assert_eq!(store.requests("operator-a"), 1, "a 503 was retried");

    store.link("operator-a", Link::Silent);
    let answer = tokio::time::timeout(Duration::from_secs(60), leases.get_opt(NAME))
        .await
        .expect("the read timeout ends a request the API never answers");
    assert!(answer.is_err());
}

/// Leader `a` and standby `b` over the real client stack; then `a`'s link turns into `link`.
async fn step_down_over_http(link: Link) {
    let store = Arc::new(LeaseStore::default());
    let addr = http_api(&store).await;
    let timing = real_timing();
    let a = campaign(
        &store,
        "operator-a",
        real_client(addr, "operator-a", &timing),
        &timing,
    );
    wait_for("a to lead", Duration::from_secs(60), || leading(&a)).await;
    let b = campaign(
        &store,
        "operator-b",
        real_client(addr, "operator-b", &timing),
        &timing,
    );
    wait_for("b to read the Lease", Duration::from_secs(60), || {
        store.requests("operator-b") > 0
    })
    .await;

    store.link("operator-a", link);
    let mut a_rx = a.leading.clone();
    tokio::time::timeout(Duration::from_secs(60), a_rx.wait_for(|l| !*l))
        .await
        .expect("a steps down although its requests get no useful answer")
        .unwrap();
    wait_for("b to take over", Duration::from_secs(60), || leading(&b)).await;
    // Checked by the API when it accepted b's takeover.
    store.assert_never_two_leaders();
    assert_eq!(store.holder().as_deref(), Some("operator-b"));
    a.task.abort();
    b.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_api_never_answers_steps_down_before_another_takes_over() {
    step_down_over_http(Link::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_api_answers_503_slowly_steps_down_before_another_takes_over() {
    // Slow, but inside the read timeout: every request ends in a 503 the client could retry.
    step_down_over_http(Link::SlowFails(Duration::from_millis(700))).await;
}
