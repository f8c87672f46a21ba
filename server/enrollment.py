"""One-time enrollment codes and enrolling a machine with one."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.auth import DEVICE_TOKEN_PREFIX, hash_token, new_token
from server.customers import get_or_create_customer
from server.models import Device, EnrollmentCode

# No 0/O, 1/I/L, U: read aloud or typed from paper without mistakes. 12 symbols of 30 = 58 bits.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_GROUPS = 3
CODE_GROUP_CHARS = 4
DEFAULT_CODE_TTL_S = 24 * 3600


class EnrollmentRefused(Exception):
    """The code cannot be used; ``reason`` is safe to show to the machine."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
    created_by: str,
) -> tuple[str, EnrollmentCode]:
    """Add a one-time code valid for ``ttl_s``; return (the code, its row). The caller commits.

    Only the code's hash is stored; the code itself is shown once.
    """
    customer = get_or_create_customer(session, customer_name, now) if customer_name else None
    code = new_code()
    row = EnrollmentCode(
        code_hash=hash_token(normalize_code(code)),
        customer_id=customer.id if customer else None,
        created_by=created_by,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    session.add(row)
    session.flush()
    return code, row


@dataclass(frozen=True)
class Enrollment:
    """The outcome of :func:`enroll_device`: the device and its new token (shown once)."""

    device: Device
    token: str
    code: EnrollmentCode
    re_enrolled: bool


def enroll_device(
    session: Session,
    *,
    code: str,
    name: str,
    serial: str,
    model: str,
    customer_name: str | None,
    ssh_public_key: str,
    agent_version: str,
    report_interval_s: int,
    now: datetime,
) -> Enrollment:
    """Use ``code`` once to enroll a machine; the caller commits.

    A serial seen before keeps its device id and gets a new token and key. The code's
    customer wins over the one the machine names. Raises EnrollmentRefused for an unknown,
    expired or already used code.
    """
    row = session.scalar(select(EnrollmentCode).where(EnrollmentCode.code_hash == hash_token(normalize_code(code))))
    if row is None:
        raise EnrollmentRefused("unknown enrollment code")
    if row.used_at is not None:
        raise EnrollmentRefused("enrollment code already used")
    if row.expires_at <= now:
        raise EnrollmentRefused("enrollment code expired")
    claimed = session.execute(
        update(EnrollmentCode)
        .where(EnrollmentCode.id == row.id, EnrollmentCode.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        raise EnrollmentRefused("enrollment code already used")

    customer_id = row.customer_id
    if customer_id is None and customer_name:
        customer_id = get_or_create_customer(session, customer_name, now).id
    token = new_token(DEVICE_TOKEN_PREFIX)
    device = session.scalar(select(Device).where(Device.serial == serial))
    re_enrolled = device is not None
    if device is None:
        device = Device(serial=serial, report_interval_s=report_interval_s)
        session.add(device)
    device.name = name
    device.model = model
    device.customer_id = customer_id if customer_id is not None else device.customer_id
    device.agent_version = agent_version
    device.enrolled_at = now
    device.token_hash = hash_token(token)
    device.ssh_public_key = ssh_public_key
    session.flush()
    row.used_at = now
    row.device_id = device.id
    return Enrollment(device=device, token=token, code=row, re_enrolled=re_enrolled)
