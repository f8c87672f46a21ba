"""Customers and which devices belong to them.

Customers are created on first mention (an enrollment code, an assignment, a viewer). A device
belongs to the customer of the code it first enrolled with, or to none until an admin assigns it;
moving it is always an explicit, audited act (:func:`assign_device`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.audit import record_audit
from server.models import NAME_MAX_CHARS, Customer, Device
from server.names import name_problem


def customer_name_problem(name: str) -> str | None:
    """Return why ``name`` cannot name a customer, or None when it can."""
    if not name.strip():
        return "a customer name cannot be empty"
    if name != name.strip():
        return "a customer name cannot start or end with a space"
    if len(name) > NAME_MAX_CHARS:
        return f"a customer name has at most {NAME_MAX_CHARS} characters"
    return name_problem(name)


def get_or_create_customer(session: Session, name: str, now: datetime) -> Customer:
    """Return the customer called ``name``, creating it (race-safe) when new.

    Raises ValueError for a new name that cannot name a customer (:func:`customer_name_problem`):
    every way a customer comes to be goes through here.
    """
    customer = session.scalar(select(Customer).where(Customer.name == name))
    if customer is not None:
        return customer
    problem = customer_name_problem(name)
    if problem:
        raise ValueError(f"customer {name!r}: {problem}")
    try:
        with session.begin_nested():
            customer = Customer(name=name, created_at=now)
            session.add(customer)
    except IntegrityError:
        customer = session.scalar(select(Customer).where(Customer.name == name))
        if customer is None:
            raise
    return customer


def customer_name(session: Session, customer_id: int | None) -> str | None:
    """Return the name of customer ``customer_id``, or None for no customer."""
    if customer_id is None:
        return None
    customer = session.get(Customer, customer_id)
    return customer.name if customer else None


def assign_device(
    session: Session,
    device: Device,
    name: str | None,
    *,
    now: datetime,
    actor: str,
    address: str | None = None,
) -> tuple[str | None, str | None]:
    """Assign ``device`` to the customer called ``name`` (created when new), or unassign it for
    None; audit it as ``device.assign``. The caller commits.

    Returns (the customer before, the customer after). Raises ValueError for a name that cannot
    name a customer.
    """
    if name is not None:
        problem = customer_name_problem(name)
        if problem:
            raise ValueError(problem)
    before = customer_name(session, device.customer_id)
    customer = get_or_create_customer(session, name, now) if name is not None else None
    device.customer_id = customer.id if customer else None
    record_audit(
        session,
        at=now,
        actor=actor,
        action="device.assign",
        target=f"device:{device.id}",
        details={
            "serial": device.serial,
            "from": before,
            "to": name,
            "claimed_customer": device.claimed_customer,
        },
        address=address,
    )
    session.flush()
    return before, name


def devices_with_customers(session: Session, *, unassigned_only: bool = False) -> list[tuple[Device, str | None]]:
    """Return every device (or only those without a customer) with its customer's name, by id."""
    stmt = select(Device, Customer.name).outerjoin(Customer, Customer.id == Device.customer_id).order_by(Device.id)
    if unassigned_only:
        stmt = stmt.where(Device.customer_id.is_(None))
    return [(device, name) for device, name in session.execute(stmt)]
