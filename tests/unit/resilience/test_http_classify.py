"""HTTP classification table, Retry-After and rate-limit header parsing, error building."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seamline.core.errors import FatalError, RetryableError
from seamline.resilience.http_classify import (
    DEFAULT_MAX_RETRY_AFTER,
    classify_status,
    endpoint_key,
    error_for_response,
    get_header,
    parse_rate_limit_headers,
    parse_retry_after,
    redact_url,
)
from seamline.security.secrets import Secret

NOW = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT, the RFC 9110 example date


class TestClassifyStatus:
    @pytest.mark.parametrize("status", [200, 201, 202, 204, 206, 299])
    def test_ok(self, status: int) -> None:
        assert classify_status(status) == "ok"

    @pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 507, 511, 599])
    def test_retryable(self, status: int) -> None:
        assert classify_status(status) == "retryable"

    @pytest.mark.parametrize(
        "status", [400, 401, 403, 404, 405, 409, 410, 413, 415, 422, 426, 499, 501, 100, 301, 302, 304, 0, 600]
    )
    def test_fatal(self, status: int) -> None:
        assert classify_status(status) == "fatal"

    @pytest.mark.parametrize(
        "headers",
        [
            {"Retry-After": "60"},
            {"x-ratelimit-remaining": "0"},
            {"RateLimit-Remaining": "0"},
            {"RateLimit": '"default";r=0;t=60'},
        ],
    )
    def test_a_4xx_that_says_come_back_later_is_retryable(self, headers: dict[str, str]) -> None:
        assert classify_status(403, headers) == "retryable"

    def test_rate_limit_headers_with_quota_left_do_not_rescue_a_4xx(self) -> None:
        assert classify_status(403, {"X-RateLimit-Remaining": "10"}) == "fatal"
        assert classify_status(403, {"Retry-After": "garbage"}) == "fatal"

    def test_overrides_by_code_and_class(self) -> None:
        overrides: dict[int | str, str] = {409: "ok", "404": "retryable", "5xx": "fatal", 503: "retryable"}
        assert classify_status(409, overrides=overrides) == "ok"
        assert classify_status(404, overrides=overrides) == "retryable"
        assert classify_status(500, overrides=overrides) == "fatal"
        assert classify_status(503, overrides=overrides) == "retryable"  # exact code beats class
        assert classify_status(400, overrides=overrides) == "fatal"

    def test_invalid_override(self) -> None:
        with pytest.raises(ValueError, match="'ok', 'retryable' or 'fatal'"):
            classify_status(404, overrides={404: "ignore"})


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            ("120", 120.0),
            ("0", 0.0),
            (" 7 ", 7.0),
            ("1.5", 1.5),
            ("Sun, 06 Nov 1994 08:49:47 GMT", 10.0),  # IMF-fixdate
            ("Sunday, 06-Nov-94 08:49:47 GMT", 10.0),  # obsolete RFC 850
            ("Sun Nov  6 08:49:47 1994", 10.0),  # asctime
            ("Sun, 06 Nov 1994 08:00:00 GMT", 0.0),  # in the past
        ],
    )
    def test_valid(self, value: str, seconds: float) -> None:
        assert parse_retry_after(value, NOW) == pytest.approx(seconds)

    @pytest.mark.parametrize(
        "value",
        [None, "", "  ", "soon", "-5", "+5", "1e3", "12abc", "NaN", "inf", "Mon, 99 Foo 2020", "0x10", "a" * 200],
    )
    def test_garbage_is_none(self, value: str | None) -> None:
        assert parse_retry_after(value, NOW) is None

    def test_capped(self) -> None:
        assert parse_retry_after("99999999999999999999", NOW) == DEFAULT_MAX_RETRY_AFTER
        assert parse_retry_after("86400", NOW, cap=600) == 600
        assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", NOW) == DEFAULT_MAX_RETRY_AFTER

    def test_defaults_to_the_system_clock(self) -> None:
        import time

        later = formatdate(time.time() + 100, usegmt=True)
        assert parse_retry_after(later) == pytest.approx(100, abs=2)

    @given(st.text(max_size=80))
    def test_never_raises_and_stays_in_bounds(self, value: str) -> None:
        result = parse_retry_after(value, NOW)
        assert result is None or 0 <= result <= DEFAULT_MAX_RETRY_AFTER


class TestRateLimitHeaders:
    def test_x_ratelimit_epoch_seconds_and_milliseconds(self) -> None:
        now = 1_700_000_000.0
        info = parse_rate_limit_headers(
            {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1700000030"}, now
        )
        assert (info.limit, info.remaining, info.reset_after, info.wait) == (60, 0, 30.0, 30.0)
        info = parse_rate_limit_headers({"X-RateLimit-Reset": "1700000045000"}, now)
        assert info.reset_after == pytest.approx(45)

    def test_ietf_fields_win_over_x_fields(self) -> None:
        info = parse_rate_limit_headers(
            {
                "RateLimit-Limit": "100, 100;w=60",
                "RateLimit-Remaining": "3",
                "RateLimit-Reset": "10",
                "X-RateLimit-Remaining": "50",
            }
        )
        assert (info.limit, info.remaining, info.reset_after) == (100, 3, 10.0)
        assert info.wait is None  # quota left, no Retry-After

    def test_structured_ratelimit_picks_the_tightest_policy(self) -> None:
        info = parse_rate_limit_headers({"RateLimit": '"hour";r=40;t=1800, "second";r=0;t=1'})
        assert (info.remaining, info.reset_after) == (0, 1.0)
        info = parse_rate_limit_headers({"RateLimit": "limit=100, remaining=5, reset=9"})
        assert (info.limit, info.remaining, info.reset_after) == (100, 5, 9.0)

    def test_retry_after_wins(self) -> None:
        info = parse_rate_limit_headers({"Retry-After": "5", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "60"})
        assert info.wait == 5

    def test_garbage(self) -> None:
        info = parse_rate_limit_headers({"X-RateLimit-Remaining": "-1", "X-RateLimit-Reset": "soon", "RateLimit": "x"})
        assert (info.limit, info.remaining, info.reset_after, info.retry_after) == (None, None, None, None)
        assert parse_rate_limit_headers(None).wait is None

    def test_header_lookup_is_case_insensitive(self) -> None:
        assert get_header({"retry-after": "1"}, "Retry-After") == "1"
        assert get_header({}, "Retry-After") is None


class TestErrorForResponse:
    def test_retryable_with_retry_after(self) -> None:
        err = error_for_response(
            503, {"Retry-After": "7"}, b'{"error": "maintenance"}', "https://erp.example.com/orders", method="post"
        )
        assert isinstance(err, RetryableError)
        assert err.code == "http.status.503"
        assert err.retry_after == 7
        assert "POST https://erp.example.com/orders answered HTTP 503 Service Unavailable" in err.message
        assert "maintenance" in err.message
        assert err.details["status"] == 503

    def test_429_uses_the_quota_reset_when_no_retry_after(self) -> None:
        err = error_for_response(429, {"RateLimit-Remaining": "0", "RateLimit-Reset": "12"}, None, "https://x")
        assert isinstance(err, RetryableError)
        assert err.retry_after == 12

    def test_retryable_without_hint(self) -> None:
        err = error_for_response(502, {}, "", "https://x")
        assert isinstance(err, RetryableError)
        assert err.retry_after is None

    def test_http_date_retry_after(self) -> None:
        err = error_for_response(503, {"Retry-After": "Sun, 06 Nov 1994 08:50:37 GMT"}, None, "https://x", now=NOW)
        assert isinstance(err, RetryableError)
        assert err.retry_after == 60

    def test_fatal_with_hint(self) -> None:
        err = error_for_response(404, {}, "<html>Not here</html>", "https://api.example.com/v1/ordr")
        assert isinstance(err, FatalError)
        assert not err.retryable
        assert err.code == "http.status.404"
        assert "check the URL" in err.message

    def test_unfollowed_redirect(self) -> None:
        err = error_for_response(301, {"Location": "https://new.example.com/x"}, None, "http://old.example.com/x")
        assert isinstance(err, FatalError)
        assert "redirect was not followed (Location: https://new.example.com/x)" in err.message

    def test_override_applies(self) -> None:
        err = error_for_response(404, {}, None, "https://x", overrides={404: "retryable"})
        assert isinstance(err, RetryableError)

    def test_ok_status_has_no_error(self) -> None:
        with pytest.raises(ValueError, match="classified 'ok'"):
            error_for_response(200, {}, None, "https://x")

    def test_url_and_body_are_redacted_and_shortened(self) -> None:
        token = Secret("s3cr3t-token-value")
        err = error_for_response(
            500,
            {},
            f"echo: Bearer {token.reveal()} " + "x" * 1000,
            "https://user:pw@api.example.com/p?api_key=abc&page=2",
        )
        text = str(err)
        assert "s3cr3t-token-value" not in text
        assert "user:pw" not in text and "abc" not in text
        assert "api_key=***&page=2" in text
        assert len(err.details["body"]) < 400

    def test_unknown_status(self) -> None:
        err = error_for_response(599, {}, None, None)
        assert isinstance(err, RetryableError)
        assert "the endpoint answered HTTP 599 Unknown Status" in err.message


class TestEndpointKeyAndRedaction:
    @pytest.mark.parametrize(
        ("url", "key"),
        [
            ("https://API.Example.com/v1/orders?x=1", "https://api.example.com:443"),
            ("https://api.example.com:443", "https://api.example.com:443"),
            ("http://api.example.com", "http://api.example.com:80"),
            ("http://user:pw@localhost:8080/x", "http://localhost:8080"),
            ("http://[::1]:9000/", "http://[::1]:9000"),
            ("kafka://broker:9092", "kafka://broker:9092"),
            ("sftp://files.example.com/in", "sftp://files.example.com"),
        ],
    )
    def test_endpoint_key(self, url: str, key: str) -> None:
        assert endpoint_key(url) == key

    @pytest.mark.parametrize("url", ["api.example.com", "/just/a/path", "https://"])
    def test_endpoint_key_needs_scheme_and_host(self, url: str) -> None:
        with pytest.raises(ValueError, match="scheme and a host"):
            endpoint_key(url)

    def test_redact_url(self) -> None:
        assert (
            redact_url("https://u:p@h.example.com/a?token=t&sig=s&q=x#frag")
            == "https://h.example.com/a?token=***&sig=***&q=x"
        )
