"""Compiler service settings (env prefix CAG_COMPILER_; infra from CAG_COMPILER_<NAME>, else the shared CAG_<NAME>)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from cag.events.consumer import Redelivery
from cag.objectstore import parse_s3_uri
from cag.settings import ServiceSettings, default_engine, default_home


class CompilerSettings(ServiceSettings):
    """Validated when built: without the database (jobs), NATS or the signing key the compiler does not start."""

    model_config = SettingsConfigDict(env_prefix="CAG_COMPILER_")
    required_infra: ClassVar[tuple[str, ...]] = ("database_url", "nats_url", "auth_key_file")

    address: str = "127.0.0.1:50054"
    registry_address: str = "127.0.0.1:50051"
    # Converted models live in <home>/models, as the command line keeps them (CAG_HOME).
    home: Path = Field(default_factory=default_home, validation_alias=AliasChoices("CAG_COMPILER_HOME", "CAG_HOME"))
    # Where module files are written; their file:// URI is what the registry records (default <home>/modules).
    out_dir: Path | None = None
    # s3://bucket/prefix: modules are uploaded there and registered with their s3:// URI (pools fetch them from
    # the object store, CAG_S3_*); unset: the file:// URI of the module in `out_dir`.
    object_store_prefix: str | None = None
    engine: str = Field(
        default_factory=default_engine, validation_alias=AliasChoices("CAG_COMPILER_ENGINE", "CAG_ENGINE")
    )
    # Jobs compiling at once (each on its model's engine, one compile per engine at a time).
    workers: int = Field(default=1, ge=1, le=16)
    # The compiler's identity towards the registry (a token minted from the signing key at start).
    subject: str = "service:compiler"
    token_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    num_threads: int | None = Field(
        default=None, validation_alias=AliasChoices("CAG_COMPILER_NUM_THREADS", "CAG_NUM_THREADS")
    )
    # Compiler replicas sharing a group share its NATS durables: each invalidation is handled by one of them.
    group: str = Field(default="compiler", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    # Recompiles wait for a parent that is being rebuilt by redelivery with these delays (then give up).
    event_max_deliver: int = 6
    event_backoff_s: tuple[float, ...] = (2.0, 5.0, 15.0, 60.0, 300.0)
    event_ack_wait_s: float = 60.0

    @field_validator("object_store_prefix")
    @classmethod
    def _check_prefix(cls, value: str | None) -> str | None:
        if value is not None:
            parse_s3_uri(value.rstrip("/") + "/module", field="object_store_prefix")
        return value

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def modules_dir(self) -> Path:
        return self.out_dir or self.home / "modules"

    @property
    def redelivery(self) -> Redelivery:
        return Redelivery(
            max_deliver=self.event_max_deliver, backoff_s=self.event_backoff_s, ack_wait_s=self.event_ack_wait_s
        )
