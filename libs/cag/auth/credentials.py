"""The credentials a `cag` command presents to the platform's services (torch-free, no grpc).

A token from settings (CAG_TOKEN) wins. Otherwise a local operator who can read the signing key
(`cag infra up` writes it, mode 0600, to <run_dir>/auth.key) mints a short-lived admin token for
themselves: whoever can read that key can mint any token anyway, so this grants nothing new.
"""

from __future__ import annotations

import getpass
from pathlib import Path

from cag.auth.caller import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token, load_key
from cag.errors import UnauthenticatedError
from cag.settings import CagSettings

AUTHORIZATION = "authorization"
# Long enough for a slow command (a compile with --publish), short enough that a leaked one soon dies.
MINTED_TTL_S = 15 * 60


def resolve_token(settings: CagSettings) -> str:
    """The bearer token for this command; UnauthenticatedError saying what to set when there is none."""
    if settings.token:
        return settings.token.strip()
    key_file = settings.auth_key_file or settings.run_dir / "auth.key"
    if not _readable(key_file):
        raise UnauthenticatedError(
            f"no credentials: set CAG_TOKEN to a token (ops issue them with `cag auth token`), or CAG_AUTH_KEY_FILE "
            f"to the platform's signing key ({key_file} is not there or not readable by you)"
        )
    key = load_key(key_file)  # refuses a key other users can read, in one line
    return issue_token(key, local_subject(), [Scope.ADMIN], [ALL_TENANTS], MINTED_TTL_S)


def local_subject() -> str:
    """The subject of tokens minted for the local operator: "user:<login name>"."""
    try:
        login = getpass.getuser()
    except OSError:  # no login name in the environment nor in the password database
        login = "unknown"
    return f"user:{login}"


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata presenting `token` (sync and grpc.aio stubs accept it as `metadata=`)."""
    return ((AUTHORIZATION, f"Bearer {token}"),)


def _readable(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False
