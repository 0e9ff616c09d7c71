//! The librdkafka adapter: [`RdKafkaAdmin`] implements the [`KafkaAdmin`] port with rdkafka's
//! admin client and a consumer for group offsets. The one request the binding does not expose,
//! IncrementalAlterConfigs, goes through [`super::incremental`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::connection::KafkaConnection;
use super::incremental::{AlterError, ConfigOp, incremental_alter_configs};
use super::plan::{ClusterView, DesiredTopic, ObservedTopic};
use super::port::{KafkaAdmin, KafkaAdminError, ResetTo};

/// [`KafkaAdmin`] over librdkafka. Keeps one admin client per distinct connection.
pub struct RdKafkaAdmin {
    timeout: Duration,
    clients: Mutex<HashMap<u64, Arc<AdminClient<DefaultClientContext>>>>,
}

/// Clients kept at most; the cache is cleared past it (connections differ per stream only when
/// streams name their own clusters or credentials).
const MAX_CLIENTS: usize = 256;

impl RdKafkaAdmin {
    /// An adapter whose every request times out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    fn client(
        &self,
        conn: &KafkaConnection,
    ) -> Result<Arc<AdminClient<DefaultClientContext>>, KafkaAdminError> {
        let key = conn.key();
        let mut clients = self.clients.lock();
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let client: AdminClient<DefaultClientContext> =
            conn.client_config()
                .create()
                .map_err(|e| KafkaAdminError::Config {
                    bootstrap: conn.bootstrap.clone(),
                    message: e.to_string(),
                })?;
        let client = Arc::new(client);
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn consumer(
        &self,
        conn: &KafkaConnection,
        group: &str,
    ) -> Result<BaseConsumer, KafkaAdminError> {
        let mut config = conn.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        config.create().map_err(|e| KafkaAdminError::Config {
            bootstrap: conn.bootstrap.clone(),
            message: e.to_string(),
        })
    }
}

fn is_unreachable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::CoordinatorLoadInProgress
    )
}

/// Names the bootstrap hosts that do not resolve, which is what a user needs to fix.
async fn explain_unreachable(bootstrap: &str, message: String) -> KafkaAdminError {
    let mut unresolved = Vec::new();
    for entry in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        if tokio::net::lookup_host(entry).await.is_err() {
            unresolved.push(entry.to_string());
        }
    }
    let message = if unresolved.is_empty() {
        message
    } else {
        format!(
            "{message} (bootstrap address {} does not resolve: check spec.kafka.bootstrapServers or --kafka-bootstrap)",
            unresolved.join(", ")
        )
    };
    KafkaAdminError::Unreachable {
        bootstrap: bootstrap.to_string(),
        message,
    }
}

async fn map_err(conn: &KafkaConnection, operation: &str, e: KafkaError) -> KafkaAdminError {
    // `rdkafka_error_code()` is `None` for admin-operation errors; their code matters here.
    let code = match &e {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    match code {
        Some(code) if is_unreachable(code) => {
            explain_unreachable(&conn.bootstrap, e.to_string()).await
        }
        code => KafkaAdminError::Refused {
            operation: operation.to_string(),
            code,
            message: e.to_string(),
        },
    }
}

/// The outcome of an admin request for one resource: the request's error, or the resource's
/// error unless it is `fine` (already there, already gone).
async fn each_ok(
    conn: &KafkaConnection,
    operation: &str,
    // `TopicResult` and `GroupResult` are the same type: a name, or a name and its error.
    results: KafkaResult<Vec<rdkafka::admin::TopicResult>>,
    fine: RDKafkaErrorCode,
) -> Result<(), KafkaAdminError> {
    let results = match results {
        Ok(r) => r,
        Err(e) => return Err(map_err(conn, operation, e).await),
    };
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, code)) if code == fine => {}
            Err((_, code)) => return Err(map_code(conn, operation, code).await),
        }
    }
    Ok(())
}

