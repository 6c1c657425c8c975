"""A podman node's ``edgeagent run`` never loads the Kubernetes runtime or the ``kubernetes`` client, nor
``doctor``: what a node does not use costs it no memory (bench/README.md, "Agent footprint").

Checked in a fresh interpreter that takes the path ``edgeagent run`` takes: its command line parsed by the
CLI's own parser, the runtime chosen by ``runtime_from_args`` and the agent built around it. The same check
with ``--runtime kubernetes`` shows the Kubernetes runtime does get loaded when chosen."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from edgeagent.agent import Agent, AgentSettings
    from edgeagent.cli import build_parser, runtime_from_args
    from edgeagent.identity import NodeIdentity

    state_dir = Path(sys.argv[1])
    args = build_parser().parse_args(["run", "--state-dir", str(state_dir), *sys.argv[2:]])
    runtime = runtime_from_args(args, state_dir)
    identity = NodeIdentity(node="n1", pool="p", labels={}, hub_url="", mqtt_url="mqtt://127.0.0.1:1883",
                            hub_public_key="", ca_certificate="")
    Agent(AgentSettings(state_dir=state_dir), identity, runtime)
    print(json.dumps({"runtime": runtime.name, "modules": sorted(sys.modules)}))
""")


def loaded_by_run(state_dir: Path, *flags: str) -> tuple[str, set[str]]:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(state_dir), *flags], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    return out["runtime"], set(out["modules"])


def kubernetes_code(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] == "kubernetes" or m.startswith("edgeagent.runtime.kubernetes"))


def test_run_with_the_podman_runtime_loads_no_kubernetes_code_and_no_doctor(tmp_path: Path):
    runtime, modules = loaded_by_run(tmp_path, "--runtime", "podman")
    assert runtime == "podman"
    assert kubernetes_code(modules) == []
    assert "edgeagent.doctor" not in modules
    # The runtime it does run is there, and so is the agent's memory keeping.
    assert {"edgeagent.runtime.podman", "edgeagent.memory"} <= modules


def test_run_with_the_runtime_chosen_at_join_as_podman_loads_no_kubernetes_code(tmp_path: Path):
    (tmp_path / "runtime.json").write_text(json.dumps({"runtime": "podman", "kubeconfig": None}))
    runtime, modules = loaded_by_run(tmp_path)
    assert runtime == "podman" and kubernetes_code(modules) == []


def test_run_with_the_kubernetes_runtime_loads_it(tmp_path: Path):
    runtime, modules = loaded_by_run(tmp_path, "--runtime", "kubernetes")
    assert runtime == "kubernetes"
    assert "edgeagent.runtime.kubernetes" in modules
