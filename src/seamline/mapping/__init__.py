"""seamline's mapping language: JSONata, compiled once, with integration functions.

>>> from seamline.mapping import compile
>>> compile("$sum(lines.(qty * price))").evaluate({"lines": [{"qty": 2, "price": 5}]})
10

The ``map`` step is configured with :class:`MapConfig` and built with
:func:`build_mapping`; :meth:`Mapping.spec_rows` with :func:`render_markdown`
or :func:`render_html` gives its data-mapping specification.
"""

from __future__ import annotations

from seamline.mapping.api import Expression, compile
from seamline.mapping.builder import Mapping, build_mapping
from seamline.mapping.config import CsvLookup, HttpLookup, LimitsConfig, LookupConfig, MapConfig, SqlLookup
from seamline.mapping.errors import MappingError
from seamline.mapping.functions import register_function, unregister_function
from seamline.mapping.spec import SpecRow, render_html, render_markdown
from seamline.mapping.values import UNDEFINED

__all__ = [
    "UNDEFINED",
    "CsvLookup",
    "Expression",
    "HttpLookup",
    "LimitsConfig",
    "LookupConfig",
    "MapConfig",
    "Mapping",
    "MappingError",
    "SpecRow",
    "SqlLookup",
    "build_mapping",
    "compile",
    "register_function",
    "render_html",
    "render_markdown",
    "unregister_function",
]
