"""Transport security of the platform's gRPC: the credentials a service's server listens with and those every
client channel presents.

Configured in the shared infra settings (cag.settings): CAG_TLS_CERT_FILE and CAG_TLS_KEY_FILE (this process's
certificate chain and key, PEM), CAG_TLS_CA_FILE (the CA that signs the platform's certificates),
CAG_TLS_SERVER_NAME (the name clients check a server's certificate against, whatever address they dial: the
cache-pool replicas are dialled by pod IP) and CAG_TLS_CLIENT_AUTH (a server asks for a client certificate signed
by the CA: mutual TLS, the default). Each reads CAG_<SERVICE>_TLS_... first, so one service can differ, e.g. the
router facing callers outside the platform without client certificates. Nothing set: plaintext, as on a
developer's machine.

A server reads its files again at the first handshake after they change, and a client channel of the platform
(cag.rpc.reloading_channel) at its first call, so a renewed certificate is used without a restart.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import grpc

from cag.errors import InvalidInputError
from cag.settings import CagBaseSettings

PEM_MARKER = b"-----BEGIN "

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate chain, key and, for mutual TLS, the CA of its callers' certificates: PEM files, read
    again at the first handshake after any of them changes (a renewal rewriting the mounted Secret), so a renewed
    certificate is served without a restart."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None  # None: no client certificate is asked for

    def credentials(self) -> grpc.ServerCredentials:
        followed = FollowedFiles(self.files(), self.configuration)
        return grpc.dynamic_ssl_server_credentials(  # the stubs miss that the fetcher may answer None (no change)
            followed.value,
            followed.changed,  # type: ignore[arg-type]
            require_client_authentication=self.client_ca_file is not None,
        )

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        """The files as they are now; InvalidInputError for one unreadable or not PEM."""
        ca = None if self.client_ca_file is None else _read_pem(self.client_ca_file, "client CA")
        pair = (_read_pem(self.key_file, "key"), _read_pem(self.cert_file, "certificate"))
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def files(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file, *([] if self.client_ca_file is None else [self.client_ca_file]))


class FollowedFiles(Generic[T]):
    """A value read from files, read again when they changed: by modification time, size and inode (a Secret
    update swaps a symbolic link). What a server's TLS configuration and a client channel's TLS are kept in."""

    def __init__(self, paths: tuple[Path, ...], read: Callable[[], T], value: T | None = None) -> None:
        """`value`: what `read` gave a moment ago (None: read now)."""
        self._paths, self._read = paths, read
        self._stamp = _stamp(paths)
        self.value = read() if value is None else value

    def changed(self) -> T | None:
        """The value read again when the files changed since it was last read, else None. Files that changed but
        cannot be read (mid-rotation) keep the value read before: None, and a warning."""
        try:
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return None
            value = self._read()
        except (OSError, InvalidInputError) as e:
            log.warning("TLS files changed but cannot be read (%s); keeping the ones read before", e)
            return None
        self._stamp, self.value = stamp, value
        log.info("TLS files read again: %s", ", ".join(str(path) for path in self._paths))
        return value


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    """OSError when one is missing."""
    return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in (os.stat(path) for path in paths))


@dataclass(frozen=True)
class TlsFiles:
    """Where a client's TLS material was read from, to read it again after a renewal."""

    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None

    def paths(self) -> tuple[Path, ...]:
        return tuple(path for path in (self.ca_file, self.cert_file, self.key_file) if path is not None)


