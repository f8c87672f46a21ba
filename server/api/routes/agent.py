"""Agent endpoints, authenticated by the device token: reports in, commands out, results in."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError

from server.api.deps import CurrentDevice, NowDep, RowIdPath, SessionDep, SettingsDep
from server.api.models import (
    AckOut,
    AgentCommandListOut,
    AgentCommandOut,
    CommandOut,
    CommandResultIn,
    ReportBatchIn,
)
from server.ingest import BudgetExceeded, store_reports
from server.models import Command

log = logging.getLogger(__name__)

COMMANDS_PER_POLL = 20
# A command handed out but never answered (the agent died or lost the reply) is handed out again.
COMMAND_RESEND_AFTER_S = 600
STORE_ATTEMPTS = 2

router = APIRouter(prefix="/agent", tags=["agent"])


@router.post(
    "/reports",
    responses={
        413: {"description": "the body, or the batch's new reports alone, exceed what the device may store"},
        422: {"description": "a report is malformed (unknown kind, NaN, an unrepresentable time, ...)"},
        429: {"description": "the device's daily storage budget is used up; see Retry-After (next UTC day)"},
        409: {"description": "the same reports were being stored concurrently; retry"},
    },
)
def post_reports(
    batch: ReportBatchIn, device: CurrentDevice, session: SessionDep, now: NowDep, settings: SettingsDep
) -> AckOut:
    """Store a batch; ack every report stored now or before by this device (duplicates are not
    stored twice). A batch over the device's daily budget is refused whole (413 or 429) and
    counted; the device's usage and refusals show on its page."""
    device_id = device.id
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            acked = store_reports(session, device, batch.reports, now, settings.device_daily_bytes)
            session.commit()
            return AckOut(acked=acked)
        except BudgetExceeded as exc:
            session.commit()  # the refusal is counted
            headers = {"Retry-After": str(exc.retry_after_s)} if exc.status_code == 429 else None
            raise HTTPException(exc.status_code, detail=str(exc), headers=headers) from None
        except IntegrityError:
            session.rollback()
            log.info("device %d: concurrent delivery of a report (attempt %d)", device_id, attempt)
    raise HTTPException(status.HTTP_409_CONFLICT, detail="reports delivered concurrently; retry")


@router.get("/commands")
def poll_commands(device: CurrentDevice, session: SessionDep, now: NowDep) -> AgentCommandListOut:
    """Return the queued commands of this device (oldest first), and those sent over
    :data:`COMMAND_RESEND_AFTER_S` ago without an answer, and mark them sent."""
    stale = now - timedelta(seconds=COMMAND_RESEND_AFTER_S)
    commands = session.scalars(
        select(Command)
        .where(
            Command.device_id == device.id,
            or_(Command.status == "queued", and_(Command.status == "sent", Command.sent_at < stale)),
        )
        .order_by(Command.id)
        .limit(COMMANDS_PER_POLL)
        .with_for_update(skip_locked=True)
    ).all()
    for command in commands:
        command.status = "sent"
        command.sent_at = now
    out = AgentCommandListOut(commands=[AgentCommandOut.model_validate(c) for c in commands])
    session.commit()
    return out


@router.post("/commands/{command_id}/result", responses={404: {"description": "not yours"}})
def post_command_result(
    command_id: RowIdPath,
    body: CommandResultIn,
    device: CurrentDevice,
    session: SessionDep,
    now: NowDep,
) -> CommandOut:
    """Record how a command of this device ended; repeating it changes nothing."""
    command = session.get(Command, command_id)
    if command is None or command.device_id != device.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such command")
    if command.status not in ("done", "failed"):
        command.status = body.status
        command.message = body.message
        command.result = body.result
        command.sent_at = command.sent_at or now
        command.finished_at = now
        device.last_seen_at = now
        session.commit()
    return CommandOut.model_validate(command)
