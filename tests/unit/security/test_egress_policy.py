"""EgressPolicy decisions on hosts and addresses in every encoding."""

from __future__ import annotations

import ipaddress

import pytest

from seamline.core.errors import FatalError
from seamline.security.egress import EgressPolicy, classify_ip, parse_ip
from seamline.security.errors import EgressError

# Teredo with server 65.54.227.120 and client 127.0.0.1 (client bits are inverted)
TEREDO_LOOPBACK = str(ipaddress.IPv6Address((0x20010000 << 96) | (0x4136E378 << 64) | (~0x7F000001 & 0xFFFFFFFF)))


@pytest.mark.parametrize(
    ("host", "ip"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("fe80::1%eth0", "fe80::1"),
        ("example.com", None),
        ("08.1", None),  # not octal: a (bogus) name
        ("256.1.1.1", None),
        ("1.2.3.4.5", None),
        ("0x1.0x100.1", None),
    ],
)
def test_parse_ip_reads_every_encoding(host: str, ip: str | None) -> None:
    parsed = parse_ip(host)
    assert (str(parsed) if parsed else None) == ip


BLOCKED = {
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "2130706433": "loopback",
    "0177.0.0.1": "loopback",
    "0x7f.1": "loopback",
    "127.1": "loopback",
    "[::1]": "loopback",
    "::ffff:127.0.0.1": "loopback",
    "[::ffff:7f00:1]": "loopback",
    "::127.0.0.1": "loopback",  # IPv4-compatible
    "64:ff9b::7f00:1": "loopback",  # NAT64
    "2002:7f00:1::": "loopback",  # 6to4
    TEREDO_LOOPBACK: "loopback",
    "localhost": "loopback",
    "LOCALHOST.": "loopback",
    "api.localhost": "loopback",
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.1.1": "private",
    "0xa000001": "private",
    "fd12:3456::1": "private",
    "::ffff:10.1.2.3": "private",
    "64:ff9b:1::a00:1": "private",
    "100.64.0.1": "cgnat",
    "100.127.255.254": "cgnat",
    "169.254.169.254": "metadata",
    "0xa9fea9fe": "metadata",
    "2852039166": "metadata",
    "::ffff:169.254.169.254": "metadata",
    "fd00:ec2::254": "metadata",
    "100.100.100.200": "metadata",
    "metadata.google.internal": "metadata",
    "169.254.1.1": "link_local",
    "fe80::1": "link_local",
    "[fe80::1%25eth0]": "link_local",
    "0.0.0.0": "unspecified",
    "0": "unspecified",
    "::": "unspecified",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "255.255.255.255": "reserved",
    "240.0.0.1": "reserved",
    "192.0.2.1": "reserved",
    "198.18.0.1": "reserved",
    "2001:db8::1": "reserved",
    "2002:808:808::": "reserved",  # 6to4 tunnels are never needed, even to public space
    "100::1": "reserved",
    "::2:3:4:5:6:7": "reserved",
}


@pytest.mark.parametrize(("host", "category"), BLOCKED.items())
def test_blocked_by_default(host: str, category: str) -> None:
    with pytest.raises(EgressError) as exc:
        EgressPolicy().check_host(host)
    assert isinstance(exc.value, FatalError)
    assert exc.value.code == "egress.blocked"
    assert exc.value.details["category"] == category


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "93.184.215.14",
        "8.8.8.8",
        "2606:4700::1111",
        "64:ff9b::808:808",
        "API.Example.COM.",
        "xn--bcher-kva.example",
        "b\u00fccher.example",
        "under_score.example",
    ],
)
def test_public_hosts_pass(host: str) -> None:
    assert EgressPolicy().check_host(host)


def test_public_literals_are_normalised() -> None:
    assert EgressPolicy().check_host("0x8.0x8.0x8.0x8") == "8.8.8.8"
    assert EgressPolicy().check_host("API.Example.COM.") == "api.example.com"


