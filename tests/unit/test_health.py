"""Health checks: every check type's OK, WARNING/CRITICAL and failure paths, plugin output parsing,
and the runner's ordering, error and overrun handling."""

from __future__ import annotations

import http.server
import os
import socket
import ssl
import threading
import time
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args

import pytest
from pydantic import TypeAdapter

from agent.collectors import clock, health
from agent.collectors.health import (
    CheckResult,
    HealthStatus,
    parse_perfdata,
    parse_plugin_output,
    run_check,
    run_checks,
    threshold_status,
    worst_status,
)
from agent.config import HealthCheckConfig, HealthConfig
from tests.tls import write_self_signed_cert

OK, WARNING, CRITICAL, UNKNOWN = (
    HealthStatus.OK,
    HealthStatus.WARNING,
    HealthStatus.CRITICAL,
    HealthStatus.UNKNOWN,
)
_CHECK = TypeAdapter(HealthCheckConfig)
SensorReading = namedtuple("SensorReading", "label current high critical")


def check(**settings: Any) -> Any:
    """Return a validated check config, as agent.yaml would give it."""
    return _CHECK.validate_python({"name": "probe", **settings})


# --- status ranking, thresholds and the result shape ----------------------------------------


@pytest.mark.parametrize(
    ("statuses", "worst"),
    [
        ([], OK),
        ([OK, OK], OK),
        ([OK, UNKNOWN], UNKNOWN),
        ([UNKNOWN, WARNING, OK], WARNING),
        ([CRITICAL, UNKNOWN, WARNING], CRITICAL),
        ([WARNING, CRITICAL], CRITICAL),
    ],
)
def test_worst_status_ranks_critical_warning_unknown_ok(statuses, worst):
    assert worst_status(statuses) is worst


@pytest.mark.parametrize(
    ("value", "status"), [(79.9, OK), (80, WARNING), (94.9, WARNING), (95, CRITICAL), (120, CRITICAL)]
)
def test_threshold_status_is_reached_at_the_threshold(value, status):
    assert threshold_status(value, 80, 95) is status


def test_threshold_status_without_thresholds_is_ok():
    assert threshold_status(1e9, None, None) is OK


def test_result_as_dict_has_the_wire_keys():
    result = CheckResult("root", "disk_usage", CRITICAL, "full", 97.5, "%", [], duration_s=0.0123)
    assert result.as_dict() == {
        "name": "root",
        "type": "disk_usage",
        "status": "CRITICAL",
        "exit_code": 2,
        "message": "full",
        "value": 97.5,
        "unit": "%",
        "perfdata": [],
        "duration_ms": 12.3,
    }


def test_every_configurable_check_type_has_a_check_function():
    union = get_args(HealthCheckConfig)[0]
    configurable = {get_args(model.model_fields["type"].annotation)[0] for model in get_args(union)}
    assert configurable == set(health.CHECKS)


def test_fields_describe_every_key_of_a_result():
    described = {f.path for f in health.fields}
    keys = set(CheckResult("n", "t", OK, "m").as_dict()) - {"perfdata"}
    assert {f"checks[].{key}" for key in keys} <= described
    assert {f"checks[].perfdata[].{key}" for key in health.perfdata_entry("l", 1)} <= described


# --- disk_usage, memory, load, temperature --------------------------------------------------


@pytest.mark.parametrize(("warning", "critical", "status"), [(100, 100, OK), (0, 100, WARNING), (0, 0, CRITICAL)])
def test_disk_usage_of_a_real_filesystem(tmp_path, warning, critical, status):
    # A filesystem is never 100% used by this test and always >= 0% used.
    result = run_check(check(type="disk_usage", path=str(tmp_path), warning=warning, critical=critical))
    assert result.status is status
    assert result.unit == "%"
    assert 0 <= result.value < 100
    assert result.message.startswith(f"{tmp_path} is ")
    assert [p["label"] for p in result.perfdata] == ["used", "free"]


def test_disk_usage_of_a_missing_path_is_unknown(tmp_path):
    result = run_check(check(type="disk_usage", path=str(tmp_path / "gone")))
    assert result.status is UNKNOWN
    assert result.message == f"{tmp_path / 'gone'} does not exist"


