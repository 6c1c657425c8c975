"""``edgectl``'s output formats and exit codes without a hub: YAML that reads back as the data, a watch
table that lines up with the list, usage errors (2) and a hub that is not there (3), defined once
(``edgectl.output.EXIT_CODE_MEANINGS``) and shown alike by ``--help`` and docs/cli.md. The codes against a
real hub are in ``tests/hub/test_edgectl_watch_and_events.py``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgectl.cli import main
from edgectl.output import EXIT_CODE_MEANINGS, EXIT_CODES, RowPrinter, exit_codes_table, show_table, to_yaml
from edgectl.parser import build_parser
from edgesim.net import free_port

REPO = Path(__file__).resolve().parents[2]
HOSTILE = {"message": "\x1b[31mred\x1b[0m \x07bell\r\nnext\ttab \x9b2J \x85 世界 'q' \"dq\" {a: [b]} - x: y",
           "n": 3, "f": 1.5, "none": None, "yes": True, "empty": "", "list": [], "deep": {"k": ["no", "on", "1e3"]}}


def test_yaml_reads_back_as_the_same_data_and_holds_no_control_characters():
    text = to_yaml([HOSTILE])
    assert yaml.safe_load(text) == [HOSTILE]
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text)
    assert not text.startswith(("[", "{"))  # block style


def test_the_first_print_of_a_watch_table_is_the_table_and_later_rows_line_up(capsys: pytest.CaptureFixture[str]):
    rows = [{"name": "sh-1", "pool": "shanghai"}, {"name": "a-much-longer-name", "pool": "p"}]
    show_table(rows, ["name", "pool"])
    table = capsys.readouterr().out
    printer = RowPrinter(["name", "pool"])
    printer.print([printer.cells(r) for r in rows], header=True)
    assert capsys.readouterr().out == table
    printer.print([printer.cells({"name": "sh-2\x1b[2J", "pool": "beijing"})])
    later = capsys.readouterr().out
    assert later.index("beijing") == table.index("POOL") and "\x1b" not in later


@pytest.mark.parametrize("argv", [
    [], ["get"], ["get", "widgets"], ["get", "nodes", "-o", "xml"], ["get", "nodes", "--timeout", "5"],
    ["get", "nodes", "-w", "--interval", "0.1"], ["get", "nodes", "-w", "--interval", "301"],
    ["get", "nodes", "-w", "--timeout", "soon"], ["events", "--follow", "--limit", "1001"],
    ["events", "--interval", "2"], ["describe", "node"], ["--hub", "localhost:8470", "get", "pools"],
])
def test_a_usage_error_exits_with_2_before_asking_the_hub(argv: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    printed = capsys.readouterr()
    assert printed.out == "" and "usage: edgectl" in printed.err


@pytest.mark.parametrize("argv", [["get", "nodes"], ["events", "--node", "n"], ["describe", "component", "demo/web"],
                                  ["get", "pools", "-w", "--timeout", "3"], ["events", "-f"]])
def test_a_hub_that_is_not_there_exits_with_3(argv: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(["--hub", f"http://127.0.0.1:{free_port()}", "--token", "t", *argv]) == 3
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.startswith("edgectl: cannot reach the hub at http://127.0.0.1:")


def test_every_exit_code_is_defined_once_and_shown_alike_by_help_and_the_cli_doc():
    help_text = subprocess.run([sys.executable, "-m", "edgectl.cli", "--help"], capture_output=True, text=True,
                               cwd=REPO, timeout=60).stdout
    cli_doc = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert sorted(EXIT_CODE_MEANINGS) == [0, 1, 2, 3, 4, 130]
    assert EXIT_CODES in help_text
    for code in EXIT_CODE_MEANINGS:
        assert re.search(rf"^\s+{code}\s", EXIT_CODES, re.M), code
    # docs/cli.md holds the table exit_codes_table() makes: a change to a code or its meaning shows here.
    assert exit_codes_table() in cli_doc


def test_every_command_that_prints_data_takes_json_and_yaml_and_lists_take_wide():
    parser = build_parser()
    commands = [["token", "create", "--pool", "p"], ["apply", "-f", "x.yaml"], ["get", "nodes"], ["events"],
                ["describe", "node", "n"], ["delete", "component", "c"], ["node", "reset", "n"],
                ["credentials", "create", "--role", "dashboard"], ["credentials", "list"],
                ["credentials", "revoke", "n"], ["history", "demo/web"], ["rollback", "demo/web"]]
    for argv in commands:
        for output in ("json", "yaml"):
            assert parser.parse_args([*argv, "-o", output]).output == output
    for argv in (["get", "nodes"], ["events"], ["credentials", "list"], ["describe", "node", "n"],
                 ["history", "demo/web"]):
        assert parser.parse_args([*argv, "-o", "wide"]).output == "wide"
