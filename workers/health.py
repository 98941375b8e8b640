"""Pool health: quarantine a pool after consecutive infrastructure failures, or after failing
runs that other pools did not reproduce (flakes of that pool) with no pass in between.

Every BVT run that ends on a pool is recorded: an *inconclusive* end (``infra_failure``, lost
worker, exception; never a cancellation) counts against the pool, any conclusive end (pass or
fail: the pool worked) resets its count. After ``settings.pools.quarantine_after`` consecutive
infrastructure failures the pool is quarantined: ``make_next_worker`` gives it no build
request and the gate stops planning runs on it, until a QA engineer releases it (the
``pool-service`` builder or ``qacloud pool release POOL``).

``PoolHealth`` is plain data; the gate scheduler owns the instance, persists ``to_state()``
(its state key "health") and registers it here so ``nextWorker`` of the BVT builders can
consult it (:func:`is_quarantined`). It remembers the builds it counted (their ids, the last
``COUNTED``) and until when (``since``, the clock of the newest count), so a restarted master
counts the builds that ended while none listened exactly once (``GateScheduler``'s catch-up).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

HEALTH_VERSION = 1
COUNTED = 500  # build ids remembered as counted (far more than end between two health saves)


@dataclass(frozen=True)
class Recorded:
    """What one recorded run did to its pool."""

    pool: str
    failures: int  # consecutive infrastructure failures now
    quarantined: bool  # True only when this record put the pool in quarantine
    reason: str = ""


class PoolHealth:
    """Consecutive infrastructure failures per pool and the quarantined pools."""

    def __init__(self, quarantine_after: int, state: dict | None = None) -> None:
        if quarantine_after < 1:
            raise ValueError(f"quarantine_after must be at least 1, got {quarantine_after}")
        self.quarantine_after = quarantine_after
        s = copy.deepcopy(state) if state else {}
        self._failures: dict[str, int] = dict(s.get("failures", {}))
        self._quarantined: dict[str, str] = dict(s.get("quarantined", {}))
        self._counted: list[int] = [int(b) for b in s.get("counted", [])]
        # failures of runs on the pool that runs elsewhere did not reproduce, since its last pass
        self._flakes: dict[str, int] = dict(s.get("flakes", {}))
        self._flaked: list[str] = [str(r) for r in s.get("flaked", [])]  # gate run ids counted
        # the clock of the newest count; None: a state saved before builds were remembered
        self.since: float | None = s.get("since")

    def counted(self, buildid: int) -> bool:
        """Whether the run of build ``buildid`` was recorded already."""
        return buildid in self._counted

    def record(
        self,
        pool: str,
        infrastructure_failure: bool,
        reason: str = "",
        buildid: int | None = None,
        at: float | None = None,
        passed: bool = False,
    ) -> Recorded:
        """One run ended on ``pool``; ``infrastructure_failure``: it could not judge the commit;
        ``passed``: it passed (which also ends a run of flakes, :meth:`record_flake`).
        ``buildid`` and ``at`` (when it ended) make the count once-only and move ``since``."""
        if buildid is not None:
            self._counted.append(buildid)
            del self._counted[:-COUNTED]
        if at is not None:
            self.since = max(self.since or at, at)
        if passed:
            self._flakes[pool] = 0
        if not infrastructure_failure:
            self._failures[pool] = 0
            return Recorded(pool, 0, False)
        n = self._failures.get(pool, 0) + 1
        self._failures[pool] = n
        if n >= self.quarantine_after and pool not in self._quarantined:
            why = f"{n} consecutive infrastructure failures (last: {reason or 'unknown'})"
            self._quarantined[pool] = why
            return Recorded(pool, n, True, why)
        return Recorded(pool, n, False)

    def record_flake(self, pool: str, tests, run_id: str = "") -> Recorded:
        """A failing run on ``pool`` turned out a flake (runs elsewhere passed those tests).
        ``quarantine_after`` of them with no pass on the pool in between: the pool itself is
        broken (a host, a disk, a network of its own), not the commits, and is quarantined.
        ``run_id`` makes it once-only (a restarted master may do the same decision again)."""
        if run_id:
            if run_id in self._flaked:
                return Recorded(pool, self._flakes.get(pool, 0), False)
            self._flaked.append(run_id)
            del self._flaked[:-COUNTED]
        n = self._flakes.get(pool, 0) + 1
        self._flakes[pool] = n
        if n >= self.quarantine_after and pool not in self._quarantined:
            names = ", ".join(list(tests)[:3]) or "tests"
            why = f"{n} failing runs in a row that other pools did not reproduce (last: {names})"
            self._quarantined[pool] = why
            return Recorded(pool, n, True, why)
        return Recorded(pool, n, False)

    def is_quarantined(self, pool: str) -> bool:
        return pool in self._quarantined

    def reason(self, pool: str) -> str:
        return self._quarantined.get(pool, "")

    def quarantined(self) -> dict[str, str]:
        """pool -> reason of every quarantined pool."""
        return dict(self._quarantined)

    def release(self, pool: str) -> bool:
        """Return ``pool`` to service (its count starts again); False if it was not quarantined."""
        self._failures[pool] = 0
        self._flakes[pool] = 0
        return self._quarantined.pop(pool, None) is not None

    def to_state(self) -> dict:
        return {
            "version": HEALTH_VERSION,
            "failures": dict(self._failures),
            "quarantined": dict(self._quarantined),
            "counted": list(self._counted),
            "flakes": dict(self._flakes),
            "flaked": list(self._flaked),
            "since": self.since,
        }


# The running master's PoolHealth (one master process, one gate): set by the gate scheduler
# when it activates, read by the BVT builders' nextWorker.
_current: PoolHealth | None = None


def register(health: PoolHealth | None) -> None:
    global _current
    _current = health


def current() -> PoolHealth | None:
    return _current


def is_quarantined(pool: str) -> bool:
    """Whether the running gate has ``pool`` in quarantine (False before the gate is active)."""
    h = _current
    return h is not None and h.is_quarantined(pool)


# The pools the running gate left idle after its last decision: the only ones other BVT
# builders (try) may take, so a try build never takes a pool the gate is about to use and the
# gate never waits for a try build it could have avoided. None: no gate active (any pool).
_idle: frozenset[str] | None = None


def set_idle(pools) -> None:
    global _idle
    _idle = None if pools is None else frozenset(pools)


def may_lend(pool: str) -> bool:
    """Whether a non-gate BVT build (a try) may take ``pool`` now."""
    idle = _idle
    return idle is None or pool in idle
