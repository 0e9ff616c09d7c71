//! Pure builders of the Kubernetes objects an EventStream owns: the ConfigMap with the dataplane
//! config, the bridge Deployment, Service and PodDisruptionBudget, the sink Deployment and PDB,
//! and the Prometheus Operator monitors. No client, no clock: `(&EventStream, &OperatorConfig)`
//! in, objects out, so every field can be checked by unit and golden tests.

use std::collections::BTreeMap;

use eventstream_crds::EventStream;
use eventstream_crds::config::{
    ENV_JWT_KEY, ENV_KAFKA_PASSWORD, ENV_KAFKA_USERNAME, ENV_POSTGRES_URL,
};
use eventstream_crds::render::{self, KAFKA_CA_FILE, RenderError};
use eventstream_crds::v1alpha1::WorkloadSpec;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::core::Resource;
use sha2::{Digest, Sha256};

use crate::{CONFIG_HASH_ANNOTATION, STREAM_LABEL};

/// Key of the dataplane config inside the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Where pods find the dataplane config.
pub const CONFIG_PATH: &str = "/etc/eventstream/config.yaml";
/// The dataplane's single HTTP port (ingest, `/ws`, `/sse`, probes, `/metrics`).
pub const HTTP_PORT: i32 = 8080;
/// Name of that port on containers and the Service.
pub const HTTP_PORT_NAME: &str = "http";
/// The dataplane binary inside the image.
pub const DATAPLANE_BINARY: &str = "eventstream-dataplane";
/// UID and GID the dataplane runs as (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;
/// Longest DNS-1035 label (Service names, label values).
const MAX_LABEL: usize = 63;

/// The dataplane workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// Ingest and fan-out.
    Bridge,
    /// Kafka → PostgreSQL.
    Sink,
    /// Threshold alerts: the stream → its alerts topic (one pod).
    Alerts,
}

impl Component {
    /// `bridge`, `sink` or `alerts`: the dataplane mode, the name suffix and the component label.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Bridge => "bridge",
            Component::Sink => "sink",
            Component::Alerts => "alerts",
        }
    }
}

/// Why the children of a stream cannot be built. Each variant needs the user to change the spec.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    /// The shared render function refused the spec.
    #[error("{0}")]
    Render(#[from] RenderError),
    /// A child name would not be a valid Kubernetes name.
    #[error(
        "metadata.name {name:?} is too long or not a DNS label: child objects are named {child:?}, which must be a lower-case DNS label of at most 63 characters; use a shorter EventStream name"
    )]
    InvalidName {
        /// The EventStream's name.
        name: String,
        /// The offending child name.
        child: String,
    },
    /// The resource has no namespace or UID (it did not come from the API server).
    #[error("the EventStream has no {0}")]
    MissingMetadata(&'static str),
}

impl BuildError {
    /// Condition reason and metric category.
    pub fn reason(&self) -> &'static str {
        match self {
            BuildError::Render(RenderError::NoBootstrap) => "NoKafkaBootstrap",
            BuildError::Render(_) => "InvalidSpec",
            BuildError::InvalidName { .. } => "InvalidName",
            BuildError::MissingMetadata(_) => "InvalidSpec",
        }
    }
}

/// Everything a stream owns, built in one go.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The dataplane config.
    pub config_map: ConfigMap,
    /// Hash of the config (on the pod templates).
    pub config_hash: String,
    /// Service in front of the bridge.
    pub bridge_service: Service,
    /// The bridge.
    pub bridge: Deployment,
    /// PDB of the bridge when it has more than one replica.
    pub bridge_pdb: Option<PodDisruptionBudget>,
    /// The sink when `persistence` is set.
    pub sink: Option<Deployment>,
    /// PDB of the sink when it has more than one replica.
    pub sink_pdb: Option<PodDisruptionBudget>,
    /// The alerts evaluator when `alerts` is set.
    pub alerts: Option<Deployment>,
    /// ServiceMonitor for the bridge when the CRD exists.
    pub service_monitor: Option<DynamicObject>,
    /// PodMonitor for the sink when the CRD exists and the sink does.
    pub pod_monitor: Option<DynamicObject>,
    /// PodMonitor for the alerts evaluator when the CRD exists and the evaluator does.
    pub alerts_pod_monitor: Option<DynamicObject>,
}

/// The kinds of object a stream owns. Applying, sweeping and watching all iterate this one
/// list, so a new kind of child is added here and nowhere else in the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildKind {
    /// The dataplane config.
    ConfigMap,
    /// The bridge's Service.
    Service,
    /// Bridge and sink.
    Deployment,
    /// PDBs of bridge and sink.
    PodDisruptionBudget,
    /// `monitoring.coreos.com/v1` ServiceMonitor (when the Prometheus Operator is installed).
    ServiceMonitor,
    /// `monitoring.coreos.com/v1` PodMonitor (when the Prometheus Operator is installed).
    PodMonitor,
}

