"""Hub settings for who may call the API: allowed hosts and rate limits, from a file and checked by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgehub.auth import HostAllowList, host_name
from edgehub.settings import HubSettings, RateLimit


def test_a_settings_file_sets_the_allowed_hosts_and_the_rate_limits(tmp_path: Path):
    config = tmp_path / "hub.yaml"
    config.write_text("state_dir: state\nallowed_hosts: [Hub.Example., 192.0.2.7, '[2001:db8::1]']\n"
                      "join_rate_limit: {per_second: 50, burst: 100}\ntoken_rate_limit: {per_second: 0.5, burst: 2}\n"
                      "rate_limit_sources: 500\n")
    settings = HubSettings.from_file(config)
    assert settings.allowed_hosts == ("hub.example", "192.0.2.7", "2001:db8::1")
    assert settings.join_rate_limit == RateLimit(per_second=50, burst=100)
    assert settings.token_rate_limit == RateLimit(per_second=0.5, burst=2)
    assert settings.rate_limit_sources == 500


def test_the_defaults_limit_joins_to_10_a_second_and_token_creations_to_2():
    settings = HubSettings(state_dir=Path("/state"))
    assert settings.join_rate_limit == RateLimit(per_second=10, burst=20)
    assert settings.token_rate_limit == RateLimit(per_second=2, burst=10)
    assert settings.allowed_hosts == () and settings.admin_token_path == Path("/state/admin-token")


@pytest.mark.parametrize(("text", "problem"), [
    ("allowed_hosts: hub.example\n", "allowed_hosts must be a list"),
    ("allowed_hosts: ['http://hub.example']\n", "'http://hub.example' is not a host name"),
    ("allowed_hosts: ['hub.example:8470']\n", "is not a host name"),
    ("join_rate_limit: {per_second: 0, burst: 5}\n", "join_rate_limit: per_second 0"),
    ("token_rate_limit: {per_second: 1, burst: 0}\n", "token_rate_limit: burst 0"),
    ("token_rate_limit: {per_second: 1}\n", "token_rate_limit:"),
    ("join_rate_limit: 10\n", "join_rate_limit must be a mapping"),
])
def test_a_bad_security_setting_is_refused_by_name(tmp_path: Path, text: str, problem: str):
    config = tmp_path / "hub.yaml"
    config.write_text("state_dir: state\n" + text)
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("(", r"\(")):
        HubSettings.from_file(config)


@pytest.mark.parametrize(("header", "name"), [
    ("127.0.0.1:8470", "127.0.0.1"), ("LocalHost.", "localhost"), ("[::1]:80", "::1"), ("[::1]", "::1"),
    ("hub.example", "hub.example"), ("hub.example:x", None), ("[::1", None), ("[::1]x", None), ("a b", None),
    ("::1", None), ("", None),
])
def test_a_host_header_is_read_as_its_name_without_port(header: str, name: str | None):
    assert host_name(header) == name


def test_a_wildcard_listen_host_adds_nothing_to_the_allow_list():
    everywhere = HostAllowList(HubSettings(state_dir=Path("/s"), listen_host="0.0.0.0"))
    assert not everywhere.allows("0.0.0.0") and everywhere.allows("127.0.0.5") and everywhere.allows("localhost")
    named = HostAllowList(HubSettings(state_dir=Path("/s"), listen_host="Hub.LAN"))
    assert named.allows("hub.lan") and not named.allows("evil.example")
