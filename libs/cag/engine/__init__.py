"""Inference engines behind one protocol; implementations load lazily by name."""

from cag.engine.base import Engine, load_engine
from cag.engine.cache import KVCache, KVShape
from cag.engine.sampling import SamplingParams

__all__ = ["Engine", "KVCache", "KVShape", "SamplingParams", "load_engine"]
