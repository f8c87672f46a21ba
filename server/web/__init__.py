"""The support dashboard: server-rendered pages (Jinja2) and one stylesheet, no JavaScript."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")
TEMPLATES_DIR = Path(__file__).with_name("templates")


def include_dashboard(app: FastAPI) -> None:
    """Add the dashboard's pages and ``/static`` to ``app``."""
    from server.web.routes import router

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
