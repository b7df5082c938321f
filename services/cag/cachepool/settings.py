"""Cache pool settings (env prefix CAG_CACHEPOOL_; infra from CAG_CACHEPOOL_<NAME>, else the shared CAG_<NAME>)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from cag.cachepool.core import POLICIES, PoolSettings, PromotionRule, TierBudgets
from cag.cachepool.core.admission import QueueLimits
from cag.events.consumer import Redelivery
from cag.settings import ServiceSettings, default_engine, default_home

GIB = 1 << 30


class CachePoolSettings(ServiceSettings):
    """Validated when built: without NATS or the signing key the pool does not start."""

    model_config = SettingsConfigDict(env_prefix="CAG_CACHEPOOL_")
    required_infra: ClassVar[tuple[str, ...]] = ("nats_url", "auth_key_file")

    address: str = "127.0.0.1:50052"
    registry_address: str = "127.0.0.1:50051"
    # The model this pool's engine serves (a catalog name or a folder) and its KV dtype.
    model: str = "tiny"
    dtype: str = "fp32"
    # Where converted models live: <home>/models, as the command line keeps them (CAG_HOME).
    home: Path = Field(default_factory=default_home, validation_alias=AliasChoices("CAG_CACHEPOOL_HOME", "CAG_HOME"))
    # The engine answering (CAG_CACHEPOOL_ENGINE or CAG_ENGINE): vLLM where it is installed.
    engine: str = Field(
        default_factory=default_engine, validation_alias=AliasChoices("CAG_CACHEPOOL_ENGINE", "CAG_ENGINE")
    )
    # Tokens of KV memory the engine owns; 0: the model's context window.
    kv_capacity_tokens: int = Field(default=0, ge=0)
    # Bytes each tier may hold. Engine 0: the engine's KV memory less `request_reserve_tokens` per running request.
    engine_budget_bytes: int = Field(default=0, ge=0)
    host_ram_budget_bytes: int = Field(default=4 * GIB, gt=0)
    local_disk_budget_bytes: int = Field(default=32 * GIB, gt=0)
    request_reserve_tokens: int = Field(default=512, ge=0)
    # The local disk tier's folder; default <home>/cachepool.
    cache_dir: Path | None = None
    eviction_policy: str = Field(default="cost_aware", pattern="|".join(POLICIES))
    # Promotion: hits in the last 15 minutes that earn a module found in a slower tier a copy in host RAM and a
    # place in the engine after its request; a route at least `promote_confident_at` sure earns them with the
    # confident counts (cag.cachepool.core.PromotionRule, which checks they agree with each other).
    promote_ram_min_hits: int = Field(default=PromotionRule.ram_min_hits, ge=1)
    promote_engine_min_hits: int = Field(default=PromotionRule.engine_min_hits, ge=1)
    promote_confident_at: float = Field(default=PromotionRule.confident_at, ge=0, le=1)
    promote_confident_ram_min_hits: int = Field(default=PromotionRule.confident_ram_min_hits, ge=1)
    promote_confident_engine_min_hits: int = Field(default=PromotionRule.confident_engine_min_hits, ge=1)
    max_running: int = Field(default=4, ge=1)
    max_queued: int = Field(default=32, ge=0)
    # Fair scheduling: the most of max_queued one tenant may fill, the engine slots kept for tenants running
    # nothing (a newcomer never waits behind a flood; those slots idle while one tenant is alone), and the most
    # a route's priority weighs in the tenants' round robin.
    tenant_queue_share: float = Field(default=0.5, gt=0, le=1)
    reserved_slots: int = Field(default=1, ge=0)
    max_scheduling_weight: int = Field(default=8, ge=1)
    default_max_new_tokens: int = Field(default=128, ge=1)
    max_new_tokens_limit: int = Field(default=1024, ge=1)
    # Only this service identity (and admins) may call the pool.
    router_subject: str = "service:router"
    fallback_subject: str = "service:fallback"
    # The pool's own identity towards the registry (a token minted from the signing key at start).
    subject: str = "service:cachepool"
    registry_scopes: tuple[str, ...] = ("read", "quarantine")
    token_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    # Names this process's NATS durables: every pool process needs its own (each one drops the module).
    instance: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    # Threads for file copies and verification, and for engine streams (at least max_running of them).
    load_threads: int = Field(default=2, ge=1)
    # Compute threads of the engine (cag.engine_runtime); None: torch's default.
    num_threads: int | None = Field(
        default=None, validation_alias=AliasChoices("CAG_CACHEPOOL_NUM_THREADS", "CAG_NUM_THREADS")
    )
    # This replica among several (cag.events.replicas): its key in the announcement bucket; "" takes `instance`
    # (unique per pool process already: it names the process's NATS durables). It announces what it holds and
    # its load when they change (looked at every poll), and as a heartbeat; its key expires `announce_ttl_s`
    # after the last put (a few heartbeats: routers then drop it).
    replica_id: str = Field(default="", pattern=r"^([a-z0-9][a-z0-9_-]{0,63})?$")
    announce: bool = True
    announce_heartbeat_s: float = Field(default=2.0, gt=0)
    announce_poll_s: float = Field(default=0.25, gt=0)
    announce_ttl_s: float = Field(default=6.0, gt=0)
    event_max_deliver: int = 6
    event_backoff_s: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)
    event_ack_wait_s: float = 60.0

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def disk_dir(self) -> Path:
        return self.cache_dir or self.home / "cachepool"

    @property
    def replica(self) -> str:
        """The replica id: the setting, else the instance name."""
        return self.replica_id or self.instance

    @property
    def redelivery(self) -> Redelivery:
        return Redelivery(
            max_deliver=self.event_max_deliver, backoff_s=self.event_backoff_s, ack_wait_s=self.event_ack_wait_s
        )

    @property
    def queue_limits(self) -> QueueLimits:
        return QueueLimits(
            max_running=self.max_running,
            max_queued=self.max_queued,
            tenant_queue_share=self.tenant_queue_share,
            reserved_slots=self.reserved_slots,
            max_weight=self.max_scheduling_weight,
        )

    @property
    def promotion_rule(self) -> PromotionRule:
        return PromotionRule(
            ram_min_hits=self.promote_ram_min_hits,
            engine_min_hits=self.promote_engine_min_hits,
            confident_at=self.promote_confident_at,
            confident_ram_min_hits=self.promote_confident_ram_min_hits,
            confident_engine_min_hits=self.promote_confident_engine_min_hits,
        )

    def pool_settings(self, engine_kv_bytes: int, bytes_per_token: int) -> PoolSettings:
        """The residency core's settings once the engine's KV memory (bytes) is known."""
        engine_budget = self.engine_budget_bytes or max(
            bytes_per_token, engine_kv_bytes - self.max_running * self.request_reserve_tokens * bytes_per_token
        )
        budgets = TierBudgets(
            engine_bytes=engine_budget,
            host_ram_bytes=self.host_ram_budget_bytes,
            local_disk_bytes=self.local_disk_budget_bytes,
        )
        return PoolSettings(budgets=budgets, eviction_policy=self.eviction_policy)
