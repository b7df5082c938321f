"""Fallback service settings (env prefix CAG_FALLBACK_; infra from CAG_FALLBACK_<NAME>, else the shared CAG_<NAME>)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from cag.events.consumer import Redelivery
from cag.fallback.promotion_settings import PromotionSettings
from cag.settings import ServiceSettings

# A generic answering layout shipped with the service (the chat template's im_end boundary, as SmolLM2 has).
DEFAULT_LAYOUT_FILE = Path(__file__).with_name("default_layout.json")


class FallbackSettings(ServiceSettings):
    """Validated when built: without the database (the index), NATS or the signing key the fallback does not start."""

    model_config = SettingsConfigDict(env_prefix="CAG_FALLBACK_")
    required_infra: ClassVar[tuple[str, ...]] = ("database_url", "nats_url", "auth_key_file")

    address: str = "127.0.0.1:50055"
    registry_address: str = "127.0.0.1:50051"
    cachepool_address: str = "127.0.0.1:50052"
    # The prompt layout of fallback answers (its system text and headers; the pool's model renders it).
    layout_file: Path = DEFAULT_LAYOUT_FILE
    # Chunks retrieved per query, and the chunker's bound.
    top_k: int = Field(default=4, ge=1, le=64)
    chunk_max_chars: int = Field(default=800, ge=64, le=100_000)
    # How retrieved evidence is ordered in the prompt: "cacheweaver" puts the longest recently served sequence
    # first (a trie of `evidence_trie_nodes` chunk ids), so the engine's prefix cache reuses it; "retrieval"
    # keeps the index's order. Either way the set of chunks is the retrieved one.
    evidence_order: Literal["cacheweaver", "retrieval"] = "cacheweaver"
    evidence_trie_nodes: int = Field(default=4096, ge=1, le=10_000_000)
    # An answer for a tenant whose source is being reindexed after a change waits at most this long for it.
    reindex_wait_s: float = Field(default=30.0, ge=0)
    # Only this identity (the router) and admins may ask for answers.
    router_subject: str = "service:router"
    # The fallback's identity towards the registry and the cache pool (a token minted from the signing key).
    subject: str = "service:fallback"
    token_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    num_threads: int | None = Field(
        default=None, validation_alias=AliasChoices("CAG_FALLBACK_NUM_THREADS", "CAG_NUM_THREADS")
    )
    # Fallback replicas sharing a group share its NATS durables: each source event is indexed by one of them.
    group: str = Field(default="fallback", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    event_max_deliver: int = 6
    event_backoff_s: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0, 300.0)
    event_ack_wait_s: float = 60.0
    # Promotion of repeated fallbacks (its own CAG_FALLBACK_ variables: cag.fallback.promotion_settings).
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)

    @property
    def layout(self) -> Path:
        return self.layout_file

    @property
    def redelivery(self) -> Redelivery:
        return Redelivery(
            max_deliver=self.event_max_deliver, backoff_s=self.event_backoff_s, ack_wait_s=self.event_ack_wait_s
        )