impl ChildKind {
    /// Every kind, in apply order (ConfigMap first: pods never start without their config).
    pub const ALL: [ChildKind; 6] = [
        ChildKind::ConfigMap,
        ChildKind::Service,
        ChildKind::Deployment,
        ChildKind::PodDisruptionBudget,
        ChildKind::ServiceMonitor,
        ChildKind::PodMonitor,
    ];

    /// Group, version, kind and plural, for dynamic API access.
    pub fn api_resource(self) -> ApiResource {
        match self {
            ChildKind::ConfigMap => api_resource::<ConfigMap>(),
            ChildKind::Service => api_resource::<Service>(),
            ChildKind::Deployment => api_resource::<Deployment>(),
            ChildKind::PodDisruptionBudget => api_resource::<PodDisruptionBudget>(),
            ChildKind::ServiceMonitor => service_monitor_resource(),
            ChildKind::PodMonitor => pod_monitor_resource(),
        }
    }

    /// Whether the cluster serves this kind (the monitor kinds only while the Prometheus
    /// Operator's CRDs are served: `cfg` is a reconcile's view of the CRD watch).
    pub fn served(self, cfg: &crate::OperatorConfig) -> bool {
        match self {
            ChildKind::ServiceMonitor => cfg.service_monitor,
            ChildKind::PodMonitor => cfg.pod_monitor,
            _ => true,
        }
    }
}

/// One built child object, serialized as itself (the body of its server-side apply).
// A handful exist per reconcile; boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum ChildObject {
    /// A ConfigMap.
    ConfigMap(ConfigMap),
    /// A Service.
    Service(Service),
    /// A Deployment.
    Deployment(Deployment),
    /// A PodDisruptionBudget.
    PodDisruptionBudget(PodDisruptionBudget),
    /// A monitor (no typed struct: the CRD is not ours).
    Monitor(DynamicObject),
}

/// One slot of the desired set: a child of `kind` named `name`, wanted when `object` is `Some`.
/// A `None` slot says the child must not exist (a PDB at one replica, the sink without
/// persistence); the sweep removes any owned object of a served kind that no `Some` slot names.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredChild {
    /// Its kind.
    pub kind: ChildKind,
    /// Its name.
    pub name: String,
    /// The object, when wanted.
    pub object: Option<ChildObject>,
}

impl Children {
    /// The desired set, in apply order, restricted to the kinds the cluster serves.
    pub fn desired(&self, es: &EventStream, cfg: &crate::OperatorConfig) -> Vec<DesiredChild> {
        let bridge = workload_name(es, Component::Bridge);
        let sink = workload_name(es, Component::Sink);
        let alerts = workload_name(es, Component::Alerts);
        let slot = |kind, name: &String, object: Option<ChildObject>| DesiredChild {
            kind,
            name: name.clone(),
            object,
        };
        [
            slot(
                ChildKind::ConfigMap,
                &config_map_name(es),
                Some(ChildObject::ConfigMap(self.config_map.clone())),
            ),
            slot(
                ChildKind::Service,
                &bridge,
                Some(ChildObject::Service(self.bridge_service.clone())),
            ),
            slot(
                ChildKind::Deployment,
                &bridge,
                Some(ChildObject::Deployment(self.bridge.clone())),
            ),
            slot(
                ChildKind::PodDisruptionBudget,
                &bridge,
                self.bridge_pdb
                    .clone()
                    .map(ChildObject::PodDisruptionBudget),
            ),
            slot(
                ChildKind::Deployment,
                &sink,
                self.sink.clone().map(ChildObject::Deployment),
            ),
            slot(
                ChildKind::PodDisruptionBudget,
                &sink,
                self.sink_pdb.clone().map(ChildObject::PodDisruptionBudget),
            ),
            slot(
                ChildKind::Deployment,
                &alerts,
                self.alerts.clone().map(ChildObject::Deployment),
            ),
            slot(
                ChildKind::ServiceMonitor,
                &bridge,
                self.service_monitor.clone().map(ChildObject::Monitor),
            ),
            slot(
                ChildKind::PodMonitor,
                &sink,
                self.pod_monitor.clone().map(ChildObject::Monitor),
            ),
            slot(
                ChildKind::PodMonitor,
                &alerts,
                self.alerts_pod_monitor.clone().map(ChildObject::Monitor),
            ),
        ]
        .into_iter()
        .filter(|c| c.kind.served(cfg))
        .collect()
    }
}

