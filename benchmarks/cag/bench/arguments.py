"""Command-line argument types the benchmarks share."""

from __future__ import annotations

import argparse


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {value!r}")
    return int(value)
