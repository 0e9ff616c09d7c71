//! The pure parts of the kind suite (`tests/kind.rs`, `e2e/kind.sh`): names that stay unique
//! when the suite runs again against a kept cluster ([`RunId`]), the command line of a Kafka CLI
//! tool run by `kubectl exec` beside the broker ([`kafka_tool_args`]), and the image reference
//! `kind.sh` builds, loads and hands to Helm ([`ImageRef`]).
//!
//! They live outside the `kind` feature so their unit tests run in every `cargo test`, on
//! machines where the kind suite itself cannot (no Docker).

use std::fmt;

/// The Kafka pod's image keeps its CLI tools here (`apache/kafka`).
pub const KAFKA_BIN_DIR: &str = "/opt/kafka/bin";

/// The pod-local listener of `e2e/manifests/kafka.yaml`: tools never depend on hairpin traffic
/// through the Service.
pub const KAFKA_LOCAL_BOOTSTRAP: &str = "localhost:9094";

/// JVM options of a Kafka CLI tool run inside the broker's container. Without them the tool's
/// JVM reads the container's `KAFKA_HEAP_OPTS` — the broker's 512 MiB heap — and runs next to
/// the broker under the same memory limit, where the kernel may kill the broker or the tool.
/// A one-shot admin request needs a few MiB of heap; the serial collector and the C1-only JIT
/// keep the JVM's own memory small too.
pub const KAFKA_TOOL_HEAP_OPTS: &str = "-Xms16m -Xmx128m";
/// See [`KAFKA_TOOL_HEAP_OPTS`].
pub const KAFKA_TOOL_JVM_OPTS: &str = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1";

/// `kubectl` arguments that run `tool` (e.g. `kafka-topics.sh`) in the Kafka Deployment of
/// `namespace` against the pod-local listener, with a heap of its own.
pub fn kafka_tool_args(namespace: &str, tool: &str, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = [
        "exec",
        "-n",
        namespace,
        "deploy/kafka",
        "--",
        // `kubectl exec` cannot set environment variables; `env` in the container can.
        "env",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    all.push(format!("KAFKA_HEAP_OPTS={KAFKA_TOOL_HEAP_OPTS}"));
    all.push(format!("KAFKA_JVM_PERFORMANCE_OPTS={KAFKA_TOOL_JVM_OPTS}"));
    all.push(format!("{KAFKA_BIN_DIR}/{tool}"));
    all.push("--bootstrap-server".to_owned());
    all.push(KAFKA_LOCAL_BOOTSTRAP.to_owned());
    all.extend(args.iter().map(|s| (*s).to_owned()));
    all
}

/// One run of the suite. Namespaces of failed tests and the tables in the shared PostgreSQL
/// outlive a run when the cluster is kept (`E2E_KEEP_CLUSTER=1`), so every name a test creates
/// carries the run's start time and process id: a rerun never meets what an earlier run left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunId {
    /// Milliseconds since the Unix epoch when the run started.
    pub started_ms: u64,
    /// The test process.
    pub pid: u32,
}

/// A test name that cannot be part of a Kubernetes or PostgreSQL name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "test name {0:?} must be 1 to {MAX_TEST_NAME} characters of a-z and 0-9 (names built from it \
     become namespaces and table names)"
)]
pub struct BadTestName(pub String);

/// Longest test name: `e2e-` + name + `-` + two base-36 numbers (≤ 9 + 1 + 7 characters for the
/// millisecond clock until the year 5000 and a 32-bit pid) stays within a 63-character DNS label
/// and a 63-byte PostgreSQL identifier.
pub const MAX_TEST_NAME: usize = 40;

impl RunId {
    /// The run of this process (clock read once, at the first call).
    pub fn current() -> Self {
        static RUN: std::sync::OnceLock<RunId> = std::sync::OnceLock::new();
        *RUN.get_or_init(|| {
            let started_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or_default();
            RunId {
                started_ms,
                pid: std::process::id(),
            }
        })
    }

