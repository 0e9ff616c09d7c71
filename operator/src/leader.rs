//! Leader election on a `coordination.k8s.io/v1` Lease, so that two operator replicas never
//! reconcile at once. The decision is a pure function ([`decide`]); the loop ([`LeaderElector`])
//! applies it with optimistic concurrency: every write carries the `resourceVersion` it read, so
//! two candidates racing for an expired Lease cannot both win (one gets 409 Conflict).
//!
//! Like controller-runtime, a replica that loses the Lease stops (the process exits and the pod
//! restarts as a candidate) rather than risking two writers.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

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

/// Decides what `me` does with `lease` at `now`. Pure.
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let expired = match spec.renew_time.or(spec.acquire_time) {
        Some(MicroTime(t)) => t + duration < now,
        None => true,
    };
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
    lease_duration: Duration,
    renew_deadline: Duration,
    renew_every: Duration,
}

impl LeaderElector {
    /// A candidate `identity` for Lease `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
        }
    }

    /// Lease duration (whole seconds, at least one: the Lease stores seconds) and renewal
    /// period; the renew deadline is two thirds of the Lease, as controller-runtime's defaults.
    pub fn timing(mut self, lease_duration: Duration, renew_every: Duration) -> Self {
        self.lease_duration = Duration::from_secs(lease_duration.as_secs().max(1));
        self.renew_deadline = self.lease_duration * 2 / 3;
        self.renew_every = renew_every;
        self
    }

    fn spec(&self, now: Timestamp, acquire: bool, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let mut spec = previous.cloned().unwrap_or_default();
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.lease_duration.as_secs() as i32);
        spec.renew_time = Some(MicroTime(now));
        if acquire {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec
    }

    /// One round: returns whether we hold the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(current.as_ref(), &self.identity, now);
        let result = match (&decision, current) {
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, true, None)),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (Decision::Renew | Decision::TakeOver, Some(mut lease)) => {
                let acquire = decision == Decision::TakeOver;
                lease.spec = Some(self.spec(now, acquire, lease.spec.as_ref()));
                // `replace` sends the resourceVersion we read: a concurrent writer gets 409.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            _ => return Ok(false),
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Campaigns forever, publishing leadership on `tx`. Once leader, renewals failing for the
    /// renew deadline (two thirds of the Lease) publish `false` (the caller stops): measured from
    /// the start of the last successful request, so the old leader has stopped before any other
    /// candidate can see the Lease expire.
    pub async fn run(self, tx: watch::Sender<bool>) {
        let mut last_success = std::time::Instant::now();
        loop {
            let leading = *tx.borrow();
            let attempt = std::time::Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_success = attempt;
                    if !leading {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                        let _ = tx.send(true);
                    }
                }
                Ok(false) => {
                    if leading {
                        tracing::error!("lost the leader Lease to another replica");
                        let _ = tx.send(false);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election request failed");
                    if leading && last_success.elapsed() > self.renew_deadline {
                        tracing::error!("could not renew the leader Lease in time");
                        let _ = tx.send(false);
                    }
                }
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::from_second(1000).unwrap();
        assert_eq!(decide(None, "a", now), Decision::Create);
        assert_eq!(decide(Some(&lease("a", 999)), "a", now), Decision::Renew);
        assert_eq!(
            decide(Some(&lease("b", 990)), "a", now),
            Decision::Wait { holder: "b".into() }
        );
        assert_eq!(decide(Some(&lease("b", 980)), "a", now), Decision::TakeOver);
        assert_eq!(decide(Some(&lease("", 999)), "a", now), Decision::TakeOver);
    }
}
