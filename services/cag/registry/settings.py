"""Registry settings (env prefix CAG_REGISTRY_; infra from CAG_REGISTRY_<NAME>, else the shared CAG_<NAME>)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from cag.events.consumer import Redelivery
from cag.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    """Validated when built: without a database, NATS or the signing key the registry does not start."""

    model_config = SettingsConfigDict(env_prefix="CAG_REGISTRY_")
    # The key signs service tokens (`cag infra up` writes <run_dir>/auth.key): every RPC but the health check
    # needs a token it signed.
    required_infra: ClassVar[tuple[str, ...]] = ("database_url", "nats_url", "auth_key_file")

    address: str = "127.0.0.1:50051"
    ttl_interval_s: float = 30.0
    outbox_poll_s: float = 0.02
    watch_poll_s: float = 0.1
    pool_size: int = 10
    # Redelivery of events whose handling fails (docs/events.md): tries, then the delays between them.
    event_max_deliver: int = 6
    event_backoff_s: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)
    event_ack_wait_s: float = 60.0

    @property
    def redelivery(self) -> Redelivery:
        return Redelivery(
            max_deliver=self.event_max_deliver, backoff_s=self.event_backoff_s, ack_wait_s=self.event_ack_wait_s
        )
