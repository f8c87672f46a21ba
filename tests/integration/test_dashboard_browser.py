"""The dashboard in headless Chromium against the real server and the real agent.

``telemaint-server`` runs under uvicorn on a loopback port; the agent enrolls and reports with
the installed ``telemaint`` command, then its daemon answers "Run checks now".
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import AGENT_COMMAND, ServerProcess, clean_environ, run_checked, stop_process
from tests.realparts import require

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_PASSWORD = "dashboard test password"
RESULT_TIMEOUT_S = 30
PAGE_TIMEOUT_MS = 15_000
SCREENSHOT = Path("/tmp/telemaint-device.png")

AGENT_CONFIG = """\
device:
  name: bench-07
  serial: TB3-2024-0117
  model: TB-3000 test bench
  customer: ACME Automotive
server:
  url: {url}
  timeout: 10s
  intervals:
    heartbeat: 5s
    inventory: 6h
    health: 6h
    commands: 1s
    jitter: 0
collect:
  versions:
    packages: false
    components:
      - name: camera-firmware
        file: {camera_version}
  logs:
    journal:
      enabled: false
    files:
      - path: {vision_log}
health:
  checks:
    - name: root-disk
      type: disk_usage
      path: /
      warning: 99.9
      critical: 100
    - name: vision-config
      type: file_age
      path: {camera_version}
      warning: 400d
"""


def log_in(page: Any, url: str, name: str, password: str) -> None:
    """Log ``name`` in on the dashboard's login page and wait for the device list."""
    page.goto(url + "/login")
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "server") as server:
        yield server


def test_support_finds_the_device_sees_it_and_runs_checks(server: ServerProcess, tmp_path: Path) -> None:
    require(CHROMIUM, "chromium")
    from playwright.sync_api import sync_playwright

    server.cli("user", "add", "ada", "--role", "admin", stdin=ADMIN_PASSWORD + "\n")
    code = json.loads(server.cli("enrollment-code", "--customer", "ACME Automotive", "--json"))["code"]

    camera_version = tmp_path / "camera.version"
    camera_version.write_text("2.3.1\n")
    vision_log = tmp_path / "vision.log"
    vision_log.write_text("08:00:01 INFO calibration loaded\n08:02:13 ERROR camera link lost on port 2\n")
    config = tmp_path / "agent.yaml"
    config.write_text(AGENT_CONFIG.format(url=server.url, camera_version=camera_version, vision_log=vision_log))
    agent_env = clean_environ(TELEMAINT_STATE_DIR=str(tmp_path / "agent-state"))
    agent = [AGENT_COMMAND]
    assert "enrolled as device" in run_checked(
        [*agent, "enroll", "--server", server.url, "--code", code, "--config", str(config)], agent_env
    )
    for kind in ("inventory", "health"):
        assert f"{kind} report sent" in run_checked(
            [*agent, "report", "--kind", kind, "--config", str(config)], agent_env
        )
    camera_version.write_text("2.4.0\n")  # a firmware update, seen by the next inventory
    assert "inventory report sent" in run_checked(
        [*agent, "report", "--kind", "inventory", "--config", str(config)], agent_env
    )

    daemon: subprocess.Popen[bytes] | None = None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(PAGE_TIMEOUT_MS)

            page.goto(server.url + "/")
            assert page.url.startswith(server.url + "/login")
            page.fill("#name", "ada")
            page.fill("#password", "not the password")
            page.click("button[type=submit]")
            assert "Wrong user name or password" in page.inner_text("p.error")
            page.fill("#password", ADMIN_PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(server.url + "/")

            page.fill("input[name=q]", "bench")
            page.click("form.filters button[type=submit]")
            page.wait_for_url("**/?q=bench*")
            rows = page.locator("tr.device")
            assert rows.count() == 1
            assert "online" in rows.first.inner_text() and "ACME Automotive" in rows.first.inner_text()
            rows.first.locator("a", has_text="bench-07").click()
            page.wait_for_url("**/devices/*")

            health = page.locator("#health").inner_text()
            assert "root-disk" in health and "vision-config" in health and "OK" in health
            versions = page.locator("#versions").inner_text()
            assert "camera-firmware" in versions and "2.4.0" in versions
            assert "2.3.1 → 2.4.0" in versions
            network = page.locator("#network").inner_text()
            assert "127.0.0.1/8" in network
            assert "ERROR camera link lost on port 2" in page.locator("#logs").inner_text()

            page.click("button:has-text('Run checks now')")
            page.wait_for_selector("tr.command[data-status=queued]")
            assert "Waiting for the device" in page.locator("#commands").inner_text()

            daemon = subprocess.Popen(
                [*agent, "run", "--config", str(config)],
                env=agent_env,
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / "agent.log").open("wb"),
            )
            # The page reloads itself while a command is pending; reload too in case it stalls.
            deadline = time.monotonic() + RESULT_TIMEOUT_S
            while page.locator("tr.command[data-status=done]").count() == 0:
                assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
                time.sleep(1)
                if page.locator("tr.command[data-status=done]").count() == 0:
                    page.reload()
            row = page.locator("tr.command[data-status=done]").first.inner_text()
            assert "Run checks now" in row and "done" in row and "status: OK" in row
            assert "Waiting for the device" not in page.locator("#commands").inner_text()
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
            if daemon is not None:
                stop_process(daemon)
