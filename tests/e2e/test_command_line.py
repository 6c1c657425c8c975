"""The command-line surface: hub settings from a file, the hub URL and operator token from the environment,
node status offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from fleet_checks import EXAMPLE_SPEC, wait_deployed

from edgesim.fleet import Fleet, ManagedProcess, listening_ports, wait_until


def test_the_hub_reads_its_settings_from_a_file_and_edgectl_finds_it_through_the_environment(fleet: Fleet,
                                                                                             tmp_path: Path):
    assert fleet.broker is not None
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump({"state_dir": "configured-state", "listen_port": 0,
                                      "mqtt_url": fleet.broker.url, "tokens": {"ttl_seconds": 120, "uses": 3},
                                      "token_rate_limit": {"per_second": 0.1, "burst": 1},
                                      "allowed_hosts": ["hub.example"]}))
    hub = ManagedProcess("configured hub", tmp_path / "configured-hub.log")
    hub._spawn([sys.executable, "-m", "edgehub.cli", "serve", "--config", str(config)])
    try:
        port = wait_until(lambda: next(iter(listening_ports(hub.log_path)), None), timeout=30,
                          what="the configured hub to say where it listens")
        token_file = tmp_path / "configured-state" / "admin-token"
        env = {**os.environ, "EDGECOLLAB_HUB": f"http://127.0.0.1:{port}", "EDGECOLLAB_TOKEN_FILE": str(token_file)}
        env.pop("EDGECOLLAB_TOKEN", None)

        def ctl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True,
                                  env=env, timeout=60)

        wait_until(lambda: ctl("get", "pools").returncode == 0, timeout=30, what="the configured hub")
        token = json.loads(ctl("token", "create", "--pool", "shanghai", "-o", "json").stdout)
        assert token["uses"] == 3 and token["pool"] == "shanghai"
        assert (tmp_path / "configured-state" / "hub.db").exists()
        assert f"operator token in {token_file}" in hub.log_path.read_text()
        # The file's rate limit: one token, then the next must wait.
        limited = ctl("token", "create", "--pool", "shanghai")
        assert limited.returncode == 1 and "too many token creation requests" in limited.stderr
    finally:
        hub.stop()


def test_a_settings_file_with_an_unknown_key_is_refused_by_name(tmp_path: Path):
    config = tmp_path / "hub.yaml"
    config.write_text("state_dir: s\nlisten_prot: 9000\n")
    result = subprocess.run([sys.executable, "-m", "edgehub.cli", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "listen_prot" in result.stderr


def test_edgeagent_status_shows_what_the_node_holds_while_the_hub_is_down(fleet: Fleet):
    assert fleet.hub is not None
    node = fleet.add_node("sh-1", "shanghai")
    fleet.hub.ctl("apply", "-f", str(EXAMPLE_SPEC))
    wait_deployed(fleet.hub, "demo/web", revision=1, nodes=1)
    fleet.hub.stop()

    result = subprocess.run([sys.executable, "-m", "edgeagent.cli", "status", "--state-dir", str(node.state_dir),
                             "-o", "json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    (release,) = status["releases"]
    assert (status["node"], status["pool"]) == ("sh-1", "shanghai")
    assert (release["release"], release["desired_revision"], release["applied_revision"], release["phase"]) == \
        ("web", 1, 1, "Deployed")
    table = subprocess.run([sys.executable, "-m", "edgeagent.cli", "status", "--state-dir", str(node.state_dir)],
                           capture_output=True, text=True, timeout=60).stdout
    assert "Deployed" in table and "sh-1" in table
