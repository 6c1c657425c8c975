"""Where ``edgectl`` finds the operator token: ``--token``, then EDGECOLLAB_TOKEN, then EDGECOLLAB_TOKEN_FILE."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeclient.settings import TokenFileError
from edgectl.cli import main, operator_token
from edgectl.parser import build_parser


def args(*argv: str):
    return build_parser().parse_args([*argv, "get", "pools"])


def test_the_flag_comes_first_then_the_environment_then_the_file(tmp_path: Path):
    (tmp_path / "token").write_text("  from-the-file\n")
    environment = {"EDGECOLLAB_TOKEN": "from-the-environment", "EDGECOLLAB_TOKEN_FILE": str(tmp_path / "token")}
    assert operator_token(args("--token", "from-the-flag"), environment) == ("from-the-flag", "--token")
    assert operator_token(args(), environment) == ("from-the-environment", "EDGECOLLAB_TOKEN")
    del environment["EDGECOLLAB_TOKEN"]
    token, source = operator_token(args(), environment)
    assert token == "from-the-file" and str(tmp_path / "token") in source
    assert operator_token(args(), {}) == (None, "")
    assert operator_token(args(), {"EDGECOLLAB_TOKEN": " "}) == (None, "")


@pytest.mark.parametrize("content", [None, ""])
def test_a_token_file_that_is_missing_or_empty_is_named_in_the_error(tmp_path: Path, content: str | None):
    path = tmp_path / "admin-token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TokenFileError, match=str(path)):
        operator_token(args(), {"EDGECOLLAB_TOKEN_FILE": str(path)})


def test_edgectl_says_so_before_contacting_the_hub_when_the_token_file_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("EDGECOLLAB_TOKEN", raising=False)
    monkeypatch.setenv("EDGECOLLAB_TOKEN_FILE", str(tmp_path / "nowhere"))
    assert main(["--hub", "http://127.0.0.1:9", "get", "pools"]) == 1
    err = capsys.readouterr().err
    assert "EDGECOLLAB_TOKEN_FILE names" in err and "nowhere" in err and "cannot reach" not in err
