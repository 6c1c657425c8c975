"""A node whose clock is a year off joins a hub served over HTTPS and renews its certificate there.

A real ``edgehub serve --tls on``; the node's commands run with their calendar
moved a year back or forward by libfaketime (``LD_PRELOAD=libfaketime
FAKETIME=-365d``). By the node's own clock the hub's HTTPS certificate is not
valid yet (or no longer), and OpenSSL refuses it; the join asks the hub's time
first and checks the certificate's dates by it (chain and host name still
against the pinned CA), keeps the offset once the join's answer gives the key
that signed it, and the renewal (the agent's own renewal program) stamps its
proof and checks the hub's certificate by the corrected time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgesim.fleet import Hub, Mosquitto

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
YEAR = 365 * 86400


@pytest.fixture(scope="module")
def tls_hub(tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto) -> Iterator[Hub]:
    hub = Hub(tmp_path_factory.mktemp("tls-hub"), broker.url, tls="on").start()
    yield hub
    hub.stop()


def on_day(day: int) -> dict[str, str]:
    assert LIBFAKETIME.is_file(), f"{LIBFAKETIME} is missing: scripts/install-deps.sh installs faketime"
    return {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"{day:+d}d"}


def run(args: list[str], day: int, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=on_day(day), timeout=120,
                          input=stdin)


@pytest.mark.parametrize("day", [-365, 365], ids=["a-year-behind", "a-year-ahead"])
def test_a_node_a_year_off_joins_over_https_and_renews(tls_hub: Hub, tmp_path: Path, day: int):
    assert tls_hub.url.startswith("https://")
    # By the node's own clock the hub's certificate does not verify: this is what the join must get past.
    plain = run(["-c", "import ssl, sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/healthz', timeout=10, "
                       "context=ssl.create_default_context(cafile=sys.argv[2]))", tls_hub.url, str(tls_hub.ca_path)],
                day)
    assert "certificate is not yet valid" in plain.stderr or "certificate has expired" in plain.stderr, plain.stderr

    state, name = tmp_path / "node", f"off{day:+d}".replace("+", "p").replace("-", "m")
    joined = run(["-m", "edgeagent.cli", "join", "--hub", tls_hub.url, "--token", tls_hub.token("shanghai"),
                  "--name", name, "--state-dir", str(state)], day)
    assert joined.returncode == 0, joined.stderr
    kept = json.loads((state / "clock.json").read_text())
    assert kept["offset_seconds"] == pytest.approx(-day * 86400, abs=5)
    before = tls_hub.ctl_json("describe", "node", name)["certificate"]["serial"]

    renewed = run(["-m", "edgeagent.renewal", str(state)], day, stdin=(state / "identity.json").read_text())
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    after = tls_hub.ctl_json("describe", "node", name)["certificate"]
    assert after["serial"] != before
    doctor = run(["-m", "edgeagent.cli", "doctor", "--state-dir", str(state), "--runtime", "dry-run"], day)
    clock_line = next(line for line in doctor.stdout.splitlines() if line.split()[1:2] == ["clock"])
    assert clock_line.startswith("WARN") and "365.0 days" in clock_line, doctor.stdout
    cert_line = next(line for line in doctor.stdout.splitlines() if line.split()[1:2] == ["node-cert"])
    assert cert_line.startswith("ok ") and "valid until" in cert_line, doctor.stdout
