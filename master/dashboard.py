"""The gate dashboard (wsgi_dashboards page inside the Buildbot web UI)."""

from __future__ import annotations

from master.inventory import Inventory
from master.settings import Settings


def dashboards(settings: Settings, inventory: Inventory) -> list[dict]:
    """wsgi_dashboards entries; filled in by the dashboard issue."""
    return []
