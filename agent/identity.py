"""The device's identity in its state directory: its Ed25519 SSH key (generated here; the private
key never leaves the machine) and the credentials that enrollment gave it (device id, token)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

PRIVATE_KEY_FILE = "id_ed25519"
PUBLIC_KEY_FILE = "id_ed25519.pub"
CREDENTIALS_FILE = "credentials.json"


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
        key = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        write_private(private_path, pem)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (state_dir / PUBLIC_KEY_FILE).write_bytes(public + b" telemaint\n")
    return public.decode()


def load_credentials(state_dir: Path) -> Credentials | None:
    """Return the stored credentials, or None when this device has not enrolled."""
    try:
        data = json.loads((state_dir / CREDENTIALS_FILE).read_text())
    except FileNotFoundError:
        return None
    return Credentials(**data)


def save_credentials(state_dir: Path, credentials: Credentials) -> None:
    write_private(state_dir / CREDENTIALS_FILE, json.dumps(asdict(credentials), indent=2).encode())
