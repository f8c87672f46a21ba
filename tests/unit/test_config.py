from pathlib import Path

import pytest

from agent.config import (
    AgentConfig,
    ConfigError,
    load_config,
    mask_url,
    parse_config,
    parse_duration,
    parse_size,
    read_secret,
)

EXAMPLE = Path(__file__).parents[2] / "configs" / "agent.example.yaml"


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "agent.yaml")
    return info.value.problems


def test_example_config_is_valid_and_complete():
    config = load_config(EXAMPLE)
    assert config.device.serial == "TB3-2024-0117"
    assert config.server.intervals.heartbeat == 60
    assert config.server.intervals.inventory == 6 * 3600
    assert {c.type for c in config.health.checks} >= {"disk_usage", "memory", "load", "ntp_synced"}
    assert config.tunnel.max_duration == 8 * 3600
    assert config.source == EXAMPLE


def test_empty_file_gives_defaults():
    config = parse_config("", "agent.yaml")
    assert config == AgentConfig()
    assert config.state_dir == Path("/var/lib/telemaint")


def test_every_problem_is_reported_with_its_line():
    text = """\
device:
  name: bench
  colour: red
server:
  url: http://telemaint.example.com
  intervals:
    heartbeat: soon
health:
  checks:
    - name: plc
      type: tcp
    - name: disk
      type: disk_usage
      warning: 120
    - name: odd
      type: bogus
"""
    assert problems_of(text) == [
        "agent.yaml:3: device.colour: unknown key",
        "agent.yaml:5: server.url: plain http:// is refused except to a loopback address; use https://",
        "agent.yaml:7: server.intervals.heartbeat: 'soon' is not a duration (use e.g. 30s, 5m, 2h, 1d)",
        "agent.yaml:10: health.checks[0].port: required key is missing",
        "agent.yaml:14: health.checks[1].warning: Input should be less than or equal to 100",
        "agent.yaml:16: health.checks[2].type: unknown type 'bogus'; expected one of 'disk_usage', "
        "'memory', 'load', 'temperature', 'process', 'systemd_unit', 'tcp', 'http', 'file_age', "
        "'ntp_synced', 'command'",
    ]


def test_yaml_syntax_error_names_its_line():
    problems = problems_of("device:\n  name: bench\nhealth: [a, b\nstate_dir: /x\n")
    assert len(problems) == 1
    assert problems[0].startswith("agent.yaml:4: YAML syntax error:")


def test_duplicate_keys_are_errors():
    assert problems_of("device:\n  name: a\n  name: b\n") == [
        "agent.yaml:3: device.name: duplicate key (first given on line 2)"
    ]


def test_top_level_must_be_a_mapping():
    assert problems_of("- a\n- b\n") == ["agent.yaml:1: the file must be a mapping of sections (device:, server:, ...)"]


def test_inline_secrets_are_refused_without_echoing_them():
    problems = problems_of("backup:\n  store:\n    url: https://dav.example.com/\n    password: hunter2-secret\n")
    assert problems == [
        "agent.yaml:4: backup.store.password: secrets do not belong in agent.yaml; use a *_file key or a *_env variable"
    ]
    assert "hunter2" not in "".join(problems)


def test_password_in_store_url_is_refused():
    problems = problems_of("backup:\n  store:\n    url: https://u:pw@dav.example.com/\n")
    assert problems == [
        "agent.yaml:3: backup.store.url: put the store password in password_file or password_env, not the URL"
    ]


def test_backup_sets_need_a_store_and_a_valid_schedule():
    problems = problems_of(
        "backup:\n  params:\n    - name: cal\n      paths: [/opt/cal]\n      schedule: '61 * * * *'\n"
    )
    assert problems[0].startswith(
        "agent.yaml:2: backup: backup sets are configured but backup.store is missing"
    ) or any("backup.params[0].schedule" in p for p in problems)
    assert any(p.startswith("agent.yaml:5: backup.params[0].schedule: '61 * * * *'") for p in problems)


def test_component_needs_exactly_one_source():
    problems = problems_of(
        "collect:\n  versions:\n    components:\n      - name: cam\n        command: camctl -v\n        file: /x\n"
    )
    assert problems == ["agent.yaml:4: collect.versions.components[0]: give exactly one of 'command' or 'file'"]


def test_command_strings_are_split_without_a_shell():
    config = parse_config(
        "health:\n  checks:\n    - name: p\n      type: command\n      command: check_disk -w '10 %' -p /\n"
    )
    assert config.health.checks[0].command == ["check_disk", "-w", "10 %", "-p", "/"]


def test_check_names_must_be_unique():
    problems = problems_of("health:\n  checks:\n    - {name: a, type: memory}\n    - {name: a, type: load}\n")
    assert problems == ["agent.yaml:2: health.checks: check 2 has the same name as check 1 ('a'); names must be unique"]


def test_missing_file_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.problems == [f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"]


def test_state_dir_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("TELEMAINT_STATE_DIR", str(tmp_path))
    assert parse_config("state_dir: /var/lib/x\n").state_dir == tmp_path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("400d", 400 * 86400), ("2w", 1209600), ("1.5h", 5400)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "5x", "", True, -1, "m5"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"), [(100, 100), ("64KiB", 65536), ("10MB", 10_000_000), ("1 GiB", 1024**3), ("512", 512)]
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["big", "5 parsecs", -3])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_secrets_come_from_file_or_env(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("s3cret word\nignored\n")
    assert read_secret(secret, None, "x") == "s3cret word"
    monkeypatch.setenv("STORE_PW", "from-env")
    assert read_secret(None, "STORE_PW", "x") == "from-env"
    with pytest.raises(ConfigError, match="environment variable NOPE_PW is not set"):
        read_secret(None, "NOPE_PW", "backup.store.password")
    with pytest.raises(ConfigError, match="cannot read secret file"):
        read_secret(tmp_path / "missing", None, "backup.store.password")


def test_dump_masks_secrets():
    config = parse_config("server:\n  url: https://t.example.com\n  proxy: http://user:pw@proxy.example.com:3128\n")
    dumped = config.as_dict_secure()
    assert dumped["server"]["proxy"] == "http://user:***@proxy.example.com:3128"
    assert mask_url("https://a.example.com/x") == "https://a.example.com/x"


def test_thresholds_must_be_in_order():
    problems = problems_of(
        "health:\n  checks:\n    - {name: d, type: disk_usage, warning: 95, critical: 85}\n"
        "    - {name: p, type: process, process: x, min: 3, max: 1}\n"
        "    - {name: t, type: tcp, port: 22, timeout: 0}\n"
    )
    assert problems == [
        "agent.yaml:3: health.checks[0]: warning (95) is above critical (85); higher values are worse",
        "agent.yaml:4: health.checks[1]: min (3) is above max (1)",
        "agent.yaml:5: health.checks[2].timeout: Input should be greater than 0",
    ]


def test_missing_default_file_says_how_to_point_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("TELEMAINT_CONFIG", str(tmp_path / "agent.yaml"))
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.problems == [
        f"{tmp_path / 'agent.yaml'}: cannot read: No such file or directory (give --config FILE or set "
        "TELEMAINT_CONFIG; configs/agent.example.yaml is a commented start)"
    ]
