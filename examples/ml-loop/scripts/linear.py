"""Shared code of the loop's stages: a linear model y = w*x + b, its loss and gradient, file I/O.

Floats are written with repr (through json), which is exact and the same on every run.
"""

import argparse
import json


def parse_args():
    """The stage contract of feedback_loop (see rules/feedback_loop.bzl)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--iteration", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model")
    parser.add_argument("--gap")
    parser.add_argument("--evaluation")
    parser.add_argument("--train")
    return parser.parse_args()


def inputs(paths):
    """(train rows, validation rows, config) from the --data paths."""
    found = {}
    for path in paths:
        for name in ("train.csv", "validation.csv", "config.json"):
            if path.endswith(name):
                found[name] = path
    config = read_json(found["config.json"])
    return read_rows(found["train.csv"]), read_rows(found["validation.csv"]), config


def read_rows(path):
    with open(path) as f:
        lines = f.read().splitlines()[1:]
    return [tuple(float(v) for v in line.split(",")) for line in lines]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


def loss(model, rows):
    """Mean squared error."""
    return sum((model["w"] * x + model["b"] - y) ** 2 for x, y in rows) / len(rows)


def gradient(model, rows):
    """dL/dw, dL/db of the mean squared error."""
    n = len(rows)
    errors = [(model["w"] * x + model["b"] - y, x) for x, y in rows]
    return (sum(2 * e * x for e, x in errors) / n, sum(2 * e for e, _ in errors) / n)
