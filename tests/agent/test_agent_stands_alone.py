"""The agent installs and runs alone: no module of edgeagent imports the hub, the deployer, edgectl,
aiohttp or the Helm engine (checked in a fresh interpreter where those cannot be imported, the way
aiohttp tests its own imports)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

FORBIDDEN = ("edgehub", "deployer_plugin", "edgectl", "aiohttp", "helm_python", "kubernetes")

SCRIPT = textwrap.dedent(f"""
    import importlib, importlib.abc, pkgutil, sys

    FORBIDDEN = {FORBIDDEN!r}

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ImportError(f"{{name}} is not installed on an edge node")
            return None

    sys.meta_path.insert(0, Refuse())
    import edgeagent
    names = ["edgeagent"] + [m.name for m in pkgutil.walk_packages(edgeagent.__path__, "edgeagent.")]
    for name in names:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    print(len(names), "modules;", "leaked:", leaked)
""")


def test_every_agent_module_imports_without_the_hub_side():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.split()[0])
    assert count >= 12 and result.stdout.strip().endswith("leaked: []"), result.stdout


def test_the_agent_command_runs_without_the_hub_side():
    script = SCRIPT.replace("for name in names:", "from edgeagent.cli import main\nfor name in []:")
    script += ("\nsys.argv = ['edgeagent', '--help']\n"
               "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "join" in result.stdout and "doctor" in result.stdout and "exit 0" in result.stdout
