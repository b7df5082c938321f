"""A compile is one `compile` span naming what was built (the tiny model, the demo knowledge)."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cag.engine import Engine
from cag.models import TINY
from cag.telemetry import configure_tracing
from tests.conftest import KNOWLEDGE, compile_example


def test_a_compile_is_one_span_with_the_module_it_built(tiny_engine: Engine, models_dir: Path, tmp_path: Path) -> None:
    spans = InMemorySpanExporter()
    configure_tracing("cag-tests", exporter=spans)
    result = compile_example(KNOWLEDGE / "shared", tmp_path, model=TINY, engine=tiny_engine, models_dir=models_dir)
    [compiled] = [s for s in spans.get_finished_spans() if s.name == "compile"]
    metadata = result.metadata
    assert dict(compiled.attributes or {}) == {
        "source": "shared",
        "model": TINY,
        "parents": 0,
        "module_id": metadata.module_id,
        "route": metadata.route,
        "tenant_id": metadata.tenant_id,
        "tokens": metadata.token_count,
    }
