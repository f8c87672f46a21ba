"""The system collector: ranking and filtering logic on fakes, and facts checked on this machine."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from agent.collectors import CollectContext, get_collector, run_collector
from agent.collectors import system as system_module
from agent.collectors.system import SystemCollector
from agent.config import AgentConfig


@pytest.fixture
def context(tmp_path: Path) -> CollectContext:
    return CollectContext(AgentConfig(), tmp_path)


def leaf_paths(data: Any, prefix: str = "") -> set[str]:
    """Return the Field-style paths (``a.b``, ``a[].b``) of every scalar in ``data``."""
    if isinstance(data, dict):
        paths: set[str] = set()
        for key, value in data.items():
            paths |= leaf_paths(value, f"{prefix}.{key}" if prefix else key)
        return paths
    if isinstance(data, list):
        return set().union(*(leaf_paths(item, f"{prefix}[]") for item in data))
    return {prefix}


def fake_sensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        psutil,
        "sensors_temperatures",
        lambda: {
            "coretemp": [
                SimpleNamespace(label="Package id 0", current=47.0, high=80.0, critical=100.0),
                SimpleNamespace(label="", current=45.25, high=None, critical=None),
            ]
        },
    )
    monkeypatch.setattr(psutil, "sensors_fans", lambda: {"thinkpad": [SimpleNamespace(label="", current=2900)]})


def meminfo_total_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def test_collects_facts_of_this_machine(context, monkeypatch):
    sampled_intervals = []
    real_cpu_percent = psutil.cpu_percent

    def spy_cpu_percent(interval=None, percpu=False):
        sampled_intervals.append(interval)
        return real_cpu_percent(interval=interval, percpu=percpu)

    monkeypatch.setattr(psutil, "cpu_percent", spy_cpu_percent)

    data = SystemCollector(context).collect()

    json.dumps(data, allow_nan=False)
    assert data["hostname"] == socket.gethostname()
    assert data["kernel"] == {"release": os.uname().release, "machine": os.uname().machine}
    assert data["memory"]["total_bytes"] == meminfo_total_bytes()
    assert 0 <= data["memory"]["percent"] <= 100
    assert data["cpu"]["count_logical"] == os.cpu_count()
    assert 0 <= data["cpu"]["usage_percent"] <= 100
    assert data["cpu"]["load_1"] == pytest.approx(os.getloadavg()[0], abs=1.0)
    assert sampled_intervals and all(0 < i <= 0.1 for i in sampled_intervals)

    assert data["boot_time"].endswith("Z")
    booted = datetime.fromisoformat(data["boot_time"].replace("Z", "+00:00")).timestamp()
    uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    assert booted == pytest.approx(time.time() - uptime_s, abs=5)
    assert data["uptime_s"] == pytest.approx(uptime_s, abs=5)

    root = next(d for d in data["disks"] if d["mountpoint"] == "/")
    statvfs = os.statvfs("/")
    assert root["total_bytes"] == statvfs.f_blocks * statvfs.f_frsize
    assert len({d["device"] for d in data["disks"]}) == len(data["disks"])
    assert not any(d["fstype"] in {"proc", "sysfs", "tmpfs", "devtmpfs"} for d in data["disks"])


def proc_rss_bytes() -> dict[int, int]:
    """Return each process's resident memory as /proc/PID/statm says."""
    page_bytes = os.sysconf("SC_PAGE_SIZE")
    rss = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                rss[int(entry.name)] = int((entry / "statm").read_text().split()[1]) * page_bytes
            except (OSError, IndexError):
                continue
    return rss


def test_top_processes_on_this_machine_are_ranked_and_capped(context):
    processes = SystemCollector(context).collect()["processes"]
    rss = proc_rss_bytes()

    for ranking, key in (("by_cpu", "cpu_percent"), ("by_memory", "rss_bytes")):
        entries = processes[ranking]
        assert len(entries) == min(5, len(rss)) or len(rss) < 10  # processes come and go
        values = [e[key] for e in entries]
        assert values == sorted(values, reverse=True)
        for entry in entries:
            assert entry["cmdline"] is None or 0 < len(entry["cmdline"]) <= 200
    largest = processes["by_memory"][0]
    assert largest["rss_bytes"] == pytest.approx(max(rss.values()), rel=0.25)
    assert largest["rss_bytes"] == pytest.approx(rss[largest["pid"]], rel=0.25)


