"""Inference engines behind one protocol; implementations load lazily by name."""

from cag.engine.base import (
    Engine,
    FinishReason,
    GenerateRequest,
    ModuleRows,
    RequestTimings,
    TokenEvent,
    engine_kinds,
    load_engine,
)
from cag.engine.cache import KVShape
from cag.engine.sampling import SamplingParams

__all__ = [
    "Engine",
    "FinishReason",
    "GenerateRequest",
    "KVShape",
    "ModuleRows",
    "RequestTimings",
    "SamplingParams",
    "TokenEvent",
    "engine_kinds",
    "load_engine",
]
