"""``seamline map``: evaluate a mapping against a JSON, XML or CSV document; errors point at the spot."""

from __future__ import annotations

from pathlib import Path

import orjson
from tests.helpers import cli


def test_map_json_xml_csv(tmp_path: Path) -> None:
    (tmp_path / "o.json").write_text('{"lines": [{"qty": 2, "price": 5}, {"qty": 1, "price": 3}]}')
    r = cli("map", "--expr", "$sum(lines.(qty * price))", "--input", str(tmp_path / "o.json"))
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout) == 13
    (tmp_path / "o.xml").write_text('<order id="7"><line>a</line><line>b</line></order>')
    r = cli("map", "-e", "{'id': order.`@id`, 'n': $count(order.line)}", "-i", str(tmp_path / "o.xml"), "-f", "xml")
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout) == {"id": "7", "n": 2}
    (tmp_path / "o.csv").write_text("sku,qty\nA,2\nB,3\n")
    (tmp_path / "m.jsonata").write_text("$.sku")
    r = cli("map", "--mapping", str(tmp_path / "m.jsonata"), "-i", str(tmp_path / "o.csv"), "-f", "csv")
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout) == ["A", "B"]


def test_map_error_shows_a_caret(tmp_path: Path) -> None:
    (tmp_path / "o.json").write_text("{}")
    r = cli("map", "--expr", "{'a': 1 +* 2}", "--input", str(tmp_path / "o.json"))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert any("{'a': 1 +* 2}" in ln for ln in lines)
    caret = next(ln for ln in lines if ln.strip() == "^")
    import re

    position = int(re.search(r"at character (\d+)", r.stderr).group(1))  # type: ignore[union-attr]
    assert caret.index("^") == position and 0 < position < len("{'a': 1 +* 2}")
    assert cli("map", "--input", str(tmp_path / "o.json")).returncode == 2
