"""Health checks: each configured check gives a Nagios-style status, a one-line message, a value
and performance data.

One function per check type, registered by type name in :data:`CHECKS`; :func:`run_check` is the
one dispatcher and never raises; :func:`run_checks` runs a whole ``health`` section side by side.
Numeric checks share one threshold rule (:func:`threshold_status`). The ``command`` type runs any
Nagios/Monitoring Plugins plugin and parses its output per the plugin guidelines.
"""

from __future__ import annotations

import glob
import logging
import os
import queue
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from agent.collectors import Field, clock
from agent.config import (
    CheckBase,
    CommandCheck,
    DiskUsageCheck,
    FileAgeCheck,
    HealthConfig,
    HttpCheck,
    LoadCheck,
    MemoryCheck,
    NtpSyncedCheck,
    ProcessCheck,
    SystemdUnitCheck,
    TcpCheck,
    TemperatureCheck,
    format_duration,
)
from agent.runner import run_command

logger = logging.getLogger(__name__)

PROC_ROOT = Path("/proc")
OVERRUN_GRACE_S = 2.0
HTTP_BODY_MAX_BYTES = 1024 * 1024
MAX_MESSAGE_CHARS = 1000
PLUGIN_STATUSES = (0, 1, 2, 3)
SYSTEMD_WARNING_STATES = frozenset({"activating", "reloading", "refreshing"})


