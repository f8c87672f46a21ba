"""Support endpoints for devices: list, one device, its reports, its commands."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import false, or_, select

from server.api.deps import (
    AdminUser,
    ClientAddress,
    CurrentUser,
    DeviceIdPath,
    NowDep,
    SessionDep,
    SettingsDep,
    VisibleDevice,
)
from server.api.models import (
    CommandIn,
    CommandListOut,
    CommandOut,
    DeviceCustomerIn,
    DeviceDetail,
    DeviceListOut,
    DevicePublic,
    DeviceStatus,
    DeviceUsageDay,
    DeviceUsageOut,
    HealthStatus,
    QueryText,
    ReportKind,
    ReportListOut,
    ReportOut,
    ReportSummary,
    VersionChangeOut,
)
from server.audit import record_audit
from server.customers import assign_device
from server.devices import device_status
from server.ingest import usage_days
from server.models import Command, Customer, Device, DeviceState, Report, VersionChange

log = logging.getLogger(__name__)

DEVICE_PAGE_MAX = 1000
REPORT_PAGE_MAX = 500
COMMAND_PAGE_MAX = 500
VERSION_HISTORY_MAX = 200
USAGE_DAYS_SHOWN = 14
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
    unassigned: Annotated[bool, Query(description="only devices without a customer")] = False,
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
    if unassigned:
        stmt = stmt.where(Device.customer_id.is_(None))
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
        claimed_customer=device.claimed_customer,
        inventory=state.inventory if state else None,
        inventory_at=state.inventory_at if state else None,
        health=state.health if state else None,
        health_at=state.health_at if state else None,
        versions=(state.versions or {}) if state else {},
        version_history=[VersionChangeOut.model_validate(v) for v in history],
    )


@router.get("/{device_id}/reports", responses={404: {"description": "absent or not visible"}})
def list_reports(
    device: VisibleDevice,
    session: SessionDep,
    kind: ReportKind | None = None,
    limit: Annotated[int, Query(ge=1, le=REPORT_PAGE_MAX)] = 50,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX)] = 0,
) -> ReportListOut:
    """Return a page of the device's reports without payloads, newest first, optionally of one
    kind; ``GET /devices/{id}/reports/{report_id}`` returns one with its payload."""
    stmt = select(Report.uuid, Report.kind, Report.created_at, Report.received_at, Report.size).where(
        Report.device_id == device.id
    )
    if kind:
        stmt = stmt.where(Report.kind == kind)
    stmt = stmt.order_by(Report.created_at.desc(), Report.id.desc()).offset(offset).limit(limit + 1)
    rows = session.execute(stmt).all()
    return ReportListOut(
        reports=[
            ReportSummary(id=r.uuid, kind=r.kind, created_at=r.created_at, received_at=r.received_at, size=r.size)
            for r in rows[:limit]
        ],
        next_offset=offset + limit if len(rows) > limit else None,
    )


@router.get("/{device_id}/reports/{report_id}", responses={404: {"description": "no such report of this device"}})
def get_report(device: VisibleDevice, report_id: uuid.UUID, session: SessionDep) -> ReportOut:
    """Return one report of the device with its payload (at most the agent body limit)."""
    report = session.scalar(select(Report).where(Report.device_id == device.id, Report.uuid == report_id))
    if report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such report")
    return ReportOut(
        id=report.uuid,
        kind=report.kind,
        created_at=report.created_at,
        received_at=report.received_at,
        size=report.size,
        payload=report.payload,
    )


@router.get("/{device_id}/usage", responses={404: {"description": "absent or not visible"}})
def device_usage(device: VisibleDevice, session: SessionDep, settings: SettingsDep) -> DeviceUsageOut:
    """Return the device's daily storage budget and what it stored and had refused on its last
    :data:`USAGE_DAYS_SHOWN` days, newest first."""
    return DeviceUsageOut(
        daily_budget_bytes=settings.device_daily_bytes,
        days=[DeviceUsageDay.model_validate(row) for row in usage_days(session, device.id, USAGE_DAYS_SHOWN)],
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


@router.put(
    "/{device_id}/customer",
    responses={403: {"description": "admins only"}, 404: {"description": "no such device"}},
)
def assign_customer(
    body: DeviceCustomerIn,
    device_id: DeviceIdPath,
    admin: AdminUser,
    session: SessionDep,
    now: NowDep,
    address: ClientAddress,
) -> DevicePublic:
    """Assign the device to a customer (created when new), or unassign it with ``null``; admins
    only, audited as ``device.assign``. Returns the device as the list shows it."""
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such device")
    try:
        before, after = assign_device(
            session, device, body.customer, now=now, actor=f"user:{admin.name}", address=address
        )
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None
    session.commit()
    log.info("user %s assigned device %d from customer %r to %r", admin.name, device.id, before, after)
    state = session.get(DeviceState, device.id)
    return _device_public(device, after, state.health_status if state else None, now)