@pytest.mark.parametrize(("percent", "status"), [(89.9, OK), (90.0, WARNING), (95.0, CRITICAL)])
def test_memory_against_default_thresholds(monkeypatch, percent, status):
    memory = SimpleNamespace(percent=percent, available=2 * 1024**3, total=8 * 1024**3)
    monkeypatch.setattr(health.psutil, "virtual_memory", lambda: memory)
    result = run_check(check(type="memory"))
    assert result.status is status
    assert result.value == percent
    assert "2.0 GiB available of 8.0 GiB" in result.message


@pytest.mark.parametrize(
    ("settings", "value", "status"),
    [
        ({"period": 1}, 0.5, OK),
        ({"period": 5}, 3.0, WARNING),
        ({"period": 15}, 6.0, CRITICAL),
        ({"period": 5, "per_cpu": False}, 6.0, CRITICAL),
        ({"period": 1, "per_cpu": False, "warning": 1, "critical": 3}, 1.0, WARNING),
    ],
)
def test_load_for_the_chosen_period_per_cpu(monkeypatch, settings, value, status):
    monkeypatch.setattr(health.psutil, "getloadavg", lambda: (1.0, 6.0, 12.0))
    monkeypatch.setattr(health.psutil, "cpu_count", lambda: 2)
    result = run_check(check(type="load", **settings))
    assert (result.value, result.status) == (value, status)


def _sensors(monkeypatch, sensors):
    monkeypatch.setattr(health.psutil, "sensors_temperatures", lambda: sensors, raising=False)


HOT_MACHINE = {
    "coretemp": [SensorReading("Core 0", 50.0, 80, 100), SensorReading("Core 1", 85.0, 80, 100)],
    "acpitz": [SensorReading("", 40.0, None, None)],
    "nvme": [SensorReading("Composite", 96.0, None, None)],
}


@pytest.mark.parametrize(
    ("sensor", "hottest", "status"),
    [
        (None, "nvme/Composite", CRITICAL),
        ("^coretemp/", "coretemp/Core 1", WARNING),
        ("acpitz", "acpitz", OK),
    ],
)
def test_temperature_takes_the_hottest_matching_sensor(monkeypatch, sensor, hottest, status):
    _sensors(monkeypatch, HOT_MACHINE)
    result = run_check(check(type="temperature", sensor=sensor))
    assert result.status is status
    assert result.message.startswith(f"{hottest} at ")
    assert result.unit == "C"


def test_temperature_without_sensors_is_unknown(monkeypatch):
    _sensors(monkeypatch, {})
    result = run_check(check(type="temperature"))
    assert (result.status, result.message) == (UNKNOWN, "no temperature sensors on this machine")


def test_temperature_when_psutil_cannot_read_sensors_is_unknown(monkeypatch):
    monkeypatch.delattr(health.psutil, "sensors_temperatures", raising=False)
    result = run_check(check(type="temperature"))
    assert (result.status, result.message) == (UNKNOWN, "no temperature sensors on this machine")


def test_temperature_with_no_matching_sensor_names_the_sensors(monkeypatch):
    _sensors(monkeypatch, HOT_MACHINE)
    result = run_check(check(type="temperature", sensor="^gpu"))
    assert result.status is UNKNOWN
    assert "no temperature sensor matches '^gpu'" in result.message
    assert "coretemp/Core 1" in result.message


# --- process ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounds", "status", "note"),
    [
        ({}, OK, ""),
        ({"min": 1, "max": 1}, OK, ""),
        ({"min": 2}, CRITICAL, " (expected at least 2)"),
        ({"min": 0, "max": 0}, CRITICAL, " (expected at most 0)"),
    ],
)
def test_process_found_by_cmdline(sleeper, bounds, status, note):
    pattern = rf"^sleep {sleeper}$".replace(".", r"\.")
    result = run_check(check(type="process", cmdline=pattern, **bounds))
    assert result.value == 1
    assert result.status is status
    assert result.message == f"1 process matching {pattern!r}{note}"


