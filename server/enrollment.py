"""One-time enrollment codes, and enrolling a machine with one.

A code alone enrolls only a serial the server has not seen. An enrolled serial enrolls again
only with proof that it is the same machine (a signature, with the device's current key, of a
challenge this module hands out) or with a code an admin issued for that very device; a code
never moves a device to another customer. The wire format is written down in
:mod:`server.api.models` (enrollment section).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from server.api.models import enrollment_proof_message
from server.auth import DEVICE_TOKEN_PREFIX, hash_token, new_token
from server.customers import customer_name, customer_name_problem, get_or_create_customer
from server.models import Device, EnrollmentCode

# No 0/O, 1/I/L, U: read aloud or typed from paper without mistakes. 12 symbols of 30 = 58 bits.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_GROUPS = 3
CODE_GROUP_CHARS = 4
DEFAULT_CODE_TTL_S = 24 * 3600
CHALLENGE_TTL_S = 5 * 60
CHALLENGE_NONCE_BYTES = 16

EnrollMethod = Literal["new", "proof", "device_code"]


class EnrollmentRefused(Exception):
    """The machine may not enroll; ``reason`` is safe to show to it, ``status_code`` is the HTTP
    answer (403 not allowed, 409 in conflict with an enrolled device)."""

    def __init__(
        self,
        reason: str,
        *,
        status_code: int = 403,
        device_id: int | None = None,
        code_id: int | None = None,
    ):
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code
        self.device_id = device_id
        self.code_id = code_id


class ProofRequired(EnrollmentRefused):
    """The serial is enrolled as ``device_id``: the machine must sign ``challenge`` (409)."""

    def __init__(self, reason: str, *, device_id: int, code_id: int, challenge: str, expires_at: datetime):
        super().__init__(reason, status_code=409, device_id=device_id, code_id=code_id)
        self.challenge = challenge
        self.expires_at = expires_at


def normalize_code(code: str) -> str:
    """Return the code in its canonical form: upper case, without dashes and spaces."""
    return "".join(ch for ch in code.upper() if ch not in "- \t")


def new_code() -> str:
    """Return a fresh random code such as ``K7QX-3MZD-9PWA``."""
    groups = ("".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUP_CHARS)) for _ in range(CODE_GROUPS))
    return "-".join(groups)


def create_enrollment_code(
    session: Session,
    *,
    now: datetime,
    ttl_s: float = DEFAULT_CODE_TTL_S,
    customer_name: str | None = None,
    for_device_id: int | None = None,
    created_by: str,
) -> tuple[str, EnrollmentCode]:
    """Add a one-time code valid for ``ttl_s``; return (the code, its row). The caller commits.

    A code ``for_device_id`` re-enrolls that device only, keeping its id and customer, whatever
    key the enrolling machine has (a reinstall that kept nothing). Only the code's hash is
    stored; the code itself is shown once. Raises ValueError for a customer name that cannot be
    one, for an unknown device, or for a customer and a device together.
    """
    if customer_name is not None and for_device_id is not None:
        raise ValueError("a code for a device keeps the device's customer; give a customer or a device, not both")
    if customer_name is not None:
        problem = customer_name_problem(customer_name)
        if problem:
            raise ValueError(f"customer {customer_name!r}: {problem}")
    if for_device_id is not None and session.get(Device, for_device_id) is None:
        raise ValueError(f"there is no device {for_device_id}")
    customer = get_or_create_customer(session, customer_name, now) if customer_name else None
    code = new_code()
    row = EnrollmentCode(
        code_hash=hash_token(normalize_code(code)),
        customer_id=customer.id if customer else None,
        for_device_id=for_device_id,
        created_by=created_by,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    session.add(row)
    session.flush()
    return code, row


# ---------------------------------------------------------------- proof of the same machine


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _challenge_mac(secret_key: str, payload: str, device: Device, code_hash: str) -> str:
    key = hmac.new(secret_key.encode("utf-8"), b"telemaint enrollment challenge", hashlib.sha256).digest()
    # The device's current token hash: the challenge dies as soon as the device enrolls again.
    # The code's hash: a signed answer is good with this (one-time) code only.
    message = "\n".join((payload, device.token_hash, code_hash)).encode("utf-8")
    return _b64(hmac.new(key, message, hashlib.sha256).digest())


def make_challenge(secret_key: str, *, device: Device, code_hash: str, now: datetime) -> tuple[str, datetime]:
    """Return (a challenge for ``device`` and the code of ``code_hash``, when it expires).

    The challenge is stateless, so that any server process sharing the secret key checks it:
    ``PAYLOAD.MAC``, the payload naming device, serial, expiry and a nonce.
    """
    expires_at = now + timedelta(seconds=CHALLENGE_TTL_S)
    claims = {
        "d": device.id,
        "s": device.serial,
        "e": int(expires_at.timestamp()),
        "n": _b64(secrets.token_bytes(CHALLENGE_NONCE_BYTES)),
    }
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    return f"{payload}.{_challenge_mac(secret_key, payload, device, code_hash)}", expires_at.replace(microsecond=0)


def challenge_problem(secret_key: str, challenge: str, *, device: Device, code_hash: str, now: datetime) -> str | None:
    """Return why ``challenge`` is not a live challenge of ``device`` and this code, or None."""
    payload, _, mac = challenge.partition(".")
    expected = _challenge_mac(secret_key, payload, device, code_hash)
    if not payload or not hmac.compare_digest(mac.encode("ascii"), expected.encode("ascii")):
        return "the enrollment challenge is not valid for this device and code (or was used); enroll again"
    try:
        claims = json.loads(_unb64(payload))
        device_id, serial, expires_s = int(claims["d"]), str(claims["s"]), int(claims["e"])
    except (ValueError, KeyError, TypeError):
        return "the enrollment challenge is not valid; enroll again"
    if device_id != device.id or serial != device.serial:
        return "the enrollment challenge is for another device; enroll again"
    if datetime.fromtimestamp(expires_s, UTC) <= now:
        return "the enrollment challenge expired; enroll again"
    return None


def signature_verifies(ssh_public_key: str, message: bytes, signature_b64: str) -> bool:
    """Return True when ``signature_b64`` is an Ed25519 signature of ``message`` by the key of the
    OpenSSH line ``ssh_public_key``; False for any other signature, key or encoding."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_ssh_public_key(ssh_public_key.encode("ascii"))
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, UnsupportedAlgorithm):
        return False
    if not isinstance(key, Ed25519PublicKey):
        return False
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


