//! Dereference step: reads the Secrets a stream references. Kafka credentials are read (the
//! operator itself talks to Kafka); the database URL and JWT key are only checked for existence,
//! their values never leave the Secret except as pod environment variables.

use eventstream_crds::EventStream;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::kafka_admin::KafkaConnection;

/// A referenced Secret is missing or incomplete: the user has to create or fix it.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The Secret does not exist.
    #[error("Secret {namespace}/{name} (referenced by {field}) does not exist: create it")]
    NotFound {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Spec field that references it.
        field: &'static str,
    },
    /// The Secret lacks a key.
    #[error("Secret {namespace}/{name} (referenced by {field}) has no key {key:?}: add it")]
    MissingKey {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Missing key.
        key: String,
        /// Spec field that references it.
        field: &'static str,
    },
    /// The API server failed (not a user problem).
    #[error("reading a Secret: {0}")]
    Kube(#[from] kube::Error),
}

impl SecretError {
    /// Condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            SecretError::NotFound { .. } => "SecretNotFound",
            SecretError::MissingKey { .. } => "SecretKeyMissing",
            SecretError::Kube(_) => "KubernetesApiError",
        }
    }
}

async fn get(api: &Api<Secret>, name: &str, field: &'static str) -> Result<Secret, SecretError> {
    match api.get_opt(name).await? {
        Some(s) => Ok(s),
        None => Err(SecretError::NotFound {
            namespace: api_namespace(api),
            name: name.into(),
            field,
        }),
    }
}

fn api_namespace(api: &Api<Secret>) -> String {
    api.namespace().unwrap_or_default().to_string()
}

fn value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8_lossy(&v.0).into_owned());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
}

fn require(secret: &Secret, key: &str, field: &'static str) -> Result<String, SecretError> {
    value(secret, key).ok_or_else(|| SecretError::MissingKey {
        namespace: secret.namespace().unwrap_or_default(),
        name: secret.name_any(),
        key: key.into(),
        field,
    })
}

/// The connection the operator uses for `es`, credentials included. Pure once the Secret is read.
pub fn connection(
    es: &EventStream,
    bootstrap: String,
    secret: Option<&Secret>,
) -> Result<KafkaConnection, SecretError> {
    let k = &es.spec.kafka;
    let sasl = k.security_protocol.uses_sasl();
    let tls = k.security_protocol.uses_tls();
    let mut conn = KafkaConnection::plaintext(bootstrap);
    conn.security_protocol = k.security_protocol;
    conn.sasl_mechanism = k.security_protocol.sasl_mechanism(k.sasl_mechanism);
    if let Some(secret) = secret {
        const FIELD: &str = "spec.kafka.secretRef";
        if sasl {
            conn.username = Some(require(secret, "username", FIELD)?);
            conn.password = Some(require(secret, "password", FIELD)?);
        }
        if tls {
            conn.ca_pem = Some(require(secret, "ca.crt", FIELD)?);
        }
    }
    Ok(conn)
}

/// Reads the Kafka Secret (when referenced) and builds the connection.
pub async fn kafka_connection(
    client: &Client,
    es: &EventStream,
    bootstrap: String,
) -> Result<KafkaConnection, SecretError> {
    let secret = match &es.spec.kafka.secret_ref {
        Some(r) => {
            let api: Api<Secret> =
                Api::namespaced(client.clone(), &es.namespace().unwrap_or_default());
            Some(get(&api, &r.name, "spec.kafka.secretRef").await?)
        }
        None => None,
    };
    connection(es, bootstrap, secret.as_ref())
}

/// Checks that `name` exists in the stream's namespace and has `key`.
pub async fn check_key(
    client: &Client,
    es: &EventStream,
    name: &str,
    key: &str,
    field: &'static str,
) -> Result<(), SecretError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &es.namespace().unwrap_or_default());
    let secret = get(&api, name, field).await?;
    require(&secret, key, field).map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use eventstream_crds::v1alpha1::SaslMechanism;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn es(kafka: &str) -> EventStream {
        let spec = serde_yaml::from_str(&format!("kafka: {kafka}")).unwrap();
        let mut es = EventStream::new("s", spec);
        es.metadata.namespace = Some("ns".into());
        es
    }

    fn secret(keys: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("creds".into());
        s.metadata.namespace = Some("ns".into());
        s.data = Some(
            keys.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        );
        s
    }

    #[test]
    fn sasl_scram_by_default_with_credentials() {
        let e = es("{ securityProtocol: SASL_PLAINTEXT, secretRef: { name: creds } }");
        let c = connection(
            &e,
            "k:1".into(),
            Some(&secret(&[("username", "u"), ("password", "p")])),
        )
        .unwrap();
        assert_eq!(c.sasl_mechanism, Some(SaslMechanism::ScramSha512));
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some("p"))
        );
        let cfg = c.client_config();
        assert_eq!(cfg.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(cfg.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
    }

    #[test]
    fn missing_keys_name_the_secret_and_key() {
        let e =
            es("{ securityProtocol: SASL_SSL, saslMechanism: PLAIN, secretRef: { name: creds } }");
        let err = connection(
            &e,
            "k:1".into(),
            Some(&secret(&[("username", "u"), ("password", "p")])),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "SecretKeyMissing");
        assert_eq!(
            err.to_string(),
            "Secret ns/creds (referenced by spec.kafka.secretRef) has no key \"ca.crt\": add it"
        );
    }
}
