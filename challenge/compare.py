"""Compare a submission output with the expected one: same rows and columns, numbers equal
within 1e-4 (onnxruntime builds may differ in the last digits). Standard library only."""

import csv
import json
import math
import sys


def close(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    try:
        return math.isclose(float(a), float(b), abs_tol=1e-4)
    except (TypeError, ValueError):
        return a == b


def load(path):
    if path.endswith(".json"):
        with open(path) as f:
            return json.load(f)
    with open(path, newline="") as f:
        return list(csv.reader(f))


actual, expected = load(sys.argv[1]), load(sys.argv[2])
if isinstance(actual, dict):
    actual.pop("version", None), expected.pop("version", None)
if not close(actual, expected):
    print(f"{sys.argv[1]} differs from {sys.argv[2]}", file=sys.stderr)
    sys.exit(1)