    fn parts(&self, test: &str) -> Result<[String; 3], BadTestName> {
        let ok = !test.is_empty()
            && test.len() <= MAX_TEST_NAME
            && test
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(BadTestName(test.to_owned()));
        }
        Ok([
            test.to_owned(),
            base36(self.started_ms),
            base36(u64::from(self.pid)),
        ])
    }

    /// Namespace of one test: `e2e-<test>-<time>-<pid>`, a DNS label.
    pub fn namespace(&self, test: &str) -> Result<String, BadTestName> {
        Ok(format!("e2e-{}", self.parts(test)?.join("-")))
    }

    /// Table of one test in the shared PostgreSQL: `e2e_<test>_<time>_<pid>`, an unquoted
    /// lower-case identifier (what `persistence.postgres.table` accepts).
    pub fn table(&self, test: &str) -> Result<String, BadTestName> {
        Ok(format!("e2e_{}", self.parts(test)?.join("_")))
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// An image reference, `[registry[:port]/]path[:tag][@digest]`, split the way Docker and
/// containerd read it: the tag is what follows the last `:` only when no `/` comes after it, so
/// `localhost:5000/eventstream` is a repository with a registry port and no tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Everything before the tag and digest, registry included.
    pub repository: String,
    pub tag: Option<String>,
    /// `algorithm:hex`, without the `@`.
    pub digest: Option<String>,
}

/// Why a string is not an image reference, or not one the kind suite can use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageRefError {
    #[error("image reference {0:?} is empty or has no repository")]
    NoRepository(String),
    #[error(
        "image reference {reference:?}: repository {repository:?} is not [registry[:port]/]path with a lower-case path"
    )]
    BadRepository {
        reference: String,
        repository: String,
    },
    #[error(
        "image reference {reference:?}: tag {tag:?} is not 1 to 128 of [A-Za-z0-9_.-], starting with [A-Za-z0-9_]"
    )]
    BadTag { reference: String, tag: String },
    #[error("image reference {reference:?}: digest {digest:?} is not algorithm:hex")]
    BadDigest { reference: String, digest: String },
    #[error(
        "image reference {0:?} names a digest: the kind suite builds and `kind load`s an image by \
         name, so give repository[:tag]"
    )]
    DigestForKind(String),
}

