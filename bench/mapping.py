"""Benchmark: a realistic order mapping through seamline.mapping vs hand-written Python.

    python bench/mapping.py [--n N] [--seed S]

The mapping restructures an order (~600 bytes, 1-5 lines): about ten fields,
two table lookups ($xref and $translate), a UTC -> Europe/Berlin conversion
($toTimezone), a $sum and a map over the line items. The same transformation
is written by hand in Python using the same lookup tables and time-zone
function; both outputs are asserted equal for every order. Printed: messages
per second of both and their ratio, plus the full-engine-only figure
(jsonatapy with the same functions registered) for reference.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seamline.mapping import MapConfig, Mapping, build_mapping
from seamline.mapping.timezones import to_timezone

EXPRESSION = """{
  "id": orderId,
  "placedAt": $toTimezone(createdAt, "Europe/Berlin"),
  "status": $translate("orderStatus", status),
  "channel": channel,
  "customer": {
    "number": customer.id,
    "name": customer.name,
    "email": $lowercase(customer.email),
    "segment": $xref("segments", customer.id, "standard")
  },
  "shipTo": {
    "city": shipping.city,
    "postalCode": shipping.zip,
    "country": $xref("countries", shipping.country)
  },
  "currency": currency,
  "items": [lines.{
    "sku": sku,
    "quantity": qty,
    "lineTotal": $round(qty * unitPrice, 2)
  }],
  "total": $round($sum(lines.(qty * unitPrice)), 2),
  "itemCount": $count(lines)
}"""

COUNTRIES = {"DE": "Germany", "AT": "Austria", "CH": "Switzerland", "FR": "France", "NL": "Netherlands"}
STATUSES = {"N": "new", "P": "paid", "S": "shipped", "C": "cancelled"}
SEGMENTS = {f"C-{i:04d}": ("gold" if i % 7 == 0 else "silver") for i in range(0, 400, 3)}

CONFIG = MapConfig.model_validate(
    {
        "expression": EXPRESSION,
        "lookups": {
            "countries": {"inline": COUNTRIES},
            "segments": {"inline": SEGMENTS},
        },
        "value_maps": {"orderStatus": STATUSES},
    }
)


def make_orders(n: int, seed: int) -> list[dict[str, Any]]:
    """Generated orders of about 600 bytes with 1-5 lines."""
    rng = random.Random(seed)
    orders = []
    for i in range(n):
        lines = [
            {
                "sku": f"SKU-{rng.randrange(10_000):05d}",
                "description": rng.choice(["Widget", "Gadget", "Sprocket", "Flange"])
                + " model "
                + rng.choice("ABCDE")
                + ", boxed",
                "qty": rng.randint(1, 9),
                "unitPrice": round(rng.uniform(1, 200), 2),
            }
            for _ in range(rng.randint(1, 5))
        ]
        day, hour, minute = rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59)
        orders.append(
            {
                "orderId": f"SO-{100_000 + i}",
                "createdAt": f"2024-{rng.randint(1, 12):02d}-{day:02d}T{hour:02d}:{minute:02d}:00Z",
                "status": rng.choice(list(STATUSES)),
                "channel": rng.choice(["web", "store", "phone"]),
                "customer": {
                    "id": f"C-{rng.randrange(400):04d}",
                    "name": rng.choice(["Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra"]),
                    "email": rng.choice(["Ada@Example.com", "GRACE@example.org", "alan@Example.net"]),
                },
                "shipping": {
                    "street": f"{rng.randint(1, 200)} Main Street",
                    "city": rng.choice(["Berlin", "Vienna", "Zurich", "Paris"]),
                    "zip": f"{rng.randint(10_000, 99_999)}",
                    "country": rng.choice(list(COUNTRIES)),
                },
                "currency": "EUR",
                "note": rng.choice(["", "leave at the door", "call before delivery", "gift wrap, no invoice"]),
                "lines": lines,
            }
        )
    return orders


def handwritten(mapping: Mapping) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The same transformation written by hand, with the same lookup tables."""
    xref = mapping.lookups.xref
    translate = mapping.value_maps.translate

    def transform(order: dict[str, Any]) -> dict[str, Any]:
        customer = order["customer"]
        shipping = order["shipping"]
        lines = order["lines"]
        return {
            "id": order["orderId"],
            "placedAt": to_timezone(order["createdAt"], "Europe/Berlin"),
            "status": translate("orderStatus", order["status"]),
            "channel": order["channel"],
            "customer": {
                "number": customer["id"],
                "name": customer["name"],
                "email": customer["email"].lower(),
                "segment": xref("segments", customer["id"], "standard"),
            },
            "shipTo": {
                "city": shipping["city"],
                "postalCode": shipping["zip"],
                "country": xref("countries", shipping["country"]),
            },
            "currency": order["currency"],
            "items": [
                {"sku": line["sku"], "quantity": line["qty"], "lineTotal": round(line["qty"] * line["unitPrice"], 2)}
                for line in lines
            ],
            "total": round(sum(line["qty"] * line["unitPrice"] for line in lines), 2),
            "itemCount": len(lines),
        }

    return transform


def engine_only(mapping: Mapping) -> Callable[[dict[str, Any]], Any]:
    """The full engine alone (no compiled path), with the same functions."""
    expression = mapping.expressions["$"]
    return lambda order: expression.evaluate_engine(order)


def rates(fns: dict[str, Callable[[Any], Any]], orders: list[dict[str, Any]], repeats: int) -> dict[str, float]:
    """Messages per CPU second of each function: best of ``repeats`` runs, the runs interleaved.

    CPU time (not wall time) and interleaving keep the comparison fair on a
    machine shared with other work.
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            for order in orders:
                fn(order)
            best[name] = min(best[name], time.process_time() - start)
    return {name: len(orders) / seconds for name, seconds in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="orders per run (default 10000)")
    parser.add_argument("--repeats", type=int, default=7, help="runs; the best is reported (default 7)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    mapping = build_mapping(CONFIG, base_dir=Path.cwd())
    if not mapping.expressions["$"].is_compiled:
        print("the order mapping was not compiled", file=sys.stderr)
        return 1
    orders = make_orders(args.n, args.seed)
    size = statistics.mean(len(json.dumps(o)) for o in orders)
    manual = handwritten(mapping)
    engine = engine_only(mapping)
    for order in orders:
        expected = manual(order)
        assert mapping.apply(order) == expected, (order, mapping.apply(order), expected)
        assert engine(order) == expected
    measured = rates({"compiled": mapping.apply, "manual": manual}, orders, args.repeats)
    engine_rate = rates({"engine": engine}, orders, max(1, args.repeats // 3))["engine"]
    compiled_rate, manual_rate = measured["compiled"], measured["manual"]
    print(f"orders: {args.n}, mean size {size:.0f} bytes, outputs identical")
    print(f"seamline.mapping (compiled):   {compiled_rate:10,.0f} msgs/s (per CPU second)")
    print(f"hand-written Python:           {manual_rate:10,.0f} msgs/s")
    print(f"ratio compiled / hand-written: {compiled_rate / manual_rate:.2f}x")
    print(f"full engine only (reference):  {engine_rate:10,.0f} msgs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
