"""Token verification against PEM and JWKS-file key sources: every adversarial token of issue 4 and the
accepted ones (EdDSA, ES256, RS256), claims, scopes, and the settings-to-source wiring."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from auth_token_helpers import AUDIENCE, ISSUER, Signer, b64url, bearer, forge, valid_claims

from gateway.auth import REFUSAL_REASONS, Caller, CallerAuthenticator, disclose_scope, key_thumbprint
from gateway.config import Settings
from gateway.errors import ConfigError, Unauthenticated
from gateway.keys import GatewayKeys


@pytest.fixture
def pem_auth(
    ed_signer: Signer, write_pem: Callable[[Signer], Path], make_settings: Callable[..., Settings],
    gateway_keys: GatewayKeys,
) -> CallerAuthenticator:
    """An authenticator trusting only `ed_signer`'s public key, from a PEM file."""
    return CallerAuthenticator.from_settings(make_settings(jwt_keys=str(write_pem(ed_signer))), gateway_keys)


async def refused(auth: CallerAuthenticator, authorization: list[str]) -> Unauthenticated:
    """Authenticate, expect a 401, and check the refusal never echoes the token."""
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(authorization)
    error = info.value
    assert error.status == 401
    assert error.reason in REFUSAL_REASONS
    for value in authorization:
        for segment in value.removeprefix("Bearer ").split("."):
            if len(segment) >= 8:
                assert segment not in error.detail
                assert segment not in json.dumps(error.to_problem())
    return error


