"""The ``http`` connector: REST sink, enrichment call step and polling source (aiohttp).

Registers ``sink http``, ``step http`` and ``source http``. Only the config
models are imported here; aiohttp and the client load when a flow builds one
of these components, so ``seamline --help`` stays fast.

Every component has one aiohttp session, TLS verification on by default,
the egress guard (templated URLs may not reach loopback, private, link-local
or metadata addresses unless ``egress`` allows it; checked on the resolved
address and on every redirect), outbound auth (``seamline.connectors.auth``),
a per-endpoint circuit breaker and adaptive rate limit, size limits, and
status codes classified into retryable and fatal errors.
"""

from __future__ import annotations

from typing import Any

from seamline.connectors.http._config import (
    EgressSettings,
    HttpCallConfig,
    HttpSinkConfig,
    HttpSourceConfig,
    PaginationConfig,
    TlsSettings,
    WatermarkConfig,
)
from seamline.core.registry import register

__all__ = [
    "EgressSettings",
    "HttpCallConfig",
    "HttpSinkConfig",
    "HttpSourceConfig",
    "PaginationConfig",
    "TlsSettings",
    "WatermarkConfig",
]


@register(
    "sink",
    "http",
    config=HttpSinkConfig,
    summary="Send each message to an HTTP endpoint (REST), with auth, idempotency key, breaker and rate limit.",
    examples=(
        "http: {url: 'https://crm.example.com/orders', auth: {type: bearer, token: '${env:CRM_TOKEN}'}}",
        "http: {method: PUT, url: 'https://api.example.com/customers/{body.id}', body: '{\"name\": name}'}",
    ),
)
def _http_sink(cfg: HttpSinkConfig, ctx: Any) -> Any:
    from seamline.connectors.http._components import HttpSink

    return HttpSink(cfg, ctx)


@register(
    "step",
    "http",
    config=HttpCallConfig,
    summary="Call an HTTP endpoint per message and merge the response into it (enrichment).",
    examples=(
        "http: {url: 'https://crm.example.com/customers/{body.customer_id}', "
        "merge: \"$merge([body, {'customer': response.body}])\"}",
    ),
)
def _http_call(cfg: HttpCallConfig, ctx: Any) -> Any:
    from seamline.connectors.http._components import HttpCallStep

    return HttpCallStep(cfg, ctx)


@register(
    "source",
    "http",
    config=HttpSourceConfig,
    summary="Poll an HTTP API with pagination; incremental by a watermark kept in the store.",
    examples=(
        "http: {url: 'https://api.example.com/orders', records: data, pagination: {type: cursor, "
        "cursor_path: meta.next}, watermark: {field: updated_at, param: updated_since}, interval: 1m}",
    ),
)
def _http_source(cfg: HttpSourceConfig, ctx: Any) -> Any:
    from seamline.connectors.http._source import HttpSource

    return HttpSource(cfg, ctx)
