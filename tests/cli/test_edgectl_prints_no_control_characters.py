"""``edgectl`` prints what came from the hub without terminal control characters or escape sequences."""

from __future__ import annotations

import pytest

from edgectl.output import one_line, sanitize, say, show_table


@pytest.mark.parametrize(("text", "shown"), [
    ("\x1b[31mred\x1b[0m", "red"),                                   # colours (CSI)
    ("a\x1b[2J\x1b[Hb", "ab"),                                       # clear screen, cursor home
    ("x\x1b]0;title\x07y", "xy"),                                    # window title (OSC ... BEL)
    ("x\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\y", "xlinky"),  # hyperlink (OSC ... ST)
    ("x\x1bPq#0;2;0;0;0\x1b\\y", "xy"),                               # DCS (sixel) ... ST
    ("x\x9b2Jy", "xy"),                                              # C1 CSI
    ("x\x9d0;t\x9cy", "xy"),                                         # C1 OSC ... C1 ST
    ("a\x85b\x86c", "abc"),                                          # other C1
    ("x\x9fapc string\x9cy", "xy"),                                   # C1 APC ... ST
    ("bell\x07 bs\x08 nul\x00 del\x7f", "bell bs nul del"),           # C0 and DEL
    ("Failed\rDeployed", "FailedDeployed"),                          # a carriage return cannot overwrite
    ("\x1bc", ""),                                                   # full reset
    ("tail\x1b", "tail"),                                            # a lone ESC
    ("two\nlines\tand a tab", "two\nlines\tand a tab"),              # newline and tab stay
    ("héllo 世界 ✓", "héllo 世界 ✓"),                                  # text is text
])
def test_sanitize_removes_escape_sequences_and_control_characters_but_newline_and_tab(text: str, shown: str):
    assert sanitize(text) == shown


def test_a_table_cell_or_field_is_kept_to_one_line():
    assert one_line("one\ntwo\tthree\x1b[1m") == "one two three"
    assert one_line(None) == "" and one_line(3) == "3"


def test_every_print_path_sanitizes(capsys: pytest.CaptureFixture[str]):
    say("out\x1b[31m\x07")
    say("err\x9b1m", err=True)
    show_table([{"name": "n\x1b]0;t\x07", "message": "fake\nrow"}], ["name", "message"])
    printed = capsys.readouterr()
    assert printed.out == "out\nNAME  MESSAGE\nn     fake row\n"
    assert printed.err == "err\n"
