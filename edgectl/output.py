"""What ``edgectl`` prints and how it ends: the output formats, tables, and the exit codes.

Whatever came from the hub (names, status messages, events, notes) can hold what a node or chart
author wrote: everything printed goes through ``say``, which strips terminal control characters and
escape sequences, and table cells are kept to one line, so no answer can rewrite the operator's
terminal or forge rows.

The exit codes are defined once, in ``EXIT_CODE_MEANINGS``: ``edgectl --help`` prints them
(``EXIT_CODES``) and docs/cli.md holds ``exit_codes_table()``, which a test keeps equal.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from edgekit.table import format_table

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
# Scripts rely on these; `rollout status` gives 1 also for a rollout that failed, was rolled back or
# outlived --timeout (its --help says so).
EXIT_CODE_MEANINGS: dict[int, str] = {
    EXIT_OK: "success; a watch (get -w) or follow (events --follow) ended by Ctrl-C or --timeout",
    EXIT_FAILED: "the hub answered with an error or refused the request (4xx but 404, 5xx), or edgectl could not "
                 "do what was asked here (no operator token, a file it cannot read)",
    EXIT_USAGE: "usage: an unknown command, flag or value",
    EXIT_UNREACHABLE: "the hub could not be reached: connection refused, no answer in time, a name that does not "
                      "resolve",
    EXIT_NOT_FOUND: "not found: the hub answered 404 (no such node, component or credential)",
    EXIT_INTERRUPTED: "interrupted by Ctrl-C (but a watch or follow, which ends with 0)",
}
EXIT_CODES = "exit codes:\n" + "".join(
    textwrap.fill(meaning, width=105, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7) + "\n"
    for code, meaning in EXIT_CODE_MEANINGS.items())


def exit_codes_table() -> str:
    """The exit codes as the Markdown table docs/cli.md shows."""
    rows = [f"| `{code}` | {meaning} |" for code, meaning in EXIT_CODE_MEANINGS.items()]
    return "\n".join(["| code | meaning |", "| --- | --- |", *rows])


# -o: lists print a table, single objects text; json and yaml print the hub's answer as it is.
LIST_OUTPUTS = ["table", "wide", "json", "yaml"]
TEXT_OUTPUTS = ["text", "json", "yaml"]
DESCRIBE_OUTPUTS = ["text", "wide", "json", "yaml"]
DATA_OUTPUTS = ("json", "yaml")

# Terminal escape sequences: CSI (ESC [ or C1 CSI), OSC (ESC ] or C1 OSC, up
# to BEL or ST), DCS/SOS/PM/APC strings up to ST, and any other ESC sequence.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
# C0 but newline and tab, DEL, and C1.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitize(text: Any) -> str:
    """``text`` as a string fit for a terminal: escape sequences and control characters but newline and tab removed."""
    return _CONTROLS.sub("", _ESCAPES.sub("", str(text)))


def one_line(value: Any) -> str:
    """``value`` sanitized for a table cell or a one-line field: newlines and tabs become spaces."""
    return sanitize("" if value is None else value).replace("\n", " ").replace("\t", " ")


def say(text: Any, *, err: bool = False) -> None:
    """Print ``text`` sanitized: every line edgectl prints goes through here. Flushed, so a watch
    piped to another command shows each change when it happens."""
    print(sanitize(text), file=sys.stderr if err else sys.stdout, flush=True)


def show_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
               under: Sequence[Sequence[str]] = ()) -> None:
    """A table of ``rows``; ``under``: for each row, lines printed indented below it (each one line)."""
    header, *lines = format_table([{c: one_line(row.get(c)) for c in columns} for row in rows], columns).split("\n")
    for i, line in enumerate(lines):
        header += "\n" + line + "".join(f"\n    {one_line(text)}" for text in (under[i] if i < len(under) else ()))
    say(header)



def _print_json(data: Any) -> None:
    # json.dumps escapes control characters already; say() keeps the one path.
    say(json.dumps(data, indent=2, sort_keys=True))


def to_yaml(data: Any) -> str:
    """``data`` as block-style YAML that ``yaml.safe_load`` reads back as the same data. Without
    allow_unicode every character that is not printable ASCII is escaped (as json.dumps does)."""
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=True).rstrip("\n")


def print_data(data: Any, output: str) -> None:
    """The hub's answer as it is, for -o json or -o yaml."""
    if output == "yaml":
        say(to_yaml(data))
    else:
        _print_json(data)


class RowPrinter:
    """A table printed a few rows at a time (a watch): columns stay as wide as the widest cell so far,
    so later rows line up under the header. The first print is what ``show_table`` prints."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.header = [c.upper().replace("_", " ") for c in columns]
        self.widths = [len(h) for h in self.header]

    def cells(self, row: Mapping[str, Any]) -> list[str]:
        return [one_line(row.get(c)) for c in self.columns]

    def print(self, rows: Sequence[list[str]], *, header: bool = False) -> None:
        for cells in rows:
            self.widths = [max(w, len(c)) for w, c in zip(self.widths, cells, strict=True)]
        lines = ([self.header] if header else []) + list(rows)
        for cells in lines:
            say("  ".join(c.ljust(w) for c, w in zip(cells, self.widths, strict=True)).rstrip())



def timestamp(seconds: Any) -> str:
    """A Unix time from the hub as UTC ISO 8601; ``-`` if there is none."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
