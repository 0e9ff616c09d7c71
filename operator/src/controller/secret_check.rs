//! Secret step: the Secrets only pods read (database URL and certificates, JWT key) are checked
//! for existence and keys, so the user learns about a missing one from the stream's status, not
//! from a pod stuck in `CreateContainerConfigError`. The list comes from
//! [`children::secret_uses`], the same list the pod builders deliver; the Kafka Secret is read
//! by the topic step, which needs its values.

use eventstream_crds::EventStream;
use kube::runtime::events::EventType;

use super::Error;
use super::context::Context;
use crate::children::{self, Component};
use crate::conditions::Check;
use crate::secrets::{self, SecretError};

/// The first problem with the Secrets of each workload, if any.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SecretChecks {
    /// For `BridgeReady`.
    pub bridge: Option<Check>,
    /// For `SinkReady`.
    pub sink: Option<Check>,
    /// For `AlertsReady`.
    pub alerts: Option<Check>,
}

impl SecretChecks {
    fn slot(&mut self, component: Component) -> &mut Option<Check> {
        match component {
            Component::Bridge => &mut self.bridge,
            Component::Sink => &mut self.sink,
            Component::Alerts => &mut self.alerts,
        }
    }

    /// Whether any Secret is missing or incomplete.
    pub fn any(&self) -> bool {
        self.bridge.is_some() || self.sink.is_some() || self.alerts.is_some()
    }
}

/// Checks every Secret `es`'s pods read, stopping per workload at its first problem; publishes
/// one Warning Event for the first problem found.
pub async fn check_secrets(es: &EventStream, ctx: &Context) -> Result<SecretChecks, Error> {
    let mut found = SecretChecks::default();
    for u in children::secret_uses(es)
        .iter()
        .filter(|u| !u.read_by_operator)
    {
        if u.components.iter().all(|c| found.slot(*c).is_some()) {
            continue;
        }
        for key in u.keys() {
            match secrets::check_key(&ctx.client, es, &u.secret, key, u.field).await {
                Ok(()) => {}
                Err(SecretError::Kube(e)) => return Err(e.into()),
                Err(e) => {
                    let check = Check::fail(e.reason(), e.to_string());
                    for c in u.components {
                        found.slot(*c).get_or_insert_with(|| check.clone());
                    }
                    break;
                }
            }
        }
    }
    if let Some(c) = found
        .bridge
        .iter()
        .chain(found.sink.iter())
        .chain(found.alerts.iter())
        .next()
    {
        ctx.publish(
            es,
            EventType::Warning,
            &c.reason,
            "ReadSecret",
            c.message.clone(),
        )
        .await;
    }
    Ok(found)
}