def test_allow_loopback_opens_only_loopback() -> None:
    policy = EgressPolicy(allow_loopback=True)
    for host in ("127.0.0.1", "2130706433", "[::1]", "localhost", "::ffff:127.0.0.1", "64:ff9b::7f00:1"):
        policy.check_host(host)
    for host in ("10.0.0.1", "169.254.169.254", "0.0.0.0"):
        with pytest.raises(EgressError):
            policy.check_host(host)


def test_allow_private_keeps_metadata_and_link_local_closed() -> None:
    policy = EgressPolicy(allow_private=True)
    for host in ("10.0.0.1", "192.168.0.10", "100.64.1.1", "fd12::1"):
        policy.check_host(host)
    for host in ("169.254.169.254", "fd00:ec2::254", "169.254.10.10", "127.0.0.1", "100.100.100.200"):
        with pytest.raises(EgressError):
            policy.check_host(host)


def test_allow_networks_is_explicit() -> None:
    policy = EgressPolicy(allow_networks=["10.20.0.0/16", "169.254.169.254/32"])
    assert policy.check_host("10.20.3.4") == "10.20.3.4"
    assert policy.check_host("::ffff:10.20.3.4")
    assert policy.check_host("169.254.169.254")
    with pytest.raises(EgressError):
        policy.check_host("10.21.0.1")
    with pytest.raises(EgressError) as exc:
        EgressPolicy(allow_networks=["not-a-net"])
    assert exc.value.code == "egress.invalid"


def test_allow_hosts_globs() -> None:
    policy = EgressPolicy(["*.example.com", "erp.internal.corp", "93.184.215.14"])
    for host in ("api.example.com", "a.b.example.com", "API.EXAMPLE.COM", "erp.internal.corp", "93.184.215.14"):
        policy.check_host(host)
    for host in ("example.com", "evilexample.com", "example.com.evil.net", "erp.internal.corp.evil", "8.8.8.8"):
        with pytest.raises(EgressError) as exc:
            policy.check_host(host)
        assert exc.value.code == "egress.not_allowed"


def test_allow_list_never_opens_blocked_ranges() -> None:
    policy = EgressPolicy(["127.0.0.1", "localhost"])
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(EgressError) as exc:
            policy.check_host(host)
        assert exc.value.code == "egress.blocked"


@pytest.mark.parametrize("host", ["", "a..b", "exa mple.com", "http://x", "[::1", "x" * 300, "a\r\nb", "ex\x00.com"])
def test_invalid_hosts(host: str) -> None:
    with pytest.raises(EgressError) as exc:
        EgressPolicy().check_host(host)
    assert exc.value.code == "egress.invalid"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "egress.not_allowed"),
        ("gopher://example.com/", "egress.not_allowed"),
        ("http://2130706433/", "egress.blocked"),
        ("http://0x7f.1:8080/admin", "egress.blocked"),
        ("http://user:pw@127.0.0.1/", "egress.blocked"),
        ("http://[::ffff:169.254.169.254]/latest/meta-data/", "egress.blocked"),
        ("https://169.254.169.254.nip.io.example/", None),  # a name; resolution is checked at connect time
        ("http:///path", "egress.invalid"),
    ],
)
def test_check_url(url: str, code: str | None) -> None:
    if code is None:
        EgressPolicy().check_url(url)
        return
    with pytest.raises(EgressError) as exc:
        EgressPolicy().check_url(url)
    assert exc.value.code == code


def test_classify_ip_and_is_ip_allowed() -> None:
    assert classify_ip("8.8.8.8") is None
    assert classify_ip(ipaddress.ip_address("::1")) == "loopback"
    with pytest.raises(EgressError):
        classify_ip("not-an-ip")
    policy = EgressPolicy()
    assert policy.is_ip_allowed("8.8.8.8") and not policy.is_ip_allowed("10.0.0.1")
    assert not policy.is_ip_allowed("garbage")
    assert "allow_loopback=False" in repr(policy)