/// Builds every child of `es`. `sink_paused` scales the sink to zero (offset reset in progress).
pub fn build(
    es: &EventStream,
    cfg: &crate::OperatorConfig,
    sink_paused: bool,
) -> Result<Children, BuildError> {
    validate_names(es)?;
    let config_map = config_map(es, cfg)?;
    let config_hash = config_hash(&config_map);
    let bridge = deployment(es, cfg, Component::Bridge, &config_hash, None);
    let sink = es.spec.persistence.as_ref().map(|_| {
        deployment(
            es,
            cfg,
            Component::Sink,
            &config_hash,
            sink_paused.then_some(0),
        )
    });
    let sink_pdb = if sink.is_some() {
        pdb(es, Component::Sink, es.spec.sink.replicas)
    } else {
        None
    };
    let alerts = es
        .spec
        .alerts
        .as_ref()
        .map(|_| deployment(es, cfg, Component::Alerts, &config_hash, None));
    let alerts_pod_monitor =
        (cfg.pod_monitor && alerts.is_some()).then(|| pod_monitor_for(es, cfg, Component::Alerts));
    Ok(Children {
        alerts,
        alerts_pod_monitor,
        bridge_service: bridge_service(es),
        bridge_pdb: pdb(es, Component::Bridge, es.spec.bridge.replicas),
        sink_pdb,
        service_monitor: cfg.service_monitor.then(|| service_monitor(es, cfg)),
        pod_monitor: (cfg.pod_monitor && sink.is_some()).then(|| pod_monitor(es, cfg)),
        bridge,
        sink,
        config_map,
        config_hash,
    })
}

/// `<name>-bridge` / `<name>-sink` / `<name>-alerts`: Deployment, Service and PDB names.
pub fn workload_name(es: &EventStream, component: Component) -> String {
    format!("{}-{}", es.name_any(), component.as_str())
}

/// `<name>-config`: the ConfigMap.
pub fn config_map_name(es: &EventStream) -> String {
    format!("{}-config", es.name_any())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0].is_ascii_lowercase()
        && !s.ends_with('-')
}

/// EventStream names may be DNS subdomains (253 characters, dots); Services need DNS labels.
pub fn validate_names(es: &EventStream) -> Result<(), BuildError> {
    for child in [
        workload_name(es, Component::Bridge),
        workload_name(es, Component::Sink),
        workload_name(es, Component::Alerts),
        config_map_name(es),
    ] {
        if !is_dns_label(&child) {
            return Err(BuildError::InvalidName {
                name: es.name_any(),
                child,
            });
        }
    }
    Ok(())
}

/// Labels of every child: the recommended `app.kubernetes.io/*` set plus [`STREAM_LABEL`].
pub fn labels(es: &EventStream, component: Option<Component>) -> BTreeMap<String, String> {
    let mut l = selector_labels(es, component);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        crate::FIELD_MANAGER.into(),
    );
    l.insert("app.kubernetes.io/part-of".into(), "eventstream".into());
    l
}

/// The stable subset used in selectors (never change these: Deployment selectors are immutable).
pub fn selector_labels(es: &EventStream, component: Option<Component>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("app.kubernetes.io/name".into(), "eventstream".into());
    l.insert("app.kubernetes.io/instance".into(), es.name_any());
    l.insert(STREAM_LABEL.into(), es.name_any());
    if let Some(c) = component {
        l.insert("app.kubernetes.io/component".into(), c.as_str().into());
    }
    l
}

fn meta(es: &EventStream, name: String, component: Option<Component>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: es.namespace(),
        labels: Some(labels(es, component)),
        owner_references: es.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The ConfigMap holding `config.yaml`, rendered by the shared [`render::dataplane_config`].
pub fn config_map(es: &EventStream, cfg: &crate::OperatorConfig) -> Result<ConfigMap, BuildError> {
    let config = render::dataplane_config(es, &cfg.render_defaults())?;
    Ok(ConfigMap {
        metadata: meta(es, config_map_name(es), None),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), config.to_yaml())])),
        ..ConfigMap::default()
    })
}

/// SHA-256 (hex, first 16 bytes) of the ConfigMap's data: changes exactly when the config does.
pub fn config_hash(cm: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in cm.data.iter().flatten() {
        hasher.update(k.as_bytes());
        hasher.update([0]);
        hasher.update(v.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..16])
}

fn workload_spec(es: &EventStream, component: Component) -> WorkloadSpec {
    match component {
        Component::Bridge => es.spec.bridge.clone(),
        Component::Sink => es.spec.sink.clone(),
        // One evaluator per stream: its transactional.id fences any other, so a second replica
        // could only fail.
        Component::Alerts => WorkloadSpec {
            replicas: 1,
            resources: es.spec.alerts.as_ref().and_then(|a| a.resources.clone()),
            image: es.spec.alerts.as_ref().and_then(|a| a.image.clone()),
        },
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// How a referenced Secret reaches the pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// One key as an environment variable.
    Env {
        /// Variable name.
        var: &'static str,
        /// Key in the Secret.
        key: String,
    },
    /// Keys as files in a read-only Secret volume.
    Files {
        /// Volume name.
        volume: &'static str,
        /// Mount directory.
        dir: String,
        /// `(key in the Secret, file name)`.
        items: Vec<(String, String)>,
        /// `defaultMode` of the volume (`None`: the API server's default).
        mode: Option<i32>,
    },
}

/// One use of one Secret by a stream: which Secret, which spec field names it, which pods get
/// it and how. [`secret_uses`] is the single list of them: the env and volume builders and the
/// controller's Secret check all read it, so a new Secret reference is added in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    /// Secret name (in the stream's namespace).
    pub secret: String,
    /// Spec field that references it (for messages).
    pub field: &'static str,
    /// Pods that receive it.
    pub components: &'static [Component],
    /// The operator reads this Secret itself to talk to Kafka (the topic step dereferences and
    /// reports it); the others are only checked for existence and keys.
    pub read_by_operator: bool,
    /// How it reaches the pods.
    pub delivery: Delivery,
}

