"""seamline.formats.schema: JSON Schema, XSD and Avro validation with paths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from seamline.formats import schema as ss
from seamline.formats.errors import SchemaError, XmlError

ORDER_SCHEMA = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sku"],
                "properties": {
                    "sku": {"type": "string"},
                    "price": {"type": "number", "minimum": 0},
                    "a/b~c": {"type": "string"},
                },
            },
        }
    },
}


# --------------------------------------------------------------------------- JSON Schema


def test_json_schema_issues_have_json_pointer_paths() -> None:
    validator = ss.JsonSchema(ORDER_SCHEMA)
    instance = {"items": [{"sku": "A", "price": -1, "a/b~c": 3}, {"price": "x"}]}
    issues = validator.issues(instance)
    assert [(i.path, i.schema_path) for i in issues] == [
        ("/items/0/price", "/properties/items/items/properties/price/minimum"),
        ("/items/0/a~1b~0c", "/properties/items/items/properties/a~1b~0c/type"),
        ("/items/1", "/properties/items/items/required"),
        ("/items/1/price", "/properties/items/items/properties/price/type"),
    ]
    assert "minimum" in issues[0].message
    assert not validator.is_valid(instance)
    assert validator.is_valid({"items": []})
    assert validator.issues({"items": []}) == []
    assert len(validator.issues(instance, limit=2)) == 2


def test_json_schema_validate_raises_with_every_issue() -> None:
    validator = ss.JsonSchema(ORDER_SCHEMA)
    validator.validate({"items": [{"sku": "A"}]})
    with pytest.raises(SchemaError) as info:
        validator.validate({"items": [{"sku": 1}, {"sku": 2}]})
    error = info.value
    assert error.code == "format.schema.invalid"
    assert error.message.startswith("JSON Schema validation failed at /items/0/sku:")
    assert "(and 1 more)" in error.message
    assert [i["path"] for i in error.details["issues"]] == ["/items/0/sku", "/items/1/sku"]
    assert [i.path for i in error.issues] == ["/items/0/sku", "/items/1/sku"]
    with pytest.raises(SchemaError, match=r"at \(root\)"):
        validator.validate([])


def test_json_schema_from_text_and_drafts() -> None:
    assert ss.JsonSchema(b'{"type": "integer"}').is_valid(3)
    draft7 = ss.JsonSchema({"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]})
    assert not draft7.is_valid([1])
    assert ss.JsonSchema(True).is_valid({"anything": 1})


def test_json_schema_formats_are_opt_in() -> None:
    schema = {"type": "string", "format": "email"}
    assert ss.JsonSchema(schema).is_valid("not an email")
    assert not ss.JsonSchema(schema, validate_formats=True).is_valid("not an email")


@pytest.mark.parametrize(
    ("schema", "code"),
    [
        ({"type": "nope"}, "format.schema.bad_schema"),
        ({"minimum": "zero"}, "format.schema.bad_schema"),
        ('{"type": ', "format.schema.bad_schema"),
        ({"$ref": "https://example.invalid/order.json"}, "format.schema.ref_forbidden"),
        ({"$ref": "file:///etc/passwd"}, "format.schema.ref_forbidden"),
        ({"$schema": "https://example.invalid/meta"}, "format.schema.ref_forbidden"),
    ],
)
def test_bad_json_schemas(schema: object, code: str, bounded: Callable[..., Any]) -> None:
    with bounded(), pytest.raises(SchemaError) as info:
        ss.JsonSchema(schema)  # type: ignore[arg-type]
    assert info.value.code == code


def test_json_schema_resources_replace_fetching() -> None:
    resources = {"urn:example:money": {"$defs": {"amount": {"type": "number", "minimum": 0}}}}
    validator = ss.JsonSchema({"$ref": "urn:example:money#/$defs/amount"}, resources=resources)
    assert validator.is_valid(1.5)
    assert not validator.is_valid(-1)
    local = {"$defs": {"sku": {"type": "string"}}, "properties": {"sku": {"$ref": "#/$defs/sku"}}}
    assert not ss.JsonSchema(local).is_valid({"sku": 1})


# --------------------------------------------------------------------------- XSD

MAIN_XSD = """<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:include schemaLocation="types.xsd"/>
  <xs:element name="order">
    <xs:complexType>
      <xs:sequence><xs:element name="qty" type="qtyType" maxOccurs="unbounded"/></xs:sequence>
      <xs:attribute name="id" type="xs:int" use="required"/>
    </xs:complexType>
  </xs:element>
</xs:schema>"""
TYPES_XSD = """<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:simpleType name="qtyType">
    <xs:restriction base="xs:int"><xs:minInclusive value="1"/></xs:restriction>
  </xs:simpleType>