# --- accepted tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("signer_name", ["ed_signer", "es_signer", "rsa_signer"])
async def test_accepts_each_default_algorithm_from_a_pem_file(
    signer_name: str, request: pytest.FixtureRequest, write_pem: Callable[[Signer], Path],
    make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    signer: Signer = request.getfixturevalue(signer_name)
    auth = CallerAuthenticator.from_settings(make_settings(jwt_keys=str(write_pem(signer))), gateway_keys)
    caller = await auth.authenticate(bearer(signer.token()))
    assert caller == Caller(
        service="orders-service",
        scopes=frozenset({"disclose:carrier-tw-hct:delivery", "gateway:audit"}),
        token_id="token-1",
    )
    # A PEM key has no kid of its own: a token may also omit kid.
    assert (await auth.authenticate(bearer(signer.token(headers={"kid": None}, jti="t2")))).token_id == "t2"


async def test_accepts_each_algorithm_from_one_jwks_file(
    ed_signer: Signer, es_signer: Signer, rsa_signer: Signer,
    write_jwks: Callable[[list[dict[str, Any]]], Path], make_settings: Callable[..., Settings],
    gateway_keys: GatewayKeys,
) -> None:
    path = write_jwks([ed_signer.jwk("ed-1"), es_signer.jwk("es-1"), rsa_signer.jwk("rsa-1", alg="RS256")])
    auth = CallerAuthenticator.from_settings(make_settings(jwt_keys=str(path)), gateway_keys)
    for signer, kid in ((ed_signer, "ed-1"), (es_signer, "es-1"), (rsa_signer, "rsa-1")):
        caller = await auth.authenticate(bearer(signer.token(headers={"kid": kid})))
        assert caller.service == "orders-service"
    # Each key verifies only its own algorithm family, even when the kid points at it.
    assert (await refused(auth, bearer(es_signer.token(headers={"kid": "ed-1"})))).reason == "algorithm"
    assert (await refused(auth, bearer(ed_signer.token(headers={"kid": "rsa-1"})))).reason == "algorithm"
    assert (await refused(auth, bearer(rsa_signer.token(headers={"kid": "es-1"})))).reason == "algorithm"


async def test_default_source_is_the_development_key(
    make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    assert gateway_keys.jwt_dev_private is not None
    dev = Signer(gateway_keys.jwt_dev_private, "EdDSA", key_thumbprint(gateway_keys.jwt_dev_private.public_key()))
    auth = CallerAuthenticator.from_settings(make_settings(), gateway_keys)
    assert (await auth.authenticate(bearer(dev.token()))).service == "orders-service"


async def test_development_key_is_never_trusted_outside_development_mode(
    make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_JWT_KEYS"):
        CallerAuthenticator.from_settings(make_settings(dev_mode=False), gateway_keys)


async def test_pem_certificate_is_a_key_source(
    es_signer: Signer, tmp_path: Path, make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(es_signer.public)
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(es_signer.private, hashes.SHA256())  # type: ignore[arg-type]
    )
    path = tmp_path / "issuer.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    auth = CallerAuthenticator.from_settings(make_settings(jwt_keys=str(path)), gateway_keys)
    assert (await auth.authenticate(bearer(es_signer.token()))).service == "orders-service"


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt", "application/jwt"])
async def test_accepted_typ_values(typ: str, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    assert (await pem_auth.authenticate(bearer(ed_signer.token(headers={"typ": typ})))).service


async def test_audience_array_holding_ours_is_accepted(ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    token = ed_signer.token(aud=["another-api", AUDIENCE])
    assert (await pem_auth.authenticate(bearer(token))).service == "orders-service"


async def test_leeway_is_honoured(ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    now = int(time.time())
    # Default leeway 30 s: a token expired 10 s ago, or valid from 10 s on, is still accepted.
    assert await pem_auth.authenticate(bearer(ed_signer.token(exp=now - 10, jti="a")))
    assert await pem_auth.authenticate(bearer(ed_signer.token(nbf=now + 10, jti="b")))
    assert await pem_auth.authenticate(bearer(ed_signer.token(iat=now + 10, jti="c")))


async def test_a_cached_token_past_its_exp_is_accepted_within_the_leeway(
    ed_signer: Signer, pem_auth: CallerAuthenticator
) -> None:
    # What docs/authentication.md says (review-auth, documentation mismatch): at exp the cache entry is
    # no longer used, the token is verified afresh and accepted until exp plus the leeway (30 s).
    token = ed_signer.token(exp=time.time() + 0.5, jti="short")
    first = await pem_auth.authenticate(bearer(token))
    await asyncio.sleep(0.6)
    again = await pem_auth.authenticate(bearer(token))
    assert again == first
    assert again is not first  # verified afresh, not the cached caller
    assert (await refused(pem_auth, bearer(ed_signer.token(exp=time.time() - 31, jti="old")))).reason == "expired"


@pytest.mark.parametrize("header", ["Bearer {}", "bearer {}", "BEARER  {}", "Bearer {}  "])
async def test_bearer_scheme_is_case_insensitive(
    header: str, ed_signer: Signer, pem_auth: CallerAuthenticator,
) -> None:
    assert await pem_auth.authenticate([header.format(ed_signer.token())])


# --- scopes ------------------------------------------------------------------------------------------------


async def test_scopes(ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    token = ed_signer.token(scope="  disclose:carrier-tw-hct:delivery   disclose:maps-x:routing gateway:admin ")
    caller = await pem_auth.authenticate(bearer(token))
    assert caller.scopes == {"disclose:carrier-tw-hct:delivery", "disclose:maps-x:routing", "gateway:admin"}
    assert caller.may_disclose("carrier-tw-hct", "delivery")
    assert caller.may_disclose("maps-x", "routing")
    assert not caller.may_disclose("carrier-tw-hct", "marketing")
    assert not caller.may_disclose("maps-x", "delivery")
    assert not caller.may_disclose("carrier-tw", "hct:delivery")
    assert caller.has_scope("gateway:admin")
    assert not caller.has_scope("gateway:audit")
    assert disclose_scope("maps-x", "routing") in caller.scopes


async def test_no_scope_claim_means_no_scopes(ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    caller = await pem_auth.authenticate(bearer(ed_signer.token(scope=None, jti=None)))
    assert caller.scopes == frozenset()
    assert caller.token_id is None
    assert not caller.may_disclose("carrier-tw-hct", "delivery")


async def test_scope_must_be_a_string(ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    token = ed_signer.token(scope=["disclose:carrier-tw-hct:delivery"])
    assert (await refused(pem_auth, bearer(token))).reason == "scope"


@pytest.mark.parametrize(
    "separator",
    ["\u00a0", "\u2003", "\u3000", "\x1e", "\x1c", "\x85", "\u2028", "\t", "\n", "\r", "\x0b", "\x0c"],
)
async def test_scopes_are_split_on_space_only(
    separator: str, ed_signer: Signer, pem_auth: CallerAuthenticator
) -> None:
    # review-auth F3: str.split() also split on these, so one scope an issuer granted
    # (`reports:read<NBSP>gateway:admin`) read here as `gateway:admin`. The claim is refused instead.
    token = ed_signer.token(scope=f"reports:read{separator}gateway:admin", jti=f"sep-{ord(separator)}")
    assert (await refused(pem_auth, bearer(token))).reason == "scope"


@pytest.mark.parametrize("scope", ['say:"hi"', "back\\slash", "caf\u00e9", "nul\x00", "del\x7f"])
async def test_scope_characters_outside_rfc_6749_are_refused(
    scope: str, ed_signer: Signer, pem_auth: CallerAuthenticator
) -> None:
    token = ed_signer.token(scope=f"disclose:carrier-tw-hct:delivery {scope}")
    assert (await refused(pem_auth, bearer(token))).reason == "scope"


async def test_every_scope_token_character_is_accepted(ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    alphabet = "".join(chr(c) for c in range(0x21, 0x7F) if c not in (0x22, 0x5C))
    caller = await pem_auth.authenticate(bearer(ed_signer.token(scope=f" {alphabet}  gateway:audit ")))
    assert caller.scopes == {alphabet, "gateway:audit"}


# --- Authorization header ----------------------------------------------------------------------------------


async def test_missing_authorization(pem_auth: CallerAuthenticator) -> None:
    assert (await refused(pem_auth, [])).reason == "missing"


async def test_two_authorization_headers_are_refused(ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    token = ed_signer.token()
    assert await pem_auth.authenticate(bearer(token))  # each alone is fine (and now cached)
    assert (await refused(pem_auth, [f"Bearer {token}", f"Bearer {token}"])).reason == "header-count"
    other = ed_signer.token(jti="other")
    assert (await refused(pem_auth, [f"Bearer {token}", f"Bearer {other}"])).reason == "header-count"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Basic b3JkZXJzOnNlY3JldA==", "scheme"),
        ("Token abc.def.ghi", "scheme"),
        ("Bearer", "malformed"),
        ("Bearer ", "malformed"),
        ("", "scheme"),
    ],
)
async def test_bad_authorization_values(value: str, reason: str, pem_auth: CallerAuthenticator) -> None:
    assert (await refused(pem_auth, [value])).reason == reason


# --- algorithm attacks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "noNe", " none", "none "])
async def test_alg_none_in_any_casing(alg: str, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    header = {"alg": alg, "typ": "JWT", "kid": ed_signer.kid}
    error = await refused(pem_auth, bearer(forge(header, valid_claims())))
    assert error.reason == "algorithm"
    # The canonical unsigned form (empty signature) is refused as well.
    unsigned = forge(header, valid_claims(), signature=b"").rstrip(".") + "."
    assert (await refused(pem_auth, bearer(unsigned))).reason in {"algorithm", "malformed"}


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_signed_with_the_public_key_pem(
    alg: str, ed_signer: Signer, rsa_signer: Signer, write_pem: Callable[[Signer], Path],
    make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    # The classic key-confusion attack: HMAC keyed with the verifier's own public key file.
    for signer in (ed_signer, rsa_signer):
        path = write_pem(signer)
        auth = CallerAuthenticator.from_settings(make_settings(jwt_keys=str(path)), gateway_keys)
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        for kid in (signer.kid, None):
            header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
            if kid:
                header["kid"] = kid
            signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(valid_claims()).encode())}"
            mac = hmac.new(path.read_bytes(), signing_input.encode(), digest).digest()
            assert (await refused(auth, bearer(f"{signing_input}.{b64url(mac)}"))).reason == "algorithm"


def test_hmac_or_none_can_never_be_configured(
    ed_signer: Signer, write_pem: Callable[[Signer], Path], make_settings: Callable[..., Settings],
    gateway_keys: GatewayKeys,
) -> None:
    with pytest.raises(ConfigError):
        make_settings(jwt_algorithms="EdDSA,HS256")
    built = CallerAuthenticator.from_settings(make_settings(jwt_keys=str(write_pem(ed_signer))), gateway_keys)
    for algorithms in (["EdDSA", "HS256"], ["none"], []):
        with pytest.raises(ConfigError):
            CallerAuthenticator(built.keys, issuer=ISSUER, audience=AUDIENCE, algorithms=algorithms,
                                leeway_seconds=0)


async def test_es256_token_against_an_ed25519_key_set(
    ed_signer: Signer, es_signer: Signer, pem_auth: CallerAuthenticator,
) -> None:
    assert (await refused(pem_auth, bearer(es_signer.token(headers={"kid": None})))).reason == "algorithm"
    # Pointing the kid at the Ed25519 key does not make it verify ES256.
    assert (await refused(pem_auth, bearer(es_signer.token(headers={"kid": ed_signer.kid})))).reason == "algorithm"


@pytest.mark.parametrize("alg", ["EDDSA", "eddsa", "ES256K", "PS256", "RS1", "Ed25519"])
async def test_algorithm_outside_the_allowlist(alg: str, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    header = {"alg": alg, "typ": "JWT", "kid": ed_signer.kid}
    assert (await refused(pem_auth, bearer(forge(header, valid_claims())))).reason == "algorithm"


async def test_rsa_pss_only_when_allowed(
    rsa_signer: Signer, write_pem: Callable[[Signer], Path], make_settings: Callable[..., Settings],
    gateway_keys: GatewayKeys,
) -> None:
    path = str(write_pem(rsa_signer))
    default = CallerAuthenticator.from_settings(make_settings(jwt_keys=path), gateway_keys)
    assert (await refused(default, bearer(rsa_signer.token(alg="PS256")))).reason == "algorithm"
    pss = CallerAuthenticator.from_settings(make_settings(jwt_keys=path, jwt_algorithms="PS256"), gateway_keys)
    assert await pss.authenticate(bearer(rsa_signer.token(alg="PS256")))
    assert (await refused(pss, bearer(rsa_signer.token(alg="RS256")))).reason == "algorithm"


async def test_a_key_type_outside_the_allowlist_is_a_config_error(
    rsa_signer: Signer, write_pem: Callable[[Signer], Path], make_settings: Callable[..., Settings],
    gateway_keys: GatewayKeys,
) -> None:
    with pytest.raises(ConfigError, match="none of the allowed algorithms"):
        CallerAuthenticator.from_settings(
            make_settings(jwt_keys=str(write_pem(rsa_signer)), jwt_algorithms="EdDSA"), gateway_keys
        )


async def test_wrong_key(other_ed_signer: Signer, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    # Signed by another Ed25519 key but claiming the trusted key's kid.
    token = other_ed_signer.token(headers={"kid": ed_signer.kid})
    assert (await refused(pem_auth, bearer(token))).reason == "bad-signature"
    assert (await refused(pem_auth, bearer(other_ed_signer.token(headers={"kid": None})))).reason == "bad-signature"


async def test_tampered_payload(ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    head, _, sig = ed_signer.token().split(".")
    payload = b64url(json.dumps(valid_claims(scope="gateway:admin")).encode())
    assert (await refused(pem_auth, bearer(f"{head}.{payload}.{sig}"))).reason == "bad-signature"


# --- header attacks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../etc/passwd",
        "../keys/jwt-dev.pub.pem",
        "/dev/null",
        "' OR '1'='1' --",
        "1; DROP TABLE keys",
        "%2e%2e%2fjwt-dev.pub.pem",
        "http://127.0.0.1:1/jwks.json",
        "{kid}",
        "kid\x00.pem",
    ],
)
async def test_kid_injection(
    kid: str, other_ed_signer: Signer, ed_signer: Signer, pem_auth: CallerAuthenticator,
) -> None:
    assert (await refused(pem_auth, bearer(other_ed_signer.token(headers={"kid": kid})))).reason == "unknown-key"
    # Even signed by the trusted key, a kid the gateway does not know is refused, not interpreted.
    assert (await refused(pem_auth, bearer(ed_signer.token(headers={"kid": kid})))).reason == "unknown-key"


async def test_kid_naming_a_file_with_the_attackers_key(
    other_ed_signer: Signer, ed_signer: Signer, tmp_path: Path, write_jwks: Callable[[list[dict[str, Any]]], Path],
    make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    # The attacker's public key sits next to the real key set, and the kid names it by absolute and
    # relative path: a kid is a dictionary key, never a path.
    planted = tmp_path / "attacker.pub.pem"
    planted.write_bytes(other_ed_signer.public_pem())
    auth = CallerAuthenticator.from_settings(
        make_settings(jwt_keys=str(write_jwks([ed_signer.jwk("k1")]))), gateway_keys
    )
    for kid in (str(planted), "attacker.pub.pem", "./attacker.pub.pem", "../" + tmp_path.name + "/attacker.pub.pem"):
        assert (await refused(auth, bearer(other_ed_signer.token(headers={"kid": kid})))).reason == "unknown-key"


@pytest.mark.parametrize("kid", [17, ["k1"], {"k": "k1"}, "", "k" * 300])
async def test_kid_must_be_a_short_string(kid: Any, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    header = {"alg": "EdDSA", "typ": "JWT", "kid": kid}
    assert (await refused(pem_auth, bearer(forge(header, valid_claims())))).reason == "malformed"


@pytest.mark.parametrize("typ", ["JWS", "JOSE", "JOSE+JSON", "jwt ", "dpop+jwt", "application/json", "", 1])
async def test_wrong_typ(typ: Any, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    token = ed_signer.token(headers={"typ": typ}) if isinstance(typ, str) and typ else forge(
        {"alg": "EdDSA", "typ": typ, "kid": ed_signer.kid}, valid_claims()
    )
    assert (await refused(pem_auth, bearer(token))).reason == "typ"


async def test_missing_typ(ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    token = ed_signer.token(headers={"typ": None})
    assert "typ" not in json.loads(_segment(token, 0))
    assert (await refused(pem_auth, bearer(token))).reason == "typ"


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk", "x5c"])
async def test_key_carrying_headers(
    name: str, other_ed_signer: Signer, ed_signer: Signer, pem_auth: CallerAuthenticator,
) -> None:
    values = {
        "jku": "http://127.0.0.1:9/jwks.json",
        "x5u": "http://127.0.0.1:9/cert.pem",
        "jwk": other_ed_signer.jwk(),
        "x5c": ["MIIB"],
    }
    # Signed by the attacker with the key it embeds or points to ...
    token = other_ed_signer.token(headers={name: values[name], "kid": None})
    assert (await refused(pem_auth, bearer(token))).reason == "key-header"
    # ... and even by the trusted key: such a token is refused, not merely ignored.
    assert (await refused(pem_auth, bearer(ed_signer.token(headers={name: values[name]})))).reason == "key-header"


@pytest.mark.parametrize(
    "extra", [{"crit": ["exp"], "exp": 1}, {"crit": ["b64"], "b64": True}, {"crit": ["x-custom"]}, {"crit": []}]
)
async def test_crit_headers(extra: dict[str, Any], ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    header = {"alg": "EdDSA", "typ": "JWT", "kid": ed_signer.kid, **extra}
    assert (await refused(pem_auth, bearer(ed_signer.sign_raw(header, valid_claims())))).reason == "crit"


async def test_duplicate_header_members(ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    raw_header = '{"alg":"EdDSA","typ":"JWT","alg":"none"}'
    token = f"{b64url(raw_header.encode())}.{b64url(json.dumps(valid_claims()).encode())}.{b64url(b'x' * 64)}"
    assert (await refused(pem_auth, bearer(token))).reason == "malformed"


# --- claims ------------------------------------------------------------------------------------------------


async def test_expired(ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    token = ed_signer.token(exp=int(time.time()) - 120)
    assert (await refused(pem_auth, bearer(token))).reason == "expired"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_not_yet_valid(claim: str, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    token = ed_signer.token(**{claim: int(time.time()) + 300})
    assert (await refused(pem_auth, bearer(token))).reason == "not-yet-valid"


@pytest.mark.parametrize(
    "iss",
    ["evil-issuer", "partner-data-gateway", "partner-data-gateway-dev.evil", "xpartner-data-gateway-dev",
     "Partner-Data-Gateway-Dev", "partner-data-gateway-dev ", [ISSUER], 7],
)
async def test_wrong_issuer(iss: Any, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    assert (await refused(pem_auth, bearer(ed_signer.token(iss=iss)))).reason == "issuer"


@pytest.mark.parametrize(
    "aud",
    ["evil-api", "partner-data", "partner-data-gateway-x", "xpartner-data-gateway", "Partner-Data-Gateway",
     ["evil-api"], ["partner-data", "gateway"], ["partner-data-gateway-x"], 1, [1]],
)
async def test_wrong_audience(aud: Any, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    assert (await refused(pem_auth, bearer(ed_signer.token(aud=aud)))).reason == "audience"


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
async def test_required_claims(claim: str, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    assert (await refused(pem_auth, bearer(ed_signer.token(**{claim: None})))).reason == "missing-claim"


@pytest.mark.parametrize("sub", ["orders service", "orders\nservice", "", "-leading-dash", "x" * 201, 42, ["a"]])
async def test_sub_must_be_a_service_name(sub: Any, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    assert (await refused(pem_auth, bearer(ed_signer.token(sub=sub)))).reason in {"sub", "missing-claim"}


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_dates_must_be_numbers(claim: str, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    value = str(int(time.time()) + (600 if claim == "exp" else -10))
    assert (await refused(pem_auth, bearer(ed_signer.token(**{claim: value})))).reason == "malformed"


# --- malformed tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "abc.def",
        "a.b.c.d",
        "!!!.eyJ9.c2ln",
        "eyJhbGciOiJFZERTQSJ9.e yJ9.c2ln",
        "eyJhbGciOiJFZERTQSJ9=.eyJ9.c2ln",  # padding is not base64url
        "eyJhbGciOiJFZERTQSJ9+.eyJ9.c2ln",
        "eyJhbGciOiJFZERTQSJ9a.eyJ9.c2ln",  # length 4n+1: not decodable
        "eyJhbGciOiJFZERTQSJ8.eyJ9.c2ln",  # non-canonical final character
        b64url(b"not json") + ".eyJ9.c2ln",
        b64url(b"[1, 2]") + ".eyJ9.c2ln",
        b64url(b"\xff\xfe{}") + ".eyJ9.c2ln",
        b64url(b'{"alg": "EdDSA", "typ": "JWT"') + ".eyJ9.c2ln",
    ],
)
async def test_malformed_tokens(token: str, pem_auth: CallerAuthenticator) -> None:
    assert (await refused(pem_auth, bearer(token))).reason == "malformed"


async def test_malformed_payload_or_signature(ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    head, payload, sig = ed_signer.token().split(".")
    for token in (f"{head}.{b64url(b'not json')}.{sig}", f"{head}.{payload}.{sig}A", f"{head}.{b64url(b'[]')}.{sig}"):
        assert (await refused(pem_auth, bearer(token))).reason in {"malformed", "bad-signature"}


@pytest.mark.parametrize("size", [8193, 100_000, 5_000_000])
async def test_huge_token(size: int, ed_signer: Signer, pem_auth: CallerAuthenticator) -> None:
    padded = ed_signer.token(scope="x" * size)
    started = time.perf_counter()
    assert (await refused(pem_auth, bearer(padded))).reason == "too-large"
    assert time.perf_counter() - started < 0.5  # refused on its length, before any parsing


# --- key files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}, "symmetric"),
        ({"keys": []}, "no usable"),
        ({"nokeys": 1}, "JWKS object"),
        ([], "JWKS object"),
    ],
)
def test_bad_jwks_files(
    document: Any, message: str, tmp_path: Path, make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    path = tmp_path / "bad.jwks"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=message):
        CallerAuthenticator.from_settings(make_settings(jwt_keys=str(path)), gateway_keys)


def test_jwks_file_problems(
    ed_signer: Signer, es_signer: Signer, write_jwks: Callable[[list[dict[str, Any]]], Path],
    make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    def load(keys: list[dict[str, Any]]) -> CallerAuthenticator:
        return CallerAuthenticator.from_settings(make_settings(jwt_keys=str(write_jwks(keys))), gateway_keys)

    with pytest.raises(ConfigError, match="private key material"):
        load([{**ed_signer.jwk(), "d": "AAAA"}])
    with pytest.raises(ConfigError, match="duplicate kid"):
        load([ed_signer.jwk("same"), es_signer.jwk("same")])
    with pytest.raises(ConfigError, match="none of the allowed"):
        load([ed_signer.jwk(alg="EdDSA"), es_signer.jwk(alg="ES256", crv="P-256"), ed_signer.jwk("x", alg="ES256")])
    # Encryption keys and keys for algorithms outside the allowlist are skipped, not errors.
    auth = load([ed_signer.jwk("enc", use="enc"), es_signer.jwk("ps", alg="PS256"), es_signer.jwk("ok")])
    assert set(auth.keys.keyset.by_kid) == {"ok"}  # type: ignore[union-attr]


@pytest.mark.parametrize("content", [b"", b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n", b"{bad"])
def test_bad_key_files(
    content: bytes, tmp_path: Path, make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        CallerAuthenticator.from_settings(make_settings(jwt_keys=str(path)), gateway_keys)
    with pytest.raises(ConfigError, match="cannot read"):
        CallerAuthenticator.from_settings(make_settings(jwt_keys=str(tmp_path / "absent.pem")), gateway_keys)


def test_short_rsa_keys_are_refused(
    tmp_path: Path, make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "weak.pem"
    path.write_bytes(Signer(weak, "RS256", "w").public_pem())
    with pytest.raises(ConfigError, match="2048"):
        CallerAuthenticator.from_settings(make_settings(jwt_keys=str(path)), gateway_keys)


async def test_without_kid_only_an_unambiguous_key_verifies(
    ed_signer: Signer, other_ed_signer: Signer, write_jwks: Callable[[list[dict[str, Any]]], Path],
    make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    path = write_jwks([ed_signer.jwk("a"), other_ed_signer.jwk("b")])
    auth = CallerAuthenticator.from_settings(make_settings(jwt_keys=str(path)), gateway_keys)
    assert (await refused(auth, bearer(ed_signer.token(headers={"kid": None})))).reason == "unknown-key"
    assert await auth.authenticate(bearer(ed_signer.token(headers={"kid": "a"})))
    assert (await refused(auth, bearer(ed_signer.token(headers={"kid": "b"})))).reason == "bad-signature"


async def test_jwks_file_rotation_is_picked_up_on_an_unknown_kid(
    ed_signer: Signer, other_ed_signer: Signer, write_jwks: Callable[[list[dict[str, Any]]], Path],
    make_settings: Callable[..., Settings], gateway_keys: GatewayKeys,
) -> None:
    path = write_jwks([ed_signer.jwk("2025-01")])
    auth = CallerAuthenticator.from_settings(
        make_settings(jwt_keys=str(path), jwks_refresh_min_interval_seconds=0.01), gateway_keys
    )
    new_token = other_ed_signer.token(headers={"kid": "2025-02"})
    await asyncio.sleep(0.02)
    assert (await refused(auth, bearer(new_token))).reason == "unknown-key"
    write_jwks([ed_signer.jwk("2025-01"), other_ed_signer.jwk("2025-02")])
    await asyncio.sleep(0.02)
    assert await auth.authenticate(bearer(new_token))
    # A broken file during an edit keeps the last good set.
    path.write_text("{ half-written")
    await asyncio.sleep(0.02)
    assert (await refused(auth, bearer(ed_signer.token(headers={"kid": "2025-03"})))).reason == "unknown-key"
    assert await auth.authenticate(bearer(ed_signer.token(headers={"kid": "2025-01"}, jti="after-broken-file")))


async def test_a_key_withdrawn_from_a_jwks_file_is_dropped(
    ed_signer: Signer, other_ed_signer: Signer, write_jwks: Callable[[list[dict[str, Any]]], Path],
    make_settings: Callable[..., Settings], gateway_keys: GatewayKeys, caplog: pytest.LogCaptureFixture,
) -> None:
    # review-auth F2: a reload that reads a well-formed JWKS installs what it yields, even nothing.
    path = write_jwks([ed_signer.jwk("leaked")])
    auth = CallerAuthenticator.from_settings(
        make_settings(jwt_keys=str(path), jwks_refresh_min_interval_seconds=0.01), gateway_keys
    )
    leaked = ed_signer.token(headers={"kid": "leaked"})
    assert await auth.authenticate(bearer(leaked))

    async def reload() -> None:
        await asyncio.sleep(0.02)
        await auth.keys.refresh()

    # The next set lists the new key and a member the gateway cannot parse (X25519 without `use`).
    x25519 = {"kty": "OKP", "crv": "X25519", "kid": "ecdh", "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}
    write_jwks([other_ed_signer.jwk("new"), x25519])
    await reload()
    assert (await refused(auth, bearer(leaked))).reason == "unknown-key"
    assert await auth.authenticate(bearer(other_ed_signer.token(headers={"kid": "new"})))
    assert [(r.index, r.reason) for r in caplog.records if hasattr(r, "index")] == [(1, "invalid-key")]
    # An emptied set withdraws every key.
    write_jwks([])
    await reload()
    assert (await refused(auth, bearer(other_ed_signer.token(headers={"kid": "new"})))).reason == "keys-unavailable"
    # A half-written file is not a document: the (empty) set in force stays, and so does a good one.
    path.write_text('{"keys": [')
    await reload()
    assert auth.keys.keyset is not None
    assert dict(auth.keys.keyset.by_kid) == {}
    write_jwks([ed_signer.jwk("back")])
    await reload()
    path.write_text('{"keys": [')
    await reload()
    assert await auth.authenticate(bearer(ed_signer.token(headers={"kid": "back"})))


async def test_a_pem_file_replaced_by_an_unusable_key_withdraws_the_old_one(
    ed_signer: Signer, write_pem: Callable[[Signer], Path], make_settings: Callable[..., Settings],
    gateway_keys: GatewayKeys,
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = write_pem(ed_signer)
    auth = CallerAuthenticator.from_settings(
        make_settings(jwt_keys=str(path), jwks_refresh_min_interval_seconds=0.01), gateway_keys
    )
    assert await auth.authenticate(bearer(ed_signer.token()))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path.write_bytes(Signer(weak, "RS256", "w").public_pem())
    await asyncio.sleep(0.02)
    await auth.keys.refresh()
    assert (await refused(auth, bearer(ed_signer.token(jti="fresh")))).reason == "keys-unavailable"


def _segment(token: str, index: int) -> bytes:
    import base64

    part = token.split(".")[index]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