def test_every_value_is_a_declared_field(context, monkeypatch):
    fake_sensors(monkeypatch)

    data = SystemCollector(context).collect()

    declared = {f.path for f in SystemCollector.fields}
    assert leaf_paths(data) <= declared
    assert {path.split(".")[0].split("[")[0] for path in declared} == set(data)


def test_registered_under_its_name_and_runs_ok(context):
    assert get_collector("system") is SystemCollector
    result = run_collector("system", context)
    assert result.status == "ok", result.message


def test_sensor_readings_are_reported_in_celsius_and_rpm(monkeypatch):
    fake_sensors(monkeypatch)

    sensors = system_module.sensors()

    assert sensors["temperatures"] == [
        {
            "sensor": "coretemp",
            "label": "Package id 0",
            "current_c": 47.0,
            "high_c": 80.0,
            "critical_c": 100.0,
        },
        {
            "sensor": "coretemp",
            "label": None,
            "current_c": 45.2,
            "high_c": None,
            "critical_c": None,
        },
    ]
    assert sensors["fans"] == [{"sensor": "thinkpad", "label": None, "rpm": 2900}]
    assert sensors["sensors_note"] is None


def test_no_sensors_is_said_in_the_data(context, monkeypatch):
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {})
    monkeypatch.setattr(psutil, "sensors_fans", lambda: {})

    data = SystemCollector(context).collect()

    assert data["temperatures"] == []
    assert data["fans"] == []
    assert "no temperature sensors found" in data["sensors_note"]


def test_failing_sensor_driver_does_not_fail_the_collector(context, monkeypatch):
    def broken():
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(psutil, "sensors_temperatures", broken)
    monkeypatch.setattr(psutil, "sensors_fans", lambda: {"f": [SimpleNamespace(label="cpu", current=1200)]})

    result = run_collector("system", context)

    assert result.status == "ok"
    assert result.data["temperatures"] == []
    assert "temperature sensors unreadable" in result.data["sensors_note"]
    assert "Input/output error" in result.data["sensors_note"]
    assert result.data["fans"] == [{"sensor": "f", "label": "cpu", "rpm": 1200}]


class FakeProcess:
    def __init__(self, pid, cpu_s, age_s, rss, vanish=False, denied=False, info_denied=False, argv=None):
        self.pid = pid
        self.argv = argv
        self.vanish = vanish
        self.denied = denied
        self.info = {
            "pid": pid,
            "name": f"proc{pid}",
            "cpu_times": None if info_denied else SimpleNamespace(user=cpu_s, system=0.0),
            "create_time": time.time() - age_s,
            "memory_info": None if info_denied else SimpleNamespace(rss=rss),
        }

    def cmdline(self):
        if self.vanish:
            raise psutil.NoSuchProcess(self.pid)
        return self.argv or [f"/usr/bin/proc{self.pid}", "--flag", "x" * 300]

    def username(self):
        if self.denied:
            raise psutil.AccessDenied(self.pid)
        return "svc"


def test_ranks_by_lifetime_cpu_share_and_rss_skipping_vanished_processes(monkeypatch):
    processes = [
        FakeProcess(10, cpu_s=50, age_s=100, rss=100),  # 50 %
        FakeProcess(11, cpu_s=90, age_s=100, rss=900, vanish=True),  # top of both, then gone
        FakeProcess(12, cpu_s=30, age_s=100, rss=800, denied=True),  # username denied
        FakeProcess(13, cpu_s=99, age_s=100, rss=999, info_denied=True),  # stat unreadable
        FakeProcess(14, cpu_s=20, age_s=100, rss=700),
        FakeProcess(15, cpu_s=10, age_s=100, rss=600),
        FakeProcess(16, cpu_s=5, age_s=100, rss=500),
        FakeProcess(17, cpu_s=1, age_s=100, rss=400),
        FakeProcess(18, cpu_s=0, age_s=100, rss=50),
    ]
    monkeypatch.setattr(psutil, "process_iter", lambda attrs=None: iter(processes))

    top = system_module.top_processes()

    assert [p["pid"] for p in top["by_cpu"]] == [10, 14, 15, 16, 17]
    assert [p["pid"] for p in top["by_memory"]] == [14, 15, 16, 17, 10]
    first = top["by_cpu"][0]
    assert first["cpu_percent"] == pytest.approx(50.0, abs=0.2)
    assert first["rss_bytes"] == 100
    assert first["name"] == "proc10"
    assert first["user"] == "svc"
    assert first["cmdline"].startswith("/usr/bin/proc10 --flag xxx")
    assert len(first["cmdline"]) == 200


