//! A throw-away PostgreSQL 15 cluster per test.
//!
//! [`TestPostgres::start`] runs `initdb` into a fresh temp dir, then starts
//! the server with `pg_ctl` on `127.0.0.1` and a free port (its Unix socket
//! also lives in the temp dir, so parallel tests never share anything).
//! Dropping the value stops the server (`pg_ctl stop -m immediate`) and
//! removes the directory. [`TestPostgres::crash`] does the same immediate
//! stop mid-test (a database crash) and keeps the data for a restart.
//!
//! Binaries come from `$PG_BIN_DIR`, else `/usr/lib/postgresql/15/bin`
//! (Debian package `postgresql-15`). `initdb` refuses to run as root, so when
//! the effective uid is 0 (sessions and CI), the temp dir is given to the
//! `postgres` user and `initdb` / `pg_ctl` run through
//! `runuser -u postgres --`.
//!
//! By default the server runs with `fsync=off`, `synchronous_commit=off` and
//! `full_page_writes=off`: data survives [`TestPostgres::stop`] +
//! [`TestPostgres::start_again`] (a clean or fast shutdown) but not a machine
//! crash, which tests do not need. [`TestPostgresBuilder::durable`] turns
//! them back on.
//!
//! [`TestPostgresBuilder::tls`] serves TLS (`ssl=on`) with a certificate from a fresh
//! [`TestCa`] (rcgen); [`TestPostgresBuilder::tls_only`] refuses connections without TLS
//! (`hostssl` in `pg_hba.conf`); [`TestPostgresBuilder::tls_client_certs`] also requires a client
//! certificate from that CA (`cert` authentication).
//!
//! ```no_run
//! # fn main() -> Result<(), eventstream_testkit::HarnessError> {
//! let mut pg = eventstream_testkit::TestPostgres::start()?;
//! pg.create_database("events")?;
//! let url = pg.url_for("events"); // postgres://postgres@127.0.0.1:PORT/events
//! pg.stop()?; // outage
//! pg.start_again()?; // same data, same port
//! # Ok(()) }
//! ```
//!
//! ```no_run
//! # fn main() -> Result<(), eventstream_testkit::HarnessError> {
//! let pg = eventstream_testkit::TestPostgres::builder().tls_only(true).start()?;
//! let ca = pg.ca_file().expect("a TLS server has a CA file");
//! let url = format!("{}?sslmode=verify-full&sslrootcert={}", pg.url(), ca.display());
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::HarnessError;
use crate::process::{describe, is_executable, log_tail, run, shell_quote};

/// Default location of the PostgreSQL 15 binaries on Debian/Ubuntu.
pub const DEFAULT_PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// How many fresh ports [`TestPostgres::start`] tries before giving up.
const DEFAULT_START_ATTEMPTS: u32 = 5;

/// Lines of server log included in errors.
const LOG_TAIL_LINES: usize = 40;

/// The superuser created by `initdb -U postgres`.
pub const SUPERUSER: &str = "postgres";

/// Builder for [`TestPostgres`]; get one from [`TestPostgres::builder`].
#[derive(Debug, Clone)]
pub struct TestPostgresBuilder {
    durable: bool,
    bin_dir: Option<PathBuf>,
    settings: Vec<(String, String)>,
    start_attempts: u32,
    tls: TlsLevel,
}

/// How much TLS the server insists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TlsLevel {
    Off,
    On,
    Only,
    ClientCerts,
}

impl Default for TestPostgresBuilder {
    fn default() -> Self {
        Self {
            durable: false,
            bin_dir: None,
            settings: Vec::new(),
            start_attempts: DEFAULT_START_ATTEMPTS,
            tls: TlsLevel::Off,
        }
    }
}