</xs:schema>"""


@pytest.fixture
def xsd_dir(tmp_path: Path) -> Path:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "main.xsd").write_text(MAIN_XSD)
    (schemas / "types.xsd").write_text(TYPES_XSD)
    return schemas


def test_xsd_with_local_include(xsd_dir: Path) -> None:
    schema = ss.XmlSchema(xsd_dir / "main.xsd")
    assert schema.is_valid(b'<order id="1"><qty>2</qty></order>')
    issues = schema.issues('<order id="x">\n<qty>0</qty>\n<qty>2</qty>\n<bad/></order>')
    assert [(i.path, i.line) for i in issues] == [("/order", 1), ("/order/qty[1]", 2), ("/order/bad", 4)]
    assert "minInclusive" in issues[1].message
    with pytest.raises(SchemaError) as info:
        schema.validate(b'<order id="1"/>')
    assert info.value.code == "format.schema.invalid"
    assert info.value.details["schema_kind"] == "XSD"
    tree = etree.fromstring(b'<order id="1"><qty>3</qty></order>')
    assert schema.is_valid(tree) and schema.is_valid(tree.getroottree())


def test_xsd_from_bytes_with_base_dir(xsd_dir: Path) -> None:
    schema = ss.XmlSchema(MAIN_XSD.encode(), base_dir=xsd_dir)
    assert schema.is_valid(b'<order id="1"><qty>2</qty></order>')
    assert ss.XmlSchema(MAIN_XSD, base_dir=xsd_dir).is_valid('<order id="1"><qty>2</qty></order>')
    with pytest.raises(SchemaError) as info:
        ss.XmlSchema(MAIN_XSD.encode())
    assert info.value.code == "format.schema.ref_forbidden"


def test_xsd_includes_outside_the_schema_dir_are_refused(xsd_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.xsd"
    secret.write_text(TYPES_XSD)
    for location in ("../secret.xsd", secret.as_uri(), str(secret), "http://example.invalid/t.xsd"):
        (xsd_dir / "evil.xsd").write_text(MAIN_XSD.replace("types.xsd", location))
        with pytest.raises(SchemaError) as info:
            ss.XmlSchema(xsd_dir / "evil.xsd")
        assert info.value.code == "format.schema.ref_forbidden", location


def test_corpus_schema_with_remote_imports_is_refused_quickly(defused: Path, bounded: Callable[..., Any]) -> None:
    with bounded(), pytest.raises(SchemaError) as info:
        ss.XmlSchema(defused / "schema-include.xsd")
    assert info.value.code == "format.schema.ref_forbidden"
    assert "http://www.w3.org/2001/xml.xsd" in info.value.details["refs"]


def test_hostile_xsd_and_hostile_instances(defused: Path, xsd_dir: Path) -> None:
    bomb = (defused / "xmlbomb.xml").read_bytes()
    with pytest.raises(SchemaError) as info:
        ss.XmlSchema(bomb)
    assert info.value.code == "format.schema.bad_schema"
    assert info.value.details["cause"] == "format.xml.entity_forbidden"
    (xsd_dir / "types.xsd").write_text('<!DOCTYPE x [<!ENTITY e "boom">]>' + TYPES_XSD)
    with pytest.raises(SchemaError) as info:
        ss.XmlSchema(xsd_dir / "main.xsd")
    assert info.value.code == "format.schema.ref_forbidden"
    (xsd_dir / "types.xsd").write_text(TYPES_XSD)
    schema = ss.XmlSchema(xsd_dir / "main.xsd")
    with pytest.raises(XmlError) as xml_info:
        schema.issues(bomb)
    assert xml_info.value.code == "format.xml.entity_forbidden"


def test_invalid_xsd() -> None:
    with pytest.raises(SchemaError) as info:
        ss.XmlSchema(
            b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"><xs:element name="a" type="nope"/></xs:schema>'
        )
    assert info.value.code == "format.schema.bad_schema"


# --------------------------------------------------------------------------- Avro

AVRO = {
    "type": "record",
    "name": "Order",
    "namespace": "com.example",
    "fields": [{"name": "id", "type": "long"}, {"name": "note", "type": ["null", "string"]}],
}


def test_avro_validation() -> None:
    assert ss.avro_issues({"id": 1, "note": None}, AVRO) == []
    ss.validate_avro({"id": 1, "note": "x"}, AVRO)
    issues = ss.avro_issues({"id": 1, "note": 5}, AVRO)
    assert [(i.path, i.message) for i in issues] == [("com.example.Order.note", "5 is not null | string")]
    with pytest.raises(SchemaError) as info:
        ss.validate_avro({"id": "x", "note": None}, AVRO)
    assert info.value.code == "format.schema.invalid"
    assert info.value.details["issues"] == [{"path": "com.example.Order.id", "message": "'x' is not long"}]
    with pytest.raises(SchemaError) as info:
        ss.validate_avro({}, {"type": "nope"})
    assert info.value.code == "format.schema.bad_schema"
