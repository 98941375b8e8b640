"""The simulator: git, k pools and BVT outcomes on a virtual clock, driving one gate policy.

What it plays:

* **git**: staging holds the trace commits in arrival order (a commit's sha is its trace id);
  master is an index into staging. A run of commit ``c`` tests the tree at ``c`` (every
  staging commit up to it). When a commit is blamed (or the policy emits ``Revert``), the
  developers' answer is modelled as a revert commit ``revert-<id>@<parent>`` pushed to the staging tip
  after ``revert_delay_hours`` (default 0: at once): content from the revert on no longer
  contains that culprit.
* **developers answering alerts**: an ``Alert`` saying a human is needed (``HUMAN_ALERTS``:
  a masked culprit, tests still failing after a blame, an inherited failure, master broken,
  retries exhausted ...) names the commit it is about (``Alert.commit``); ``fix_delay_hours``
  later (default 2 h) a developer pushes one fix commit to the staging tip repairing every
  culprit actually present in that commit's tree and not yet fixed or reverted (the simulator
  knows the truth, like a developer who debugs it; a no-op commit when that tree holds none:
  the failures were flaky, and the push re-triggers the queue). This is how ``hold`` mode
  works in practice; without it a stall blocks the queue to the end.
* **BVT runs**: a run fails when its content holds a culprit not yet fixed (a test filter
  does not change that), else it flakes with probability f; it ends inconclusive with
  probability ``infra_rate``. Duration and draws come from :mod:`.crn` with the key
  (seed, exact content = sha, attempt#), so all policies see the same luck. A run restricted
  to some tests (``StartRun.tests``, the gate's bisection/confirmation runs) takes the fixed
  setup share of its full draw (``setup_fraction``: provisioning + build + zone deployment)
  plus the test share scaled by the tests it runs out of the suite's (:meth:`Simulator.duration`).
* **checks**: every ``Promote`` is legal only to a commit whose exact content passed a
  finished run; violations are counted (and executed, so breakage shows too).
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.gate_sim import crn
from bench.gate_sim.trace import HOUR, Commit
from schedulers.events import (
    Alert,
    Blame,
    CancelRun,
    PoolAvailable,
    Promote,
    Promoted,
    RecordFlake,
    Revert,
    RunFinished,
    StagingUpdated,
    StartRun,
    Tick,
)

SUITE = tuple(f"test_{n:02d}" for n in range(40))  # BVT test names for failing-test reports
BASE = "base"  # the master commit every trace starts from
REVERT_PREFIX = "revert-"
FIX_PREFIX = "fix-"
# alert kinds after which a human acts (schedulers/policy.py emits them when the gate cannot
# isolate or blame by itself)
HUMAN_ALERTS = frozenset(
    {
        "culprit-masked",
        "inherited-failure",
        "master-broken",
        "retries-exhausted",
        "still-failing",
        "unknown-failure-behind-culprit",
    }
)


def revert_sha(culprit: str, parent: str) -> str:
    """The revert of ``culprit`` pushed on top of ``parent`` (unique per content, as in git)."""
    return f"{REVERT_PREFIX}{culprit}@{parent}"


def reverted_by(sha: str) -> str | None:
    """The commit a revert sha undoes, or None for other commits."""
    return sha[len(REVERT_PREFIX) :].split("@", 1)[0] if sha.startswith(REVERT_PREFIX) else None


class SimError(RuntimeError):
    """The policy broke the driver protocol (e.g. started a run on a busy pool)."""


@dataclass(frozen=True)
class Scenario:
    """The world a policy is simulated in (times in hours)."""

    pools: int = 3
    bvt_hours: tuple[float, float] = (1.0, 3.0)
    flake_rate: float = 0.02
    infra_rate: float = 0.0
    revert_delay_hours: float = 0.0  # blame -> revert of the blamed commit
    fix_delay_hours: float = 2.0  # human alert -> a developer's fix of the culprits it is about
    horizon_hours: float = 24 * 60  # simulate at most this long after the last arrival
    # share of a full BVT that does not depend on the tests run (provisioning + build + zone
    # deployment); a run restricted to m of the suite's tests takes setup + (1 - setup) m/|suite|
    setup_fraction: float = 0.4
    # how a run restricted to some tests flakes (a full run flakes with ``flake_rate`` in both):
    # "run" (the benchmark's model since round 5): with ``flake_rate`` whatever it runs, as if
    # the hunted test carried all the flakiness (pessimistic for the gate's one-test probes);
    # "test": flakiness is a property of each test, spread evenly: a run of m of the suite's
    # N tests flakes with 1 - (1 - flake_rate)^(m/N) (docs/performance.md, round 11)
    flake_model: str = "run"
    # steady state of the gate's learned flake rates (``PolicyConfig.learn_flake_rates``): the
    # gate starts with the restricted-run record it kept over this many earlier traces like the
    # one simulated (same arrivals and culprit positions, other commits, hence other luck), as
    # a lab's gate has months of it; 0: it starts knowing nothing (docs/performance.md round 13)
    history: int = 0

    def __post_init__(self) -> None:
        if self.flake_model not in ("run", "test"):
            raise ValueError(f"flake_model must be 'run' or 'test', got {self.flake_model!r}")
        if self.history < 0:
            raise ValueError(f"history must not be negative, got {self.history}")

    @property
    def mean_bvt_hours(self) -> float:
        return sum(self.bvt_hours) / 2

    @property
    def pool_names(self) -> list[str]:
        return [f"pool{i + 1}" for i in range(self.pools)]


@dataclass
class Run:
    run_id: str
    commit: str
    pool: str
    kind: str
    start: float
    end: float
    outcome: str
    failed_tests: tuple[str, ...]
    culprits: tuple[str, ...]
    cancelled_at: float | None = None


@dataclass
class SimResult:
    """Raw outcome of one simulation (one policy, one seed); times in hours."""

    policy: str
    seed: int
    n_commits: int
    n_culprits: int
    promoted: int = 0
    runs: int = 0
    cancelled_runs: int = 0
    pool_hours: float = 0.0
    latencies: list[float] = field(default_factory=list)
    latency_by_arrival: list[tuple[float, float]] = field(default_factory=list)
    unpromoted: int = 0
    ttc: list[float] = field(default_factory=list)
    ttc_batch: list[int] = field(default_factory=list)
    culprits_blamed: int = 0
    culprits_missed: int = 0
    false_rejections: int = 0  # innocent trace commits blamed, plus reverts blamed
    innocent: int = 0  # innocent trace commits, plus the reverts pushed
    reverts_blamed: int = 0  # a revert's failures were all flakes (never reverted back)
    illegal_promotions: int = 0
    master_breakage: int = 0
    flakes_recorded: int = 0
    alerts: int = 0
    human_fixes: int = 0  # culprits fixed by a developer after an alert (not blamed by the gate)
    end_time: float = 0.0
    error: str | None = None
    wall_seconds: float = 0.0
    violations: list[str] = field(default_factory=list)


class Simulator:
    """Drive ``policy`` (anything with ``handle(event) -> list[Action]``) over ``trace``."""

    def __init__(self, trace: list[Commit], scenario: Scenario, policy, seed: int, name: str = "policy"):
        self.trace = trace
        self.sc = scenario
        self.policy = policy
        self.seed = seed
        self.name = name
        self.flake_rate = 0.0 if getattr(policy, "flake_free", False) else scenario.flake_rate
        self.staging: list[str] = []
        self.index: dict[str, int] = {BASE: -1}
        self.arrival: dict[str, float] = {}
        self.authors: dict[str, str] = {}
        self.trace_by_id = {c.id: c for c in trace}
        self.culprit_idx: dict[str, int] = {}
        self.fixed_at: dict[str, int] = {}
        self.master = -1
        self.promoted_at: dict[str, float] = {}
        self.runs: dict[str, Run] = {}
        self.pools: dict[str, str | None] = dict.fromkeys(scenario.pool_names)
        self.attempts: dict[str, int] = {}
        self.passed: set[str] = set()
        self.blamed: dict[str, float] = {}
        self.reverted: set[str] = set()
        self.human_fixed: set[str] = set()
        self.first_fail: dict[str, tuple[float, int]] = {}
        self.now = 0.0
        self._heap: list = []
        self._ticks: set[float] = set()  # wake-up times the policy asked for, not yet reached
        self._seq = itertools.count()
        self.res = SimResult(name, seed, len(trace), sum(c.is_culprit for c in trace))

    # ------------------------------------------------------------------ git
    def _candidates(self) -> tuple[str, ...]:
        return tuple(self.staging[self.master + 1 :])

    def _master_sha(self) -> str:
        return self.staging[self.master] if self.master >= 0 else BASE

    def _push(self, sha: str, author: str) -> None:
        self.index[sha] = len(self.staging)
        self.staging.append(sha)
        self.arrival[sha] = self.now
        self.authors[sha] = author

    def _staging_event(self) -> StagingUpdated:
        cands = self._candidates()
        return StagingUpdated(
            master=self._master_sha(),
            commits=cands,
            authors={c: self.authors[c] for c in cands},
            now=self.now,
        )

    def _culprits_in(self, sha: str) -> tuple[str, ...]:
        """Culprits in the tree at ``sha`` that no commit up to it fixes."""
        i = self.index[sha]
        return tuple(
            c for c, ci in self.culprit_idx.items() if ci <= i and self.fixed_at.get(c, math.inf) > i
        )

    # ------------------------------------------------------------------ clock
    def _at(self, t: float, kind: str, payload) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    def run(self) -> SimResult:
        """Simulate to the end (or the horizon) and return the raw result."""
        t0 = time.perf_counter()
        try:
            for c in self.trace:
                self._at(c.arrival_ts / HOUR, "arrive", c)
            for pool in self.pools:
                self._feed(PoolAvailable(pool, now=0.0))
            horizon = (self.trace[-1].arrival_ts / HOUR) + self.sc.horizon_hours
            while self._heap:
                t, _, kind, payload = heapq.heappop(self._heap)
                if t > horizon:
                    self.res.violations.append(f"stopped at the horizon ({self.sc.horizon_hours:.0f} h)")
                    break
                self.now = t
                if kind == "arrive":
                    self._arrive(payload)
                elif kind == "revert":
                    for ev in self._revert(payload):
                        self._feed(ev)
                elif kind == "fix":
                    for ev in self._human_fix(payload):
                        self._feed(ev)
                elif kind == "end":
                    self._end(payload)
                elif kind == "tick":
                    self._ticks.discard(t)
                    self._feed(Tick(now=t))
        except Exception as e:  # a crashing policy is a result, not a crash of the benchmark
            self.res.error = f"{type(e).__name__} at t={self.now:.2f} h: {e}"
        self._finish()
        self.res.wall_seconds = time.perf_counter() - t0
        return self.res

    # ------------------------------------------------------------------ events
    def _arrive(self, c: Commit) -> None:
        self._push(c.id, f"dev{int(crn.uniform(0, 'author', c.id) * 7)}@example.org")
        if c.is_culprit:
            self.culprit_idx[c.id] = self.index[c.id]
        if c.fixes and c.fixes in self.trace_by_id:
            self.fixed_at.setdefault(c.fixes, self.index[c.id])
        self._feed(self._staging_event())

    def _revert(self, culprit: str) -> list:
        sha = revert_sha(culprit, self.staging[-1])  # like git: a new sha per parent
        if sha in self.index:
            return []
        self._push(sha, "qacloud-gate")
        self.fixed_at.setdefault(culprit, self.index[sha])
        return [self._staging_event()]

    def _end(self, run_id: str) -> None:
        run = self.runs[run_id]
        if run.cancelled_at is not None:
            return
        self.pools[run.pool] = None
        self.res.pool_hours += run.end - run.start
        if run.outcome == "pass":
            self.passed.add(run.commit)
        elif run.outcome == "fail":
            n = len(self._candidates())
            for c in run.culprits:
                self.first_fail.setdefault(c, (self.now, n))
        self._feed(
            RunFinished(
                run_id,
                run.outcome,  # type: ignore[arg-type]
                run.failed_tests,
                reason=f"BMC of {run.pool}-kvm1 did not answer" if run.outcome == "inconclusive" else "",
                now=self.now,
            )
        )

    def _feed(self, event) -> None:
        queue = [event]
        while queue:
            ev = queue.pop(0)
            for action in self.policy.handle(ev) or []:
                queue.extend(self._apply(action))
        # the policy's timer (like the scheduler's periodic check): tick when it asks
        wake = self.policy.wake_at() if hasattr(self.policy, "wake_at") else None
        if wake is not None and wake > self.now and wake not in self._ticks:
            self._ticks.add(wake)
            self._at(wake, "tick", None)

    # ------------------------------------------------------------------ actions
    def _apply(self, a) -> list:
        if isinstance(a, StartRun):
            return self._start(a)
        if isinstance(a, CancelRun):
            run = self.runs.get(a.run_id)
            if run is None:
                raise SimError(f"CancelRun of unknown run {a.run_id!r}")
            if run.cancelled_at is None and run.end > self.now:
                run.cancelled_at = self.now
                self.pools[run.pool] = None
                self.res.cancelled_runs += 1
                self.res.pool_hours += self.now - run.start
            return []
        if isinstance(a, Promote):
            return self._promote(a.commit)
        if isinstance(a, Blame):
            return self._blame(a.commit)
        if isinstance(a, Revert):
            return self._schedule_revert(a.commit, 0.0)
        if isinstance(a, RecordFlake):
            self.res.flakes_recorded += 1
            return []
        if isinstance(a, Alert):
            self.res.alerts += 1
            if a.kind in HUMAN_ALERTS:
                self._schedule_human_fix(a)
            return []
        raise SimError(f"unknown action {a!r}")

    def _start(self, a: StartRun) -> list:
        if a.pool not in self.pools:
            raise SimError(f"StartRun {a.run_id} on unknown pool {a.pool!r}")
        if self.pools[a.pool] is not None:
            raise SimError(f"StartRun {a.run_id} on pool {a.pool} busy with run {self.pools[a.pool]}")
        if a.commit not in self.index or a.commit == BASE:
            raise SimError(f"StartRun {a.run_id} of unknown commit {a.commit!r}")
        if a.run_id in self.runs:
            raise SimError(f"StartRun reuses run id {a.run_id!r}")
        attempt = self.attempts.get(a.commit, 0)
        self.attempts[a.commit] = attempt + 1
        duration = self.duration(a.commit, attempt, a.tests)
        culprits = self._culprits_in(a.commit)
        broken = {SUITE[int(crn.uniform(0, "test", c) * len(SUITE))] for c in culprits}
        if a.tests:  # a filtered run runs, and so can fail, only its own tests
            broken &= set(a.tests)
        failed: tuple[str, ...] = ()
        if crn.uniform(self.seed, "infra", a.commit, attempt) < self.sc.infra_rate:
            outcome = "inconclusive"
        elif broken:
            outcome = "fail"
            failed = tuple(sorted(broken))
        elif crn.uniform(self.seed, "flake", a.commit, attempt) < self.flake_chance(a.tests):
            outcome = "fail"
            pick = a.tests or SUITE  # a filtered run can only flake on a test it ran
            failed = (pick[int(crn.uniform(self.seed, "flaky-test", a.commit, attempt) * len(pick))],)
        else:
            outcome = "pass"
        run = Run(
            a.run_id, a.commit, a.pool, a.kind, self.now, self.now + duration, outcome, failed, culprits
        )
        self.runs[a.run_id] = run
        self.pools[a.pool] = a.run_id
        self.res.runs += 1
        self._at(run.end, "end", a.run_id)
        return []

    def flake_chance(self, tests: tuple[str, ...] | None) -> float:
        """The chance a clean run of ``tests`` (None: the whole suite) fails spuriously."""
        if tests is None or self.sc.flake_model == "run":
            return self.flake_rate
        share = len(set(tests) & set(SUITE)) / len(SUITE)
        return 1 - (1 - self.flake_rate) ** share

    def duration(self, sha: str, attempt: int, tests: tuple[str, ...] | None) -> float:
        """Hours a run of ``sha`` takes: the full BVT's CRN draw, scaled for a filtered run to
        the fixed setup part plus the share of the suite it runs (same draw: CRN kept)."""
        lo, hi = self.sc.bvt_hours
        full = lo + (hi - lo) * crn.uniform(self.seed, "duration", sha, attempt)
        if tests is None:
            return full
        share = len(set(tests) & set(SUITE)) / len(SUITE)
        return full * (self.sc.setup_fraction + (1 - self.sc.setup_fraction) * share)

    def _promote(self, sha: str) -> list:
        i = self.index.get(sha)
        if i is None or sha == BASE:
            raise SimError(f"Promote of unknown commit {sha!r}")
        if i < self.master:
            return [Promoted(sha, ok=False, reason="rejected: not a fast-forward of master", now=self.now)]
        if sha not in self.passed:
            self.res.illegal_promotions += 1
            self.res.violations.append(f"t={self.now:.2f} h: promoted {sha} without a finished passing run")
        if self._culprits_in(sha):
            self.res.master_breakage += 1
            self.res.violations.append(
                f"t={self.now:.2f} h: master broken by {sha} ({self._culprits_in(sha)})"
            )
        for c in self.staging[self.master + 1 : i + 1]:
            self.promoted_at[c] = self.now
        self.master = i
        return [Promoted(sha, ok=True, now=self.now), self._staging_event()]

    def _blame(self, sha: str) -> list:
        if sha not in self.index or sha == BASE:
            raise SimError(f"Blame of unknown commit {sha!r}")
        if sha in self.blamed:
            return []
        self.blamed[sha] = self.now
        if sha.startswith(REVERT_PREFIX):  # innocent by construction: its failures were flakes
            self.res.reverts_blamed += 1  # a false rejection; nobody reverts a revert
            return []
        return self._schedule_revert(sha, self.sc.revert_delay_hours)

    def _schedule_revert(self, sha: str, delay: float) -> list:
        if sha in self.reverted or sha.startswith(REVERT_PREFIX) or self.index.get(sha, -1) <= self.master:
            return []
        self.reverted.add(sha)
        if delay <= 0:
            return self._revert(sha)
        self._at(self.now + delay, "revert", sha)
        return []

    def _alerted_commit(self, message: str) -> str | None:
        """The highest staging commit an alert message names (the policy shortens shas to 12
        characters, so a name may be a prefix)."""
        best = None
        for token in re.findall(r"[\w@.-]+", message):
            token = token.rstrip(".")
            if token in self.index and token != BASE:
                hits = [token]
            elif len(token) == 12:
                hits = [c for c in self.staging[-400:] if c.startswith(token)]
            else:
                hits = []
            for c in hits:
                if best is None or self.index[c] > self.index[best]:
                    best = c
        return best

    def _schedule_human_fix(self, a: Alert) -> None:
        """A developer debugs the alert: ``fix_delay_hours`` later, one commit fixing every
        culprit in the tree of the commit it names (``Alert.commit``; the message only as a
        fallback for policies that do not set it)."""
        sha = a.commit if a.commit in self.index and a.commit != BASE else self._alerted_commit(a.message)
        if sha is None:
            return
        live = self._culprits_in(sha)
        todo = tuple(c for c in live if c not in self.human_fixed and c not in self.reverted)
        if todo or not live:  # nothing broken there (flaky failures): a no-op push re-triggers the queue
            self.human_fixed.update(todo)
            self._at(self.now + self.sc.fix_delay_hours, "fix", todo)

    def _human_fix(self, culprits: tuple[str, ...]) -> list:
        todo = [c for c in culprits if c not in self.fixed_at]  # not fixed meanwhile (revert, trace fix)
        if culprits and not todo:
            return []
        self._push(f"{FIX_PREFIX}{'+'.join(todo) or 'none'}@{self.staging[-1]}", "developer@example.org")
        for c in todo:
            self.fixed_at[c] = len(self.staging) - 1
        self.res.human_fixes += len(todo)
        return [self._staging_event()]

    # ------------------------------------------------------------------ metrics
    def _finish(self) -> None:
        r = self.res
        r.end_time = self.now
        end = self.now
        r.innocent += sum(1 for c in self.staging if c.startswith(REVERT_PREFIX))
        r.false_rejections += r.reverts_blamed
        for c in self.trace:
            arrival = c.arrival_ts / HOUR
            if c.is_culprit:
                if c.id in self.blamed:
                    r.culprits_blamed += 1
                    if c.id in self.first_fail:
                        t, n = self.first_fail[c.id]
                        r.ttc.append(max(0.0, self.blamed[c.id] - t))
                        r.ttc_batch.append(n)
                elif c.id not in self.fixed_at:
                    r.culprits_missed += 1
                continue
            r.innocent += 1
            if c.id in self.blamed:
                r.false_rejections += 1
            elif c.id in self.promoted_at:
                r.promoted += 1
                lat = self.promoted_at[c.id] - arrival
                r.latencies.append(lat)
                r.latency_by_arrival.append((arrival, lat))
            else:
                r.unpromoted += 1
                r.latency_by_arrival.append((arrival, max(0.0, end - arrival)))


def simulate(
    trace: list[Commit],
    scenario: Scenario,
    make_policy: Callable[[Scenario, list[Commit]], object],
    seed: int,
    name: str,
) -> SimResult:
    """One simulation of the policy built by ``make_policy(scenario, trace)``."""
    try:
        policy = make_policy(scenario, trace)
    except Exception as e:
        res = SimResult(name, seed, len(trace), sum(c.is_culprit for c in trace))
        res.error = f"could not build policy {name!r}: {type(e).__name__}: {e}"
        return res
    return Simulator(trace, scenario, policy, seed, name).run()
