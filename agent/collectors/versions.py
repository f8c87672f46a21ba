"""Firmware and software versions: DMI (vendor, product, board, BIOS), the OS release, the kernel,
installed packages (count, digest and what changed since the last run) and configured vendor
components, whose version comes from a command's output or a file."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.collectors import Collector, Field, register
from agent.config import ComponentConfig
from agent.runner import NOT_FOUND_STATUS, run_command

logger = logging.getLogger(__name__)

DMI_DIR = "sys/class/dmi/id"
OS_RELEASE_FILES = ("etc/os-release", "usr/lib/os-release")
PACKAGES_STATE_FILE = "packages.json"
PACKAGE_LIST_TIMEOUT_S = 60.0
PACKAGE_LIST_CAP_BYTES = 32 * 1024 * 1024
COMPONENT_OUTPUT_CAP_BYTES = 64 * 1024
COMPONENT_FILE_MAX_BYTES = 64 * 1024
MAX_PARALLEL_COMPONENTS = 4

# One line per package: name, version, architecture (and dpkg's status abbreviation).
DPKG_QUERY_ARGV = (
    "dpkg-query",
    "-W",
    "-f",
    "${binary:Package}\\t${Version}\\t${Architecture}\\t${db:Status-Abbrev}\\n",
)
RPM_QUERY_ARGV = (
    "rpm",
    "-qa",
    "--qf",
    "%{NAME}\\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\t%{ARCH}\\n",
)

# DMI key -> file in /sys/class/dmi/id; nested keys are "board.vendor" etc.
DMI_FILES = {
    "vendor": "sys_vendor",
    "product": "product_name",
    "product_version": "product_version",
    "serial": "product_serial",
    "board.vendor": "board_vendor",
    "board.name": "board_name",
    "board.version": "board_version",
    "board.serial": "board_serial",
    "bios.vendor": "bios_vendor",
    "bios.version": "bios_version",
    "bios.date": "bios_date",
}


class PackageListError(Exception):
    """The package manager could not list what is installed."""


@dataclass(frozen=True)
class InstalledPackage:
    name: str
    version: str
    arch: str


def detect_package_manager() -> str | None:
    """Return "dpkg" or "rpm", whichever this machine has (dpkg first), or None."""
    if shutil.which("dpkg-query"):
        return "dpkg"
    if shutil.which("rpm"):
        return "rpm"
    return None


def list_installed_packages(manager: str) -> list[InstalledPackage]:
    """Return the packages ``manager`` ("dpkg" or "rpm") reports installed, sorted by name.

    A name installed for two architectures is qualified as ``name:arch``.
    Raises PackageListError when the query fails or its output was cut.
    """
    argv = {"dpkg": DPKG_QUERY_ARGV, "rpm": RPM_QUERY_ARGV}[manager]
    result = run_command(
        argv,
        timeout_s=PACKAGE_LIST_TIMEOUT_S,
        output_cap_bytes=PACKAGE_LIST_CAP_BYTES,
        merge_stderr=False,
    )
    if not result.ok:
        raise PackageListError(f"{argv[0]}: {result.error or f'exit status {result.status}'}")
    if result.truncated:
        raise PackageListError(f"{argv[0]}: output longer than {PACKAGE_LIST_CAP_BYTES} bytes")
    packages = []
    for line in result.output.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0]:
            continue
        # dpkg's status abbreviation: desired state, current state ("i" = installed), error flag.
        if manager == "dpkg" and (len(parts) < 4 or parts[3][1:2] != "i"):
            continue
        packages.append(InstalledPackage(parts[0], parts[1], parts[2]))
    name_counts = Counter(p.name for p in packages)
    packages = [
        InstalledPackage(f"{p.name}:{p.arch}", p.version, p.arch) if name_counts[p.name] > 1 else p for p in packages
    ]
    return sorted(packages, key=lambda p: (p.name, p.version))


def package_digest(packages: list[tuple[str, str]]) -> str:
    """Return the sha256 hex digest over the sorted ``name=version`` lines of ``packages``."""
    lines = sorted(f"{name}={version}\n" for name, version in packages)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def package_changes(old: list[tuple[str, str]], new: list[tuple[str, str]]) -> dict[str, list]:
    """Return ``{added: [{name, version}], removed: [{name, version}], upgraded: [{name, from,
    to}]}`` between two ``(name, version)`` lists; a version change of a package is "upgraded"."""
    old_versions: dict[str, set[str]] = {}
    new_versions: dict[str, set[str]] = {}
    for name, version in old:
        old_versions.setdefault(name, set()).add(version)
    for name, version in new:
        new_versions.setdefault(name, set()).add(version)
    added, removed, upgraded = [], [], []
    for name in sorted(old_versions.keys() | new_versions.keys()):
        before = old_versions.get(name, set())
        after = new_versions.get(name, set())
        if before == after:
            continue
        if len(before) == 1 and len(after) == 1:
            upgraded.append({"name": name, "from": next(iter(before)), "to": next(iter(after))})
            continue
        removed += [{"name": name, "version": v} for v in sorted(before - after)]
        added += [{"name": name, "version": v} for v in sorted(after - before)]
    return {"added": added, "removed": removed, "upgraded": upgraded}


def _utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json_atomically(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@register
class VersionsCollector(Collector):
    name = "versions"
    description = "Firmware (DMI/BIOS), OS, kernel, installed packages and vendor components"
    fields = (
        Field("dmi.vendor", "System manufacturer (DMI sys_vendor)"),
        Field("dmi.product", "Product name (DMI product_name)"),
        Field("dmi.product_version", "Product version"),
        Field("dmi.serial", "System serial number (readable by root only)"),
        Field("dmi.board.vendor", "Mainboard manufacturer"),
        Field("dmi.board.name", "Mainboard model"),
        Field("dmi.board.version", "Mainboard revision"),
        Field("dmi.board.serial", "Mainboard serial number (readable by root only)"),
        Field("dmi.bios.vendor", "BIOS/UEFI firmware vendor"),
        Field("dmi.bios.version", "BIOS/UEFI firmware version"),
        Field("dmi.bios.date", "BIOS/UEFI firmware date (as the firmware gives it)"),
        Field("dmi_unreadable", "DMI files present but not readable by the agent"),
        Field("os.name", "Operating system name"),
        Field("os.id", "Operating system id (debian, ubuntu, rhel, ...)"),
        Field("os.version_id", "Operating system version"),
        Field("os.pretty_name", "Operating system name and version"),
        Field("kernel.release", "Kernel release"),
        Field("kernel.version", "Kernel build version"),
        Field("kernel.machine", "Machine architecture"),
        Field("packages.manager", "Package manager queried (dpkg or rpm)"),
        Field("packages.count", "Installed packages"),
        Field("packages.digest", "sha256 of the sorted name=version list"),
        Field("packages.changes.since", "Changes since the list recorded then (UTC)"),
        Field("packages.changes.added[].name", "Package installed since then"),
        Field("packages.changes.removed[].name", "Package removed since then"),
        Field("packages.changes.upgraded[].name", "Package whose version changed since then"),
        Field("components[].name", "Component"),
        Field("components[].version", "Version"),
        Field("components[].source", "Source (command or file)"),
        Field("components[].error", "Why no version was found"),
        Field("notes", "What could not be collected, and why"),
    )

    root: Path = Path("/")

    def collect(self) -> dict[str, Any]:
        """Return ``{dmi, dmi_unreadable, os, kernel, packages, components, notes}``."""
        notes: list[str] = []
        dmi, unreadable = self.dmi(notes)
        settings = self.config.collect.versions
        return {
            "dmi": dmi,
            "dmi_unreadable": unreadable,
            "os": self.os_release(notes),
            "kernel": kernel(),
            "packages": self.packages(notes) if settings.packages else None,
            "components": component_versions(settings.components),
            "notes": notes,
        }

    def dmi(self, notes: list[str]) -> tuple[dict[str, Any] | None, list[str]]:
        """Return the DMI facts (None when the machine has no DMI tables) and the names of DMI
        files that exist but could not be read."""
        directory = self.root / DMI_DIR
        if not directory.is_dir():
            notes.append(f"no DMI data: {directory} does not exist")
            return None, []
        dmi: dict[str, Any] = {"board": {}, "bios": {}}
        unreadable = []
        for key, filename in DMI_FILES.items():
            value = None
            try:
                text = (directory / filename).read_text(encoding="utf-8", errors="replace")
                value = text.strip() or None
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.debug("cannot read DMI %s: %s", filename, exc)
                unreadable.append(filename)
            group, _, leaf = key.rpartition(".")
            (dmi[group] if group else dmi)[leaf] = value
        return dmi, unreadable

    def os_release(self, notes: list[str]) -> dict[str, str | None] | None:
        """Return ``{name, id, version_id, pretty_name}`` from os-release, or None when absent."""
        for relative in OS_RELEASE_FILES:
            try:
                text = (self.root / relative).read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            values = parse_os_release(text)
            keys = ("name", "id", "version_id", "pretty_name")
            return {key: values.get(key.upper()) for key in keys}
        notes.append("no /etc/os-release or /usr/lib/os-release")
        return None

    def packages(self, notes: list[str]) -> dict[str, Any] | None:
        """Return ``{manager, count, digest, changes}``, remembering the list in the state dir."""
        manager = detect_package_manager()
        if manager is None:
            notes.append("no package manager found (neither dpkg-query nor rpm)")
            return None
        try:
            installed = list_installed_packages(manager)
        except PackageListError as exc:
            notes.append(f"cannot list packages: {exc}")
            return None
        current = [(p.name, p.version) for p in installed]
        digest = package_digest(current)
        return {
            "manager": manager,
            "count": len(current),
            "digest": digest,
            "changes": self._track_changes(manager, current, digest, notes),
        }

    def _track_changes(
        self, manager: str, current: list[tuple[str, str]], digest: str, notes: list[str]
    ) -> dict[str, Any] | None:
        """Return the changes since the stored list (None on the first run); store ``current``
        when its digest differs from the stored one."""
        state_file = self.context.state_file(PACKAGES_STATE_FILE)
        previous = _read_package_state(state_file, manager, notes)
        changes = None
        if previous is not None:
            changes = {
                "since": previous["recorded_at"],
                **package_changes(previous["packages"], current),
            }
            if previous["digest"] == digest:
                return changes
        state = {
            "manager": manager,
            "recorded_at": _utc_now_iso(),
            "digest": digest,
            "packages": [list(p) for p in current],
        }
        try:
            _write_json_atomically(state_file, state)
        except OSError as exc:
            reason = f"cannot write {state_file}: {exc.strerror or exc}"
            notes.append(f"package changes not tracked: {reason}")
        return changes


def _read_package_state(path: Path, manager: str, notes: list[str]) -> dict[str, Any] | None:
    """Return the stored ``{recorded_at, digest, packages: [(name, version)]}`` for ``manager``,
    or None when there is none (or it cannot be used, which ``notes`` and a warning then say: a
    broken file counts as no previous list, and the caller writes a good one)."""
    try:
        stored = json.loads(path.read_bytes())
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
        if stored.get("manager") != manager:
            return None
        packages = stored["packages"]
        if not isinstance(packages, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, str) for v in p) for p in packages
        ):
            raise ValueError("packages is not a list of [name, version] pairs")
        if not isinstance(stored["recorded_at"], str) or not isinstance(stored["digest"], str):
            raise ValueError("recorded_at and digest must be strings")
        return {
            "recorded_at": stored["recorded_at"],
            "digest": stored["digest"],
            "packages": [(name, version) for name, version in packages],
        }
    except FileNotFoundError:
        return None
    except OSError as exc:
        notes.append(f"package changes not tracked: cannot read {path}: {exc.strerror or exc}")
    except (ValueError, KeyError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        logger.warning("stored package list %s is broken (%s); starting a new one", path, what)
        notes.append(f"stored package list {path} is unusable ({what}); started a new one")
    return None


def parse_os_release(text: str) -> dict[str, str]:
    """Return the KEY=value pairs of an os-release file, unquoted."""
    values = {}
    for line in text.splitlines():
        key, sep, raw = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        try:
            words = shlex.split(raw)
        except ValueError:
            words = [raw.strip("\"'")]
        values[key] = " ".join(words)
    return values


def kernel() -> dict[str, str]:
    """Return ``{release, version, machine}`` of the running kernel."""
    uname = os.uname()
    return {"release": uname.release, "version": uname.version, "machine": uname.machine}


def component_versions(components: list[ComponentConfig]) -> list[dict[str, Any]]:
    """Return ``{name, version, source, error}`` for each component, in the order configured."""
    if len(components) <= 1:
        return [component_version(c) for c in components]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_COMPONENTS, len(components))) as pool:
        return list(pool.map(component_version, components))


def component_version(component: ComponentConfig) -> dict[str, Any]:
    """Return ``{name, version, source, error}``: the version found, or None and a one-line
    reason ("command not found", "timed out after 5s", "exit status 3", "no match for regex",
    "cannot read: Permission denied")."""
    source = "command" if component.command is not None else "file"
    entry: dict[str, Any] = {
        "name": component.name,
        "version": None,
        "source": source,
        "error": None,
    }
    text = ""
    if component.command is not None:
        result = run_command(
            component.command,
            timeout_s=component.timeout,
            output_cap_bytes=COMPONENT_OUTPUT_CAP_BYTES,
        )
        if result.status == NOT_FOUND_STATUS and result.error:
            entry["error"] = "command not found"
        elif result.timed_out or result.error:
            entry["error"] = result.error
        elif not result.ok:
            entry["error"] = f"exit status {result.status}"
        text = result.output
    else:
        assert component.file is not None
        try:
            with component.file.open("rb") as file:
                text = file.read(COMPONENT_FILE_MAX_BYTES).decode("utf-8", errors="replace")
        except OSError as exc:
            entry["error"] = f"cannot read: {exc.strerror or exc}"
    if entry["error"] is None:
        entry["version"] = extract_version(component.regex, text)
        if entry["version"] is None:
            entry["error"] = "no match for regex"
    return entry


def extract_version(pattern: str, text: str) -> str | None:
    """Return the first match of ``pattern`` in ``text``: its group ``version`` if it has one,
    else group 1, else the whole match; None when nothing (or an empty string) matches."""
    regex = re.compile(pattern, re.MULTILINE)
    match = regex.search(text)
    if match is None:
        return None
    if "version" in regex.groupindex:
        value = match.group("version")
    elif regex.groups >= 1:
        value = match.group(1)
    else:
        value = match.group(0)
    if value is None:
        return None
    return value.strip() or None
