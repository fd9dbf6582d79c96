#!/usr/bin/env python3
"""Validates dashboards/*.json against Grafana's published dashboard JSON schema.

Usage: check.py [DASHBOARD.json ...] (default: every dashboard beside this file). Exits 1 naming
each file and the path of each violation. Needs the `jsonschema` package (a dependency of
`kubernetes-validate`, which scripts/install-deps installs). See schema/README.md for the one
documented loosening of the schema.
"""

import json
import pathlib
import sys

import jsonschema

HERE = pathlib.Path(__file__).resolve().parent


def schema():
    s = json.loads((HERE / "schema" / "dashboard.jsonschema.json").read_text())
    defs = s["definitions"]
    # CUE `_` (any value) rendered as "object" by the schema generator: see schema/README.md.
    defs["DynamicConfigValue"]["properties"]["value"] = {}
    defs["MatcherConfig"]["properties"]["options"] = {}
    return s


def main():
    files = [pathlib.Path(a) for a in sys.argv[1:]] or sorted(HERE.glob("*.json"))
    validator = jsonschema.Draft7Validator(schema())
    failures = 0
    for f in files:
        doc = json.loads(f.read_text())
        errors = list(validator.iter_errors(doc))
        for e in errors:
            # anyOf failures (a panel is a panel or a row) carry each branch's reasons.
            for c in [e] + list(e.context):
                path = "/".join(str(p) for p in c.absolute_path)
                print(f"{f.name}: /{path}: {c.message[:200]}", file=sys.stderr)
        failures += len(errors)
        if not errors:
            print(f"{f.name}: valid")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
