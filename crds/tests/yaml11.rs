//! Every YAML file of the repository that a user or a tool hands to Kubernetes means the same in
//! YAML 1.1 (kubectl, Helm: PyYAML here, via `yaml_reading.py`) as in YAML 1.2 (serde_yaml, what
//! the operator and these tests read, via the `yaml-reading` binary): the committed CRD, the
//! chart's copy, every example and every golden child object. An unquoted `on` or `off` in an
//! enum is the classic case: a string to serde_yaml, a boolean to kubectl. The chart's rendered
//! templates get the same comparison in `scripts/chart-test`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ has a parent")
        .to_path_buf()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![
        root.join("crds/eventstream.yaml"),
        root.join("charts/eventstream-operator/crds/eventstream.yaml"),
    ];
    yaml_files(&root.join("examples"), &mut files);
    yaml_files(&root.join("operator/tests/golden"), &mut files);
    // Relative to the repository root (where the readers run), so reports name them briefly.
    let mut files: Vec<PathBuf> = files
        .into_iter()
        .map(|f| f.strip_prefix(&root).map(Path::to_path_buf).unwrap_or(f))
        .collect();
    files.sort();
    files
}

fn run(mut command: Command, what: &str) -> Value {
    let out = command
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what} printed no JSON: {e}"))
}

/// PyYAML's reading. python3 with PyYAML is a test requirement (Debian: python3-yaml).
fn yaml11(files: &[PathBuf]) -> Value {
    let mut command = Command::new("python3");
    command
        .arg(repo_root().join("crds/tests/yaml_reading.py"))
        .args(files);
    run(
        command,
        "python3 crds/tests/yaml_reading.py (needs PyYAML: apt-get install python3-yaml)",
    )
}

fn yaml12(files: &[PathBuf]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_yaml-reading"));
    command.args(files);
    run(command, "yaml-reading")
}

/// The paths (`/a/b/0`) where two readings differ, with both values.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => differences(&format!("{path}/{k}"), v, w, out),
                    None => out.push(format!("{path}/{k}: only in the YAML 1.1 reading")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("{path}/{k}: only in the YAML 1.2 reading"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}/{i}"), v, w, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: YAML 1.1 reads {a}, YAML 1.2 reads {b}")),
    }
}

#[test]
fn yaml_1_1_and_yaml_1_2_read_every_manifest_the_same() {
    let files = files();
    assert!(files.len() >= 9, "found only {files:?}");
    let (old, new) = (yaml11(&files), yaml12(&files));
    let mut found = Vec::new();
    differences("", &old, &new, &mut found);
    assert!(
        found.is_empty(),
        "kubectl and Helm would read these differently from the operator (quote the value, or \
         use a word YAML 1.1 has no other meaning for):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_comparison_sees_what_yaml_1_1_changes() {
    // Proof that the check can fail: each of these is a string in YAML 1.2 and not in 1.1.
    let dir = tempfile_dir();
    let path = dir.join("hazards.yaml");
    std::fs::write(
        &path,
        "timescale: off\nenabled: on\nanswer: y\nmode: 0440\nat: 1:30\nday: 2024-01-01\nok: Disabled\n",
    )
    .expect("write");
    let files = [path];
    let mut found = Vec::new();
    differences("", &yaml11(&files), &yaml12(&files), &mut found);
    let fields: Vec<&str> = found
        .iter()
        .filter_map(|d| d.split(':').next()?.rsplit('/').next())
        .collect();
    assert_eq!(
        fields,
        ["answer", "at", "day", "enabled", "mode", "timescale"],
        "{found:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eventstream-yaml11-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
