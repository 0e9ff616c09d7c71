//! The tansu Kafka-compatible broker as a child process.
//!
//! [`TansuBroker::start`] runs
//!
//! ```text
//! tansu broker --cluster-id eventstream-test \
//!     --listener-url tcp://127.0.0.1:PORT \
//!     --advertised-listener-url tcp://127.0.0.1:PORT \
//!     --storage-engine memory://tansu/
//! ```
//!
//! on a free port, with stdout and stderr in a log file of its own temp dir,
//! and returns once the port accepts TCP and a librdkafka metadata request
//! succeeds. Dropping the value kills (SIGKILL) and reaps the process and
//! removes the temp dir.
//!
//! Storage is in memory, so a killed broker cannot be restarted with its
//! data: [`TansuBroker::kill`] is for outage tests (clients see the broker
//! vanish), and a test that needs a broker again starts a new one.
//!
//! The binary is `$TANSU_BIN`, else `$HOME/.cache/eventstream/tansu-0.6.0/bin/tansu`
//! (where `./scripts/test` installs it), else `tansu` on `PATH`.
//!
//! Quirk: tansu answers every Fetch only after sleeping `fetch.wait.max.ms`
//! (half of it when ≥ 250 ms), so consumers must set a small
//! `fetch.wait.max.ms`; [`TansuBroker::consumer_config`] sets 5 ms.
//!
//! Quirk: tansu does not auto-create topics. Producing to an unknown topic
//! waits until `message.timeout.ms` and fails with `MessageTimedOut`, and
//! metadata answers `UNKNOWN_TOPIC_OR_PART`: create topics first with
//! rdkafka's `AdminClient::create_topics` (which tansu supports, including
//! `TopicAlreadyExists` on a second create).
//!
//! [`start`](TansuBroker::start) blocks (at most about a minute, normally
//! well under a second): call it before spawning the code under test.
//!
//! [`TansuBroker::start_with_scram_user`] runs a broker that requires SASL
//! SCRAM-SHA-512 (`--authentication`) with one user. tansu 0.6 offers only
//! SCRAM and OAUTHBEARER (its `rsasl` is built without PLAIN), and only its
//! SQL storage engines keep SCRAM credentials, so this broker stores its data
//! in a SQLite file (`--storage-engine sqlite://…`, the `libsql` feature of
//! the binary `./scripts/test` installs): it is started once without
//! authentication, the user is created with `tansu user create` (an
//! AlterUserScramCredentials request), and it is started again with
//! `--authentication` on the same file and port.
//!
//! Quirk: tansu 0.6's SQLite engine serves storage requests from one task
//! that ends for good when a request's client went away before its answer
//! (`ChannelRequestService` returns `UnableToSend`); from then on every
//! Produce fails with `SendError`. A SQLite broker is therefore only for
//! tests that never drop a client in the middle of a request (no client
//! SIGKILLs, no client-side request timeouts): the fault soak, which kills
//! bridges, runs on the in-memory engine and cannot restart its broker.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::HarnessError;
use crate::TlsFront;
use crate::process::{describe, find_in_path, is_executable, log_tail};

/// The tansu version the project pins.
pub const TANSU_VERSION: &str = "0.6.0";

/// The cluster id passed to tansu.
pub const CLUSTER_ID: &str = "eventstream-test";

const START_ATTEMPTS: u32 = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_TAIL_LINES: usize = 40;

/// Environment variables tansu reads (as defaults of its flags, or for
/// optional features) that must not leak from the test's environment.
const TANSU_ENV: &[&str] = &[
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "DATA_LAKE",
    "ICEBERG_CATALOG",
    "ICEBERG_NAMESPACE",
    "ICEBERG_WAREHOUSE",
    "DELTA_DATABASE",
];

/// The features `./scripts/test` builds tansu with: `dynostore` for the
/// in-memory engine, `libsql` for the SQLite engine that keeps SCRAM users.
pub const TANSU_FEATURES: &str = "dynostore,libsql";