class HealthStatus(IntEnum):
    """Nagios plugin exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# As monitoring-plugins' max_state_alt(): a known problem outranks not knowing.
_SEVERITY = {
    HealthStatus.OK: 0,
    HealthStatus.UNKNOWN: 1,
    HealthStatus.WARNING: 2,
    HealthStatus.CRITICAL: 3,
}


def worst_status(statuses: Iterable[HealthStatus]) -> HealthStatus:
    """Return the worst of ``statuses`` (CRITICAL > WARNING > UNKNOWN > OK); OK when empty."""
    return max(statuses, key=_SEVERITY.__getitem__, default=HealthStatus.OK)


@dataclass
class CheckResult:
    """What one check found. ``perfdata`` holds dicts with keys label, value, unit, warning,
    critical, min, max."""

    name: str
    type: str
    status: HealthStatus
    message: str
    value: float | int | str | None = None
    unit: str | None = None
    perfdata: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "status": self.status.name,
            "exit_code": int(self.status),
            "message": self.message,
            "value": self.value,
            "unit": self.unit,
            "perfdata": self.perfdata,
            "duration_ms": round(self.duration_s * 1000, 1),
        }


fields = (
    Field("status", "Worst status of all checks: OK, WARNING, CRITICAL or UNKNOWN"),
    Field("exit_code", "Worst status as a Nagios exit code (0-3)"),
    Field("checks[].name", "Check name from agent.yaml"),
    Field("checks[].type", "Check type (disk_usage, memory, load, ..., command)"),
    Field("checks[].status", "OK, WARNING, CRITICAL or UNKNOWN"),
    Field("checks[].exit_code", "Status as a Nagios exit code (0-3)"),
    Field("checks[].message", "One line saying what was found"),
    Field("checks[].value", "Main measured value, in checks[].unit"),
    Field("checks[].unit", "Unit of the value (%, ms, s, C, B, or none)"),
    Field("checks[].perfdata[].label", "Performance data label"),
    Field("checks[].perfdata[].value", "Measured value, null when unknown (U)"),
    Field("checks[].perfdata[].unit", "Unit of measure"),
    Field("checks[].perfdata[].warning", "Warning threshold (number or Nagios range text)"),
    Field("checks[].perfdata[].critical", "Critical threshold (number or Nagios range text)"),
    Field("checks[].perfdata[].min", "Smallest possible value"),
    Field("checks[].perfdata[].max", "Largest possible value"),
    Field("checks[].duration_ms", "How long the check took", "ms"),
)


# --- shared helpers ---------------------------------------------------------------------------


def threshold_status(value: float, warning: float | None, critical: float | None) -> HealthStatus:
    """Return CRITICAL when ``value >= critical``, WARNING when ``value >= warning``, else OK."""
    if critical is not None and value >= critical:
        return HealthStatus.CRITICAL
    if warning is not None and value >= warning:
        return HealthStatus.WARNING
    return HealthStatus.OK


def perfdata_entry(
    label: str,
    value: float | int | None,
    unit: str | None = None,
    warning: float | int | str | None = None,
    critical: float | int | str | None = None,
    minimum: float | int | None = None,
    maximum: float | int | None = None,
) -> dict[str, Any]:
    """Return one performance data dict (keys label, value, unit, warning, critical, min, max)."""
    return {
        "label": label,
        "value": value,
        "unit": unit,
        "warning": warning,
        "critical": critical,
        "min": minimum,
        "max": maximum,
    }


def _result(
    check: CheckBase,
    status: HealthStatus,
    message: str,
    value: float | int | str | None = None,
    unit: str | None = None,
    perfdata: list[dict[str, Any]] | None = None,
) -> CheckResult:
    message = _one_line(message)
    return CheckResult(check.name, check.type, status, message, value, unit, perfdata or [])


def _measured(
    check: CheckBase,
    text: str,
    value: float,
    *,
    unit: str | None,
    warning: float | None,
    critical: float | None,
    show: Callable[[float], str],
    label: str,
    minimum: float | None = 0,
    maximum: float | None = None,
    extra_perfdata: Iterable[dict[str, Any]] = (),
) -> CheckResult:
    """Judge ``value`` against the thresholds; the message names the threshold crossed."""
    status = threshold_status(value, warning, critical)
    if status is HealthStatus.CRITICAL:
        text += f" (critical at {show(critical)})"
    elif status is HealthStatus.WARNING:
        text += f" (warning at {show(warning)})"
    perfdata = [perfdata_entry(label, value, unit, warning, critical, minimum, maximum)]
    return _result(check, status, text, value, unit, [*perfdata, *extra_perfdata])


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 1] + "…"


def _percent(value: float) -> str:
    return f"{value:g}%"


def _bytes_text(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _show_ms(ms: float) -> str:
    return f"{ms:g} ms"


def _network_error(exc: OSError, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g}s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    return exc.strerror or str(exc) or type(exc).__name__


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- the check types --------------------------------------------------------------------------

CheckFunction = Callable[[Any], CheckResult]
CHECKS: dict[str, CheckFunction] = {}


def check_type(name: str) -> Callable[[CheckFunction], CheckFunction]:
    """Decorator: register a function as the check for config ``type: name``."""

    def register(function: CheckFunction) -> CheckFunction:
        CHECKS[name] = function
        return function

    return register


@check_type("disk_usage")
def check_disk_usage(check: DiskUsageCheck) -> CheckResult:
    """Percent used of the filesystem holding ``check.path`` (as df counts it)."""
    if not os.path.exists(check.path):
        return _result(check, HealthStatus.UNKNOWN, f"{check.path} does not exist")
    usage = psutil.disk_usage(check.path)
    text = f"{check.path} is {usage.percent:g}% full ({_bytes_text(usage.free)} free of {_bytes_text(usage.total)})"
    free = perfdata_entry("free", usage.free, "B", minimum=0, maximum=usage.total)
    return _measured(
        check,
        text,
        usage.percent,
        unit="%",
        warning=check.warning,
        critical=check.critical,
        show=_percent,
        label="used",
        maximum=100,
        extra_perfdata=[free],
    )


@check_type("memory")
def check_memory(check: MemoryCheck) -> CheckResult:
    """Percent of memory in use (total minus available, as psutil and free(1) count it)."""
    memory = psutil.virtual_memory()
    text = f"memory {memory.percent:g}% used ({_bytes_text(memory.available)} available of {_bytes_text(memory.total)})"
    return _measured(
        check,
        text,
        memory.percent,
        unit="%",
        warning=check.warning,
        critical=check.critical,
        show=_percent,
        label="used",
        maximum=100,
    )


@check_type("load")
def check_load(check: LoadCheck) -> CheckResult:
    """Load average over ``check.period`` minutes, per CPU when ``check.per_cpu``."""
    load = psutil.getloadavg()[(1, 5, 15).index(check.period)]
    text = f"load average ({check.period} min) {load:.2f}"
    if check.per_cpu:
        cpus = psutil.cpu_count() or 1
        load /= cpus
        text = f"load average ({check.period} min) {load:.2f} per CPU ({cpus} CPUs)"
    return _measured(
        check,
        text,
        round(load, 2),
        unit=None,
        warning=check.warning,
        critical=check.critical,
        show="{:g}".format,
        label=f"load{check.period}",
    )


@check_type("temperature")
def check_temperature(check: TemperatureCheck) -> CheckResult:
    """Hottest sensor whose ``chip/label`` matches ``check.sensor`` (every sensor when unset)."""
    read_sensors = getattr(psutil, "sensors_temperatures", None)
    sensors = read_sensors() if read_sensors is not None else {}
    readings = [
        (f"{chip}/{entry.label}" if entry.label else chip, entry.current)
        for chip, entries in sensors.items()
        for entry in entries
        if entry.current is not None
    ]
    if not readings:
        return _result(check, HealthStatus.UNKNOWN, "no temperature sensors on this machine")
    if check.sensor is not None:
        pattern = re.compile(check.sensor)
        matching = [r for r in readings if pattern.search(r[0])]
        if not matching:
            names = ", ".join(sorted({r[0] for r in readings}))
            message = f"no temperature sensor matches {check.sensor!r} ({names})"
            return _result(check, HealthStatus.UNKNOWN, message)
        readings = matching
    sensor, celsius = max(readings, key=lambda r: r[1])
    return _measured(
        check,
        f"{sensor} at {celsius:.1f} °C",
        celsius,
        unit="C",
        warning=check.warning,
        critical=check.critical,
        show=lambda t: f"{t:g} °C",
        label="temperature",
        minimum=None,
    )


@check_type("process")
def check_process(check: ProcessCheck) -> CheckResult:
    """Number of processes named ``check.process`` and/or whose joined command line matches
    ``check.cmdline`` (both must hold when both are given); CRITICAL outside min..max."""
    pattern = re.compile(check.cmdline) if check.cmdline is not None else None
    me = os.getpid()
    count = 0
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.pid == me:
            continue
        if check.process is not None and proc.info["name"] != check.process:
            continue
        if pattern is not None and not pattern.search(" ".join(proc.info["cmdline"] or ())):
            continue
        count += 1
    wanted = [f"named {check.process!r}"] if check.process is not None else []
    wanted += [f"matching {check.cmdline!r}"] if check.cmdline is not None else []
    message = f"{count} process{'' if count == 1 else 'es'} {' and '.join(wanted)}"
    status = HealthStatus.OK
    if count < check.min:
        status, message = HealthStatus.CRITICAL, f"{message} (expected at least {check.min})"
    elif check.max is not None and count > check.max:
        status, message = HealthStatus.CRITICAL, f"{message} (expected at most {check.max})"
    expected = f"{check.min}:{'' if check.max is None else check.max}"
    perfdata = [perfdata_entry("procs", count, critical=expected, minimum=0)]
    return _result(check, status, message, count, None, perfdata)


def systemd_absent_reason(proc_root: Path = PROC_ROOT) -> str | None:
    """Return why systemd units cannot be asked about here, or None when they can."""
    try:
        pid1 = (proc_root / "1" / "comm").read_text(encoding="utf-8").strip()
    except OSError as exc:
        return f"cannot tell whether systemd runs: {exc.strerror or exc}"
    if pid1 != "systemd":
        return f"systemd is not running here (PID 1 is {pid1!r})"
    if shutil.which("systemctl") is None:
        return "systemctl is not installed"
    return None


@check_type("systemd_unit")
def check_systemd_unit(check: SystemdUnitCheck) -> CheckResult:
    """``systemctl is-active UNIT``: active -> OK, activating/reloading -> WARNING, any other
    state -> CRITICAL; UNKNOWN when systemd is absent or systemctl gives no state."""
    reason = systemd_absent_reason(PROC_ROOT)
    if reason is not None:
        return _result(check, HealthStatus.UNKNOWN, reason)
    result = run_command(["systemctl", "is-active", check.unit], timeout_s=check.timeout)
    asked = f"systemctl is-active {check.unit}"
    if result.error is not None:
        return _result(check, HealthStatus.UNKNOWN, f"{asked}: {result.error}")
    state = result.output.strip().splitlines()[0] if result.output.strip() else ""
    if not re.fullmatch(r"[a-z-]+", state):
        said = state or f"no output, exit status {result.status}"
        return _result(check, HealthStatus.UNKNOWN, f"{asked}: {said}")
    if state == "active":
        status = HealthStatus.OK
    elif state in SYSTEMD_WARNING_STATES:
        status = HealthStatus.WARNING
    else:
        status = HealthStatus.CRITICAL
    return _result(check, status, f"{check.unit} is {state}", state)


@check_type("tcp")
def check_tcp(check: TcpCheck) -> CheckResult:
    """Time to open a TCP connection, in ms; CRITICAL when refused or not answered in time."""
    where = _host_port(check.host, check.port)
    started = time.monotonic()
    try:
        with socket.create_connection((check.host, check.port), timeout=check.timeout):
            elapsed_ms = round((time.monotonic() - started) * 1000, 3)
    except OSError as exc:
        reason = _network_error(exc, check.timeout)
        return _result(check, HealthStatus.CRITICAL, f"{where}: {reason}")
    return _measured(
        check,
        f"{where} accepted a connection in {elapsed_ms:.1f} ms",
        elapsed_ms,
        unit="ms",
        warning=_ms(check.warning),
        critical=_ms(check.critical),
        show=_show_ms,
        label="time",
    )


@check_type("http")
def check_http(check: HttpCheck) -> CheckResult:
    """GET ``check.url`` without proxies or redirects; CRITICAL when the status is not expected,
    the body (first MiB) does not match ``body_pattern``, or TLS verification fails. Value: the
    response time in ms."""
    import http.client
    import ssl

    parts = urlsplit(check.url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=str(check.ca_file) if check.ca_file else None)
        if not check.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=check.timeout, context=context)
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=check.timeout)
    started = time.monotonic()
    try:
        connection.request("GET", target, headers={"User-Agent": "telemaint-health"})
        response = connection.getresponse()
        body = response.read(HTTP_BODY_MAX_BYTES)
    except ssl.SSLCertVerificationError as exc:
        reason = f"TLS certificate not trusted: {exc.verify_message}"
        return _result(check, HealthStatus.CRITICAL, f"{check.url}: {reason}")
    except OSError as exc:
        reason = _network_error(exc, check.timeout)
        return _result(check, HealthStatus.CRITICAL, f"{check.url}: {reason}")
    except http.client.HTTPException as exc:
        return _result(check, HealthStatus.CRITICAL, f"{check.url}: bad HTTP response: {exc!r}")
    finally:
        connection.close()
    elapsed_ms = round((time.monotonic() - started) * 1000, 3)
    time_perf = perfdata_entry("time", elapsed_ms, "ms", _ms(check.warning), _ms(check.critical), 0)
    said = f"HTTP {response.status} {response.reason}".rstrip()
    if response.status not in check.expect_status:
        expected = ", ".join(str(s) for s in check.expect_status)
        message = f"{said} from {check.url} (expected {expected})"
        return _result(check, HealthStatus.CRITICAL, message, elapsed_ms, "ms", [time_perf])
    if check.body_pattern is not None:
        text = body.decode(response.headers.get_content_charset() or "utf-8", errors="replace")
        if not re.search(check.body_pattern, text):
            message = f"{said} but the body does not match {check.body_pattern!r}"
            return _result(check, HealthStatus.CRITICAL, message, elapsed_ms, "ms", [time_perf])
    return _measured(
        check,
        f"{said} in {elapsed_ms:.1f} ms",
        elapsed_ms,
        unit="ms",
        warning=_ms(check.warning),
        critical=_ms(check.critical),
        show=_show_ms,
        label="time",
    )


def _age_text(age_s: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if age_s >= 2 * size:
            return f"{int(age_s // size)} {unit}s"
    return f"{int(age_s)} seconds"


@check_type("file_age")
def check_file_age(check: FileAgeCheck) -> CheckResult:
    """Age in seconds of the newest file matching the glob ``check.path``; the ``missing``
    status when none matches."""
    newest: tuple[float, str] | None = None
    for path in glob.iglob(check.path, recursive=True):
        try:
            if os.path.isfile(path):
                mtime = os.stat(path).st_mtime
                newest = max(newest, (mtime, path)) if newest else (mtime, path)
        except OSError:
            continue
    if newest is None:
        status = HealthStatus[check.missing.upper()]
        return _result(check, status, f"no file matches {check.path}")
    mtime, path = newest
    age_s = max(0.0, time.time() - mtime)
    return _measured(
        check,
        f"{os.path.basename(path)} is {_age_text(age_s)} old",
        round(age_s, 1),
        unit="s",
        warning=check.warning,
        critical=check.critical,
        show=format_duration,
        label="age",
    )


@check_type("ntp_synced")
def check_ntp_synced(check: NtpSyncedCheck) -> CheckResult:
    """Whether the kernel considers the clock synchronised; the value is its maximum error (s)."""
    try:
        sync = clock.clock_sync()
    except OSError as exc:
        return _result(check, HealthStatus.UNKNOWN, f"cannot ask the kernel about the clock: {exc}")
    perfdata = [perfdata_entry("max_error", sync.max_error_s, "s", minimum=0)]
    if sync.synchronized:
        status, text = HealthStatus.OK, "clock is synchronised"
    else:
        status, text = HealthStatus[check.unsynced.upper()], "clock is not synchronised"
    message = f"{text} (maximum error {sync.max_error_s:g} s)"
    return _result(check, status, message, sync.max_error_s, "s", perfdata)


# --- Nagios plugins -----------------------------------------------------------------------------

_PERF_ITEM_RE = re.compile(r"('(?:[^']|'')+'|[^\s'=]+)=(\S+)")
_PERF_VALUE_RE = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(.*)")
_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _number(text: str) -> int | float:
    return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)


def _perf_field(parts: list[str], index: int, ranges: bool) -> int | float | str | None:
    text = parts[index].strip() if index < len(parts) else ""
    if not text:
        return None
    if _NUMBER_RE.fullmatch(text):
        return _number(text)
    return text if ranges else None


def parse_perfdata(text: str) -> list[dict[str, Any]]:
    """Return the performance data in ``text`` (space-separated items
    ``'label'=value[UOM];[warn];[crit];[min];[max]``) as :func:`perfdata_entry` dicts. A value of
    ``U`` becomes None; warning and critical stay text when they are ranges (``10:20``,
    ``@10:20``); malformed items are skipped."""
    items = []
    for match in _PERF_ITEM_RE.finditer(text):
        label, data = match.groups()
        if label.startswith("'"):
            label = label[1:-1].replace("''", "'")
        parts = data.split(";")
        if parts[0] == "U":
            value: int | float | None = None
            unit = None
        else:
            value_match = _PERF_VALUE_RE.fullmatch(parts[0])
            if value_match is None:
                logger.debug("skipping malformed performance data %r", match.group(0))
                continue
            value, unit = _number(value_match.group(1)), value_match.group(2) or None
        warning, critical = _perf_field(parts, 1, ranges=True), _perf_field(parts, 2, ranges=True)
        minimum, maximum = _perf_field(parts, 3, ranges=False), _perf_field(parts, 4, ranges=False)
        items.append(perfdata_entry(label, value, unit, warning, critical, minimum, maximum))
    return items


def parse_plugin_output(output: str) -> tuple[str, list[dict[str, Any]]]:
    """Return (message, perfdata) from a plugin's output: the message is the first line up to
    ``|``; perfdata comes from after ``|`` on the first line and after the first ``|`` in the long
    output that follows (Nagios 3 multi-line format)."""
    first, _, long_output = output.partition("\n")
    message, _, first_perf = first.partition("|")
    _, _, more_perf = long_output.partition("|")
    return message.strip(), parse_perfdata(f"{first_perf} {more_perf}")


@check_type("command")
def check_command(check: CommandCheck) -> CheckResult:
    """Run a Nagios plugin: exit 0/1/2/3 give OK/WARNING/CRITICAL/UNKNOWN; anything else, a
    command that cannot start, or a timeout gives UNKNOWN. stderr is kept with stdout (as Icinga
    does), so a plugin that dies with an error on stderr still says why."""
    result = run_command(check.command, timeout_s=check.timeout, merge_stderr=True)
    if result.timed_out:
        return _result(check, HealthStatus.UNKNOWN, f"timed out after {check.timeout:g}s")
    if result.error is not None:
        return _result(check, HealthStatus.UNKNOWN, result.error)
    message, perfdata = parse_plugin_output(result.output)
    if result.truncated:
        logger.warning("check %s: output over the cap; its first line was lost", check.name)
    if result.status not in PLUGIN_STATUSES:
        said = f": {message}" if message else ""
        reason = f"exit status {result.status} is not a plugin status (0-3){said}"
        return _result(check, HealthStatus.UNKNOWN, reason, None, None, perfdata)
    if not message:
        message = f"{os.path.basename(check.command[0])} exited {result.status} without output"
    value, unit = (perfdata[0]["value"], perfdata[0]["unit"]) if perfdata else (None, None)
    return _result(check, HealthStatus(result.status), message, value, unit, perfdata)


# --- running checks ---------------------------------------------------------------------------


def run_check(check: CheckBase) -> CheckResult:
    """Run one check and return its result; never raises (an error becomes UNKNOWN)."""
    started = time.monotonic()
    function = CHECKS.get(getattr(check, "type", ""))
    try:
        if function is None:
            raise LookupError(f"no check of type {getattr(check, 'type', None)!r}")
        result = function(check)
    except Exception as exc:
        debug = logger.isEnabledFor(logging.DEBUG)
        logger.warning("check %s failed: %s", check.name, exc, exc_info=debug)
        result = _result(check, HealthStatus.UNKNOWN, f"{type(exc).__name__}: {exc}")
    result.duration_s = time.monotonic() - started
    logger.debug("check %s: %s %s", check.name, result.status.name, result.message)
    return result


def _overrun(check: CheckBase) -> CheckResult:
    limit_s = check.timeout + OVERRUN_GRACE_S
    logger.warning("check %s did not finish within %.1fs; not waiting for it", check.name, limit_s)
    message = f"did not finish within {format_duration(limit_s)} (timeout {format_duration(check.timeout)})"
    return _result(check, HealthStatus.UNKNOWN, message)


def run_checks(health: HealthConfig) -> list[CheckResult]:
    """Run the configured checks, ``health.parallel`` at a time; return results in config order.

    A check still running ``OVERRUN_GRACE_S`` after its own timeout is reported UNKNOWN and
    abandoned: it runs on in a daemon thread (so it cannot hold up the agent's exit), and its slot
    goes to the next check. A pool such as ThreadPoolExecutor could do neither: its workers are
    joined at interpreter exit, and a stuck worker never comes back to the pool.
    """
    checks = list(health.checks)
    results: list[CheckResult | None] = [None] * len(checks)
    finished: queue.SimpleQueue[tuple[int, CheckResult]] = queue.SimpleQueue()
    deadlines: dict[int, float] = {}
    next_index = 0
    while next_index < len(checks) or deadlines:
        while next_index < len(checks) and len(deadlines) < health.parallel:
            check = checks[next_index]
            deadlines[next_index] = time.monotonic() + check.timeout + OVERRUN_GRACE_S
            threading.Thread(
                target=lambda i, c: finished.put((i, run_check(c))),
                args=(next_index, check),
                name=f"health-{check.name}",
                daemon=True,
            ).start()
            next_index += 1
        try:
            wait_s = max(0.0, min(deadlines.values()) - time.monotonic())
            index, result = finished.get(timeout=wait_s)
        except queue.Empty:
            now = time.monotonic()
            for index, deadline in list(deadlines.items()):
                if now >= deadline:
                    del deadlines[index]
                    results[index] = _overrun(checks[index])
            continue
        if deadlines.pop(index, None) is not None:
            results[index] = result
    return [r for r in results if r is not None]
