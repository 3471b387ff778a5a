"""Guard outbound connections against SSRF.

:class:`EgressPolicy` decides whether seamline may connect to a host or an
IP address. It blocks loopback, private (RFC 1918, ULA), CGNAT
(100.64.0.0/10), link-local, cloud metadata endpoints, unspecified,
multicast and reserved/documentation ranges, whatever the spelling of the
address: decimal (``2130706433``), octal (``0177.0.0.1``), hex
(``0x7f.1``), short forms (``127.1``), IPv4-mapped IPv6
(``::ffff:127.0.0.1``), IPv4-compatible IPv6, NAT64 (``64:ff9b::7f00:1``),
6to4 (``2002:7f00:1::``) and Teredo.

For aiohttp, :meth:`EgressPolicy.client_session` (or :meth:`connector` plus
:meth:`trace_config`) checks three times: the URL before the request, every
redirect target before it is followed, and the *resolved* addresses at
connect time (:class:`GuardedResolver`), so a name that resolves to a
blocked address (DNS rebinding) is refused too.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from seamline.security.errors import EgressError

if TYPE_CHECKING:
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult
    from yarl import URL

__all__ = ["EgressPolicy", "GuardedResolver", "classify_ip", "parse_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
_METADATA_IPS = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd20:ce::254",  # GCP metadata over IPv6
    )
)
_METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)
_V4_RANGES: tuple[tuple[str, ipaddress.IPv4Network], ...] = tuple(
    (category, _V4(net))
    for category, nets in (
        ("unspecified", ["0.0.0.0/8"]),
        ("loopback", ["127.0.0.0/8"]),
        ("private", ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]),
        ("cgnat", ["100.64.0.0/10"]),
        ("link_local", ["169.254.0.0/16"]),
        ("multicast", ["224.0.0.0/4"]),
        (
            "reserved",
            [
                "240.0.0.0/4",  # includes 255.255.255.255
                "192.0.0.0/24",
                "192.0.2.0/24",
                "192.88.99.0/24",
                "198.18.0.0/15",
                "198.51.100.0/24",
                "203.0.113.0/24",
            ],
        ),
    )
    for net in nets
)
_V6_RANGES: tuple[tuple[str, ipaddress.IPv6Network], ...] = tuple(
    (category, _V6(net))
    for category, nets in (
        ("private", ["fc00::/7", "fec0::/10", "64:ff9b:1::/48"]),
        ("link_local", ["fe80::/10"]),
        ("multicast", ["ff00::/8"]),
        (
            "reserved",
            ["100::/64", "2001:db8::/32", "3fff::/20", "2001:2::/48", "2001:10::/28", "5f00::/16"],
        ),
    )
    for net in nets
)
_GLOBAL_UNICAST = _V6("2000::/3")
_NAT64 = _V6("64:ff9b::/96")
_SIX_TO_FOUR = _V6("2002::/16")
_TEREDO = _V6("2001::/32")
_V4_COMPATIBLE = _V6("::/96")
_FLAGS = {"loopback": "allow_loopback", "private": "allow_private", "cgnat": "allow_private"}
_HOSTNAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*", re.ASCII)
_HEX_PART = re.compile(r"0x[0-9a-f]*", re.ASCII)
_OCT_PART = re.compile(r"0[0-7]*", re.ASCII)
_DEC_PART = re.compile(r"[1-9][0-9]*", re.ASCII)


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """IPv4 as ``inet_aton`` reads it: 1-4 parts, each decimal, octal (``0``) or hex (``0x``)."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or any(len(p) > 12 for p in parts):
        return None
    values: list[int] = []
    for part in parts:
        if _HEX_PART.fullmatch(part):
            values.append(int(part[2:] or "0", 16))
        elif _OCT_PART.fullmatch(part):
            values.append(int(part, 8))
        elif _DEC_PART.fullmatch(part):
            values.append(int(part))
        else:
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for index, value in enumerate(head):
        number += value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def parse_ip(host: str) -> IPAddress | None:
    """The IP address ``host`` denotes in any encoding, or ``None`` when it is a name."""
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        text = text.split("%", 1)[0]  # zone id: fe80::1%eth0
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    return _inet_aton(text.removesuffix("."))


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", [ip.ipv4_mapped]
    if ip in _NAT64:
        return "NAT64", [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip in _SIX_TO_FOUR and ip.sixtofour is not None:
        return "6to4", [ip.sixtofour]
    if ip in _TEREDO and ip.teredo is not None:
        return "Teredo", list(ip.teredo)
    if ip in _V4_COMPATIBLE and int(ip) > 1:
        return "IPv4-compatible", [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return None


def _classify_v4(ip: ipaddress.IPv4Address) -> str | None:
    if ip in _METADATA_IPS:
        return "metadata"
    return next((category for category, net in _V4_RANGES if ip in net), None)


def classify_ip(ip: IPAddress | str) -> str | None:
    """The blocked category of ``ip`` (``loopback``, ``private``, ``cgnat``, ``link_local``,
    ``metadata``, ``unspecified``, ``multicast``, ``reserved``), or ``None`` when it is public."""
    if isinstance(ip, str):
        parsed = parse_ip(ip)
        if parsed is None:
            raise EgressError(f"not an IP address: {ip[:100]!r}", code="egress.invalid")
        ip = parsed
    if isinstance(ip, ipaddress.IPv4Address):
        return _classify_v4(ip)
    if ip in _METADATA_IPS:
        return "metadata"
    if int(ip) == 0:
        return "unspecified"
    if int(ip) == 1:
        return "loopback"
    embedded = _embedded_v4(ip)
    if embedded is not None:
        kind, addresses = embedded
        for v4 in addresses:
            category = _classify_v4(v4)
            if category is not None:
                return category
        # tunnels (6to4, Teredo) and the deprecated IPv4-compatible form are never needed
        return None if kind in ("NAT64", "IPv4-mapped") else "reserved"
    category = next((category for category, net in _V6_RANGES if ip in net), None)
    if category is None and ip not in _GLOBAL_UNICAST:
        return "reserved"
    return category


class EgressPolicy:
    """Which hosts and addresses outbound connections may reach.

    ``allow_hosts``: glob patterns (``api.example.com``, ``*.example.com``);
    when given, every host must match one (``egress.not_allowed``). Address
    ranges are always checked (``egress.blocked``): ``allow_loopback`` and
    ``allow_private`` (RFC 1918, ULA, CGNAT) open those; link-local,
    metadata, unspecified, multicast and reserved ranges stay closed unless a
    network is listed explicitly in ``allow_networks`` (CIDRs).
    """

    def __init__(
        self,
        allow_hosts: Iterable[str] | None = None,
        *,
        allow_loopback: bool = False,
        allow_private: bool = False,
        allow_networks: Iterable[str] = (),
        schemes: Iterable[str] = ("http", "https", "ws", "wss"),
    ) -> None:
        self.allow_hosts = None if allow_hosts is None else tuple(h.strip().lower().rstrip(".") for h in allow_hosts)
        self.allow_loopback = allow_loopback
        self.allow_private = allow_private
        try:
            self.allow_networks = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
        except ValueError as exc:
            raise EgressError(f"allow_networks: {exc}", code="egress.invalid") from None
        self.schemes = frozenset(s.lower() for s in schemes)

    def __repr__(self) -> str:
        return (
            f"EgressPolicy(allow_hosts={self.allow_hosts!r}, allow_loopback={self.allow_loopback}, "
            f"allow_private={self.allow_private}, allow_networks={[str(n) for n in self.allow_networks]})"
        )

    # -- decisions --

    def _blocked_category(self, ip: IPAddress) -> str | None:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        if any(c.version == n.version and c in n for c in candidates for n in self.allow_networks):
            return None
        category = classify_ip(ip)
        if category is None or getattr(self, _FLAGS.get(category, ""), False):
            return None
        return category

    def is_ip_allowed(self, ip: IPAddress | str) -> bool:
        """Whether connecting to ``ip`` is allowed (``False`` for anything unparsable)."""
        parsed = ip if not isinstance(ip, str) else parse_ip(ip)
        return parsed is not None and self._blocked_category(parsed) is None

    def check_ip(self, ip: IPAddress | str) -> IPAddress:
        """Return ``ip`` parsed, or raise ``egress.blocked`` when its range is not allowed."""
        parsed = ip if not isinstance(ip, str) else parse_ip(ip)
        if parsed is None:
            raise EgressError(f"not an IP address: {str(ip)[:100]!r}", code="egress.invalid")
        category = self._blocked_category(parsed)
        if category is not None:
            raise EgressError(
                f"connections to {parsed} are blocked ({category.replace('_', '-')} address)",
                code="egress.blocked",
                details={"ip": str(parsed), "category": category},
            )
        return parsed

    def check_host(self, host: str) -> str:
        """Check a URL host (name or IP literal in any encoding); return it normalised."""
        if not isinstance(host, str) or not host or len(host) > 255:
            raise EgressError("the host is empty or too long", code="egress.invalid")
        ip = parse_ip(host)
        if ip is not None:
            self.check_ip(ip)
            spellings = [str(ip), host.strip().lower().strip("[]")]
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                spellings.append(str(ip.ipv4_mapped))
            self._check_listed(*spellings)
            return str(ip)
        name = host.strip().lower().removesuffix(".")
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise EgressError(f"not a valid host name: {host[:100]!r}", code="egress.invalid") from None
        if not _HOSTNAME.fullmatch(name):
            raise EgressError(f"not a valid host name: {host[:100]!r}", code="egress.invalid")
        if name in _METADATA_NAMES:
            raise EgressError(
                f"{name} is a cloud metadata endpoint",
                code="egress.blocked",
                details={"host": name, "category": "metadata"},
            )
        if (name == "localhost" or name.endswith(".localhost")) and not self.allow_loopback:
            raise EgressError(
                f"{name} is a loopback name", code="egress.blocked", details={"host": name, "category": "loopback"}
            )
        self._check_listed(name)
        return name

    def _check_listed(self, *names: str) -> None:
        if self.allow_hosts is None:
            return
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names for pattern in self.allow_hosts):
            raise EgressError(
                f"host {names[0]!r} is not on the allow list", code="egress.not_allowed", details={"host": names[0]}
            )

    def check_url(self, url: str | URL) -> URL:
        """Check scheme and host of ``url`` (call it for every redirect you follow yourself)."""
        from yarl import URL

        try:
            parsed = url if isinstance(url, URL) else URL(url)
        except (ValueError, TypeError):
            raise EgressError("not a valid URL", code="egress.invalid") from None
        if parsed.scheme.lower() not in self.schemes:
            raise EgressError(f"scheme {parsed.scheme!r} is not allowed", code="egress.not_allowed")
        if not parsed.raw_host:
            raise EgressError("the URL has no host", code="egress.invalid")
        self.check_host(parsed.raw_host)
        return parsed

    # -- aiohttp integration --

    def resolver(self, inner: AbstractResolver | None = None) -> GuardedResolver:
        """A resolver that checks every resolved address at connect time."""
        return GuardedResolver(self, inner)

    def connector(self, **kwargs: Any) -> aiohttp.TCPConnector:
        """An aiohttp connector whose DNS answers are filtered by this policy."""
        import aiohttp

        return aiohttp.TCPConnector(resolver=cast("AbstractResolver", self.resolver()), **kwargs)

    def trace_config(self) -> aiohttp.TraceConfig:
        """Hooks that check the request URL and every redirect target before it is followed."""
        import aiohttp
        from yarl import URL

        async def on_start(session: Any, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
            self.check_url(params.url)

        async def on_redirect(session: Any, ctx: Any, params: aiohttp.TraceRequestRedirectParams) -> None:
            location = params.response.headers.get("Location") or params.response.headers.get("URI")
            if not location:
                return
            try:
                target = params.url.join(URL(location))
            except ValueError:
                return  # aiohttp refuses the redirect itself
            try:
                self.check_url(target)
            except EgressError:
                params.response.close()
                raise

        config = aiohttp.TraceConfig()
        config.on_request_start.append(on_start)
        config.on_request_redirect.append(on_redirect)
        return config

    def client_session(self, **kwargs: Any) -> aiohttp.ClientSession:
        """An ``aiohttp.ClientSession`` guarded by this policy (URL, redirects, resolved IPs)."""
        import aiohttp

        if "connector" in kwargs:
            raise TypeError("client_session builds its own connector; pass connector options instead")
        connector_options = kwargs.pop("connector_options", {})
        traces = [*kwargs.pop("trace_configs", ()), self.trace_config()]
        return aiohttp.ClientSession(connector=self.connector(**connector_options), trace_configs=traces, **kwargs)


class GuardedResolver:
    """An ``aiohttp`` resolver that drops blocked addresses from every DNS answer.

    If nothing is left, the connection fails with ``egress.blocked``; the
    address aiohttp connects to is always one this policy accepted. It is
    registered as an ``aiohttp.abc.AbstractResolver`` when first created, so
    importing this module does not import aiohttp.
    """

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        from aiohttp.abc import AbstractResolver

        if not issubclass(GuardedResolver, AbstractResolver):
            AbstractResolver.register(GuardedResolver)
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` with the wrapped resolver and keep only allowed addresses."""
        self._policy.check_host(host)
        if self._inner is None:
            from aiohttp.resolver import DefaultResolver

            self._inner = DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._policy.is_ip_allowed(r["host"])]
        if not allowed:
            categories = sorted({str(classify_ip(r["host"])) for r in results}) or ["no address"]
            raise EgressError(
                f"{host} resolves only to blocked addresses ({', '.join(categories)})",
                code="egress.blocked",
                details={"host": host, "categories": categories},
            )
        return allowed

    async def close(self) -> None:
        """Close the wrapped resolver."""
        if self._inner is not None:
            await self._inner.close()
