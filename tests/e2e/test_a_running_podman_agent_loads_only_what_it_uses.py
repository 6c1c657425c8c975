"""A podman node's real ``edgeagent run`` process, joined, online and running a component, has loaded no
Kubernetes code and no ``cryptography`` (it verified and decrypted its assignment with PyNaCl and read its
certificate's renewal time from the record join left): Python's own import log of that process
(``PYTHONPROFILEIMPORTTIME``, what ``python -X importtime`` prints) names neither. What a node does not use
costs it no memory (bench/README.md, "Agent footprint")."""

from __future__ import annotations

import dataclasses
import re
import time

from fleet_checks import EXAMPLE_SPEC, wait_deployed

from edgesim.fleet import Fleet

IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", re.M)


def test_a_podman_agent_running_a_component_never_imported_kubernetes_code_or_cryptography(fleet: Fleet):
    hub = fleet.hub
    assert hub is not None
    options = dataclasses.replace(fleet.node_options, env=(("PYTHONPROFILEIMPORTTIME", "1"),))
    node = fleet.add_node("sh-1", "shanghai", options=options)
    hub.ctl("apply", "-f", str(EXAMPLE_SPEC))
    wait_deployed(hub, "demo/web", revision=1, nodes=1)
    assert len(node.release_pods("demo.web")) == 1
    # Two more reconcile passes (5 s apart by default) watching the pod, then the agent is still running.
    time.sleep(12)
    assert node.running
    imported = set(IMPORTED.findall(node.log_path.read_text()))
    assert {"edgeagent.runtime.podman", "edgeagent.memory", "nacl.bindings"} <= imported
    assert sorted(m for m in imported if "kubernetes" in m) == []
    assert sorted(m for m in imported if m.split(".")[0] == "cryptography") == []
