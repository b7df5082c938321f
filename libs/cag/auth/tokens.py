"""Signed tokens: JWTs that carry a caller's subject, scopes and tenants, and an end user's workspace and
user (torch-free, no grpc).

The platform signs with HS256 and one shared secret (the signing key `cag infra up` writes to
`<run_dir>/auth.key`): service tokens (`cag auth token`) and end-user tokens (`cag token issue`). An outside
identity provider may sign end users' tokens with RS256 or ES256 instead; their public keys come from a JWKS
file (cag.auth.jwks) and the token's `kid` selects one. Which key checks a signature follows from the
algorithm the token names, and each algorithm has its own keys: HS256 only ever the platform's secret, RS256
and ES256 only the JWKS key of that kid and type. So a token signed with HS256 over a public key (the
classic algorithm confusion) and an unsigned one (`none`) are refused.

Every claim is required — a token without `exp` lives forever and is refused — and every refusal says
what to do about it without echoing the token back (it is a credential, and may be attacker-sized).
"""

from __future__ import annotations

import math
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt

from cag.auth.caller import ALL_TENANTS, Caller, Scope
from cag.auth.jwks import Jwks, load_jwks
from cag.errors import CagError, InvalidFieldError, InvalidInputError, UnauthenticatedError
from cag.identifiers import check_name, check_text, echo

ALGORITHM = "HS256"  # the platform's own tokens
JWKS_ALGORITHMS = ("RS256", "ES256")  # an outside issuer's, checked with its JWKS keys
AUDIENCE = "cag"
ISSUER = "cag"
REQUIRED_CLAIMS = ("sub", "scopes", "tenants", "iat", "exp", "aud", "iss")
MIN_KEY_BYTES = 32
MAX_SUBJECT_CHARS = 256
# gRPC metadata is capped at 8 KiB anyway; refusing early keeps a hostile blob away from the decoder.
MAX_TOKEN_CHARS = 4096
# Tolerated disagreement between the issuer's clock and ours (tokens issued "in the future").
CLOCK_SKEW_S = 30
HOW_TO_GET_ONE = "get a new one with `cag auth token` (services) or `cag token issue` (end users), or set CAG_TOKEN"


class KeyFileError(CagError):
    """The signing key file is missing, unreadable, too open or too short (a configuration error)."""

    reason = "SIGNING_KEY_UNUSABLE"


