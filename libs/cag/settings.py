"""Typed settings: one base with the shared infrastructure nested in it, one class per process kind.

Every process reads its environment once, here, at its entry point, and passes the settings down; nothing
below reads `os.environ`. Each class has its own env prefix (`CAG_` for the command line, `CAG_REGISTRY_`
for the registry, ...). The infrastructure (`infra`: database URL, NATS URL, the key that signs service
tokens) is shared: a process reads `<its prefix><NAME>` first, then the platform-wide `CAG_<NAME>`, so
CAG_DATABASE_URL, CAG_NATS_URL and CAG_AUTH_KEY_FILE configure every service at once and
CAG_REGISTRY_DATABASE_URL (say) overrides them for one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from cag.errors import InvalidInputError
from cag.source_roots import SourceRoots

SHARED_PREFIX = "CAG_"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


# The engines cag.engine.load_engine builds (named here so torch-free code can validate a choice).
ENGINE_KINDS = ("torch", "vllm")


def default_engine() -> str:
    """The inference engine where none is named (CAG_ENGINE): vLLM where it is installed, else the torch engine."""
    return "vllm" if importlib.util.find_spec("vllm") is not None else "torch"


def default_home() -> Path:
    """Where models and run state live when CAG_HOME (or a service's own) names no folder."""
    return Path.home() / ".cache" / "cag"


class InfraSettings(BaseModel):
    """Where the shared infrastructure is. None: not configured here (a service refuses to start without what
    it needs; the command line falls back to what `cag infra up` recorded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str | None = None
    nats_url: str | None = None
    auth_key_file: Path | None = None  # the key that signs service tokens (`cag infra up` writes one)
    # Public keys (a JWKS file) of an identity provider whose RS256/ES256 tokens the services accept too.
    auth_jwks_file: Path | None = None
    # An S3-compatible object store for module files (s3:// storage URIs): endpoint (None: AWS), region, keys.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = Field(default=None, repr=False)
    s3_secret_access_key: str | None = Field(default=None, repr=False)
    # gRPC over TLS (cag.rpc.tls): this process's certificate chain and key, the CA of the platform's certificates,
    # the name servers' certificates are checked against, and whether servers ask for client certificates.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_server_name: str | None = None
    tls_client_auth: bool = True
    # Where each tenant's knowledge sources may live (cag.source_roots): comma-separated URI prefixes with {tenant};
    # the registry and the compiler refuse sources elsewhere. None: anywhere.
    source_roots: str | None = None

    @field_validator("source_roots")
    @classmethod
    def _check_source_roots(cls, value: str | None) -> str | None:
        SourceRoots.parse(value)  # ValueError, saying which root is wrong, when the settings are built
        return value

    @property
    def roots(self) -> SourceRoots | None:
        return SourceRoots.parse(self.source_roots)


class _InfraEnvSource(EnvSettingsSource):
    """`infra` from `<prefix><NAME>`, else `CAG_<NAME>` (the first one set and not empty)."""

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.settings_cls.model_config.get("env_prefix", ""))
        found: dict[str, str] = {}
        for name in InfraSettings.model_fields:
            for var in dict.fromkeys((f"{prefix}{name}", f"{SHARED_PREFIX}{name}")):
                value = self.env_vars.get(var.lower()) or self.env_vars.get(var.upper())
                if value:
                    found[name] = value
                    break
        return {"infra": found} if found else {}


class CagBaseSettings(BaseSettings):
    """The base of every process's settings: its env prefix, and `infra` read as the module docstring says."""

    model_config = SettingsConfigDict(env_prefix=SHARED_PREFIX)
    # Infra fields this kind of process cannot run without (checked when the settings are built).
    required_infra: ClassVar[tuple[str, ...]] = ()

    infra: InfraSettings = Field(default_factory=InfraSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _InfraEnvSource(settings_cls), file_secret_settings

    @model_validator(mode="after")
    def _check_required_infra(self) -> Self:
        missing = [name for name in self.required_infra if getattr(self.infra, name) is None]
        if missing:
            raise ValueError(f"set {', '.join(self.env_names(n) for n in missing)}")
        return self

    @classmethod
    def infra_from_env(cls) -> InfraSettings:
        """What the environment says about this process's infra (unset fields None), without building the whole
        settings: for entry points that fill the gaps (from what `cag infra up` recorded) before they do."""
        return InfraSettings.model_validate(_InfraEnvSource(cls)().get("infra", {}))

    @classmethod
    def env_names(cls, name: str) -> str:
        """The environment variables that set infra field `name` here, for messages that say what to set."""
        return f"{cls.model_config.get('env_prefix', '')}{name.upper()} or {SHARED_PREFIX}{name.upper()}"

    def _infra(self, name: str) -> Any:
        value = getattr(self.infra, name)
        if value is None:
            raise InvalidInputError(f"{name} is not configured: set {self.env_names(name)}")
        return value

    # Typed views of `infra` for the code that needs a value (InvalidInputError, saying what to set, when unset).
    @property
    def database_url(self) -> str:
        return str(self._infra("database_url"))

    @property
    def nats_url(self) -> str:
        return str(self._infra("nats_url"))

    @property
    def auth_key_file(self) -> Path:
        return Path(self._infra("auth_key_file"))


class ServiceSettings(CagBaseSettings):
    """What every service process has besides its own settings: its gRPC server's extras and its metrics endpoint."""

    # Server reflection lists every method to anyone who can connect: for development only.
    reflection: bool = False
    # A second, plaintext port serving only the health service: where kubelet's gRPC probes (which speak no TLS)
    # reach a service that listens with TLS (cag.rpc.tls). None: no such port.
    health_address: str | None = None
    # On SIGTERM: how long in-flight RPCs get to finish before they are cancelled.
    shutdown_grace_s: float = 10.0
    # Prometheus metrics on http://<metrics_host>:<metrics_port>/metrics (cag.telemetry.metrics); 0: none.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Where the metrics endpoint listens: loopback unless a scraper outside the host needs it (a pod: 0.0.0.0).
    metrics_host: str = "127.0.0.1"


class CagSettings(CagBaseSettings):
    """The command line (env prefix `CAG_`): where converted models and the run directory live, its credentials,
    which registry it talks to."""

    home: Path = Field(default_factory=default_home)
    # Threads of an engine hosted by this process (cag.engine.runtime); None: the engine's default.
    num_threads: int | None = None
    # The engine that compiles and answers in this process (cag.engine.engine_kinds).
    engine: str = Field(default_factory=default_engine)
    registry_address: str = "127.0.0.1:50051"
    # Where `cag ask` finds the router (CAG_ROUTER_ADDRESS; `cag platform up` prints the one it started).
    router_address: str = Field(default="127.0.0.1:50053", validation_alias="CAG_ROUTER_ADDRESS")
    # Where `cag candidates` finds the fallback service (CAG_FALLBACK_ADDRESS, the address the service listens on).
    fallback_address: str = Field(default="127.0.0.1:50055", validation_alias="CAG_FALLBACK_ADDRESS")
    # Credentials of `cag` commands: a token (CAG_TOKEN) wins; else a local operator who can read the
    # signing key mints one (cag.auth.credentials). Kept out of repr so it never lands in a log.
    token: str | None = Field(default=None, repr=False)
    # The module date of reproducible builds (the reproducible-builds.org convention, no CAG_ prefix).
    source_date_epoch: int | None = Field(default=None, validation_alias="SOURCE_DATE_EPOCH")

    _infra_given: frozenset[str] = PrivateAttr(default=frozenset())

    def model_post_init(self, context: Any) -> None:
        """Defaults for what neither the caller nor the environment set: NATS on localhost, the signing key that
        `cag infra up` writes in the run directory."""
        self._infra_given = frozenset(n for n in self.infra.model_fields_set if getattr(self.infra, n) is not None)
        defaults = {"nats_url": DEFAULT_NATS_URL, "auth_key_file": self.run_dir / "auth.key"}
        unset = {name: value for name, value in defaults.items() if name not in self._infra_given}
        if unset:
            self.infra = self.infra.model_copy(update=unset)

    @property
    def infra_given(self) -> frozenset[str]:
        """The infra fields the caller or the environment set (the others hold the defaults above)."""
        return self._infra_given

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def run_dir(self) -> Path:
        """Where `cag infra up` keeps its servers' data, logs and state."""
        return self.home / "run"
