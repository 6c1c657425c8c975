"""Hub settings: token defaults stay within the bounds the API enforces on a request; where charts may be
fetched from (chart_sources), from the settings file and `edgehub serve --allow-chart-source`."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from edgehub.cli import build_parser, main, settings_from_args
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
    ("render_fast_seconds", 0), ("render_fast_seconds", 7200),
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
        HubSettings(state_dir=Path("/s"), node_certificate_days=days)  # type: ignore[arg-type]  # wrong types on purpose: refused


def test_node_certificates_live_90_days_unless_the_file_says_otherwise(tmp_path: Path):
    assert HubSettings(state_dir=tmp_path).node_certificate_lifetime.days == 90
    config = tmp_path / "hub.yaml"
    config.write_text("state_dir: state\nnode_certificate_days: 0.00035\n"
                      "renewal_rate_limit: {per_second: 1, burst: 3}\n")
    settings = HubSettings.from_file(config)
    assert settings.node_certificate_lifetime.total_seconds() == pytest.approx(30.24)
    assert (settings.renewal_rate_limit.per_second, settings.renewal_rate_limit.burst) == (1, 3)


# --------------------------------------------------------------------------- chart_sources


def test_charts_come_from_public_addresses_only_unless_the_settings_allow_more(tmp_path: Path):
    assert HubSettings(state_dir=tmp_path).chart_sources.allow == ()
    config = tmp_path / "hub.yaml"
    config.write_text("state_dir: state\nchart_sources:\n  allow: [127.0.0.0/8, 10.1.0.0/16, '::1/128', 192.168.1.7]\n")
    sources = HubSettings.from_file(config).chart_sources
    assert sources.allow == ("127.0.0.0/8", "10.1.0.0/16", "::1/128", "192.168.1.7/32")
    assert sources.networks == tuple(ipaddress.ip_network(n) for n in sources.allow)


@pytest.mark.parametrize(("text", "problem"), [
    ("chart_sources: {allow: [10.1.0.300/16]}", "chart_sources.allow: '10.1.0.300/16' is not a CIDR or an IP address"),
    ("chart_sources: {allow: [10.1.2.3/16]}", "chart_sources.allow: '10.1.2.3/16' is not a CIDR or an IP address "
                                              "(10.1.2.3/16 has host bits set: did you mean 10.1.0.0/16?)"),
    ("chart_sources: {allow: [charts.lab]}", "chart_sources.allow: 'charts.lab' is not a CIDR or an IP address"),
    ("chart_sources: {allow: [8]}", "chart_sources.allow: 8 is not a CIDR or an IP address"),
    ("chart_sources: {allow: ['']}", "chart_sources.allow: '' is not a CIDR or an IP address"),
    ("chart_sources: {allow: 127.0.0.0/8}", "chart_sources.allow must be a list of CIDRs or addresses, not "
                                            "'127.0.0.0/8'"),
    ("chart_sources: {alow: [127.0.0.0/8]}", "chart_sources: unknown keys ['alow']; known: ['allow']"),
    ("chart_sources: [127.0.0.0/8]", "chart_sources must be a mapping such as {allow: [10.1.0.0/16]}"),
])
def test_a_bad_chart_sources_setting_is_refused_naming_the_key_and_the_entry(tmp_path: Path, text: str, problem: str):
    config = tmp_path / "hub.yaml"
    config.write_text(f"state_dir: state\n{text}\n")
    with pytest.raises(ValueError) as caught:
        HubSettings.from_file(config)
    assert str(caught.value).startswith(f"{config}: {problem}"), str(caught.value)


def test_edgehub_serve_allow_chart_source_adds_to_the_settings_file(tmp_path: Path):
    config = tmp_path / "hub.yaml"
    config.write_text("state_dir: state\nchart_sources: {allow: [10.1.0.0/16]}\n")
    args = build_parser().parse_args(["serve", "--config", str(config), "--allow-chart-source", "127.0.0.0/8",
                                      "--allow-chart-source", "::1", "--allow-chart-source", "10.1.0.0/16"])
    settings = settings_from_args(args)
    assert settings is not None and settings.chart_sources.allow == ("10.1.0.0/16", "127.0.0.0/8", "::1/128")
    # Without a settings file, the flags alone.
    args = build_parser().parse_args(["serve", "--state", str(tmp_path / "s"), "--allow-chart-source", "127.0.0.1"])
    assert settings_from_args(args).chart_sources.allow == ("127.0.0.1/32",)  # type: ignore[union-attr]  # flags alone still make settings
    args = build_parser().parse_args(["serve", "--state", str(tmp_path / "s")])
    assert settings_from_args(args).chart_sources.allow == ()  # type: ignore[union-attr]  # flags alone still make settings


def test_a_bad_allow_chart_source_flag_or_setting_stops_edgehub_serve_naming_it(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--state", str(tmp_path), "--allow-chart-source", "charts.lab"])
    assert exited.value.code == 2
    assert ("argument --allow-chart-source: 'charts.lab' is not a CIDR or an IP address (such as 10.1.0.0/16, "
            "127.0.0.1 or ::1/128)") in capsys.readouterr().err
    config = tmp_path / "hub.yaml"
    config.write_text("state_dir: state\nchart_sources: {allow: [10.0.0.1/8]}\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (f"edgehub: {config}: chart_sources.allow: '10.0.0.1/8' is not a CIDR or an IP "
                                       "address (10.0.0.1/8 has host bits set: did you mean 10.0.0.0/8?)\n")