def test_secrets_on_command_lines_stay_on_the_machine(monkeypatch):
    argv = ["mysqldump", "--password", "hunter2", "--user=backup", "api_token=abc123", "db"]
    processes = [FakeProcess(20, cpu_s=5, age_s=10, rss=10, argv=argv)]
    monkeypatch.setattr(psutil, "process_iter", lambda attrs=None: iter(processes))
    cmdline = system_module.top_processes()["by_cpu"][0]["cmdline"]
    assert cmdline == "mysqldump --password *** --user=backup api_token=*** db"
    assert "hunter2" not in cmdline and "abc123" not in cmdline


def test_disks_are_real_filesystems_once_per_device(monkeypatch):
    def part(device, mountpoint, fstype):
        return SimpleNamespace(device=device, mountpoint=mountpoint, fstype=fstype, opts="rw")

    partitions = [
        part("/dev/sda1", "/", "ext4"),
        part("proc", "/proc", "proc"),
        part("sysfs", "/sys", "sysfs"),
        part("tmpfs", "/run", "tmpfs"),
        part("/dev/sda2", "/home", "xfs"),
        part("/dev/sda2", "/srv/bind", "xfs"),
        part("overlay", "/var/lib/docker/overlay2/abc/merged", "overlay"),
        part("/dev/loop3", "/snap/core22/1380", "squashfs"),
        part("nas:/export", "/mnt/nas", "nfs4"),
        part("tank/data", "/data", "zfs"),
        part("/dev/sdb1", "/media/locked", "vfat"),
    ]
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: partitions)

    def usage(mountpoint):
        if mountpoint == "/media/locked":
            raise PermissionError(13, "Permission denied")
        return SimpleNamespace(total=1000, used=250, free=700, percent=26.3)

    monkeypatch.setattr(psutil, "disk_usage", usage)

    disks = system_module.disks()

    assert [(d["device"], d["mountpoint"]) for d in disks] == [
        ("/dev/sda1", "/"),
        ("/dev/sda2", "/home"),
        ("tank/data", "/data"),
    ]
    assert disks[0] == {
        "device": "/dev/sda1",
        "mountpoint": "/",
        "fstype": "ext4",
        "total_bytes": 1000,
        "used_bytes": 250,
        "free_bytes": 700,
        "percent": 26.3,
    }


def test_overlay_root_of_a_container_counts_as_a_disk():
    assert system_module.is_real_filesystem("overlay", "/", "overlay")
    assert not system_module.is_real_filesystem("overlay", "/var/lib/docker/x/merged", "overlay")


def test_os_release_is_read_and_falls_back_when_missing(monkeypatch):
    monkeypatch.setattr(
        platform,
        "freedesktop_os_release",
        lambda: {"NAME": "Debian GNU/Linux", "PRETTY_NAME": "Debian 12", "ID": "debian"},
    )
    assert system_module.os_release() == {
        "pretty_name": "Debian 12",
        "id": "debian",
        "version": None,
    }

    def missing():
        raise OSError("no os-release")

    monkeypatch.setattr(platform, "freedesktop_os_release", missing)
    assert system_module.os_release() == {
        "pretty_name": platform.system(),
        "id": None,
        "version": None,
    }


def test_times_are_utc_iso_with_z():
    assert system_module.utc_iso(0) == "1970-01-01T00:00:00Z"
    assert system_module.utc_iso(1_700_000_000.9) == "2023-11-14T22:13:20Z"
