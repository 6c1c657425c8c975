"""Every flag's default is a plain value of the flag's own type, in every command of every CLI.

A default taken from a slots dataclass (``AgentSettings.keepalive``) is a slot
descriptor, not the number: ``edgeagent run`` crashed at start that way while
every test passed the flag explicitly. This walks every parser instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeagent.cli import build_parser as agent_parser
from edgectl.parser import build_parser as ctl_parser
from edgehub.cli import build_parser as hub_parser

PLAIN = (str, int, float, bool, Path, list, tuple, type(None))


def every_action(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_action(sub, f"{path} {name}")
        else:
            yield path, action


ACTIONS = [
    pytest.param(action, id=f"{where} {'/'.join(action.option_strings) or action.dest}")
    for build, prog in ((agent_parser, "edgeagent"), (ctl_parser, "edgectl"), (hub_parser, "edgehub"))
    for where, action in every_action(build(), prog)
    if not isinstance(action, argparse._HelpAction)
]


@pytest.mark.parametrize("action", ACTIONS)
def test_a_flag_default_is_a_plain_value_of_its_type(action: argparse.Action):
    default = action.default
    if default is None or default is argparse.SUPPRESS:
        return
    assert isinstance(default, PLAIN), f"default {default!r} is a {type(default).__name__}, not a plain value"
    if isinstance(action.type, type):
        assert isinstance(default, action.type), f"default {default!r} is not a {action.type.__name__}"
    if action.choices is not None:
        assert default in action.choices


def test_the_walk_reaches_the_agent_timing_flags():
    names = {opt for _, action in every_action(agent_parser(), "edgeagent") for opt in action.option_strings}
    assert {"--keepalive", "--reconcile-interval", "--podman-root", "--containers-conf"} <= names


def test_edgeagent_run_with_only_its_state_dir_gets_the_agent_settings_defaults():
    from edgeagent.agent import AgentSettings

    args = agent_parser().parse_args(["run", "--state-dir", "/tmp/x"])
    settings = AgentSettings(state_dir=Path("/tmp/x"))
    assert (args.keepalive, args.reconcile_interval) == (settings.keepalive, settings.reconcile_interval) == (10, 5.0)