impl SecretUse {
    /// The keys the Secret must have.
    pub fn keys(&self) -> Vec<&str> {
        match &self.delivery {
            Delivery::Env { key, .. } => vec![key.as_str()],
            Delivery::Files { items, .. } => items.iter().map(|(k, _)| k.as_str()).collect(),
        }
    }
}

/// Every workload that talks to Kafka.
const BOTH: &[Component] = &[Component::Bridge, Component::Sink, Component::Alerts];

/// Every Secret `es` references, in the order env vars and volumes appear in the pods.
/// Secrets reach pods only as environment variables or mounted files, never through the
/// ConfigMap.
pub fn secret_uses(es: &EventStream) -> Vec<SecretUse> {
    const KAFKA: &str = "spec.kafka.secretRef";
    let mut uses = Vec::new();
    if let (true, Some(secret)) = (
        es.spec.kafka.security_protocol.uses_sasl(),
        &es.spec.kafka.secret_ref,
    ) {
        for (var, key) in [
            (ENV_KAFKA_USERNAME, "username"),
            (ENV_KAFKA_PASSWORD, "password"),
        ] {
            uses.push(SecretUse {
                secret: secret.name.clone(),
                field: KAFKA,
                components: BOTH,
                read_by_operator: true,
                delivery: Delivery::Env {
                    var,
                    key: key.into(),
                },
            });
        }
    }
    if let Some(auth) = &es.spec.auth {
        uses.push(SecretUse {
            secret: auth.jwt_secret_ref.name.clone(),
            field: "spec.auth.jwtSecretRef",
            components: &[Component::Bridge],
            read_by_operator: false,
            delivery: Delivery::Env {
                var: ENV_JWT_KEY,
                key: auth.jwt_secret_ref.key.clone(),
            },
        });
    }
    if let Some(p) = &es.spec.persistence {
        let r = &p.postgres.url_secret_ref;
        uses.push(SecretUse {
            secret: r.name.clone(),
            field: "spec.persistence.postgres.urlSecretRef",
            components: &[Component::Sink],
            read_by_operator: false,
            delivery: Delivery::Env {
                var: ENV_POSTGRES_URL,
                key: r.key.clone(),
            },
        });
    }
    if let (true, Some(secret)) = (
        es.spec.kafka.security_protocol.uses_tls(),
        &es.spec.kafka.secret_ref,
    ) {
        let (dir, file) = KAFKA_CA_FILE
            .rsplit_once('/')
            .unwrap_or(("/", KAFKA_CA_FILE));
        uses.push(SecretUse {
            secret: secret.name.clone(),
            field: KAFKA,
            components: BOTH,
            read_by_operator: true,
            delivery: Delivery::Files {
                volume: "kafka-ca",
                dir: dir.into(),
                items: vec![("ca.crt".into(), file.into())],
                mode: None,
            },
        });
    }
    let tls = es
        .spec
        .persistence
        .as_ref()
        .and_then(|p| p.postgres.tls.clone())
        .unwrap_or_default();
    if let Some(r) = &tls.ca_secret_ref {
        uses.push(SecretUse {
            secret: r.name.clone(),
            field: "spec.persistence.postgres.tls.caSecretRef",
            components: &[Component::Sink],
            read_by_operator: false,
            // Readable by the pod's group (fsGroup) only.
            delivery: Delivery::Files {
                volume: "postgres-ca",
                dir: POSTGRES_CA_DIR.into(),
                items: vec![(r.key.clone(), "ca.crt".into())],
                mode: Some(0o440),
            },
        });
    }
    if let Some(r) = &tls.client_cert_secret_ref {
        uses.push(SecretUse {
            secret: r.name.clone(),
            field: "spec.persistence.postgres.tls.clientCertSecretRef",
            components: &[Component::Sink],
            read_by_operator: false,
            delivery: Delivery::Files {
                volume: "postgres-client",
                dir: POSTGRES_CLIENT_DIR.into(),
                items: vec![
                    ("tls.crt".into(), "tls.crt".into()),
                    ("tls.key".into(), "tls.key".into()),
                ],
                mode: Some(0o440),
            },
        });
    }
    uses
}

/// Names of the Secrets `es` references (what a Secret watch maps back to streams).
pub fn referenced_secrets(es: &EventStream) -> std::collections::BTreeSet<String> {
    secret_uses(es).into_iter().map(|u| u.secret).collect()
}

