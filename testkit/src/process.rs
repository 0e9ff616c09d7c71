//! Small helpers for running external programs and reading their logs.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;

/// A shell-like rendering of a command, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut out = quote(cmd.get_program());
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&quote(arg));
    }
    out
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
    {
        s.into_owned()
    } else {
        shell_quote(&s)
    }
}

/// Single-quotes `s` for `/bin/sh`.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `cmd` to completion; on a non-zero exit returns
/// [`HarnessError::CommandFailed`] with its output (and `extra`, e.g. a log
/// tail). Returns stdout on success.
pub(crate) fn run(cmd: &mut Command, context: &str) -> Result<String, HarnessError> {
    let line = describe(cmd);
    let output = cmd
        .output()
        .map_err(|e| HarnessError::io(format!("{context}: spawning `{line}`"), e))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(HarnessError::CommandFailed {
            context: context.to_owned(),
            command: line,
            status: output.status.to_string(),
            output: format!("{stdout}{stderr}"),
        })
    }
}

/// The last `lines` lines of a log file, or a note saying why it is missing.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(log {} unreadable: {e})", path.display()),
    }
}

/// Looks `name` up on `PATH`.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_only_when_needed() {
        let mut cmd = Command::new("pg_ctl");
        cmd.args(["-D", "/tmp/a b", "-o", "-p 1", "start"]);
        assert_eq!(describe(&cmd), "pg_ctl -D '/tmp/a b' -o '-p 1' start");
    }

    #[test]
    fn log_tail_of_missing_file_says_so() {
        assert!(log_tail(Path::new("/nonexistent/log"), 5).contains("unreadable"));
    }
}
