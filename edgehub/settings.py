"""Hub settings: nested dataclasses, each default explained."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from edgekit.mqtt import BrokerAddress
from edgekit.sql import StoreLocation, parse_location

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


# Bounds of a configured rate limit: beyond them it limits nothing.
MAX_RATE_PER_SECOND = 100_000.0
MAX_BURST = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """A token bucket per source address: ``burst`` requests at once, then ``per_second`` sustained."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        # Compared so that NaN fails too.
        if not 0 < self.per_second <= MAX_RATE_PER_SECOND:
            raise ValueError(f"per_second {self.per_second} must be above 0 and at most {MAX_RATE_PER_SECOND:.0f}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or not 1 <= self.burst <= MAX_BURST:
            raise ValueError(f"burst {self.burst!r} must be an integer from 1 to {MAX_BURST}")


# A host name as DNS writes it (letters, digits, hyphens; dot-separated labels).
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}\.?$){_LABEL}(\.{_LABEL})*\.?$")


def check_host_name(name: str) -> str:
    """``name`` as the Host allow-list keeps it (lower case, no brackets or trailing dot); ValueError if it is
    neither a DNS name nor an IP address."""
    if not isinstance(name, str):
        raise ValueError(f"allowed_hosts: {name!r} is not a string")
    text = name.strip().lower()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if not _HOST_NAME.match(text):
        raise ValueError(f"allowed_hosts: {name!r} is not a host name or IP address (give no scheme or port)")
    return text.rstrip(".")


def chart_source_network(entry: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An entry of ``chart_sources.allow`` (``10.1.0.0/16``, ``::1/128``, or one address) as a network;
    ValueError naming the setting and the entry otherwise."""
    example = "such as 10.1.0.0/16, 127.0.0.1 or ::1/128"
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"chart_sources.allow: {entry!r} is not a CIDR or an IP address ({example})")
    try:
        # strict: 10.1.2.3/16 is refused rather than read as 10.1.0.0/16, which may not be what was meant
        return ipaddress.ip_network(entry.strip(), strict=True)
    except ValueError as exc:
        reason = example
        if "host bits" in str(exc):
            reason = f"{exc}: did you mean {ipaddress.ip_network(entry.strip(), strict=False)}?"
        raise ValueError(f"chart_sources.allow: {entry!r} is not a CIDR or an IP address ({reason})") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChartSourceSettings:
    """Where the hub may fetch charts from (spec.chart: {repo: URL} and oci:// references)."""

    # Networks (CIDRs or single addresses) charts may be fetched from besides public addresses.
    # Loopback, private (RFC 1918, fc00::/7), link-local (169.254.0.0/16, fe80::/10: cloud metadata),
    # CGNAT, multicast and reserved addresses are refused by default: whoever may apply a component
    # chooses the URL, and must not reach the hub's own network through it. A lab repository on
    # loopback or the LAN is allowed by naming its network here (or with --allow-chart-source).
    allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.allow, str) or not isinstance(self.allow, list | tuple):
            raise ValueError(f"chart_sources.allow must be a list of CIDRs or addresses, not {self.allow!r}")
        object.__setattr__(self, "allow", tuple(dict.fromkeys(str(chart_source_network(e)) for e in self.allow)))

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(e) for e in self.allow)

    def adding(self, entries: tuple[str, ...]) -> ChartSourceSettings:
        """These sources and ``entries`` too (a repeated flag adds to the settings file's list)."""
        return ChartSourceSettings(allow=(*self.allow, *entries))


# Whether the API is served over HTTPS: "auto" (on unless the listen host is a
# loopback address), "on" or "off".
TLS_MODES = ("auto", "on", "off")
# Node certificate lifetimes: at most ten years (the CA's own); at least 30 s,
# for tests (a node renews after two thirds of it, so shorter only makes load).
MAX_NODE_CERT_DAYS = 3650.0
MIN_NODE_CERT_SECONDS = 30.0
# How long after its certificate expired a node may still renew it (offline_horizon_days): at most the CA's
# own life; 0 refuses every expired certificate.
MAX_OFFLINE_HORIZON_DAYS = 3650.0