# ---------------------------------------------------------------- enrolling


@dataclass(frozen=True)
class Enrollment:
    """The outcome of :func:`enroll_device`: the device, its new token (shown once), the code used,
    how the machine showed it may enroll, and the serial the device had before (if it changed)."""

    device: Device
    token: str
    code: EnrollmentCode
    method: EnrollMethod
    renamed_from: str | None = None

    @property
    def re_enrolled(self) -> bool:
        return self.method != "new"


def _customer_text(session: Session, customer_id: int | None) -> str:
    name = customer_name(session, customer_id)
    return name if name is not None else "no customer (unassigned)"


def enroll_device(
    session: Session,
    *,
    code: str,
    name: str,
    serial: str,
    model: str,
    claimed_customer: str | None,
    ssh_public_key: str,
    agent_version: str,
    report_interval_s: int,
    proof: tuple[str, str] | None,
    secret_key: str,
    now: datetime,
) -> Enrollment:
    """Use ``code`` once to enroll a machine; the caller commits, or rolls back on a refusal.

    A new serial becomes a new device of the code's customer, or of none (the machine's own
    ``claimed_customer`` is only recorded). An enrolled serial keeps its device id and customer
    and gets a new token and key, if the code was issued for that device or ``proof`` (challenge,
    base64 signature) verifies with the device's current key. Raises ProofRequired for an
    enrolled serial without proof, and EnrollmentRefused for an unknown, expired or used code,
    a code of another customer or device, or a proof that does not verify; a refusal leaves the
    code unused.
    """
    code_hash = hash_token(normalize_code(code))
    row = session.scalar(select(EnrollmentCode).where(EnrollmentCode.code_hash == code_hash))
    if row is None:
        raise EnrollmentRefused("unknown enrollment code")
    if row.used_at is not None:
        raise EnrollmentRefused("enrollment code already used", code_id=row.id)
    if row.expires_at <= now:
        raise EnrollmentRefused("enrollment code expired", code_id=row.id)

    # Serials that differ only in case are one machine's: "sn-1" cannot become a second "SN-1".
    existing = session.scalar(select(Device).where(func.lower(Device.serial) == serial.lower()))
    method: EnrollMethod
    if row.for_device_id is not None:
        device = session.get(Device, row.for_device_id)
        if device is None:
            raise EnrollmentRefused("the device this code was issued for no longer exists", code_id=row.id)
        if existing is not None and existing.id != device.id:
            raise EnrollmentRefused(
                f"this code is for device {device.id} (serial {device.serial}); "
                f"serial {serial} is device {existing.id}",
                status_code=409,
                device_id=existing.id,
                code_id=row.id,
            )
        method = "device_code"
    elif existing is not None:
        device = existing
        if row.customer_id is not None and row.customer_id != device.customer_id:
            raise EnrollmentRefused(
                f"this code is for customer {_customer_text(session, row.customer_id)}; "
                f"device {device.id} belongs to {_customer_text(session, device.customer_id)}",
                device_id=device.id,
                code_id=row.id,
            )
        if proof is None:
            challenge, expires_at = make_challenge(secret_key, device=device, code_hash=code_hash, now=now)
            raise ProofRequired(
                f"serial {serial} is already enrolled as device {device.id}: sign the challenge with "
                "the device's current key, or enroll with a code issued for this device",
                device_id=device.id,
                code_id=row.id,
                challenge=challenge,
                expires_at=expires_at,
            )
        challenge, signature = proof
        problem = challenge_problem(secret_key, challenge, device=device, code_hash=code_hash, now=now)
        if problem:
            raise EnrollmentRefused(problem, device_id=device.id, code_id=row.id)
        message = enrollment_proof_message(challenge, serial, ssh_public_key)
        if not signature_verifies(device.ssh_public_key, message, signature):
            raise EnrollmentRefused(
                f"the proof does not verify with the key of device {device.id}: this machine is not "
                f"the one enrolled as serial {serial}",
                device_id=device.id,
                code_id=row.id,
            )
        method = "proof"
    else:
        device = Device(serial=serial, report_interval_s=report_interval_s, customer_id=row.customer_id)
        method = "new"

    claimed = session.execute(
        update(EnrollmentCode)
        .where(EnrollmentCode.id == row.id, EnrollmentCode.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        raise EnrollmentRefused("enrollment code already used", device_id=device.id, code_id=row.id)

    renamed_from = device.serial if device.serial != serial else None
    token = new_token(DEVICE_TOKEN_PREFIX)
    device.serial = serial
    device.name = name
    device.model = model
    device.claimed_customer = claimed_customer
    device.agent_version = agent_version
    device.enrolled_at = now
    device.token_hash = hash_token(token)
    device.ssh_public_key = ssh_public_key
    session.add(device)
    session.flush()
    row.used_at = now
    row.device_id = device.id
    return Enrollment(device=device, token=token, code=row, method=method, renamed_from=renamed_from)
