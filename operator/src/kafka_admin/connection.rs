//! How the operator reaches one Kafka cluster ([`KafkaConnection`]): bootstrap servers, security
//! protocol and credentials read from the stream's Secret, and their librdkafka settings.

use std::hash::{Hash, Hasher};

use eventstream_crds::v1alpha1::{SaslMechanism, SecurityProtocol};
use rdkafka::ClientConfig;

/// How to reach one Kafka cluster, with credentials read from the stream's Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConnection {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// `security.protocol`.
    pub security_protocol: SecurityProtocol,
    /// `sasl.mechanism` when SASL is used.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL username.
    pub username: Option<String>,
    /// SASL password.
    pub password: Option<String>,
    /// PEM of a private CA (`ssl.ca.pem`).
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConnection")
            .field("bootstrap", &self.bootstrap)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

impl KafkaConnection {
    /// A plaintext connection to `bootstrap`.
    pub fn plaintext(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            username: None,
            password: None,
            ca_pem: None,
        }
    }

    /// librdkafka settings for this connection.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in self
            .security_protocol
            .librdkafka_properties(self.sasl_mechanism)
        {
            c.set(key, value);
        }
        if let Some(u) = &self.username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &self.password {
            c.set("sasl.password", p);
        }
        if let Some(ca) = &self.ca_pem {
            c.set("ssl.ca.pem", ca);
        }
        c
    }

    /// Identity of the connection, keying the adapter's client cache.
    pub(super) fn key(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &self.bootstrap,
            format!("{:?}/{:?}", self.security_protocol, self.sasl_mechanism),
            &self.username,
            &self.password,
            &self.ca_pem,
        )
            .hash(&mut h);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_debug_output() {
        let mut c = KafkaConnection::plaintext("k:9092");
        c.password = Some("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
