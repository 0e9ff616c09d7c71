#!/usr/bin/env python3
"""How YAML 1.1 tools read a YAML file: PyYAML, with the `y`/`n` booleans of go-yaml v2 added.

kubectl, Helm and most Kubernetes tooling read YAML 1.1 (go-yaml v2 behind sigs.k8s.io/yaml),
where unquoted `on`, `off`, `yes`, `no`, `y`, `n` are booleans, `0440` is octal, `1:30` is
sexagesimal and `2024-01-01` a timestamp. The operator and its tests read YAML 1.2 (serde_yaml).
A file both kinds of tools read must mean the same to both.

`reading(text)` returns every non-empty document as JSON-able data in the form the Rust side
(`crds/src/bin/yaml-reading.rs`) prints for serde_yaml, so the two compare with `==`:
mapping keys become strings (a non-string key as its JSON text: `true`, `1`, `null`), and
values JSON has no type for are tagged objects (`{"!timestamp": ...}`).

Command line: `yaml_reading.py FILE...` prints `{"FILE": [document, ...], ...}` as JSON.
Used by crds/tests/yaml11.rs and charts/tests/test_chart.py.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import re
import sys

import yaml


class Yaml11Loader(yaml.SafeLoader):
    """PyYAML's safe loader plus go-yaml v2's single-letter booleans (PyYAML lacks `y`/`n`)."""


Yaml11Loader.bool_values = dict(yaml.SafeLoader.bool_values, y=True, n=False)
Yaml11Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN")
)


def key_text(key) -> str:
    if isinstance(key, str):
        return key
    return json.dumps(plain(key), sort_keys=True)


def plain(value):
    """`value` as JSON data; types JSON lacks are tagged, so they never equal a string."""
    if isinstance(value, dict):
        return {key_text(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"!float": repr(value)}
    if isinstance(value, (datetime.datetime, datetime.date)):
        return {"!timestamp": value.isoformat()}
    if isinstance(value, bytes):
        return {"!binary": base64.b64encode(value).decode()}
    if isinstance(value, set):
        return {"!set": sorted(key_text(v) for v in value)}
    return {"!" + type(value).__name__: repr(value)}


def reading(text: str) -> list:
    # Empty documents are left out: PyYAML yields none for an empty text where serde_yaml yields
    # one null, and kubectl and Helm skip them either way.
    return [plain(doc) for doc in yaml.load_all(text, Loader=Yaml11Loader) if doc is not None]


def main(paths: list[str]) -> None:
    out = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            out[path] = reading(f.read())
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
