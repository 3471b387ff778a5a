"""Lookup tables for $xref: inline, CSV, SQL (refreshed after a TTL) and HTTP (cached per key)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy

from seamline.core.clock import ManualClock
from seamline.core.errors import RetryableError
from seamline.mapping import MappingError
from seamline.mapping.lookups import MISSING, CsvTable, HttpTable, InlineTable, Lookups, SqlTable


def test_inline_table() -> None:
    table = InlineTable({"DE": "Germany", "1": "one"})
    assert table.get("DE") == "Germany"
    assert table.get(1) == "one"
    assert table.get(1.0) == "one"
    assert table.get("FR") is MISSING


def test_csv_table(tmp_path: Path) -> None:
    path = tmp_path / "countries.csv"
    path.write_text("code;name;region\nDE;Germany;EU\nUS;United States;NA\n", encoding="utf-8")
    table = CsvTable(path, key="code", value="name", delimiter=";")
    assert table.get("US") == "United States"
    assert table.get("XX") is MISSING


def test_csv_table_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(MappingError, match="no column 'c'"):
        CsvTable(path, key="a", value="c")
    with pytest.raises(MappingError, match="cannot be read"):
        CsvTable(tmp_path / "missing.csv", key="a", value="b")


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'codes.db'}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE codes (code TEXT, name TEXT)"))
        conn.execute(sqlalchemy.text("INSERT INTO codes VALUES ('A', 'active'), ('C', 'closed')"))
    engine.dispose()
    return url


def test_sql_table_loads_once_and_refreshes_after_ttl(database: str) -> None:
    clock = ManualClock()
    table = SqlTable(database, "SELECT code, name FROM codes", ttl=60, clock=clock)
    try:
        assert table.get("A") == "active"
        engine = sqlalchemy.create_engine(database)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("UPDATE codes SET name = 'enabled' WHERE code = 'A'"))
        engine.dispose()
        assert table.get("A") == "active"  # still cached
        clock.advance(61)
        assert table.get("A") == "enabled"
        assert table.get("Z") is MISSING
    finally:
        table.close()


def test_sql_table_bad_query_is_a_mapping_error(database: str) -> None:
    table = SqlTable(database, "SELECT nope FROM codes", ttl=60)
    try:
        with pytest.raises(MappingError, match="SQL lookup"):
            table.get("A")
    finally:
        table.close()


class _Api(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        _Api.hits.append(self.path)
        if self.path.startswith("/customers/C-1"):
            body = json.dumps({"data": {"name": "Ada", "tier": "gold"}}).encode()
            self.send_response(200)
        elif self.path.startswith("/customers/boom"):
            body = b"{}"
            self.send_response(503)
        elif self.path.startswith("/customers/bad"):
            body = b"{}"
            self.send_response(403)
        else:
            body = b"{}"
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    _Api.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_table_gets_caches_and_misses(api: str) -> None:
    clock = ManualClock()
    table = HttpTable(f"{api}/customers/{{key}}", value_path="data.name", ttl=30, clock=clock)
    assert table.get("C-1") == "Ada"
    assert table.get("C-1") == "Ada"
    assert _Api.hits == ["/customers/C-1"]
    assert table.get("C-404") is MISSING
    assert table.get("C-404") is MISSING
    assert len(_Api.hits) == 2  # a miss is cached too
    clock.advance(31)
    assert table.get("C-1") == "Ada"
    assert len(_Api.hits) == 3


def test_http_table_keys_are_url_encoded(api: str) -> None:
    table = HttpTable(f"{api}/customers/{{key}}")
    assert table.get("a/b c") is MISSING
    assert _Api.hits == ["/customers/a%2Fb%20c"]


def test_http_table_classifies_failures(api: str) -> None:
    table = HttpTable(f"{api}/customers/{{key}}")
    with pytest.raises(RetryableError) as unavailable:
        table.get("boom")
    assert unavailable.value.code == "mapping.lookup_unavailable"
    with pytest.raises(MappingError):
        table.get("bad")


def test_http_table_connection_refused_is_retryable() -> None:
    table = HttpTable("http://127.0.0.1:9/customers/{key}", timeout=1)
    with pytest.raises(RetryableError):
        table.get("C-1")


def test_lookups_policies() -> None:
    lookups = Lookups()
    lookups.add("strict", InlineTable({"a": 1}))
    lookups.add("lenient", InlineTable({"a": 1}), on_miss="default", default=0)
    assert lookups.names() == ["lenient", "strict"]
    assert lookups.xref("strict", "a") == 1
    assert lookups.xref("lenient", "b") == 0
    assert lookups.xref("strict", "b", "fallback") == "fallback"
    with pytest.raises(MappingError) as info:
        lookups.xref("strict", "b")
    assert info.value.code == "mapping.xref_miss"
    with pytest.raises(MappingError, match="tables: lenient, strict"):
        lookups.xref("other", "a")


def test_sql_table_unreachable_database_is_retryable(tmp_path: Path) -> None:
    table = SqlTable(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", "SELECT 1, 2", ttl=60)
    try:
        with pytest.raises(RetryableError) as info:
            table.get("A")
        assert info.value.code == "mapping.lookup_unavailable"
    finally:
        table.close()
