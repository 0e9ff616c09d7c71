//! A throw-away PostgreSQL 15 cluster per test.
//!
//! [`TestPostgres::start`] runs `initdb` into a fresh temp dir, then starts
//! the server with `pg_ctl` on `127.0.0.1` and a free port (its Unix socket
//! also lives in the temp dir, so parallel tests never share anything).
//! Dropping the value stops the server (`pg_ctl stop -m immediate`) and
//! removes the directory.
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
//! ```no_run
//! # fn main() -> Result<(), eventstream_testkit::HarnessError> {
//! let mut pg = eventstream_testkit::TestPostgres::start()?;
//! pg.create_database("events")?;
//! let url = pg.url_for("events"); // postgres://postgres@127.0.0.1:PORT/events
//! pg.stop()?; // outage
//! pg.start_again()?; // same data, same port
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
}

impl Default for TestPostgresBuilder {
    fn default() -> Self {
        Self {
            durable: false,
            bin_dir: None,
            settings: Vec::new(),
            start_attempts: DEFAULT_START_ATTEMPTS,
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
            dir,
        };

        let mut initdb = pg.pg_command("initdb");
        initdb
            .arg("-D")
            .arg(&pg.data_dir)
            .args(["-A", "trust", "-U", SUPERUSER, "--no-sync"])
            .args(["--encoding=UTF8", "--locale=C"]);
        run(&mut initdb, "initializing a PostgreSQL data dir")?;

        let mut last_err = None;
        for _ in 0..builder.start_attempts {
            pg.port = crate::free_port()?;
            pg.options = server_options(pg.port, pg.dir.path(), builder.durable, &builder.settings);
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

    /// Starts the server again on the same data dir and port after
    /// [`stop`](Self::stop). Retries for a few seconds if the port is
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
    fn durable_keeps_fsync_defaults() {
        let opts = server_options(5433, Path::new("/tmp/x"), true, &[]);
        assert!(!opts.contains("fsync"), "{opts}");
    }
}
