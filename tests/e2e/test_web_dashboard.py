"""The web dashboard in a real headless Chromium (Debian's ``chromium``, driven through its ``chromium-driver``).

A real Mosquitto with identities and a real hub (``edgehub serve``), three nodes joined with
``edgeagent join``; no agent runs (so no podman): each node's MQTT side is played by
``node_stand_in.py`` with the node's own certificate and the agent's last will. The browser opens the
URL the demo prints (``/#token=`` and the viewer token), and the test reads the page as a user would:
the fleet listed, then a node whose link dies (its stand-in killed: the broker publishes its last will)
turning offline and stale on the page with no reload. Screenshots (desktop, and a phone's 375 px)
are saved in the test's directory and copied to ``.build/``.

Nothing is downloaded: Selenium is given the system's chromedriver and browser, and Selenium Manager
is kept offline. Without chromium or chromium-driver the test fails, naming the install script.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_checks import write_spec

from edgehub.broker_access import ANONYMOUS_BROKER_WARNING
from edgesim.fleet import Fleet, Hub, Mosquitto, Node, wait_until

REPO = Path(__file__).resolve().parents[2]
STAND_IN = Path(__file__).with_name("node_stand_in.py")
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Where the closing note of the demo and a reviewer find the last screenshots.
STABLE_SCREENSHOT = REPO / ".build" / "dashboard-screenshot.png"
STABLE_PHONE_SCREENSHOT = REPO / ".build" / "dashboard-phone.png"
# A change reaches the page within the summary interval (1 s) and the stream's latency.
PAGE_SECONDS = 20

pytestmark = pytest.mark.browser


@pytest.fixture
def dashboard_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Broker with identities and hub; sh-1, sh-2 (shanghai) and bj-1 (beijing) joined, their agents not
    started; the example web component targeting shanghai. (Not named ``fleet``: it needs no podman.)"""
    with Fleet(tmp_path / "fleet") as fleet:
        for name, pool in (("sh-1", "shanghai"), ("sh-2", "shanghai"), ("bj-1", "beijing")):
            fleet.add_node(name, pool, start=False)
        assert fleet.hub is not None
        fleet.hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml")))
        yield fleet


