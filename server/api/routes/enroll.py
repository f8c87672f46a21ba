"""``POST /enroll``: a machine trades a one-time code for a device id and token."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, status
from sqlalchemy.exc import IntegrityError

from server.api.deps import ClientAddress, NowDep, SessionDep, SettingsDep
from server.api.models import EnrollIn, EnrollOut
from server.audit import record_audit
from server.enrollment import EnrollmentRefused, enroll_device

log = logging.getLogger(__name__)

router = APIRouter(tags=["agent"])


@router.post(
    "/enroll",
    status_code=status.HTTP_201_CREATED,
    responses={403: {"description": "unknown, expired or used code"}},
)
def enroll(
    body: EnrollIn,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
) -> EnrollOut:
    """Enroll a machine; the same serial enrolling again keeps its device id."""
    try:
        enrollment = enroll_device(
            session,
            code=body.code,
            name=body.name,
            serial=body.serial,
            model=body.model,
            customer_name=body.customer,
            ssh_public_key=body.ssh_public_key,
            agent_version=body.agent_version,
            report_interval_s=settings.report_interval_s,
            now=now,
        )
    except EnrollmentRefused as exc:
        session.rollback()
        log.warning("enrollment of serial %r from %s refused: %s", body.serial, address, exc)
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=exc.reason) from None
    device = enrollment.device
    record_audit(
        session,
        at=now,
        actor=f"device:{device.serial}",
        action="device.enroll",
        target=f"device:{device.id}",
        details={
            "name": device.name,
            "serial": device.serial,
            "re_enrolled": enrollment.re_enrolled,
            "enrollment_code_id": enrollment.code.id,
        },
        address=address,
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, detail="this serial is being enrolled right now; retry") from None
    log.info("device %d (%s) enrolled from %s", device.id, device.serial, address)
    return EnrollOut(device_id=device.id, token=enrollment.token, heartbeat_interval_s=device.report_interval_s)
