"""Pool selection: which pool's worker takes a build request.

A pool is a worker (its QA VM) plus its bare-metal hosts. The gate asks for a specific pool
by setting the ``pool`` property on its build request; other requests (try) take a free pool
that is not quarantined and that the gate left idle after its last decision.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any


def requested_pool(buildrequest: Any) -> str | None:
    props = getattr(buildrequest, "properties", None)
    if props is None or not props.hasProperty("pool"):
        return None
    return props.getProperty("pool") or None


def worker_pool(wfb: Any) -> str | None:
    """The pool a WorkerForBuilder drives (from the worker's ``pool`` property)."""
    w = getattr(wfb, "worker", None)
    props = getattr(w, "properties", None) if w is not None else None
    if props is not None and props.hasProperty("pool"):
        return props.getProperty("pool")
    return None


def make_next_worker(
    is_quarantined: Callable[[str], bool] | None = None, may_take: Callable[[str], bool] | None = None
):
    """A ``nextWorker`` for BuilderConfig honouring the requested pool and quarantine;
    ``may_take``: also only pools it allows (the try builder: pools the gate left idle)."""

    def next_worker(builder: Any, wfbs: list, buildrequest: Any):
        usable = [w for w in wfbs if not (is_quarantined and is_quarantined(worker_pool(w) or ""))]
        if may_take is not None:
            usable = [w for w in usable if may_take(worker_pool(w) or "")]
        wanted = requested_pool(buildrequest)
        if wanted:
            usable = [w for w in usable if worker_pool(w) == wanted]
        return random.choice(usable) if usable else None

    return next_worker
