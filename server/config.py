"""Server settings: defaults, then ``TELEMAINT_SERVER_*`` environment variables, then CLI flags.

pydantic-settings is not a dependency; :func:`load_settings` merges the three sources into one
validated :class:`ServerSettings`. The cookie secret is generated on ``init`` and kept in the
data directory (0600) unless one is given.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

ENV_PREFIX = "TELEMAINT_SERVER_"
DEFAULT_DATA_DIR = Path("/var/lib/telemaint-server")
DB_FILE_NAME = "server.db"
SECRET_KEY_FILE_NAME = "secret_key"  # noqa: S105 (a file name)
SECRET_KEY_MIN_CHARS = 32
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "changethis", "change-me", "secret", "password", "please-change-me"})
MiB = 1024 * 1024
# A device at the default intervals stores at most about 6 MiB a day (heartbeats 0.2, health
# reports 1.5, four inventories with their log tails 4); 256 MiB also takes a full agent outbox
# (64 MiB) coming back after days offline, with a wide margin.
DEVICE_DAILY_BYTES_DEFAULT = 256 * MiB

_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")

# Environment variable (after the prefix) -> settings field.
_ENV_FIELDS = {
    "ENV": "environment",
    "DATA_DIR": "data_dir",
    "DB": "db_url",
    "SECRET_KEY": "secret_key",
    "SESSION_LIFETIME": "session_lifetime_s",
    "PUBLIC_URL": "public_url",
    "MAX_BODY_BYTES": "max_body_bytes",
    "MAX_AGENT_BODY_BYTES": "max_agent_body_bytes",
    "LOGIN_MAX_FAILURES": "login_max_failures",
    "LOGIN_WINDOW": "login_window_s",
    "LOGIN_ADDRESS_MAX_FAILURES": "login_address_max_failures",
    "TRUSTED_PROXIES": "trusted_proxies",
    "REPORT_INTERVAL": "report_interval_s",
    "DEVICE_DAILY_BYTES": "device_daily_bytes",
}

_FLAG_NAMES = {"db_url": "db", "trusted_proxies": "trusted_proxy"}
# Failures of any names from one address that block it, as a multiple of ``login_max_failures``.
LOGIN_ADDRESS_FAILURES_FACTOR = 4


class SettingsError(Exception):
    """Settings that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_duration_s(value: Any) -> float:
    """Return seconds for ``90``, ``"30s"``, ``"24h"``, ``"1h30m"``, ``"7d"``; raise ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 2h or 1d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        if text and _DURATION_PART_RE.sub("", text) == "":
            return float(sum(float(n) * _DURATION_UNITS_S[u] for n, u in _DURATION_PART_RE.findall(text)))
    raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 5m, 24h, 7d)")


def normalize_db_url(url: str) -> str:
    """Return ``url`` with ``postgres://``/``postgresql://`` mapped to the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class ServerSettings(BaseModel):
    """Everything the server process needs to know; immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    environment: Literal["production", "development"] = "production"
    data_dir: Path = DEFAULT_DATA_DIR
    db_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite file")
    secret_key: SecretStr | None = Field(default=None, description="signs session cookies")
    session_lifetime_s: float = Field(default=12 * 3600, gt=0)
    public_url: str | None = None
    max_body_bytes: int = Field(default=1 * MiB, gt=0)
    max_agent_body_bytes: int = Field(default=8 * MiB, gt=0)
    login_max_failures: int = Field(default=5, ge=1)
    login_window_s: float = Field(default=300, gt=0)
    login_address_max_failures: int | None = Field(
        default=None, ge=1, description=f"default {LOGIN_ADDRESS_FAILURES_FACTOR} x login_max_failures"
    )
    trusted_proxies: tuple[str, ...] = Field(
        default=(), description="addresses or networks whose X-Forwarded-For/-Proto are believed"
    )
    report_interval_s: int = Field(default=60, ge=5, le=86400)
    device_daily_bytes: int = Field(
        default=DEVICE_DAILY_BYTES_DEFAULT, gt=0, description="report payload bytes one device may store per UTC day"
    )

    @field_validator("session_lifetime_s", "login_window_s", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration_s(value)

    @field_validator("report_interval_s", mode="before")
    @classmethod
    def _interval(cls, value: Any) -> int:
        return round(parse_duration_s(value))

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> tuple[str, ...]:
        items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
        networks = []
        for item in items:
            try:
                networks.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/8)") from None
        return tuple(networks)

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = normalize_db_url(value.strip())
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("expected sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected http(s)://HOST[:PORT][/PATH]")
        return value.rstrip("/") if value else value

    @field_validator("secret_key")
    @classmethod
    def _secret_not_placeholder(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        if value is None or info.data.get("environment") == "development":
            return value
        secret = value.get_secret_value()
        if secret.strip().lower() in PLACEHOLDER_SECRETS or len(secret) < SECRET_KEY_MIN_CHARS:
            raise ValueError(
                f"a placeholder or a secret shorter than {SECRET_KEY_MIN_CHARS} characters is "
                "refused outside development; leave it unset and `telemaint-server init` "
                "generates one"
            )
        return value

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL to use: the one given, or a SQLite file in the data directory."""
        return self.db_url or f"sqlite:///{self.data_dir / DB_FILE_NAME}"

    @property
    def secret_key_path(self) -> Path:
        """Where ``init`` keeps the generated cookie secret."""
        return self.data_dir / SECRET_KEY_FILE_NAME

    @property
    def address_max_failures(self) -> int:
        """Failed logins of any names from one address, within the window, that block the address."""
        return self.login_address_max_failures or LOGIN_ADDRESS_FAILURES_FACTOR * self.login_max_failures

    @property
    def is_https(self) -> bool:
        """True when the public URL says clients reach the server over HTTPS."""
        return bool(self.public_url and self.public_url.startswith("https://"))


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> ServerSettings:
    """Return settings from defaults, ``TELEMAINT_SERVER_*`` variables and ``overrides``.

    ``overrides`` (CLI flags) win over the environment; ``None`` values are ignored.
    Raises SettingsError naming each bad variable or flag.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for suffix, field in _ENV_FIELDS.items():
        name = ENV_PREFIX + suffix
        if name in environ:
            values[field] = environ[name]
            origin[field] = name
    for field, value in (overrides or {}).items():
        if value is not None:
            values[field] = value
            origin[field] = "--" + _FLAG_NAMES.get(field, field).replace("_", "-")
    try:
        return ServerSettings(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "settings"
            problems.append(f"{origin.get(field, field)}: {error['msg'].removeprefix('Value error, ')}")
        raise SettingsError(problems) from None


def read_secret_key(settings: ServerSettings) -> ServerSettings:
    """Return settings with the secret key filled from the data directory when not given.

    Raises SettingsError when there is none (``init`` was not run) or the file is unusable.
    """
    if settings.secret_key is not None:
        return settings
    path = settings.secret_key_path
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise SettingsError(
            [f"{path}: no secret key; run `telemaint-server init` or set {ENV_PREFIX}SECRET_KEY"]
        ) from None
    except OSError as exc:
        raise SettingsError([f"{path}: cannot read the secret key: {exc.strerror}"]) from None
    try:
        return ServerSettings.model_validate({**settings.model_dump(), "secret_key": secret})
    except ValidationError as exc:
        raise SettingsError([f"{path}: {e['msg']}" for e in exc.errors()]) from None


def ensure_secret_key(settings: ServerSettings) -> tuple[ServerSettings, bool]:
    """Return (settings with a secret key, whether a new key file was written).

    A missing key file is created with a random secret, mode 0600; the data directory is
    created (0700) when missing. Raises SettingsError when the directory is not writable.
    """
    if settings.secret_key is not None:
        return settings, False
    path = settings.secret_key_path
    if not path.exists():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return read_secret_key(settings), False
        except OSError as exc:
            raise SettingsError([f"{path}: cannot write the secret key: {exc.strerror}"]) from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
        return read_secret_key(settings), True
    return read_secret_key(settings), False
