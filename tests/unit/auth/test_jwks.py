"""Tokens of an outside issuer: RS256 and ES256 verified with JWKS keys chosen by kid, and the attacks on that
choice (algorithm confusion, `none`, a key of the wrong type) refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cag.auth import Caller, Scope
from cag.auth.jwks import JwksFileError, load_jwks, parse_jwks
from cag.auth.tokens import KeySet, issue_user_token, load_key_set, verify_token
from cag.errors import InvalidInputError, UnauthenticatedError

NOW = 1_800_000_000.0
PLATFORM_KEY = secrets.token_bytes(32)
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(private_key: Any, kid: str, **extra: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(private_key.public_key()))
    return jwk | {"kid": kid} | extra


JWKS_TEXT = json.dumps({"keys": [public_jwk(RSA_KEY, "rsa-1"), public_jwk(EC_KEY, "ec-1")]})
JWKS = parse_jwks(JWKS_TEXT, "idp.jwks")
KEYS = KeySet(platform_key=PLATFORM_KEY, jwks=JWKS)


def claims(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sub": "user:alice", "scopes": ["read"], "tenants": ["acme"], "workspace": "billing", "user": "alice",
        "iat": int(NOW), "exp": int(NOW) + 60, "aud": "cag", "iss": "cag",
    }  # fmt: skip
    return base | overrides


def refused(raw: str, keys: KeySet = KEYS) -> str:
    with pytest.raises(UnauthenticatedError) as failure:
        verify_token(keys, raw, now=NOW)
    return str(failure.value)


ALICE = Caller(
    subject="user:alice", scopes=frozenset({Scope.READ}), tenants=frozenset({"acme"}), workspace="billing", user="alice"
)


@pytest.mark.parametrize(("private_key", "algorithm", "kid"), [(RSA_KEY, "RS256", "rsa-1"), (EC_KEY, "ES256", "ec-1")])
def test_jwks_tokens_verify(private_key: Any, algorithm: str, kid: str) -> None:
    raw = jwt.encode(claims(), private_key, algorithm=algorithm, headers={"kid": kid})
    assert verify_token(KEYS, raw, now=NOW) == ALICE
    assert verify_token(KeySet(jwks=JWKS), raw, now=NOW) == ALICE  # no platform key needed


def test_platform_tokens_still_verify_beside_a_jwks() -> None:
    raw = issue_user_token(PLATFORM_KEY, "acme", 60, workspace="billing", user="alice", now=NOW)
    assert verify_token(KEYS, raw, now=NOW) == ALICE


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    """The classic confusion: the attacker HMACs with the (public) RSA key as the secret and names its kid."""
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims(scopes=['admin'])).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64(signature)}"
    assert "signature does not verify" in refused(forged)
    # Without a platform key, HS256 is not accepted at all.
    assert "accepts RS256 or ES256" in refused(forged, KeySet(jwks=JWKS))


def test_alg_must_match_the_key_type() -> None:
    # An EC signature presented under the RSA key's kid, and the other way round.
    assert "is RS256" in refused(jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "rsa-1"}))
    assert "is ES256" in refused(jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "ec-1"}))


def test_unsigned_is_refused() -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    assert "signed with 'none'" in refused(unsigned)


@pytest.mark.parametrize("algorithm", ["RS384", "PS256", "ES384", "HS512"])
def test_other_algorithms_are_refused(algorithm: str) -> None:
    header = b64(json.dumps({"alg": algorithm, "kid": "rsa-1"}).encode())
    assert f"signed with '{algorithm}'" in refused(f"{header}.{b64(b'{}')}.{b64(b'sig')}")


def test_unknown_or_missing_kid() -> None:
    assert "'rsa-2', which idp.jwks does not hold" in refused(
        jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-2"})
    )
    assert "no kid" in refused(jwt.encode(claims(), RSA_KEY, algorithm="RS256"))


def test_a_key_that_is_not_in_the_file_fails_the_signature() -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "signature does not verify" in refused(
        jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "rsa-1"})
    )


def test_jwks_tokens_need_every_claim() -> None:
    raw = jwt.encode(
        {k: v for k, v in claims().items() if k != "exp"}, EC_KEY, algorithm="ES256", headers={"kid": "ec-1"}
    )
    assert "lacks the 'exp' claim" in refused(raw)


def test_expired_jwks_token() -> None:
    raw = jwt.encode(claims(exp=int(NOW) - 3600), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    assert "expired" in refused(raw)


# The file -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ([{"kty": "oct", "kid": "s", "k": b64(secrets.token_bytes(32))}], "only RSA .RS256. and EC .ES256."),
        ([public_jwk(RSA_KEY, "r", alg="HS256")], "not 'HS256'"),
        ([public_jwk(RSA_KEY, "r", use="enc")], "not for signatures"),
        ([public_jwk(RSA_KEY, "r") | {"d": "AQAB"}], "private key"),
        ([public_jwk(ec.generate_private_key(ec.SECP384R1()), "e")], "curve P-256"),
        ([{k: v for k, v in public_jwk(RSA_KEY, "r").items() if k != "kid"}], "needs a 'kid'"),
        ([public_jwk(RSA_KEY, "same"), public_jwk(EC_KEY, "same")], "appears twice"),
        ([{"kty": "RSA", "kid": "r", "n": "!!", "e": "AQAB"}], "not a valid RSA public key"),
        ([], "at least one key"),
    ],
)
def test_unusable_jwks_files(keys: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(JwksFileError, match=problem):
        parse_jwks(json.dumps({"keys": keys}))


def test_jwks_file_errors(tmp_path: Path) -> None:
    with pytest.raises(JwksFileError, match="does not exist"):
        load_jwks(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(JwksFileError, match="not JSON"):
        load_jwks(tmp_path / "bad.json")


def test_load_key_set(tmp_path: Path) -> None:
    path = tmp_path / "idp.jwks"
    path.write_text(JWKS_TEXT)
    keys = load_key_set(None, path)
    assert keys.platform_key is None and keys.jwks is not None and set(keys.jwks.keys) == {"rsa-1", "ec-1"}
    with pytest.raises(InvalidInputError, match="needs the platform's signing key, a JWKS file, or both"):
        load_key_set(None, None)
