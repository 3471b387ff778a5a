"""seamline.formats.xslt: sandboxed transformations, hostile stylesheets refused."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from seamline.formats import xslt as sx
from seamline.formats.errors import FormatError, XmlError, XsltError

XSL = 'xmlns:xsl="http://www.w3.org/1999/XSL/Transform"'


def stylesheet(body: str, namespaces: str = "", top: str = "") -> bytes:
    return f'<xsl:stylesheet version="1.0" {XSL} {namespaces} {top}>{body}</xsl:stylesheet>'.encode()


def template(body: str, namespaces: str = "", top: str = "") -> bytes:
    return stylesheet(f'<xsl:template match="/">{body}</xsl:template>', namespaces, top)


# --------------------------------------------------------------------------- the defusedxml stylesheets


@pytest.mark.parametrize("name", ["xalan_exec.xsl", "xalan_write.xsl"])
def test_corpus_stylesheets_are_refused_and_touch_nothing(
    defused: Path, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bounded: Callable[..., Any]
) -> None:
    monkeypatch.chdir(tmp_path)
    with bounded(), pytest.raises(XsltError) as info:
        sx.Stylesheet(defused / name).transform((defused / "simple.xml").read_bytes())
    assert info.value.code == "format.xslt.extension_forbidden"
    assert not (tmp_path / "xalan_redirect.txt").exists()
    assert list(tmp_path.iterdir()) == []


def test_corpus_stylesheets_are_harmless_even_past_the_static_checks(
    defused: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: with the checks off, libxslt under DENY_ALL still cannot act."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sx, "_check", lambda tree: None)
    for name in ("xalan_exec.xsl", "xalan_write.xsl"):
        with pytest.raises(XsltError) as info:
            sx.Stylesheet(defused / name).transform((defused / "simple.xml").read_bytes())
        assert info.value.code == "format.xslt.runtime"
    target = tmp_path / "written.txt"
    exsl = template(
        f'<exsl:document href="{target}" method="text">PWNED</exsl:document><done/>',
        'xmlns:exsl="http://exslt.org/common"',
        'extension-element-prefixes="exsl"',
    )
    with pytest.raises(XsltError) as info:
        sx.Stylesheet(exsl).transform(b"<a/>")
    assert info.value.code == "format.xslt.access_forbidden"
    secret = tmp_path / "secret.xml"
    secret.write_text("<s>TOP-SECRET-MARKER</s>")
    reader = template(f"<xsl:copy-of select=\"document('{secret.as_uri()}')\"/>")
    with pytest.raises(XsltError) as info:
        sx.Stylesheet(reader).transform(b"<a/>")
    assert info.value.code == "format.xslt.access_forbidden"
    assert "TOP-SECRET-MARKER" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.xml"]


# --------------------------------------------------------------------------- static checks


@pytest.mark.parametrize(
    ("xsl", "code"),
    [
        (
            template(
                '<exsl:document href="out.txt">x</exsl:document>',
                'xmlns:exsl="http://exslt.org/common"',
                'extension-element-prefixes="exsl"',
            ),
            "format.xslt.extension_forbidden",
        ),
        (
            template('<out xsl:extension-element-prefixes="r"><r:write xmlns:r="urn:r"/></out>'),
            "format.xslt.extension_forbidden",
        ),
        (
            template("<xsl:value-of select=\"dyn:evaluate('1+1')\"/>", 'xmlns:dyn="http://exslt.org/dynamic"'),
            "format.xslt.extension_forbidden",
        ),
        (
            template("<a href=\"{j:run('x')}\"/>", 'xmlns:j="http://xml.apache.org/xalan/java"'),
            "format.xslt.extension_forbidden",
        ),
        (
            template("<xsl:if test=\"re:test(., 'a+')\">x</xsl:if>", 'xmlns:re="http://exslt.org/regular-expressions"'),
            "format.xslt.extension_forbidden",
        ),
        (template('<xsl:value-of select="undeclared:f()"/>'), "format.xslt.extension_forbidden"),
        (stylesheet('<xsl:include href="other.xsl"/>'), "format.xslt.include_forbidden"),
        (stylesheet('<xsl:import href="http://example.invalid/x.xsl"/>'), "format.xslt.include_forbidden"),
        (template("<xsl:copy-of select=\"document('/etc/passwd')\"/>"), "format.xslt.access_forbidden"),
        (template("<xsl:copy-of select=\"document( concat('/etc', '/passwd') )\"/>"), "format.xslt.access_forbidden"),
        (template("<a v=\"{count(document('x.xml'))}\"/>"), "format.xslt.access_forbidden"),
        (template('<xsl:result-document href="x.xml"/>'), "format.xslt.access_forbidden"),
        (template('<xsl:value-of select="(("/>'), "format.xslt.bad_stylesheet"),
        (stylesheet("<xsl:bogus/>"), "format.xslt.bad_stylesheet"),
        (b"<not-a-stylesheet/>", "format.xslt.bad_stylesheet"),
    ],
)
def test_hostile_or_broken_stylesheets(xsl: bytes, code: str) -> None:
    with pytest.raises(XsltError) as info:
        sx.Stylesheet(xsl)
    assert info.value.code == code


def test_strings_that_look_like_calls_are_fine() -> None:
    xsl = template(
        "<out><xsl:value-of select=\"concat('document(', 'x:y()')\"/>"
        '<a title="no {{braces}} here, document(x)"/></out>'
    )
    assert sx.Stylesheet(xsl).transform(b"<a/>") == (
        b'<?xml version="1.0"?>\n<out>document(x:y()<a title="no {braces} here, document(x)"/></out>\n'
    )


@pytest.mark.parametrize("name", ["xmlbomb.xml", "external.xml", "dtd.xml"])
def test_stylesheets_are_parsed_with_the_hardened_parser(defused: Path, name: str) -> None:
    with pytest.raises(XmlError) as info:
        sx.Stylesheet((defused / name).read_bytes())
    assert info.value.code.startswith("format.xml.")


# --------------------------------------------------------------------------- transforming

ORDERS_XSL = template(
    '<summary who="{$who}" lines="{count(//element)}">'
    "<xsl:value-of select=\"str:padding(3, '-')\"/>"
    '<xsl:for-each select="//element"><e><xsl:value-of select="."/></e></xsl:for-each>'
    "</summary>",
    'xmlns:str="http://exslt.org/strings" exclude-result-prefixes="str"',
).replace(b'<xsl:template match="/">', b'<xsl:param name="who"/><xsl:template match="/">')


def test_transform_with_exslt_and_parameters(defused: Path) -> None:
    sheet = sx.Stylesheet(ORDERS_XSL)
    out = sheet.transform((defused / "simple.xml").read_bytes(), params={"who": 'it\'s "me"'})
    assert out == (
        b'<?xml version="1.0"?>\n<summary who="it\'s &quot;me&quot;" lines="2">---<e>text</e><e>text</e></summary>\n'
    )
    injected = sheet.transform(b"<r><element>x</element></r>", params={"who": "') or true() or ('"})
    assert b"who=\"') or true() or ('\"" in injected


def test_transform_text_output_and_trees(defused: Path) -> None:
    text = stylesheet(
        '<xsl:output method="text"/><xsl:template match="/">'
        '<xsl:for-each select="//element"><xsl:value-of select="."/>;</xsl:for-each></xsl:template>'
    )
    assert sx.transform(text, (defused / "simple.xml").read_bytes()) == b"text;text;"
    from seamline.formats.xml import parse_document

    assert sx.Stylesheet(text).transform(parse_document(b"<r><element>1</element></r>")) == b"1;"


def test_hostile_input_documents_are_refused(defused: Path) -> None:
    sheet = sx.Stylesheet(ORDERS_XSL)
    with pytest.raises(XmlError) as info:
        sheet.transform((defused / "xmlbomb.xml").read_bytes())
    assert info.value.code == "format.xml.entity_forbidden"


@pytest.mark.parametrize(
    "body",
    [
        '<xsl:message terminate="yes">stop: bad order</xsl:message>',
        '<xsl:call-template name="loop"/>',
    ],
)
def test_runtime_failures(body: str, bounded: Callable[..., Any]) -> None:
    xsl = stylesheet(
        f'<xsl:template match="/">{body}</xsl:template>'
        '<xsl:template name="loop"><xsl:call-template name="loop"/></xsl:template>'
    )
    with bounded(), pytest.raises(XsltError) as info:
        sx.Stylesheet(xsl).transform(b"<a/>")
    assert info.value.code == "format.xslt.runtime"
    assert "unknown error" not in info.value.message


def test_a_stylesheet_can_be_shared_between_threads() -> None:
    sheet = sx.Stylesheet(template('<n><xsl:value-of select="/r/@n"/></n>'))
    results: dict[int, bytes] = {}
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for _ in range(50):
                results[n] = sheet.transform(f'<r n="{n}"/>'.encode())
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert results == {n: f'<?xml version="1.0"?>\n<n>{n}</n>\n'.encode() for n in range(4)}


def test_errors_are_format_errors() -> None:
    with pytest.raises(FormatError):
        sx.Stylesheet(stylesheet('<xsl:include href="x"/>'))
