"""Promotion settings of the fallback service (env prefix CAG_FALLBACK_, beside FallbackSettings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cag.fallback.core.candidates import ClusteringPolicy
from cag.settings import default_home


class PromotionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAG_FALLBACK_", extra="ignore")

    # Clustering of served fallbacks into candidates (cag.fallback.core.candidates).
    similarity: float = Field(default=0.8, gt=0.0, le=1.0)
    evidence_overlap: float = Field(default=0.5, gt=0.0, le=1.0)
    propose_at: int = Field(default=3, ge=1)
    # Approval compiles a module: with the compiler here, for this model and layout, from a source folder written
    # under `promotions_dir` (a folder the compiler reads: file:// URIs).
    compiler_address: str = "127.0.0.1:50054"
    promotion_model: str = "tiny"
    promotion_layout_file: Path | None = None  # None: the fallback's own layout
    promotions_dir: Path = Field(default_factory=lambda: default_home() / "promotions")

    @property
    def policy(self) -> ClusteringPolicy:
        return ClusteringPolicy(
            similarity=self.similarity, evidence_overlap=self.evidence_overlap, propose_at=self.propose_at
        )
