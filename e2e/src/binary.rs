//! Finds the real `eventstream-dataplane` binary for the end-to-end run.
//!
//! Cargo only exposes `CARGO_BIN_EXE_<name>` to the tests of the package that owns the binary,
//! and artifact dependencies are unstable, so this crate builds it itself: the first call runs
//! `cargo build -p eventstream-dataplane --bin eventstream-dataplane` with the cargo that runs
//! the tests (`$CARGO`), the same target directory and the same profile as the test executable,
//! and takes the path from cargo's JSON messages. Cargo releases its build lock before it runs
//! test executables, so the nested build does not wait on the outer one; when
//! `cargo test --workspace` already built the binary, the nested build is a no-op.
//!
//! `EVENTSTREAM_DATAPLANE_BIN=/path/to/eventstream-dataplane` skips the build (a release
//! binary, the one inside the image, …).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};

/// Environment variable naming a prebuilt dataplane binary.
pub const DATAPLANE_BIN_ENV: &str = "EVENTSTREAM_DATAPLANE_BIN";

/// The dataplane binary, built once per test process.
pub fn dataplane() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| locate().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn locate() -> Result<PathBuf> {
    if let Some(explicit) = std::env::var_os(DATAPLANE_BIN_ENV) {
        let path = PathBuf::from(explicit);
        if !path.is_file() {
            bail!("${DATAPLANE_BIN_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    build()
}

/// The workspace root (this crate lives in `<root>/e2e`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `(target dir, profile dir name)` of the running test executable, whose path is
/// `<target>/<profile>/deps/<name>-<hash>`.
fn own_layout() -> Option<(PathBuf, String)> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    let profile_dir = deps.parent()?;
    let profile = profile_dir.file_name()?.to_str()?.to_owned();
    Some((profile_dir.parent()?.to_path_buf(), profile))
}

fn build() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "--locked",
        "-p",
        "eventstream-dataplane",
        "--bin",
        "eventstream-dataplane",
        "--message-format=json-render-diagnostics",
    ]);
    if let Some((target_dir, profile)) = own_layout() {
        cmd.arg("--target-dir").arg(target_dir);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
    }
    let shown = format!("{cmd:?}");
    let output = cmd
        .output()
        .with_context(|| format!("running {shown} to build the dataplane binary"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed with {}:\n{}\n(set ${DATAPLANE_BIN_ENV} to use a prebuilt binary)",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact" && m["target"]["name"] == "eventstream-dataplane"
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow!("{shown} succeeded but named no eventstream-dataplane executable"))
}
