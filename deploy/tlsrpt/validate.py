#!/usr/bin/env python3
"""Checks TLS-RPT reports against rfc8460.schema.json (Debian: python3-jsonschema).

Usage: validate.py REPORT.json...   (- reads standard input). Exit 0: all valid.
"""
import json
import pathlib
import sys

import jsonschema

SCHEMA = json.loads((pathlib.Path(__file__).parent / "rfc8460.schema.json").read_text())


def main(paths):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    failed = False
    for path in paths:
        text = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text()
        for error in validator.iter_errors(json.loads(text)):
            where = "/".join(str(p) for p in error.absolute_path)
            print(f"{path}: /{where}: {error.message}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["-"]))
