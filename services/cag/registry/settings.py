"""Registry settings (env prefix CAG_REGISTRY_; the shared CAG_DATABASE_URL / CAG_NATS_URL work too)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cag.events.consumer import Redelivery


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAG_REGISTRY_", populate_by_name=True)

    database_url: str = Field(validation_alias=AliasChoices("CAG_REGISTRY_DATABASE_URL", "CAG_DATABASE_URL"))
    nats_url: str = Field(validation_alias=AliasChoices("CAG_REGISTRY_NATS_URL", "CAG_NATS_URL"))
    address: str = "127.0.0.1:50051"
    ttl_interval_s: float = 30.0
    outbox_poll_s: float = 0.02
    watch_poll_s: float = 0.1
    pool_size: int = 10
    # The key that signs service tokens (`cag infra up` writes <run_dir>/auth.key); every RPC but the health
    # check needs a token it signed.
    auth_key_file: Path = Field(validation_alias=AliasChoices("CAG_REGISTRY_AUTH_KEY_FILE", "CAG_AUTH_KEY_FILE"))
    # Server reflection lists every method to anyone who can connect: for development only.
    reflection: bool = False
    # On SIGTERM: how long in-flight RPCs get to finish before they are cancelled.
    shutdown_grace_s: float = 10.0
    # Redelivery of events whose handling fails (docs/events.md): tries, then the delays between them.
    event_max_deliver: int = 6
    event_backoff_s: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)
    event_ack_wait_s: float = 60.0

    @property
    def redelivery(self) -> Redelivery:
        return Redelivery(
            max_deliver=self.event_max_deliver, backoff_s=self.event_backoff_s, ack_wait_s=self.event_ack_wait_s
        )
