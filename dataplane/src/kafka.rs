//! librdkafka client settings built from the dataplane config, with SASL credentials taken from
//! the environment so that they never sit in a config file.

use eventstream_crds::config::{ENV_KAFKA_PASSWORD, ENV_KAFKA_USERNAME, KafkaConfig};
use rdkafka::ClientConfig;

/// Why Kafka client settings cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSettingsError {
    /// SASL is configured but a credential variable is missing.
    #[error("kafka.securityProtocol uses SASL but the environment variable {0} is not set")]
    MissingCredential(&'static str),
}

/// Settings shared by every client of the process (producer, consumers, admin).
pub fn client_config(kafka: &KafkaConfig) -> Result<ClientConfig, KafkaSettingsError> {
    client_config_with(kafka, |name| std::env::var(name).ok())
}

/// [`client_config`] with an explicit environment lookup (for tests).
pub fn client_config_with(
    kafka: &KafkaConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ClientConfig, KafkaSettingsError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in kafka
        .security_protocol
        .librdkafka_properties(kafka.sasl_mechanism)
    {
        config.set(key, value);
    }
    if kafka.security_protocol.uses_sasl() {
        let username = env(ENV_KAFKA_USERNAME)
            .ok_or(KafkaSettingsError::MissingCredential(ENV_KAFKA_USERNAME))?;
        let password = env(ENV_KAFKA_PASSWORD)
            .ok_or(KafkaSettingsError::MissingCredential(ENV_KAFKA_PASSWORD))?;
        config.set("sasl.username", username);
        config.set("sasl.password", password);
    }
    if let Some(ca) = &kafka.ca_file {
        config.set("ssl.ca.location", ca);
    }
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventstream_crds::v1alpha1::SecurityProtocol;

    fn kafka(protocol: SecurityProtocol) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: "k:9092".into(),
            security_protocol: protocol,
            sasl_mechanism: None,
            ca_file: Some("/ca.crt".into()),
            properties: [("fetch.wait.max.ms".to_string(), "5".to_string())].into(),
        }
    }

    #[test]
    fn plaintext_needs_no_secrets() {
        let c = client_config_with(&kafka(SecurityProtocol::Plaintext), |_| None).expect("ok");
        assert_eq!(c.get("bootstrap.servers"), Some("k:9092"));
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert_eq!(c.get("ssl.ca.location"), Some("/ca.crt"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("5"));
        assert_eq!(c.get("sasl.username"), None);
    }

    #[test]
    fn sasl_takes_credentials_from_the_environment() {
        let c = client_config_with(&kafka(SecurityProtocol::SaslSsl), |k| {
            Some(format!("value-of-{k}"))
        })
        .expect("ok");
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(
            c.get("sasl.username"),
            Some("value-of-EVENTSTREAM_KAFKA_USERNAME")
        );
    }

    #[test]
    fn sasl_without_credentials_is_a_clear_error() {
        let err = client_config_with(&kafka(SecurityProtocol::SaslPlaintext), |_| None)
            .expect_err("missing");
        assert!(err.to_string().contains(ENV_KAFKA_USERNAME), "{err}");
    }
}