def test_process_name_and_cmdline_must_both_match(sleeper):
    assert run_check(check(type="process", process="sleep", cmdline=sleeper)).value == 1
    assert run_check(check(type="process", process="cat", cmdline=sleeper)).value == 0


def test_process_that_does_not_run_is_critical():
    result = run_check(check(type="process", process="no-such-daemon-7f3a"))
    assert (result.value, result.status) == (0, CRITICAL)
    assert result.message == "0 processes named 'no-such-daemon-7f3a' (expected at least 1)"


# --- systemd_unit -------------------------------------------------------------------------------

FAKE_SYSTEMCTL = """#!/bin/sh
[ "$1" = is-active ] || { echo "unexpected arguments: $*" >&2; exit 64; }
case "$2" in
  bus-error) echo "Failed to connect to bus: No such file or directory" >&2; exit 1 ;;
  silent) exit 4 ;;
  *) echo "$2"; [ "$2" = active ]; exit $? ;;
esac
"""


@pytest.fixture
def fake_systemd(tmp_path, monkeypatch) -> Path:
    """A /proc whose PID 1 is systemd and a fake systemctl first on PATH; returns the bin dir."""
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "comm").write_text("systemd\n")
    monkeypatch.setattr(health, "PROC_ROOT", tmp_path / "proc")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_systemd_unit_on_this_machine_says_systemd_is_absent():
    pid1 = Path("/proc/1/comm").read_text().strip()
    if pid1 == "systemd":
        pytest.skip("PID 1 is systemd on this machine")
    result = run_check(check(type="systemd_unit", unit="ssh.service"))
    assert result.status is UNKNOWN
    assert result.message == f"systemd is not running here (PID 1 is {pid1!r})"


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("active", OK),
        ("activating", WARNING),
        ("reloading", WARNING),
        ("inactive", CRITICAL),
        ("failed", CRITICAL),
        ("deactivating", CRITICAL),
    ],
)
def test_systemd_unit_maps_is_active_states(fake_systemd, state, status):
    result = run_check(check(type="systemd_unit", unit=state))
    assert (result.status, result.message, result.value) == (status, f"{state} is {state}", state)


@pytest.mark.parametrize(
    ("unit", "said"),
    [
        ("bus-error", "Failed to connect to bus: No such file or directory"),
        ("silent", "no output, exit status 4"),
    ],
)
def test_systemd_unit_without_a_state_is_unknown(fake_systemd, unit, said):
    result = run_check(check(type="systemd_unit", unit=unit))
    assert (result.status, result.message) == (UNKNOWN, f"systemctl is-active {unit}: {said}")


