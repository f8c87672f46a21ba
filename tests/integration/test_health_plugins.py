"""The ``command`` health check running real Monitoring Plugins (Debian monitoring-plugins-basic):
exit codes become statuses and perfdata is parsed with the plugins' own labels and units."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from agent.collectors.health import HealthStatus, run_check
from agent.config import HealthCheckConfig
from tests.realparts import require

pytestmark = pytest.mark.integration

PLUGIN_DIR = "/usr/lib/nagios/plugins"
PLUGIN_PACKAGE = "monitoring-plugins-basic"


def plugin_check(plugin: str, *args: str) -> object:
    path = require(f"{PLUGIN_DIR}/{plugin}", PLUGIN_PACKAGE)
    return TypeAdapter(HealthCheckConfig).validate_python(
        {"name": plugin, "type": "command", "command": [path, *args], "timeout": 30}
    )


# check_disk's -w/-c N% mean "less than N% of the space is free": nothing is ever under 0% free,
# and a mounted root filesystem (holding this test) is always under 100% free.
@pytest.mark.parametrize(
    ("thresholds", "status"),
    [
        (["-w", "0%", "-c", "0%"], HealthStatus.OK),
        (["-w", "100%", "-c", "0%"], HealthStatus.WARNING),
        (["-w", "100%", "-c", "100%"], HealthStatus.CRITICAL),
    ],
)
def test_check_disk(thresholds, status):
    result = run_check(plugin_check("check_disk", *thresholds, "-p", "/"))
    assert result.status is status, result.message
    assert result.message.startswith(f"DISK {status.name}")
    root = result.perfdata[0]
    # monitoring-plugins 2.3 reports bytes; older releases reported MB.
    assert (root["label"], root["min"]) == ("/", 0)
    assert root["unit"] in ("B", "MB")
    assert 0 < root["value"] < root["max"]
    assert isinstance(root["warning"], int) and isinstance(root["critical"], int)
    assert (result.value, result.unit) == (root["value"], root["unit"])


@pytest.mark.parametrize(
    ("ranges", "status"),
    [
        (["-w", "1:1", "-c", "1:1"], HealthStatus.OK),
        (["-w", "2:", "-c", "1:"], HealthStatus.WARNING),
        (["-c", "2:"], HealthStatus.CRITICAL),
    ],
)
def test_check_procs_counts_one_process(sleeper, ranges, status):
    result = run_check(plugin_check("check_procs", "-C", "sleep", "-a", sleeper, *ranges))
    assert result.status is status, result.message
    assert result.message.startswith(f"PROCS {status.name}: 1 process")
    procs = result.perfdata[0]
    assert (procs["label"], procs["value"], procs["unit"], procs["min"]) == ("procs", 1, None, 0)
    # Ranges stay the plugin's text, not numbers.
    warning = ranges[ranges.index("-w") + 1] if "-w" in ranges else None
    assert (procs["warning"], procs["critical"]) == (warning, ranges[ranges.index("-c") + 1])
    assert (result.value, result.unit) == (1, None)


def test_plugin_error_on_stderr_is_the_message():
    result = run_check(plugin_check("check_procs", "--no-such-option"))
    assert result.status is HealthStatus.UNKNOWN
    assert "unrecognized option '--no-such-option'" in result.message
