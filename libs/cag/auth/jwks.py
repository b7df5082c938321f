"""Public keys of outside token issuers, from a JWKS file (RFC 7517), for RS256 and ES256 tokens (torch-free).

An identity provider signs end users' tokens with its private key and publishes the public half as a JSON
Web Key Set; the platform verifies with the key the token's `kid` names. Each key is pinned to exactly one
algorithm by its type (RSA → RS256, EC P-256 → ES256), so a token cannot choose how its own signature is
checked. Symmetric (`oct`) keys and private keys are refused: a file of verification keys holds public
keys only, and a shared secret in it would turn every reader of the file into an issuer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from cag.errors import CagError
from cag.identifiers import echo

# Key type → the one algorithm its tokens may use (and, for EC, the curve that algorithm needs).
ALGORITHM_OF_KEY_TYPE = {"RSA": "RS256", "EC": "ES256"}
EC_CURVE = "P-256"
MAX_KID_CHARS = 128
# Private-key members of RSA and EC JWKs (RFC 7518 §6.2.2, §6.3.2).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})


class JwksFileError(CagError):
    """The JWKS file is missing, unreadable or holds a key the platform will not verify with (configuration)."""

    reason = "JWKS_UNUSABLE"


@dataclass(frozen=True, kw_only=True)
class PublicKey:
    kid: str
    algorithm: str  # the only algorithm a token signed with this key may name: "RS256" or "ES256"
    key: Any  # a cryptography public key object, as PyJWT's decode takes it


@dataclass(frozen=True, kw_only=True)
class Jwks:
    keys: Mapping[str, PublicKey]  # by kid
    source: str  # where the keys came from, for messages

    def key_for(self, kid: object) -> PublicKey | None:
        return self.keys.get(kid) if isinstance(kid, str) else None


def load_jwks(path: Path) -> Jwks:
    """The keys of the JWKS file at `path`; JwksFileError saying what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JwksFileError(f"JWKS file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise JwksFileError(f"cannot read JWKS file {path}: {getattr(e, 'strerror', None) or e}") from None
    return parse_jwks(text, str(path))


def parse_jwks(text: str, source: str = "JWKS") -> Jwks:
    """The keys of a JWKS document `{"keys": [...]}`; every key must be usable (none is skipped silently)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise JwksFileError(f"{source} is not JSON: {e.msg} at line {e.lineno}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise JwksFileError(f'{source} must be a JSON object {{"keys": [...]}} with at least one key')
    keys: dict[str, PublicKey] = {}
    for position, entry in enumerate(entries):
        key = _public_key(entry, f"{source}: key {position}")
        if key.kid in keys:
            raise JwksFileError(f"{source}: kid {echo(key.kid)} appears twice; a token must name exactly one key")
        keys[key.kid] = key
    return Jwks(keys=keys, source=source)


def _public_key(entry: object, where: str) -> PublicKey:
    if not isinstance(entry, dict):
        raise JwksFileError(f"{where} is not a JSON object")
    kid, kty = entry.get("kid"), entry.get("kty")
    if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_CHARS:
        raise JwksFileError(f"{where} needs a 'kid' of 1-{MAX_KID_CHARS} characters (tokens select keys by it)")
    where = f"{where} (kid {echo(kid)})"
    algorithm = ALGORITHM_OF_KEY_TYPE.get(kty) if isinstance(kty, str) else None
    if algorithm is None:
        raise JwksFileError(f"{where} has kty {kty!r:.32}; only RSA (RS256) and EC (ES256) public keys are accepted")
    if entry.get("alg", algorithm) != algorithm:
        raise JwksFileError(f"{where}: a {kty} key signs {algorithm} here, not {entry.get('alg')!r:.32}")
    if kty == "EC" and entry.get("crv") != EC_CURVE:
        raise JwksFileError(f"{where}: ES256 needs curve {EC_CURVE}, not {entry.get('crv')!r:.32}")
    if entry.get("use", "sig") != "sig":
        raise JwksFileError(f"{where} is for {entry.get('use')!r:.32}, not for signatures ('use': 'sig')")
    if PRIVATE_MEMBERS & entry.keys():
        raise JwksFileError(f"{where} is a private key; publish only the public half")
    try:
        jwk = jwt.PyJWK(entry, algorithm=algorithm)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
        raise JwksFileError(f"{where} is not a valid {kty} public key: {e}") from None
    return PublicKey(kid=kid, algorithm=algorithm, key=jwk.key)
