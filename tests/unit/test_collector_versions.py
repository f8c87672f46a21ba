import hashlib
import json
import os
import pathlib
import shutil
import subprocess

import pytest

from agent.collectors import CollectContext, run_collector, versions
from agent.collectors.versions import (
    InstalledPackage,
    VersionsCollector,
    component_version,
    list_installed_packages,
)
from agent.config import AgentConfig, ComponentConfig


def make_collector(tmp_path, packages=False, components=(), state_dir=None) -> VersionsCollector:
    config = AgentConfig.model_validate(
        {"collect": {"versions": {"packages": packages, "components": list(components)}}}
    )
    collector = VersionsCollector(CollectContext(config, state_dir or tmp_path / "state"))
    collector.root = tmp_path / "root"
    return collector


def write(path, text, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path


# --- DMI, OS and kernel ------------------------------------------------------------------------


def test_dmi_from_a_fake_sysfs_tree_names_unreadable_files(tmp_path, monkeypatch):
    dmi = tmp_path / "root/sys/class/dmi/id"
    for name, value in {
        "sys_vendor": "Acme Industrial\n",
        "product_name": "TB-3000\n",
        "product_version": "rev C\n",
        "product_serial": "SECRET-SERIAL\n",
        "board_vendor": "Acme\n",
        "board_name": "MB-12\n",
        "board_version": "\n",
        "bios_vendor": "American Megatrends Inc.\n",
        "bios_version": "F.42\n",
        "bios_date": "03/14/2024\n",
    }.items():
        write(dmi / name, value)
    # The real kernel makes *_serial readable by root only. Tests run as root, where chmod 000
    # does not stop a read, so the refusal is simulated: product_serial raises PermissionError
    # as it would for the agent's own user, and board_serial is a directory (EISDIR).
    (dmi / "board_serial").mkdir()
    real_read_text = pathlib.Path.read_text

    def refuse_serial(self, *args, **kwargs):
        if self.name == "product_serial":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", refuse_serial)

    data = make_collector(tmp_path).collect()

    assert data["dmi"] == {
        "vendor": "Acme Industrial",
        "product": "TB-3000",
        "product_version": "rev C",
        "serial": None,
        "board": {"vendor": "Acme", "name": "MB-12", "version": None, "serial": None},
        "bios": {"vendor": "American Megatrends Inc.", "version": "F.42", "date": "03/14/2024"},
    }
    assert sorted(data["dmi_unreadable"]) == ["board_serial", "product_serial"]
    json.dumps(data)


def test_absent_dmi_file_is_none_but_not_unreadable(tmp_path):
    write(tmp_path / "root/sys/class/dmi/id/sys_vendor", "Acme\n")
    data = make_collector(tmp_path).collect()
    assert data["dmi"]["vendor"] == "Acme"
    assert data["dmi"]["bios"]["version"] is None
    assert data["dmi_unreadable"] == []


def test_machine_without_dmi_says_so(tmp_path):
    data = make_collector(tmp_path).collect()
    assert data["dmi"] is None
    assert data["dmi_unreadable"] == []
    assert any(note.startswith("no DMI data:") for note in data["notes"])


def test_os_release_is_unquoted_and_kernel_comes_from_uname(tmp_path):
    write(
        tmp_path / "root/etc/os-release",
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
        'VERSION_ID="12"\nID=debian\n# comment\n',
    )
    data = make_collector(tmp_path).collect()
    assert data["os"] == {
        "name": "Debian GNU/Linux",
        "id": "debian",
        "version_id": "12",
        "pretty_name": "Debian GNU/Linux 12 (bookworm)",
    }
    uname = os.uname()
    assert data["kernel"] == {
        "release": uname.release,
        "version": uname.version,
        "machine": uname.machine,
    }


def test_missing_os_release_is_a_note(tmp_path):
    data = make_collector(tmp_path).collect()
    assert data["os"] is None
    assert "no /etc/os-release or /usr/lib/os-release" in data["notes"]


# --- components --------------------------------------------------------------------------------


def script(tmp_path, name, body):
    return write(tmp_path / name, "#!/bin/sh\n" + body, mode=0o755)


def component(**kwargs) -> ComponentConfig:
    return ComponentConfig.model_validate(kwargs)


def test_component_version_from_a_command_with_named_group(tmp_path):
    camctl = script(tmp_path, "camctl", 'echo "CamCtl 1.0 tools"\necho "firmware build 2.4.1-rc3"\n')
    entry = component_version(
        component(name="camera", command=[str(camctl), "--version"], regex=r"build (?P<version>\S+)")
    )
    assert entry == {"name": "camera", "version": "2.4.1-rc3", "source": "command", "error": None}


def test_component_regex_group_one_then_whole_match(tmp_path):
    tool = script(tmp_path, "plcctl", 'echo "PLC runtime v7.3 (build 19)" >&2\n')
    by_group = component_version(component(name="plc", command=[str(tool)], regex=r"v(\d+\.\d+)"))
    whole = component_version(component(name="plc", command=[str(tool)], regex=r"\d+\.\d+"))
    default = component_version(component(name="plc", command=[str(tool)]))
    assert by_group["version"] == "7.3"  # stderr counts: many tools print versions there
    assert whole["version"] == "7.3"
    assert default["version"] == "7.3"


def test_component_command_that_hangs_is_killed_at_its_timeout(tmp_path):
    slow = script(tmp_path, "slow", "sleep 30\necho 1.2.3\n")
    entry = component_version(component(name="slow", command=[str(slow)], timeout=0.5))
    assert entry["version"] is None
    assert entry["error"] == "timed out after 0.5s"


def test_component_command_missing_or_failing(tmp_path):
    failing = script(tmp_path, "failing", "echo version 1.2.3\nexit 3\n")
    missing = component_version(component(name="m", command=[str(tmp_path / "no-such-tool")]))
    failed = component_version(component(name="f", command=[str(failing)]))
    assert (missing["version"], missing["error"]) == (None, "command not found")
    assert (failed["version"], failed["error"]) == (None, "exit status 3")


def test_component_regex_that_does_not_match(tmp_path):
    tool = script(tmp_path, "tool", "echo no digits here\n")
    entry = component_version(component(name="t", command=[str(tool)]))
    assert entry == {"name": "t", "version": None, "source": "command", "error": "no match for regex"}


def test_component_version_from_a_file(tmp_path):
    version_file = write(tmp_path / "VERSION", "product=TB-3000\nfirmware=5.1.0+build7\n")
    entry = component_version(component(name="fw", file=str(version_file), regex=r"^firmware=(?P<version>.+)$"))
    assert entry == {"name": "fw", "version": "5.1.0+build7", "source": "file", "error": None}


def test_component_file_reads_at_most_64_kib(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024) + b" 9.9.9\n")
    entry = component_version(component(name="big", file=str(big)))
    assert entry["error"] == "no match for regex"


