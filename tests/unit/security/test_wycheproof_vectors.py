"""Wycheproof vectors (JWS, JWK, HMAC-SHA256, Ed25519), read in place from the conformance data.

Policy (see docs/adr/0004-security.md): no ``invalid`` vector is ever
accepted; every ``valid`` vector whose algorithm we support is accepted,
except the few listed in ``JWS_DEFECTS`` whose data contradicts its own
label or our documented key policy; ``acceptable`` vectors (none in these
files today) must be rejected, since we choose strictness when the spec
leaves room.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from seamline.security.errors import AuthError, SignatureError
from seamline.security.jwt import SUPPORTED_ALGORITHMS, VerifyKey, _signature_ok, load_keys, verify_jws
from seamline.security.webhooks import _ed25519_ok, verify_hmac

# tcId -> (our outcome, why it differs from the label)
JWS_DEFECTS: dict[int, tuple[str, str]] = {
    346: ("invalid", "JWK pins alg PS256, the token is PS384; a key's alg is binding (the rule behind 332/334/336)"),
    350: ("invalid", "same as 346 with key_ops"),
    347: ("invalid", "JWK names alg 'ES521', which does not exist; json_web_key tcId 19 requires rejecting it"),
    351: ("invalid", "same as 347 with key_ops"),
    367: ("valid", "labelled invalid but byte-identical to tcId 357 (valid): the padding is missing from the data"),
    370: ("valid", "same as 367"),
    372: ("invalid", "labelled valid but contains '?' in the base64url header; RFC 7515 section 2 forbids it"),
    373: ("invalid", "labelled valid but contains '?' in the base64url payload"),
}


def load(conformance_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((conformance_dir / "wycheproof" / name).read_text(encoding="utf-8"))


def cases_of(data: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(group, test) for group in data["testGroups"] for test in group["tests"]]


def jws_outcome(key_source: object, token: str) -> str:
    try:
        verify_jws(token, load_keys(key_source), SUPPORTED_ALGORITHMS)
    except AuthError:
        return "invalid"
    return "valid"


def tally(results: list[tuple[str, str]]) -> dict[str, int]:
    counts = {"valid_accepted": 0, "valid_rejected": 0, "invalid_rejected": 0, "invalid_accepted": 0}
    for expected, got in results:
        counts[f"{expected}_{'accepted' if got == 'valid' else 'rejected'}"] += 1
    return counts


def test_json_web_signature(conformance_dir: Path) -> None:
    data = load(conformance_dir, "json_web_signature_test.json")
    by_id = {t["tcId"]: t for _, t in cases_of(data)}
    results, mismatches = [], []
    for group, test in cases_of(data):
        assert test["result"] in ("valid", "invalid"), "an 'acceptable' vector appeared: decide and document it"
        got = jws_outcome(group.get("public") or group["private"], test["jws"])
        if test["tcId"] in JWS_DEFECTS:
            assert got == JWS_DEFECTS[test["tcId"]][0], test["tcId"]
            continue
        results.append((test["result"], got))
        if got != test["result"]:
            mismatches.append((test["tcId"], test["comment"], test["result"]))
    assert mismatches == []
    counts = tally(results)
    assert counts == {"valid_accepted": 40, "valid_rejected": 0, "invalid_rejected": 353, "invalid_accepted": 0}
    assert len(results) + len(JWS_DEFECTS) == data["numberOfTests"] == 401
    # the defects are what we say they are
    assert by_id[367]["jws"] == by_id[370]["jws"] == by_id[357]["jws"]
    for tc in (346, 347, 350, 351):
        group = next(g for g, t in cases_of(data) if t["tcId"] == tc)
        relabelled = {k: v for k, v in group["public"].items() if k != "alg"}
        assert jws_outcome(relabelled, by_id[tc]["jws"]) == "valid", tc


def test_json_web_key(conformance_dir: Path) -> None:
    data = load(conformance_dir, "json_web_key_test.json")
    results, mismatches = [], []
    for group, test in cases_of(data):
        assert test["result"] in ("valid", "invalid")
        got = jws_outcome(group.get("public") or group["private"], test["jws"])
        results.append((test["result"], got))
        if got != test["result"]:
            mismatches.append((test["tcId"], test["comment"]))
    assert mismatches == []
    assert tally(results) == {"valid_accepted": 5, "valid_rejected": 0, "invalid_rejected": 21, "invalid_accepted": 0}


def hmac_outcome(key: bytes, msg: bytes, tag: bytes) -> str:
    try:
        verify_hmac(key, {"X-Tag": tag.hex()}, msg, header="X-Tag")
    except SignatureError:
        return "invalid"
    return "valid"


def test_hmac_sha256(conformance_dir: Path) -> None:
    """Full 256-bit tags through the generic verifier; truncated tags are never accepted."""
    data = load(conformance_dir, "hmac_sha256_test.json")
    full, truncated = [], []
    for group, test in cases_of(data):
        assert test["result"] in ("valid", "invalid")
        got = hmac_outcome(bytes.fromhex(test["key"]), bytes.fromhex(test["msg"]), bytes.fromhex(test["tag"]))
        (full if group["tagSize"] == 256 else truncated).append((test["result"], got))
    assert tally(full) == {"valid_accepted": 33, "valid_rejected": 0, "invalid_rejected": 54, "invalid_accepted": 0}
    # 128-bit truncated tags are outside our policy: all refused, including the 33 labelled valid
    assert tally(truncated) == {
        "valid_accepted": 0,
        "valid_rejected": 33,
        "invalid_rejected": 54,
        "invalid_accepted": 0,
    }


@pytest.mark.parametrize("path", ["webhooks-v1a", "jwt-EdDSA"])
def test_ed25519(conformance_dir: Path, path: str) -> None:
    data = load(conformance_dir, "ed25519_test.json")
    results = []
    for group, test in cases_of(data):
        assert test["result"] in ("valid", "invalid")
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(group["publicKey"]["pk"]))
        msg, sig = bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
        if path == "webhooks-v1a":
            ok = _ed25519_ok(public, msg, sig)
        else:
            ok = _signature_ok(VerifyKey("OKP", public, crv="Ed25519"), "EdDSA", msg, sig)
        results.append((test["result"], "valid" if ok else "invalid"))
    assert tally(results) == {"valid_accepted": 88, "valid_rejected": 0, "invalid_rejected": 63, "invalid_accepted": 0}
