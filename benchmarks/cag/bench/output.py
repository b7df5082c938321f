"""Where a benchmark's report goes: always a JSON file, then either the JSON or a table on stdout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console


def emit_report(
    report_json: str, out: Path, *, as_json: bool, render: Callable[[Console], None], width: int, stderr: Console
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_json + "\n")
    if as_json:
        print(report_json)
    else:
        console = Console()
        # Piped output gets a fixed width, wide enough that the table's columns stay readable.
        render(console if console.is_terminal else Console(width=width))
    stderr.print(f"wrote {out}")