async fn map_code(
    conn: &KafkaConnection,
    operation: &str,
    code: RDKafkaErrorCode,
) -> KafkaAdminError {
    if is_unreachable(code) {
        explain_unreachable(&conn.bootstrap, code.to_string()).await
    } else {
        KafkaAdminError::Refused {
            operation: operation.to_string(),
            code: Some(code),
            message: code.to_string(),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

impl RdKafkaAdmin {
    async fn describe_impl(
        &self,
        conn: &KafkaConnection,
        topic: &str,
    ) -> Result<ClusterView, KafkaAdminError> {
        let client = self.client(conn)?;
        let timeout = self.timeout;
        let name = topic.to_string();
        let c = client.clone();
        let metadata = match blocking(move || c.inner().fetch_metadata(Some(&name), timeout)).await
        {
            Ok(m) => m,
            Err(e) => return Err(map_err(conn, "describe the topic", e).await),
        };
        let brokers = metadata.brokers().len();
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(ClusterView {
                brokers,
                topic: None,
            });
        };
        match t.error().map(RDKafkaErrorCode::from) {
            None => {}
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                return Ok(ClusterView {
                    brokers,
                    topic: None,
                });
            }
            Some(code) => return Err(map_code(conn, "describe the topic", code).await),
        }
        let partitions = t.partitions().len() as i32;
        let replication_factor = t
            .partitions()
            .iter()
            .find(|p| p.id() == 0)
            .map(|p| p.replicas().len() as i32)
            .unwrap_or(0);
        let results = match client
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &self.options())
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(map_err(conn, "describe the topic configs", e).await),
        };
        let mut configs = BTreeMap::new();
        let mut dynamic = Vec::new();
        for r in results {
            let resource = match r {
                Ok(r) => r,
                Err(code) => return Err(map_code(conn, "describe the topic configs", code).await),
            };
            for e in resource.entries {
                if e.source == ConfigSource::DynamicTopic {
                    dynamic.push(e.name.clone());
                }
                if let Some(v) = e.value {
                    configs.insert(e.name, v);
                }
            }
        }
        Ok(ClusterView {
            brokers,
            topic: Some(ObservedTopic {
                name: topic.to_string(),
                partitions,
                replication_factor,
                configs,
                dynamic,
            }),
        })
    }
}

impl KafkaAdmin for RdKafkaAdmin {
    fn describe<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<ClusterView, KafkaAdminError>> {
        Box::pin(self.describe_impl(conn, topic))
    }

