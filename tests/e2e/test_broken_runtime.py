"""A node whose podman cannot create pods (catatonit missing, as on a fresh machine that skipped
podman's Recommends) says so once through its conditions, applies nothing, and recovers by itself
once the helper is there."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from fleet_checks import node_events, node_view, wait_deployed, write_spec

from edgesim.fleet import Fleet, wait_until


def podman_without_catatonit(workdir: Path, machine_conf: Path | None) -> tuple[Path, Path]:
    """A PATH directory holding only podman, and a containers.conf whose helper directory is that one."""
    helpers = workdir / "helpers"
    helpers.mkdir()
    (helpers / "podman").symlink_to(shutil.which("podman") or "/usr/bin/podman")
    text = machine_conf.read_text() if machine_conf else ""
    line = f'helper_binaries_dir = ["{helpers}"]'
    text = text.replace("[engine]", f"[engine]\n{line}", 1) if "[engine]" in text else f"{text}\n[engine]\n{line}\n"
    conf = workdir / "containers.conf"
    conf.write_text(text)
    return helpers, conf


def conditions(hub, node: str) -> dict[str, dict[str, str]]:
    return {c["type"]: c for c in node_view(hub, node)["conditions"]}


def test_a_node_that_cannot_make_pods_says_so_once_applies_nothing_and_recovers_when_fixed(
    fleet: Fleet, tmp_path: Path
):
    hub = fleet.hub
    assert hub is not None
    helpers, conf = podman_without_catatonit(tmp_path, fleet.node_options.containers_conf)
    options = dataclasses.replace(fleet.node_options, containers_conf=conf, env=(("PATH", str(helpers)),))
    fleet.add_node("sh-1", "shanghai", options=options)
    for name in ("alpha", "beta"):
        hub.ctl("apply", "-f", str(write_spec(tmp_path / f"{name}.yaml", name=name)))

    def runtime_not_ready() -> dict[str, dict[str, str]] | None:
        found = conditions(hub, "sh-1")
        view = node_view(hub, "sh-1")
        reported = {r["release"] for r in view["releases"]}
        ok = found.get("RuntimeReady", {}).get("status") == "False" and reported == {"alpha", "beta"}
        return found if ok else None

    found = wait_until(runtime_not_ready, timeout=60, what="sh-1 to report RuntimeReady=False with both releases")
    runtime, storage = found["RuntimeReady"], found["StorageReady"]
    assert runtime["reason"] == "PodCreateFailed"
    assert "catatonit" in runtime["message"] and runtime["since"]
    assert (storage["status"], storage["reason"]) == ("True", "StorageWritable")

    table = hub.ctl("get", "nodes").stdout
    assert "RuntimeReady=False(PodCreateFailed)" in table.splitlines()[1]
    described = hub.ctl("describe", "node", "sh-1").stdout
    assert any(line.split()[:3] == ["RuntimeReady", "False", "PodCreateFailed"] for line in described.splitlines())

    # Several reconcile passes and re-checks later: one NodeNotReady, no ApplyFailed, nothing deployed.
    window_end = time.monotonic() + 15
    while time.monotonic() < window_end:
        reasons = [e["reason"] for e in node_events(hub, "sh-1")]
        assert reasons.count("NodeNotReady") == 1 and "ApplyFailed" not in reasons, reasons
        assert all(r["phase"] != "Deployed" for r in node_view(hub, "sh-1")["releases"])
        time.sleep(1)

    (helpers / "catatonit").symlink_to(shutil.which("catatonit") or "/usr/bin/catatonit")
    for name in ("alpha", "beta"):
        wait_deployed(hub, f"demo/{name}", revision=1, nodes=1, timeout=120)
    healthy = conditions(hub, "sh-1")
    assert healthy["RuntimeReady"]["status"] == "True" and healthy["RuntimeReady"]["since"] > runtime["since"]
    assert healthy["StorageReady"]["since"] == storage["since"]
    reasons = [e["reason"] for e in node_events(hub, "sh-1")]
    assert reasons.count("NodeNotReady") == 1 and reasons.count("NodeReady") == 1
    assert "ApplyFailed" not in reasons
    assert reasons.index("NodeNotReady") < reasons.index("NodeReady") < reasons.index("Applied")
