//! Leader election on a `coordination.k8s.io/v1` Lease, so that two operator replicas never
//! reconcile at once. The decision is a pure function ([`decide`]); the loop ([`LeaderElector`])
//! applies it with optimistic concurrency: every write carries the `resourceVersion` it read, so
//! two candidates racing for an expired Lease cannot both win (one gets 409 Conflict).
//!
//! Stepping down in time is what keeps two replicas from reconciling at once, so the elector:
//! - has its own client ([`lease_client`]) without kube's retry layer (which would re-send a
//!   503 with backoff while the deadline runs out) and with short connect and read timeouts;
//! - bounds every renewal by the time left until its renew deadline, and publishes `false` at
//!   the deadline whatever the request in flight does;
//! - judges another holder's Lease expired on its own clock, from when it last saw the Lease
//!   change, as client-go does: the holder's `renewTime` is another machine's clock.
//!
//! Like controller-runtime, a replica that loses the Lease stops (the process exits and the pod
//! restarts as a candidate) rather than risking two writers.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// Lease duration, renew deadline and retry period; the defaults are controller-runtime's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a Lease that stopped changing stays valid for the other candidates.
    pub lease_duration: Duration,
    /// How long the leader keeps reconciling without a successful renewal.
    pub renew_deadline: Duration,
    /// Time between two attempts.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Lease duration (whole seconds, at least one: the Lease stores seconds) and retry period;
    /// the renew deadline is two thirds of the Lease, as controller-runtime's defaults, which
    /// leaves a third of the Lease between the leader stopping and another taking over.
    pub fn new(lease_duration: Duration, retry_period: Duration) -> Self {
        let lease_duration = Duration::from_secs(lease_duration.as_secs().max(1));
        Self {
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period,
        }
    }
}

/// The elector's own client, built from the operator's `config`: no retry layer, and connect,
/// read and write timeouts well inside the renew deadline, so a request to an API that stopped
/// answering fails in time for another attempt.
pub fn lease_client(mut config: kube::Config, timing: &Timing) -> Result<Client, kube::Error> {
    let request = timing.renew_deadline / 2;
    config.default_retry = false;
    config.connect_timeout = Some(timing.retry_period.min(request));
    config.read_timeout = Some(request);
    config.write_timeout = Some(request);
    // Count the read timeout from the request, not from when a pooled connection went idle.
    config.reset_reader_on_write = true;
    Client::try_from(config)
}

/// What a candidate does with the Lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder stopped renewing: take it over.
    TakeOver,
    /// Someone else holds a live Lease.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// Decides what `me` does with `lease`, which this candidate has seen unchanged for
/// `unchanged_for` on its own clock. Pure.
pub fn decide(lease: Option<&Lease>, me: &str, unchanged_for: Duration) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    let seconds = spec.lease_duration_seconds.unwrap_or(15).max(0);
    let expired = unchanged_for >= Duration::from_secs(u64::from(seconds.unsigned_abs()));
    if holder.is_empty() || expired {
        Decision::TakeOver
    } else {
        Decision::Wait { holder }
    }
}

/// Runs the election for one candidate.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The Lease as last seen, and when (local clock) it was first seen like that.
    observed: Option<(Option<LeaseSpec>, Instant)>,
}