# (field, lowest, highest, lowest allowed) for the bounds on work nodes and charts cause.
_WORK_BOUNDS: tuple[tuple[str, float, float, bool], ...] = (
    ("max_status_bytes", 1024, 2**31, True),
    ("max_seq_jump", 1, 2**62, True),
    ("resync_interval_seconds", 0, 3600, True),
    ("render_timeout_seconds", 0, 3600, False),
    ("render_output_bytes", 1024, 2**31, True),
    ("render_parallel", 1, 64, True),
    ("render_fast_seconds", 0, 3600, False),
    ("render_queue", 0, 10_000, True),
    ("summary_interval_seconds", 0.05, 3600, True),
    ("summary_max_per_pass", 1, 1_000_000, True),
    ("summary_refresh_seconds", 1, 86_400, True),
    ("rollout_tick_seconds", 0.05, 60, True),
    ("certificate_check_seconds", 1, 86_400, True),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class HubSettings:
    state_dir: Path
    # Loopback by default: the API creates join tokens and must not be
    # exposed by accident.
    listen_host: str = "127.0.0.1"
    listen_port: int = 8470
    # HTTPS for the API (TLS_MODES): "auto" serves it on any address but
    # loopback, with a server certificate the hub CA issues (STATE/hub-server.crt);
    # "off" off loopback sends join and operator tokens in clear (logged as a warning).
    tls: str = "auto"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    # The broker URL handed to agents at join; they may reach the broker by
    # another address than the hub does. Empty means the same as mqtt_url.
    mqtt_advertise_url: str = ""
    # Where the store lives (docs/store.md): empty for the SQLite file in state_dir (hub.db), which needs no
    # server; sqlite:///ABSOLUTE/PATH for another file; postgresql://USER@HOST:PORT/DATABASE for a PostgreSQL
    # server (the postgres extra). The keys and certificates stay in state_dir either way.
    store_url: str = ""
    tokens: TokenDefaults = field(default_factory=TokenDefaults)
    # How many node events the hub keeps per node (oldest dropped first).
    events_kept_per_node: int = 500
    # Host names (or addresses) the API answers to besides loopback and
    # listen_host: the names nodes and operators use to reach the hub. A
    # request for any other Host is refused, so a web page whose DNS name is
    # re-pointed at the hub (DNS rebinding) cannot talk to it.
    allowed_hosts: tuple[str, ...] = ()
    # Joins per source address (IPv6: per /64). A site of nodes behind one NAT
    # joining at once is the busiest honest case: a burst of 20 and 10/s never
    # slows a real rollout, while a guesser of join tokens gets 10 tries a second.
    join_rate_limit: RateLimit = field(default_factory=lambda: RateLimit(per_second=10.0, burst=20))
    # Join tokens created per source address. An operator or a provisioning
    # script creates a few in a row (burst 10); 2/s bounds how fast anyone
    # holding the operator token can mint credentials for the fleet.
    token_rate_limit: RateLimit = field(default_factory=lambda: RateLimit(per_second=2.0, burst=10))
    # Certificate renewals per source address: as joins (nodes renew about
    # when they joined, two thirds of a lifetime later).
    renewal_rate_limit: RateLimit = field(default_factory=lambda: RateLimit(per_second=10.0, burst=20))
    # Source addresses each rate limit remembers at most (about 100 bytes
    # each); a source idle long enough to have a full bucket is forgotten
    # sooner, and past the bound the least recently seen one is.
    rate_limit_sources: int = 10_000
    # Days a node certificate is valid for; the agent renews it once less than
    # a third is left (after 60 of 90 days); a node that did not reach the hub
    # before it expired renews it when it comes back, within
    # offline_horizon_days. Fractions are allowed, down to
    # MIN_NODE_CERT_SECONDS (tests).
    node_certificate_days: float = 90.0
    # How often the hub checks the certificates it keeps for services (its MQTT client's, the API's,
    # the broker's; edgehub.certificates): each is renewed once less than a third of its life is left,
    # 30 days or more before it ends, so an hour is never late; a check costs a few file reads and
    # one TLS handshake with the broker.
    certificate_check_seconds: float = 3600.0
    # The offline horizon: a node whose certificate expired less than this many days ago still renews it
    # with a proof by its key (edgehub.renewal_rules), so a node switched off for up to this long (plus what
    # was left of its certificate) comes back by itself, with no operator and no new token. Past it the node
    # is reset and joins again. 400: a node off for a whole year between two visits comes back. A longer
    # horizon lets a stolen key (not a stolen certificate) come back later; revocation shuts it out at any age.
    offline_horizon_days: float = 400.0
    # --- bounds on what nodes send (anyone who can reach the broker can send it) ---
    # A status report as the hub stores it (encoded, release and condition
    # messages cut to 1000 characters): a node with 500 releases reports
    # about 150 KiB, so 256 KiB is room to spare. A larger one is stored
    # without its pods' detail (each release still says its reason, restarts
    # and message), and dropped if it is larger even so.
    max_status_bytes: int = 256 * 1024
    # How far a status or event sequence number may jump past the last one
    # stored. A node counts up by one per report (a restarted agent keeps
    # counting), so a million is years of reports; a bigger jump is a forged
    # message that would otherwise shut out every later real report.
    max_seq_jump: int = 1_000_000
    # A node's resync request is answered at most once in this many seconds;
    # the broker's retained assignments cover a node that reconnects sooner.
    resync_interval_seconds: float = 5.0
    # --- bounds on rendering a chart (a chart is code a template can loop in) ---
    # A render that takes longer is killed and the apply refused (422): the
    # example renders in well under a second, large charts in a few.
    render_timeout_seconds: float = 30.0
    # Helm output of one apply, every render key together (agents accept 16
    # MiB a bundle): more is refused (422) before it is stored.
    render_output_bytes: int = 32 * 1024 * 1024
    # Render slots in each of the two lanes (edgehub.renderer), each render in a
    # process of its own (~100 MB): at most twice this many processes at once.
    # Two per lane suit this 2-core class of host.
    render_parallel: int = 2
    # How long a render may hold a slot of the fast lane, where every render
    # starts: one still running then goes on in the slow lane (or, with that
    # full, is stopped and runs again there), so a small apply waits behind slow
    # renders for at most this long each. The example renders in well under a
    # second and large charts in one or two; a longer bound makes applies wait
    # longer behind slow charts, a shorter one sends more honest renders to the
    # slow lane (and wastes up to this much work on each one stopped).
    render_fast_seconds: float = 2.0
    # Applies waiting for a render slot; one more is refused (409, apply
    # again) rather than queued, as each holds its chart in memory. A render
    # stopped in the fast lane still waits for the slow one (it was taken in),
    # so up to render_parallel more may wait for a moment.
    render_queue: int = 16
    # --- status summaries on the bus (docs/dashboards.md) ---
    # Summaries are published at most this often (a change shows within about this long) ...
    summary_interval_seconds: float = 1.0
    # ... at most this many topics a pass (the rest in the next): the bound on what a fleet of any size
    # sends dashboards, 2,000 messages a second by default.
    summary_max_per_pass: int = 2000
    # Fleet, pool and component summaries are sent again after this long even when unchanged; Home
    # Assistant entities expire after three times this without one.
    summary_refresh_seconds: float = 60.0
    # --- staged rollouts (docs/rollouts.md) ---
    # Rollouts are checked at least this often besides every status change: how late a readyWithin
    # deadline or a minReadyTime can be noticed.
    rollout_tick_seconds: float = 1.0
    # Home Assistant MQTT discovery prefix ("homeassistant" is the usual one); empty: off.
    ha_discovery_prefix: str = ""
    # Where charts may be fetched from besides public addresses (ChartSourceSettings; docs/charts.md).
    chart_sources: ChartSourceSettings = field(default_factory=ChartSourceSettings)

    def __post_init__(self) -> None:
        broker = BrokerAddress.parse(self.mqtt_url)
        broker.require_identities()
        if self.mqtt_advertise_url:
            advertised = BrokerAddress.parse(self.mqtt_advertise_url)
            advertised.require_identities()
            if advertised.tls != broker.tls:
                raise ValueError(f"mqtt_advertise_url {self.mqtt_advertise_url!r} and mqtt_url {self.mqtt_url!r} "
                                 "must both be mqtts:// (or both mqtt://): nodes use the broker the hub uses")
        if self.store_url:
            parse_location(self.store_url)  # DatabaseUrlError (a ValueError) names the URL
        if not 0 <= self.listen_port < 65536:  # 0: any free port (the hub prints the one it bound)
            raise ValueError(f"listen port {self.listen_port} is out of range")
        if isinstance(self.allowed_hosts, str):
            raise ValueError(f"allowed_hosts must be a list of names, not the string {self.allowed_hosts!r}")
        object.__setattr__(self, "allowed_hosts", tuple(check_host_name(h) for h in self.allowed_hosts))
        if isinstance(self.tls, bool):  # YAML 1.1 reads a bare on/off as a boolean
            object.__setattr__(self, "tls", "on" if self.tls else "off")
        if self.tls not in TLS_MODES:
            raise ValueError(f"tls {self.tls!r} must be one of {', '.join(TLS_MODES)}")
        days = self.node_certificate_days
        if isinstance(days, bool) or not isinstance(days, int | float) or not (
                MIN_NODE_CERT_SECONDS / 86400 <= days <= MAX_NODE_CERT_DAYS):
            raise ValueError(f"node_certificate_days {days!r} must be from {MIN_NODE_CERT_SECONDS / 86400:.6f} "
                             f"({MIN_NODE_CERT_SECONDS:.0f} seconds) to {MAX_NODE_CERT_DAYS:.0f}")
        horizon = self.offline_horizon_days
        if isinstance(horizon, bool) or not isinstance(horizon, int | float) or not (
                0 <= horizon <= MAX_OFFLINE_HORIZON_DAYS):
            raise ValueError(f"offline_horizon_days {horizon!r} must be from 0 (an expired node certificate is never "
                             f"renewed) to {MAX_OFFLINE_HORIZON_DAYS:.0f}")
        for name in ("join_rate_limit", "token_rate_limit", "renewal_rate_limit"):
            if not isinstance(getattr(self, name), RateLimit):
                raise ValueError(f"{name} must be a RateLimit, not {getattr(self, name)!r}")
        if not isinstance(self.chart_sources, ChartSourceSettings):
            raise ValueError(f"chart_sources must be a ChartSourceSettings, not {self.chart_sources!r}")
        if not 1 <= self.rate_limit_sources <= 10_000_000:
            raise ValueError(f"rate_limit_sources {self.rate_limit_sources} must be from 1 to 10000000")
        if self.ha_discovery_prefix and not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*", self.ha_discovery_prefix):
            raise ValueError(f"ha_discovery_prefix {self.ha_discovery_prefix!r} must be a topic prefix such as "
                             "'homeassistant' (letters, digits, '_', '-', '/'; no wildcards)")
        # Checked here, where a settings file is read, not when the hub starts the part that uses it.
        for name, low, high, low_inclusive in _WORK_BOUNDS:
            value = getattr(self, name)
            above = value >= low if low_inclusive else value > low
            if not (above and value <= high):  # compared so that NaN fails too
                floor = f"at least {low}" if low_inclusive else f"above {low}"
                raise ValueError(f"{name} {value!r} must be {floor} and at most {high}")

    @property
    def broker_identities(self) -> bool:
        """True for a TLS broker (mqtts://): clients show certificates and the hub manages their rights."""
        return BrokerAddress.parse(self.mqtt_url).tls

    @property
    def mqtt_key_path(self) -> Path:
        return self.state_dir / "hub-mqtt.key"

    @property
    def mqtt_cert_path(self) -> Path:
        """The hub's own client certificate on the broker with identities (user name ``hub.edgecollab``)."""
        return self.state_dir / "hub-mqtt.crt"

    @property
    def node_certificate_lifetime(self) -> dt.timedelta:
        return dt.timedelta(days=self.node_certificate_days)

    @property
    def advertised_mqtt_url(self) -> str:
        return self.mqtt_advertise_url or self.mqtt_url

    @property
    def db_path(self) -> Path:
        """The default store: a SQLite file in the state directory."""
        return self.state_dir / "hub.db"

    @property
    def store_location(self) -> StoreLocation:
        """Where the store lives: ``store_url``, or the SQLite file ``db_path`` when it is empty."""
        return parse_location(self.store_url) if self.store_url else StoreLocation("sqlite", path=self.db_path)

    @property
    def ca_certificate_path(self) -> Path:
        """The hub CA's certificate (``edgectl --ca-file`` for a hub served over HTTPS)."""
        return self.state_dir / "hub-ca.crt"

    @property
    def admin_token_path(self) -> Path:
        """The operator token the hub creates on first start (``edgectl`` reads it via EDGECOLLAB_TOKEN_FILE)."""
        return self.state_dir / "admin-token"

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
        for key in ("join_rate_limit", "token_rate_limit", "renewal_rate_limit"):
            if key in data:
                if not isinstance(data[key], dict):
                    raise ValueError(f"{path}: {key} must be a mapping with per_second and burst")
                try:
                    data[key] = RateLimit(**data[key])
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{path}: {key}: {exc}") from exc
        if "allowed_hosts" in data:
            if not isinstance(data["allowed_hosts"], list):
                raise ValueError(f"{path}: allowed_hosts must be a list of host names")
            data["allowed_hosts"] = tuple(data["allowed_hosts"])
        if "chart_sources" in data:
            data["chart_sources"] = cls._chart_sources(path, data["chart_sources"])
        if "state_dir" in data:
            data["state_dir"] = (path.parent / data["state_dir"]).resolve()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    @staticmethod
    def _chart_sources(path: Path, value: object) -> ChartSourceSettings:
        if value is None:  # "chart_sources:" with nothing under it
            return ChartSourceSettings()
        if not isinstance(value, dict):
            raise ValueError(f"{path}: chart_sources must be a mapping such as {{allow: [10.1.0.0/16]}}, "
                             f"not {value!r}")
        unknown = set(value) - {"allow"}
        if unknown:
            raise ValueError(f"{path}: chart_sources: unknown keys {sorted(unknown)}; known: ['allow']")
        allow = value.get("allow") or []
        if not isinstance(allow, list):
            raise ValueError(f"{path}: chart_sources.allow must be a list of CIDRs or addresses, not {allow!r}")
        try:
            return ChartSourceSettings(allow=tuple(allow))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
