"""``POST /enroll``: a machine trades a one-time code for a device id and token."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.api.deps import ClientAddress, NowDep, SessionDep, SettingsDep
from server.api.models import EnrollChallengeOut, EnrollIn, EnrollOut, EnrollRefusedOut
from server.audit import record_audit
from server.enrollment import EnrollmentRefused, ProofRequired, enroll_device

log = logging.getLogger(__name__)

router = APIRouter(tags=["agent"])

_REFUSED_DOC: dict[int | str, dict[str, Any]] = {
    403: {
        "model": EnrollRefusedOut,
        "description": "unknown, expired or used code; a code of another customer; a proof that does not verify",
    },
    409: {
        "model": EnrollChallengeOut | EnrollRefusedOut,
        "description": "the serial is enrolled: sign the challenge and send the body again with proof (a "
        "409 without a challenge: the serial belongs to another device than the code's, or is being "
        "enrolled right now)",
    },
}


def _record_refusal(
    session: Session, body: EnrollIn, exc: EnrollmentRefused, now: datetime, address: str | None
) -> None:
    """Audit a refusal as ``enrollment.refused`` and commit it (the enrollment was rolled back)."""
    record_audit(
        session,
        at=now,
        actor=f"device:{body.serial}",
        action="enrollment.refused",
        target=f"device:{exc.device_id}" if exc.device_id else f"serial:{body.serial}",
        details={
            "serial": body.serial,
            "name": body.name,
            "reason": exc.reason,
            "enrollment_code_id": exc.code_id,
            "with_proof": body.proof is not None,
        },
        address=address,
    )
    session.commit()


@router.post("/enroll", status_code=status.HTTP_201_CREATED, response_model=EnrollOut, responses=_REFUSED_DOC)
def enroll(
    body: EnrollIn,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
) -> Any:
    """Enroll a machine. A new serial needs a valid code; an enrolled one also needs proof that it
    is the same machine, or a code issued for its device. Refusals are audited."""
    assert settings.secret_key is not None  # create_app refuses settings without one
    try:
        enrollment = enroll_device(
            session,
            code=body.code,
            name=body.name,
            serial=body.serial,
            model=body.model,
            claimed_customer=body.customer,
            ssh_public_key=body.ssh_public_key,
            agent_version=body.agent_version,
            report_interval_s=settings.report_interval_s,
            proof=(body.proof.challenge, body.proof.signature) if body.proof else None,
            secret_key=settings.secret_key.get_secret_value(),
            now=now,
        )
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
                "method": enrollment.method,
                "renamed_from": enrollment.renamed_from,
                "customer_id": device.customer_id,
                "claimed_customer": device.claimed_customer,
                "enrollment_code_id": enrollment.code.id,
            },
            address=address,
        )
        session.commit()
    except EnrollmentRefused as exc:
        session.rollback()
        log.warning("enrollment of serial %r from %s refused: %s", body.serial, address, exc.reason)
        if exc.code_id is not None:  # a real code was used: an attempt worth the audit log
            _record_refusal(session, body, exc, now, address)
        if isinstance(exc, ProofRequired):
            challenge = EnrollChallengeOut(
                detail=exc.reason, device_id=exc.device_id or 0, challenge=exc.challenge, expires_at=exc.expires_at
            )
            return JSONResponse(challenge.model_dump(mode="json"), status_code=status.HTTP_409_CONFLICT)
        raise HTTPException(exc.status_code, detail=exc.reason) from None
    except IntegrityError:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, detail="this serial is being enrolled right now; retry") from None
    log.info("device %d (%s) enrolled from %s (%s)", device.id, device.serial, address, enrollment.method)
    return EnrollOut(device_id=device.id, token=enrollment.token, heartbeat_interval_s=device.report_interval_s)
