"""Unassigned devices on the dashboard, in headless Chromium against the real server and agent.

A machine enrolled with a code that names no customer lands unassigned, whatever it claims; the
customer's viewer does not see it; an admin reads what the machine says on its page, next to
what it stored today, and assigns it; from then on the viewer sees it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, PAGE_TIMEOUT_MS, log_in
from tests.processes import AGENT_COMMAND, ServerProcess, clean_environ, run_checked
from tests.realparts import require

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "assign test admin password"
VIEWER_PASSWORD = "assign test viewer password"
CLAIMED = "ACME Automotive"

AGENT_CONFIG = """\
device:
  name: press-12
  serial: PR-2026-0012
  model: PR-12 press
  customer: {claimed}
server:
  url: {url}
  timeout: 10s
collect:
  versions:
    packages: false
  logs:
    journal:
      enabled: false
health:
  checks:
    - name: root-disk
      type: disk_usage
      path: /
      warning: 99.9
      critical: 100
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "server") as server:
        yield server


def test_an_admin_assigns_an_unassigned_device_that_its_customer_then_sees(
    server: ServerProcess, tmp_path: Path
) -> None:
    require(CHROMIUM, "chromium")
    from playwright.sync_api import sync_playwright

    server.cli("user", "add", "ada", "--role", "admin", stdin=ADMIN_PASSWORD + "\n")
    server.cli("user", "add", "carl", "--role", "customer", "--customer", CLAIMED, stdin=VIEWER_PASSWORD + "\n")
    code = json.loads(server.cli("enrollment-code", "--json"))["code"]
    config = tmp_path / "agent.yaml"
    config.write_text(AGENT_CONFIG.format(url=server.url, claimed=CLAIMED))
    agent_env = clean_environ(TELEMAINT_STATE_DIR=str(tmp_path / "agent-state"))
    enrolled = run_checked(
        [AGENT_COMMAND, "enroll", "--server", server.url, "--code", code, "--config", str(config)], agent_env
    )
    device_id = int(enrolled.split("device ")[1].split()[0])
    for kind in ("inventory", "health"):
        run_checked([AGENT_COMMAND, "report", "--kind", kind, "--config", str(config)], agent_env)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            viewer = browser.new_context().new_page()
            viewer.set_default_timeout(PAGE_TIMEOUT_MS)
            log_in(viewer, server.url, "carl", VIEWER_PASSWORD)
            assert viewer.locator("tr.device").count() == 0  # claimed, not assigned: not theirs
            missing = viewer.goto(f"{server.url}/devices/{device_id}")
            assert missing is not None and missing.status == 404

            admin = browser.new_context().new_page()
            admin.set_default_timeout(PAGE_TIMEOUT_MS)
            log_in(admin, server.url, "ada", ADMIN_PASSWORD)
            row = admin.locator("tr.device", has_text="press-12")
            assert "unassigned" in row.inner_text()
            row.locator("a", has_text="press-12").click()
            admin.wait_for_url(f"**/devices/{device_id}")
            assert "unassigned" in admin.locator("dd.customer").inner_text()
            assert f"The machine says: {CLAIMED}" in admin.locator("div.claimed").inner_text()
            storage = admin.locator("dd.storage").inner_text()
            assert "2 reports" in storage and "a day" in storage

            admin.fill("form.assign input[name=customer]", CLAIMED)
            admin.click("form.assign button[type=submit]")
            admin.wait_for_url(f"**/devices/{device_id}#identity")
            assert admin.locator("dd.customer").inner_text().strip().startswith(CLAIMED)
            assert admin.locator("div.claimed").count() == 0

            viewer.goto(server.url + "/")
            assert viewer.locator("tr.device").count() == 1
            assert "press-12" in viewer.locator("tr.device").inner_text()
            viewer.locator("a", has_text="press-12").click()
            viewer.wait_for_url(f"**/devices/{device_id}")
            assert viewer.locator("form.assign").count() == 0  # viewers read, never assign
        finally:
            browser.close()
