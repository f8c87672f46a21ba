"""Support endpoints for devices: list, one device, its reports, its commands."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import false, or_, select

from server.api.deps import (
    ClientAddress,
    CurrentUser,
    NowDep,
    SessionDep,
    VisibleDevice,
)
from server.api.models import (
    CommandIn,
    CommandListOut,
    CommandOut,
    DeviceDetail,
    DeviceListOut,
    DevicePublic,
    DeviceStatus,
    HealthStatus,
    QueryText,
    ReportKind,
    ReportListOut,
    ReportOut,
    VersionChangeOut,
)
from server.audit import record_audit
from server.devices import device_status
from server.models import Command, Customer, Device, DeviceState, Report, VersionChange

log = logging.getLogger(__name__)

DEVICE_PAGE_MAX = 1000
REPORT_PAGE_MAX = 500
COMMAND_PAGE_MAX = 500
VERSION_HISTORY_MAX = 200
OFFSET_MAX = 10**9

router = APIRouter(prefix="/devices", tags=["devices"])


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _device_public(device: Device, customer: str | None, health_status: str | None, now: datetime) -> DevicePublic:
    return DevicePublic(
        id=device.id,
        name=device.name,
        serial=device.serial,
        model=device.model,
        customer=customer,
        agent_version=device.agent_version,
        enrolled_at=device.enrolled_at,
        last_seen_at=device.last_seen_at,
        report_interval_s=device.report_interval_s,
        status=device_status(device.last_seen_at, device.report_interval_s, now),
        health_status=health_status,
    )


@router.get("")
def list_devices(
    session: SessionDep,
    user: CurrentUser,
    now: NowDep,
    q: Annotated[QueryText | None, Query(description="part of name, serial, model, customer")] = None,
    customer: Annotated[QueryText | None, Query(description="customer name")] = None,
    status_filter: Annotated[DeviceStatus | None, Query(alias="status")] = None,
    health: Annotated[HealthStatus | None, Query(description="worst health status")] = None,
    limit: Annotated[int, Query(ge=1, le=DEVICE_PAGE_MAX)] = 200,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX)] = 0,
) -> DeviceListOut:
    """Return the devices the user may see, by name, with status and worst health."""
    stmt = (
        select(Device, Customer.name, DeviceState.health_status)
        .outerjoin(Customer, Customer.id == Device.customer_id)
        .outerjoin(DeviceState, DeviceState.device_id == Device.id)
        .order_by(Device.name, Device.id)
    )
    if user.role == "customer":
        visible = false() if user.customer_id is None else Device.customer_id == user.customer_id
        stmt = stmt.where(visible)
    if q:
        pattern = _like_pattern(q)
        stmt = stmt.where(
            or_(
                Device.name.ilike(pattern, escape="\\"),
                Device.serial.ilike(pattern, escape="\\"),
                Device.model.ilike(pattern, escape="\\"),
                Customer.name.ilike(pattern, escape="\\"),
            )
        )
    if customer:
        stmt = stmt.where(Customer.name == customer)
    if health:
        stmt = stmt.where(DeviceState.health_status == health)
    devices = [
        _device_public(device, customer_name, health_status, now)
        for device, customer_name, health_status in session.execute(stmt)
    ]
    if status_filter:
        devices = [d for d in devices if d.status == status_filter]
    return DeviceListOut(devices=devices[offset : offset + limit], total=len(devices))


@router.get("/{device_id}", responses={404: {"description": "absent or not visible"}})
def get_device(device: VisibleDevice, session: SessionDep, now: NowDep) -> DeviceDetail:
    """Return one device: identity, latest inventory and health, versions and their history."""
    state = session.get(DeviceState, device.id)
    customer = session.get(Customer, device.customer_id) if device.customer_id else None
    history = session.scalars(
        select(VersionChange)
        .where(VersionChange.device_id == device.id)
        .order_by(VersionChange.changed_at.desc(), VersionChange.id.desc())
        .limit(VERSION_HISTORY_MAX)
    ).all()
    public = _device_public(device, customer.name if customer else None, state.health_status if state else None, now)
    return DeviceDetail(
        **public.model_dump(),
        ssh_public_key=device.ssh_public_key,
        inventory=state.inventory if state else None,
        inventory_at=state.inventory_at if state else None,
        health=state.health if state else None,
        health_at=state.health_at if state else None,
        versions=(state.versions or {}) if state else {},
        version_history=[VersionChangeOut.model_validate(v) for v in history],
    )


@router.get("/{device_id}/reports")
def list_reports(
    device: VisibleDevice,
    session: SessionDep,
    kind: ReportKind | None = None,
    limit: Annotated[int, Query(ge=1, le=REPORT_PAGE_MAX)] = 50,
) -> ReportListOut:
    """Return the device's latest reports, newest first, optionally of one kind."""
    stmt = select(Report).where(Report.device_id == device.id)
    if kind:
        stmt = stmt.where(Report.kind == kind)
    stmt = stmt.order_by(Report.created_at.desc(), Report.id.desc()).limit(limit)
    return ReportListOut(
        reports=[
            ReportOut(
                id=r.uuid,
                kind=r.kind,
                created_at=r.created_at,
                received_at=r.received_at,
                payload=r.payload,
            )
            for r in session.scalars(stmt)
        ]
    )


@router.post(
    "/{device_id}/commands",
    status_code=status.HTTP_201_CREATED,
    responses={403: {"description": "customer viewers are read-only"}},
)
def queue_command(
    body: CommandIn,
    device: VisibleDevice,
    user: CurrentUser,
    session: SessionDep,
    now: NowDep,
    address: ClientAddress,
) -> CommandOut:
    """Queue an allowlisted command for the device (support and admins only)."""
    if user.role not in ("admin", "support"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="customer viewers are read-only")
    command = Command(
        device_id=device.id,
        kind=body.kind,
        args=body.args,
        status="queued",
        created_by=user.name,
        created_at=now,
    )
    session.add(command)
    session.flush()
    record_audit(
        session,
        at=now,
        actor=f"user:{user.name}",
        action="command.queue",
        target=f"device:{device.id}",
        details={"command_id": command.id, "kind": body.kind},
        address=address,
    )
    session.commit()
    log.info("user %s queued %s for device %d", user.name, body.kind, device.id)
    return CommandOut.model_validate(command)


@router.get("/{device_id}/commands")
def list_commands(
    device: VisibleDevice,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=COMMAND_PAGE_MAX)] = 50,
) -> CommandListOut:
    """Return the device's commands, newest first."""
    commands = session.scalars(
        select(Command).where(Command.device_id == device.id).order_by(Command.id.desc()).limit(limit)
    ).all()
    return CommandListOut(commands=[CommandOut.model_validate(c) for c in commands])
