"""Hub settings: nested dataclasses, each default explained."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from edgekit.mqtt import BrokerAddress


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenDefaults:
    # A join token is a credential: short-lived and single-use unless asked
    # otherwise (the kubeadm bootstrap-token pattern, with a shorter life).
    ttl_seconds: float = 3600.0
    uses: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class HubSettings:
    state_dir: Path
    # Loopback by default: the API creates join tokens and must not be
    # exposed by accident.
    listen_host: str = "127.0.0.1"
    listen_port: int = 8470
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    # The broker URL handed to agents at join; they may reach the broker by
    # another address than the hub does. Empty means the same as mqtt_url.
    mqtt_advertise_url: str = ""
    tokens: TokenDefaults = field(default_factory=TokenDefaults)
    # How many node events the hub keeps per node (oldest dropped first).
    events_kept_per_node: int = 500

    def __post_init__(self) -> None:
        BrokerAddress.parse(self.mqtt_url)
        if self.mqtt_advertise_url:
            BrokerAddress.parse(self.mqtt_advertise_url)
        if not 0 < self.listen_port < 65536:
            raise ValueError(f"listen port {self.listen_port} is out of range")

    @property
    def advertised_mqtt_url(self) -> str:
        return self.mqtt_advertise_url or self.mqtt_url

    @property
    def db_path(self) -> Path:
        return self.state_dir / "hub.db"

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> HubSettings:
        """Read settings from a YAML or JSON file; ``overrides`` (not None) win."""
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: settings must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
        if "tokens" in data:
            data["tokens"] = TokenDefaults(**data["tokens"])
        if "state_dir" in data:
            data["state_dir"] = (path.parent / data["state_dir"]).resolve()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
