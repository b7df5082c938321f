"""Typed settings shared by the command line and every service."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".cache" / "cag"


class CagSettings(BaseSettings):
    """Where the platform keeps converted models and its run directory (env prefix `CAG_`)."""

    model_config = SettingsConfigDict(env_prefix="CAG_")

    home: Path = Field(default_factory=_default_home)
    num_threads: int | None = None
    registry_address: str = "127.0.0.1:50051"
    nats_url: str = "nats://127.0.0.1:4222"
    # Credentials of `cag` commands: a token (CAG_TOKEN) wins; else a local operator who can read the
    # signing key mints one (cag.auth.credentials). Kept out of repr so it never lands in a log.
    token: str | None = Field(default=None, repr=False)
    auth_key_file: Path | None = None  # None: <run_dir>/auth.key, where `cag infra up` writes it

    @model_validator(mode="after")
    def _default_auth_key_file(self) -> Self:
        if self.auth_key_file is None:
            self.auth_key_file = self.run_dir / "auth.key"
        return self

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def run_dir(self) -> Path:
        """Where `cag infra up` keeps its servers' data, logs and state."""
        return self.home / "run"
