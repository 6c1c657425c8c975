"""Running podman: one subprocess per call, bounded in time, never blocking the event loop.

``PodmanCli`` runs the podman binary of a node's ``PodmanSettings`` with its
global flags (storage locations) and its containers.conf, kills a call that
outlives ``command_timeout``, and reports failures as ``PodmanFailed`` with
podman's stderr. The helpers below turn podman's error output into the lines a
user should read. Nothing here knows about releases or manifests.

Errors::

    PodmanFailed        podman exited non-zero, or was killed after the timeout
                        (returncode None); private to the runtime, which
                        translates it into EdgeRuntimeError / RuntimeApplyError
    EdgeRuntimeError    podman could not be started at all, or answered
                        something that is not JSON
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgekit.processes import reap

from .base import EdgeRuntimeError

if TYPE_CHECKING:
    from .podman import PodmanSettings

__all__ = ["Completed", "PodmanCli", "PodmanFailed", "last_error", "loads_json", "reap", "with_hint"]

logger = logging.getLogger(__name__)

# podman errors whose cure is known, and the hint the preflight adds to them.
_HINTS: tuple[tuple[str, str], ...] = (
    ("cannot run '", "install podman (Debian: apt-get install podman catatonit)"),
    ("catatonit", "podman builds its pause image from catatonit: install it (Debian: apt-get install catatonit)"),
    ("error setting rlimit", "this machine refuses podman's default ulimits: give the agent a containers.conf "
                             "with runtime = \"runc\" and default_ulimits at the host's (--containers-conf; "
                             "see docs/edge-nodes.md)"),
    ("cgroups in hybrid mode", "crun cannot run on hybrid cgroups: select runc in a containers.conf "
                               "(--containers-conf; see docs/edge-nodes.md)"),
)


class PodmanFailed(Exception):
    """podman exited non-zero or timed out; carries its stderr for chaining."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str, *, command: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode  # None: killed after the command timeout
        self.stderr = stderr.strip()
        self.command = command  # e.g. "kube play", for messages
        status = "timed out" if returncode is None else f"exited {returncode}"
        super().__init__(f"{' '.join(self.argv)} {status}: {self.stderr}")


@dataclass(frozen=True, slots=True)
class Completed:
    """A podman call that ran to its end (whatever its exit status)."""

    returncode: int
    stdout: str
    stderr: str


class PodmanCli:
    """The podman of one node: its binary, global flags, containers.conf and time limit."""

    def __init__(self, settings: PodmanSettings) -> None:
        self.settings = settings
        self._env = dict(os.environ)
        if settings.containers_conf is not None:
            self._env["CONTAINERS_CONF"] = str(settings.containers_conf)

    def __repr__(self) -> str:
        return f"PodmanCli(binary={self.settings.binary!r}, root={self.settings.root})"

    async def run(self, *args: str, check: bool = True, timeout: float | None = None,
                  input: str | None = None, containers_conf: str | None = None) -> Completed:
        """Run podman with the node's global flags; never blocks the event loop.

        ``timeout`` (seconds) overrides the settings' ``command_timeout`` for
        this call; ``input`` is written to podman's stdin (``kube play -``);
        ``containers_conf`` replaces the node's containers.conf for this call.
        Raises PodmanFailed on a non-zero exit (when ``check``) and on timeout,
        after killing podman; EdgeRuntimeError when podman cannot be started.
        """
        argv = [self.settings.binary, *self.settings.global_args(), *args]
        command = " ".join(args[:2])
        timeout = self.settings.command_timeout if timeout is None else timeout
        logger.debug("Running %s", " ".join(argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env if containers_conf is None else {**self._env, "CONTAINERS_CONF": containers_conf},
                # conmon 2.1 (podman 4.3) leaves a file "oom" in its working directory when the kernel kills a
                # container for memory: in the runtime's work dir, not wherever the agent was started.
                cwd=self.settings.work_dir if self.settings.work_dir.is_dir() else None,
            )
        except OSError as exc:
            raise EdgeRuntimeError(f"cannot run {self.settings.binary!r}: {exc}") from exc
        try:
            stdout, stderr = await asyncio.wait_for(
                proc.communicate(None if input is None else input.encode()), timeout
            )
        except TimeoutError:
            logger.warning("podman %s did not finish within %.0f s; killing it", command, timeout)
            raise PodmanFailed(argv, None, f"no answer within {timeout:.0f} s", command=command) from None
        finally:
            await reap(proc)
        result = Completed(proc.returncode or 0, stdout.decode(errors="replace"), stderr.decode(errors="replace"))
        if check and result.returncode != 0:
            raise PodmanFailed(argv, result.returncode, result.stderr or result.stdout, command=command)
        return result

    async def json(self, *args: str, what: str) -> Any:
        """podman's JSON answer to ``args``; EdgeRuntimeError (saying it could not ``what``) on failure."""
        try:
            result = await self.run(*args)
        except PodmanFailed as exc:
            raise EdgeRuntimeError(f"podman could not {what}: {exc.stderr}") from exc
        return loads_json(result.stdout, what)


def loads_json(text: str, what: str) -> Any:
    """``text`` (podman's stdout) as JSON, None when empty; EdgeRuntimeError when it is not JSON."""
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError as exc:
        raise EdgeRuntimeError(f"podman's answer to {what} is not JSON: {text[:200]!r}") from exc


def last_error(stderr: str) -> str:
    """podman's own error line(s), without the noise around them."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    return "; ".join(errors) or (lines[-1] if lines else "no error output")


def with_hint(text: str) -> str:
    """``text`` plus what to do about it, for the podman errors whose cure is known."""
    hints = [hint for needle, hint in _HINTS if needle in text]
    return f"{text} (hint: {hints[0]})" if hints else text