fn env(es: &EventStream, component: Component) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = secret_uses(es)
        .iter()
        .filter(|u| u.components.contains(&component))
        .filter_map(|u| match &u.delivery {
            Delivery::Env { var, key } => Some(secret_env(var, &u.secret, key)),
            Delivery::Files { .. } => None,
        })
        .collect();
    // libpq's variables, which the sink reads when the URL does not set them: they point at
    // the files of the volumes above.
    if let (Component::Sink, Some(p)) = (component, &es.spec.persistence) {
        let tls = p.postgres.tls.clone().unwrap_or_default();
        if tls.ca_secret_ref.is_some() {
            env.push(plain_env(
                "PGSSLROOTCERT",
                &format!("{POSTGRES_CA_DIR}/ca.crt"),
            ));
        }
        if tls.client_cert_secret_ref.is_some() {
            env.push(plain_env(
                "PGSSLCERT",
                &format!("{POSTGRES_CLIENT_DIR}/tls.crt"),
            ));
            env.push(plain_env(
                "PGSSLKEY",
                &format!("{POSTGRES_CLIENT_DIR}/tls.key"),
            ));
        }
    }
    env
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// Where the sink finds the PostgreSQL CA bundle (`spec.persistence.postgres.tls.caSecretRef`).
pub const POSTGRES_CA_DIR: &str = "/etc/eventstream/postgres-ca";
/// Where the sink finds its PostgreSQL client certificate and key.
pub const POSTGRES_CLIENT_DIR: &str = "/etc/eventstream/postgres-client";

/// A read-only Secret volume of `items` (key → file) mounted at `dir`.
fn secret_volume(
    name: &str,
    secret: &str,
    items: &[(String, String)],
    dir: &str,
    mode: Option<i32>,
) -> (Volume, VolumeMount) {
    (
        Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                items: Some(
                    items
                        .iter()
                        .map(|(key, path)| KeyToPath {
                            key: key.clone(),
                            path: path.clone(),
                            ..KeyToPath::default()
                        })
                        .collect(),
                ),
                default_mode: mode,
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: name.into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

fn volumes(es: &EventStream, component: Component) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(es),
                items: Some(vec![KeyToPath {
                    key: CONFIG_KEY.into(),
                    path: CONFIG_KEY.into(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    // subPath: the config file sits next to the CA directory; pods roll on a config change
    // (hash annotation), so the subPath mount not being refreshed in place does not matter.
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_PATH.into(),
            sub_path: Some(CONFIG_KEY.into()),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ];
    for u in secret_uses(es)
        .iter()
        .filter(|u| u.components.contains(&component))
    {
        if let Delivery::Files {
            volume,
            dir,
            items,
            mode,
        } = &u.delivery
        {
            let (v, m) = secret_volume(volume, &u.secret, items, dir, *mode);
            volumes.push(v);
            mounts.push(m);
        }
    }
    (volumes, mounts)
}

fn http_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(HTTP_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

fn pod_template(
    es: &EventStream,
    cfg: &crate::OperatorConfig,
    component: Component,
    config_hash: &str,
) -> PodTemplateSpec {
    let workload = workload_spec(es, component);
    let (volumes, volume_mounts) = volumes(es, component);
    let container = Container {
        name: component.as_str().into(),
        image: Some(
            workload
                .image
                .clone()
                .unwrap_or_else(|| cfg.dataplane_image.clone()),
        ),
        command: Some(vec![DATAPLANE_BINARY.into()]),
        // The dataplane writes its fatal error to /dev/termination-log; a panic leaves the log
        // tail instead. The operator shows either in the stream's status.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        args: Some(vec![
            component.as_str().into(),
            "--config".into(),
            CONFIG_PATH.into(),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(HTTP_PORT_NAME.into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(env(es, component)).filter(|e| !e.is_empty()),
        resources: workload.resources.clone(),
        liveness_probe: Some(http_probe("/healthz", 10)),
        readiness_probe: Some(http_probe("/readyz", 5)),
        volume_mounts: Some(volume_mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(es, Some(component))),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.to_string(),
                config_hash.to_string(),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            // The dataplane never calls the Kubernetes API.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(runtime_default()),
                ..PodSecurityContext::default()
            }),
            affinity: Some(Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        WeightedPodAffinityTerm {
                            weight: 100,
                            pod_affinity_term: PodAffinityTerm {
                                label_selector: Some(LabelSelector {
                                    match_labels: Some(selector_labels(es, Some(component))),
                                    ..LabelSelector::default()
                                }),
                                topology_key: "kubernetes.io/hostname".into(),
                                ..PodAffinityTerm::default()
                            },
                        },
                    ]),
                    ..PodAntiAffinity::default()
                }),
                ..Affinity::default()
            }),
            ..PodSpec::default()
        }),
    }
}

