//! The leader-election loop against an in-memory Lease API with the API server's optimistic
//! concurrency (a write carrying a stale `resourceVersion` gets 409 Conflict), behind real
//! `kube::Client`s (one per candidate, as two operator pods have). What two replicas rely on:
//! never two leaders, a crashed leader is replaced after its Lease expires, a leader that cannot
//! renew steps down, and two candidates racing for an expired Lease cannot both win.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstream_operator::leader::LeaderElector;
use http::{Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::ObjectMeta;
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Barrier, watch};

const NS: &str = "eventstream-system";
const NAME: &str = "eventstream-operator";
const LEASE: Duration = Duration::from_secs(1);
const RENEW: Duration = Duration::from_millis(150);

/// The Lease as the API server stores it, and switches for the tests.
#[derive(Default)]
struct LeaseStore {
    lease: Mutex<Option<(Value, u64)>>,
    /// Candidates whose requests fail with 503 (their API connection is broken).
    cut_off: Mutex<Vec<String>>,
    /// GETs wait here until every candidate has read (to force a race).
    hold_reads: Mutex<Option<Arc<Barrier>>>,
    conflicts: Mutex<usize>,
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn failure(code: u16, reason: &str) -> Response<Body> {
    respond(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": reason, "message": reason, "code": code}),
    )
}

impl LeaseStore {
    async fn answer(&self, who: &str, method: &str, body: Value) -> Response<Body> {
        if self.cut_off.lock().iter().any(|c| c == who) {
            return failure(503, "ServiceUnavailable");
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
                        respond(StatusCode::OK, &lease)
                    }
                    None => failure(404, "NotFound"),
                }
            }
            "POST" => {
                let mut stored = self.lease.lock();
                if stored.is_some() {
                    return failure(409, "AlreadyExists");
                }
                *stored = Some((body.clone(), 1));
                let mut lease = body;
                lease["metadata"]["resourceVersion"] = json!("1");
                respond(StatusCode::CREATED, &lease)
            }
            "PUT" => {
                let mut stored = self.lease.lock();
                let current = stored.as_ref().map(|(_, rv)| rv.to_string());
                let sent = body["metadata"]["resourceVersion"]
                    .as_str()
                    .map(String::from);
                if current.is_none() || sent != current {
                    *self.conflicts.lock() += 1;
                    return failure(409, "Conflict");
                }
                let rv = stored.as_ref().map_or(0, |(_, rv)| rv + 1);
                *stored = Some((body.clone(), rv));
                let mut lease = body;
                lease["metadata"]["resourceVersion"] = json!(rv.to_string());
                respond(StatusCode::OK, &lease)
            }
            _ => failure(405, "MethodNotAllowed"),
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

/// A `kube::Client` for candidate `who`, served by `store`.
fn client(store: &Arc<LeaseStore>, who: &str) -> Client {
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
                let path = req.uri().path().to_string();
                assert!(
                    path.starts_with(&format!(
                        "/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
                    )),
                    "unexpected request {method} {path}"
                );
                let bytes = req.into_body().collect_bytes().await.unwrap();
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                send.send_response(store.answer(&who, &method, body).await);
            });
        }
    });
    Client::new(svc, NS)
}

fn elector(store: &Arc<LeaseStore>, who: &str) -> LeaderElector {
    LeaderElector::new(client(store, who), NS, NAME, who).timing(LEASE, RENEW)
}

struct Candidate {
    leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn campaign(store: &Arc<LeaseStore>, who: &str) -> Candidate {
    let (tx, leading) = watch::channel(false);
    let task = tokio::spawn(elector(store, who).run(tx));
    Candidate { leading, task }
}

fn leading(c: &Candidate) -> bool {
    *c.leading.borrow()
}

/// Samples both candidates every 20 ms for `period`: never two leaders. Returns the last pair.
async fn never_two_leaders(a: &Candidate, b: &Candidate, period: Duration) -> (bool, bool) {
    let until = Instant::now() + period;
    loop {
        let pair = (leading(a), leading(b));
        assert!(!(pair.0 && pair.1), "two leaders at once");
        if Instant::now() > until {
            return pair;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_a_takeover_when_it_crashes() {
    let store = Arc::new(LeaseStore::default());
    let a = campaign(&store, "operator-a");
    let b = campaign(&store, "operator-b");
    wait_for("a leader", Duration::from_secs(5), || {
        leading(&a) || leading(&b)
    })
    .await;
    // Several lease durations of renewals: the leader keeps it, the other waits.
    let (a_leads, b_leads) = never_two_leaders(&a, &b, LEASE * 3).await;
    assert!(a_leads ^ b_leads, "exactly one leader");
    let (leader, leader_name, follower, follower_name) = if a_leads {
        (a, "operator-a", b, "operator-b")
    } else {
        (b, "operator-b", a, "operator-a")
    };
    assert_eq!(store.holder().as_deref(), Some(leader_name));
    assert_eq!(store.transitions(), 1);

    // The leader's pod dies without releasing the Lease.
    leader.task.abort();
    let crashed = Instant::now();
    wait_for("the follower to take over", Duration::from_secs(5), || {
        leading(&follower)
    })
    .await;
    assert!(
        crashed.elapsed() >= LEASE - RENEW,
        "taken over after {:?}, before the Lease of {LEASE:?} expired",
        crashed.elapsed()
    );
    assert_eq!(store.holder().as_deref(), Some(follower_name));
    assert_eq!(store.transitions(), 2);
    follower.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_steps_down_before_another_takes_over() {
    let store = Arc::new(LeaseStore::default());
    let a = campaign(&store, "operator-a");
    wait_for("a to lead", Duration::from_secs(5), || leading(&a)).await;
    let b = campaign(&store, "operator-b");
    never_two_leaders(&a, &b, LEASE * 2).await;
    assert!(leading(&a) && !leading(&b));

    store.cut_off.lock().push("operator-a".into());
    let mut a_rx = a.leading.clone();
    let mut b_rx = b.leading.clone();
    // A publishes `false` (the operator exits) no later than B can win the expired Lease.
    let stepped_down = tokio::time::timeout(Duration::from_secs(5), async {
        a_rx.wait_for(|l| !*l).await.map(|_| Instant::now())
    });
    let took_over = tokio::time::timeout(Duration::from_secs(5), async {
        b_rx.wait_for(|l| *l).await.map(|_| Instant::now())
    });
    let (down, up) = tokio::join!(stepped_down, took_over);
    let (down, up) = (down.unwrap().unwrap(), up.unwrap().unwrap());
    assert!(
        down < up,
        "the old leader stepped down {:?} after the new one took over",
        down.saturating_duration_since(up)
    );
    assert_eq!(store.holder().as_deref(), Some("operator-b"));
    a.task.abort();
    b.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_racing_for_an_expired_lease_cannot_both_win() {
    let store = Arc::new(LeaseStore::default());
    let expired = Lease {
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
    *store.lease.lock() = Some((serde_json::to_value(&expired).unwrap(), 7));
    // Both read resourceVersion 7 before either writes.
    *store.hold_reads.lock() = Some(Arc::new(Barrier::new(2)));
    let a = elector(&store, "operator-a");
    let b = elector(&store, "operator-b");
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra ^ rb, "exactly one wins: a={ra} b={rb}");
    assert_eq!(*store.conflicts.lock(), 1, "the loser's write was refused");
    let winner = if ra { "operator-a" } else { "operator-b" };
    assert_eq!(store.holder().as_deref(), Some(winner));
    assert_eq!(store.transitions(), 2);
}