/// Where `./scripts/test` installs tansu below `$EVENTSTREAM_CACHE`
/// (default `$HOME/.cache/eventstream`): named by version and features, so a
/// binary built with other features is never mistaken for this one.
pub fn cache_dir_name() -> String {
    format!("tansu-{TANSU_VERSION}-{}", TANSU_FEATURES.replace(',', "-"))
}

/// How to start a broker beyond the defaults ([`TansuBroker::start_with`]).
#[derive(Debug, Default)]
pub struct TansuOptions {
    /// Require SASL SCRAM-SHA-512 and create this user.
    pub scram_user: Option<ScramUser>,
    /// Serve clients through this TLS front only: the broker advertises the
    /// front's address, so every connection after the bootstrap one goes
    /// through it too.
    pub tls_front: Option<TlsFront>,
}

/// A SCRAM-SHA-512 user the broker requires (see the module docs).
#[derive(Clone, Debug)]
pub struct ScramUser {
    pub username: String,
    pub password: String,
}

/// A running tansu broker; see the [module docs](self).
#[derive(Debug)]
pub struct TansuBroker {
    child: Option<Child>,
    port: u16,
    log_path: PathBuf,
    command_line: String,
    /// `memory://tansu/`, or a SQLite file in `dir` for a broker with users.
    storage: String,
    /// Set once the broker requires SASL: every client config carries it.
    sasl: Option<ScramUser>,
    /// Clients reach the broker through this TLS front only (it advertises the front).
    front: Option<TlsFront>,
    /// Removed when dropped, after `Drop::drop` has killed the broker.
    dir: tempfile::TempDir,
}

