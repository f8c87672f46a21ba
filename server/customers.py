"""Customers are created on first mention (an enrollment code, an enrollment, a viewer)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.models import Customer


def get_or_create_customer(session: Session, name: str, now: datetime) -> Customer:
    """Return the customer called ``name``, creating it (race-safe) when new."""
    customer = session.scalar(select(Customer).where(Customer.name == name))
    if customer is not None:
        return customer
    try:
        with session.begin_nested():
            customer = Customer(name=name, created_at=now)
            session.add(customer)
    except IntegrityError:
        customer = session.scalar(select(Customer).where(Customer.name == name))
        if customer is None:
            raise
    return customer
