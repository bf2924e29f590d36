"""Reading a Vega-Lite spec as the chart builders write it (``chart.to_dict()``): its unit specs, the rows
each draws, the categories along a channel. analysis.print_layout lays charts out for print with these.
"""

from __future__ import annotations

from typing import Any

Spec = dict[str, Any]
DISCRETE = ("nominal", "ordinal")


def units(spec: Spec) -> list[Spec]:
    """The unit specs of a single or layered chart (a layer of layers too), in drawing order."""
    if "layer" in spec:
        return [unit for layer in spec["layer"] for unit in units(layer)]
    return [spec] if "mark" in spec else []


def mark_type(unit: Spec) -> str:
    mark = unit.get("mark")
    return mark if isinstance(mark, str) else (mark or {}).get("type", "")


def rows_of(spec: Spec, unit: Spec) -> list[dict]:
    """The inline rows a unit spec draws (its own data, or the nearest enclosing one's)."""
    data = unit.get("data") or spec.get("data") or {}
    if "values" in data:
        return list(data["values"])
    return list(spec.get("datasets", {}).get(data.get("name", ""), []))


def field_of(enc: Any) -> str | None:
    return enc.get("field") if isinstance(enc, dict) else None


def categories(spec: Spec, channel: str) -> list:
    """The categories along a discrete ``channel`` in drawing order (its explicit domain, else its sort list,
    else as first seen)."""
    values: list = []
    for unit in units(spec):
        enc = unit.get("encoding", {}).get(channel)
        field = field_of(enc)
        if field is None or enc.get("type") not in DISCRETE:
            continue
        if isinstance((enc.get("scale") or {}).get("domain"), list):
            return list(enc["scale"]["domain"])
        sort = enc.get("sort")
        present = list(dict.fromkeys(r.get(field) for r in rows_of(spec, unit)))
        if isinstance(sort, list):
            present = [v for v in sort if v in set(present)] + [v for v in present if v not in set(sort)]
        values += [v for v in present if v not in values]
    return values


def is_discrete(spec: Spec, channel: str) -> bool:
    return any((unit.get("encoding", {}).get(channel) or {}).get("type") in DISCRETE
               for unit in units(spec) if field_of(unit.get("encoding", {}).get(channel)))


def title_of(enc: dict) -> str:
    title = enc.get("title", enc.get("field", ""))
    return "" if title is None else str(title)


def label_texts(values: list) -> list[str]:
    return ["" if v is None else str(v) for v in values]
