"""The machine itself: host and OS, CPU, memory, disks, sensors and the busiest processes (psutil).

Disks are the mounted *real* filesystems, chosen by one rule (:func:`is_real_filesystem`): the
mount's device is a block device (a path under ``/dev/``) or a ZFS dataset, or it is an overlay
mounted at ``/`` (a container's or an overlay-root appliance's root). That leaves out pseudo
filesystems (proc, sysfs, tmpfs, devtmpfs, cgroup, ...), network filesystems (whose usage query can
hang on a dead server) and the overlays container engines mount for each container (views of a
disk already listed). Read-only squashfs images (snap packages, live media) are left out too: they
are always full and would trip every disk-usage check. A device mounted twice (bind mounts, btrfs
subvolumes) is listed once, at its first mount point.
"""

from __future__ import annotations

import logging
import platform
import socket
import time
from datetime import UTC, datetime
from typing import Any

import psutil

from agent.collectors import Collector, Field, register
from agent.runner import mask_command

logger = logging.getLogger(__name__)

CPU_SAMPLE_INTERVAL_S = 0.1
TOP_PROCESS_COUNT = 5
CMDLINE_MAX_CHARS = 200
SKIPPED_FSTYPES = frozenset({"squashfs"})
# A process younger than this is rated over this span, so a fresh start does not read as 1000 %.
MIN_PROCESS_AGE_S = 1.0
PROCESS_SCAN_ATTRS = ("pid", "name", "cpu_times", "create_time", "memory_info")

_PROCESS_FIELDS = (
    ("pid", "Process id", None),
    ("name", "Process name", None),
    ("user", "User the process runs as", None),
    ("cpu_percent", "CPU share over the process's lifetime, as ps shows it (100 = one core)", "%"),
    ("rss_bytes", "Resident memory", "B"),
    ("cmdline", f"Command line, secrets masked, at most {CMDLINE_MAX_CHARS} characters", None),
)


def utc_iso(timestamp: float) -> str:
    """Return the POSIX ``timestamp`` as a UTC ISO-8601 string ending in ``Z``."""
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def os_release() -> dict[str, str | None]:
    """Return ``{pretty_name, id, version}`` from os-release; ``version`` is VERSION_ID.

    Falls back to the kernel's name (``Linux``) when no os-release file exists.
    """
    try:
        info = platform.freedesktop_os_release()
    except OSError:
        return {"pretty_name": platform.system() or None, "id": None, "version": None}
    return {
        "pretty_name": info.get("PRETTY_NAME") or info.get("NAME"),
        "id": info.get("ID"),
        "version": info.get("VERSION_ID"),
    }


def is_real_filesystem(device: str, mountpoint: str, fstype: str) -> bool:
    """Return whether a mount holds a real filesystem worth reporting (rule in the module doc)."""
    if fstype in SKIPPED_FSTYPES:
        return False
    if fstype == "overlay":
        return mountpoint == "/"
    return device.startswith("/dev/") or fstype == "zfs"


def disks() -> list[dict[str, Any]]:
    """Return usage of each mounted real filesystem, one entry per device."""
    result = []
    seen_devices = set()
    for part in psutil.disk_partitions(all=True):
        if part.device in seen_devices or not is_real_filesystem(part.device, part.mountpoint, part.fstype):
            continue
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError as exc:
            logger.debug("no usage for %s: %s", part.mountpoint, exc)
            continue
        seen_devices.add(part.device)
        result.append(
            {
                "device": part.device,
                "mountpoint": part.mountpoint,
                "fstype": part.fstype,
                "total_bytes": usage.total,
                "used_bytes": usage.used,
                "free_bytes": usage.free,
                "percent": usage.percent,
            }
        )
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def sensors() -> dict[str, Any]:
    """Return ``{temperatures, fans, sensors_note}``; the note says what is missing or unreadable
    and is None when both kinds of sensor were found."""
    notes = []
    temperatures: list[dict[str, Any]] = []
    fans: list[dict[str, Any]] = []
    try:
        for sensor, readings in sorted(psutil.sensors_temperatures().items()):
            temperatures.extend(
                {
                    "sensor": sensor,
                    "label": reading.label or None,
                    "current_c": _round(reading.current),
                    "high_c": _round(reading.high),
                    "critical_c": _round(reading.critical),
                }
                for reading in readings
            )
    except Exception as exc:  # a sensor driver's odd sysfs must not fail the whole collector
        logger.warning("cannot read temperature sensors: %s", exc)
        notes.append(f"temperature sensors unreadable: {type(exc).__name__}: {exc}")
    else:
        if not temperatures:
            notes.append("no temperature sensors found")
    try:
        for sensor, readings in sorted(psutil.sensors_fans().items()):
            fans.extend(
                {"sensor": sensor, "label": reading.label or None, "rpm": reading.current} for reading in readings
            )
    except Exception as exc:
        logger.warning("cannot read fan sensors: %s", exc)
        notes.append(f"fan sensors unreadable: {type(exc).__name__}: {exc}")
    else:
        if not fans:
            notes.append("no fan sensors found")
    return {"temperatures": temperatures, "fans": fans, "sensors_note": "; ".join(notes) or None}