    fn create_topic<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a DesiredTopic,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            let client = self.client(conn)?;
            // -1: the broker's default.replication.factor (KIP-464).
            let rf = topic.replication_factor.map(i32::from).unwrap_or(-1);
            let mut new = NewTopic::new(&topic.name, topic.partitions, TopicReplication::Fixed(rf));
            for (k, v) in &topic.configs {
                new = new.set(k, v);
            }
            let results = client.create_topics(&[new], &self.options()).await;
            each_ok(
                conn,
                "create the topic",
                results,
                RDKafkaErrorCode::TopicAlreadyExists,
            )
            .await
        })
    }

    fn set_topic_configs<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a str,
        configs: &'a BTreeMap<String, String>,
        remove: &'a [String],
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            let client = self.client(conn)?;
            // Legacy AlterConfigs replaces the topic's whole dynamic set with `configs`, which
            // also drops the keys in `remove`.
            let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
            for (k, v) in configs {
                alter = alter.set(k, v);
            }
            let code = match client.alter_configs(&[alter], &self.options()).await {
                Ok(results) => match results.into_iter().find_map(Result::err) {
                    None => return Ok(()),
                    Some((_, code)) => code,
                },
                Err(KafkaError::AdminOp(code)) => code,
                Err(e) => match e.rdkafka_error_code() {
                    Some(code) => code,
                    None => return Err(map_err(conn, "alter the topic configs", e).await),
                },
            };
            let unsupported = matches!(
                code,
                RDKafkaErrorCode::UnsupportedFeature | RDKafkaErrorCode::UnsupportedVersion
            );
            if !unsupported {
                return Err(map_code(conn, "alter the topic configs", code).await);
            }
            // The broker only speaks IncrementalAlterConfigs (tansu): say it ourselves, over the
            // same security protocol and credentials.
            let mut ops: Vec<ConfigOp> = configs
                .iter()
                .map(|(k, v)| ConfigOp::Set(k.clone(), v.clone()))
                .collect();
            ops.extend(remove.iter().map(|k| ConfigOp::Delete(k.clone())));
            match incremental_alter_configs(conn, topic, &ops, self.timeout).await {
                Ok(()) => Ok(()),
                Err(AlterError::Refused { message, .. }) => Err(KafkaAdminError::Refused {
                    operation: "alter the topic configs".into(),
                    code: None,
                    message,
                }),
                Err(AlterError::Config(message)) => Err(KafkaAdminError::Config {
                    bootstrap: conn.bootstrap.clone(),
                    message,
                }),
                Err(AlterError::Unreachable(message)) => {
                    Err(explain_unreachable(&conn.bootstrap, message).await)
                }
            }
        })
    }

    fn create_partitions<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a str,
        total: i32,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            let client = self.client(conn)?;
            let new = NewPartitions::new(topic, usize::try_from(total).unwrap_or(0));
            let results = match client.create_partitions(&[new], &self.options()).await {
                Ok(r) => r,
                Err(e) => return Err(map_err(conn, "raise the partitions", e).await),
            };
            for r in results {
                if let Err((_, code)) = r {
                    return Err(map_code(conn, "raise the partitions", code).await);
                }
            }
            Ok(())
        })
    }

    fn delete_topic<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            let client = self.client(conn)?;
            let results = client.delete_topics(&[topic], &self.options()).await;
            each_ok(
                conn,
                "delete the topic",
                results,
                RDKafkaErrorCode::UnknownTopicOrPartition,
            )
            .await
        })
    }

    fn delete_group<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        group: &'a str,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            let client = self.client(conn)?;
            let results = client.delete_groups(&[group], &self.options()).await;
            each_ok(
                conn,
                "delete the consumer group",
                results,
                RDKafkaErrorCode::GroupIdNotFound,
            )
            .await
        })
    }

    fn group_lag<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        group: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, KafkaAdminError>> {
        Box::pin(async move {
            let consumer = self.consumer(conn, group)?;
            let timeout = self.timeout;
            let topic_owned = topic.to_string();
            let result = blocking(move || {
                let metadata = consumer.fetch_metadata(Some(&topic_owned), timeout)?;
                let ids: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic_owned)
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                let mut tpl = TopicPartitionList::new();
                for id in &ids {
                    tpl.add_partition(&topic_owned, *id);
                }
                let committed = consumer.committed_offsets(tpl.clone(), timeout)?;
                // One ListOffsets round trip for all partitions (latest = -1), not one each.
                tpl.set_all_offsets(Offset::End)?;
                let ends = consumer.offsets_for_times(tpl, timeout)?;
                let mut lag = 0i64;
                let mut any = false;
                for id in ids {
                    let Some(Offset::Offset(done)) = committed
                        .find_partition(&topic_owned, id)
                        .map(|e| e.offset())
                    else {
                        continue;
                    };
                    any = true;
                    let high = match ends.find_partition(&topic_owned, id).map(|e| e.offset()) {
                        Some(Offset::Offset(h)) => h,
                        _ => consumer.fetch_watermarks(&topic_owned, id, timeout)?.1,
                    };
                    lag += (high - done).max(0);
                }
                Ok(any.then_some(lag))
            })
            .await;
            match result {
                Ok(lag) => Ok(lag),
                Err(e) => Err(map_err(conn, "read the consumer group offsets", e).await),
            }
        })
    }

    fn reset_group<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        group: &'a str,
        topic: &'a str,
        to: ResetTo,
    ) -> BoxFuture<'a, Result<BTreeMap<i32, i64>, KafkaAdminError>> {
        Box::pin(async move {
            let consumer = self.consumer(conn, group)?;
            let timeout = self.timeout;
            let topic_owned = topic.to_string();
            let result = blocking(move || {
                let metadata = consumer.fetch_metadata(Some(&topic_owned), timeout)?;
                let mut tpl = TopicPartitionList::new();
                let mut offsets = BTreeMap::new();
                for t in metadata.topics().iter().filter(|t| t.name() == topic_owned) {
                    for p in t.partitions() {
                        let (low, high) =
                            consumer.fetch_watermarks(&topic_owned, p.id(), timeout)?;
                        let offset = match to {
                            ResetTo::Earliest => low,
                            ResetTo::Latest => high,
                        };
                        tpl.add_partition_offset(&topic_owned, p.id(), Offset::Offset(offset))?;
                        offsets.insert(p.id(), offset);
                    }
                }
                consumer.commit(&tpl, CommitMode::Sync)?;
                Ok(offsets)
            })
            .await;
            match result {
                Ok(offsets) => Ok(offsets),
                Err(e) => Err(map_err(conn, "reset the consumer group offsets", e).await),
            }
        })
    }
}
