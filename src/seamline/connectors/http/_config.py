"""Config models of the ``http`` source, sink and call step (pydantic only: cheap to import)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from seamline.config.models import (
    BreakerSettings,
    CallStepConfig,
    RateLimitSettings,
    SinkConfig,
    SourceConfig,
)
from seamline.config.types import ByteSize, Duration, MaybeSecret
from seamline.connectors.auth import AuthConfig

__all__ = [
    "EgressSettings",
    "HttpCallConfig",
    "HttpSinkConfig",
    "HttpSourceConfig",
    "PaginationConfig",
    "TlsSettings",
    "WatermarkConfig",
]

Verdict = Literal["ok", "retryable", "fatal"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)


class TlsSettings(_Model):
    """TLS of outbound connections (verification is on unless switched off here)."""

    verify: bool = Field(True, description="Verify the server certificate and host name. Switch off only for tests.")
    ca_file: str | None = Field(None, description="PEM bundle of CAs to trust instead of the system ones.")


class EgressSettings(_Model):
    """Which hosts this component may call (SSRF guard, checked on the resolved address and every redirect)."""

    allow_hosts: list[str] | None = Field(
        None, description="Host name globs (`api.example.com`, `*.example.com`); when set, nothing else is reached."
    )
    allow_loopback: bool = Field(False, description="Allow 127.0.0.0/8, ::1 and localhost (local development, tests).")
    allow_private: bool = Field(False, description="Allow private (RFC 1918, ULA) and CGNAT addresses.")
    allow_networks: list[str] = Field(
        default_factory=list, description="CIDRs allowed even though they are in a blocked range."
    )


class _Request(_Model):
    """What every HTTP component shares: the request, its auth, limits and guards."""

    url: str = Field(
        description="URL; `{expression}` placeholders are JSONata over the message context, URL-encoded "
        "(e.g. `https://crm.example.com/customers/{body.customer_id}`); `{{` and `}}` are literal braces."
    )
    headers: dict[str, MaybeSecret] = Field(
        default_factory=dict,
        description="Request headers; values may hold `{expression}` placeholders or `${env:NAME}` secrets.",
    )
    params: dict[str, str] = Field(
        default_factory=dict, description="Query parameters; values may hold `{expression}` placeholders."
    )
    auth: AuthConfig | None = Field(None, description="Outbound authentication (see the `type` variants).")
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS verification settings.")
    egress: EgressSettings = Field(default_factory=EgressSettings, description="Outbound host guard.")
    connect_timeout: Duration = Field(10.0, description="Time to establish a connection (retryable on expiry).")
    request_timeout: Duration = Field(30.0, description="Time for one whole request and response (retryable).")
    max_request_bytes: ByteSize = Field(10 * 2**20, description="Larger request bodies fail at once (fatal).")
    max_response_bytes: ByteSize = Field(
        10 * 2**20, description="Larger (decompressed) response bodies are an error where the body is used."
    )
    max_connections: int = Field(64, ge=1, le=4096, description="Open connections of this component at most.")
    status: dict[str, Verdict] = Field(
        default_factory=dict,
        description="Override the meaning of a status code or class: `{'409': ok, '4xx': retryable}`.",
    )
    follow_redirects: bool = Field(
        False, description="Follow 301/302/303/307/308 (each hop is checked by the egress guard; credentials "
        "are not sent to another origin)."
    )
    max_redirects: int = Field(5, ge=0, le=20, description="Redirect hops followed at most.")
    breaker: BreakerSettings | None = Field(
        None, description="Circuit breaker for the endpoint: while open, requests wait (no attempt is spent)."
    )
    rate_limit: RateLimitSettings | None = Field(
        None, description="Rate limit for the endpoint (429 / Retry-After / rate-limit headers are honoured anyway)."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.lower().startswith(("http://", "https://", "{")):
            raise ValueError("the URL must start with http:// or https://")
        return url

    @field_validator("status")
    @classmethod
    def _status_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not (key.isdigit() and len(key) == 3) and not (len(key) == 3 and key[0].isdigit()
                                                              and key[1:].lower() == "xx"):
                raise ValueError(f"status override {key!r}: use a code such as '409' or a class such as '4xx'")
        return value


class HttpSinkConfig(SinkConfig, _Request):
    """Send each message to an HTTP endpoint (REST)."""

    method: Literal["POST", "PUT", "PATCH", "DELETE"] = Field("POST", description="HTTP method.")
    body: str | None = Field(
        None, description="JSONata building the request body from `{body, headers, id, correlation_id}`; "
        "default: the message body as it is."
    )
    body_format: Literal["json", "form", "text"] = Field(
        "json", description="How a mapped `body` is encoded (the message body as it is keeps its content type)."
    )
    idempotency_header: str | None = Field(
        "Idempotency-Key", description="Header carrying the message id, so a retried request is recognised; "
        "null to leave it out."
    )
    max_in_flight: int = Field(
        16, ge=1, le=1024, description="Requests in flight at once within a batch (1 keeps the batch order)."
    )


class HttpCallConfig(CallStepConfig, _Request):
    """Call an HTTP endpoint for each message and merge the answer into it (enrichment)."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field("GET", description="HTTP method.")
    body: str | None = Field(
        None, description="JSONata building a request body from `{body, headers, id, correlation_id}` "
        "(none for GET by default)."
    )
    body_format: Literal["json", "form", "text"] = Field("json", description="Encoding of a mapped `body`.")
    merge: str | None = Field(
        None, description="JSONata over `{body, headers, id, response: {status, headers, body}}` giving the new "
        "message body, e.g. `$merge([body, {'customer': response.body}])`; default: the response body."
    )
    response_format: Literal["auto", "json", "text"] = Field(
        "auto", description="How the response body is read: JSON, text, or by its content type."
    )
    follow_redirects: bool = Field(True, description="Follow redirects (checked by the egress guard per hop).")


