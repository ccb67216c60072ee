#!/usr/bin/python3
"""Checks JSON lines against Hubble's schema: each line on stdin must parse, with unknown fields
rejected, as an observer.GetFlowsResponse (protobuf's JSON mapping of flow.proto / observer.proto).

Usage: hubble_schema_check.py PYTHON_OUT_DIR < lines.jsonl
PYTHON_OUT_DIR holds the modules `protoc --python_out` generated from Hubble's proto directory.
Prints one result per input line: `ok` or `error: <why>`; exits 0 unless the checker itself fails.
"""
import sys

sys.path.insert(0, sys.argv[1])

from google.protobuf import json_format  # noqa: E402
from observer import observer_pb2  # noqa: E402

for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        json_format.Parse(line, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=False)
        print("ok")
    except json_format.ParseError as e:
        print("error: " + str(e).replace("\n", " "))