impl TestPostgresBuilder {
    /// `true` keeps `fsync`, `synchronous_commit` and `full_page_writes` at
    /// PostgreSQL's defaults (on). Default `false`: all three off, which is
    /// much faster and enough for tests.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Directory holding `initdb`, `pg_ctl` and `postgres`. Default:
    /// `$PG_BIN_DIR`, else [`DEFAULT_PG_BIN_DIR`].
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// An extra server setting, passed as `-c name=value` (e.g.
    /// `("wal_level", "logical")`, `("max_connections", "20")`).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// How many free ports to try when the server fails to bind (another
    /// test took the port between probe and bind). Default 5, minimum 1.
    pub fn start_attempts(mut self, attempts: u32) -> Self {
        self.start_attempts = attempts.max(1);
        self
    }

    /// `true`: serve TLS (`ssl=on`) with a fresh [`TestCa`] and a server certificate for
    /// `localhost` and `127.0.0.1` (`server.crt`, and `server.key` with mode 0600, in the data
    /// dir); connections without TLS are still accepted. The CA is [`TestPostgres::tls_ca`], its
    /// certificate the file [`TestPostgres::ca_file`].
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = if on {
            self.tls.max(TlsLevel::On)
        } else {
            TlsLevel::Off
        };
        self
    }

    /// `true`: [`tls`](Self::tls), and TCP connections without TLS are refused (every `host`
    /// line of `pg_hba.conf` becomes `hostssl`). `psql` (and so [`TestPostgres::psql`]) connects
    /// with TLS by default.
    pub fn tls_only(mut self, on: bool) -> Self {
        self.tls = if on {
            self.tls.max(TlsLevel::Only)
        } else {
            self.tls.min(TlsLevel::On)
        };
        self
    }

    /// `true`: [`tls_only`](Self::tls_only), and TCP logins need a client certificate issued by
    /// the CA whose common name is the user (`cert` authentication, `ssl_ca_file`). A certificate
    /// for the superuser is written beside the CA ([`TestPostgres::client_cert_files`]);
    /// [`TestPostgres::psql`] uses it.
    pub fn tls_client_certs(mut self, on: bool) -> Self {
        self.tls = if on {
            TlsLevel::ClientCerts
        } else {
            self.tls.min(TlsLevel::Only)
        };
        self
    }

    /// Runs `initdb` and starts the server.
    pub fn start(self) -> Result<TestPostgres, HarnessError> {
        TestPostgres::start_with(self)
    }
}

/// A running (or deliberately stopped) private PostgreSQL cluster.
///
/// See the [module docs](self).
#[derive(Debug)]
pub struct TestPostgres {
    /// Removed when dropped, after `Drop::drop` has stopped the server.
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    log_path: PathBuf,
    bin_dir: PathBuf,
    as_postgres_user: bool,
    port: u16,
    options: String,
    running: bool,
    tls: Option<TestCa>,
    client_certs: bool,
}

impl TestPostgres {
    /// A builder with the defaults (`fsync=off`, binaries from `$PG_BIN_DIR`
    /// or [`DEFAULT_PG_BIN_DIR`]).
    pub fn builder() -> TestPostgresBuilder {
        TestPostgresBuilder::default()
    }

    /// Starts a cluster with the default settings; see
    /// [`TestPostgresBuilder::start`].
    pub fn start() -> Result<Self, HarnessError> {
        Self::builder().start()
    }

