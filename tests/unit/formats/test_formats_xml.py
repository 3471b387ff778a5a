"""seamline.formats.xml: hostile documents, the dict convention, round trips."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from seamline.formats import xml as sx
from seamline.formats.errors import XmlError

FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

#: Every XML file of the defusedxml corpus and what must happen to it.
CORPUS = {
    "xmlbomb.xml": "format.xml.entity_forbidden",
    "xmlbomb2.xml": "format.xml.entity_forbidden",
    "quadratic.xml": "format.xml.entity_forbidden",
    "cyclic.xml": "format.xml.entity_forbidden",
    "external.xml": "format.xml.external_forbidden",
    "external_file.xml": "format.xml.external_forbidden",
    "dtd.xml": "format.xml.external_forbidden",
    "dtd_element.xml": "format.xml.dtd_forbidden",
    "simple.xml": None,
    "simple-ns.xml": None,
}


def code_of(data: bytes | str, **kwargs: object) -> str:
    with pytest.raises(XmlError) as info:
        sx.decode(data, **kwargs)  # type: ignore[arg-type]
    return info.value.code


# --------------------------------------------------------------------------- the defusedxml corpus


def test_corpus_is_fully_covered(defused: Path) -> None:
    assert {p.name for p in defused.glob("*.xml")} == set(CORPUS)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_document(defused: Path, name: str, bounded: Callable[..., Any]) -> None:
    data = (defused / name).read_bytes()
    sx.decode(b"<warm-up/>")
    expected = CORPUS[name]
    with bounded():
        if expected is None:
            assert sx.decode(data)
        else:
            assert code_of(data) == expected
            with pytest.raises(XmlError) as info:
                sx.parse_document(data)
            assert info.value.code == expected


@pytest.mark.parametrize("name", sorted(n for n, c in CORPUS.items() if c))
def test_corpus_document_as_text_and_utf16(defused: Path, name: str) -> None:
    text = (defused / name).read_text(encoding="utf-8")
    assert code_of(text) == CORPUS[name]
    assert code_of(text.replace('encoding="utf-8"', "").encode("utf-16")) == CORPUS[name]


def test_external_file_entity_never_reads_the_file(defused: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.xml"
    secret.write_text("<secret>TOP-SECRET-MARKER</secret>")
    template = (defused / "external_file.xml").read_text()
    doc = template.replace("file:///PATH/TO/xmltestdata/simple.xml", secret.as_uri())
    assert secret.as_uri() in doc
    with pytest.raises(XmlError) as info:
        sx.decode(doc)
    assert info.value.code == "format.xml.external_forbidden"
    assert "TOP-SECRET-MARKER" not in str(info.value)


def test_hardened_parser_expands_nothing_even_if_the_prolog_check_is_bypassed(
    defused: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bounded: Callable[..., Any]
) -> None:
    """Defence in depth: the libxml2 settings alone keep every hostile document harmless."""
    from seamline.formats import _xmlsafe

    monkeypatch.setattr(_xmlsafe, "reject_doctype", lambda raw: None)
    secret = tmp_path / "secret.xml"
    secret.write_text("<secret>TOP-SECRET-MARKER</secret>")
    external_file = (
        (defused / "external_file.xml").read_text().replace("file:///PATH/TO/xmltestdata/simple.xml", secret.as_uri())
    )
    documents = [(defused / n).read_bytes() for n, c in CORPUS.items() if c] + [external_file.encode()]
    for data in documents:
        with bounded(), pytest.raises(XmlError) as info:
            tree = sx.parse_document(data)
            assert b"TOP-SECRET-MARKER" not in etree.tostring(tree)
            assert b"1234567890" * 3 not in etree.tostring(tree)
            raise AssertionError("unreachable: the DOCTYPE must be refused after parsing")
        assert info.value.code in {"format.xml.dtd_forbidden", "format.xml.syntax"}


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        (b'<?xml version="1.0"?>\n<!-- c -->\n<?pi x?>\n<!DOCTYPE r>\n<r/>', "format.xml.dtd_forbidden"),
        (
            b'<!DOCTYPE r [<!ENTITY % p SYSTEM "http://example.invalid/p.dtd"> %p;]><r/>',
            "format.xml.external_forbidden",
        ),
        (b'<!DOCTYPE r [<!ENTITY % p "x">]><r/>', "format.xml.entity_forbidden"),
        (b'<!DOCTYPE r PUBLIC "-//X//Y" "r.dtd"><r/>', "format.xml.external_forbidden"),
        (b"\xef\xbb\xbf<!DOCTYPE r><r/>", "format.xml.dtd_forbidden"),
        (b"<a>&undefined;</a>", "format.xml.syntax"),
        (b"<a><b></a>", "format.xml.syntax"),
        (b"", "format.xml.syntax"),
        (b"<a/><b/>", "format.xml.syntax"),
        (b"<r/><!DOCTYPE r>", "format.xml.syntax"),
        (b"<a>" * 300 + b"</a>" * 300, "format.xml.depth"),
    ],
)
def test_other_hostile_or_broken_documents(doc: bytes, code: str) -> None:
    assert code_of(doc) == code


def test_doctype_text_in_content_is_just_text() -> None:
    assert sx.decode(b"<a><![CDATA[<!DOCTYPE x [<!ENTITY y 'z'>]>]]></a>") == {"a": "<!DOCTYPE x [<!ENTITY y 'z'>]>"}
    assert sx.decode(b"<!-- <!DOCTYPE x> --><a>&amp;&lt;</a>") == {"a": "&<"}


def test_xinclude_is_not_processed(tmp_path: Path) -> None:
    target = tmp_path / "inc.xml"
    target.write_text("<secret>TOP-SECRET-MARKER</secret>")
    doc = f'<r xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="{target.as_uri()}"/></r>'
    result = sx.decode(doc)
    assert "TOP-SECRET-MARKER" not in repr(result)
    assert result["r"]["xi:include"] == {"@href": target.as_uri()}


def test_size_and_depth_limits(bounded: Callable[..., Any]) -> None:
    with bounded():
        assert code_of(b"<a>" + b"x" * 2_000_000 + b"</a>", max_bytes=1_000_000) == "format.xml.too_large"
    assert code_of("<a>" + "ä" * 600 + "</a>", max_bytes=1_000) == "format.xml.too_large"
    doc = b"<a>" * 10 + b"</a>" * 10
    assert sx.decode(doc, max_depth=10)
    with pytest.raises(XmlError) as info:
        sx.decode(doc, max_depth=9)
    assert info.value.code == "format.xml.depth"
    with pytest.raises(ValueError):
        sx.decode(doc, max_depth=1000)


def test_syntax_errors_say_where() -> None:
    with pytest.raises(XmlError) as info:
        sx.decode(b"<a>\n  <b>\n</a>")
    assert info.value.code == "format.xml.syntax"
    assert info.value.details["line"] == 3
    assert "line 3" in str(info.value)


# --------------------------------------------------------------------------- the dict convention


@pytest.mark.parametrize(
    ("xml", "value"),
    [
        ("<a>text</a>", {"a": "text"}),
        ("<a/>", {"a": None}),
        ("<a></a>", {"a": None}),
        ("<a>  padded  </a>", {"a": "  padded  "}),
        ('<a x="1"/>', {"a": {"@x": "1"}}),
        ('<a x="1">text</a>', {"a": {"@x": "1", "#text": "text"}}),
        ("<a><b>1</b><c>2</c></a>", {"a": {"b": "1", "c": "2"}}),
        ("<a><b>1</b><b>2</b><b/></a>", {"a": {"b": ["1", "2", None]}}),
        ("<a>\n  <b>1</b>\n  <c/>\n</a>", {"a": {"b": "1", "c": None}}),
        ("<a>head <b>1</b> tail</a>", {"a": {"b": "1", "#text": "head  tail"}}),
        ("<a><![CDATA[<x> & y]]></a>", {"a": "<x> & y"}),
        ("<a><!-- gone --><?pi gone?>kept</a>", {"a": "kept"}),
        ("<a>007</a>", {"a": "007"}),
    ],
)
def test_convention(xml: str, value: dict[str, object]) -> None:
    assert sx.decode(xml) == value


def test_corpus_simple_documents(defused: Path) -> None:
    expected = {"element": [{"@key": "value", "#text": "text"}, "text"], "empty-element": None, "#text": "tail"}
    assert sx.decode((defused / "simple.xml").read_bytes()) == {"root": expected}
    assert sx.decode((defused / "simple-ns.xml").read_bytes()) == {"root": {"@xmlns": "namespace", **expected}}


def test_force_list() -> None:
    doc = "<order><line>1</line><note>n</note></order>"
    assert sx.decode(doc) == {"order": {"line": "1", "note": "n"}}
    assert sx.decode(doc, force_list={"line"}) == {"order": {"line": ["1"], "note": "n"}}
    assert sx.decode(doc, force_list=True) == {"order": {"line": ["1"], "note": ["n"]}}
    assert sx.decode("<order><line>1</line><line>2</line></order>", force_list={"line"}) == {
        "order": {"line": ["1", "2"]}
    }


SOAP = b"""<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:o="urn:orders">
  <s:Body>
    <o:Order o:id="7" xml:lang="de" plain="p"><o:Line>1</o:Line><o:Line>2</o:Line></o:Order>
  </s:Body>
