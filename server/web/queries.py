"""Small queries the dashboard needs that the API has no endpoint for."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import Customer


def customer_names(session: Session) -> list[str]:
    """Return the names of all customers, sorted, for the device list's customer filter."""
    return list(session.scalars(select(Customer.name).order_by(Customer.name)))