impl ImageRef {
    /// Splits and checks `reference`.
    pub fn parse(reference: &str) -> Result<Self, ImageRefError> {
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (reference, None),
        };
        let last_slash = name.rfind('/');
        let (repository, tag) = match name.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&name[..colon], Some(&name[colon + 1..]))
            }
            _ => (name, None),
        };
        if repository.is_empty() {
            return Err(ImageRefError::NoRepository(reference.to_owned()));
        }
        if !valid_repository(repository) {
            return Err(ImageRefError::BadRepository {
                reference: reference.to_owned(),
                repository: repository.to_owned(),
            });
        }
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(ImageRefError::BadTag {
                reference: reference.to_owned(),
                tag: tag.to_owned(),
            });
        }
        if let Some(digest) = digest
            && !valid_digest(digest)
        {
            return Err(ImageRefError::BadDigest {
                reference: reference.to_owned(),
                digest: digest.to_owned(),
            });
        }
        Ok(Self {
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    /// The image as the kind suite builds, loads and installs it. An untagged reference means
    /// `:latest` to Docker, and Kubernetes pulls `:latest` images on every start
    /// (`imagePullPolicy: Always` where none is set, as for the bridge and sink pods): the pull
    /// of an image that only exists inside the kind node fails. Such an image is therefore used
    /// under the tag `e2e` (see [`KindImage::retagged`]). A digest cannot be loaded by name.
    pub fn for_kind(&self, original: &str) -> Result<KindImage, ImageRefError> {
        if self.digest.is_some() {
            return Err(ImageRefError::DigestForKind(original.to_owned()));
        }
        let (tag, retagged) = match self.tag.as_deref() {
            None | Some("latest") => ("e2e".to_owned(), true),
            Some(tag) => (tag.to_owned(), false),
        };
        Ok(KindImage {
            repository: self.repository.clone(),
            tag,
            retagged,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// What `kind.sh` builds, loads and passes to Helm as `image.repository` and `image.tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindImage {
    pub repository: String,
    pub tag: String,
    /// The given reference had no tag or `latest`: `kind.sh` builds (or `docker tag`s) the image
    /// as `repository:e2e` and uses that.
    pub retagged: bool,
}

impl KindImage {
    /// `repository:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// `key=value` lines for `kind.sh` (no value contains whitespace, quotes or `=`).
    pub fn shell_lines(&self) -> String {
        format!(
            "repository={}\ntag={}\nreference={}\nretagged={}\n",
            self.repository,
            self.tag,
            self.reference(),
            u8::from(self.retagged)
        )
    }
}

fn alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A path component: lower-case alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    if !alnum_lower(*first) || !alnum_lower(*last) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum_lower(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// A registry host with an optional port: a DNS name, `localhost`, an IPv4 address or a
/// bracketed IPv6 address.
fn valid_registry(registry: &str) -> bool {
    if let Some(rest) = registry.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        let v6_ok = !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        return v6_ok && (after.is_empty() || after.strip_prefix(':').is_some_and(valid_port));
    }
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    port.is_none_or(valid_port)
        && !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn valid_repository(repository: &str) -> bool {
    if repository.len() > 255 {
        return false;
    }
    let mut components: Vec<&str> = repository.split('/').collect();
    // Docker's rule: the first component is a registry when it has a `.` or a `:`, is
    // `localhost`, or has an upper-case letter; otherwise the image is on Docker Hub.
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':', '['])
            || first == "localhost"
            || first.bytes().any(|b| b.is_ascii_uppercase())
        {
            if !valid_registry(first) {
                return false;
            }
            components.remove(0);
        }
    }
    !components.is_empty() && components.iter().all(|c| valid_path_component(c))
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    !algorithm.is_empty()
        && algorithm
            .bytes()
            .all(|b| alnum_lower(b) || matches!(b, b'+' | b'.' | b'_' | b'-'))
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, Option<String>, Option<String>) {
        let r = ImageRef::parse(s).unwrap();
        assert_eq!(r.to_string(), s, "round trip");
        (r.repository, r.tag, r.digest)
    }

    fn own(s: &str) -> String {
        s.to_owned()
    }

    #[test]
    fn image_references_split_as_docker_reads_them() {
        assert_eq!(
            parts("ghcr.io/eventstream-dev/eventstream:e2e"),
            (
                own("ghcr.io/eventstream-dev/eventstream"),
                Some(own("e2e")),
                None
            )
        );
        // Untagged: the whole reference is the repository (the old `${IMAGE%:*}` split gave
        // repository = tag = "eventstream").
        assert_eq!(parts("eventstream"), (own("eventstream"), None, None));
        // A registry with a port and no tag: the `:` is the port's (the old split gave the
        // repository "localhost" and the tag "5000/eventstream").
        assert_eq!(
            parts("localhost:5000/eventstream"),
            (own("localhost:5000/eventstream"), None, None)
        );
        assert_eq!(
            parts("localhost:5000/team/eventstream:1.2.3-rc.1"),
            (
                own("localhost:5000/team/eventstream"),
                Some(own("1.2.3-rc.1")),
                None
            )
        );
        assert_eq!(
            parts("[::1]:5000/eventstream:e2e"),
            (own("[::1]:5000/eventstream"), Some(own("e2e")), None)
        );
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            parts(&format!("registry.example.com:443/es@{digest}")),
            (
                own("registry.example.com:443/es"),
                None,
                Some(digest.clone())
            )
        );
        assert_eq!(
            parts(&format!("es:1@{digest}")),
            (own("es"), Some(own("1")), Some(digest))
        );
    }

    #[test]
    fn malformed_image_references_are_refused_naming_the_part() {
        assert!(matches!(
            ImageRef::parse(""),
            Err(ImageRefError::NoRepository(_))
        ));
        assert!(matches!(
            ImageRef::parse(":e2e"),
            Err(ImageRefError::NoRepository(_))
        ));
        assert!(matches!(
            ImageRef::parse("ghcr.io/EventStream:e2e"),
            Err(ImageRefError::BadRepository { .. })
        ));
        assert!(matches!(
            ImageRef::parse("eventstream:"),
            Err(ImageRefError::BadTag { .. })
        ));
        assert!(matches!(
            ImageRef::parse("eventstream:-x"),
            Err(ImageRefError::BadTag { .. })
        ));
        assert!(matches!(
            ImageRef::parse("localhost:port/eventstream"),
            Err(ImageRefError::BadRepository { .. })
        ));
        assert!(matches!(
            ImageRef::parse("eventstream@sha256:zz"),
            Err(ImageRefError::BadDigest { .. })
        ));
        assert!(matches!(
            ImageRef::parse("event stream:e2e"),
            Err(ImageRefError::BadRepository { .. })
        ));
    }

    #[test]
    fn kind_never_installs_an_image_kubernetes_would_pull() {
        let kind = |s: &str| ImageRef::parse(s).unwrap().for_kind(s);
        let tagged = kind("localhost:5000/eventstream:e2e").unwrap();
        assert_eq!(tagged.reference(), "localhost:5000/eventstream:e2e");
        assert!(!tagged.retagged);
        for untagged in [
            "localhost:5000/eventstream",
            "eventstream:latest",
            "eventstream",
        ] {
            let img = kind(untagged).unwrap();
            assert_eq!(img.tag, "e2e", "{untagged}");
            assert!(img.retagged, "{untagged}");
        }
        let digest = format!("es@sha256:{}", "0".repeat(64));
        assert!(matches!(
            kind(&digest),
            Err(ImageRefError::DigestForKind(_))
        ));
        assert_eq!(
            kind("localhost:5000/es").unwrap().shell_lines(),
            "repository=localhost:5000/es\ntag=e2e\nreference=localhost:5000/es:e2e\nretagged=1\n"
        );
    }

    #[test]
    fn names_of_a_rerun_differ_from_the_kept_ones() {
        let first = RunId {
            started_ms: 1_760_000_000_000,
            pid: 4242,
        };
        // The same pid again (a container's test process often has the same one), later.
        let rerun = RunId {
            started_ms: first.started_ms + 1,
            ..first
        };
        assert_ne!(first.table("ready").unwrap(), rerun.table("ready").unwrap());
        assert_ne!(
            first.namespace("ready").unwrap(),
            rerun.namespace("ready").unwrap()
        );
        // Different tests of one run never share a name.
        assert_ne!(first.table("ready").unwrap(), first.table("reset").unwrap());
        assert_eq!(first.namespace("ready").unwrap(), "e2e-ready-mgj6k3cw-39u");
    }

    #[test]
    fn names_fit_kubernetes_and_postgres_limits() {
        let worst = RunId {
            started_ms: 99_999_999_999_999, // year 5138
            pid: u32::MAX,
        };
        let longest = "a".repeat(MAX_TEST_NAME);
        let ns = worst.namespace(&longest).unwrap();
        assert!(ns.len() <= 63, "{ns} is a DNS label");
        let table = worst.table(&longest).unwrap();
        assert!(table.len() <= 63, "{table} fits NAMEDATALEN");
        assert!(
            table
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{table} needs no quoting"
        );
        for bad in [
            "",
            "Ready",
            "two-words",
            "x_y",
            &"a".repeat(MAX_TEST_NAME + 1),
        ] {
            assert_eq!(worst.table(bad), Err(BadTestName(bad.to_owned())));
        }
    }

    /// The tool's JVM gets its own small heap and fits next to the broker's under the
    /// container's memory limit of `e2e/manifests/kafka.yaml`.
    #[test]
    fn kafka_tools_get_a_small_heap_that_fits_beside_the_broker() {
        let args = kafka_tool_args("kafka", "kafka-topics.sh", &["--list"]);
        let tool = args
            .iter()
            .position(|a| a == "/opt/kafka/bin/kafka-topics.sh")
            .unwrap();
        let heap = args
            .iter()
            .position(|a| a.starts_with("KAFKA_HEAP_OPTS="))
            .expect("the tool's heap is set, not inherited from the broker's environment");
        let env = args.iter().position(|a| a == "env").unwrap();
        assert!(env < heap && heap < tool, "{args:?}");
        assert_eq!(
            &args[tool + 1..],
            ["--bootstrap-server", "localhost:9094", "--list"]
        );

        let manifest = std::fs::read_to_string(
            crate::binary::workspace_root().join("e2e/manifests/kafka.yaml"),
        )
        .unwrap();
        let deployment = manifest
            .split("\n---\n")
            .map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).unwrap())
            .find(|d| d["kind"] == "Deployment")
            .unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let broker_opts = container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "KAFKA_HEAP_OPTS")
            .and_then(|e| e["value"].as_str())
            .unwrap();
        let limit = mebibytes(container["resources"]["limits"]["memory"].as_str().unwrap());
        let broker = max_heap_mib(broker_opts);
        let tool_heap = max_heap_mib(KAFKA_TOOL_HEAP_OPTS);
        assert!(
            tool_heap * 4 <= broker,
            "tool heap {tool_heap} MiB is small"
        );
        // Room for what each JVM holds outside its heap (metaspace, code cache, threads,
        // buffers): 256 MiB for the broker, 128 MiB for the tool.
        assert!(
            broker + 256 + tool_heap + 128 <= limit,
            "broker {broker} MiB + tool {tool_heap} MiB heap and their JVMs fit in {limit} MiB"
        );
    }

    fn max_heap_mib(opts: &str) -> u64 {
        let x = opts
            .split_whitespace()
            .find_map(|o| o.strip_prefix("-Xmx"))
            .unwrap();
        let (n, unit) = x.split_at(x.len() - 1);
        let n: u64 = n.parse().unwrap();
        match unit {
            "m" | "M" => n,
            "g" | "G" => n * 1024,
            other => panic!("unit {other}"),
        }
    }

    fn mebibytes(q: &str) -> u64 {
        if let Some(n) = q.strip_suffix("Gi") {
            n.parse::<u64>().unwrap() * 1024
        } else {
            q.strip_suffix("Mi").unwrap().parse().unwrap()
        }
    }
}