def test_component_file_unreadable_or_missing(tmp_path):
    # Tests run as root, so a directory stands in for an unreadable file.
    (tmp_path / "adir").mkdir()
    unreadable = component_version(component(name="d", file=str(tmp_path / "adir")))
    missing = component_version(component(name="m", file=str(tmp_path / "nope")))
    assert unreadable["error"] == "cannot read: Is a directory"
    assert missing["error"] == "cannot read: No such file or directory"


def test_collector_reports_components_in_configured_order(tmp_path):
    tool = script(tmp_path, "tool", "echo 3.2.1\n")
    components = [
        {"name": "a", "command": [str(tool)]},
        {"name": "b", "command": [str(tmp_path / "absent")]},
        {"name": "c", "file": str(write(tmp_path / "v", "4.5\n"))},
    ]
    result = run_collector("versions", make_collector(tmp_path, components=components).context)
    assert result.status == "ok"
    assert [(c["name"], c["version"], c["error"]) for c in result.data["components"]] == [
        ("a", "3.2.1", None),
        ("b", None, "command not found"),
        ("c", "4.5", None),
    ]


# --- packages ----------------------------------------------------------------------------------

FIRST = [
    InstalledPackage("base-files", "12.4", "amd64"),
    InstalledPackage("camctl", "2.4.0", "amd64"),
    InstalledPackage("openssl", "3.0.11-1", "amd64"),
]
SECOND = [
    InstalledPackage("base-files", "12.4", "amd64"),
    InstalledPackage("camctl", "2.5.0", "amd64"),
    InstalledPackage("plc-runtime", "7.3", "amd64"),
]


