"""The body of a render worker process (see :mod:`edgehub.renderer`).

Kept apart so that a worker imports only the deployer plugin (and the Helm
engine), not the hub's web and MQTT stacks: a spawned process imports the
module of the function it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing.connection import Connection

from deployer_plugin import Component, RenderedRelease, SpecError, render_release
from deployer_plugin.render import portable_error
from edgeprotocol.messages import Bundle


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderJob:
    """Everything one render takes; it pickles."""

    component: Component
    archive: bytes
    revision: int
    previous: dict[str, Bundle]
    upgrade: bool
    max_output_bytes: int


# What a worker sends back, once: ("rendered", RenderedRelease), ("refused",
# portable SpecError) or ("crashed", "Type: message").
Outcome = tuple[str, object]


def render_in_worker(job: RenderJob, send: Connection) -> None:
    """Render ``job`` and send the outcome through ``send`` (the entry point of a worker process)."""
    outcome: Outcome
    try:
        rendered: RenderedRelease = render_release(
            job.component, job.archive, revision=job.revision, previous=job.previous, upgrade=job.upgrade,
            max_output_bytes=job.max_output_bytes,
        )
        outcome = ("rendered", rendered)
    except SpecError as exc:
        outcome = ("refused", portable_error(exc))
    except Exception as exc:  # noqa: BLE001 - a bug or the engine's own failure: the hub logs it and answers 500
        outcome = ("crashed", f"{type(exc).__name__}: {exc}")
    send.send(outcome)
    send.close()