def top_processes(count: int = TOP_PROCESS_COUNT) -> dict[str, list[dict[str, Any]]]:
    """Return ``{by_cpu, by_memory}``: the ``count`` processes with the highest lifetime CPU share
    and with the largest resident memory.

    CPU share is as ps computes it, CPU time over time since start, so no second sample is taken.
    One process_iter pass reads the cheap attributes; user and command line are read only for the
    processes shown. A process that vanishes or is access-denied on the way is skipped.
    """
    now = time.time()
    scanned = []
    for proc in psutil.process_iter(PROCESS_SCAN_ATTRS):
        info = proc.info
        if info["cpu_times"] is None or info["memory_info"] is None or info["create_time"] is None:
            continue  # access denied, or a zombie
        elapsed_s = max(now - info["create_time"], MIN_PROCESS_AGE_S)
        cpu_percent = 100.0 * (info["cpu_times"].user + info["cpu_times"].system) / elapsed_s
        scanned.append((proc, round(cpu_percent, 1), info["memory_info"].rss))

    details: dict[int, dict[str, Any] | None] = {}

    def describe(proc: psutil.Process, cpu_percent: float, rss_bytes: int) -> dict[str, Any] | None:
        if proc.pid not in details:
            try:
                # Passwords and tokens given as arguments stay on the machine.
                cmdline = mask_command(proc.cmdline())[:CMDLINE_MAX_CHARS] or None
                details[proc.pid] = {
                    "pid": proc.pid,
                    "name": proc.info["name"],
                    "user": proc.username(),
                    "cpu_percent": cpu_percent,
                    "rss_bytes": rss_bytes,
                    "cmdline": cmdline,
                }
            except (psutil.NoSuchProcess, psutil.AccessDenied) as exc:
                logger.debug("process %s skipped: %s", proc.pid, exc)
                details[proc.pid] = None
        return details[proc.pid]

    def top(key_index: int) -> list[dict[str, Any]]:
        chosen = []
        for entry in sorted(scanned, key=lambda e: (-e[key_index], e[0].pid)):
            described = describe(*entry)
            if described is not None:
                chosen.append(described)
                if len(chosen) == count:
                    break
        return chosen

    return {"by_cpu": top(1), "by_memory": top(2)}


def _process_fields(prefix: str) -> tuple[Field, ...]:
    return tuple(Field(f"{prefix}[].{key}", text, unit) for key, text, unit in _PROCESS_FIELDS)


@register
class SystemCollector(Collector):
    name = "system"
    description = "Host, operating system, CPU, memory, disks, sensors and the busiest processes"
    fields = (
        Field("hostname", "Host name"),
        Field("os.pretty_name", "Operating system"),
        Field("os.id", "Operating system id (os-release ID)"),
        Field("os.version", "Operating system version (os-release VERSION_ID)"),
        Field("kernel.release", "Kernel release"),
        Field("kernel.machine", "Machine architecture"),
        Field("boot_time", "When the machine booted (UTC)"),
        Field("uptime_s", "Time since boot", "s"),
        Field("cpu.count_logical", "Logical CPUs"),
        Field("cpu.count_physical", "Physical cores (None when unknown)"),
        Field("cpu.usage_percent", f"CPU in use over {CPU_SAMPLE_INTERVAL_S} s", "%"),
        Field("cpu.load_1", "Load average over 1 minute"),
        Field("cpu.load_5", "Load average over 5 minutes"),
        Field("cpu.load_15", "Load average over 15 minutes"),
        Field("memory.total_bytes", "Memory installed", "B"),
        Field("memory.available_bytes", "Memory available to new programs", "B"),
        Field("memory.used_bytes", "Memory in use", "B"),
        Field("memory.percent", "Memory in use", "%"),
        Field("swap.total_bytes", "Swap space", "B"),
        Field("swap.used_bytes", "Swap in use", "B"),
        Field("swap.free_bytes", "Swap free", "B"),
        Field("swap.percent", "Swap in use", "%"),
        Field("disks[].device", "Device"),
        Field("disks[].mountpoint", "Mount point"),
        Field("disks[].fstype", "Filesystem type"),
        Field("disks[].total_bytes", "Size", "B"),
        Field("disks[].used_bytes", "Used space", "B"),
        Field("disks[].free_bytes", "Free space for ordinary users", "B"),
        Field("disks[].percent", "Space in use", "%"),
        Field("temperatures[].sensor", "Sensor chip"),
        Field("temperatures[].label", "Sensor label"),
        Field("temperatures[].current_c", "Temperature", "°C"),
        Field("temperatures[].high_c", "High threshold", "°C"),
        Field("temperatures[].critical_c", "Critical threshold", "°C"),
        Field("fans[].sensor", "Sensor chip"),
        Field("fans[].label", "Fan label"),
        Field("fans[].rpm", "Fan speed", "RPM"),
        Field("sensors_note", "Which sensors are missing or unreadable (None when all were read)"),
        *_process_fields("processes.by_cpu"),
        *_process_fields("processes.by_memory"),
    )

    def collect(self) -> dict[str, Any]:
        """Return the system facts; the keys are those declared in ``fields``."""
        boot_time = psutil.boot_time()
        memory = psutil.virtual_memory()
        swap = psutil.swap_memory()
        load_1, load_5, load_15 = psutil.getloadavg()
        return {
            "hostname": socket.gethostname(),
            "os": os_release(),
            "kernel": {"release": platform.release(), "machine": platform.machine()},
            "boot_time": utc_iso(boot_time),
            "uptime_s": int(time.time() - boot_time),
            "cpu": {
                "count_logical": psutil.cpu_count(),
                "count_physical": psutil.cpu_count(logical=False),
                "usage_percent": psutil.cpu_percent(interval=CPU_SAMPLE_INTERVAL_S),
                "load_1": round(load_1, 2),
                "load_5": round(load_5, 2),
                "load_15": round(load_15, 2),
            },
            "memory": {
                "total_bytes": memory.total,
                "available_bytes": memory.available,
                "used_bytes": memory.used,
                "percent": memory.percent,
            },
            "swap": {
                "total_bytes": swap.total,
                "used_bytes": swap.used,
                "free_bytes": swap.free,
                "percent": swap.percent,
            },
            "disks": disks(),
            **sensors(),
            "processes": top_processes(),
        }