@pytest.fixture
def package_lists(monkeypatch):
    """Let the test choose what the package manager reports."""
    installed = {"list": FIRST}
    monkeypatch.setattr(versions, "detect_package_manager", lambda: "dpkg")
    monkeypatch.setattr(versions, "list_installed_packages", lambda manager: installed["list"])
    return installed


def expected_digest(packages):
    lines = sorted(f"{p.name}={p.version}\n" for p in packages)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def test_package_changes_are_tracked_between_runs(tmp_path, package_lists):
    collector = make_collector(tmp_path, packages=True)
    state_file = tmp_path / "state" / "packages.json"

    first = collector.collect()["packages"]
    assert first == {"manager": "dpkg", "count": 3, "digest": expected_digest(FIRST), "changes": None}
    recorded_first = json.loads(state_file.read_text())["recorded_at"]

    package_lists["list"] = SECOND
    second = collector.collect()["packages"]
    assert second["count"] == 3
    assert second["digest"] == expected_digest(SECOND)
    assert second["changes"] == {
        "since": recorded_first,
        "added": [{"name": "plc-runtime", "version": "7.3"}],
        "removed": [{"name": "openssl", "version": "3.0.11-1"}],
        "upgraded": [{"name": "camctl", "from": "2.4.0", "to": "2.5.0"}],
    }
    assert recorded_first.endswith("Z")

    stored = state_file.read_text()
    inode = state_file.stat().st_ino
    third = collector.collect()["packages"]
    assert third["changes"]["added"] == third["changes"]["removed"] == third["changes"]["upgraded"] == []
    assert third["changes"]["since"] == json.loads(stored)["recorded_at"]
    assert state_file.stat().st_ino == inode  # unchanged list: the state file is not rewritten
    assert [p.name for p in tmp_path.joinpath("state").iterdir()] == ["packages.json"]


def test_unwritable_state_dir_still_reports_packages(tmp_path, package_lists):
    blocker = write(tmp_path / "not-a-dir", "")
    collector = make_collector(tmp_path, packages=True, state_dir=blocker)
    data = collector.collect()
    assert data["packages"]["count"] == 3
    assert data["packages"]["digest"] == expected_digest(FIRST)
    assert data["packages"]["changes"] is None
    assert any(n.startswith("package changes not tracked: ") for n in data["notes"])


def test_corrupt_state_file_starts_afresh(tmp_path, package_lists):
    write(tmp_path / "state" / "packages.json", "{not json")
    data = make_collector(tmp_path, packages=True).collect()
    assert data["packages"]["changes"] is None
    assert any("unusable" in n for n in data["notes"])
    assert json.loads((tmp_path / "state" / "packages.json").read_text())["digest"] == (expected_digest(FIRST))


def test_no_package_manager_is_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(versions, "detect_package_manager", lambda: None)
    data = make_collector(tmp_path, packages=True).collect()
    assert data["packages"] is None
    assert "no package manager found (neither dpkg-query nor rpm)" in data["notes"]


def test_packages_off_in_config(tmp_path, monkeypatch):
    monkeypatch.setattr(versions, "detect_package_manager", lambda: pytest.fail("queried"))
    assert make_collector(tmp_path, packages=False).collect()["packages"] is None


def dpkg_installed_count() -> int:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Status}\\n"], capture_output=True, text=True, check=True
    ).stdout
    return sum(1 for status in out.splitlines() if status == "installed")


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="dpkg-query not on this machine")
def test_real_dpkg_count_matches_dpkg_query(tmp_path):
    # Other work on this machine may install packages meanwhile: compare against a count that
    # held before and after the collector ran.
    for _attempt in range(5):
        before = dpkg_installed_count()
        data = make_collector(tmp_path, packages=True).collect()
        if before == dpkg_installed_count():
            break
    assert data["packages"]["manager"] == "dpkg"
    assert data["packages"]["count"] == before
    assert set(data["packages"]) == {"manager", "count", "digest", "changes"}

    packages = list_installed_packages("dpkg")
    dpkg_version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "dpkg"], capture_output=True, text=True, check=True
    ).stdout
    assert any(p.name == "dpkg" and p.version == dpkg_version for p in packages)
    assert len({p.name for p in packages}) == len(packages)
