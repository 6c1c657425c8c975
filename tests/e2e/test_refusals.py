"""What the hub refuses: bad component specs (nothing stored) and bad join tokens (nothing registered)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from fleet_checks import write_spec

from edgesim.fleet import Fleet, Node


def _refused(fleet: Fleet, spec: Path) -> str:
    assert fleet.hub is not None
    result = fleet.hub.ctl("apply", "-f", str(spec), check=False)
    assert result.returncode == 1, result.stdout
    assert fleet.hub.ctl_json("get", "components") == []
    return result.stderr


def test_a_spec_whose_chart_is_missing_is_refused_naming_the_chart(fleet: Fleet, tmp_path: Path):
    error = _refused(fleet, write_spec(tmp_path / "web.yaml", chart=tmp_path / "no-such-chart"))
    assert "spec.chart" in error and "no-such-chart" in error


def test_a_misspelled_edge_field_is_refused_with_a_suggestion(fleet: Fleet, tmp_path: Path):
    error = _refused(fleet, write_spec(tmp_path / "web.yaml", edge={"nodePool": ["shanghai"]}))
    assert "spec.edge.nodePool" in error and "nodePools" in error


def test_a_chart_with_a_template_error_is_refused_by_the_hub_with_helms_message(fleet: Fleet, tmp_path: Path):
    chart = tmp_path / "broken"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": "broken", "version": "0.1.0"}))
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"
        "data:\n  host: {{ required \"db.host is required\" .Values.db }}\n"
    )
    error = _refused(fleet, write_spec(tmp_path / "web.yaml", chart=chart))
    assert "db.host is required" in error and "demo/web" in error


@pytest.mark.parametrize("case", ["unknown", "expired", "used up", "malformed"])
def test_a_bad_token_is_refused_at_join_and_registers_nothing(fleet: Fleet, case: str):
    hub = fleet.hub
    assert hub is not None
    if case == "unknown":
        token, reason = "ec1.000000000000.not-a-real-secret", "token is unknown"
    elif case == "expired":
        token, reason = hub.token("shanghai", ttl="1s"), "expired"
        time.sleep(1.5)
    elif case == "used up":
        token, reason = hub.token("shanghai", uses=1), "no uses left"
        first = Node("first", fleet.workdir / "nodes", hub, fleet.node_options)
        assert first.join(token).returncode == 0
        first.cleanup()
    else:
        token, reason = "hello", "malformed"
    intruder = Node("intruder", fleet.workdir / "nodes", hub, fleet.node_options)
    result = intruder.join(token)
    assert result.returncode == 1 and reason in result.stderr
    assert "intruder" not in [n["name"] for n in hub.ctl_json("get", "nodes")]
    assert not (intruder.state_dir / "identity.json").exists()
    intruder.cleanup()