/// The bridge or sink Deployment. `replicas_override` replaces the spec's replicas (the sink is
/// held at zero while its offsets are reset).
pub fn deployment(
    es: &EventStream,
    cfg: &crate::OperatorConfig,
    component: Component,
    config_hash: &str,
    replicas_override: Option<i32>,
) -> Deployment {
    Deployment {
        metadata: meta(es, workload_name(es, component), Some(component)),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas_override.unwrap_or(workload_spec(es, component).replicas)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(es, Some(component))),
                ..LabelSelector::default()
            },
            template: pod_template(es, cfg, component, config_hash),
            // The evaluator's new pod fences the old one anyway (transactional.id); Recreate
            // spares it a start that can only end in being fenced.
            strategy: (component == Component::Alerts).then(|| DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The bridge's ClusterIP Service: one port, `http` (8080), for ingest, `/ws`, `/sse` and `/metrics`.
pub fn bridge_service(es: &EventStream) -> Service {
    Service {
        metadata: meta(
            es,
            workload_name(es, Component::Bridge),
            Some(Component::Bridge),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(es, Some(Component::Bridge))),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT_NAME.into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String(HTTP_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A PDB allowing one pod down at a time, only when there is more than one replica (a PDB on a
/// single replica would block node drains forever).
pub fn pdb(es: &EventStream, component: Component, replicas: i32) -> Option<PodDisruptionBudget> {
    (replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(es, workload_name(es, component), Some(component)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(es, Some(component))),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// `monitoring.coreos.com/v1` ServiceMonitor.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "monitoring.coreos.com",
        "v1",
        "ServiceMonitor",
    ))
}

/// `monitoring.coreos.com/v1` PodMonitor.
pub fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "monitoring.coreos.com",
        "v1",
        "PodMonitor",
    ))
}

fn dynamic(
    es: &EventStream,
    ar: &ApiResource,
    component: Component,
    spec: serde_json::Value,
    cfg: &crate::OperatorConfig,
) -> DynamicObject {
    let mut obj = DynamicObject::new(&workload_name(es, component), ar);
    obj.metadata = meta(es, workload_name(es, component), Some(component));
    // `--monitor-label`s (e.g. `release=kube-prometheus-stack`, what Prometheus selects on);
    // the operator's own labels win on a clash.
    if let Some(labels) = obj.metadata.labels.as_mut() {
        for (k, v) in &cfg.monitor_labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    obj.data = serde_json::json!({ "spec": spec });
    obj
}

/// Scrapes `/metrics` on the bridge Service's `http` port.
pub fn service_monitor(es: &EventStream, cfg: &crate::OperatorConfig) -> DynamicObject {
    dynamic(
        es,
        &service_monitor_resource(),
        Component::Bridge,
        serde_json::json!({
            "selector": { "matchLabels": selector_labels(es, Some(Component::Bridge)) },
            "endpoints": [{ "port": HTTP_PORT_NAME, "path": "/metrics" }],
        }),
        cfg,
    )
}

/// Scrapes `/metrics` on the sink pods (the sink has no Service).
pub fn pod_monitor(es: &EventStream, cfg: &crate::OperatorConfig) -> DynamicObject {
    pod_monitor_for(es, cfg, Component::Sink)
}

/// Scrapes `/metrics` on the pods of a workload without a Service (the sink, the evaluator).
pub fn pod_monitor_for(
    es: &EventStream,
    cfg: &crate::OperatorConfig,
    component: Component,
) -> DynamicObject {
    dynamic(
        es,
        &pod_monitor_resource(),
        component,
        serde_json::json!({
            "selector": { "matchLabels": selector_labels(es, Some(component)) },
            "podMetricsEndpoints": [{ "port": HTTP_PORT_NAME, "path": "/metrics" }],
        }),
        cfg,
    )
}

/// In-cluster URLs of the stream, for `status.endpoints`.
pub fn endpoints(es: &EventStream) -> eventstream_crds::v1alpha1::EndpointsStatus {
    let host = format!(
        "{}.{}.svc:{HTTP_PORT}",
        workload_name(es, Component::Bridge),
        es.namespace().unwrap_or_default()
    );
    let ws = es.spec.websocket.enabled;
    eventstream_crds::v1alpha1::EndpointsStatus {
        websocket: ws.then(|| format!("ws://{host}/ws")),
        sse: ws.then(|| format!("http://{host}/sse")),
        ingest: es
            .spec
            .ingest
            .enabled
            .then(|| format!("http://{host}/produce")),
    }
}

/// The ApiResource of a typed child, for dynamic helpers.
pub fn api_resource<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::OperatorConfig;
    use eventstream_crds::EventStreamSpec;

    pub(crate) fn stream(spec: &str) -> EventStream {
        let spec: EventStreamSpec = serde_yaml::from_str(spec).expect("spec parses");
        let mut es = EventStream::new("telemetry", spec);
        es.metadata.namespace = Some("racing".into());
        es.metadata.uid = Some("6f1c1a52-0000-4000-8000-000000000001".into());
        es
    }

    fn cfg() -> OperatorConfig {
        OperatorConfig {
            kafka_bootstrap: Some("kafka.kafka:9092".into()),
            dataplane_image: "example.org/dataplane:1".into(),
            ..OperatorConfig::default()
        }
    }

    fn container(d: &Deployment) -> &Container {
        &d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    #[test]
    fn config_change_changes_the_pod_template_hash() {
        let a = build(&stream("{}"), &cfg(), false).unwrap();
        let b = build(&stream("topic: { partitions: 7 }"), &cfg(), false).unwrap();
        let c = build(&stream("ingest: { linger: 50ms }"), &cfg(), false).unwrap();
        assert_eq!(
            a.config_hash, b.config_hash,
            "partitions are not in the dataplane config"
        );
        assert_ne!(a.config_hash, c.config_hash);
        let ann = |d: &Deployment| {
            d.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_eq!(ann(&c.bridge), c.config_hash);
        assert_ne!(ann(&a.bridge), ann(&c.bridge));
    }

    #[test]
    fn database_url_only_reaches_the_sink_as_a_secret_env_var() {
        let es = stream(
            "persistence: { postgres: { urlSecretRef: { name: db, key: url }, table: frames } }",
        );
        let ch = build(&es, &cfg(), false).unwrap();
        let yaml = serde_yaml::to_string(&ch.config_map).unwrap();
        assert!(!yaml.contains("postgres://") && !yaml.contains("urlSecretRef"));
        let sink = ch.sink.expect("sink built");
        let env = container(&sink).env.clone().unwrap();
        let url = env
            .iter()
            .find(|e| e.name == ENV_POSTGRES_URL)
            .expect("url env");
        assert!(url.value.is_none());
        let sel = url
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((sel.name.as_str(), sel.key.as_str()), ("db", "url"));
        assert!(
            container(&ch.bridge)
                .env
                .iter()
                .flatten()
                .all(|e| e.name != ENV_POSTGRES_URL),
            "the bridge never sees the database URL"
        );
    }

    #[test]
    fn postgres_certificates_reach_only_the_sink_as_files_and_libpq_variables() {
        let es = stream(
            "persistence: { postgres: { urlSecretRef: { name: db, key: url }, table: frames, \
             tls: { caSecretRef: { name: rds-ca, key: bundle.pem }, clientCertSecretRef: { name: writer-cert } } } }",
        );
        let ch = build(&es, &cfg(), false).unwrap();
        let sink = ch.sink.expect("sink built");
        let c = container(&sink);
        let env: BTreeMap<String, Option<String>> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        assert_eq!(
            env["PGSSLROOTCERT"].as_deref(),
            Some("/etc/eventstream/postgres-ca/ca.crt")
        );
        assert_eq!(
            env["PGSSLKEY"].as_deref(),
            Some("/etc/eventstream/postgres-client/tls.key")
        );
        let pod = sink.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let volumes = pod.volumes.as_ref().unwrap();
        let ca = volumes.iter().find(|v| v.name == "postgres-ca").unwrap();
        let source = ca.secret.as_ref().unwrap();
        assert_eq!(source.secret_name.as_deref(), Some("rds-ca"));
        assert_eq!(source.items.as_ref().unwrap()[0].key, "bundle.pem");
        assert_eq!(
            source.default_mode,
            Some(0o440),
            "group-readable (fsGroup), nobody else"
        );
        let mounts: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(mounts.contains(&"/etc/eventstream/postgres-ca"));
        assert!(mounts.contains(&"/etc/eventstream/postgres-client"));
        let bridge = container(&ch.bridge);
        assert!(
            bridge
                .env
                .iter()
                .flatten()
                .all(|e| !e.name.starts_with("PGSSL"))
                && bridge
                    .volume_mounts
                    .iter()
                    .flatten()
                    .all(|m| !m.mount_path.contains("postgres")),
            "the bridge gets no database material"
        );
    }

    #[test]
    fn alerts_get_one_evaluator_pod_with_the_kafka_secret_and_a_pod_monitor() {
        let spec = "kafka: { securityProtocol: SASL_SSL, secretRef: { name: kafka-creds } }\n\
                    alerts: { key: /serverId, rules: [{ name: cpu, when: 'data.cpu > 90.0', severity: critical }] }";
        let mut config = cfg();
        config.pod_monitor = true;
        let ch = build(&stream(spec), &config, false).unwrap();
        let d = ch.alerts.expect("evaluator");
        assert_eq!(d.metadata.name.as_deref(), Some("telemetry-alerts"));
        let deployment = d.spec.as_ref().unwrap();
        assert_eq!(deployment.replicas, Some(1));
        assert_eq!(
            deployment
                .strategy
                .as_ref()
                .and_then(|s| s.type_.as_deref()),
            Some("Recreate")
        );
        let c = container(&d);
        assert_eq!(
            c.args.as_deref(),
            Some(&["alerts".to_string(), "--config".into(), CONFIG_PATH.into()][..])
        );
        let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert!(
            env.contains(&ENV_KAFKA_USERNAME) && env.contains(&ENV_KAFKA_PASSWORD),
            "{env:?}"
        );
        assert!(!env.contains(&ENV_POSTGRES_URL));
        let monitor = ch.alerts_pod_monitor.expect("pod monitor");
        assert_eq!(monitor.metadata.name.as_deref(), Some("telemetry-alerts"));
        assert!(
            ch.config_map.data.unwrap()[CONFIG_KEY]
                .contains("transactionalId: eventstream.racing.telemetry.alerts")
        );
        let names: Vec<_> = Children::desired(
            &build(&stream(spec), &config, false).unwrap(),
            &stream(spec),
            &config,
        )
        .into_iter()
        .filter(|c| c.object.is_some())
        .map(|c| format!("{:?}/{}", c.kind, c.name))
        .collect();
        assert!(
            names.contains(&"Deployment/telemetry-alerts".to_string()),
            "{names:?}"
        );
        let without = build(&stream("{}"), &config, false).unwrap();
        assert!(without.alerts.is_none() && without.alerts_pod_monitor.is_none());
    }

    #[test]
    fn no_sink_without_persistence_and_pdb_only_above_one_replica() {
        let ch = build(&stream("bridge: { replicas: 1 }"), &cfg(), false).unwrap();
        assert!(ch.sink.is_none() && ch.sink_pdb.is_none() && ch.bridge_pdb.is_none());
        let ch = build(&stream("bridge: { replicas: 3 }"), &cfg(), false).unwrap();
        let pdb = ch.bridge_pdb.expect("pdb");
        assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn paused_sink_has_zero_replicas() {
        let es = stream(
            "persistence: { postgres: { urlSecretRef: { name: db, key: url }, table: t } }\nsink: { replicas: 3 }",
        );
        let ch = build(&es, &cfg(), true).unwrap();
        assert_eq!(ch.sink.unwrap().spec.unwrap().replicas, Some(0));
        let ch = build(&es, &cfg(), false).unwrap();
        assert_eq!(ch.sink.unwrap().spec.unwrap().replicas, Some(3));
    }

    #[test]
    fn restricted_security_context() {
        let ch = build(&stream("{}"), &cfg(), false).unwrap();
        let c = container(&ch.bridge);
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
    }

    #[test]
    fn sasl_and_tls_credentials_come_from_the_kafka_secret() {
        let es = stream(
            "kafka: { bootstrapServers: 'k:9093', securityProtocol: SASL_SSL, saslMechanism: PLAIN, secretRef: { name: kcreds } }",
        );
        let ch = build(&es, &cfg(), false).unwrap();
        let c = container(&ch.bridge);
        let names: Vec<_> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec![ENV_KAFKA_USERNAME, ENV_KAFKA_PASSWORD]);
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == "/etc/eventstream/kafka")
        );
        assert!(ch.config_map.data.as_ref().unwrap()[CONFIG_KEY].contains(KAFKA_CA_FILE));
    }

    #[test]
    fn names_that_cannot_become_services_are_rejected() {
        let mut es = stream("{}");
        es.metadata.name = Some("a".repeat(60));
        assert!(matches!(
            build(&es, &cfg(), false),
            Err(BuildError::InvalidName { .. })
        ));
        es.metadata.name = Some("with.dots".into());
        let err = build(&es, &cfg(), false).unwrap_err();
        assert_eq!(err.reason(), "InvalidName");
        assert!(err.to_string().contains("with.dots-bridge"), "{err}");
    }

    #[test]
    fn missing_bootstrap_is_a_build_error() {
        let err = build(&stream("{}"), &OperatorConfig::default(), false).unwrap_err();
        assert_eq!(err.reason(), "NoKafkaBootstrap");
    }

    #[test]
    fn endpoints_follow_enabled_features() {
        let e = endpoints(&stream("ingest: { enabled: false }"));
        assert_eq!(
            e.websocket.as_deref(),
            Some("ws://telemetry-bridge.racing.svc:8080/ws")
        );
        assert_eq!(e.ingest, None);
    }

    #[test]
    fn monitors_only_when_discovered() {
        let es =
            stream("persistence: { postgres: { urlSecretRef: { name: db, key: url }, table: t } }");
        let ch = build(&es, &cfg(), false).unwrap();
        assert!(ch.service_monitor.is_none() && ch.pod_monitor.is_none());
        let with = OperatorConfig {
            service_monitor: true,
            pod_monitor: true,
            ..cfg()
        };
        let ch = build(&es, &with, false).unwrap();
        let sm = ch.service_monitor.unwrap();
        assert_eq!(sm.types.as_ref().unwrap().kind, "ServiceMonitor");
        assert_eq!(sm.data["spec"]["endpoints"][0]["port"], "http");
        assert!(ch.pod_monitor.is_some());
    }

    #[test]
    fn monitor_labels_reach_both_monitors_but_never_replace_ours() {
        let es =
            stream("persistence: { postgres: { urlSecretRef: { name: db, key: url }, table: t } }");
        let with = OperatorConfig {
            service_monitor: true,
            pod_monitor: true,
            monitor_labels: BTreeMap::from([
                ("release".to_string(), "kube-prometheus-stack".to_string()),
                ("app.kubernetes.io/name".to_string(), "hijack".to_string()),
            ]),
            ..cfg()
        };
        let ch = build(&es, &with, false).unwrap();
        for monitor in [ch.service_monitor.unwrap(), ch.pod_monitor.unwrap()] {
            let labels = monitor.metadata.labels.unwrap();
            assert_eq!(labels["release"], "kube-prometheus-stack");
            assert_eq!(labels["app.kubernetes.io/name"], "eventstream");
        }
        let bridge_labels = ch.bridge.metadata.labels.unwrap();
        assert!(
            !bridge_labels.contains_key("release"),
            "only monitors get them"
        );
    }
}
