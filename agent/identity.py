"""The device's identity in its state directory: its Ed25519 SSH key (generated here; the private
key never leaves the machine) and the credentials that enrollment gave it (device id, token)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

PRIVATE_KEY_FILE = "id_ed25519"
PUBLIC_KEY_FILE = "id_ed25519.pub"
CREDENTIALS_FILE = "credentials.json"
CREDENTIALS_MAX_BYTES = 64 * 1024
OPENSSH_KEY_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
OPENSSH_KEY_END = b"-----END OPENSSH PRIVATE KEY-----"
OPENSSH_KEY_MAGIC = b"openssh-key-v1\0"
REENROLL_HINT = "run `telemaint enroll --force` to enroll again"


class IdentityError(ValueError):
    """A file of the device's identity is unreadable or broken; the message names the file and
    what to do, in one line."""


class CredentialsError(IdentityError):
    """``credentials.json`` is unreadable or broken."""


@dataclass(frozen=True)
class Credentials:
    device_id: str
    token: str
    server_url: str
    enrolled_at: str
    ca_file: str | None = None

    def __repr__(self) -> str:  # never show the token in logs or tracebacks
        return f"Credentials(device_id={self.device_id!r}, server_url={self.server_url!r}, token=***)"


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_device_key(state_dir: Path) -> str:
    """Return the device's public key in OpenSSH form, generating the key pair on first use."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = state_dir / PRIVATE_KEY_FILE
    if private_path.exists():
        problem = check_device_key(state_dir)
        if problem is not None:
            raise IdentityError(problem)
        try:
            key = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(_broken_key_message(private_path, f"unusable: {exc}")) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(_broken_key_message(private_path, "not an Ed25519 key"))
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        write_private(private_path, pem)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (state_dir / PUBLIC_KEY_FILE).write_bytes(public + b" telemaint\n")
    return public.decode()


def _broken_key_message(path: Path, what: str) -> str:
    return f"{path}: {what}; move it aside and {REENROLL_HINT} with a new device key"


def check_device_key(state_dir: Path) -> str | None:
    """Return one line saying what is wrong with the device's private key file (truncated,
    not an OpenSSH private key, unreadable), or None when it looks whole or is absent.

    Reads the file's framing only, so the service can call it without loading ``cryptography``.
    """
    import binascii

    path = state_dir / PRIVATE_KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    begin, end = data.find(OPENSSH_KEY_BEGIN), data.find(OPENSSH_KEY_END)
    if not data.strip():
        return _broken_key_message(path, "the file is empty")
    if begin != 0 or end < 0:
        return _broken_key_message(path, "not a whole OpenSSH private key (truncated or overwritten)")
    try:
        body = binascii.a2b_base64(b"".join(data[len(OPENSSH_KEY_BEGIN) : end].split()))
    except binascii.Error:
        body = b""
    if not body.startswith(OPENSSH_KEY_MAGIC):
        return _broken_key_message(path, "not a whole OpenSSH private key (its body is damaged)")
    return None


def load_credentials(state_dir: Path) -> Credentials | None:
    """Return the stored credentials, or None when this device has not enrolled.

    Raises CredentialsError, naming the file and what to do, when ``credentials.json`` cannot
    be read or is not what enrollment writes (truncated, not JSON, missing or unknown keys,
    wrong types).
    """
    path = state_dir / CREDENTIALS_FILE
    try:
        with path.open("rb") as file:
            raw = file.read(CREDENTIALS_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror or exc}") from None
    return Credentials(**_credentials_fields(path, raw))


def _credentials_fields(path: Path, raw: bytes) -> dict[str, str | None]:
    """Return the fields of a ``credentials.json``; raise CredentialsError when it is broken."""
    fields = {f.name: f.default is dataclasses.MISSING for f in dataclasses.fields(Credentials)}

    def broken(what: str) -> CredentialsError:
        return CredentialsError(f"{path} is broken ({what}); {REENROLL_HINT}")

    if len(raw) > CREDENTIALS_MAX_BYTES:
        raise broken(f"larger than {CREDENTIALS_MAX_BYTES} bytes")
    if not raw.strip():
        raise broken("the file is empty")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise broken(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise broken("not a JSON object")
    missing = [name for name, required in fields.items() if required and name not in data]
    unknown = sorted(str(key) for key in data if key not in fields)
    if missing:
        raise broken(f"missing key {', '.join(missing)}")
    if unknown:
        raise broken(f"unknown key {', '.join(unknown)}")
    for name, value in data.items():
        if not (isinstance(value, str) and value) and not (value is None and not fields[name]):
            raise broken(f"{name} is not a non-empty string")
    return data


def save_credentials(state_dir: Path, credentials: Credentials) -> None:
    write_private(state_dir / CREDENTIALS_FILE, json.dumps(asdict(credentials), indent=2).encode())


def sign_with_device_key(state_dir: Path, message: bytes) -> bytes:
    """Return the Ed25519 signature of ``message`` made with the device's private key in
    ``state_dir``. Raises OSError when the key file cannot be read and ValueError when it holds
    no Ed25519 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_ssh_private_key((state_dir / PRIVATE_KEY_FILE).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{state_dir / PRIVATE_KEY_FILE}: not an Ed25519 key")
    return key.sign(message)
