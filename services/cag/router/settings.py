"""Router settings (env prefix CAG_ROUTER_; infra from CAG_ROUTER_<NAME>, else the shared CAG_<NAME>)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cag.events.consumer import Redelivery
from cag.router.core.replicas import ReplicaPolicy
from cag.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    """Validated when built: without NATS or the signing key the router does not start."""

    model_config = SettingsConfigDict(env_prefix="CAG_ROUTER_")
    required_infra: ClassVar[tuple[str, ...]] = ("nats_url", "auth_key_file")

    address: str = "127.0.0.1:50053"
    registry_address: str = "127.0.0.1:50051"
    # The one cache pool answering, unless `replica_discovery`: then every replica that announces itself in the
    # replica bucket (cag.events.replicas), each request going to the one holding most of its chain.
    cachepool_address: str = "127.0.0.1:50052"
    # The fallback service answering what no module serves (no confident route, a module not servable).
    fallback_address: str = "127.0.0.1:50055"
    replica_discovery: bool = False
    # A replica not heard from for this long is not chosen (its heartbeats come every 2 s by default).
    replica_stale_after_s: float = Field(default=6.0, gt=0)
    # c of consistent hashing with bounded loads: no replica takes a request at ceil(c x mean load) or more.
    replica_load_factor: float = Field(default=1.25, gt=1)
    # The router's identity towards the registry and the cache pool (a token minted from the signing key at
    # start); the cache pool serves only this subject.
    subject: str = "service:router"
    token_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    # The classifier step (MiniLM; loads torch): off unless enabled. It picks a route only at or above the
    # threshold (cosine similarity of the query to the route's description).
    classifier_enabled: bool = False
    classifier_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    # How often every known tenant's rules and route are read again from the registry (what a lost event or
    # change would otherwise leave out of date).
    reconcile_interval_s: float = Field(default=300.0, gt=0)
    registry_timeout_s: float = Field(default=5.0, gt=0)
    max_query_chars: int = Field(default=4096, ge=1, le=1_000_000)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Names this process's NATS durable: every router process applies every rule update.
    instance: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    event_max_deliver: int = 6
    event_backoff_s: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)
    event_ack_wait_s: float = 60.0

    @property
    def replica_policy(self) -> ReplicaPolicy:
        return ReplicaPolicy(stale_after_s=self.replica_stale_after_s, load_factor=self.replica_load_factor)

    @property
    def redelivery(self) -> Redelivery:
        return Redelivery(
            max_deliver=self.event_max_deliver, backoff_s=self.event_backoff_s, ack_wait_s=self.event_ack_wait_s
        )
