"""The k3d end-to-end (examples/k3d/run.sh): hub and two edge clusters in Docker, installed with the charts.

Runs only where docker and k3d are installed (the project's CI machines have no Docker): elsewhere it skips and
says why. Mark: k3d (``pytest -m k3d`` runs only this).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MISSING = [tool for tool in ("docker", "k3d", "kubectl", "helm") if shutil.which(tool) is None]


@pytest.mark.k3d
@pytest.mark.skipif(bool(MISSING), reason=f"no k3d here: {', '.join(MISSING)} not on PATH (needs Docker and k3d)")
def test_a_component_runs_on_two_k3d_edge_clusters_installed_with_the_charts():
    result = subprocess.run(["bash", str(REPO / "examples" / "k3d" / "run.sh")], capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "demo/web runs on both edge clusters" in result.stdout
