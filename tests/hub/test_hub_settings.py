"""Hub settings: token defaults stay within the bounds the API enforces on a request."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgehub.settings import MAX_TOKEN_TTL_SECONDS, MAX_TOKEN_USES, HubSettings, TokenDefaults


@pytest.mark.parametrize(("defaults", "field"), [
    ({"ttl_seconds": 0}, "ttl_seconds"),
    ({"ttl_seconds": MAX_TOKEN_TTL_SECONDS + 1}, "ttl_seconds"),
    ({"ttl_seconds": float("nan")}, "ttl_seconds"),
    ({"uses": 0}, "uses"),
    ({"uses": MAX_TOKEN_USES + 1}, "uses"),
])
def test_token_defaults_beyond_the_api_bounds_are_refused_by_name(defaults: dict[str, float], field: str):
    with pytest.raises(ValueError, match=f"tokens.{field}"):
        TokenDefaults(**defaults)


def test_a_settings_file_sets_the_token_defaults(tmp_path: Path):
    config = tmp_path / "hub.yaml"
    config.write_text("state_dir: state\ntokens: {ttl_seconds: 120, uses: 3}\n")
    settings = HubSettings.from_file(config)
    assert settings.tokens == TokenDefaults(ttl_seconds=120, uses=3)
    assert settings.state_dir == tmp_path / "state"


@pytest.mark.parametrize(("key", "value"), [
    ("render_parallel", 0), ("render_queue", -1), ("render_timeout_seconds", 0), ("render_output_bytes", 10),
    ("max_status_bytes", 10), ("max_seq_jump", 0), ("resync_interval_seconds", 7200),
])
def test_a_settings_file_with_a_bound_out_of_range_is_refused_when_read_naming_the_key(
    tmp_path: Path, key: str, value: float
):
    config = tmp_path / "hub.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n{key}: {value}\n")
    with pytest.raises(ValueError, match=key):
        HubSettings.from_file(config)


@pytest.mark.parametrize("days", [0, -1, 29 / 86400, 3651, float("nan"), "90", True])
def test_a_node_certificate_lifetime_out_of_bounds_is_refused(days: object):
    with pytest.raises(ValueError, match="node_certificate_days"):
        HubSettings(state_dir=Path("/s"), node_certificate_days=days)  # type: ignore[arg-type]


def test_node_certificates_live_90_days_unless_the_file_says_otherwise(tmp_path: Path):
    assert HubSettings(state_dir=tmp_path).node_certificate_lifetime.days == 90
    config = tmp_path / "hub.yaml"
    config.write_text("state_dir: state\nnode_certificate_days: 0.00035\nrenewal_rate_limit: {per_second: 1, burst: 3}\n")
    settings = HubSettings.from_file(config)
    assert settings.node_certificate_lifetime.total_seconds() == pytest.approx(30.24)
    assert (settings.renewal_rate_limit.per_second, settings.renewal_rate_limit.burst) == (1, 3)
