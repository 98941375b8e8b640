"""Reference policies (the anchors of ../shared/notes/gating.md §7.1) and the policy registry.

Each is written from the anchor's documented behaviour against the same event/action
vocabulary as the project's gate, so every policy runs through one simulator:

* ``R0`` serial: one commit per run, one pool (original bors / homu).
* ``R1`` bors-ng as coded: one batch at a time, a failed batch is halved and *both* halves
  re-run one after the other, no retry (a flaky one-commit batch is rejected). Timeouts are
  failures in bors-ng; its 1 h default would fail every BVT, so the timeout is taken as raised
  above the longest BVT (as nix-rust did), i.e. it never fires here.
* ``R2`` per-commit speculative window W = k (Zuul dependent pipeline, GitHub merge queue):
  every commit gets its own nested run; a failure at the head is rejected, no retry.
* ``R3`` Mergify: stacked batches; a failed head batch is cut into k+1 parts tested at once
  as nested prefixes; the known-failing top is never re-tested; no confirmation.
* ``oracle``: knows the culprits (blamed for free on arrival), no flakes, starts a run of the
  tip whenever a pool is free: the latency floor.
* ``qacloud``: ``schedulers.policy.GatePolicy`` itself.

Staging model shared with the gate: after a commit is blamed, the developers push a revert
(``revert-<sha>``) to the tip; the commits between the culprit and its revert contain it, so
they can only be tested (and promoted) together with the revert: the reference policies treat
such a span as one *item*. A span that fails holds another culprit the references cannot
isolate (every tree in it holds the blamed one, and they see only pass/fail): after
``SPAN_RUNS`` failures (the first may be a flake) they ask the developers with an ``Alert``
naming the span's top, as the gate does, and the span stays one item until a developer's fix
(``fix-...``) lands.
(Round 4 blamed the span's first innocent commit instead, which cascaded into reverting
innocents once spans grew under load.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from bench.gate_sim.sim import FIX_PREFIX, REVERT_PREFIX, Scenario, reverted_by
from bench.gate_sim.trace import Commit
from schedulers.events import (
    Alert,
    Blame,
    CancelRun,
    PoolAvailable,
    Promote,
    Promoted,
    RunFinished,
    StagingUpdated,
    StartRun,
)

Item = tuple[str, ...]
SPAN_RUNS = 2  # failures of a span item before alerting (the first may be a flake)


class RefPolicy:
    """Shared bookkeeping: candidates grouped into items, pools, runs and promotion."""

    flake_free = False

    def __init__(self, pools: list[str]):
        self.all_pools = list(pools)
        self.idle: list[str] = []
        self.master = ""
        self.candidates: tuple[str, ...] = ()
        self.blamed: set[str] = set()
        self.runs: dict[str, tuple[str, str]] = {}  # run_id -> (commit, pool)
        self.results: dict[str, str] = {}  # commit -> last outcome
        self.promoting: str | None = None
        self._next = 0
        self.out: list = []
        self.span_fails: dict[str, int] = {}  # top of a failing span item -> its failures
        self.alerted: dict[str, str] = {}  # span start -> staging tip when alerted (open until a fix)

    # ---------------------------------------------------------------- protocol
    def handle(self, ev) -> list:
        self.out = []
        if isinstance(ev, PoolAvailable):
            if ev.pool not in self.idle:
                self.idle.append(ev.pool)
        elif isinstance(ev, StagingUpdated):
            self.master, self.candidates = ev.master, ev.commits
            self.on_staging()
        elif isinstance(ev, Promoted):
            self.promoting = None
            if ev.ok:
                self.master = ev.commit
                if ev.commit in self.candidates:
                    self.candidates = self.candidates[self.candidates.index(ev.commit) + 1 :]
        elif isinstance(ev, RunFinished):
            run = self.runs.pop(ev.run_id, None)
            if run is not None:
                commit, pool = run
                self.idle.append(pool)
                self.results[commit] = ev.outcome
                self.on_result(ev.run_id, commit, ev.outcome)
        self.plan()
        return self.out

    def on_staging(self) -> None:
        """Hook: staging or master changed."""

    def on_result(self, run_id: str, commit: str, outcome: str) -> None:
        """Hook: a run finished."""

    def plan(self) -> None:
        """Hook: decide what to start, promote or blame."""

    # ---------------------------------------------------------------- helpers
    def items(self) -> list[Item]:
        """Candidates grouped into testable items; a trailing span waiting for a revert (or,
        once alerted, for a developer's fix pushed after the alert) is left out."""
        items: list[Item] = []
        pending: list[str] = []
        open_: set[str] = set()
        waiting: set[str] = set()  # alerted spans: closed by a fix pushed after the alert
        pos = {c: i for i, c in enumerate(self.candidates)}
        for i, c in enumerate(self.candidates):
            pending.append(c)
            if c in self.blamed:
                open_.add(c)
                if c in self.alerted:
                    waiting.add(c)
            elif c.startswith(REVERT_PREFIX):
                open_.discard(reverted_by(c))
            elif c.startswith(FIX_PREFIX):
                waiting = {w for w in waiting if pos.get(self.alerted[w], -1) >= i}
            if not open_ and not waiting:
                items.append(tuple(pending))
                pending = []
        return items

    def start(self, commit: str, kind: str = "tip") -> str | None:
        if not self.idle:
            return None
        pool = self.idle.pop(0)
        self._next += 1
        rid = f"{type(self).__name__}-{self._next}"
        self.runs[rid] = (commit, pool)
        self.out.append(StartRun(rid, commit, pool, kind))  # type: ignore[arg-type]
        return rid

    def cancel(self, rid: str) -> None:
        _commit, pool = self.runs.pop(rid)
        self.idle.append(pool)
        self.out.append(CancelRun(rid, "superseded"))

    def in_flight(self, commit: str) -> bool:
        return any(c == commit for c, _ in self.runs.values())

    def promote(self, commit: str) -> None:
        if self.promoting is None and commit in self.candidates:
            self.promoting = commit
            self.out.append(Promote(commit))

    def blame_item(self, item: Item) -> bool:
        """Blame the item's first commit that is neither blamed nor a revert; False if none.
        A failing span (it starts with a blamed commit) is re-run, then alerted."""
        if item[0] in self.blamed:
            n = self.span_fails[item[-1]] = self.span_fails.get(item[-1], 0) + 1
            if n == SPAN_RUNS:
                self.alerted[item[0]] = self.candidates[-1]
                self.out.append(
                    Alert("still-failing", f"{item[0]}..{item[-1]} fails behind a blamed commit", item[-1])
                )
            return n >= SPAN_RUNS
        for c in item:
            if c not in self.blamed and not c.startswith(REVERT_PREFIX):
                self.blamed.add(c)
                self.out.append(Blame(c, "", (), ()))
                return True
        return False


class Serial(RefPolicy):
    """R0: one commit at a time on one pool."""

    def plan(self) -> None:
        if self.runs or self.promoting:
            return
        items = self.items()
        if not items:
            return
        tip = items[0][-1]
        outcome = self.results.pop(tip, None)
        if outcome == "pass":
            self.promote(tip)
        elif outcome == "fail" and self.blame_item(items[0]):
            pass
        elif self.all_pools[0] in self.idle:
            self.idle = [self.all_pools[0]]  # one pool only
            self.start(tip)


class BorsNg(RefPolicy):
    """R1: one running batch; halve a failed batch and test both halves in turn."""

    def __init__(self, pools: list[str]):
        super().__init__(pools)
        self.batches: list[list[str]] = []  # FIFO of item tips; the head is next to run
        self.current: tuple[str, list[str]] | None = None  # (run id, batch)

    def plan(self) -> None:
        if self.current is not None or self.promoting:
            return
        tips = [it[-1] for it in self.items()]
        known = set(tips)
        self.batches = [[t for t in b if t in known] for b in self.batches]
        self.batches = [b for b in self.batches if b]
        queued = {t for b in self.batches for t in b}
        new = [t for t in tips if t not in queued]
        if new:
            self.batches.append(new)  # the waiting batch collecting new approvals
        if self.batches and self.idle:
            batch = self.batches[0]
            rid = self.start(batch[-1], "tip")
            self.current = (rid, batch) if rid else None

    def on_result(self, run_id: str, commit: str, outcome: str) -> None:
        if self.current is None or self.current[0] != run_id:
            return
        batch = self.current[1]
        self.current = None
        self.batches.pop(0)
        if outcome == "pass":
            self.promote(commit)
        elif outcome == "fail" and len(batch) == 1:
            item = next((it for it in self.items() if it[-1] == batch[0]), (batch[0],))
            if not self.blame_item(item):
                self.batches.insert(0, batch)  # a lone revert: run it again
        else:  # fail (or inconclusive, which bors also treats as a failure): halve
            half = len(batch) // 2 if len(batch) > 1 else 1
            self.batches[0:0] = [batch[:half], batch[half:]] if len(batch) > 1 else [batch]


class Speculative(RefPolicy):
    """R2: per-commit nested runs in a window of W = k items; the head's failure is rejected."""

    def plan(self) -> None:
        if self.promoting:
            return
        items = self.items()
        if not items:
            return
        # promote the longest passing run of items from the head
        best = None
        for it in items:
            if self.results.get(it[-1]) == "pass":
                best = it[-1]
            else:
                break
        if best:
            self.promote(best)
            return
        head = items[0]
        if self.results.get(head[-1]) == "fail":
            self.results.pop(head[-1])
            for rid in list(self.runs):
                self.cancel(rid)
            if self.blame_item(head):
                return  # the revert that follows re-plans
            # a lone revert failed: it is simply re-run below
        window = items[: len(self.all_pools)]
        failed_at = next((i for i, it in enumerate(window) if self.results.get(it[-1]) == "fail"), None)
        if failed_at is not None:  # wait for the items ahead; what is behind contains the failure
            behind = {it[-1] for it in window[failed_at + 1 :]}
            for rid, (c, _) in list(self.runs.items()):
                if c in behind:
                    self.cancel(rid)
            window = window[:failed_at]
        for it in window:
            if it[-1] not in self.results and not self.in_flight(it[-1]):
                if self.start(it[-1], "speculate") is None:
                    break


class Mergify(RefPolicy):
    """R3: stacked batches; (k+1)-ary prefix search of a failed head batch, no re-test, no confirmation."""

    batch_max = 16

    def __init__(self, pools: list[str]):
        super().__init__(pools)
        self.batches: list[list[str]] = []  # stacked batches of item tips, head first
        self.search: list[str] | None = None  # the failed head batch being searched

    def plan(self) -> None:
        if self.promoting:
            return
        tips = [it[-1] for it in self.items()]
        known = set(tips)
        if self.search is not None:
            self.search = [t for t in self.search if t in known] or None
        self.batches = [b for b in ([t for t in b if t in known] for b in self.batches) if b]
        if self.search is not None:
            self._search_round()
            return
        if self.batches and self.results.get(self.batches[0][-1]) == "pass":
            self.promote(self.batches.pop(0)[-1])
            return
        if self.batches and self.results.get(self.batches[0][-1]) == "fail":
            head = self.batches.pop(0)
            for rid in list(self.runs):
                self.cancel(rid)
            for b in self.batches:
                self.results.pop(b[-1], None)
            self.batches = []  # the batches behind go back to the queue
            if len(head) == 1:
                if not self._blame_tip(head[-1]):
                    self.results.pop(head[-1], None)
                    self.plan()  # a failing span: run it once more (the failure may be a flake)
            else:
                self.search = head
                self._search_round()
            return
        queued = {t for b in self.batches for t in b}
        new = [t for t in tips if t not in queued]
        while new and self.idle and len(self.batches) < len(self.all_pools):
            batch, new = new[: self.batch_max], new[self.batch_max :]
            self.batches.append(batch)
            self.results.pop(batch[-1], None)
            self.start(batch[-1], "tip")
        for b in self.batches:  # restart stacked batches whose runs were cancelled
            if b[-1] not in self.results and not self.in_flight(b[-1]) and self.start(b[-1], "tip") is None:
                break

    def _blame_tip(self, tip: str) -> bool:
        item = next((it for it in self.items() if it[-1] == tip), (tip,))
        return self.blame_item(item)

    def _search_round(self) -> None:
        part = self.search
        assert part is not None
        if self.runs:
            return  # the round is still running
        # results of the last round: promote the longest passing prefix, narrow to the first failure
        last_pass = -1
        for i, t in enumerate(part[:-1]):
            if self.results.get(t) == "pass":
                last_pass = i
            elif self.results.get(t) == "fail":
                break
        first_fail = next((i for i, t in enumerate(part) if self.results.get(t) == "fail"), len(part) - 1)
        if first_fail <= last_pass:
            first_fail = len(part) - 1
        if last_pass >= 0:
            self.promote(part[last_pass])
        part = part[last_pass + 1 : first_fail + 1]
        for t in part[:-1]:
            self.results.pop(t, None)
        if len(part) == 1:  # every prefix below passed: the top is the culprit, never re-tested
            self.search = None
            self.results.pop(part[0], None)
            if not self._blame_tip(part[0]):
                self.plan()  # a failing span: run it once more
            return
        self.search = part
        if last_pass >= 0:
            return  # wait for the promotion before the next round
        n, k = len(part), len(self.all_pools)
        if n - 1 <= k:
            points = list(range(n - 1))
        else:
            points = sorted({min(n - 2, max(0, round(n * j / (k + 1)) - 1)) for j in range(1, k + 1)})
        for p in points:
            self.start(part[p], "bisect")


class Oracle(RefPolicy):
    """O: culprits blamed for free on arrival, no flakes, a tip run whenever a pool is free."""

    flake_free = True

    def __init__(self, pools: list[str], culprits: set[str]):
        super().__init__(pools)
        self.culprits = culprits

    def on_staging(self) -> None:
        for c in self.candidates:
            if c in self.culprits and c not in self.blamed:
                self.blamed.add(c)
                self.out.append(Blame(c, "", (), ()))

    def plan(self) -> None:
        if self.promoting:
            return
        items = self.items()
        passed = [it[-1] for it in items if self.results.get(it[-1]) == "pass"]
        if passed:
            self.promote(passed[-1])
            return
        if not items:
            return
        tip = items[-1][-1]
        if not self.in_flight(tip) and tip not in self.results:
            self.start(tip, "tip")


def qacloud_policy(scenario: Scenario, trace: list[Commit], **changes):
    """The project's gate, configured as the scheduler would with the default settings, with
    ``PolicyConfig`` fields ``changes`` on top (the breakdown, compare and stress tools)."""
    from master.settings import Gate
    from schedulers.policy import GatePolicy, config_from_settings

    config = dataclasses.replace(config_from_settings(Gate(), scenario.flake_rate or None), **changes)
    policy = GatePolicy(config)
    if scenario.history and config.learn_flake_rates:
        policy.learn_from(_flake_history(scenario, trace, config))
    return policy


def _flake_history(scenario: Scenario, trace: list[Commit], config) -> dict:
    """The restricted-run record a gate with ``config`` kept over ``scenario.history`` earlier
    traces shaped like ``trace``: its commits renamed per trace, so every run draws new luck."""
    from bench.gate_sim.sim import Simulator
    from schedulers.policy import GatePolicy

    history = None
    for n in range(scenario.history):

        def renamed(sha: str | None, n: int = n) -> str | None:
            return None if sha is None else f"h{n}-{sha}"

        earlier = [dataclasses.replace(c, id=renamed(c.id), fixes=renamed(c.fixes)) for c in trace]
        gate = GatePolicy(config)
        if history is not None:
            gate.learn_from(history)
        Simulator(earlier, dataclasses.replace(scenario, history=0), gate, 0, "history").run()
        history = gate.flake_history()
    return history


PolicyFactory = Callable[[Scenario, list[Commit]], object]

POLICIES: dict[str, PolicyFactory] = {
    "R0-serial": lambda sc, tr: Serial(sc.pool_names),
    "R1-bors-ng": lambda sc, tr: BorsNg(sc.pool_names),
    "R2-speculative": lambda sc, tr: Speculative(sc.pool_names),
    "R3-mergify": lambda sc, tr: Mergify(sc.pool_names),
    "qacloud": qacloud_policy,
    "oracle": lambda sc, tr: Oracle(sc.pool_names, {c.id for c in tr if c.is_culprit}),
}
ALIASES = {"R0": "R0-serial", "R1": "R1-bors-ng", "R2": "R2-speculative", "R3": "R3-mergify", "O": "oracle"}


def resolve(name: str) -> list[str]:
    """Policy names for ``name`` (``all``, a full name or an alias); ValueError lists the choices."""
    if name == "all":
        return list(POLICIES)
    out = []
    for part in name.split(","):
        full = ALIASES.get(part.strip(), part.strip())
        if full not in POLICIES:
            raise ValueError(f"unknown policy {part!r}; choose from all, {', '.join(POLICIES)}")
        out.append(full)
    return out


__all__ = ["ALIASES", "POLICIES", "RefPolicy", "resolve"]
