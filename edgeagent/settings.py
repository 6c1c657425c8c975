"""The agent's settings: every default with its unit and the reason for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    state_dir: Path
    # The loop runs at least this often without being woken; a pod that dies
    # is brought back within about this time (self-heal), online or not.
    reconcile_interval: float = 5.0
    # Status is re-sent at least this often even when nothing changed, so the
    # hub's "last seen" keeps moving.
    status_heartbeat: float = 30.0
    # A changed status waits this long (seconds) before it is sent, so changes
    # that follow each other go out as one report: an apply that finishes at
    # once sends Deployed alone instead of Applying then Deployed, which at
    # a fleet's rollout is a third fewer messages for the broker and the hub.
    status_coalesce: float = 0.25
    # Pods not all ready this long after an apply turn the release Degraded.
    ready_timeout: float = 120.0
    # A pod found missing or exited this long after an apply is brought back
    # by re-playing its release (self-heal); sooner, it may still be starting.
    heal_after: float = 5.0
    # A failed apply is retried after this, doubling up to retry_max; the
    # same schedule re-checks a node whose runtime cannot run pods.
    retry_initial: float = 2.0
    retry_max: float = 60.0
    # Releases worked on at once. Each holds at most one runtime call in
    # flight; 4 keeps a 2-core node responsive while one slow release (its
    # podman calls hanging for their timeout) never holds up the rest.
    max_parallel_releases: int = 4
    # Events kept while offline; past this the oldest are dropped (counted).
    outbox_limit: int = 1000
    # MQTT keepalive in seconds: a cut link shows as offline after ~1.5x.
    keepalive: int = 10
    # Each MQTT connect, subscribe and QoS 1 publish waits at most this long
    # (seconds); a connect into a black-holed link fails after it.
    mqtt_timeout: float = 10.0
    # The local address the MQTT socket binds to; "" lets the system choose (what a real node wants).
    # Simulated fleets spread thousands of agents over 127.0.0.0/8 (bench/), so their sockets do not
    # all share one source address and its TIME_WAIT entries.
    mqtt_bind_address: str = ""

    def __post_init__(self) -> None:
        for name in ("reconcile_interval", "status_heartbeat", "ready_timeout", "retry_initial", "retry_max",
                     "mqtt_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"AgentSettings.{name} must be a positive number of seconds")
        if not 0 <= self.status_coalesce < self.status_heartbeat:
            raise ValueError("AgentSettings.status_coalesce must be at least 0 seconds and less than status_heartbeat")
        if self.max_parallel_releases < 1 or self.outbox_limit < 1 or self.keepalive < 1:
            raise ValueError("AgentSettings.max_parallel_releases, outbox_limit and keepalive must be at least 1")

    @property
    def db_path(self) -> Path:
        return self.state_dir / "agent.db"
