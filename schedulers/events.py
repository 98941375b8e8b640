"""The gate's vocabulary: events in, actions out (pure data, no I/O).

``schedulers/policy.py`` (``GatePolicy``) consumes these events and emits these actions.
Two drivers use the very same policy: the Buildbot scheduler (``schedulers/gate.py``), which
turns actions into buildsets and git pushes, and the benchmark simulator (``bench/gate_sim``),
which plays git, pools and BVT outcomes on a virtual clock.

Every event carries ``now``: the driver's clock when it happened (the scheduler: reactor
seconds; the simulator: hours). The policy only compares times with each other (its load
estimate), so the unit does not matter as long as one driver keeps to one.

Commits are identified by their full SHA (str). Candidates are the first-parent commits of
staging after master, oldest first. A run tests the tree *at* one candidate commit (which
includes every candidate before it), so a pass at c_i justifies promoting c_1..c_i.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["pass", "fail", "inconclusive"]
RunKind = Literal["tip", "bisect", "speculate", "confirm", "parent", "retry"]


# ---------------------------------------------------------------- events (driver -> policy)


@dataclass(frozen=True)
class StagingUpdated:
    """staging and master as seen now. ``commits``: first-parent commits of staging after
    master, oldest first (empty when staging == master). ``authors`` maps sha -> author."""

    master: str
    commits: tuple[str, ...]
    authors: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    now: float = 0.0


@dataclass(frozen=True)
class RunFinished:
    """A run started by ``StartRun`` ended. ``failed_tests`` names the failing tests (FAIL)."""

    run_id: str
    outcome: Outcome
    failed_tests: tuple[str, ...] = ()
    reason: str = ""  # for inconclusive: e.g. "BMC 10.0.0.5 did not answer"
    now: float = 0.0


@dataclass(frozen=True)
class PoolAvailable:
    """A pool is idle and usable (after start-up, or when returned to service)."""

    pool: str
    now: float = 0.0


POOL_CAUSES = ("quarantined", "offline", "lent", "unavailable")


@dataclass(frozen=True)
class PoolUnavailable:
    """A pool cannot take gate runs, and why (``cause``, one of ``POOL_CAUSES``; ``reason``
    says it to a human): quarantined after infrastructure failures, offline (its worker is
    not connected) or unavailable otherwise (e.g. gone from the inventory); runs on it are not
    cancelled by this event. Or it is ``lent``: its one build slot runs other work for a while
    (a try build), so a run the gate gave it cannot have started; that run is cancelled and
    planned again, never counted."""

    pool: str
    reason: str = ""
    now: float = 0.0
    cause: str = "unavailable"

    def __post_init__(self) -> None:
        if self.cause not in POOL_CAUSES:
            raise ValueError(f"pool {self.pool}: cause {self.cause!r} is not one of {', '.join(POOL_CAUSES)}")

    @property
    def lent(self) -> bool:
        return self.cause == "lent"


@dataclass(frozen=True)
class Promoted:
    """The driver pushed master to ``commit`` (result of a ``Promote`` action)."""

    commit: str
    ok: bool = True
    reason: str = ""  # when not ok: "rejected: master moved", "origin unreachable", ...
    now: float = 0.0


@dataclass(frozen=True)
class Tick:
    """Time passed and nothing else happened: the driver's timer, sent at or after
    ``GatePolicy.wake_at()`` (a decision that falls due on time alone, e.g. a re-alert when
    the gate sits idle behind a block nobody has repaired)."""

    now: float = 0.0


Event = StagingUpdated | RunFinished | PoolAvailable | PoolUnavailable | Promoted | Tick


# ---------------------------------------------------------------- actions (policy -> driver)


@dataclass(frozen=True)
class StartRun:
    """Run the BVT of ``commit`` on ``pool``. ``tests``: restrict to these tests (bisection
    of a known failure), or None for the whole suite."""

    run_id: str
    commit: str
    pool: str
    kind: RunKind
    tests: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CancelRun:
    run_id: str
    reason: str = ""


@dataclass(frozen=True)
class Promote:
    """Fast-forward master to ``commit`` with a plain push (never forced)."""

    commit: str


@dataclass(frozen=True)
class Blame:
    """``commit`` is the confirmed culprit: its failure reproduced and its parent passed."""

    commit: str
    author: str
    failed_tests: tuple[str, ...]
    run_ids: tuple[str, ...]


@dataclass(frozen=True)
class RecordFlake:
    """A failure of ``tests`` at ``commit`` did not reproduce: a flake, not the commit's fault.
    ``pool``: where the failing run ran (a pool whose failures others keep not reproducing is
    broken: workers/health.py)."""

    commit: str
    tests: tuple[str, ...]
    run_id: str
    pool: str = ""


@dataclass(frozen=True)
class Revert:
    """culprit_action=revert: push a revert of ``commit`` to staging, authored by the gate."""

    commit: str


@dataclass(frozen=True)
class Alert:
    """Something a human must know: master moved outside the gate, staging force-pushed,
    promotion rejected, retries exhausted on infrastructure, a blamed culprit's tests still
    failing on newer tips. ``commit``: the (highest) commit the alert is about, "" if none."""

    kind: str
    message: str
    commit: str = ""


Action = StartRun | CancelRun | Promote | Blame | RecordFlake | Revert | Alert


# ---------------------------------------------------------------- the view (policy -> UI)
#
# GatePolicy.view() returns a JSON-serialisable dict the dashboard renders, with keys:
#   master: sha                      staging: sha (tip) or master
#   candidates: [{"commit", "author", "status"}]   status in
#        "untested" | "testing" | "passed" | "failed" | "culprit" | "promoted" | "blocked"
#   interval: {"good": sha|None, "bad": sha|None}  the current bisect interval (or None)
#   runs: [{"run_id", "commit", "pool", "kind", "tests"}]              in-flight runs
#   results: {sha: [{"run_id", "outcome", "failed_tests", "kind"}]}     every known result
#   culprits: [{"commit", "author", "failed_tests", "run_ids"}]
#   flakes: [{"commit", "tests", "run_id"}]
#   learned: {"on", "runs", "flakes", "rate", "target", "distrusted": [test]}  the learned flake
#        rates of runs restricted to the failing tests (absent in views before round 13)
#   pools: {name: {"state": "idle"|"busy"|"unavailable", "run_id", "commit", "reason",
#                  "cause": one of POOL_CAUSES while unavailable, else None}}
#   promotions: [{"commit", "ok", "reason"}]
#   alerts: [{"kind", "message", "commit", "at"}]   ("commit", "at" absent in states saved
#        before them; "at": the events' clock when it was raised, epoch seconds in the scheduler)
#   halted: bool                     promotion stopped (master moved outside the gate, ...)
#   blocked: {"from": sha, "to": sha, "tests": [...]} | None   commits held behind blamed
#        culprits (from the first one still on staging) until a revert or fix passes