    fn start_with(builder: TestPostgresBuilder) -> Result<Self, HarnessError> {
        let bin_dir = builder
            .bin_dir
            .or_else(|| std::env::var_os("PG_BIN_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN_DIR));
        for binary in ["initdb", "pg_ctl", "postgres"] {
            let path = bin_dir.join(binary);
            if !is_executable(&path) {
                return Err(HarnessError::MissingBinary {
                    binary: binary.to_owned(),
                    searched: path.display().to_string(),
                    hint: "install the Debian package `postgresql-15` \
                           (apt-get install postgresql-15) or set PG_BIN_DIR \
                           to the directory holding initdb, pg_ctl and postgres"
                        .to_owned(),
                });
            }
        }

        let as_postgres_user = effective_uid_is_root()?;
        let dir = make_temp_dir(as_postgres_user)?;
        if as_postgres_user {
            run(
                Command::new("chown").arg(SUPERUSER).arg(dir.path()),
                "giving the PostgreSQL temp dir to the `postgres` user (initdb refuses root)",
            )?;
        }
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("postgres.log");

        let mut pg = TestPostgres {
            data_dir,
            log_path,
            bin_dir,
            as_postgres_user,
            port: 0,
            options: String::new(),
            running: false,
            tls: None,
            client_certs: false,
            dir,
        };

        let mut initdb = pg.pg_command("initdb");
        initdb
            .arg("-D")
            .arg(&pg.data_dir)
            .args(["-A", "trust", "-U", SUPERUSER, "--no-sync"])
            .args(["--encoding=UTF8", "--locale=C"]);
        run(&mut initdb, "initializing a PostgreSQL data dir")?;
        let mut settings = builder.settings.clone();
        if builder.tls > TlsLevel::Off {
            pg.set_up_tls(builder.tls)?;
            settings.insert(0, ("ssl".to_owned(), "on".to_owned()));
            if builder.tls == TlsLevel::ClientCerts {
                settings.insert(1, ("ssl_ca_file".to_owned(), "root.crt".to_owned()));
            }
        }

        let mut last_err = None;
        for _ in 0..builder.start_attempts {
            pg.port = crate::free_port()?;
            pg.options = server_options(pg.port, pg.dir.path(), builder.durable, &settings);
            // pg_ctl appends to the log: only this attempt's part counts.
            let log_start = std::fs::metadata(&pg.log_path).map_or(0, |m| m.len());
            match pg.pg_ctl_start() {
                Ok(()) => {
                    pg.running = true;
                    return Ok(pg);
                }
                Err(reason) => {
                    last_err = Some(reason);
                    let clash = std::fs::read(&pg.log_path)
                        .ok()
                        .and_then(|log| {
                            let start = usize::try_from(log_start).ok()?;
                            log.get(start..).map(|tail| {
                                String::from_utf8_lossy(tail).contains("Address already in use")
                            })
                        })
                        .unwrap_or(false);
                    if !clash {
                        break;
                    }
                }
            }
        }
        Err(pg.start_failed(
            builder.start_attempts,
            last_err.unwrap_or_else(|| "no start attempted".to_owned()),
        ))
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust auth, no
    /// password).
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of another database of this cluster.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The CA that issued the server's certificate, when the server serves TLS.
    pub fn tls_ca(&self) -> Option<&TestCa> {
        self.tls.as_ref()
    }

    /// The PEM file of [`tls_ca`](Self::tls_ca)'s certificate (`ca.crt` in [`dir`](Self::dir),
    /// readable by everyone), for `sslrootcert=`.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|_| self.dir.path().join("ca.crt"))
    }

    /// The superuser's client certificate and key (`client.crt`, `client.key` with mode 0600,
    /// in [`dir`](Self::dir)) when the server was built with
    /// [`tls_client_certs`](TestPostgresBuilder::tls_client_certs).
    pub fn client_cert_files(&self) -> Option<(PathBuf, PathBuf)> {
        self.client_certs.then(|| {
            (
                self.dir.path().join("client.crt"),
                self.dir.path().join("client.key"),
            )
        })
    }

    /// The TCP port the server listens on (stays the same across
    /// [`stop`](Self::stop) / [`start_again`](Self::start_again)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding the data dir, the socket and the log; removed on
    /// drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// Whether the server is up (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// `CREATE DATABASE "name"` through `psql`.
    pub fn create_database(&self, name: &str) -> Result<(), HarnessError> {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        self.psql("postgres", &sql).map(|_| ())
    }

    /// Runs `sql` in `database` through `psql -X -At -v ON_ERROR_STOP=1`
    /// and returns its output (unaligned, tuples only: one row per line,
    /// columns separated by `|`).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, HarnessError> {
        if !self.running {
            return Err(HarnessError::InvalidState(format!(
                "psql on a stopped PostgreSQL (port {}); call start_again() first",
                self.port
            )));
        }
        let psql = self.psql_binary()?;
        let mut cmd = Command::new(psql);
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", database, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .env_remove("PGSSLMODE");
        if let Some((cert, key)) = self.client_cert_files() {
            cmd.env("PGSSLCERT", cert).env("PGSSLKEY", key);
        }
        run(&mut cmd, &format!("running SQL in database `{database}`"))
    }

    /// Stops the server (`pg_ctl stop -m fast`), keeping the data dir and
    /// port for [`start_again`](Self::start_again).
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        if !self.running {
            return Ok(());
        }
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run(&mut cmd, "stopping PostgreSQL").map_err(|e| self.with_log(e))?;
        self.running = false;
        Ok(())
    }