def test_systemd_unit_without_systemctl_is_unknown(fake_systemd, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = run_check(check(type="systemd_unit", unit="active"))
    assert (result.status, result.message) == (UNKNOWN, "systemctl is not installed")


def test_systemd_absent_reason_names_pid1(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "comm").write_text("bash\n")
    assert health.systemd_absent_reason(tmp_path) == "systemd is not running here (PID 1 is 'bash')"


# --- tcp ----------------------------------------------------------------------------------------


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.mark.parametrize(("thresholds", "status"), [({}, OK), ({"warning": 0}, WARNING), ({"critical": 0}, CRITICAL)])
def test_tcp_connects_to_a_listening_port(listening_port, thresholds, status):
    result = run_check(check(type="tcp", port=listening_port, **thresholds))
    assert result.status is status
    assert result.unit == "ms"
    assert result.value >= 0
    assert result.message.startswith(f"127.0.0.1:{listening_port} accepted a connection in ")


def test_tcp_to_a_closed_port_is_critical():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    result = run_check(check(type="tcp", port=port))
    assert result.status is CRITICAL
    assert result.message.lower() == f"127.0.0.1:{port}: connection refused"


# --- http ---------------------------------------------------------------------------------------


class EquipmentWebUI(http.server.BaseHTTPRequestHandler):
    routes = {
        "/": (200, b"<html>plant controller ready</html>"),
        "/broken": (500, b"internal error"),
        "/missing": (404, b"not here"),
    }

    def do_GET(self) -> None:
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, body = self.routes[self.path]
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(server: http.server.ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def web_ui() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1; yields 'host:port'."""
    yield from _serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), EquipmentWebUI))


@pytest.fixture(autouse=True)
def _proxy_that_does_not_exist(monkeypatch):
    """Checks target local equipment directly: a proxy in the environment must not be used."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_http_ok_when_status_and_body_match(web_ui):
    result = run_check(check(type="http", url=f"http://{web_ui}/", body_pattern="controller ready"))
    assert result.status is OK
    assert result.message.startswith("HTTP 200 OK in ")
    assert result.unit == "ms"
    assert result.value >= 0
    assert result.perfdata[0]["label"] == "time"


def test_http_body_mismatch_is_critical(web_ui):
    result = run_check(check(type="http", url=f"http://{web_ui}/", body_pattern="FAULT \\d+"))
    assert result.status is CRITICAL
    assert result.message == "HTTP 200 OK but the body does not match 'FAULT \\\\d+'"


def test_http_unexpected_status_is_critical(web_ui):
    result = run_check(check(type="http", url=f"http://{web_ui}/broken"))
    assert result.status is CRITICAL
    expected = f"HTTP 500 Internal Server Error from http://{web_ui}/broken (expected 200)"
    assert result.message == expected


def test_http_configured_status_is_ok(web_ui):
    assert run_check(check(type="http", url=f"http://{web_ui}/missing", expect_status=404)).status is OK


def test_http_does_not_follow_redirects(web_ui):
    assert run_check(check(type="http", url=f"http://{web_ui}/moved")).status is CRITICAL
    assert run_check(check(type="http", url=f"http://{web_ui}/moved", expect_status=302)).status is OK


def test_http_response_time_thresholds(web_ui):
    assert run_check(check(type="http", url=f"http://{web_ui}/", warning=0)).status is WARNING
    assert run_check(check(type="http", url=f"http://{web_ui}/", critical=0)).status is CRITICAL


def test_http_to_a_closed_port_is_critical():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    result = run_check(check(type="http", url=f"http://127.0.0.1:{port}/"))
    assert result.status is CRITICAL
    assert "refused" in result.message.lower()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    return write_self_signed_cert(tmp_path_factory.mktemp("tls"), common_name="equipment.test")


@pytest.fixture
def tls_web_ui(self_signed) -> Iterator[str]:
    """A real HTTPS server on 127.0.0.1 with the self-signed certificate; yields 'host:port'."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EquipmentWebUI)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from _serve(server)


def test_https_trusted_through_ca_file(tls_web_ui, self_signed):
    url = f"https://{tls_web_ui}/"
    result = run_check(check(type="http", url=url, ca_file=str(self_signed[0]), body_pattern="ready"))
    assert (result.status, result.message[:12]) == (OK, "HTTP 200 OK ")


def test_https_without_verification(tls_web_ui):
    assert run_check(check(type="http", url=f"https://{tls_web_ui}/", verify=False)).status is OK


def test_https_with_an_untrusted_certificate_is_critical(tls_web_ui):
    result = run_check(check(type="http", url=f"https://{tls_web_ui}/"))
    assert result.status is CRITICAL
    assert "TLS certificate not trusted: self-signed certificate" in result.message


# --- file_age -----------------------------------------------------------------------------------

DAY_S = 86400


def _aged(path: Path, days: float) -> Path:
    path.write_bytes(b"calibration")
    then = time.time() - days * DAY_S
    os.utime(path, (then, then))
    return path


@pytest.mark.parametrize(
    ("thresholds", "status", "note"),
    [
        ({"warning": "500d"}, OK, ""),
        ({"warning": "400d"}, WARNING, " (warning at 400d)"),
        ({"warning": "400d", "critical": "410d"}, CRITICAL, " (critical at 410d)"),
    ],
)
def test_file_age(tmp_path, thresholds, status, note):
    _aged(tmp_path / "calibration.dat", 412)
    result = run_check(check(type="file_age", path=str(tmp_path / "calibration.dat"), **thresholds))
    assert result.status is status
    assert result.message == f"calibration.dat is 412 days old{note}"
    assert result.unit == "s"
    assert 412 * DAY_S <= result.value < 413 * DAY_S


def test_file_age_takes_the_newest_match(tmp_path):
    _aged(tmp_path / "backup-1.dat", 30)
    _aged(tmp_path / "backup-2.dat", 3)
    result = run_check(check(type="file_age", path=str(tmp_path / "backup-*.dat"), warning="7d"))
    assert (result.status, result.message) == (OK, "backup-2.dat is 3 days old")


@pytest.mark.parametrize(("missing", "status"), [({}, CRITICAL), ({"missing": "ok"}, OK)])
def test_file_age_when_nothing_matches(tmp_path, missing, status):
    pattern = str(tmp_path / "*.dat")
    result = run_check(check(type="file_age", path=pattern, warning="1d", **missing))
    assert (result.status, result.message) == (status, f"no file matches {pattern}")


# --- ntp_synced ---------------------------------------------------------------------------------


def _clock(monkeypatch, synchronized: bool) -> None:
    sync = clock.ClockSync(synchronized, 0.012 if synchronized else 16.0, 0.0, 0, not synchronized)
    monkeypatch.setattr(clock, "clock_sync", lambda: sync)


@pytest.mark.parametrize(
    ("synchronized", "settings", "status"),
    [(True, {}, OK), (False, {}, WARNING), (False, {"unsynced": "critical"}, CRITICAL)],
)
def test_ntp_synced(monkeypatch, synchronized, settings, status):
    _clock(monkeypatch, synchronized)
    result = run_check(check(type="ntp_synced", **settings))
    assert result.status is status
    assert ("not synchronised" in result.message) is not synchronized


def test_ntp_synced_when_the_kernel_refuses_is_unknown(monkeypatch):
    def refuse():
        raise OSError(1, "adjtimex failed")

    monkeypatch.setattr(clock, "clock_sync", refuse)
    result = run_check(check(type="ntp_synced"))
    assert result.status is UNKNOWN
    assert "adjtimex failed" in result.message


# --- command (Nagios plugins) -----------------------------------------------------------------


def plugin(tmp_path: Path, body: str, name: str = "check_equipment") -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("code", [0, 1, 2, 3])
def test_command_exit_code_is_the_status(tmp_path, code):
    script = plugin(tmp_path, f"echo 'PUMP {code} - pressure 2.1 bar | pressure=2.1bar;3;4;0;10'\nexit {code}")
    result = run_check(check(type="command", command=[script]))
    assert result.status is HealthStatus(code)
    assert result.message == f"PUMP {code} - pressure 2.1 bar"
    assert (result.value, result.unit) == (2.1, "bar")


def test_command_with_a_non_plugin_exit_status_is_unknown(tmp_path):
    result = run_check(check(type="command", command=[plugin(tmp_path, "echo 'half done'\nexit 5")]))
    assert result.status is UNKNOWN
    assert result.message == "exit status 5 is not a plugin status (0-3): half done"


def test_command_parses_perfdata_from_first_line_and_long_output(tmp_path):
    script = plugin(
        tmp_path,
        """cat <<'EOF'
DISK OK - 2 mounts | '/ root'=42%;80;90;0;100 time=0.5s
mount / is fine
mount /data is fine | inodes=U;;;;
'it''s'=3c;@10:20;~:5
EOF""",
    )
    result = run_check(check(type="command", command=[script]))
    assert result.status is OK
    assert result.message == "DISK OK - 2 mounts"
    assert (result.value, result.unit) == (42, "%")
    assert result.perfdata == [
        {"label": "/ root", "value": 42, "unit": "%", "warning": 80, "critical": 90, "min": 0, "max": 100},
        {"label": "time", "value": 0.5, "unit": "s", "warning": None, "critical": None, "min": None, "max": None},
        {"label": "inodes", "value": None, "unit": None, "warning": None, "critical": None, "min": None, "max": None},
        {"label": "it's", "value": 3, "unit": "c", "warning": "@10:20", "critical": "~:5", "min": None, "max": None},
    ]  # fmt: skip


def test_command_timeout_is_unknown(tmp_path):
    result = run_check(check(type="command", command=[plugin(tmp_path, "sleep 10")], timeout=0.5))
    assert (result.status, result.message) == (UNKNOWN, "timed out after 0.5s")


def test_command_that_does_not_exist_is_unknown(tmp_path):
    result = run_check(check(type="command", command=[str(tmp_path / "check_nothing")]))
    assert result.status is UNKNOWN
    assert result.message == f"command not found: {tmp_path / 'check_nothing'}"


def test_command_that_is_not_executable_is_unknown(tmp_path):
    script = plugin(tmp_path, "exit 0")
    Path(script).chmod(0o644)
    if os.access(script, os.X_OK):
        pytest.skip("this user may execute any file")
    result = run_check(check(type="command", command=[script]))
    assert result.status is UNKNOWN
    assert result.message.startswith("not executable")


def test_command_error_on_stderr_reaches_the_message(tmp_path):
    script = plugin(tmp_path, "echo 'cannot open /dev/ttyS4: Permission denied' >&2\nexit 2")
    result = run_check(check(type="command", command=[script]))
    assert (result.status, result.message) == (CRITICAL, "cannot open /dev/ttyS4: Permission denied")


def test_command_without_output_says_so(tmp_path):
    result = run_check(check(type="command", command=[plugin(tmp_path, "exit 1")]))
    assert (result.status, result.message) == (WARNING, "check_equipment exited 1 without output")
    assert result.value is None


def test_parse_perfdata_skips_malformed_items():
    assert [p["label"] for p in parse_perfdata("a=1 b=x c= =4 d=2;;;; e")] == ["a", "d"]


def test_parse_plugin_output_without_perfdata():
    assert parse_plugin_output("PROCS OK: 3 processes\nmore detail\n") == ("PROCS OK: 3 processes", [])


# --- run_check and run_checks -------------------------------------------------------------------


def test_a_check_that_raises_is_unknown(monkeypatch):
    def broken():
        raise RuntimeError("psutil exploded")

    monkeypatch.setattr(health.psutil, "virtual_memory", broken)
    result = run_check(check(type="memory"))
    assert (result.status, result.message) == (UNKNOWN, "RuntimeError: psutil exploded")
    assert result.duration_s >= 0


def test_run_checks_keeps_config_order(tmp_path, monkeypatch):
    _clock(monkeypatch, False)
    config = HealthConfig.model_validate(
        {
            "parallel": 3,
            "checks": [
                {"name": f"check{i}", "type": "command", "command": [plugin(tmp_path, f"exit {i % 4}", f"c{i}")]}
                for i in range(7)
            ]
            + [{"name": "clock", "type": "ntp_synced"}],
        }
    )  # fmt: skip
    results = run_checks(config)
    assert [r.name for r in results] == [f"check{i}" for i in range(7)] + ["clock"]
    assert [int(r.status) for r in results] == [0, 1, 2, 3, 0, 1, 2, 1]


def test_run_checks_reports_and_leaves_a_check_that_overruns(tmp_path, monkeypatch):
    release = threading.Event()

    def stuck(check_config):
        release.wait(30)
        return CheckResult(check_config.name, "memory", OK, "finished late")

    monkeypatch.setattr(health, "OVERRUN_GRACE_S", 0.2)
    monkeypatch.setitem(health.CHECKS, "memory", stuck)
    config = HealthConfig(
        parallel=1,
        checks=[
            {"name": "stuck", "type": "memory", "timeout": 0.1},
            {"name": "disk", "type": "disk_usage", "path": str(tmp_path), "warning": 100, "critical": 100},
        ],
    )
    try:
        stuck_result, disk_result = run_checks(config)
    finally:
        release.set()
    assert stuck_result.status is UNKNOWN
    assert stuck_result.message == "did not finish within 0.3s (timeout 0.1s)"
    # With one worker, the next check ran only because the stuck one's slot was given up.
    assert disk_result.status is OK
