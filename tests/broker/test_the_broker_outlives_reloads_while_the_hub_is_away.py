"""The broker is sent SIGHUP while the hub is away (restarting, reconnecting), and carries on unharmed.

The hub signals the broker whenever its revocation list, its certificate or its CAs change
(``edgehub.broker_revocations``, ``edgehub.certificates``, ``edgehub.ca_rotation``), and nothing keeps that
from happening while the hub itself is between two connections. Mosquitto 2.0.11 corrupts its memory
when it reloads while it holds an MQTT 5 session for a client that is away (a session expiry interval): it
crashed (SIGSEGV) on the next takeover of that session, or when it saved its store on the way out. So the
hub's session ends with its connection (a clean session), and this test holds it to that with the real
broker, the real hub and its real reconnects.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from edgesim.fleet import Hub, Mosquitto

ROUNDS = 5


def test_reloads_while_the_hub_is_away_leave_the_broker_whole(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", hub_state=Hub.state_dir_of(tmp_path / "hub")).start()
    hub = Hub(tmp_path / "hub", broker.url)
    try:
        hub.start()
        for _ in range(ROUNDS):
            hub.stop()  # whatever the broker holds for the hub is held while it is away
            os.kill(int((broker.config_dir / "mosquitto.pid").read_text()), signal.SIGHUP)
            time.sleep(0.2)  # Mosquitto takes a signal within about 100 ms
            hub.start()  # and the hub comes back to the broker
            assert broker.running, broker.log_tail()
    finally:
        hub.stop()
        proc = broker.proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        broker.proc = None
    # A broker whose memory a reload corrupted dies with SIGSEGV (-11) as it saves its store.
    assert code == 0, f"the broker exited with {code}:\n{broker.log_tail()}"