class StandIn:
    """``node_stand_in.py`` for one node, as a process that can be killed like a crashed agent."""

    def __init__(self, fleet: Fleet, node: Node, releases: list[str]) -> None:
        assert fleet.broker is not None
        argv = [sys.executable, str(STAND_IN), "--state-dir", str(node.state_dir), "--port", str(fleet.broker.port)]
        for release in releases:
            argv += ["--release", release]
        self.name = node.name
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "online", f"the stand-in of {node.name} failed: {line}{self.proc.stdout.read()}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def stand_ins(dashboard_fleet: Fleet) -> Iterator[dict[str, StandIn]]:
    fleet = dashboard_fleet
    started: dict[str, StandIn] = {}
    try:
        for name, releases in (("sh-1", ["demo/web:1:Deployed"]), ("sh-2", ["demo/web:1:Deployed"]), ("bj-1", [])):
            started[name] = StandIn(fleet, fleet.nodes[name], releases)
        assert fleet.hub is not None
        hub = fleet.hub
        wait_until(lambda: all(n["presence"] == "online" and n["conditions"] for n in hub.api("/api/v1/nodes")),
                   timeout=30, what="three nodes online with their status")
        yield started
    finally:
        for stand_in in started.values():
            stand_in.kill()


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Chromium from Debian's packages through its own chromedriver; nothing downloaded."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the dashboard test drives Debian's chromium through "
                    "chromium-driver; install them with scripts/install-deps.sh (or: apt-get install chromium "
                    "chromium-driver)", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[dev]'", pytrace=False)
    # Selenium Manager must not fetch a driver or a browser: both paths are given, and it is kept offline.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="dashboard-chromium-", dir=tmp_path)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_wait(driver: Any, script: str, what: str, timeout: float = PAGE_SECONDS) -> Any:
    """Poll a JavaScript expression in the page until it is truthy; on timeout, fail with what the page shows."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        if time.monotonic() > deadline:
            text = driver.execute_script("return document.body.innerText")
            pytest.fail(f"the page did not show {what} within {timeout:.0f} s. It shows:\n{text}\n"
                        f"browser log: {console(driver)}", pytrace=False)
        time.sleep(0.2)


def console(driver: Any) -> list[str]:
    return [f"{entry['level']}: {entry['message']}" for entry in driver.get_log("browser")]


def row(driver: Any, node: str) -> dict[str, Any]:
    """What the nodes table shows of one node."""
    return driver.execute_script("""
        const tr = document.querySelector(`#node-rows tr[data-node="${arguments[0]}"]`);
        if (!tr) return null;
        return {presence: tr.dataset.presence, text: tr.innerText, stale: !!tr.querySelector('.stale-label'),
                visibleStale: tr.querySelector('.stale-label')?.offsetParent !== null
                              && !!tr.querySelector('.stale-label'),
                badge: tr.querySelector('.presence .badge')?.textContent,
                lastSeen: tr.querySelector('time')?.textContent};
    """, node)


def full_page_screenshot(driver: Any, path: Path, width: int = 1280) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(height + 40, 600), 4000))
    driver.save_screenshot(str(path))


def keep(shot: Path, stable: Path) -> None:
    stable.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, stable)
    print(f"screenshot: {shot} (copied to {stable})")


def until(predicate: Callable[[], Any], what: str) -> Any:
    return wait_until(predicate, timeout=PAGE_SECONDS, what=what, interval=0.2)


def test_the_dashboard_lists_the_fleet_and_shows_a_node_going_offline_without_a_reload(
        dashboard_fleet: Fleet, stand_ins: dict[str, StandIn], browser: Any, tmp_path: Path):
    hub = dashboard_fleet.hub
    assert hub is not None
    viewer = (hub.state_dir / "viewer-token").read_text().strip()
    browser.get(f"{hub.url}/#token={viewer}")

    # The fleet, listed: live stream, counts, pools, every node online, the component's rollout.
    page_wait(browser, "document.getElementById('connection').dataset.state === 'live'", "the stream connected")
    assert "token" not in browser.current_url, "the token stayed in the address bar"
    page_wait(browser, "document.querySelectorAll('#node-rows tr[data-presence=online]').length === 3",
              "three nodes online")
    for name, pool in (("sh-1", "shanghai"), ("sh-2", "shanghai"), ("bj-1", "beijing")):
        shown = row(browser, name)
        assert shown["badge"] == "online" and pool in shown["text"] and not shown["stale"], shown
        assert "RuntimeReady" in shown["text"] and "StorageReady" in shown["text"], shown
        assert shown["lastSeen"].endswith("s ago"), shown
    assert "demo/web r1 Deployed" in row(browser, "sh-1")["text"]
    overview = browser.execute_script("return document.getElementById('overview').innerText")
    assert "3 / 3 online" in overview and "all online" in overview, overview
    pools = browser.execute_script("return [...document.querySelectorAll('#pool-list [data-pool]')]"
                                   ".map(e => e.dataset.pool)")
    assert pools == ["beijing", "shanghai"]
    page_wait(browser, "document.querySelector('[data-component=\"demo/web\"]')?.innerText.includes('2/2 ready')",
              "demo/web 2/2 ready")
    card = browser.execute_script("return document.querySelector('[data-component=\"demo/web\"]').innerText")
    assert "pool shanghai" in card and "complete" in card, card
    page_wait(browser, "[...document.querySelectorAll('#event-list li[data-node]')].length >= 3",
              "the nodes' events")
    # The hub has nothing to warn about (a broker with identities, no certificate near its end).
    assert browser.execute_script("return document.getElementById('hub-warnings').hidden")
    # Ages tick in the browser, second by second, with no message from the hub.
    before = row(browser, "bj-1")["lastSeen"]
    time.sleep(2.2)
    assert row(browser, "bj-1")["lastSeen"] != before

    # sh-2's link dies: the broker publishes its last will, the hub marks it offline, the page follows.
    browser.execute_script("window.__noReload = 1")
    stand_ins["sh-2"].kill()
    until(lambda: next(n for n in hub.api("/api/v1/nodes") if n["name"] == "sh-2")["presence"] == "offline",
          "the hub to mark sh-2 offline")
    page_wait(browser, "document.querySelector('#node-rows tr[data-node=\"sh-2\"]')?.dataset.presence === 'offline'",
              "sh-2 offline")
    assert browser.execute_script("return window.__noReload") == 1, "the page was reloaded"
    gone = row(browser, "sh-2")
    assert gone["badge"] == "offline" and gone["stale"] and gone["visibleStale"], gone
    assert "STALE" in gone["text"].upper(), gone
    # Everything sh-2 reported is greyed: its row, and its line in the component's per-node list.
    opacity = browser.execute_script(
        "return getComputedStyle(document.querySelector('#node-rows tr[data-node=\"sh-2\"] .reported .chips'))"
        ".opacity")
    assert float(opacity) < 1, opacity
    assert browser.execute_script(
        "return document.querySelector('[data-component=\"demo/web\"] tr[data-node=\"sh-2\"]').classList"
        ".contains('stale')")
    for name in ("sh-1", "bj-1"):
        assert row(browser, name)["presence"] == "online" and not row(browser, name)["stale"]
    page_wait(browser, "document.getElementById('overview').innerText.includes('1 offline')",
              "1 offline in the overview")
    page_wait(browser, "document.querySelector('[data-component=\"demo/web\"]').innerText.includes('1 offline')",
              "the rollout counting sh-2 offline")

    # No script error and nothing the Content-Security-Policy blocked. (The page asks once for the fleet-wide
    # /api/v1/events, which a hub without it refuses; it then reads each node's events.)
    errors = [line for line in console(browser) if line.startswith("SEVERE") and "/api/v1/events?" not in line]
    assert not errors, errors

    # The hub stops: the page says it is disconnected and greys everything; it comes back by itself.
    hub.stop()
    page_wait(browser, "document.getElementById('connection').dataset.state === 'disconnected'",
              "the stream disconnected")
    assert browser.execute_script("return !document.getElementById('banner').hidden && "
                                  "document.body.classList.contains('disconnected')")
    hub.start()
    page_wait(browser, "document.getElementById('connection').dataset.state === 'live'", "the stream back",
              timeout=30)
    assert browser.execute_script("return document.getElementById('banner').hidden")
    assert row(browser, "sh-2")["presence"] == "offline" and row(browser, "sh-1")["presence"] == "online"
    assert browser.execute_script("return window.__noReload") == 1

    shot = tmp_path / "dashboard.png"
    full_page_screenshot(browser, shot)
    keep(shot, STABLE_SCREENSHOT)

    # A phone: 375 px wide, no sideways scrolling, one card per node.
    browser.set_window_size(1280, 1000)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": True})
    page_wait(browser, "window.innerWidth === 375", "the phone's width")
    layout = browser.execute_script("""
        const tr = document.querySelector('#node-rows tr');
        return {scroll: document.documentElement.scrollWidth, width: window.innerWidth,
                head: getComputedStyle(document.querySelector('#node-table thead')).display,
                row: getComputedStyle(tr).display};
    """)
    assert layout["scroll"] <= layout["width"] and layout["head"] == "none" and layout["row"] == "block", layout
    assert browser.execute_script("return window.__noReload") == 1
    phone = tmp_path / "dashboard-phone.png"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 375, "height": min(height, 4000), "deviceScaleFactor": 2, "mobile": True})
    browser.save_screenshot(str(phone))
    keep(phone, STABLE_PHONE_SCREENSHOT)
    (tmp_path / "checked.json").write_text(json.dumps({"desktop": str(shot), "phone": str(phone)}))

    # A wrong token: the page says so and asks for the viewer token; pasted in its form, the fleet shows.
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.get(f"{hub.url}/#token=not-the-viewer-token-{'x' * 40}")
    page_wait(browser, "!document.getElementById('login').hidden && "
                       "document.getElementById('login-message').textContent.includes('refused')", "the token refused")
    assert "token" not in browser.current_url and browser.execute_script("return document.getElementById('dashboard')"
                                                                         ".hidden")
    field = browser.find_element("id", "token-input")
    field.send_keys(viewer)
    field.submit()
    page_wait(browser, "document.getElementById('connection').dataset.state === 'live'",
              "the stream with the pasted token")
    page_wait(browser, "document.querySelectorAll('#node-rows tr[data-node]').length === 3", "the nodes again")
    assert viewer not in browser.current_url


CRASHING = 'pod web-0 container web: CrashLoopBackOff: exited 3 (Error), restarted 4 times; last log: "crashing"'


def test_the_dashboard_shows_why_a_release_is_unhealthy_where_it_shows_its_phase(
        dashboard_fleet: Fleet, browser: Any):
    hub = dashboard_fleet.hub
    assert hub is not None
    nodes = dashboard_fleet.nodes
    started = [StandIn(dashboard_fleet, nodes["sh-1"], ["demo/web:1:Deployed"]),
               StandIn(dashboard_fleet, nodes["sh-2"], [f"demo/web:1:Degraded:CrashLoopBackOff:{CRASHING}"])]
    try:
        browser.get(f"{hub.url}/#token={(hub.state_dir / 'viewer-token').read_text().strip()}")
        page_wait(browser, "document.querySelector('#node-rows tr[data-node=\"sh-2\"]')?.innerText"
                           ".includes('CrashLoopBackOff')", "sh-2's release crash-looping")
        assert "demo/web r1 Degraded: CrashLoopBackOff" in row(browser, "sh-2")["text"]
        assert "demo/web r1 Deployed" in row(browser, "sh-1")["text"]
        # The node's chip says why when pointed at; the component's per-node list says it in full.
        assert browser.execute_script(
            "return document.querySelector('#node-rows tr[data-node=\"sh-2\"] td[data-label=Releases] li').title"
        ) == CRASHING
        page_wait(browser, "document.querySelector('[data-component=\"demo/web\"]')?.innerText"
                           ".includes('1 failed')", "the component counting sh-2 failed")
        card = browser.execute_script("return document.querySelector('[data-component=\"demo/web\"]').innerText")
        assert "1 CrashLoopBackOff" in card and "failing" in card, card
        line = browser.execute_script(
            "return document.querySelector('[data-component=\"demo/web\"] tr[data-node=\"sh-2\"]').innerText")
        assert "Degraded: CrashLoopBackOff" in line and CRASHING in line, line
        errors = [entry for entry in console(browser) if entry.startswith("SEVERE") and "/api/v1/events?" not in entry]
        assert not errors, errors
    finally:
        for stand_in in started:
            stand_in.kill()


def test_the_dashboard_shows_what_the_hub_warns_about(tmp_path: Path, browser: Any):
    """The warnings of ``/healthz`` (``edgectl get nodes`` prints them too) are on the page: here the one
    an anonymous broker gets; a certificate near its end (edgehub.certificates) is shown the same way."""
    broker = Mosquitto(tmp_path / "broker").start()
    hub = Hub(tmp_path / "hub", broker.url)
    try:
        hub.start()
        assert hub.api("/healthz")["warnings"] == [ANONYMOUS_BROKER_WARNING]
        viewer = (hub.state_dir / "viewer-token").read_text().strip()
        browser.get(f"{hub.url}/#token={viewer}")
        page_wait(browser, "!document.getElementById('hub-warnings').hidden", "the hub's warnings")
        shown = browser.execute_script(
            "return [...document.querySelectorAll('#hub-warnings li')].map(li => li.textContent)")
        assert shown == [ANONYMOUS_BROKER_WARNING]
        style = browser.execute_script("const s = getComputedStyle(document.getElementById('hub-warnings'));"
                                       "return [s.color, s.backgroundColor]")
        assert style[0] != style[1], style
    finally:
        hub.stop()
        broker.stop()
