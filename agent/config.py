"""agent.yaml -> a validated, typed :class:`AgentConfig`.

Every problem in a file is reported at once, each as ``FILE:LINE: key.path: what is wrong``.
Secrets never live in the file: they come from ``*_file`` keys or ``*_env`` environment variables
and are read only when used.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml

from agent.defaults import CONFIG_ENV, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, STATE_DIR_ENV
from agent.urls import MASK, is_loopback_host, mask_url

# Pydantic looks for plugins through importlib.metadata on first use (3 MB and 20 ms); we use none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SECRET_KEYS = frozenset({"password", "passphrase", "token", "secret", "api_key", "key"})

_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` holds one ``FILE:LINE: key: what`` each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(value: Any) -> float:
    """Return seconds for ``90``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"400d"``; raise ValueError."""
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
        if text and _DURATION_RE.sub("", text) == "":
            return float(sum(float(n) * _DURATION_UNITS_S[u] for n, u in _DURATION_RE.findall(text)))
    raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 5m, 2h, 1d)")


def parse_size(value: Any) -> int:
    """Return bytes for ``1024``, ``"64KiB"``, ``"1 MB"``, ``"2GiB"``; raise ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KiB or 10MB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"{value!r} is not a size (use e.g. 512KiB, 10MB, 1GiB)")


def format_duration(seconds: float) -> str:
    """Return ``seconds`` the way a person writes it: 90 -> '1m30s', 86400 -> '1d'."""
    remaining = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if remaining >= size:
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    if remaining or not parts:
        parts.append(f"{remaining}s" if seconds == int(seconds) else f"{seconds % 60:g}s")
    return "".join(parts)


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split command line: {exc}") from None
    return value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str | int) else value


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return pattern


