"""Hub settings: nested dataclasses, each default explained."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from edgekit.mqtt import BrokerAddress

# The most a join token may be given, by a request or as a default: a
# credential that lives longer than a month, or lets more nodes join than a
# fleet has, is a mistake rather than a plan (kubeadm's tokens live 24 h).
MAX_TOKEN_TTL_SECONDS = 30 * 24 * 3600.0
MAX_TOKEN_USES = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenDefaults:
    # A join token is a credential: short-lived and single-use unless asked
    # otherwise (the kubeadm bootstrap-token pattern, with a shorter life).
    ttl_seconds: float = 3600.0
    uses: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.ttl_seconds <= MAX_TOKEN_TTL_SECONDS:
            raise ValueError(
                f"tokens.ttl_seconds {self.ttl_seconds} must be above 0 and at most {MAX_TOKEN_TTL_SECONDS:.0f}"
            )
        if not 1 <= self.uses <= MAX_TOKEN_USES:
            raise ValueError(f"tokens.uses {self.uses} must be from 1 to {MAX_TOKEN_USES}")


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
        if not 0 <= self.listen_port < 65536:  # 0: any free port (the hub prints the one it bound)
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