impl LeaderElector {
    /// A candidate `identity` for Lease `namespace/name`. `client` should come from
    /// [`lease_client`].
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timing: Timing::default(),
            observed: None,
        }
    }

    /// Lease duration and retry period (see [`Timing::new`]).
    pub fn timing(mut self, lease_duration: Duration, renew_every: Duration) -> Self {
        self.timing = Timing::new(lease_duration, renew_every);
        self
    }

    fn spec(&self, now: Timestamp, acquire: bool, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let mut spec = previous.cloned().unwrap_or_default();
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.timing.lease_duration.as_secs() as i32);
        spec.renew_time = Some(MicroTime(now));
        if acquire {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec
    }

    /// Remembers `spec` as seen now unless it is what was seen before; returns for how long it
    /// has been seen unchanged.
    fn observe(&mut self, spec: Option<&LeaseSpec>) -> Duration {
        let now = Instant::now();
        match &self.observed {
            Some((seen, since)) if seen.as_ref() == spec => now.duration_since(*since),
            _ => {
                self.observed = Some((spec.cloned(), now));
                Duration::ZERO
            }
        }
    }

    /// One round: returns whether we hold the Lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let unchanged_for = self.observe(current.as_ref().and_then(|l| l.spec.as_ref()));
        let decision = decide(current.as_ref(), &self.identity, unchanged_for);
        let now = Timestamp::now();
        let result = match (&decision, current) {
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, true, None)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Decision::Renew | Decision::TakeOver, Some(mut lease)) => {
                let acquire = decision == Decision::TakeOver;
                lease.spec = Some(self.spec(now, acquire, lease.spec.as_ref()));
                // `replace` sends the resourceVersion we read: a concurrent writer gets 409.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
            _ => return Ok(false),
        };
        match result {
            Ok(written) => {
                // Our own write is a change of the Lease, seen now.
                self.observe(written.spec.as_ref());
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Campaigns forever, publishing leadership on `tx`. Once leader, it publishes `false` (the
    /// caller stops) when another candidate holds the Lease, or at the renew deadline: the start
    /// of the last successful renewal plus two thirds of the Lease, whether or not a request is
    /// still in flight then. Another candidate sees the Lease expire a full Lease duration after
    /// it saw that renewal, so the old leader has stopped first.
    pub async fn run(mut self, tx: watch::Sender<bool>) {
        // Some while leading: when leadership ends unless renewed.
        let mut deadline: Option<Instant> = None;
        let step_down = |tx: &watch::Sender<bool>, why: &str| {
            tracing::error!("{why}");
            let _ = tx.send(false);
        };
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                step_down(
                    &tx,
                    "could not renew the leader Lease before the renew deadline",
                );
                deadline = None;
            }
            let started = Instant::now();
            let result = match deadline {
                Some(d) => tokio::time::timeout_at(d, self.try_acquire_or_renew())
                    .await
                    .ok(),
                None => Some(self.try_acquire_or_renew().await),
            };
            match result {
                Some(Ok(true)) => {
                    if deadline.is_none() {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                        let _ = tx.send(true);
                    }
                    deadline = Some(started + self.timing.renew_deadline);
                }
                Some(Ok(false)) if deadline.is_some() => {
                    deadline = None;
                    step_down(&tx, "lost the leader Lease to another replica");
                }
                Some(Ok(false)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "leader election request failed"),
                // The deadline passed mid-request: stepped down at the top of the loop.
                None => {}
            }
            let mut wake = Instant::now() + self.timing.retry_period;
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            tokio::time::sleep_until(wake).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lease(holder: &str) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                // Far in the past on purpose: another machine's clock is never compared.
                renew_time: Some(MicroTime(Timestamp::from_second(1).unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn decisions() {
        let s = Duration::from_secs;
        assert_eq!(decide(None, "a", s(0)), Decision::Create);
        assert_eq!(decide(Some(&lease("a")), "a", s(100)), Decision::Renew);
        assert_eq!(
            decide(Some(&lease("b")), "a", s(14)),
            Decision::Wait { holder: "b".into() },
            "a renewTime long past does not expire a Lease this candidate saw change recently"
        );
        assert_eq!(decide(Some(&lease("b")), "a", s(15)), Decision::TakeOver);
        assert_eq!(decide(Some(&lease("")), "a", s(0)), Decision::TakeOver);
    }

    #[test]
    fn timing_keeps_a_third_of_the_lease_between_step_down_and_takeover() {
        let t = Timing::new(Duration::from_millis(1500), Duration::from_millis(100));
        assert_eq!(t.lease_duration, Duration::from_secs(1));
        assert_eq!(t.renew_deadline, Duration::from_secs(2) / 3);
    }
}