def _check_cron(expression: str) -> str:
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"{expression!r} is not a cron expression (five fields: min hour dom mon dow)")
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(expression, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"{expression!r}: {exc}") from None
    return expression


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Command = Annotated[list[str], BeforeValidator(_split_command), Field(min_length=1)]
Regex = Annotated[str, BeforeValidator(_check_regex)]
Cron = Annotated[str, BeforeValidator(_check_cron)]
Port = Annotated[int, Field(ge=1, le=65535)]
Percent = Annotated[float, Field(ge=0, le=100)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")]
Priority = Literal["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]


class Model(BaseModel):
    """Base of every config section: unknown keys are errors, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", validate_default=True, defer_build=True)


def read_secret(file: Path | None, env: str | None, what: str) -> str | None:
    """Return the secret from ``file`` (first line, stripped) or environment variable ``env``.

    Raises ConfigError when the named file cannot be read or the variable is unset.
    """
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").splitlines()[0].strip() if file.stat().st_size else ""
        except OSError as exc:
            raise ConfigError([f"{what}: cannot read secret file {file}: {exc.strerror}"]) from None
    if env is not None:
        if env not in os.environ:
            raise ConfigError([f"{what}: environment variable {env} is not set"])
        return os.environ[env]
    return None


# --- device and server ------------------------------------------------------------------------


class DeviceConfig(Model):
    name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    serial: str | None = None
    model: str | None = None
    customer: str | None = None


class Intervals(Model):
    heartbeat: Duration = 60.0
    inventory: Duration = 6 * 3600.0
    health: Duration = 300.0
    commands: Duration = 30.0
    jitter: Annotated[float, Field(ge=0, le=0.5)] = 0.1


class ServerConfig(Model):
    url: str | None = None
    ca_file: Path | None = None
    proxy: str | None = None
    timeout: Duration = 30.0
    intervals: Intervals = Field(default_factory=Intervals)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError("plain http:// is refused except to a loopback address; use https://")
        return url.rstrip("/")

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, proxy: str | None) -> str | None:
        if proxy is not None and urlsplit(proxy).scheme not in ("http", "https"):
            raise ValueError(f"{mask_url(proxy)!r} is not an http(s) proxy URL")
        return proxy


# --- collectors --------------------------------------------------------------------------------


class ComponentConfig(Model):
    """A vendor component whose version comes from a command's output or a file, reduced by a
    regex (named group ``version``, else group 1, else the whole match)."""

    name: Name
    command: Command | None = None
    file: Path | None = None
    regex: Regex = r"(\d+(?:\.\d+)+[\w.+~-]*)"
    timeout: Duration = 10.0

    @model_validator(mode="after")
    def _one_source(self) -> ComponentConfig:
        if (self.command is None) == (self.file is None):
            raise ValueError("give exactly one of 'command' or 'file'")
        return self


class VersionsConfig(Model):
    packages: bool = True
    components: list[ComponentConfig] = []


class JournalConfig(Model):
    enabled: bool = True
    units: list[str] = []
    priority: Priority = "warning"
    since: Duration = 24 * 3600.0
    max_lines: Annotated[int, Field(ge=1, le=100_000)] = 200
    files: list[Path] = []
    directory: Path | None = None


class LogFileConfig(Model):
    path: str
    max_lines: Annotated[int, Field(ge=1, le=100_000)] = 200
    max_bytes: Size = 256 * 1024
    rotations: Annotated[int, Field(ge=0, le=20)] = 1


DEFAULT_ERROR_PATTERNS = [r"(?i)\b(error|err|critical|crit|fatal|panic|emerg|alert)\b", r"(?i)\bfail(ed|ure)?\b"]


class LogsConfig(Model):
    journal: JournalConfig = Field(default_factory=JournalConfig)
    files: list[LogFileConfig] = []
    error_patterns: list[Regex] = DEFAULT_ERROR_PATTERNS


class CollectConfig(Model):
    versions: VersionsConfig = Field(default_factory=VersionsConfig)
    logs: LogsConfig = Field(default_factory=LogsConfig)


# --- health checks ----------------------------------------------------------------------------


class CheckBase(Model):
    name: Name
    timeout: Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=3600)] = 10.0

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> CheckBase:
        warning, critical = getattr(self, "warning", None), getattr(self, "critical", None)
        if warning is not None and critical is not None and warning > critical:
            raise ValueError(f"warning ({warning:g}) is above critical ({critical:g}); higher values are worse")
        minimum, maximum = getattr(self, "min", None), getattr(self, "max", None)
        if minimum is not None and maximum is not None and minimum > maximum:
            raise ValueError(f"min ({minimum}) is above max ({maximum})")
        return self


class DiskUsageCheck(CheckBase):
    type: Literal["disk_usage"]
    path: str = "/"
    warning: Percent = 85.0
    critical: Percent = 95.0


class MemoryCheck(CheckBase):
    type: Literal["memory"]
    warning: Percent = 90.0
    critical: Percent = 95.0


class LoadCheck(CheckBase):
    type: Literal["load"]
    period: Literal[1, 5, 15] = 5
    per_cpu: bool = True
    warning: Annotated[float, Field(ge=0)] = 2.0
    critical: Annotated[float, Field(ge=0)] = 4.0


class TemperatureCheck(CheckBase):
    type: Literal["temperature"]
    sensor: Regex | None = None
    warning: float = 80.0
    critical: float = 95.0


class ProcessCheck(CheckBase):
    type: Literal["process"]
    process: str | None = None
    cmdline: Regex | None = None
    min: Annotated[int, Field(ge=0)] = 1
    max: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _selector(self) -> ProcessCheck:
        if self.process is None and self.cmdline is None:
            raise ValueError("give 'process' (a process name) or 'cmdline' (a regex)")
        return self


class SystemdUnitCheck(CheckBase):
    type: Literal["systemd_unit"]
    unit: Annotated[str, Field(min_length=1)]


class TcpCheck(CheckBase):
    type: Literal["tcp"]
    host: str = "127.0.0.1"
    port: Port
    warning: Duration | None = None
    critical: Duration | None = None


class HttpCheck(CheckBase):
    type: Literal["http"]
    url: str
    expect_status: Annotated[list[Annotated[int, Field(ge=100, le=599)]], BeforeValidator(_one_or_many)] = [200]
    body_pattern: Regex | None = None
    ca_file: Path | None = None
    verify: bool = True
    warning: Duration | None = None
    critical: Duration | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url


class FileAgeCheck(CheckBase):
    type: Literal["file_age"]
    path: str
    warning: Duration
    critical: Duration | None = None
    missing: Literal["ok", "warning", "critical", "unknown"] = "critical"


class NtpSyncedCheck(CheckBase):
    type: Literal["ntp_synced"]
    unsynced: Literal["warning", "critical"] = "warning"


class CommandCheck(CheckBase):
    type: Literal["command"]
    command: Command


HealthCheckConfig = Annotated[
    DiskUsageCheck
    | MemoryCheck
    | LoadCheck
    | TemperatureCheck
    | ProcessCheck
    | SystemdUnitCheck
    | TcpCheck
    | HttpCheck
    | FileAgeCheck
    | NtpSyncedCheck
    | CommandCheck,
    Field(discriminator="type"),
]


class HealthConfig(Model):
    parallel: Annotated[int, Field(ge=1, le=32)] = 4
    checks: list[HealthCheckConfig] = []

    @field_validator("checks")
    @classmethod
    def _unique_names(cls, checks: list) -> list:
        _require_unique([c.name for c in checks], "check")
        return checks


def _require_unique(names: list[str], what: str) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise ValueError(
                f"{what} {index + 1} has the same name as {what} {seen[name] + 1} ({name!r}); names must be unique"
            )
        seen[name] = index


# --- backup, tunnel and diagnostics (filled in by their own features) --------------------------


class StoreConfig(Model):
    url: str
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    ca_file: Path | None = None
    max_object_size: Size = 512 * 1024**2

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "webdav", "webdavs", "file") or url.startswith("/"):
            if parts.password:
                raise ValueError("put the store password in password_file or password_env, not the URL")
            return url
        raise ValueError(f"{url!r}: use a local path, file:// or an http(s) WebDAV URL")

    def password(self) -> str | None:
        return read_secret(self.password_file, self.password_env, "backup.store.password")


class Retention(Model):
    last: Annotated[int, Field(ge=0)] | None = None
    daily: Annotated[int, Field(ge=0)] | None = None
    weekly: Annotated[int, Field(ge=0)] | None = None
    monthly: Annotated[int, Field(ge=0)] | None = None
    yearly: Annotated[int, Field(ge=0)] | None = None


class ParamSetConfig(Model):
    name: Name
    paths: Annotated[list[str], Field(min_length=1)]
    exclude: list[str] = []
    schedule: Cron = "30 1 * * *"
    keep: Retention = Field(default_factory=lambda: Retention(last=7, daily=14, weekly=8, monthly=12))


class ImageConfig(Model):
    name: Name
    device: Path
    pre: Command | None = None
    post: Command | None = None
    schedule: Cron = "0 2 * * *"
    keep: Retention = Field(default_factory=lambda: Retention(last=3, weekly=4, monthly=6))


class EncryptionConfig(Model):
    key_file: Path


class BackupConfig(Model):
    store: StoreConfig | None = None
    params: list[ParamSetConfig] = []
    images: list[ImageConfig] = []
    encryption: EncryptionConfig | None = None
    bandwidth: Size | None = None

    @model_validator(mode="after")
    def _store_needed(self) -> BackupConfig:
        _require_unique([s.name for s in self.params] + [i.name for i in self.images], "backup set")
        if (self.params or self.images) and self.store is None:
            raise ValueError("backup sets are configured but backup.store is missing")
        return self


class TunnelService(Model):
    name: Name
    port: Port
    host: str = "127.0.0.1"


class TunnelConfig(Model):
    services: list[TunnelService] = Field(default_factory=lambda: [TunnelService(name="ssh", port=22)])
    default_duration: Duration = 2 * 3600.0
    max_duration: Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=7 * 86400)] = 8 * 3600.0
    proxy: str | None = None

    @model_validator(mode="after")
    def _durations(self) -> TunnelConfig:
        _require_unique([s.name for s in self.services], "tunnel service")
        if self.default_duration > self.max_duration:
            raise ValueError("default_duration is longer than max_duration")
        return self


class DiagnosticsCommand(Model):
    name: Name
    command: Command
    timeout: Duration = 30.0


class DiagnosticsConfig(Model):
    commands: list[DiagnosticsCommand] = []
    files: list[str] = []
    redact: list[Regex] = []
    max_file_size: Size = 5 * 1024**2
    max_bundle_size: Size = 50 * 1024**2


class AgentConfig(Model):
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    state_dir: Path = DEFAULT_STATE_DIR
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    collect: CollectConfig = Field(default_factory=CollectConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)
    tunnel: TunnelConfig = Field(default_factory=TunnelConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)

    source: Path | None = Field(default=None, exclude=True)

    def as_dict_secure(self) -> dict:
        """Return the config as plain data with secret values and URL passwords masked."""
        return _mask(self.model_dump(mode="json"))


def _mask(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: (MASK if k in SECRET_KEYS and v is not None else _mask(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [_mask(v) for v in data]
    if isinstance(data, str) and "://" in data:
        return mask_url(data)
    return data


# --- loading ----------------------------------------------------------------------------------

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: Path | str | None = None) -> AgentConfig:
    """Read and validate the agent config at ``path`` (default: $TELEMAINT_CONFIG or
    /etc/telemaint/agent.yaml). Raises ConfigError listing every problem found."""
    chosen = path is not None
    path = Path(path) if chosen else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        hint = ""
        if isinstance(exc, FileNotFoundError) and not chosen:
            hint = f" (give --config FILE or set {CONFIG_ENV}; configs/agent.example.yaml is a commented start)"
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}{hint}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    config = parse_config(text, str(path))
    config.source = path
    return config


def parse_config(text: str, filename: str = "agent.yaml") -> AgentConfig:
    """Validate config ``text``; error lines name ``filename``. Raises ConfigError."""
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else {}
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([f"{filename}{line}: YAML syntax error: {what}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{filename}: YAML error: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: the file must be a mapping of sections (device:, server:, ...)"])

    problems = _duplicate_keys(root, filename) if root is not None else []
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems += [_describe(err, root, filename) for err in exc.errors(include_input=False)]
        config = None
    if problems:
        problems.sort(key=_line_of)
        raise ConfigError(problems)
    assert config is not None
    if os.environ.get(STATE_DIR_ENV):
        config.state_dir = Path(os.environ[STATE_DIR_ENV])
    return config


def _line_of(problem: str) -> tuple[int, str]:
    match = re.match(r"[^:]*:(\d+):", problem)
    return (int(match.group(1)) if match else 0, problem)


def _duplicate_keys(node: yaml.Node, filename: str, path: str = "") -> list[str]:
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            child = f"{path}.{key}" if path else str(key)
            if key in first_line:
                problems.append(
                    f"{filename}:{key_node.start_mark.line + 1}: {child}: duplicate key "
                    f"(first given on line {first_line[key]})"
                )
            else:
                first_line[key] = key_node.start_mark.line + 1
            problems += _duplicate_keys(value_node, filename, child)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, filename, f"{path}[{index}]")
    return problems


def _describe(error: dict, root: yaml.Node | None, filename: str) -> str:
    """Turn one pydantic error into ``FILE:LINE: key.path: message``, finding the line by walking
    the YAML node tree along the error's location."""
    node = root
    line = node.start_mark.line + 1 if node is not None else 1
    path = ""
    loc = list(error["loc"])
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("type")
    for position, part in enumerate(loc):
        type_node = _child(node, "type")
        if position and isinstance(loc[position - 1], int) and type_node and type_node[1].value == part:
            continue  # the tag pydantic adds after a list item of a discriminated union
        child = _child(node, part)
        if child is None:
            if position == len(loc) - 1 or not isinstance(part, str) or isinstance(node, yaml.ScalarNode):
                # A missing key (or a value pydantic looked into): name it, point at its parent.
                path = _join(path, part)
            continue  # a union member's tag, which is not a key in the file
        key_node, node = child
        line = (key_node or node).start_mark.line + 1
        path = _join(path, part)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = (
            "secrets do not belong in agent.yaml; use a *_file key or a *_env variable"
            if str(loc[-1]) in SECRET_KEYS
            else "unknown key"
        )
    elif error["type"] == "missing":
        message = "required key is missing"
    elif error["type"] == "union_tag_invalid":
        message = f"unknown type {error['ctx']['tag']!r}; expected one of {error['ctx']['expected_tags']}"
    elif error["type"] == "union_tag_not_found":
        message = "required key is missing: every check needs a type"
    return f"{filename}:{line}: {path or '(top level)'}: {message}"


def _child(node: yaml.Node | None, part: Any) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == str(part):
                return key_node, value_node
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return None, node.value[part]
    return None


def _join(path: str, part: Any) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else str(part)
