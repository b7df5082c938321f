"""`cag inspect`: print a module's metadata and verify both checksums."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cag.kvmodule import ModuleFile
from cag.settings import CagSettings

_LONG_FIELDS = {"layout", "golden_results"}


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="print a module's metadata and verify its checksums")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print metadata as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    module = ModuleFile.open(args.file)  # verifies the header checksum
    module.verify()  # verifies every tensor byte
    # header_sha256 is what a registry record pins the file by: printed to compare with `cag modules show`.
    header = {**module.metadata.to_header(), "header_sha256": module.header_sha256}
    if args.json:
        print(json.dumps({**header, "verified": True}, indent=2, sort_keys=True))
        return 0
    table = Table(title=str(args.file), show_header=False)
    for key, value in header.items():
        if key not in _LONG_FIELDS:
            table.add_row(key, value)
    golden = json.loads(module.metadata.golden_results or "[]")
    table.add_row("golden", f"{sum(g['passed'] for g in golden)}/{len(golden)} passed")
    table.add_row("size", f"{args.file.stat().st_size:,} bytes ({module.data_bytes:,} tensor bytes)")
    table.add_row("checksums", "[green]header and tensors verified[/green]")
    Console().print(table)
    return 0
