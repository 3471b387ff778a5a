"""Outbound authentication for the HTTP connectors.

One config model per method, chosen with ``type``::

    auth: {type: basic, username: svc, password: "${env:PASS}"}
    auth: {type: bearer, token: "${env:TOKEN}"}
    auth: {type: api_key, name: X-API-Key, value: "${env:KEY}", in: header}
    auth: {type: oauth2_client_credentials, token_url: ..., client_id: ..., client_secret: "${env:SECRET}"}
    auth: {type: oauth2_refresh_token, token_url: ..., refresh_token: "${env:REFRESH}", client_id: ...}
    auth: {type: jwt_bearer, token_url: ..., issuer: ..., private_key_file: key.pem}   # RFC 7523
    auth: {type: mtls, cert_file: client.crt, key_file: client.key}

Token-based methods share one :class:`TokenAuth` machinery: the access token
is cached, shared by concurrent callers (N callers waiting for a token cause
one request to the token endpoint), refreshed ahead of its expiry, and
dropped once when the API answers 401, so the caller can retry exactly once.
A second 401 is the caller's fatal error: there is never a refresh loop.

Secrets never print: credentials are :class:`~seamline.security.secrets.Secret`
values (so any text that reaches an error, the journal or the DLQ is scrubbed
of them), token endpoint answers never appear in errors, and every
``repr`` shows the method and endpoint only.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from seamline.config.types import Duration, SecretStr
from seamline.core.clock import SYSTEM_CLOCK, Clock
from seamline.core.errors import FatalError, RetryableError
from seamline.security.redaction import scrub_text
from seamline.security.secrets import Secret

__all__ = [
    "ApiKeyAuth",
    "ApiKeyAuthConfig",
    "Auth",
    "AuthConfig",
    "BasicAuth",
    "BasicAuthConfig",
    "BearerAuth",
    "BearerAuthConfig",
    "ClientCredentialsAuth",
    "JwtBearerAuth",
    "JwtBearerAuthConfig",
    "MtlsAuth",
    "MtlsAuthConfig",
    "OAuth2ClientCredentialsConfig",
    "OAuth2RefreshTokenConfig",
    "RefreshTokenAuth",
    "TokenAuth",
    "TokenPoster",
    "build_auth",
]

#: ``(url, form fields, headers) -> (status, response headers, response body)``; raises
#: :class:`RetryableError` for timeouts and connection failures
TokenPoster = Callable[[str, dict[str, str], dict[str, str]], Awaitable[tuple[int, Mapping[str, str], bytes]]]

_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_MAX_TOKEN_BYTES = 1 << 20
_MAX_LIFETIME = 366 * 86400.0
_JWT_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)


# -- configuration -------------------------------------------------------------------------------


class _AuthModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)


class BasicAuthConfig(_AuthModel):
    """HTTP Basic authentication (RFC 7617)."""

    type: Literal["basic"] = Field(description="HTTP Basic: `Authorization: Basic base64(user:password)`.")
    username: str = Field(description="User name.")
    password: SecretStr = Field(description="Password; use a `${env:NAME}` or `${file:PATH}` reference.")


class BearerAuthConfig(_AuthModel):
    """A static bearer token."""

    type: Literal["bearer"] = Field(description="A static token sent as `Authorization: Bearer <token>`.")
    token: SecretStr = Field(description="The token; use a `${env:NAME}` or `${file:PATH}` reference.")
    scheme: str = Field("Bearer", pattern=r"^[A-Za-z][A-Za-z0-9._-]{0,31}$",
                        description="Authorization scheme word (e.g. `Token` for some APIs).")


class ApiKeyAuthConfig(_AuthModel):
    """An API key in a header or in the query string."""

    type: Literal["api_key"] = Field(description="An API key in a header or a query parameter.")
    name: str = Field("X-API-Key", pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$",
                      description="Header or query parameter name.")
    value: SecretStr = Field(description="The key; use a `${env:NAME}` or `${file:PATH}` reference.")
    in_: Literal["header", "query"] = Field(
        "header", alias="in", description="Where the key goes: `header` (recommended) or `query`."
    )
    prefix: str = Field("", description="Text put before the key in a header (e.g. `ApiKey `).")


class _TokenEndpoint(_AuthModel):
    token_url: str = Field(description="The OAuth2 token endpoint (`https://...`); checked by the egress guard.")
    scope: str | list[str] | None = Field(None, description="Scope(s) to request, a string or a list.")
    audience: str | None = Field(None, description="`audience` parameter (Auth0, Okta and others ask for it).")
    extra_params: dict[str, str] = Field(
        default_factory=dict, description="More form fields for the token request (e.g. `resource`)."
    )
    refresh_before: Duration = Field(
        60.0, description="Fetch a new token this long before the current one expires (capped at half its life)."
    )
    timeout: Duration = Field(10.0, description="Timeout of one token request.")


class OAuth2ClientCredentialsConfig(_TokenEndpoint):
    """OAuth2 client credentials grant (RFC 6749 section 4.4)."""

    type: Literal["oauth2_client_credentials"] = Field(description="OAuth2 client credentials grant.")
    client_id: str = Field(description="The client id.")
    client_secret: SecretStr = Field(description="The client secret; use a `${env:NAME}` or `${file:PATH}` reference.")
    client_auth: Literal["basic", "body"] = Field(
        "basic", description="How the client authenticates: HTTP Basic (`basic`) or form fields (`body`)."
    )


class OAuth2RefreshTokenConfig(_TokenEndpoint):
    """OAuth2 refresh token grant (RFC 6749 section 6): access tokens from a long-lived refresh token."""

    type: Literal["oauth2_refresh_token"] = Field(description="OAuth2 refresh token grant.")
    refresh_token: SecretStr = Field(description="The refresh token; use a `${env:NAME}` or `${file:PATH}` reference.")
    client_id: str | None = Field(None, description="The client id, if the server wants one.")
    client_secret: SecretStr | None = Field(None, description="The client secret, if the client is confidential.")
    client_auth: Literal["basic", "body"] = Field(
        "basic", description="How a confidential client authenticates: HTTP Basic or form fields."
    )


class JwtBearerAuthConfig(_TokenEndpoint):
    """JWT bearer assertion grant (RFC 7523 section 2.1), e.g. service accounts."""

    type: Literal["jwt_bearer"] = Field(description="OAuth2 JWT bearer assertion grant (RFC 7523).")
    issuer: str = Field(description="`iss` of the assertion (usually the client id or service account).")
    subject: str | None = Field(None, description="`sub` of the assertion (default: the issuer).")
    assertion_audience: str | None = Field(
        None, description="`aud` of the assertion (default: the token URL)."
    )
    private_key: SecretStr | None = Field(None, description="PEM private key text (a reference to a secret).")
    private_key_file: str | None = Field(None, description="PEM private key file (relative to the flow file).")
    private_key_password: SecretStr | None = Field(None, description="Password of an encrypted PEM key.")
    algorithm: Literal[
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
    ] = Field("RS256", description="Signing algorithm; must suit the key.")
    key_id: str | None = Field(None, description="`kid` header of the assertion.")
    lifetime: Duration = Field(300.0, description="Validity of each assertion (`exp - iat`).")
    claims: dict[str, Any] = Field(default_factory=dict, description="More claims for the assertion.")


class MtlsAuthConfig(_AuthModel):
    """Mutual TLS: the client presents a certificate."""

    type: Literal["mtls"] = Field(description="Mutual TLS with a client certificate.")
    cert_file: str = Field(description="PEM client certificate (chain) file, relative to the flow file.")
    key_file: str | None = Field(None, description="PEM private key file (default: inside `cert_file`).")
    key_password: SecretStr | None = Field(None, description="Password of an encrypted key.")


AuthConfig = Annotated[
    BasicAuthConfig
    | BearerAuthConfig
    | ApiKeyAuthConfig
    | OAuth2ClientCredentialsConfig
    | OAuth2RefreshTokenConfig
    | JwtBearerAuthConfig
    | MtlsAuthConfig,
    Field(discriminator="type"),
]


# -- runtime -------------------------------------------------------------------------------------


class Auth:
    """Adds credentials to outgoing requests. Subclasses never reveal secrets in ``repr``."""

    #: a 401 may be cured by fetching a new credential (token-based methods)
    refreshable: bool = False

    async def apply(self, headers: dict[str, str], params: list[tuple[str, str]]) -> object:
        """Add credentials to ``headers``/``params``; return a marker of the credential used."""
        return None

    def invalidate(self, marker: object) -> bool:
        """The server answered 401 to the credential ``marker``: drop it. True when a retry may help."""
        return False

    def client_cert(self) -> tuple[Path, Path | None, Secret | None] | None:
        """``(cert file, key file, key password)`` for mutual TLS, or None."""
        return None

    def bind(self, poster: TokenPoster) -> None:
        """Give a token-based method the means to call its token endpoint (the client's session)."""

    @property
    def token_url(self) -> str | None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BasicAuth(Auth):
    def __init__(self, username: str, password: Secret) -> None:
        raw = f"{username}:{password.reveal()}".encode()
        self._header = Secret("Basic " + base64.b64encode(raw).decode("ascii"), source="auth:basic")
        self._username = username

    async def apply(self, headers: dict[str, str], params: list[tuple[str, str]]) -> object:
        headers["Authorization"] = self._header.reveal()
        return None

    def __repr__(self) -> str:
        return f"BasicAuth(username={self._username!r}, password=**********)"


class BearerAuth(Auth):
    def __init__(self, token: Secret, scheme: str = "Bearer") -> None:
        self._header = Secret(f"{scheme} {token.reveal()}", source="auth:bearer")

    async def apply(self, headers: dict[str, str], params: list[tuple[str, str]]) -> object:
        headers["Authorization"] = self._header.reveal()
        return None

    def __repr__(self) -> str:
        return "BearerAuth(token=**********)"


class ApiKeyAuth(Auth):
    def __init__(self, name: str, value: Secret, where: str = "header", prefix: str = "") -> None:
        self.name = name
        self.where = where
        self._value = Secret(prefix + value.reveal(), source="auth:api_key") if prefix else value

    async def apply(self, headers: dict[str, str], params: list[tuple[str, str]]) -> object:
        if self.where == "query":
            params.append((self.name, self._value.reveal()))
        else:
            headers[self.name] = self._value.reveal()
        return None

    def __repr__(self) -> str:
        return f"ApiKeyAuth(name={self.name!r}, in={self.where!r}, value=**********)"


class MtlsAuth(Auth):
    def __init__(self, cert: Path, key: Path | None, password: Secret | None) -> None:
        for p in (cert, key):
            if p is not None and not p.is_file():
                raise FatalError(f"mutual TLS: file not found: {p.name}", code="auth.mtls.file_missing")
        self._cert, self._key, self._password = cert, key, password

    def client_cert(self) -> tuple[Path, Path | None, Secret | None] | None:
        return self._cert, self._key, self._password

    def __repr__(self) -> str:
        return f"MtlsAuth(cert={self._cert.name!r})"


@dataclass(frozen=True)
class _Token:
    value: Secret
    generation: int
    #: monotonic time it expires (None: unknown, used until a 401)
    expires_at: float | None
    #: monotonic time a new one is fetched
    refresh_at: float


def _unavailable(message: str, *, retry_after: float | None = None, status: int | None = None) -> RetryableError:
    return RetryableError(message, code="auth.oauth2.unavailable", retry_after=retry_after,
                          details={"status": status} if status else None)


def _client_basic(client_id: str, secret: Secret) -> str:
    # RFC 6749 section 2.3.1: both form-urlencoded before base64
    raw = f"{quote(client_id, safe='')}:{quote(secret.reveal(), safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class TokenAuth(Auth):
    """Base of the OAuth2 methods: token cache, single flight, refresh ahead, once on 401."""

    refreshable = True

    def __init__(
        self,
        token_url: str,
        *,
        scope: str | list[str] | None = None,
        audience: str | None = None,
        extra_params: Mapping[str, str] | None = None,
        refresh_before: float = 60.0,
        timeout: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._token_url = token_url
        #: seconds one token request may take
        self.timeout = float(timeout)
        self._scope = " ".join(scope) if isinstance(scope, list) else scope
        self._audience = audience
        self._extra = dict(extra_params or {})
        self._refresh_before = max(0.0, float(refresh_before))
        self._clock = clock
        self._token: _Token | None = None
        self._generation = 0
        self._inflight: asyncio.Future[_Token] | None = None
        self._poster: TokenPoster | None = None
        #: token requests made so far (metrics and tests)
        self.fetches = 0

    @property
    def token_url(self) -> str | None:
        return self._token_url

    def bind(self, poster: TokenPoster) -> None:
        self._poster = poster

    def __repr__(self) -> str:
        return f"{type(self).__name__}(token_url={self._token_url!r})"

    # -- what subclasses say --------------------------------------------------------------------
    def _grant(self) -> tuple[dict[str, str], dict[str, str]]:
        """Form fields and headers of one token request."""
        raise NotImplementedError

    def _on_response(self, data: Mapping[str, Any]) -> None:
        """Look at a successful token response (refresh token rotation)."""

    # -- the cache ------------------------------------------------------------------------------
    async def apply(self, headers: dict[str, str], params: list[tuple[str, str]]) -> object:
        token = await self._current()
        headers["Authorization"] = "Bearer " + token.value.reveal()
        return token.generation

    def invalidate(self, marker: object) -> bool:
        current = self._token
        if current is not None and current.generation == marker:
            self._token = None
        return True

    async def _current(self) -> _Token:
        now = self._clock.monotonic()
        token = self._token
        if token is not None and now < token.refresh_at:
            return token
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.ensure_future(self._fetch())
            task.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(task)
        except RetryableError:
            # the endpoint is down but the token we hold is still valid: keep using it
            if token is not None and (token.expires_at is None or now < token.expires_at):
                return token
            raise

    async def _fetch(self) -> _Token:
        try:
            if self._poster is None:
                raise FatalError("the token endpoint has no HTTP client bound", code="auth.oauth2.config")
            form, headers = self._grant()
            if self._scope:
                form.setdefault("scope", self._scope)
            if self._audience:
                form.setdefault("audience", self._audience)
            for k, v in self._extra.items():
                form.setdefault(k, v)
            headers.setdefault("Accept", "application/json")
            self.fetches += 1
            started = self._clock.monotonic()
            status, resp_headers, body = await self._poster(self._token_url, form, headers)
            token = self._parse(status, resp_headers, body, started)
            self._token = token
            return token
        finally:
            self._inflight = None

    def _parse(self, status: int, headers: Mapping[str, str], body: bytes, started: float) -> _Token:
        from seamline.resilience.http_classify import get_header, parse_retry_after

        where = "the token endpoint"
        if status >= 500 or status in (408, 425, 429):
            retry_after = parse_retry_after(get_header(headers, "Retry-After"), self._clock.now())
            raise _unavailable(f"{where} answered HTTP {status}", retry_after=retry_after, status=status)
        data = _json_object(body)
        if status != 200:
            error = data.get("error") if data is not None else None
            error = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else "unknown_error"
            desc = data.get("error_description") if data is not None else None
            text = f"{where} refused the request: {error} (HTTP {status})"
            if isinstance(desc, str) and desc.strip():
                text += ": " + scrub_text(" ".join(desc.split()))[:200]
            raise FatalError(text, code="auth.oauth2.refused", details={"status": status, "error": error})
        if data is None:
            raise _unavailable(f"{where} answered HTTP 200 without a JSON object", status=status)
        access = data.get("access_token")
        if not isinstance(access, str) or not access or len(access) > _MAX_TOKEN_BYTES or "\n" in access \
                or "\r" in access:
            raise FatalError(f"{where} answered without a usable access_token", code="auth.oauth2.bad_response")
        token_type = data.get("token_type")
        if token_type is not None and (not isinstance(token_type, str) or token_type.lower() != "bearer"):
            raise FatalError(f"{where} issued a token of type {str(token_type)[:20]!r}, not Bearer",
                             code="auth.oauth2.token_type")
        lifetime = data.get("expires_in")
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        seconds: float | None = None
        if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and math.isfinite(lifetime) \
                and lifetime > 0:
            seconds = min(float(lifetime), _MAX_LIFETIME)
        self._on_response(data)
        self._generation += 1
        value = Secret(access, source="oauth2:access_token")
        if seconds is None:
            return _Token(value, self._generation, None, math.inf)
        expires = started + seconds
        ahead = min(self._refresh_before, seconds / 2)
        return _Token(value, self._generation, expires, expires - ahead)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a failed shared fetch as seen even when every caller was cancelled."""
    if not task.cancelled():
        task.exception()


def _json_object(body: bytes) -> dict[str, Any] | None:
    import orjson

    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


class ClientCredentialsAuth(TokenAuth):
    def __init__(self, token_url: str, client_id: str, client_secret: Secret, *, client_auth: str = "basic",
                 **kw: Any) -> None:
        super().__init__(token_url, **kw)
        self._client_id = client_id
        self._secret = client_secret
        self._client_auth = client_auth

    def _grant(self) -> tuple[dict[str, str], dict[str, str]]:
        form = {"grant_type": "client_credentials"}
        headers: dict[str, str] = {}
        if self._client_auth == "basic":
            headers["Authorization"] = _client_basic(self._client_id, self._secret)
        else:
            form["client_id"] = self._client_id
            form["client_secret"] = self._secret.reveal()
        return form, headers

    def __repr__(self) -> str:
        return f"ClientCredentialsAuth(token_url={self._token_url!r}, client_id={self._client_id!r})"


class RefreshTokenAuth(TokenAuth):
    """Refresh token grant. A rotated refresh token (RFC 6749 section 6) is kept in memory."""

    def __init__(self, token_url: str, refresh_token: Secret, *, client_id: str | None = None,
                 client_secret: Secret | None = None, client_auth: str = "basic", **kw: Any) -> None:
        super().__init__(token_url, **kw)
        self._refresh = refresh_token
        self._client_id = client_id
        self._secret = client_secret
        self._client_auth = client_auth

    def _grant(self) -> tuple[dict[str, str], dict[str, str]]:
        form = {"grant_type": "refresh_token", "refresh_token": self._refresh.reveal()}
        headers: dict[str, str] = {}
        if self._client_id is not None and self._secret is not None and self._client_auth == "basic":
            headers["Authorization"] = _client_basic(self._client_id, self._secret)
        else:
            if self._client_id is not None:
                form["client_id"] = self._client_id
            if self._secret is not None:
                form["client_secret"] = self._secret.reveal()
        return form, headers

    def _on_response(self, data: Mapping[str, Any]) -> None:
        rotated = data.get("refresh_token")
        if isinstance(rotated, str) and rotated and len(rotated) < _MAX_TOKEN_BYTES:
            self._refresh = Secret(rotated, source="oauth2:refresh_token")

    def __repr__(self) -> str:
        return f"RefreshTokenAuth(token_url={self._token_url!r}, client_id={self._client_id!r})"


def _load_private_key(pem: bytes, password: Secret | None, algorithm: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem, password=password.reveal().encode() if password else None)
    except (ValueError, TypeError):
        raise FatalError("jwt_bearer: the private key is not a readable PEM private key (or the password is wrong)",
                         code="auth.jwt_bearer.key_invalid") from None
    family = algorithm[:2]
    fits = (
        (family in ("RS", "PS") and isinstance(key, rsa.RSAPrivateKey))
        or (family == "ES" and isinstance(key, ec.EllipticCurvePrivateKey))
        or (algorithm == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey))
    )
    if not fits:
        raise FatalError(f"jwt_bearer: the private key cannot sign {algorithm}", code="auth.jwt_bearer.key_invalid")
    return key


class JwtBearerAuth(TokenAuth):
    """RFC 7523 section 2.1: a signed JWT assertion is exchanged for an access token."""

    def __init__(self, token_url: str, *, issuer: str, private_key: Any, algorithm: str = "RS256",
                 subject: str | None = None, assertion_audience: str | None = None, key_id: str | None = None,
                 lifetime: float = 300.0, claims: Mapping[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(token_url, **kw)
        if algorithm not in _JWT_ALGORITHMS:
            raise FatalError(f"jwt_bearer: unsupported algorithm {algorithm!r}", code="auth.jwt_bearer.config")
        self._issuer = issuer
        self._subject = subject or issuer
        self._aud = assertion_audience or token_url
        self._key = private_key
        self._alg = algorithm
        self._kid = key_id
        self._lifetime = max(1.0, float(lifetime))
        self._claims = dict(claims or {})

    def assertion(self) -> str:
        import jwt

        now = int(self._clock.now())
        claims = {
            **self._claims,
            "iss": self._issuer,
            "sub": self._subject,
            "aud": self._aud,
            "iat": now,
            "exp": now + int(self._lifetime),
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self._kid} if self._kid else None
        return jwt.encode(claims, self._key, algorithm=self._alg, headers=headers)

    def _grant(self) -> tuple[dict[str, str], dict[str, str]]:
        return {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": self.assertion()}, {}

    def __repr__(self) -> str:
        return f"JwtBearerAuth(token_url={self._token_url!r}, issuer={self._issuer!r}, algorithm={self._alg!r})"


def build_auth(cfg: Any, *, resolve_path: Callable[[str], Path] = Path, clock: Clock = SYSTEM_CLOCK) -> Auth | None:
    """The runtime object for an auth config (None for None)."""
    if cfg is None:
        return None
    if isinstance(cfg, BasicAuthConfig):
        return BasicAuth(cfg.username, cfg.password)
    if isinstance(cfg, BearerAuthConfig):
        return BearerAuth(cfg.token, cfg.scheme)
    if isinstance(cfg, ApiKeyAuthConfig):
        return ApiKeyAuth(cfg.name, cfg.value, cfg.in_, cfg.prefix)
    if isinstance(cfg, MtlsAuthConfig):
        return MtlsAuth(resolve_path(cfg.cert_file), resolve_path(cfg.key_file) if cfg.key_file else None,
                        cfg.key_password)
    common: dict[str, Any] = {
        "scope": cfg.scope,
        "audience": cfg.audience,
        "extra_params": cfg.extra_params,
        "refresh_before": cfg.refresh_before,
        "timeout": cfg.timeout,
        "clock": clock,
    }
    if isinstance(cfg, OAuth2ClientCredentialsConfig):
        return ClientCredentialsAuth(cfg.token_url, cfg.client_id, cfg.client_secret, client_auth=cfg.client_auth,
                                     **common)
    if isinstance(cfg, OAuth2RefreshTokenConfig):
        return RefreshTokenAuth(cfg.token_url, cfg.refresh_token, client_id=cfg.client_id,
                                client_secret=cfg.client_secret, client_auth=cfg.client_auth, **common)
    if isinstance(cfg, JwtBearerAuthConfig):
        if (cfg.private_key is None) == (cfg.private_key_file is None):
            raise FatalError("jwt_bearer: give exactly one of private_key and private_key_file",
                             code="auth.jwt_bearer.config")
        if cfg.private_key is not None:
            pem = cfg.private_key.reveal().encode()
        else:
            assert cfg.private_key_file is not None
            path = resolve_path(cfg.private_key_file)
            try:
                pem = path.read_bytes()
            except OSError:
                raise FatalError(f"jwt_bearer: cannot read the private key file {path.name}",
                                 code="auth.jwt_bearer.key_invalid") from None
        key = _load_private_key(pem, cfg.private_key_password, cfg.algorithm)
        return JwtBearerAuth(cfg.token_url, issuer=cfg.issuer, private_key=key, algorithm=cfg.algorithm,
                             subject=cfg.subject, assertion_audience=cfg.assertion_audience, key_id=cfg.key_id,
                             lifetime=cfg.lifetime, claims=cfg.claims, **common)
    raise TypeError(f"not an auth config: {type(cfg).__name__}")