impl TansuBroker {
    /// Finds the tansu binary: `$TANSU_BIN`, else
    /// `$EVENTSTREAM_CACHE/tansu-0.6.0-dynostore-libsql/bin/tansu` (the cache
    /// defaulting to `$HOME/.cache/eventstream`), else `tansu` on `PATH`.
    pub fn binary() -> Result<PathBuf, HarnessError> {
        let dir = cache_dir_name();
        let hint = format!(
            "run `./scripts/test` (which installs it) or \
             `cargo install tansu --version {TANSU_VERSION} --features {TANSU_FEATURES} --locked \
             --root $HOME/.cache/eventstream/{dir}`"
        );
        if let Some(explicit) = std::env::var_os("TANSU_BIN") {
            let path = PathBuf::from(explicit);
            return if is_executable(&path) {
                Ok(path)
            } else {
                Err(HarnessError::MissingBinary {
                    binary: "tansu".to_owned(),
                    searched: format!("$TANSU_BIN={}", path.display()),
                    hint,
                })
            };
        }
        let cache = std::env::var_os("EVENTSTREAM_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/eventstream"))
            });
        let cached = cache.map(|cache| cache.join(&dir).join("bin/tansu"));
        if let Some(cached) = cached.as_ref().filter(|p| is_executable(p)) {
            return Ok(cached.clone());
        }
        find_in_path("tansu").ok_or_else(|| HarnessError::MissingBinary {
            binary: "tansu".to_owned(),
            searched: format!(
                "$TANSU_BIN (unset), {}, PATH",
                cached
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "$HOME/.cache/eventstream/... ($HOME unset)".to_owned())
            ),
            hint,
        })
    }

    /// Starts a broker on a free port and waits until it serves metadata.
    /// Retries on a fresh port when the chosen one was taken meanwhile.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(TansuOptions::default())
    }

    /// Starts a broker that requires SASL SCRAM-SHA-512 and knows one user
    /// (see the module docs). [`client_config`](Self::client_config) and the
    /// configs built on it authenticate as that user; a client without SASL
    /// or with another password is refused.
    pub fn start_with_scram_user(user: ScramUser) -> Result<Self, HarnessError> {
        Self::start_with(TansuOptions {
            scram_user: Some(user),
            ..TansuOptions::default()
        })
    }

    /// Starts a broker as `options` say: with a SCRAM user (SQLite storage,
    /// see the module docs) and/or reached only through a TLS front.
    pub fn start_with(options: TansuOptions) -> Result<Self, HarnessError> {
        let TansuOptions {
            scram_user,
            tls_front,
        } = options;
        // tansu reads the file's path relative to its working directory, the broker's temp dir.
        let storage = if scram_user.is_some() {
            "sqlite://tansu.db"
        } else {
            "memory://tansu/"
        };
        let mut broker = Self::start_on(storage, tls_front)?;
        let Some(user) = scram_user else {
            return Ok(broker);
        };
        let binary = Self::binary()?;
        let mut create = Command::new(&binary);
        create
            .arg("user")
            .arg("create")
            .args(["--broker", &format!("tcp://127.0.0.1:{}", broker.port)])
            .args(["--mechanism", "scram512"])
            .arg(&user.username)
            .arg(&user.password)
            .env("RUST_LOG", "warn");
        let what = describe(&create);
        let out = create
            .output()
            .map_err(|e| HarnessError::io(format!("running `{what}`"), e))?;
        if !out.status.success() {
            return Err(HarnessError::StartFailed {
                server: "tansu",
                attempts: 1,
                reason: format!(
                    "`{what}` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                log: broker.log_path.clone(),
                log_tail: broker.log_tail(LOG_TAIL_LINES),
            });
        }
        // Again on the same port and file, now requiring SASL.
        broker.reap();
        broker.sasl = Some(user);
        broker.spawn(&binary)?;
        if let Err(Failure::PortClash(reason) | Failure::Fatal(reason)) = broker.wait_ready() {
            return Err(HarnessError::StartFailed {
                server: "tansu",
                attempts: 1,
                reason: format!("{reason} (command: {})", broker.command_line),
                log: broker.log_path.clone(),
                log_tail: broker.log_tail(LOG_TAIL_LINES),
            });
        }
        Ok(broker)
    }

    /// Starts on a free port with the storage engine URL `storage`.
    fn start_on(storage: &str, front: Option<TlsFront>) -> Result<Self, HarnessError> {
        let binary = Self::binary()?;
        let dir = tempfile::Builder::new()
            .prefix("eventstream-tansu-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the tansu temp dir", e))?;
        let mut broker = TansuBroker {
            child: None,
            port: 0,
            log_path: dir.path().join("tansu.log"),
            command_line: String::new(),
            storage: storage.to_owned(),
            sasl: None,
            front,
            dir,
        };

        let mut last_reason = String::new();
        for attempt in 1..=START_ATTEMPTS {
            broker.port = crate::free_port()?;
            broker.spawn(&binary)?;
            match broker.wait_ready() {
                Ok(()) => return Ok(broker),
                Err(Failure::PortClash(reason)) if attempt < START_ATTEMPTS => {
                    last_reason = reason;
                    broker.reap();
                }
                Err(Failure::PortClash(reason) | Failure::Fatal(reason)) => {
                    last_reason = reason;
                    break;
                }
            }
        }
        let err = HarnessError::StartFailed {
            server: "tansu",
            attempts: START_ATTEMPTS,
            reason: format!("{last_reason} (command: {})", broker.command_line),
            log: broker.log_path.clone(),
            log_tail: broker.log_tail(LOG_TAIL_LINES),
        };
        broker.reap();
        Err(err)
    }

    fn spawn(&mut self, binary: &Path) -> Result<(), HarnessError> {
        let log = File::create(&self.log_path)
            .map_err(|e| HarnessError::io(format!("creating {}", self.log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| HarnessError::io("duplicating the tansu log handle", e))?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = match &self.front {
            Some(front) => {
                front.forward_to(self.port);
                format!("tcp://{}", front.bootstrap())
            }
            None => url.clone(),
        };
        let mut cmd = Command::new(binary);
        cmd.arg("broker")
            .args(["--cluster-id", CLUSTER_ID])
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", &self.storage])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if self.sasl.is_some() {
            cmd.arg("--authentication");
        }
        for var in TANSU_ENV {
            cmd.env_remove(var);
        }
        // tansu logs through tracing's env filter; `TANSU_LOG` overrides.
        let filter = std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".to_owned());
        cmd.env("RUST_LOG", filter).env("NO_COLOR", "1");
        self.command_line = describe(&cmd);
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawning `{}`", self.command_line), e))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), Failure> {
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut metadata_problem = String::from("port not open yet");
        while started.elapsed() < READY_TIMEOUT {
            self.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok() {
                match self.fetch_metadata(Duration::from_secs(3)) {
                    Ok(()) => {
                        // A clash with another server on the same port would
                        // answer for us: make sure ours is the one alive.
                        self.check_alive()?;
                        return Ok(());
                    }
                    Err(problem) => metadata_problem = problem,
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Failure::Fatal(format!(
            "not ready after {READY_TIMEOUT:?}: {metadata_problem}"
        )))
    }

    fn check_alive(&mut self) -> Result<(), Failure> {
        let Some(child) = self.child.as_mut() else {
            return Err(Failure::Fatal("no process".to_owned()));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                let reason = format!("tansu exited with {status}");
                if log.contains("Address already in use") || log.contains("AddrInUse") {
                    Err(Failure::PortClash(reason))
                } else {
                    Err(Failure::Fatal(reason))
                }
            }
            Err(e) => Err(Failure::Fatal(format!("waiting on tansu: {e}"))),
        }
    }

    fn fetch_metadata(&self, timeout: Duration) -> Result<(), String> {
        let consumer: BaseConsumer = self
            .client_config()
            .create()
            .map_err(|e| format!("creating a metadata client: {e}"))?;
        let metadata = consumer
            .fetch_metadata(None, timeout)
            .map_err(|e| format!("metadata request failed: {e}"))?;
        if metadata.brokers().is_empty() {
            return Err("metadata lists no broker".to_owned());
        }
        Ok(())
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`; behind a TLS front, the
    /// front's `localhost:PORT`.
    pub fn bootstrap(&self) -> String {
        match &self.front {
            Some(front) => front.bootstrap(),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// The TLS front clients go through, if any.
    pub fn tls_front(&self) -> Option<&TlsFront> {
        self.front.as_ref()
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The exact command line the broker was started with.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// The broker's stdout+stderr log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the broker log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// `bootstrap.servers` only (admin clients, custom configs), plus the
    /// SASL settings of a broker with a user.
    pub fn client_config(&self) -> ClientConfig {
        self.with_security(crate::kafka::client_config(&self.bootstrap()))
    }

    /// See [`kafka::producer_config`](crate::kafka::producer_config).
    pub fn producer_config(&self) -> ClientConfig {
        self.with_security(crate::kafka::producer_config(&self.bootstrap()))
    }

    /// Consumer settings for this broker, with `fetch.wait.max.ms=5` (see
    /// the module docs); see [`kafka::consumer_config`](crate::kafka::consumer_config).
    pub fn consumer_config(&self, group: Option<&str>) -> ClientConfig {
        self.with_security(crate::kafka::consumer_config(&self.bootstrap(), group))
    }

    /// The user a broker started with [`start_with_scram_user`](Self::start_with_scram_user) requires.
    pub fn scram_user(&self) -> Option<&ScramUser> {
        self.sasl.as_ref()
    }

    fn with_security(&self, mut config: ClientConfig) -> ClientConfig {
        let protocol = match (&self.sasl, &self.front) {
            (None, None) => return config,
            (Some(_), None) => "SASL_PLAINTEXT",
            (None, Some(_)) => "SSL",
            (Some(_), Some(_)) => "SASL_SSL",
        };
        config.set("security.protocol", protocol);
        if let Some(user) = &self.sasl {
            config
                .set("sasl.mechanism", "SCRAM-SHA-512")
                .set("sasl.username", &user.username)
                .set("sasl.password", &user.password);
        }
        if let Some(front) = &self.front {
            config.set("ssl.ca.location", front.ca_file().display().to_string());
        }
        config
    }

    /// Whether the broker process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the broker with SIGKILL and reaps it (outage tests). Its
    /// in-memory data is gone; there is no restart.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        child
            .kill()
            .map_err(|e| HarnessError::io("killing tansu", e))?;
        child
            .wait()
            .map_err(|e| HarnessError::io("reaping tansu", e))?;
        Ok(())
    }

    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        self.reap();
    }
}

enum Failure {
    /// The port was taken between probe and bind: try another.
    PortClash(String),
    Fatal(String),
}
