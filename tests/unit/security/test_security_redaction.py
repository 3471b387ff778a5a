"""Redaction of headers, payload fields and free text."""

from __future__ import annotations

import copy
import urllib.parse

import pytest
from multidict import CIMultiDict

from seamline.security.redaction import REDACTED, is_sensitive_header, redact_fields, redact_headers, scrub_text
from seamline.security.secrets import Secret


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "proxy-authorization",
        "Cookie",
        "SET-COOKIE",
        "X-Api-Key",
        "X-Auth-Token",
        "X-CSRF-Token",
        "Stripe-Signature",
        "webhook-signature",
        "X-Hub-Signature-256",
        "X-Shopify-Hmac-Sha256",
        "X-Client-Secret",
        "X-Db-Password",
        "Api-Key",
        "X-Amz-Security-Token",
        "X-Session-Id",
    ],
)
def test_sensitive_headers(name: str) -> None:
    assert is_sensitive_header(name)
    assert redact_headers({name: "value-123"}) == {name: REDACTED}


@pytest.mark.parametrize("name", ["Content-Type", "X-Request-Id", "User-Agent", "Accept", "webhook-id"])
def test_ordinary_headers_pass(name: str) -> None:
    assert not is_sensitive_header(name)
    assert redact_headers({name: "text/plain"}) == {name: "text/plain"}


def test_redact_headers_shapes_and_extra() -> None:
    multi = CIMultiDict([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Via", "1.1 a"), ("Via", "1.1 b")])
    assert redact_headers(multi) == {"Set-Cookie": REDACTED, "Via": "1.1 a, 1.1 b"}
    pairs = [(b"X-Tenant-Pin", b"1234"), (b"Accept", b"*/*")]
    assert redact_headers(pairs, extra=["x-tenant-*"]) == {"X-Tenant-Pin": REDACTED, "Accept": "*/*"}


def test_redact_headers_scrubs_other_values_and_keeps_input() -> None:
    headers = {"Referer": "https://bob:hunter22@partner.example/cb?access_token=abc123&x=1", "Authorization": "B x"}
    before = dict(headers)
    out = redact_headers(headers)
    assert out["Referer"] == f"https://bob:***@partner.example/cb?access_token={REDACTED}&x=1"
    assert headers == before


def test_redact_fields_paths() -> None:
    doc = {
        "customer": {"name": "Ada", "card": {"number": "4111111111111111", "cvv": "123"}},
        "items": [{"sku": "A", "cvv": "1"}, {"sku": "B", "cvv": "2"}],
        "auth": {"user": {"password": "p1"}, "admins": [{"password": "p2", "name": "x"}]},
        "password": "top",
    }
    original = copy.deepcopy(doc)
    out = redact_fields(doc, ["customer.card.number", "items.*.cvv", "**.password", "missing.path", "items.0.sku"])
    assert out["customer"]["card"] == {"number": REDACTED, "cvv": "123"}
    assert out["items"] == [{"sku": REDACTED, "cvv": REDACTED}, {"sku": "B", "cvv": REDACTED}]
    assert out["auth"] == {"user": {"password": REDACTED}, "admins": [{"password": REDACTED, "name": "x"}]}
    assert out["password"] == REDACTED
    assert doc == original  # input untouched


def test_redact_fields_whole_subtrees_and_scalars() -> None:
    assert redact_fields({"a": {"b": 1}}, ["a"]) == {"a": REDACTED}
    assert redact_fields({"a": {"b": 1}}, ["a.**"]) == {"a": REDACTED}
    assert redact_fields([{"k": 1}, {"k": 2}], ["*.k"]) == [{"k": REDACTED}, {"k": REDACTED}]
    assert redact_fields("plain", ["a.b"]) == "plain"
    assert redact_fields({"a": "text"}, ["a.b"]) == {"a": "text"}
    for bad in ("", "a..b", ".a"):
        with pytest.raises(ValueError):
            redact_fields({}, [bad])


def test_scrub_known_secret_values() -> None:
    value = "sk_live_51HxScrubMe/with+chars=="
    Secret(value)  # creating a Secret registers its value for scrubbing
    text = f"sent {value} and {urllib.parse.quote(value, safe='')} and {urllib.parse.quote_plus(value)}"
    scrubbed = scrub_text(text)
    assert value not in scrubbed and "ScrubMe" not in scrubbed
    assert scrubbed.count(REDACTED) == 3
    assert scrub_text(scrubbed) == scrubbed  # idempotent


def test_short_values_are_not_scrubbed_as_secrets() -> None:
    Secret("abc")  # below the registry threshold: would redact every "abc" in every log line
    assert scrub_text("abc abcdef") == "abc abcdef"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:s3cr%40t@db:5432/orders", "postgresql://app:***@db:5432/orders"),
        ("amqp://guest:guest@rabbit/", "amqp://guest:***@rabbit/"),
        ("redis://:p@ss@cache:6379/0", "redis://:***@cache:6379/0"),
        ("mongodb+srv://u:pw@cluster0.example/db?x=1", "mongodb+srv://u:***@cluster0.example/db?x=1"),
        ("dsn=mysql://root:@localhost/db", "dsn=mysql://root:***@localhost/db"),
        ("http://host:8080/path", "http://host:8080/path"),
        ("mailto:user@example.com", "mailto:user@example.com"),
        ("Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig", f"Authorization: Bearer {REDACTED}"),
        ("Basic dXNlcjpwYXNzd29yZA==", f"Basic {REDACTED}"),
        ("Basic authentication failed", "Basic authentication failed"),
        ("the bearer tokenized it", "the bearer tokenized it"),
        ("GET /cb?code=xyz&state=1", f"GET /cb?code={REDACTED}&state=1"),
        ("https://maps.example/api?key=AIzaSy123&q=x", f"https://maps.example/api?key={REDACTED}&q=x"),
    ],
)
def test_scrub_text_patterns(text: str, expected: str) -> None:
    assert scrub_text(text) == expected