def load_key(path: Path) -> bytes:
    """The signing key in `path`: hex text of at least MIN_KEY_BYTES bytes, readable by its owner only."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(f"signing key file {path} does not exist (`cag infra up` creates it)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read signing key file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"signing key file {path} is not a regular file")
    if mode & 0o077:
        # Anyone who can read the key can mint an admin token.
        permissions = f"{stat.S_IMODE(mode):04o}"
        raise KeyFileError(
            f"signing key file {path} is open to other users (mode {permissions}); run: chmod 600 {path}"
        )
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"signing key file {path} does not hold hex text") from None
    return check_key(key, str(path))


def check_key(key: bytes, where: str = "signing key") -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"{where} is {len(key)} bytes long; at least {MIN_KEY_BYTES} random bytes are needed")
    return key


def issue_token(
    key: bytes,
    subject: str,
    scopes: Iterable[Scope | str],
    tenants: Iterable[str],
    ttl_s: float,
    *,
    workspace: str | None = None,
    user: str | None = None,
    now: float | None = None,
) -> str:
    """A token for `subject` valid for `ttl_s` seconds from `now` (default: the current time); `workspace` and
    `user` name an end user inside the token's one tenant.

    Raises InvalidInputError for an empty or unknown scope, a malformed tenant, subject, workspace or user, a
    workspace or user without exactly one tenant, a ttl <= 0.
    """
    check_key(key)
    caller = Caller(
        subject=_check_subject(subject),
        scopes=frozenset(Scope(_scope(s)) for s in _non_empty("scopes", scopes)),
        tenants=frozenset(_tenant(t) for t in tenants),
        workspace=workspace,
        user=user,
    )
    if ttl_s <= 0:
        raise InvalidFieldError("ttl", f"must be positive, got {ttl_s}")
    issued = int(time.time() if now is None else now)
    claims = {**_claims(caller), "aud": AUDIENCE, "iss": ISSUER, "iat": issued, "exp": issued + int(ttl_s)}
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def issue_user_token(
    key: bytes,
    tenant: str,
    ttl_s: float,
    *,
    workspace: str | None = None,
    user: str | None = None,
    subject: str | None = None,
    now: float | None = None,
) -> str:
    """An end user's token: `read` on `tenant` alone, as `user` in `workspace` (either optional).

    The subject defaults to "user:<user>", else "workspace:<workspace>", else "tenant:<tenant>".
    """
    if tenant == ALL_TENANTS:
        raise InvalidFieldError("tenant", "must name one tenant: an end user's token reads exactly one")
    # Checked before they become part of the default subject, so that an error names the field given.
    for field, name in (("workspace", workspace), ("user", user)):
        if name is not None:
            check_name(field, name)
    default = f"user:{user}" if user else f"workspace:{workspace}" if workspace else f"tenant:{tenant}"
    return issue_token(key, subject or default, [Scope.READ], [tenant], ttl_s, workspace=workspace, user=user, now=now)


def _claims(caller: Caller) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": caller.subject,
        "scopes": sorted(s.value for s in caller.scopes),
        "tenants": sorted(caller.tenants),
    }
    optional = {"workspace": caller.workspace, "user": caller.user}
    return claims | {name: value for name, value in optional.items() if value is not None}


@dataclass(frozen=True, kw_only=True)
class KeySet:
    """What a server verifies tokens with: the platform's signing key (HS256), an outside issuer's JWKS (RS256,
    ES256), or both. Tokens of an algorithm whose keys are absent are refused."""

    platform_key: bytes | None = None
    jwks: Jwks | None = None

    def __post_init__(self) -> None:
        if self.platform_key is None and self.jwks is None:
            raise InvalidInputError("a token key set needs the platform's signing key, a JWKS file, or both")
        if self.platform_key is not None:
            check_key(self.platform_key)


def load_key_set(key_file: Path | None, jwks_file: Path | None) -> KeySet:
    """The KeySet of a signing key file and a JWKS file (either may be None, not both)."""
    return KeySet(
        platform_key=None if key_file is None else load_key(key_file),
        jwks=None if jwks_file is None else load_jwks(jwks_file),
    )


def verify_token(keys: bytes | KeySet, token: str, now: float | None = None) -> Caller:
    """The caller a token names, if it is signed with one of `keys` (bytes: the platform's signing key alone),
    meant for us and valid at `now`.

    Raises UnauthenticatedError saying what is wrong (never quoting the token).
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise UnauthenticatedError(f"token is malformed: {len(token):,} characters long (at most {MAX_TOKEN_CHARS})")
    key_set = keys if isinstance(keys, KeySet) else KeySet(platform_key=keys)
    algorithm, key = _verification_key(key_set, token)
    claims = _decode(algorithm, key, token)
    caller = _caller(claims)
    _check_times(caller, claims, time.time() if now is None else now)
    return caller


def _verification_key(keys: KeySet, token: str) -> tuple[str, Any]:
    """The algorithm the token names and the one key that may check it (see the module docstring)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise UnauthenticatedError(
            "token is malformed: not a JWT this platform accepts (header.payload.signature)"
        ) from None
    algorithm, kid = header.get("alg"), header.get("kid")
    if algorithm == ALGORITHM and keys.platform_key is not None:
        return ALGORITHM, keys.platform_key
    if algorithm in JWKS_ALGORITHMS and keys.jwks is not None:
        key = keys.jwks.key_for(kid)
        if key is None:
            shown = echo(kid) if isinstance(kid, str) else "no kid"
            raise UnauthenticatedError(f"token names key {shown}, which {keys.jwks.source} does not hold")
        if key.algorithm != algorithm:
            raise UnauthenticatedError(
                f"token is signed with {algorithm} but its key {echo(key.kid)} is {key.algorithm}"
            )
        return algorithm, key.key
    raise UnauthenticatedError(f"token is signed with {_shown(algorithm)}; this server accepts {_accepted(keys)}")


def _accepted(keys: KeySet) -> str:
    accepted = [f"{ALGORITHM} (the platform's key)"] if keys.platform_key is not None else []
    if keys.jwks is not None:
        accepted.append(f"{' or '.join(JWKS_ALGORITHMS)} (keys of {keys.jwks.source}, chosen by kid)")
    return " and ".join(accepted)


def _shown(algorithm: object) -> str:
    return echo(algorithm) if isinstance(algorithm, str) else "no algorithm"


def _decode(algorithm: str, key: Any, token: str) -> dict[str, Any]:
    """Signature, audience, issuer and the presence of every claim; times are checked by the caller
    (against an injectable `now`)."""
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": list(REQUIRED_CLAIMS), "verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.InvalidSignatureError:
        raise UnauthenticatedError(
            f"token signature does not verify (altered, or signed with another key); {HOW_TO_GET_ONE}"
        ) from None
    except jwt.InvalidAlgorithmError:
        raise UnauthenticatedError(f"token is not signed with {algorithm}") from None
    except jwt.MissingRequiredClaimError as e:
        raise UnauthenticatedError(f"token lacks the {e.claim!r} claim; {HOW_TO_GET_ONE}") from None
    except jwt.InvalidAudienceError:
        raise UnauthenticatedError(
            f"token is meant for another audience (this platform accepts aud {AUDIENCE!r})"
        ) from None
    except jwt.InvalidIssuerError:
        raise UnauthenticatedError(f"token is issued by someone else (this platform accepts iss {ISSUER!r})") from None
    except jwt.InvalidTokenError:  # DecodeError, bad subject type, …: PyJWT's text may quote the token
        raise UnauthenticatedError(
            "token is malformed: not a JWT this platform issued (header.payload.signature)"
        ) from None


def _check_times(caller: Caller, claims: dict[str, Any], now: float) -> None:
    exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf", 0)
    if not all(_is_time(t) for t in (exp, iat, nbf)):
        raise UnauthenticatedError("token is malformed: exp, iat and nbf must be numbers (seconds since the epoch)")
    if now >= exp + CLOCK_SKEW_S:
        raise UnauthenticatedError(f"token of {caller.subject} expired at {_iso(exp)}; {HOW_TO_GET_ONE}")
    if iat > now + CLOCK_SKEW_S or nbf > now + CLOCK_SKEW_S:
        raise UnauthenticatedError(
            f"token is not valid before {_iso(max(iat, nbf))}; check the clocks of issuer and server"
        )


def _caller(claims: dict[str, Any]) -> Caller:
    subject, scopes, tenants = claims["sub"], claims["scopes"], claims["tenants"]
    workspace, user = claims.get("workspace"), claims.get("user")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise UnauthenticatedError("token is malformed: 'scopes' must be a non-empty list of scope names")
    if not isinstance(tenants, list) or not all(isinstance(t, str) for t in tenants):
        raise UnauthenticatedError("token is malformed: 'tenants' must be a list of tenant ids")
    if not all(v is None or isinstance(v, str) for v in (workspace, user)):
        raise UnauthenticatedError("token is malformed: 'workspace' and 'user' must be names")
    try:
        return Caller(
            subject=_check_subject(subject),
            scopes=frozenset(Scope(_scope(s)) for s in scopes),
            tenants=frozenset(_tenant(t) for t in tenants),
            workspace=workspace,
            user=user,
        )
    except InvalidInputError as e:
        raise UnauthenticatedError(f"token is malformed: {e}") from None


def _non_empty(field: str, values: Iterable[Scope | str]) -> list[Scope | str]:
    listed = list(values)
    if not listed:
        raise InvalidFieldError(field, "must name at least one of " + ", ".join(s.value for s in Scope))
    return listed


def _scope(value: Scope | str) -> str:
    try:
        return Scope(value).value
    except ValueError:
        known = ", ".join(s.value for s in Scope)
        raise InvalidFieldError("scopes", f"has the unknown scope {str(value)[:32]!r} (known: {known})") from None


def _tenant(value: str) -> str:
    return value if value == ALL_TENANTS else check_name("tenants", value)


def _check_subject(value: object) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise InvalidFieldError("subject", "must be a non-empty name without spaces, e.g. 'service:router'")
    return check_text("subject", value, max_chars=MAX_SUBJECT_CHARS)


def _is_time(value: object) -> bool:
    # Python's json accepts NaN and Infinity, and every comparison with NaN is false.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _iso(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{seconds} s after the epoch"
