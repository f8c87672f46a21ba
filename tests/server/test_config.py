"""Settings: defaults, environment, flags; placeholder secrets refused outside development."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from server.config import SettingsError, ensure_secret_key, load_settings, parse_duration_s, read_secret_key


def test_flags_win_over_environment_over_defaults(tmp_path: Path) -> None:
    environ = {"TELEMAINT_SERVER_DATA_DIR": str(tmp_path), "TELEMAINT_SERVER_SESSION_LIFETIME": "2h"}
    settings = load_settings({"session_lifetime_s": "30m", "db_url": None}, environ=environ)
    assert settings.session_lifetime_s == 1800
    assert settings.data_dir == tmp_path
    assert settings.database_url == f"sqlite:///{tmp_path}/server.db"
    assert load_settings(environ={}).database_url == "sqlite:////var/lib/telemaint-server/server.db"


def test_postgres_urls_use_psycopg_3() -> None:
    settings = load_settings({"db_url": "postgresql://u:pw@db.example/telemaint"}, environ={})
    assert settings.database_url == "postgresql+psycopg://u:pw@db.example/telemaint"


@pytest.mark.parametrize("secret", ["changeme", "secret", "short-but-not-placeholder"])
def test_placeholder_secret_is_refused_outside_development(secret: str) -> None:
    with pytest.raises(SettingsError, match=r"TELEMAINT_SERVER_SECRET_KEY: .*placeholder"):
        load_settings(environ={"TELEMAINT_SERVER_SECRET_KEY": secret})
    development = load_settings(environ={"TELEMAINT_SERVER_SECRET_KEY": secret, "TELEMAINT_SERVER_ENV": "development"})
    assert development.secret_key is not None


def test_every_bad_value_is_named() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            {"db_url": "mysql://x/y"},
            environ={"TELEMAINT_SERVER_LOGIN_WINDOW": "soon", "TELEMAINT_SERVER_PUBLIC_URL": "ftp://x"},
        )
    problems = "\n".join(caught.value.problems)
    assert "--db: " in problems
    assert "TELEMAINT_SERVER_LOGIN_WINDOW" in problems
    assert "TELEMAINT_SERVER_PUBLIC_URL" in problems


def test_secret_key_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": tmp_path / "state"}, environ={})
    with pytest.raises(SettingsError, match="no secret key; run `telemaint-server init`"):
        read_secret_key(settings)
    first, created = ensure_secret_key(settings)
    assert created
    path = tmp_path / "state" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    second, created_again = ensure_secret_key(settings)
    assert not created_again
    assert first.secret_key is not None and second.secret_key is not None
    assert first.secret_key.get_secret_value() == second.secret_key.get_secret_value()
    assert len(first.secret_key.get_secret_value()) >= 32


@pytest.mark.parametrize(("text", "seconds"), [("24h", 86400), ("1h30m", 5400), ("90", 90), (45, 45), ("7d", 604800)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5", "5x", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)
