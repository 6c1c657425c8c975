"""``edgectl`` needs the Helm engine for ``apply`` only, and says so plainly when it is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BLOCK_HELM = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "helm_python":
            raise ModuleNotFoundError("No module named 'helm_python'", name="helm_python")
sys.meta_path.insert(0, Refuse())
from edgectl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def edgectl_without_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_HELM, "--hub", "http://127.0.0.1:9", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_apply_without_the_helm_engine_names_what_is_missing_and_how_to_install_it():
    result = edgectl_without_helm("apply", "-f", "examples/web/component.yaml")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Helm engine" in result.stderr and "helm_python" in result.stderr
    assert "pip install 'edgecollab[hub]'" in result.stderr


def test_other_commands_work_without_the_helm_engine():
    result = edgectl_without_helm("get", "nodes")
    assert result.returncode == 3 and "Traceback" not in result.stderr  # 3: the hub could not be reached
    assert "cannot reach the hub at http://127.0.0.1:9" in result.stderr