    /// Crashes the server (`pg_ctl stop -m immediate`: every server process quits at once, no
    /// shutdown checkpoint, open transactions die with their sessions), keeping the data dir and
    /// port for [`start_again`](Self::start_again), which then runs crash recovery. Commits the
    /// server acknowledged survive only with `synchronous_commit=on` (see
    /// [`TestPostgresBuilder::setting`]); `fsync=off` is harmless here since the machine itself
    /// does not crash.
    pub fn crash(&mut self) -> Result<(), HarnessError> {
        if !self.running {
            return Ok(());
        }
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "60", "stop"]);
        run(&mut cmd, "crashing PostgreSQL (immediate stop)").map_err(|e| self.with_log(e))?;
        self.running = false;
        Ok(())
    }

    /// Starts the server again on the same data dir and port after
    /// [`stop`](Self::stop) or [`crash`](Self::crash). Retries for a few seconds if the port is
    /// briefly taken.
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        if self.running {
            return Ok(());
        }
        let mut last = String::new();
        for attempt in 1..=DEFAULT_START_ATTEMPTS {
            match self.pg_ctl_start() {
                Ok(()) => {
                    self.running = true;
                    return Ok(());
                }
                Err(reason) => last = reason,
            }
            std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
        }
        Err(self.start_failed(DEFAULT_START_ATTEMPTS, last))
    }

    /// Writes the CA, the server certificate and key (and for client certificates the CA as
    /// `root.crt` and the superuser's certificate), and rewrites `pg_hba.conf` for `level`.
    fn set_up_tls(&mut self, level: TlsLevel) -> Result<(), HarnessError> {
        let ca = TestCa::new("eventstream test CA")?;
        let server = ca.issue("localhost", &["localhost", "127.0.0.1"])?;
        let crt = self.data_dir.join("server.crt");
        let key = self.data_dir.join("server.key");
        server.write(&crt, &key)?;
        ca.write_cert(&self.dir.path().join("ca.crt"))?;
        let mut owned = vec![crt, key];
        if level == TlsLevel::ClientCerts {
            let root = self.data_dir.join("root.crt");
            ca.write_cert(&root)?;
            owned.push(root);
            let client = ca.issue(SUPERUSER, &[])?;
            client.write(
                &self.dir.path().join("client.crt"),
                &self.dir.path().join("client.key"),
            )?;
            self.client_certs = true;
        }
        if self.as_postgres_user {
            // PostgreSQL reads its key only when the server's user owns it (mode 0600).
            run(
                Command::new("chown").arg(SUPERUSER).args(&owned),
                "giving the TLS files to the `postgres` user",
            )?;
        }
        if level >= TlsLevel::Only {
            let hba = self.data_dir.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba)
                .map_err(|e| HarnessError::io(format!("reading {}", hba.display()), e))?;
            let text = hba_for_tls(&text, level == TlsLevel::ClientCerts);
            std::fs::write(&hba, text)
                .map_err(|e| HarnessError::io(format!("writing {}", hba.display()), e))?;
        }
        self.tls = Some(ca);
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .arg("-o")
            .arg(&self.options)
            .args(["-w", "-t", "60", "start"]);
        run(
            &mut cmd,
            &format!("starting PostgreSQL on port {}", self.port),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// A command for a PostgreSQL binary, as the `postgres` user when we are
    /// root.
    fn pg_command(&self, binary: &str) -> Command {
        let path = self.bin_dir.join(binary);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", SUPERUSER, "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // The caller's cwd may not be readable by `postgres`.
        cmd.current_dir(self.dir.path());
        // Keep the server's messages in English for log matching.
        cmd.env("LC_MESSAGES", "C");
        cmd
    }

    fn psql_binary(&self) -> Result<PathBuf, HarnessError> {
        let candidates = [self.bin_dir.join("psql"), PathBuf::from("/usr/bin/psql")];
        if let Some(found) = candidates.iter().find(|p| is_executable(p)) {
            return Ok(found.clone());
        }
        crate::process::find_in_path("psql").ok_or_else(|| HarnessError::MissingBinary {
            binary: "psql".to_owned(),
            searched: format!(
                "{}, /usr/bin/psql, PATH",
                self.bin_dir.join("psql").display()
            ),
            hint: "install the Debian package `postgresql-client-15`".to_owned(),
        })
    }

    fn start_failed(&self, attempts: u32, reason: String) -> HarnessError {
        HarnessError::StartFailed {
            server: "PostgreSQL",
            attempts,
            reason,
            log: self.log_path.clone(),
            log_tail: self.log_tail(LOG_TAIL_LINES),
        }
    }

    fn with_log(&self, err: HarnessError) -> HarnessError {
        match err {
            HarnessError::CommandFailed {
                context,
                command,
                status,
                output,
            } => HarnessError::CommandFailed {
                context,
                command,
                status,
                output: format!(
                    "{output}\n--- server log tail ({}) ---\n{}",
                    self.log_path.display(),
                    self.log_tail(LOG_TAIL_LINES)
                ),
            },
            other => other,
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.running || self.data_dir.join("postmaster.pid").exists() {
            let mut cmd = self.pg_command("pg_ctl");
            cmd.arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
            if let Err(e) = run(&mut cmd, "stopping PostgreSQL on drop") {
                eprintln!("eventstream-testkit: {e} (command: {})", describe(&cmd));
            }
            self.running = false;
        }
        // `self.dir` (TempDir) removes the directory when dropped next.
    }
}

/// The `-o` string handed to `pg_ctl` (run by `/bin/sh`, hence the quoting).
fn server_options(
    port: u16,
    socket_dir: &Path,
    durable: bool,
    settings: &[(String, String)],
) -> String {
    let mut opts = format!(
        "-c listen_addresses=127.0.0.1 -p {port} -k {}",
        shell_quote(&socket_dir.to_string_lossy())
    );
    if !durable {
        opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
    }
    for (name, value) in settings {
        opts.push_str(" -c ");
        opts.push_str(&shell_quote(&format!("{name}={value}")));
    }
    opts
}

/// `pg_hba.conf` with every `host` line turned into `hostssl` (and its method into `cert` when
/// `client_certs`).
fn hba_for_tls(text: &str, client_certs: bool) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() == Some("host") {
            let mut fields: Vec<&str> = line.split_whitespace().collect();
            fields[0] = "hostssl";
            if client_certs && let Some(method) = fields.last_mut() {
                *method = "cert";
            }
            out.push_str(&fields.join(" "));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// A throw-away certificate authority (ECDSA P-256, made with rcgen) for TLS tests.
#[derive(Debug)]
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// `-----BEGIN CERTIFICATE-----` …
    pub cert_pem: String,
    /// `-----BEGIN PRIVATE KEY-----` … (PKCS#8)
    pub key_pem: String,
}

fn rcgen_error(context: &str, e: rcgen::Error) -> HarnessError {
    HarnessError::InvalidState(format!("{context}: {e}"))
}

impl TestCa {
    /// A new self-signed CA whose common name is `name` (rcgen's default validity, 1975 to 4096).
    pub fn new(name: &str) -> Result<Self, HarnessError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| rcgen_error("CA parameters", e))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().map_err(|e| rcgen_error("CA key", e))?;
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key)
            .map_err(|e| rcgen_error("self-signing the CA", e))?;
        Ok(Self { issuer })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `path` (mode 0644).
    pub fn write_cert(&self, path: &Path) -> Result<(), HarnessError> {
        write_file(path, &self.cert_pem(), 0o644)
    }

    /// A leaf certificate with common name `common_name` and `names` (DNS names, or IP
    /// addresses) as subjectAltName, usable by servers and clients.
    pub fn issue(&self, common_name: &str, names: &[&str]) -> Result<IssuedCert, HarnessError> {
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .map_err(|e| rcgen_error("certificate parameters", e))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().map_err(|e| rcgen_error("certificate key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| rcgen_error("signing a certificate", e))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl IssuedCert {
    /// Writes the certificate (mode 0644) and the key (mode 0600: PostgreSQL and libpq refuse
    /// keys others can read).
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), HarnessError> {
        write_file(cert, &self.cert_pem, 0o644)?;
        write_file(key, &self.key_pem, 0o600)
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), HarnessError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let context = || format!("writing {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| HarnessError::io(context(), e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| HarnessError::io(context(), e))?;
    // The umask may have narrowed `mode`; an existing file kept its old one.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| HarnessError::io(context(), e))
}

/// The temp dir: under `$TMPDIR` normally, under `/tmp` when we must hand it
/// to `postgres` (who may not be able to traverse root's `$TMPDIR`) or when
/// `$TMPDIR` is so long the socket path would exceed the 107-byte limit.
fn make_temp_dir(for_postgres_user: bool) -> Result<tempfile::TempDir, HarnessError> {
    let tmp = std::env::temp_dir();
    let parent = if for_postgres_user || tmp.as_os_str().len() > 60 {
        PathBuf::from("/tmp")
    } else {
        tmp
    };
    tempfile::Builder::new()
        .prefix("eventstream-pg-")
        .tempdir_in(&parent)
        .map_err(|e| {
            HarnessError::io(
                format!("creating a PostgreSQL temp dir in {}", parent.display()),
                e,
            )
        })
}

/// Whether the effective uid is 0, from `/proc/self/status` (falling back to
/// `id -u`).
pub(crate) fn effective_uid_is_root() -> Result<bool, HarnessError> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let euid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1));
        if let Some(euid) = euid {
            return Ok(euid == "0");
        }
    }
    let out = run(Command::new("id").arg("-u"), "finding the effective uid")?;
    Ok(out.trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_options_quote_for_sh() {
        let opts = server_options(
            5433,
            Path::new("/tmp/pg dir"),
            false,
            &[("application_name".to_owned(), "it's".to_owned())],
        );
        assert_eq!(
            opts,
            "-c listen_addresses=127.0.0.1 -p 5433 -k '/tmp/pg dir' \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c 'application_name=it'\\''s'"
        );
    }

    #[test]
    fn hba_for_tls_turns_host_lines_into_hostssl() {
        let text = "# comment host\nlocal   all all trust\nhost    all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n";
        assert_eq!(
            hba_for_tls(text, false),
            "# comment host\nlocal   all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"
        );
        assert!(hba_for_tls(text, true).contains("hostssl all all 127.0.0.1/32 cert\n"));
        assert!(hba_for_tls(text, true).contains("local   all all trust\n"));
    }

    #[test]
    fn durable_keeps_fsync_defaults() {
        let opts = server_options(5433, Path::new("/tmp/x"), true, &[]);
        assert!(!opts.contains("fsync"), "{opts}");
    }
}
