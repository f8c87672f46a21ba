"""The users page in headless Chromium against the real server: disabling a user logs them out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, PAGE_TIMEOUT_MS, log_in
from tests.processes import ServerProcess
from tests.realparts import require

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "users page admin password"
SUPPORT_PASSWORD = "users page support password"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "server") as server:
        yield server


def test_an_admin_disables_a_user_whose_open_session_ends_on_the_next_click(server: ServerProcess) -> None:
    require(CHROMIUM, "chromium")
    from playwright.sync_api import sync_playwright

    server.cli("user", "add", "ada", "--role", "admin", stdin=ADMIN_PASSWORD + "\n")
    server.cli("user", "add", "sam", "--role", "support", stdin=SUPPORT_PASSWORD + "\n")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            sam = browser.new_context().new_page()
            sam.set_default_timeout(PAGE_TIMEOUT_MS)
            log_in(sam, server.url, "sam", SUPPORT_PASSWORD)
            assert sam.locator("nav a", has_text="Users").count() == 0

            ada = browser.new_context().new_page()
            ada.set_default_timeout(PAGE_TIMEOUT_MS)
            log_in(ada, server.url, "ada", ADMIN_PASSWORD)
            ada.click("nav a:has-text('Users')")
            ada.wait_for_url(server.url + "/users")
            row = ada.locator("tr.user[data-name=sam]")
            assert row.get_attribute("data-state") == "enabled"
            assert row.locator("td.num").first.inner_text() == "1"  # sam's open session
            row.locator("button", has_text="Disable").click()
            ada.wait_for_url("**/users/*?done=disabled")
            assert "The user was disabled" in ada.locator("p.note").inner_text()
            ada.click("a:has-text('← Users')")
            assert ada.locator("tr.user[data-name=sam]").get_attribute("data-state") == "disabled"

            sam.click("a.brand")
            sam.wait_for_url("**/login*")
            assert sam.locator("#password").is_visible()
            sam.fill("#name", "sam")
            sam.fill("#password", SUPPORT_PASSWORD)
            sam.click("button[type=submit]")
            assert "Wrong user name or password" in sam.inner_text("p.error")

            users = {u["name"]: u for u in json.loads(server.cli("user", "list", "--json"))["users"]}
            assert users["sam"]["disabled_at"] is not None and users["sam"]["sessions"] == 0
            assert users["ada"]["disabled_at"] is None
        finally:
            browser.close()
