"""`cag`: compile, query, inspect, bench and demo. Errors print one clear line and exit non-zero."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import torch

from cag.cli import (
    bench_cmd,
    compile_cmd,
    demo_cmd,
    infra_cmd,
    inspect_cmd,
    invalidate_cmd,
    modules_cmd,
    query_cmd,
    registry_cmd,
)
from cag.errors import CagError, Status
from cag.settings import CagSettings

EXIT_CODES = {
    Status.INVALID_ARGUMENT: 2,
    Status.NOT_FOUND: 3,
    Status.FAILED_PRECONDITION: 4,
    Status.DATA_LOSS: 5,
}

Command = Callable[[argparse.Namespace, CagSettings], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cag", description="Cache-Augmented Generation platform")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (
        compile_cmd,
        query_cmd,
        inspect_cmd,
        bench_cmd,
        demo_cmd,
        infra_cmd,
        registry_cmd,
        modules_cmd,
        invalidate_cmd,
    ):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = CagSettings()
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    run: Command = args.run
    try:
        return run(args, settings)
    except CagError as e:
        print(f"error ({e.status.value}): {e}", file=sys.stderr)
        return EXIT_CODES.get(e.status, 1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
