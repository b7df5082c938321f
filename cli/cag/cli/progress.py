"""Rich rendering of compile progress: a stage line, a prefill bar, golden results as they come."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from cag.compiler.golden import GoldenResult


class RichCompileObserver:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tokens"),
            TimeRemainingColumn(),
            console=console,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichCompileObserver:
        self.progress.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.progress.stop()

    def stage(self, name: str) -> None:
        self.console.print(f"[dim]• {name}[/dim]")

    def prefill_started(self, total_tokens: int) -> None:
        self._task = self.progress.add_task("prefill", total=total_tokens)

    def prefill_advanced(self, tokens: int) -> None:
        if self._task is not None:
            self.progress.advance(self._task, tokens)

    def golden_result(self, result: GoldenResult) -> None:
        mark = "[green]pass[/green]" if result.passed else "[red]FAIL[/red]"
        self.console.print(f"  {mark} {result.question} → {result.answer[:80]!r}")