class PaginationConfig(_Model):
    """How the polling source walks through pages."""

    type: Literal["none", "page", "offset", "cursor", "link", "next_url"] = Field(
        "none", description="`page` number, `offset`/limit, `cursor` token at a path, RFC 8288 `link` header "
        "(rel=next), `next_url` at a path of the body, or `none`."
    )
    page_param: str = Field("page", description="Query parameter of the page number (type page).")
    start_page: int = Field(1, ge=0, description="First page number (type page).")
    size_param: str | None = Field(None, description="Query parameter of the page size (type page).")
    size: int | None = Field(None, ge=1, description="Page size sent and expected (type page).")
    offset_param: str = Field("offset", description="Query parameter of the offset (type offset).")
    limit_param: str = Field("limit", description="Query parameter of the limit (type offset).")
    limit: int = Field(100, ge=1, description="Records per request (type offset).")
    cursor_param: str = Field("cursor", description="Query parameter of the cursor (type cursor).")
    cursor_path: str | None = Field(None, description="JSONata to the next cursor in the body (type cursor).")
    next_url_path: str | None = Field(None, description="JSONata to the next page URL in the body (type next_url).")
    stop_on_short_page: bool = Field(
        True, description="A page with fewer records than the page size/limit is the last (page and offset)."
    )
    max_pages: int = Field(1000, ge=1, description="Pages read per poll at most.")


class WatermarkConfig(_Model):
    """Incremental polling: only records newer than the last acknowledged maximum."""

    field: str = Field(description="JSONata over a record giving its watermark value (e.g. `updated_at`).")
    param: str | None = Field(
        None, description="Query parameter that sends the current watermark (e.g. `updated_since`)."
    )
    initial: str | int | float | None = Field(None, description="Watermark of the very first poll.")
    max_ids: int = Field(
        1000, ge=1, description="Ids remembered at the watermark value itself, so ties are not delivered twice."
    )


class HttpSourceConfig(SourceConfig, _Request):
    """Poll an HTTP API: pagination, incremental by a watermark kept in the store."""

    method: Literal["GET", "POST"] = Field("GET", description="HTTP method.")
    records: str | None = Field(
        None, description="JSONata to the list of records in a response body (default: the body if it is a list, "
        "else the body as one record)."
    )
    id: str | None = Field(
        None, description="JSONata over a record giving the message id (default: a digest of the record)."
    )
    pagination: PaginationConfig = Field(default_factory=PaginationConfig, description="Pagination.")
    watermark: WatermarkConfig | None = Field(None, description="Incremental polling by a watermark field.")
    interval: Duration | None = Field(
        None, description="Poll again after this long; unset: one pass through all pages, then the source ends."
    )
    max_attempts: int = Field(5, ge=1, le=100, description="Attempts for one page request before the poll fails.")
    follow_redirects: bool = Field(True, description="Follow redirects (checked by the egress guard per hop).")