</s:Envelope>"""


def test_namespaces_keep_prefixes_and_declarations_by_default() -> None:
    value = sx.decode(SOAP)
    assert value == {
        "s:Envelope": {
            "@xmlns:s": "http://schemas.xmlsoap.org/soap/envelope/",
            "@xmlns:o": "urn:orders",
            "s:Body": {"o:Order": {"@o:id": "7", "@xml:lang": "de", "@plain": "p", "o:Line": ["1", "2"]}},
        }
    }
    assert sx.decode(sx.encode(value)) == value


def test_namespaces_map_uris_to_chosen_prefixes() -> None:
    other_prefixes = b"""<env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/">
      <env:Body><Order xmlns="urn:orders" xmlns:ns0="urn:orders" ns0:id="7" xml:lang="de" plain="p">
      <Line>1</Line><ns0:Line>2</ns0:Line></Order></env:Body></env:Envelope>"""
    mapping = {"http://schemas.xmlsoap.org/soap/envelope/": "soap", "urn:orders": "ord"}
    expected = {
        "soap:Envelope": {
            "soap:Body": {"ord:Order": {"@ord:id": "7", "@xml:lang": "de", "@plain": "p", "ord:Line": ["1", "2"]}}
        }
    }
    assert sx.decode(SOAP, namespaces=mapping) == expected
    assert sx.decode(other_prefixes, namespaces=mapping) == expected
    encoded = sx.encode(expected, namespaces=mapping)
    assert b'xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"' in encoded
    assert sx.decode(encoded, namespaces=mapping) == expected


def test_unmapped_namespaces_use_clark_notation() -> None:
    value = sx.decode(SOAP, namespaces={"urn:orders": ""})
    body = value["{http://schemas.xmlsoap.org/soap/envelope/}Envelope"][
        "{http://schemas.xmlsoap.org/soap/envelope/}Body"
    ]
    assert body["Order"]["Line"] == ["1", "2"]
    assert body["Order"]["@{urn:orders}id"] == "7"
    assert sx.decode(sx.encode(value, namespaces={"urn:orders": ""}), namespaces={"urn:orders": ""}) == value


def test_default_namespace_declared_on_a_child() -> None:
    doc = '<a><b xmlns="urn:b"><c>1</c></b><d>2</d></a>'
    value = sx.decode(doc)
    assert value == {"a": {"b": {"@xmlns": "urn:b", "c": "1"}, "d": "2"}}
    tree = etree.fromstring(sx.encode(value))
    assert tree.find("{urn:b}b/{urn:b}c").text == "1"
    assert tree.find("d").text == "2"


# --------------------------------------------------------------------------- encode


def test_encode_values_and_options() -> None:
    value = {
        "order": {
            "@id": 7,
            "@paid": True,
            "@skip": None,
            "total": Decimal("10.50"),
            "rate": 0.5,
            "day": date(2024, 1, 2),
            "lines": {"line": [{"@n": 1, "#text": "a"}, "b", None]},
            "empty": None,
        }
    }
    out = sx.encode(value)
    assert out.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert sx.decode(out) == {
        "order": {
            "@id": "7",
            "@paid": "true",
            "total": "10.50",
            "rate": "0.5",
            "day": "2024-01-02",
            "lines": {"line": [{"@n": "1", "#text": "a"}, "b", None]},
            "empty": None,
        }
    }
    assert not sx.encode({"a": "x"}, xml_declaration=False).startswith(b"<?xml")
    pretty = sx.encode({"a": {"b": ["1", "2"]}}, pretty=True)
    assert b"\n  <b>" in pretty
    assert sx.decode(pretty) == {"a": {"b": ["1", "2"]}}


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": 2},
        {},
        ["a"],
        {"@a": "x"},
        {"a": ["x", "y"]},
        {"a": {"b": [["nested"]]}},
        {"a": {"p:b": "undeclared prefix"}},
        {"a": {"bad name": "x"}},
        {"a": {"1x": "x"}},
        {"a": "\x00 control characters"},
        {"a": {"@x": "\x07"}},
        {"a": {"b": object()}},
        {"a": {"{unclosed": "x"}},
        {"a": {"": "empty name"}},
    ],
)
def test_encode_refuses_what_xml_cannot_hold(value: object) -> None:
    with pytest.raises(XmlError) as info:
        sx.encode(value)  # type: ignore[arg-type]
    assert info.value.code == "format.xml.encode"
    assert "path" in info.value.details


def test_encode_refuses_recursive_dicts() -> None:
    loop: dict[str, object] = {}
    loop["child"] = loop
    with pytest.raises(XmlError) as info:
        sx.encode({"root": loop})
    assert info.value.code == "format.xml.encode"


# --------------------------------------------------------------------------- round trips

names = st.sampled_from(["a", "b", "item", "x-y", "n.1", "ns:e"])
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"), max_size=8
).map(str.strip)
leaf = st.one_of(st.none(), texts.filter(bool))


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> object:
    if depth >= 3 or draw(st.booleans()):
        return draw(leaf)
    attrs = draw(st.dictionaries(st.sampled_from(["@id", "@ns:k", "@z"]), texts, max_size=2))
    children: dict[str, object] = {}
    for name in draw(st.lists(names, max_size=3, unique=True)):
        if draw(st.booleans()):
            children[name] = draw(elements(depth + 1))
        else:
            children[name] = draw(st.lists(elements(depth + 1), min_size=2, max_size=3))
    value: dict[str, object] = {**attrs, **children}
    text = draw(texts)
    if text:
        value["#text"] = text
    if set(value) == {"#text"}:
        return text  # an element with only text is its text
    return value or None


@FAST
@given(elements())
def test_decode_encode_round_trip(value: object) -> None:
    if isinstance(value, dict):
        document = {"root": {"@xmlns:ns": "urn:test", **value}}
    else:
        document = {"root": {"@xmlns:ns": "urn:test", "only": value}}
    encoded = sx.encode(document)
    assert sx.decode(encoded) == document
    assert sx.decode(sx.encode(document, pretty=True)) == document


def test_encodings() -> None:
    assert sx.decode('<?xml version="1.0" encoding="ISO-8859-1"?><a>ä</a>') == {"a": "ä"}
    assert sx.decode('<?xml version="1.0" encoding="ISO-8859-1"?><a>ä</a>'.encode("latin-1")) == {"a": "ä"}
    assert sx.decode("<a>ä</a>".encode("utf-16")) == {"a": "ä"}
    assert sx.decode(b"\xef\xbb\xbf<a>\xc3\xa4</a>") == {"a": "ä"}
    with pytest.raises(XmlError) as info:
        sx.decode("<a>\ud800</a>")
    assert info.value.code == "format.xml.syntax"
