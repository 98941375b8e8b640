"""The gate's decisions: a pure state machine, events in, actions out (no Twisted, git or I/O).

Model. Candidates c_0..c_{n-1} are the first-parent commits of staging after master. A run
tests the tree at one candidate; a pass at c_i justifies promoting c_0..c_i. From the results
known per commit the policy derives, on every event:

* ``good``: the highest candidate shown to pass the whole suite (-1 = master, assumed
  green): a full pass, or a filtered pass with the other tests shown passing above it;
* ``bad``: the lowest candidate above ``good`` with a failing run (None: no known failure).

Then it plans: promote ``good``; with no failure, test the tip and let idle pools pre-test
prefix points (speculation; ``batch_load``, on in the default settings: when the load
estimated from the events' clocks makes the gate pool-bound, a new tip run waits for a bigger
batch); with a failure, split (parent, bad) into k+1 parts with the k free pools ((k+1)-ary
prefix search, never re-testing a known result nor the known-failing top; ``parent``: the
highest commit below ``bad`` passing the tests ``bad`` fails, at least ``good``); when
bad = parent + 1 the suspect must fail ``confirmations`` more times before it is blamed; a
pass of the suspect makes its failure a recorded flake.
Inconclusive runs are never evidence: they are retried on another pool, bounded.

After a blame the culprit and every commit above it are *blocked* (their trees contain the
culprit); the policy tests only new tips (a fix or a revert on top) and promotes one that
passes. Everything is O(candidates) per event at worst; usually O(results + runs).
"""

from __future__ import annotations

import copy
import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from schedulers.events import (
    Action,
    Alert,
    Blame,
    CancelRun,
    Event,
    PoolAvailable,
    PoolUnavailable,
    Promote,
    Promoted,
    RecordFlake,
    Revert,
    RunFinished,
    StagingUpdated,
    StartRun,
    Tick,
)

STATE_VERSION = 1
HISTORY = 200  # bounded lists in the state (alerts, flakes, promotions, culprits)
PRIOR_CULPRIT_RATE = 0.05  # share of commits breaking the BVT before any blame is seen
PRIOR_WEIGHT = 20  # ... worth this many commits of observation
SPECULATE_WHEN = 0.5  # speculate when P(the untested batch fails) reaches this
STILL_FAILING_TIPS = 2  # commits after a blame failing its tests before alerting a busy gate
REALERT_TIPS = 3  # commits after an alert failing the same tests before alerting again
REALERT_WAIT_RUNS = 4  # ... or, the gate idle, this many mean full-run times after the alert
FLAKE_PRIOR_RUNS = 10  # learned flake rates: the prior (``prior_flake_rate``) weighs this many runs
DETECT_WHEN = 0.3  # behind a block: test a held tip when P(its new commits hold a culprit) reaches this
LOAD_ARRIVALS = 24  # the load estimate's window: the last this many arrivals on staging ...
LOAD_RUNS = 12  # ... and the last this many finished full runs (their mean duration)


@dataclass(frozen=True)
class PolicyConfig:
    """Knobs of the policy; the scheduler builds it from ``Settings.gate``."""

    confirmations: int = 1  # extra failing runs of the suspect before blaming it
    max_inconclusive_retries: int = 2  # per commit, then Alert and leave it until things change
    bisect_failed_tests_only: bool = True  # bisect/confirm with only the failing tests
    speculate: bool = True  # idle pools pre-test prefix points while the tip is under test
    culprit_action: str = "hold"  # "hold" or "revert"
    cancel_useless_runs: bool = True  # cancel runs whose result can no longer change a decision
    # ... except a tip run above a known failure: it passes if that failure was a flake, and
    # it shows the culprits above it (docs/performance.md, round 9)
    finish_tip_runs: bool = True
    hold_hopeless_tips: bool = True  # behind a block: test a new tip only when it may hold a fix
    overlap_confirmation: bool = True  # spare pools of a bisect round re-run the failing top
    detect_behind_block: bool = True  # behind a block: a held tip with new commits finds the next culprit
    # load-adaptive batching: when the estimated load (arrivals x mean run time / pools)
    # reaches ``batch_load``, a new tip run waits for ``batch_per_load`` x load new commits
    # (or until the oldest waited ``batch_wait`` mean run times); 0: always work-conserving.
    # The settings' default (``gate.batch_load``) is 1.2 (docs/performance.md, round 8).
    batch_load: float = 0.0
    batch_per_load: float = 2.0
    batch_wait: float = 1.0
    # research switch, not a setting (docs/performance.md, round 11): a test that failed at the
    # suspect in a run restricted to the failing tests (a hunt's probe) is confirmed by that
    # failure alone. Sound only if a test run alone flakes far less than the whole suite (flakes
    # a property of each test, none of them notoriously flaky). It stays off: the gate's own
    # estimate of when that holds is ``learn_flake_rates`` below (round 13).
    confirm_on_filtered_failure: bool = False
    # learned flake rates (docs/gate.md "Confirmation"): a test that failed at the suspect in a
    # run restricted to the failing tests is confirmed by that failure alone once the gate's own
    # record of such restricted runs puts that test's chance of flaking there at or below
    # ``target_false_blame`` (a Beta estimate, per test, shrunk towards all restricted runs,
    # which start from ``prior_flake_rate`` worth FLAKE_PRIOR_RUNS runs); otherwise it is re-run
    # as above. Off: every suspect is re-run (the settings' ``gate.learn_flake_rates``).
    learn_flake_rates: bool = False
    target_false_blame: float = 0.001
    prior_flake_rate: float = 0.02

    def __post_init__(self) -> None:
        if self.culprit_action not in ("hold", "revert"):
            raise ValueError(f"culprit_action must be 'hold' or 'revert', got {self.culprit_action!r}")
        if self.confirmations < 0 or self.max_inconclusive_retries < 0:
            raise ValueError("confirmations and max_inconclusive_retries must not be negative")
        if self.batch_load < 0 or self.batch_per_load < 0 or self.batch_wait < 0:
            raise ValueError("batch_load, batch_per_load and batch_wait must not be negative")
        if not (0 < self.target_false_blame < 1 and 0 < self.prior_flake_rate < 1):
            raise ValueError("target_false_blame and prior_flake_rate must be between 0 and 1")