@dataclass(frozen=True)
class ClientTls:
    ca: bytes | None = field(repr=False)  # None: the system's trusted roots
    certificate_chain: bytes | None = field(default=None, repr=False)  # presented to servers that ask (mutual TLS)
    private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None  # None: the host of the address dialled
    # The files it was read from: channels of the platform read them again when they change (ReloadingChannel).
    # None: given as bytes, kept as they are.
    files: TlsFiles | None = None

    @classmethod
    def from_files(
        cls,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        *,
        server_name: str | None = None,
    ) -> ClientTls:
        """TLS towards the platform from PEM files: its CA (None: the system's roots) and, for mutual TLS, a client
        certificate and its key. InvalidInputError for a file missing, unreadable or not PEM."""
        if (cert_file is None) != (key_file is None):
            raise InvalidInputError("a client certificate needs its key: give both cert_file and key_file, or neither")
        return cls(
            ca=None if ca_file is None else _read_pem(Path(ca_file), "ca_file"),
            certificate_chain=None if cert_file is None else _read_pem(Path(cert_file), "cert_file"),
            private_key=None if key_file is None else _read_pem(Path(key_file), "key_file"),
            server_name=server_name,
            files=TlsFiles(*(None if f is None else Path(f) for f in (ca_file, cert_file, key_file))),
        )

    def reread(self) -> ClientTls:
        """The same TLS from the files as they are now; InvalidInputError for one unreadable or not PEM."""
        if self.files is None:
            return self
        f = self.files
        return ClientTls.from_files(f.ca_file, f.cert_file, f.key_file, server_name=self.server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.private_key, self.certificate_chain)

    def options(self) -> list[tuple[str, str]]:
        return [] if self.server_name is None else [("grpc.ssl_target_name_override", self.server_name)]


def server_tls(settings: CagBaseSettings) -> ServerTls | None:
    """What a service's server listens with: None when no TLS setting is given (plaintext). Raises
    InvalidInputError, naming the setting, for an incomplete configuration or a file that is not readable PEM."""
    infra = settings.infra
    if not _configured(settings):
        return None
    if infra.tls_cert_file is None or infra.tls_key_file is None:
        raise InvalidInputError(
            f"a server with TLS needs its certificate and key: set {settings.env_names('tls_cert_file')} and "
            f"{settings.env_names('tls_key_file')}"
        )
    if infra.tls_client_auth and infra.tls_ca_file is None:
        raise InvalidInputError(
            f"mutual TLS checks client certificates against a CA: set {settings.env_names('tls_ca_file')}, or "
            f"{settings.env_names('tls_client_auth')}=false to ask for none"
        )
    for name in ("tls_cert_file", "tls_key_file", *(["tls_ca_file"] if infra.tls_client_auth else [])):
        _read_setting(settings, name)  # each readable PEM now, or the message names its setting
    return ServerTls(
        cert_file=infra.tls_cert_file,
        key_file=infra.tls_key_file,
        client_ca_file=infra.tls_ca_file if infra.tls_client_auth else None,
    )


def client_tls(settings: CagBaseSettings) -> ClientTls | None:
    """What this process's channels present: None when no TLS setting is given (plaintext). The CA alone is
    enough towards a server that asks for no client certificate (a command line calling the router)."""
    infra = settings.infra
    if not _configured(settings):
        return None
    if (infra.tls_cert_file is None) != (infra.tls_key_file is None):
        raise InvalidInputError(
            f"a client certificate needs its key: set both {settings.env_names('tls_cert_file')} and "
            f"{settings.env_names('tls_key_file')}, or neither"
        )
    with_certificate = infra.tls_cert_file is not None
    return ClientTls(
        ca=_read_setting(settings, "tls_ca_file") if infra.tls_ca_file is not None else None,
        certificate_chain=_read_setting(settings, "tls_cert_file") if with_certificate else None,
        private_key=_read_setting(settings, "tls_key_file") if with_certificate else None,
        server_name=infra.tls_server_name,
        files=TlsFiles(infra.tls_ca_file, infra.tls_cert_file, infra.tls_key_file),
    )


def _configured(settings: CagBaseSettings) -> bool:
    infra = settings.infra
    return any(path is not None for path in (infra.tls_cert_file, infra.tls_key_file, infra.tls_ca_file))


def _read_setting(settings: CagBaseSettings, name: str) -> bytes:
    return _read_pem(Path(getattr(settings.infra, name)), settings.env_names(name))


def _read_pem(path: Path, given_as: str) -> bytes:
    """The file, checked to be PEM here (gRPC would only fail the handshake later, unexplained); `given_as` names
    where the path came from, for the message."""
    try:
        content = path.read_bytes()
    except OSError as e:
        raise InvalidInputError(f"cannot read {path} ({given_as}): {e.strerror}") from e
    if PEM_MARKER not in content:
        raise InvalidInputError(f"{path} ({given_as}) is not PEM: expected a '-----BEGIN' block")
    return content
