"""`cag`: compile, query, inspect, bench and demo. Errors print one clear line and exit non-zero."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from cag.engine_runtime import tune_engine_runtime
from cag.errors import CagError, Status, validation_problems
from cag.settings import CagSettings

EXIT_CODES = {
    Status.INVALID_ARGUMENT: 2,
    Status.NOT_FOUND: 3,
    Status.FAILED_PRECONDITION: 4,
    Status.DATA_LOSS: 5,
    Status.UNAUTHENTICATED: 6,
    Status.PERMISSION_DENIED: 7,
}

Command = Callable[[argparse.Namespace, CagSettings], int]
# Command name → module. Only the module of the command being run is imported: `cag infra status`
# should not pay for importing torch and transformers.
COMMANDS = {
    "compile": "compile_cmd",
    "query": "query_cmd",
    "inspect": "inspect_cmd",
    "bench": "bench_cmd",
    "demo": "demo_cmd",
    "infra": "infra_cmd",
    "registry": "registry_cmd",
    "modules": "modules_cmd",
    "invalidate": "invalidate_cmd",
    "auth": "auth_cmd",
    "token": "token_cmd",
    "ask": "ask_cmd",
    "platform": "platform_cmd",
    "routes": "routes_cmd",
    "sources": "sources_cmd",
    "top": "top_cmd",
    "candidates": "candidates_cmd",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or one with just the `only` command registered."""
    parser = argparse.ArgumentParser(prog="cag", description="Cache-Augmented Generation platform")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(f"cag.cli.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = CagSettings()  # the environment is read here, once, and passed down
    except ValidationError as e:
        problems = validation_problems(e, root="settings")
        print(
            f"error ({Status.INVALID_ARGUMENT.value}): invalid settings in the environment: {problems}", file=sys.stderr
        )
        return EXIT_CODES[Status.INVALID_ARGUMENT]
    # Commands that compute host an engine: tuned before any command (and so torch) is imported.
    tune_engine_runtime(settings.num_threads, os.environ)
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(words)
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
