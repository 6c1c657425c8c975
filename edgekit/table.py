"""Plain-text tables for command-line output (no dependencies, usable by every side)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    cells = [[c.upper().replace("_", " ") for c in columns]]
    cells += [["" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    print(format_table(rows, columns))