def _empty_state() -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "master": None,
        "staging": None,
        "candidates": [],
        "authors": {},
        "results": {},  # sha -> [{run_id, outcome, failed_tests, kind, tests, flake}]
        "runs": {},  # run_id -> {commit, pool, kind, tests}
        "pools": {},  # name -> {state, run_id, reason}
        "next_run": 1,
        "promoting": None,
        "master_tests": None,  # tests master was shown to pass (None: all, or assumed green)
        "parent_results": [],  # parent runs of the current master: [{run_id, outcome, tests, failed_tests}]
        "parent_inconclusive": 0,  # inconclusive parent runs of the current master
        "halted": False,
        "blocked_from": None,  # the first blamed culprit still in staging
        "blocked_to": None,  # the highest commit known to contain it
        "blocked_tests": [],  # tests the blamed culprits of the block break
        "groups": [],  # per blame: {culprit, tests, tip (staging tip at blame), fixed (sha|None)}
        "marks": [],  # staging tip at each blame/alert: commits above one may hold a fix
        "retries": [],  # [{commit, tests, avoid}]
        "inconclusive": {},  # sha -> count
        "stalled": [],  # shas whose retries are exhausted
        "culprits": [],
        "flakes": [],
        "promotions": [],
        "alerts": [],
        "rejected": None,  # the current promotion-rejection episode: [commit, message] (recorded once)
        "stats": {"runs": 0, "flakes": 0},
        # runs restricted to some tests, at candidates, that passed or whose failure was shown
        # a flake, and those flakes: in all, and per test [such runs of it, flakes of it] (the
        # learned flake rates; a failure the gate could not tell from a culprit's is no sample)
        "filtered": {"runs": 0, "flakes": 0, "tests": {}},
        "clock": None,  # the latest event time seen (``now``, the driver's clock)
        "arrived": {},  # candidate sha -> when the gate first saw it
        "arrivals": [],  # when the last LOAD_ARRIVALS commits were first seen
        "durations": [],  # the last LOAD_RUNS finished full runs' durations
    }


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class GatePolicy:
    """The gate's state machine. ``handle(event)`` returns the actions the driver must perform."""

    def __init__(self, config: PolicyConfig, state: dict | None = None) -> None:
        self.config = config
        s = copy.deepcopy(state) if state else _empty_state()
        if s.get("version") != STATE_VERSION:
            raise ValueError(f"gate state version {s.get('version')!r} is not {STATE_VERSION}")
        s.setdefault("groups", [])  # (states saved before groups existed)
        s.setdefault("parent_results", [])  # (... before parent runs existed)
        s.setdefault("parent_inconclusive", 0)
        s.setdefault("marks", [])  # (... before round 5)
        s.setdefault("rejected", None)  # (... before round 6)
        for key, empty in (("clock", None), ("arrived", {}), ("arrivals", []), ("durations", [])):
            s.setdefault(key, empty)  # (... before round 7)
        s.setdefault("filtered", {"runs": 0, "flakes": 0, "tests": {}})  # (... before round 13)
        for p in s["pools"].values():  # (... before pool causes: a lent flag; the others
            # are told again by the scheduler's pool events at start-up)
            if p["state"] == "unavailable":
                p.setdefault("cause", "lent" if p.get("lent") else "unavailable")
            p.pop("lent", None)
        self._s = s
        self._index = {c: i for i, c in enumerate(s["candidates"])}
        self._parent_wanted: set[str] = set()  # per plan: tests to ask master about

    # ------------------------------------------------------------------ public API

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return the actions to perform, in order."""
        return self.handle_all([event])

    def handle_all(self, events: Iterable[Event]) -> list[Action]:
        """Apply simultaneous events (e.g. runs that ended together), then plan once."""
        out: list[Action] = []
        for event in events:
            now = float(getattr(event, "now", 0.0) or 0.0)
            if self._s["clock"] is None or now > self._s["clock"]:
                self._s["clock"] = now
            self._apply(event, out)
        self._plan(out)
        return out

    def _apply(self, event: Event, out: list[Action]) -> None:
        if isinstance(event, StagingUpdated):
            self._on_staging(event, out)
        elif isinstance(event, RunFinished):
            self._on_run_finished(event, out)
        elif isinstance(event, PoolAvailable):
            self._on_pool_available(event)
        elif isinstance(event, PoolUnavailable):
            p = self._s["pools"].setdefault(event.pool, {"state": "idle", "run_id": None, "reason": ""})
            if event.lent and p["run_id"] is not None and p["run_id"] in self._s["runs"]:
                self._cancel(p["run_id"], f"pool {event.pool} is running other work: planned again", out)
            p["state"], p["reason"], p["cause"] = "unavailable", event.reason, event.cause
        elif isinstance(event, Promoted):
            self._on_promoted(event, out)
        elif isinstance(event, Tick):
            pass  # only the clock moved: the plan re-checks what falls due on time
        else:
            raise TypeError(f"unknown gate event {event!r}")

    def wake_at(self) -> float | None:
        """When a ``Tick`` may change a decision though no other event comes: the next time a
        re-alert falls due on time (an alerted block still failing at commits pushed after the
        alert, the gate idle: ``_alert_still_failing``). None: no timer needed. Drivers send
        ``Tick(now)`` at or after it; an early or extra tick changes nothing."""
        s = self._s
        if s["clock"] is None or s["blocked_to"] is None:
            return None
        due = [t for g in s["groups"] if g["fixed"] is None and (t := self._realert_at(g)) is not None]
        return min((t for t in due if t > s["clock"]), default=None)

    def _realert_at(self, g: dict) -> float | None:
        """When group ``g``, alerted about, may be re-alerted on time: ``REALERT_WAIT_RUNS`` mean
        full-run times after its last alert, in the events' clock (None: not alerted, or no
        full run finished yet)."""
        d, at = self._s["durations"], g.get("alerted_at")
        if not d or at is None or not isinstance(g.get("alerted"), str):
            return None
        return at + REALERT_WAIT_RUNS * sum(d) / len(d)

    def pool_states(self) -> dict[str, str]:
        """pool -> idle / busy / unavailable (cheap: for the driver after every decision)."""
        return {name: p["state"] for name, p in self._s["pools"].items()}

    def to_state(self) -> dict:
        """A JSON-serialisable snapshot; ``GatePolicy(config, state)`` resumes from it exactly."""
        return copy.deepcopy(self._s)

    def needs_pools(self, lent: Iterable[str]) -> list[str]:
        """Which of the ``lent`` pools (running a try build, in the order the driver would
        rather take them back) the gate needs back now, decided on a copy of the state (this
        policy is unchanged). A pool is needed for a run that stands between staging and master:
        a bisection, confirmation, parent or retry run, or a tip run while no gate run is in
        flight at all (with runs in flight the next pool that frees takes the tip). Never for
        speculation, which only saves time if the tip fails."""
        s = self._s
        if any(p["state"] == "idle" for p in s["pools"].values()):
            return []  # the gate left a pool idle: it has nothing more to start
        probe = GatePolicy(self.config, copy.deepcopy(s))
        gate_runs = bool(s["runs"])
        needed: list[str] = []
        for pool in lent:
            if s["pools"].get(pool, {}).get("state") != "unavailable":
                continue
            acts = probe.handle(PoolAvailable(pool, s["clock"] or 0.0))
            runs = [a for a in acts if isinstance(a, StartRun) and a.pool == pool]
            if any(r.kind != "speculate" and (r.kind != "tip" or not gate_runs) for r in runs):
                needed.append(pool)
                gate_runs = True
            elif not runs:
                break  # nothing more to start: later pools would get nothing either
        return needed

    def filtered_flake_rate(self, test: str | None = None) -> float:
        """The chance a run restricted to the failing tests fails ``test`` spuriously (None: any
        test), as the gate's record of such runs tells: a Beta posterior mean over all of them
        from ``prior_flake_rate`` worth FLAKE_PRIOR_RUNS runs, then per test shrunk towards it
        with the same weight. Only restricted runs count: where flakes come from setting up a
        pool rather than from the tests, a test run alone flakes like the whole suite, and the
        suite's per-test history would understate it (docs/gate.md "Confirmation")."""
        f, w = self._s["filtered"], FLAKE_PRIOR_RUNS
        rate = (self.config.prior_flake_rate * w + f["flakes"]) / (w + f["runs"])
        if test is None:
            return rate
        runs, flakes = f["tests"].get(test, (0, 0))
        return (rate * w + flakes) / (w + runs)

    def flake_history(self) -> dict:
        """What the learned flake rates are made of (a copy), for ``GatePolicy.learn_from``."""
        return copy.deepcopy(self._s["filtered"])

    def learn_from(self, history: dict) -> None:
        """Start from another gate's restricted-run record (``flake_history()``): the simulator's
        steady state, where a lab's gate has years of history (bench/gate_sim)."""
        self._s["filtered"] = copy.deepcopy(history)

    def observed_flake_rate(self) -> float | None:
        """Flakes per conclusive run seen so far (None before any run)."""
        st = self._s["stats"]
        return st["flakes"] / st["runs"] if st["runs"] else None

    @property
    def master(self) -> str | None:
        return self._s["master"]

    @property
    def promoting(self) -> str | None:
        """The commit a ``Promote`` was emitted for and not yet confirmed (None: none)."""
        return self._s["promoting"]

    @property
    def candidates(self) -> list[str]:
        return list(self._s["candidates"])

    def in_flight(self) -> dict[str, dict]:
        """run_id -> {commit, pool, kind, tests} of the runs started and not finished."""
        return copy.deepcopy(self._s["runs"])

    def view(self) -> dict:
        """The dashboard's view (schema at the bottom of schedulers/events.py)."""
        s = self._s
        good = self._good()
        bad = self._bad(good)
        blocked = self._blocked_index(good)
        promoting = self._index.get(s["promoting"], -1) if s["promoting"] else -1
        culprit_set = {c["commit"] for c in s["culprits"]}
        testing = {r["commit"] for r in s["runs"].values()}
        cands = []
        for i, c in enumerate(s["candidates"]):
            st = self._status(c)
            if i <= promoting:
                status = "promoted"
            elif c in culprit_set:
                status = "culprit"
            elif blocked is not None and good < i <= blocked:
                status = "blocked"
            elif st == "P":
                status = "passed"
            elif st == "F":
                status = "failed"
            elif c in testing:
                status = "testing"
            else:
                status = "untested"
            cands.append({"commit": c, "author": s["authors"].get(c, ""), "status": status})
        cand = s["candidates"]
        interval = None
        if bad is not None and blocked is None:
            interval = {"good": cand[good] if good >= 0 else s["master"], "bad": cand[bad]}
        pools = {}
        for name, p in sorted(s["pools"].items()):
            run = s["runs"].get(p["run_id"]) if p["run_id"] else None
            pools[name] = {
                "state": p["state"],
                "run_id": p["run_id"],
                "commit": run["commit"] if run else None,
                "reason": p["reason"],
                "cause": p.get("cause") if p["state"] == "unavailable" else None,
            }
        return {
            "master": s["master"],
            "staging": s["staging"] or s["master"],
            "candidates": cands,
            "interval": interval,
            "runs": [
                {
                    "run_id": rid,
                    "commit": r["commit"],
                    "pool": r["pool"],
                    "kind": r["kind"],
                    "tests": r["tests"],
                }
                for rid, r in s["runs"].items()
            ],
            "results": {
                sha: [{k: r[k] for k in ("run_id", "outcome", "failed_tests", "kind")} for r in rs]
                for sha, rs in s["results"].items()
            },
            "culprits": copy.deepcopy(s["culprits"]),
            "flakes": copy.deepcopy(s["flakes"]),
            "learned": self._learned_view(),
            "pools": pools,
            "promotions": copy.deepcopy(s["promotions"]),
            "alerts": copy.deepcopy(s["alerts"]),
            "halted": bool(s["halted"]),
            "blocked": (
                {"from": s["blocked_from"], "to": s["blocked_to"], "tests": list(s["blocked_tests"])}
                if blocked is not None
                else None
            ),
        }

    def _learned_view(self) -> dict:
        """The learned flake rates for the dashboard: on or off, the record, the rate of all
        restricted runs, the bound, and the recorded tests not trusted on one failure."""
        f, cfg = self._s["filtered"], self.config
        return {
            "on": cfg.learn_flake_rates,
            "runs": f["runs"],
            "flakes": f["flakes"],
            "rate": self.filtered_flake_rate(),
            "target": cfg.target_false_blame,
            "distrusted": sorted(
                t for t in f["tests"] if self.filtered_flake_rate(t) > cfg.target_false_blame
            ),
        }

    # ------------------------------------------------------------------ derived facts

    def _status(self, sha: str) -> str:
        """U: no result; F: a failure not shown to be a flake; P: passed."""
        rs = self._s["results"].get(sha)
        if not rs:
            return "U"
        if any(r["outcome"] == "fail" and not r["flake"] for r in rs):
            return "F"
        return "P"

    def _good(self) -> int:
        """Highest promotable pass. A filtered pass (a run of some tests only) counts only
        where the results above it show every other test passing (``_tests_passed`` is
        None), and never inside a block (the filter covered the tests being hunted, the
        block's culprit breaks others). Otherwise it says nothing about the other tests: a
        second culprit hunted on other tests, or one no full run has shown yet, may break
        them there, and promoting it would break master."""
        s = self._s
        hi = self._index.get(s["blocked_to"], -1) if s["blocked_to"] else -1
        lo = self._index.get(s["blocked_from"], 0) if s["blocked_from"] and hi >= 0 else -1
        best = -1
        for sha, rs in s["results"].items():
            i = self._index.get(sha)
            if i is None or i <= best:
                continue
            passes = [r for r in rs if r["outcome"] == "pass"]
            if any(r["tests"] is None for r in passes):
                best = i
            elif passes and not (lo >= 0 and lo <= i <= hi) and self._tests_passed(sha) is None:
                best = i
        return best

    @staticmethod
    def _evidence(rs: list[dict], tests: set[str]) -> str | None:
        """What the results at one commit say about ``tests``: "pass", "fail" or None."""
        verdict = None
        for r in rs:
            covers = r["tests"] is None or tests <= set(r["tests"])
            failed = set(r["failed_tests"])
            if r["outcome"] == "pass" and covers:
                return "pass"
            if r["outcome"] == "fail" and failed:
                if failed & tests:
                    verdict = "fail"
                elif covers:
                    return "pass"
        return verdict

    def _bad(self, good: int) -> int | None:
        best = None
        for sha in self._s["results"]:
            i = self._index.get(sha)
            if i is not None and i > good and (best is None or i < best) and self._status(sha) == "F":
                best = i
        return best

    def _shown_below(self, good: int, bad: int | None) -> int:
        """The highest candidate in (good, bad) shown to pass the tests ``bad`` fails (a
        filtered bisection pass that is not promotable: other tests may fail there), else
        ``good``: the lower end of the interval bisected for ``bad``'s failure."""
        tests = set(self._failed_tests(self._s["candidates"][bad]) or ()) if bad is not None else set()
        best = good
        if tests:
            for sha, rs in self._s["results"].items():
                i = self._index.get(sha, -1)
                if best < i < bad and self._evidence(rs, tests) == "pass":
                    best = i
        return best

    def _blocked_index(self, good: int) -> int | None:
        b = self._s["blocked_to"]
        i = self._index.get(b) if b else None
        return i if i is not None and i > good else None

    def _failed_tests(self, sha: str) -> tuple[str, ...] | None:
        """The tests to restrict runs of the interval below ``sha`` to (None: whole suite)."""
        if not self.config.bisect_failed_tests_only:
            return None
        names: set[str] = set()
        for r in self._s["results"].get(sha, []):
            if r["outcome"] == "fail":
                if not r["failed_tests"]:
                    return None  # unknown failing tests: bisect on the whole suite
                names.update(r["failed_tests"])
        return tuple(sorted(names)) or None

    def _alert(
        self, out: list[Action], kind: str, message: str, commit: str = "", record: bool = True
    ) -> None:
        out.append(Alert(kind, message, commit))
        if record:  # (not: a repeat within one episode, already in the history)
            alert = {"kind": kind, "message": message, "commit": commit, "at": self._s["clock"]}
            self._push(self._s["alerts"], alert)
        self._mark(human=True)

    def _mark(self, human: bool) -> None:
        """Someone was told (a blame, or an alert: ``human``): a commit pushed from now on
        may be a revert or fix."""
        s = self._s
        if s["candidates"]:
            self._push(s["marks"], {"tip": s["candidates"][-1], "human": human})

    def _hopeful(self, good: int, tip: int) -> bool:
        """Behind a block, can a run of the tip pass? Not while the highest known failure j
        below it is unrepaired: no commit above j passed j's failing tests, and no blame or
        alert was made while j was on staging (only those make someone push a revert or fix).
        A human's fix takes a while, so after an alert new tips stay worth testing until
        ``REALERT_TIPS`` of them failed in full runs (a hunt's filtered probe above the alert
        is no tip: counting it held the developers' fix before any re-alert was due). A
        hopeless run can only fail: its pool is better spent on the hunt for the culprit."""
        s, cand = self._s, self._s["candidates"]
        failing = sorted(
            i
            for sha in s["results"]
            if good < (i := self._index.get(sha, -1)) < tip and self._status(sha) == "F"
        )
        if not failing:
            return True
        j = failing[-1]
        # tips that failed (full runs; a hunt's filtered probe is no tip) count towards a re-alert
        tips_failed = [
            i
            for i in failing
            if any(
                r["tests"] is None and r["outcome"] == "fail" and not r["flake"]
                for r in s["results"][cand[i]]
            )
        ]
        for m in s["marks"]:
            mi = self._index.get(m["tip"], -1)
            if j <= mi < tip or (m["human"] and j <= mi == tip):
                return True  # (what a blame's revert fixes lies above the tip at the blame)
            if m["human"] and mi >= 0 and sum(1 for i in tips_failed if i > mi) < REALERT_TIPS:
                return True
        failed = {
            t
            for r in s["results"][cand[j]]
            if r["outcome"] == "fail" and not r["flake"]
            for t in r["failed_tests"]
        }
        if not failed:
            return True  # unknown failing tests: nothing to reason with
        return any(
            j < self._index.get(sha, -1) <= tip and self._evidence(rs, failed) == "pass"
            for sha, rs in s["results"].items()
        )

    def _hope_in_flight(self, good: int, tip: int) -> bool:
        """A full run is in flight above the highest known failure below ``tip``."""
        s = self._s
        j = max(
            (
                i
                for sha in s["results"]
                if good < (i := self._index.get(sha, -1)) < tip and self._status(sha) == "F"
            ),
            default=good,
        )
        return any(
            r["tests"] is None and j < self._index.get(r["commit"], -1) < tip for r in s["runs"].values()
        )

    @staticmethod
    def _push(lst: list, item: dict) -> None:
        lst.append(item)
        del lst[:-HISTORY]

    # ------------------------------------------------------------------ events

    def _on_pool_available(self, ev: PoolAvailable) -> None:
        p = self._s["pools"].setdefault(ev.pool, {"state": "idle", "run_id": None, "reason": ""})
        lent = p.pop("cause", None) == "lent"
        was_unavailable = p["state"] == "unavailable"
        if p["run_id"] is None:
            p["state"] = "idle"
        elif was_unavailable:
            p["state"] = "busy"
        p["reason"] = ""
        if was_unavailable and not lent:
            # a pool came back (not one that ran a try build meanwhile): give stalled commits
            # another chance
            self._s["stalled"] = []
            self._s["inconclusive"] = {}

    def _on_staging(self, ev: StagingUpdated, out: list[Action]) -> None:
        s = self._s
        first_sight = s["master"] is None  # (the backlog found at start-up is not an arrival rate)
        old = s["candidates"]
        new = list(ev.commits)
        if s["master"] is not None and ev.master != s["master"]:
            i = self._index.get(ev.master)
            ours = s["promoting"] is not None and ev.master == s["promoting"]
            if not ours and (i is None or self._status(ev.master) != "P"):
                self._alert(
                    out,
                    "master-moved",
                    f"master moved outside the gate to {ev.master[:12]} (expected {s['master'][:12]});"
                    " re-planning from the new master",
                    ev.master,
                )
            s["master_tests"] = self._tests_passed(ev.master) if i is not None else None
            s["parent_results"], s["parent_inconclusive"] = [], 0
            if i is not None:
                old = old[i + 1 :]
        if s["promoting"] is not None and (ev.master == s["promoting"] or s["promoting"] not in new):
            if ev.master == s["promoting"]:
                self._push(s["promotions"], {"commit": ev.master, "ok": True, "reason": ""})
                s["rejected"] = None
            s["promoting"] = None
        new_set = set(new)
        dropped = [c for c in old if c not in new_set]
        moved_away = s["master"] is not None and ev.master != s["master"] and ev.master not in self._index
        if dropped and not moved_away:  # (commits may now be in the moved master)
            self._alert(
                out,
                "staging-rewritten",
                f"staging was force-pushed: {len(dropped)} commit(s) no longer on staging"
                f" (first {dropped[0][:12]}); they are dropped from the gate",
                dropped[0],
            )
        s["master"], s["staging"] = ev.master, (new[-1] if new else ev.master)
        s["candidates"] = new
        self._index = {c: i for i, c in enumerate(new)}
        s["authors"] = {c: ev.authors.get(c, s["authors"].get(c, "")) for c in new}
        arrived, t = s["arrived"], s["clock"] or 0.0
        for c in new:
            if c not in arrived:
                arrived[c] = t
                if not first_sight:
                    s["arrivals"].append(t)
        del s["arrivals"][:-LOAD_ARRIVALS]
        s["arrived"] = {c: a for c, a in arrived.items() if c in self._index}
        s["results"] = {c: rs for c, rs in s["results"].items() if c in self._index}
        s["inconclusive"] = {c: n for c, n in s["inconclusive"].items() if c in self._index}
        s["retries"] = [r for r in s["retries"] if r["commit"] in self._index]
        if s["blocked_to"] not in self._index:
            self._unblock()
        if new and (not old or new[-1] != old[-1]):
            s["stalled"] = []  # a new tip: try again
        else:
            s["stalled"] = [c for c in s["stalled"] if c in self._index]
        s["halted"] = False  # re-planned from the master we now see
        for rid, r in list(s["runs"].items()):
            if r["commit"] not in self._index and not (r["kind"] == "parent" and r["commit"] == ev.master):
                self._cancel(rid, "commit no longer a candidate", out)

    def _on_promoted(self, ev: Promoted, out: list[Action]) -> None:
        s = self._s
        if s["promoting"] == ev.commit:
            s["promoting"] = None
        self._push(s["promotions"], {"commit": ev.commit, "ok": ev.ok, "reason": ev.reason})
        if not ev.ok:
            s["halted"] = True
            message = (
                f"promotion of {ev.commit[:12]} to master failed: {ev.reason or 'rejected'};"
                " promotion stopped until the gate sees master again"
            )
            # the driver retries after re-planning: the action is emitted each time (the
            # scheduler mails once per episode), the view's history records the episode once
            episode = [ev.commit, message]
            self._alert(out, "promotion-rejected", message, ev.commit, record=s["rejected"] != episode)
            s["rejected"] = episode
            return
        s["rejected"] = None
        i = self._index.get(ev.commit)
        s["master"] = ev.commit
        if i is not None:
            s["master_tests"] = self._tests_passed(ev.commit)
            s["parent_results"], s["parent_inconclusive"] = [], 0
            cut = s["candidates"][: i + 1]
            s["stats"]["commits"] = s["stats"].get("commits", 0) + len(cut)
            s["candidates"] = s["candidates"][i + 1 :]
            self._index = {c: j for j, c in enumerate(s["candidates"])}
            for c in cut:
                s["arrived"].pop(c, None)
                s["results"].pop(c, None)
                s["authors"].pop(c, None)
                s["inconclusive"].pop(c, None)
            s["retries"] = [r for r in s["retries"] if r["commit"] in self._index]
            s["stalled"] = [c for c in s["stalled"] if c in self._index]
            if s["blocked_to"] not in self._index:
                self._unblock()
            for rid, r in list(s["runs"].items()):
                if r["commit"] not in self._index and self.config.cancel_useless_runs:
                    self._cancel(rid, "commit already promoted", out)

    def _on_run_finished(self, ev: RunFinished, out: list[Action]) -> None:
        s = self._s
        run = s["runs"].pop(ev.run_id, None)
        if run is None:
            return  # cancelled or unknown: never evidence
        pool = s["pools"].get(run["pool"])
        if pool is not None and pool["run_id"] == ev.run_id:
            pool["run_id"] = None
            if pool["state"] == "busy":
                pool["state"] = "idle"
        sha = run["commit"]
        if run["tests"] is None and ev.outcome in ("pass", "fail") and run.get("started") is not None:
            if (took := (s["clock"] or 0.0) - run["started"]) > 0:
                s["durations"].append(took)
                del s["durations"][:-LOAD_RUNS]
        if run["kind"] == "parent":
            self._on_parent_finished(ev, run, out)
            return
        if sha not in self._index:
            return
        if ev.outcome == "inconclusive":
            n = s["inconclusive"].get(sha, 0) + 1
            s["inconclusive"][sha] = n
            if n > self.config.max_inconclusive_retries:
                self._alert(
                    out,
                    "retries-exhausted",
                    f"{n} inconclusive runs of {sha[:12]} (last on pool {run['pool']}: "
                    f"{ev.reason or 'infrastructure failure'}); not retrying until a pool returns"
                    " or staging changes",
                    sha,
                )
                if sha not in s["stalled"]:
                    s["stalled"].append(sha)
            else:
                s["retries"].append({"commit": sha, "tests": run["tests"], "avoid": run["pool"]})
            return
        if ev.outcome not in ("pass", "fail"):
            raise ValueError(f"unknown run outcome {ev.outcome!r} for run {ev.run_id}")
        s["stats"]["runs"] += 1
        s["inconclusive"].pop(sha, None)
        rs = s["results"].setdefault(sha, [])
        rs.append(
            {
                "run_id": ev.run_id,
                "outcome": ev.outcome,
                "failed_tests": list(ev.failed_tests),
                "kind": run["kind"],
                "tests": run["tests"],
                "flake": False,
                "pool": run["pool"],
            }
        )
        if run["tests"] is not None:  # what it passed, for the learned flake rates
            self._sample(set(run["tests"]) - set(ev.failed_tests), flaked=False, run=ev.outcome == "pass")
        # an earlier failure is a flake once a run covering its tests does not fail them: a
        # culprit fails its tests in every run of them (a pass, or a failure of other tests)
        covered = None if run["tests"] is None else set(run["tests"])
        now_failed = set(ev.failed_tests)
        if ev.outcome == "pass" or now_failed:
            for r in rs[:-1]:
                names = set(r["failed_tests"])
                explained = covered is None or (names and names <= covered)
                if ev.outcome == "fail" and not names:
                    explained = False  # unknown failing tests: only a pass of the whole suite says
                if r["outcome"] == "fail" and not r["flake"] and explained and not names & now_failed:
                    self._flake(sha, r, out)
        if now_failed and self._evidence(rs[:-1], now_failed) == "pass":
            # ... and a failure of tests an earlier run here did not fail is a flake at once
            self._flake(sha, rs[-1], out)
            return
        if ev.outcome == "pass":
            return
        # a failure behind a blamed culprit: the tree still contains it; extend the block
        good = self._good()
        blocked = self._blocked_index(good)
        i = self._index[sha]
        if blocked is not None and i > blocked:
            s["blocked_to"] = sha
            if not ev.failed_tests:
                self._alert(
                    out,
                    "unknown-failure-behind-culprit",
                    f"{sha[:12]} fails (failing tests unknown) behind the blamed culprit"
                    f" {s['blocked_from'][:12] if s['blocked_from'] else '?'}; waiting for a fix",
                    sha,
                )

    def _flake(self, sha: str, r: dict, out: list[Action]) -> None:
        """Record the failing run ``r`` of ``sha`` as a flake of its failed tests."""
        s = self._s
        r["flake"] = True
        s["stats"]["flakes"] += 1
        if r["tests"] is not None:
            self._sample(r["failed_tests"], flaked=True, run=True)
        out.append(RecordFlake(sha, tuple(r["failed_tests"]), r["run_id"], r.get("pool") or ""))
        self._push(s["flakes"], {"commit": sha, "tests": list(r["failed_tests"]), "run_id": r["run_id"]})

    def _sample(self, tests, flaked: bool, run: bool) -> None:
        """Record samples for the learned flake rates: ``tests`` of a restricted run passed, or
        (``flaked``) failed and were shown a flake; ``run``: the run is a sample of all
        restricted runs too (it passed, or its failure was a flake)."""
        f = self._s["filtered"]
        f["runs"] += 1 if run else 0
        f["flakes"] += 1 if flaked else 0
        for t in tests:
            counts = f["tests"].setdefault(t, [0, 0])
            counts[0] += 1
            counts[1] += 1 if flaked else 0

    def _on_parent_finished(self, ev: RunFinished, run: dict, out: list[Action]) -> None:
        """A parent run of master ended: evidence about master itself (when still master)."""
        s = self._s
        if run["commit"] != s["master"]:
            return
        if ev.outcome == "inconclusive":
            s["parent_inconclusive"] += 1
            if s["parent_inconclusive"] == self.config.max_inconclusive_retries + 1:
                self._alert(
                    out,
                    "retries-exhausted",
                    f"{s['parent_inconclusive']} inconclusive parent runs of master {run['commit'][:12]}"
                    f" (last on pool {run['pool']}: {ev.reason or 'infrastructure failure'}); not retrying"
                    " until a pool returns or master moves",
                    run["commit"],
                )
            return
        if ev.outcome not in ("pass", "fail"):
            raise ValueError(f"unknown run outcome {ev.outcome!r} for run {ev.run_id}")
        s["stats"]["runs"] += 1
        s["parent_results"].append(
            {
                "run_id": ev.run_id,
                "outcome": ev.outcome,
                "tests": run["tests"],
                "failed_tests": list(ev.failed_tests),
            }
        )

    # ------------------------------------------------------------------ master (parent runs)

    def _master_status(self, tests: set[str]) -> tuple[set[str], set[str], list[str]]:
        """Of ``tests``: (unknown, broken, run_ids). Master is shown to pass a test by its
        promotion (``master_tests``) or a parent run covering it without failing it; it is
        shown to *fail* one when ``1 + confirmations`` parent runs failed it and none passed it."""
        s = self._s
        if s["master_tests"] is None:
            return set(), set(), []
        shown, fails, ids = set(s["master_tests"]), dict.fromkeys(tests, 0), []
        for r in s["parent_results"]:
            failed = set(r["failed_tests"])
            if r["outcome"] == "pass" or failed:
                shown |= set(tests if r["tests"] is None else r["tests"]) - failed
            for t in failed & tests:
                fails[t] += 1
                ids.append(r["run_id"])
        broken = {t for t in tests - shown if fails[t] >= 1 + self.config.confirmations}
        return tests - shown - broken, broken, sorted(set(ids))

    def _master_shown(self) -> list[str] | None:
        """Tests master was shown to pass (None: all)."""
        s = self._s
        if s["master_tests"] is None:
            return None
        asked = {t for r in s["parent_results"] for t in r["tests"] or ()}
        unknown, broken, _ = self._master_status(asked)
        return sorted(set(s["master_tests"]) | (asked - unknown - broken))

    def _check_master(self, tests: set[str], sha: str, out: list[Action]) -> bool:
        """Before calling ``sha``'s failure of ``tests`` inherited (its parent, master, was
        promoted on a filtered pass not covering them): ask master itself with parent runs.
        Returns True when master is shown to fail them: alerted and blocked (nobody is
        blamed: the culprit is already on master). False: still asking, or master passes."""
        s = self._s
        unknown, broken, ids = self._master_status(tests)
        if unknown:
            self._parent_wanted |= unknown
            return False
        if not broken:
            return False
        names = ", ".join(sorted(broken)[:5])
        self._alert(
            out,
            "master-broken",
            f"master {s['master'][:12]} itself fails {names} (parent run(s) {', '.join(ids)}): it was"
            f" promoted on a partial run that did not cover them, so the culprit is among commits"
            f" already on master and cannot be blamed by the gate; {sha[:12]} and everything above"
            " it inherit the failure; waiting for a fix on staging",
            sha,
        )
        self._block(sha, sorted(broken))
        return True

    def _start_parent_runs(self, free: list[str], out: list[Action]) -> None:
        """Start the parent runs of master that ``_check_master`` asked for (one per question,
        then ``confirmations`` more after a failure)."""
        s = self._s
        wanted, self._parent_wanted = self._parent_wanted, set()
        if not wanted or s["master"] is None:
            return
        if s["parent_inconclusive"] > self.config.max_inconclusive_retries:
            return
        unknown, _, _ = self._master_status(wanted)
        if not unknown:
            return
        fails = max(sum(1 for r in s["parent_results"] if t in r["failed_tests"]) for t in sorted(unknown))
        running = sum(
            1 for r in s["runs"].values() if r["kind"] == "parent" and set(r["tests"] or ()) & unknown
        )
        need = (1 if fails == 0 else 1 + self.config.confirmations - fails) - running
        for _ in range(max(0, need)):
            if not free:
                return
            self._start(s["master"], free.pop(0), "parent", sorted(unknown), out)

    # ------------------------------------------------------------------ planning

    def _cancel(self, run_id: str, reason: str, out: list[Action]) -> None:
        s = self._s
        run = s["runs"].pop(run_id)
        pool = s["pools"].get(run["pool"])
        if pool is not None and pool["run_id"] == run_id:
            pool["run_id"] = None
            if pool["state"] == "busy":
                pool["state"] = "idle"
        out.append(CancelRun(run_id, reason))

    def _start(self, sha: str, pool: str, kind: str, tests, out: list[Action]) -> None:
        s = self._s
        run_id = f"r{s['next_run']}"
        s["next_run"] += 1
        t = list(tests) if tests is not None else None
        s["runs"][run_id] = {"commit": sha, "pool": pool, "kind": kind, "tests": t, "started": s["clock"]}
        s["pools"][pool].update(state="busy", run_id=run_id)
        out.append(StartRun(run_id, sha, pool, kind, tuple(t) if t is not None else None))  # type: ignore[arg-type]

    def _plan(self, out: list[Action]) -> None:
        self._plan_runs(out)
        s = self._s
        if s["blocked_to"] is not None and self._blocked_index(self._good()) is not None:
            last = s["marks"][-1] if s["marks"] else None
            self._alert_still_failing(self._update_groups(), not s["runs"], out)
            marked = bool(s["marks"]) and s["marks"][-1] is not last
            if marked and any(p["state"] == "idle" for p in s["pools"].values()):
                self._plan_runs(out)  # the alert makes the tip worth a run (a fix may be on it)

    def _alert_still_failing(self, groups: list[dict], idle: bool, out: list[Action]) -> None:
        """Never stall silently behind a block. A blamed culprit whose tests still fail at a
        commit pushed after its blame (a revert, a fix that did not fix it, or a second culprit
        breaking the same tests, masked in its span) needs a human: the gate cannot tell where a
        fix landed or isolate the masked one. Alert when ``STILL_FAILING_TIPS`` newer commits
        fail them, or at once when the gate has nothing left in flight; the episode ends when a
        commit passes its tests, or the block clears. Again (naming the new top) when
        ``REALERT_TIPS`` commits pushed after the alert still fail them (e.g. a culprit breaking
        the same tests landed below the developers' fix); new tips stay tested until then. When
        fewer come (the fix was the last push), once the gate is idle and ``REALERT_WAIT_RUNS``
        mean run times passed since the alert (``wake_at``: the driver ticks then), so a block
        nobody repaired is never left silent until someone happens to push."""
        s, cand = self._s, self._s["candidates"]
        due_groups: list[tuple[dict, list[int], Any]] = []
        pending: list[tuple[dict, list[int], Any]] = []  # failing since the blame, not yet due
        for g in groups:
            since = g.get("alerted")
            if g["fixed"] is not None or since is True or (g.get("masked") and since is None):
                continue  # (True, or masked without a tip: states saved before re-alerts)
            tests, ci = set(g["tests"]), self._index[g["culprit"]]
            after = max(self._index.get(g["tip"], ci), ci)
            if since is not None:
                after = max(after, self._index.get(since, -1))
            failing = sorted(
                i
                for sha, rs in s["results"].items()
                if (i := self._index.get(sha, -1)) > after and self._evidence(rs, tests) == "fail"
            )
            if since is None:
                due = len(failing) >= STILL_FAILING_TIPS or (failing and idle)
            else:
                late = (at := self._realert_at(g)) is not None and s["clock"] >= at
                due = len(failing) >= REALERT_TIPS or bool(failing and idle and late)
            if due:
                due_groups.append((g, failing, since))
            elif failing and since is None:
                pending.append((g, failing, since))
        if not due_groups:
            return
        # one alert naming every group due now and every other one already failing after its
        # blame: the same episode for the humans (one alert per commit, not one per culprit)
        due_groups += pending
        parts = []
        for g, failing, since in due_groups:
            g["alerted"], g["alerted_at"] = cand[-1], s["clock"]
            again = " (again: commits pushed after the last alert fail them too)" if since else ""
            parts.append(
                f"{', '.join(g['tests'][:5])} still fail(s) at {len(failing)} commit(s) pushed after"
                f" {g['culprit'][:12]} was {'last alerted about' if since else 'blamed'}, up to"
                f" {cand[failing[-1]][:12]}{again}"
            )
        first = min((g["culprit"] for g, _, _ in due_groups), key=lambda c: self._index[c])
        top = cand[max(failing[-1] for _, failing, _ in due_groups)]
        self._alert(
            out,
            "still-failing",
            f"{'; and '.join(parts)}: commits {first[:12]}..{top[:12]} stay blocked;"
            " a revert or fix did not repair it, or another commit in that range breaks the"
            " same tests (masked, the gate cannot isolate it); a fix on staging unblocks them",
            top,
        )

    def _plan_runs(self, out: list[Action]) -> None:
        s, cfg = self._s, self.config
        self._parent_wanted = set()
        cand = s["candidates"]
        good = self._good()
        if s["blocked_to"] is not None and self._blocked_index(good) is None:
            self._unblock()  # a fix passed
            s["groups"] = []
        blocked = self._blocked_index(good)
        bad = self._bad(good) if blocked is None else None
        parent = self._shown_below(good, bad)  # the suspect's parent: bad's tests pass there

        # 1. promote the passing prefix at once
        if good >= 0 and s["promoting"] is None and not s["halted"]:
            s["promoting"] = cand[good]
            out.append(Promote(cand[good]))

        # 2. blame a confirmed suspect
        if bad is not None and bad == parent + 1:
            sha = cand[bad]
            failed, fails = self._confirmed(sha)
            if fails:
                tests = sorted(self._explained(parent, failed))
                if failed and not tests and parent < 0:  # ask master itself (parent runs)
                    if self._check_master(failed, sha, out):
                        blocked, bad = len(cand) - 1, None
                elif (
                    failed
                    and not tests
                    and parent == good
                    and s["promoting"] == cand[good]
                    and not s["halted"]
                ):
                    pass  # its parent is being promoted: ask master once it is master
                elif failed and not tests:  # the parent was never shown to pass these: inherited, not caused
                    unexplained = sorted({t for r in fails for t in r["failed_tests"]})
                    self._alert(
                        out,
                        "inherited-failure",
                        f"{sha[:12]} fails {', '.join(unexplained[:5]) or 'tests'} that its parent was"
                        " never shown to pass (promoted on a partial run?); waiting for a fix on staging",
                        sha,
                    )
                    self._block(sha, unexplained)
                    blocked, bad = len(cand) - 1, None
                else:
                    runs = [r["run_id"] for r in fails]
                    author = s["authors"].get(sha, "")
                    out.append(Blame(sha, author, tuple(tests), tuple(runs)))
                    s["stats"]["blamed"] = s["stats"].get("blamed", 0) + 1
                    self._push(
                        s["culprits"],
                        {"commit": sha, "author": author, "failed_tests": tests, "run_ids": runs},
                    )
                    if cfg.culprit_action == "revert":
                        out.append(Revert(sha))
                    self._block(sha, tests)
                    blocked, bad = len(cand) - 1, None

        unconfirmed: list[tuple[str, list[str]]] = []  # reverts failing the tests once: re-run first
        if blocked is not None and cfg.culprit_action == "revert":
            unconfirmed = self._alert_masked(self._update_groups(), out)

        # 3. cancel runs whose result can no longer change a decision
        if cfg.cancel_useless_runs:
            for rid, r in list(s["runs"].items()):
                if r["kind"] == "parent":
                    continue  # master itself: decided by _check_master, dropped when master moves
                i = self._index[r["commit"]]
                useless = i <= good
                if bad is not None and i > bad and not (r["kind"] == "tip" and cfg.finish_tip_runs):
                    useless = True
                if useless:
                    self._cancel(rid, "result no longer needed", out)

        free = sorted(n for n, p in s["pools"].items() if p["state"] == "idle")
        if not free or not cand:
            return
        busy = {r["commit"] for r in s["runs"].values()}
        stalled = set(s["stalled"])

        def usable(i: int) -> bool:
            c = cand[i]
            return c not in busy and c not in stalled and self._status(c) == "U"

        # 4. retries of inconclusive runs, on another pool when there is one
        keep = []
        for r in s["retries"]:
            i = self._index.get(r["commit"])
            wanted = i is not None and i > good
            if wanted and bad is not None:
                wanted = i < bad or (i == bad and i == parent + 1)
            if wanted:  # a pass covering its tests came in meanwhile: nothing left to ask
                rs = s["results"].get(r["commit"], [])
                covered = any(x["outcome"] == "pass" and x["tests"] is None for x in rs) or (
                    r["tests"] is not None and self._evidence(rs, set(r["tests"])) == "pass"
                )
                wanted = not covered
            if wanted and (r["commit"] not in busy or i == bad) and r["commit"] not in stalled:
                if not free:
                    keep.append(r)
                    continue
                pool = next((p for p in free if p != r["avoid"]), free[0])
                free.remove(pool)
                self._start(r["commit"], pool, "retry", r["tests"], out)
                busy.add(r["commit"])
        s["retries"] = keep
        self._start_parent_runs(free, out)
        if not free:
            return

        tip = len(cand) - 1
        if blocked is not None:  # behind a culprit: only a new tip can pass
            for sha, tests in unconfirmed:  # does the revert really still fail? (alert or not)
                self._confirm(sha, tests, free, stalled, out)
                busy.add(sha)
            if not free:
                return
            rs = s["results"].get(cand[tip], [])
            tip_known = any(
                (r["outcome"] == "pass" and r["tests"] is None) or (r["outcome"] == "fail" and not r["flake"])
                for r in rs
            )
            fresh = cand[tip] not in busy and cand[tip] not in stalled and not tip_known
            if fresh and cfg.hold_hopeless_tips:
                fresh = self._hopeful(good, tip)
            # the first run that may pass goes first; another one (a newer tip while an older
            # hopeful one still runs) only gets a pool the hunt for culprits leaves free
            later = fresh and self._hope_in_flight(good, tip)
            if fresh and not later:  # work-conserving: an idle pool tests a new tip at once
                self._start(cand[tip], free.pop(0), "tip", None, out)
                busy.add(cand[tip])
            elif not fresh and cfg.detect_behind_block:
                self._detect(good, free, busy, stalled, out)
            self._hunt(good, free, busy, stalled, out)
            self._start_parent_runs(free, out)
            if free:
                self._probe_fixes(self._update_groups(), free, busy, out)
            if later and free:
                self._start(cand[tip], free.pop(0), "tip", None, out)
            elif free and not s["runs"] and cand[tip] not in busy and cand[tip] not in stalled:
                # idle, and the tip, pushed after a blame or alert (it may hold the revert or
                # fix), failed fewer than 1 + x times: one more full run settles it, so one flake
                # of the fix's run or probe cannot hold the fix back until more commits come
                rs = s["results"].get(cand[tip], [])
                fails = sum(1 for r in rs if r["outcome"] == "fail" and not r["flake"])
                marks = [(self._index.get(m["tip"], -1), m["human"]) for m in s["marks"]]
                told = any(-1 < mi < tip for mi, _ in marks) and not any(
                    mi >= tip and not human
                    for mi, human in marks  # a blame at the tip: its revert lands above
                )
                if told and 0 < fails <= cfg.confirmations and not any(r["outcome"] == "pass" for r in rs):
                    self._start(cand[tip], self._other_pool(cand[tip], free), "confirm", None, out)
            return

        if bad is None:  # work-conserving: an idle pool tests an untested tip at once; the
            # commits arriving while every pool is busy are covered together by the next one
            # (untested, or only a filtered pass there, a fix probe's say: not shown to pass)
            if tip > good and cand[tip] not in busy and cand[tip] not in stalled:
                if self._batch_held(self._full_top(good), tip):
                    return  # pool-bound: the next tip run waits for a bigger batch
                self._start(cand[tip], free.pop(0), "tip", None, out)
                busy.add(cand[tip])
            if cfg.speculate and free and self._worth_speculating(good, tip):
                self._probe(good, tip, free, "speculate", None, usable, out)
            return

        tests = self._failed_tests(cand[bad])
        if bad == parent + 1:  # confirm the suspect: fail again, in parallel
            self._confirm(cand[bad], tests, free, stalled, out)
            return

        def unknown(i: int) -> bool:  # nothing known about ``tests`` at i (a pass of others is no answer)
            c = cand[i]
            rs = s["results"].get(c, [])
            if c in busy or c in stalled:
                return False
            if tests is None:  # the whole suite: only a full pass answers (a hunt's filtered pass,
                # or full runs that each flaked on some test, do not)
                return not any(r["tests"] is None and r["outcome"] == "pass" for r in rs)
            return not rs or self._evidence(rs, set(tests)) is None

        self._probe(parent, bad, free, "bisect", tests, unknown, out)
        if cfg.overlap_confirmation and free:  # spare pools: confirm the failing top meanwhile
            self._confirm(cand[bad], tests, free, stalled, out)

    def _confirm(self, sha: str, tests, free: list[str], stalled: set[str], out: list[Action]) -> None:
        """Start the confirmation runs ``sha`` still lacks: its most often failing test (of
        ``tests``) failed, or runs now, fewer than 1 + x times."""
        s = self._s
        fails = self._fail_count(sha, set(tests) if tests is not None else None)
        running = sum(1 for r in s["runs"].values() if r["commit"] == sha)
        for _ in range(max(0, 1 + self.config.confirmations - fails - running)):
            if not free or sha in stalled:
                break
            self._start(sha, self._other_pool(sha, free), "confirm", tests, out)

    def _other_pool(self, sha: str, free: list[str]) -> str:
        """Take a free pool for a confirmation of ``sha``, preferring one that did not fail it:
        a failure only one pool reproduces (a broken hypervisor, a bad disk) is then not
        confirmed by that pool again and never blames the commit."""
        s = self._s
        seen = {r.get("pool") for r in s["results"].get(sha, []) if r["outcome"] == "fail"}
        seen |= {r["pool"] for r in s["runs"].values() if r["commit"] == sha}
        pool = next((p for p in free if p not in seen), free[0])
        free.remove(pool)
        return pool

    def _test_failures(self, sha: str, within: set[str] | None) -> tuple[dict[str, int], list[dict]]:
        """Per failing test (of ``within``, if given): in how many runs at ``sha`` it failed,
        flakes not counted (a failure naming no tests counts for every test); and those runs."""
        fails = [r for r in self._s["results"].get(sha, []) if r["outcome"] == "fail" and not r["flake"]]
        names = {t for r in fails for t in r["failed_tests"]}
        if within is not None:
            names &= within
        counts = {t: sum(1 for r in fails if not r["failed_tests"] or t in r["failed_tests"]) for t in names}
        return counts, fails

    def _fail_count(self, sha: str, within: set[str] | None = None) -> int:
        """Failures of the most often failing test at ``sha`` (runs naming no tests, if none)."""
        counts, fails = self._test_failures(sha, within)
        return max(counts.values()) if counts else sum(1 for r in fails if not r["failed_tests"])

    def _confirmed(self, sha: str, within: set[str] | None = None) -> tuple[set[str], list[dict]]:
        """The tests (of ``within``) that failed at ``sha`` in 1 + x runs, flakes not counted,
        and those runs; ``(set(), [])`` while none has. Two runs failing different tests once
        each are two flakes, not a confirmation."""
        need = 1 + self.config.confirmations
        counts, fails = self._test_failures(sha, within)
        tests = {t for t, n in counts.items() if n >= need}
        tests |= self._trusted(fails, counts)
        if tests:
            return tests, [r for r in fails if not r["failed_tests"] or set(r["failed_tests"]) & tests]
        unknown = [r for r in fails if not r["failed_tests"]]
        if within is None and not counts and len(unknown) >= need:
            return set(), unknown  # the failing tests are unknown: confirmed on the runs alone
        return set(), []

    def _trusted(self, fails: list[dict], counts: dict[str, int]) -> set[str]:
        """Tests of ``counts`` confirmed by one failure in a restricted run of ``fails`` (a
        hunt's probe, a confirmation): all with ``confirm_on_filtered_failure``; with
        ``learn_flake_rates``, those whose learned flake rate in such runs is within
        ``target_false_blame``; else none."""
        cfg = self.config
        if not (cfg.confirm_on_filtered_failure or cfg.learn_flake_rates):
            return set()
        tests = {t for r in fails if r["tests"] is not None for t in r["failed_tests"] if t in counts}
        if cfg.confirm_on_filtered_failure:
            return tests
        return {t for t in tests if self.filtered_flake_rate(t) <= cfg.target_false_blame}

    def _detect(
        self, good: int, free: list[str], busy: set[str], stalled: set[str], out: list[Action]
    ) -> None:
        """Behind a block, a held (hopeless) tip still tells where the *next* culprit hides: a
        full run of it fails the tests of every culprit in its tree, so the hunt for one that
        landed after the last full run starts now, not after the revert's tip run fails
        (chained culprits). Started before the hunts take the pools, once the commits above
        the highest full run (done or in flight) likely hold a culprit: 1 - (1 - p)^n >=
        ``DETECT_WHEN``."""
        s, cand = self._s, self._s["candidates"]
        tip = len(cand) - 1
        c = cand[tip]
        if not free or c in busy or c in stalled or s["results"].get(c):
            return
        top = self._full_top(good)
        if tip > top and 1 - (1 - self.culprit_rate()) ** (tip - top) >= DETECT_WHEN:
            self._start(c, free.pop(0), "tip", None, out)
            busy.add(c)

    def load(self) -> float | None:
        """Estimated pool load: arrival rate x mean full-run time / usable pools, both from the
        events' own clock (the last ``LOAD_ARRIVALS`` arrivals up to now, the last ``LOAD_RUNS``
        full runs); None until enough was seen. Above 1 the pools cannot test every commit
        alone: the gate is pool-bound."""
        s = self._s
        arrivals, durations, clock = s["arrivals"], s["durations"], s["clock"]
        pools = sum(1 for p in s["pools"].values() if p["state"] != "unavailable")
        if len(arrivals) < LOAD_ARRIVALS // 2 or len(durations) < 3 or not pools or clock is None:
            return None
        span = clock - arrivals[0]
        if span <= 0:
            return None
        return len(arrivals) / span * (sum(durations) / len(durations)) / pools

    def _batch_held(self, top: int, tip: int) -> bool:
        """Load-adaptive batching: hold a new tip run while the gate is pool-bound (load >=
        ``batch_load``) and the new commits above ``top`` (the highest full run, done or in
        flight) are fewer than ``batch_per_load`` x load, unless the oldest of them waited
        ``batch_wait`` mean run times. Idle pools cost nothing at low load (work-conserving
        there); under load each tip run then covers more commits. Only while a run is in
        flight: its end re-plans (the policy has no timer)."""
        s, cfg = self._s, self.config
        if cfg.batch_load <= 0 or not s["runs"] or tip <= top:
            return False
        load = self.load()
        if load is None or load < cfg.batch_load:
            return False
        if tip - top >= cfg.batch_per_load * load:
            return False
        mean_run = sum(s["durations"]) / len(s["durations"])
        oldest = s["arrived"].get(s["candidates"][top + 1])
        return oldest is not None and (s["clock"] or 0.0) - oldest < cfg.batch_wait * mean_run

    def _full_top(self, good: int) -> int:
        """The highest candidate with a full run done (not a flake) or in flight (``good`` if none)."""
        s = self._s
        top = good
        for sha, rs in s["results"].items():
            if any(r["tests"] is None and not r["flake"] for r in rs):
                top = max(top, self._index.get(sha, -1))
        for r in s["runs"].values():
            if r["tests"] is None:
                top = max(top, self._index.get(r["commit"], -1))
        return top

    def culprit_rate(self) -> float:
        """Estimated share of culprits among commits: blames against commits resolved so far
        (promoted or blamed), with a prior of ``PRIOR_CULPRIT_RATE`` worth ``PRIOR_WEIGHT``
        commits."""
        st = self._s["stats"]
        blamed = st.get("blamed", 0)
        resolved = st.get("commits", 0) + blamed
        return (blamed + PRIOR_CULPRIT_RATE * PRIOR_WEIGHT) / (resolved + PRIOR_WEIGHT)

    def _worth_speculating(self, good: int, tip: int) -> bool:
        """Idle pools pre-test prefix points only when the untested batch (good, tip] is
        likely to fail: 1 - (1 - p)^n >= ``SPECULATE_WHEN``; otherwise the tip run alone
        is the cheapest proof."""
        untested = [i for i in range(good + 1, tip + 1) if self._status(self._s["candidates"][i]) == "U"]
        return 1 - (1 - self.culprit_rate()) ** len(untested) >= SPECULATE_WHEN

    def _tests_passed(self, sha: str) -> list[str] | None:
        """Tests ``sha`` is shown to pass (None: all), by the bisection's premise that a test
        failing in a tree keeps failing above it until fixed: each test is decided by the
        lowest commit at or above ``sha`` with a run covering it (passed there: shown; failed:
        not), and the lowest full run decides every test no lower run covered. So a filtered
        pass covers the whole suite when the first full run above failed only tests that
        passed on the way up, and never a test another run above failed first (a second
        culprit hunted on other tests, say). A test broken at ``sha`` and fixed before the
        run deciding it is the premise's blind spot (an ``inherited-failure`` alert later)."""
        s = self._s
        rs = s["results"].get(sha, [])
        passes = [r for r in rs if r["outcome"] == "pass"]
        if not passes or any(r["tests"] is None for r in passes):
            return None
        i = self._index.get(sha, -1)
        direct = {t for r in passes for t in r["tests"]}
        below = self._failing_below(i)  # seen failing below and not since: only a run here says
        decided: dict[str, bool] = {}
        for _, runs in sorted(
            ((j, runs) for c, runs in s["results"].items() if (j := self._index.get(c, -1)) >= i),
            key=lambda jr: jr[0],
        ):
            here, full, unknown = self._fold(runs)
            for t, passed in here.items():
                decided.setdefault(t, passed)
            if full is None and unknown:
                break
            if full is not None:
                if (
                    all(passed for passed in decided.values())
                    and all(decided.get(t, False) for t in full)
                    and below is not None
                    and below <= direct
                ):
                    return None
                break
        return sorted(
            t for t, passed in decided.items() if passed and (t in direct or not below or t not in below)
        )

    @staticmethod
    def _fold(runs: list[dict]) -> tuple[dict[str, bool], set[str] | None, bool]:
        """One commit's runs: per test a filtered run covered, whether one passed it; the
        tests its full runs all failed (None: no full run named its failures); and whether a
        full run failed without naming its tests (any may fail there)."""
        here: dict[str, bool] = {}
        full: set[str] | None = None
        unknown = False
        for r in runs:
            ok = r["outcome"] == "pass" or r["flake"]  # a flake's failures passed on a re-run
            failed = set() if ok else set(r["failed_tests"])
            if r["tests"] is None:
                if ok or failed:
                    full = failed if full is None else full & failed
                else:
                    unknown = True
            else:
                for t in r["tests"]:
                    here[t] = here.get(t, False) or t not in failed
        return here, full, unknown

    def _failing_below(self, i: int) -> set[str] | None:
        """Tests the highest run below candidate ``i`` covering them failed (flakes aside):
        passing above ``i`` does not show them passing at ``i`` (the fix may lie above it).
        None when a full run below failed without naming its tests (any may fail)."""
        s = self._s
        seen: set[str] = set()
        failing: set[str] = set()
        for _, runs in sorted(
            ((j, runs) for c, runs in s["results"].items() if 0 <= (j := self._index.get(c, -1)) < i),
            key=lambda jr: -jr[0],
        ):
            covered, full, unknown = self._fold(runs)
            if unknown:
                return None
            for t, passed in covered.items():
                if t not in seen and not passed and (full is None or t in full):
                    failing.add(t)
                seen.add(t)
            if full is not None:
                return failing | (full - seen)
        return failing

    def _explained(self, parent: int, failed: set[str]) -> set[str]:
        """The failed tests the parent was shown to pass (all of them after a full pass)."""
        if parent < 0:
            mt = self._master_shown()
            return failed if mt is None else (failed & set(mt))
        covered: set[str] = set()
        for r in self._s["results"].get(self._s["candidates"][parent], []):
            if r["outcome"] == "pass" or r["flake"]:  # a flaky run's filter passed but for the flake
                if r["tests"] is None:
                    return failed
                covered |= set(r["tests"])
        return failed & covered

    def _unblock(self) -> None:
        """The block is over (a fix passed) or its commits left staging: forget it whole."""
        self._s["blocked_from"], self._s["blocked_to"], self._s["blocked_tests"] = None, None, []

    def _block(self, culprit: str, tests: list[str]) -> None:
        s = self._s
        current = self._index.get(s["blocked_from"]) if s["blocked_from"] else None
        if current is None or self._index[culprit] < current:  # (a culprit that left staging: no block)
            s["blocked_from"] = culprit
        s["blocked_to"] = s["candidates"][-1]
        s["blocked_tests"] = sorted(set(s["blocked_tests"]) | set(tests))
        s["groups"].append(
            {"culprit": culprit, "tests": sorted(tests), "tip": s["candidates"][-1], "fixed": None}
        )
        s["retries"] = []
        self._mark(human=False)

    def _update_groups(self) -> list[dict]:
        """Drop groups whose culprit left staging; mark a group fixed at the lowest commit
        above its culprit shown to pass its tests (a revert or fix landed below it)."""
        s = self._s
        s["groups"] = [g for g in s["groups"] if g["culprit"] in self._index]
        for g in s["groups"]:
            if g["fixed"] is not None and g["fixed"] in self._index:
                continue
            g["fixed"] = None
            ci, tests, best = self._index[g["culprit"]], set(g["tests"]), None
            for sha, rs in s["results"].items():
                i = self._index.get(sha, -1)
                if i > ci and (best is None or i < best) and self._evidence(rs, tests) == "pass":
                    best = i
            if best is not None:
                g["fixed"] = s["candidates"][best]
        return s["groups"]

    def _alert_masked(self, groups: list[dict], out: list[Action]) -> list[tuple[str, list[str]]]:
        """culprit_action=revert: the gate's revert of a blamed culprit lands right above the
        staging tip at blame time. When that commit still fails the culprit's tests, another
        culprit breaking the same tests hides in the span: every tree there contains both,
        so it cannot be isolated. Say so once, when the revert failed them 1 + x times (a
        flake of the culprit's test on the revert is not news for humans); new tips are still
        tested (a fix unblocks) and nobody else is blamed for those tests. Returns the
        reverts that failed them fewer times, with the tests to confirm them on."""
        cand = self._s["candidates"]
        by_revert: dict[int, list[dict]] = {}  # the commit the revert landed on -> its groups
        unconfirmed: list[tuple[str, list[str]]] = []
        for g in groups:
            if g.get("masked") or g["fixed"] is not None:
                continue
            r = self._index.get(g["tip"], -1) + 1
            if r <= self._index[g["culprit"]] or r >= len(cand):
                continue
            if self._evidence(self._s["results"].get(cand[r], []), set(g["tests"])) == "fail":
                by_revert.setdefault(r, []).append(g)
        for r, gs in list(by_revert.items()):  # confirmed on any group's tests: alert them all
            tests = sorted({t for g in gs for t in g["tests"]})
            if not self._confirmed(cand[r], set(tests))[0]:
                unconfirmed.append((cand[r], tests))
                del by_revert[r]
                continue
            for g in gs:
                g["masked"], g["alerted"], g["alerted_at"] = True, cand[-1], self._s["clock"]
        for r, gs in sorted(by_revert.items()):  # one alert per commit, naming each group
            parts = [
                f"culprit masked behind {g['culprit'][:12]}; commits {g['culprit'][:12]}..{cand[r][:12]}"
                " cannot be bisected until fixed"
                for g in gs
            ]
            tests = sorted({t for g in gs for t in g["tests"]})
            self._alert(
                out,
                "culprit-masked",
                f"{'; and '.join(parts)}: the revert {cand[r][:12]} still fails"
                f" {', '.join(tests[:5])}; testing new tips, a fix on staging unblocks them",
                cand[r],
            )
        return unconfirmed

    def _explained_at(self, i: int, groups: list[dict]) -> set[str]:
        """Tests a commit's tree fails because of blamed culprits not yet fixed below it."""
        out: set[str] = set()
        for g in groups:
            if self._index[g["culprit"]] <= i and (g["fixed"] is None or self._index[g["fixed"]] > i):
                out.update(g["tests"])
        return out

    def _probe_fixes(self, groups: list[dict], free: list[str], busy: set[str], out: list[Action]) -> None:
        """Find where each blamed culprit still failing at the top was fixed: test its tests
        just above the staging tip at blame time (where the revert lands), then galloping up."""
        s, cand = self._s, self._s["candidates"]
        probing = {tuple(r["tests"] or ()) for r in s["runs"].values() if r["kind"] == "bisect"}
        stalled = set(s["stalled"])
        for g in groups:
            if not free:
                return
            tests = set(g["tests"])
            if g["fixed"] is not None or not tests or tuple(g["tests"]) in probing:
                continue
            start = max(self._index.get(g["tip"], -1), self._index[g["culprit"]])
            still = any(
                self._index.get(sha, -1) > start
                and any(
                    r["outcome"] == "fail" and not r["flake"] and set(r["failed_tests"]) & tests for r in rs
                )
                for sha, rs in s["results"].items()
            )
            if not still:
                continue
            step = 1
            while start + step < len(cand):
                sha = cand[start + step]
                ev = self._evidence(s["results"].get(sha, []), tests)
                if ev is None and sha not in busy and sha not in stalled:
                    self._start(sha, free.pop(0), "bisect", g["tests"], out)
                    busy.add(sha)
                    break
                step *= 2

    def _hunt(self, good: int, free: list[str], busy: set[str], stalled: set[str], out: list[Action]) -> None:
        """Behind a block: a failure the blamed culprits do not explain (a second culprit,
        masked until now) is bisected on its own tests, above the last commit passing them.
        Failures of other tests are hunted at the same time on the pools left (each its own
        culprit: no need to wait for the first one's blame and revert)."""
        hunted: set[str] = set()
        while True:
            acted, tests = self._hunt_once(good, free, busy, stalled, out, hunted)
            if acted:
                hunted = set()  # blamed or alerted: the groups changed, look again
            elif not tests or not free:
                return
            else:
                hunted |= tests

    def _hunt_once(
        self, good: int, free: list[str], busy: set[str], stalled: set[str], out: list, exclude: set[str]
    ) -> tuple[bool, set[str]]:
        """One hunt (the lowest failure of tests outside ``exclude``): (blamed or alerted, its tests)."""
        s, cfg = self._s, self.config
        cand = s["candidates"]
        groups = self._update_groups()
        h, hunted = -1, set()
        for sha, rs in s["results"].items():
            i = self._index.get(sha, -1)
            if i <= good or (h >= 0 and i >= h):
                continue
            extra = {t for r in rs if r["outcome"] == "fail" for t in r["failed_tests"]}
            extra -= self._explained_at(i, groups) | exclude
            if extra and self._evidence(rs, extra) == "fail":
                h, hunted = i, extra

        if h < 0:
            return False, set()

        def evidence(i: int, rs: list[dict]) -> str | None:
            own = hunted - self._explained_at(i, groups)  # masked tests say nothing here
            return "pass" if not own else self._evidence(rs, own)

        lo = good
        for sha, rs in s["results"].items():
            i = self._index.get(sha, -1)
            if lo < i < h and evidence(i, rs) == "pass":
                lo = i
        hi = h
        for sha, rs in s["results"].items():
            i = self._index.get(sha, -1)
            if lo < i < hi and evidence(i, rs) == "fail":
                hi = i
        tests = sorted(hunted)
        if hi == lo + 1:
            sha = cand[hi]
            shown = None
            if lo == good:
                shown = self._tests_passed(cand[good]) if good >= 0 else self._master_shown()
            if shown is not None and not hunted <= set(shown) and good < 0:
                if self._check_master(hunted - set(shown), sha, out):
                    return True, hunted
                return False, hunted  # asking master first (parent runs)
            if shown is not None and not hunted <= set(shown):
                self._alert(
                    out,
                    "inherited-failure",
                    f"{sha[:12]} fails {', '.join(tests[:5])} that its parent was never shown to pass"
                    " (promoted on a partial run?); waiting for a fix on staging",
                    sha,
                )
                self._block(sha, tests)
                return True, hunted
            confirmed, fails = self._confirmed(sha, hunted)
            if fails:
                runs = [r["run_id"] for r in fails]
                tests = sorted(confirmed)
                author = s["authors"].get(sha, "")
                out.append(Blame(sha, author, tuple(tests), tuple(runs)))
                s["stats"]["blamed"] = s["stats"].get("blamed", 0) + 1
                self._push(
                    s["culprits"], {"commit": sha, "author": author, "failed_tests": tests, "run_ids": runs}
                )
                if cfg.culprit_action == "revert":
                    out.append(Revert(sha))
                self._block(sha, tests)
                return True, hunted
            self._confirm(sha, tests, free, stalled, out)
            return False, hunted

        def usable(i: int) -> bool:
            c = cand[i]
            return c not in busy and c not in stalled and evidence(i, s["results"].get(c, [])) is None

        self._probe(lo, hi, free, "bisect", tests, usable, out)
        return False, hunted

    def _probe(self, lo: int, hi: int, free: list[str], kind: str, tests, usable, out: list[Action]) -> None:
        """Start runs on ``free`` pools at prefix points in (lo, hi), splitting the interval,
        together with the runs already in flight there, into parts as equal as possible."""
        cand = self._s["candidates"]
        inflight = sorted(
            {i for i in (self._index.get(r["commit"], -1) for r in self._s["runs"].values()) if lo < i < hi}
        )
        bounds = [lo, *inflight, hi]
        # max-heap of segments by the size of their largest part once m probes are placed
        heap = [(-(b - a), a, b, 0) for a, b in itertools.pairwise(bounds) if b - a > 1]
        heapq.heapify(heap)
        alloc: dict[tuple[int, int], int] = {}
        budget = len(free)
        while budget and heap:
            _, a, b, m = heapq.heappop(heap)
            if m + 1 >= b - a:  # every commit inside already probed
                alloc[(a, b)] = m
                continue
            m += 1
            budget -= 1
            alloc[(a, b)] = m
            heapq.heappush(heap, (-_ceil_div(b - a, m + 1), a, b, m))
        points: list[int] = []
        for (a, b), m in sorted(alloc.items()):
            for j in range(1, m + 1):
                p = a + _ceil_div(j * (b - a), m + 1)
                if a < p < b and usable(p) and (not points or points[-1] != p):
                    points.append(p)
        for p in points:
            if not free:
                break
            self._start(cand[p], free.pop(0), kind, tests, out)


def config_from_settings(gate: Any, observed_flake_rate: float | None = None) -> PolicyConfig:
    """``PolicyConfig`` from ``Settings.gate`` (master/settings.py ``Gate``); confirmations
    follow the observed flake rate when ``gate.confirm_runs`` is not fixed."""
    return PolicyConfig(
        confirmations=gate.confirmations(observed_flake_rate),
        max_inconclusive_retries=gate.max_inconclusive_retries,
        bisect_failed_tests_only=gate.bisect_failed_tests_only,
        speculate=gate.speculate,
        culprit_action=gate.culprit_action,
        batch_load=getattr(gate, "batch_load", 0.0),
        learn_flake_rates=getattr(gate, "learn_flake_rates", False),
        target_false_blame=gate.target_false_blame,
        prior_flake_rate=gate.prior_flake_rate,
    )
