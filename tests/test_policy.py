"""Property tests of the pure gate policy against a deterministic oracle (hypothesis).

The oracle knows the truth: which commits break which test, which commits fix which
culprit, when a run flakes or is inconclusive. A synchronous driver plays git, pools and
BVT outcomes in rounds (every run takes one round) and checks the policy's invariants on
every action.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedulers.events import (
    Alert,
    Blame,
    CancelRun,
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
from schedulers.policy import REALERT_WAIT_RUNS, GatePolicy, PolicyConfig

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class History:
    """Ground truth: culprit i breaks test f"t{same.get(i, i)}" (``same``: culprits breaking
    another culprit's test, i.e. masked in its span), and f"t{also[i]}" too when given (a
    culprit breaking two tests, possibly another culprit's); fixes[j] = culprit it repairs."""

    n: int
    culprits: set[int]
    fixes: dict[int, int] = field(default_factory=dict)
    flaky: set[tuple[int, int]] = field(default_factory=set)  # (commit, attempt) -> spurious fail
    inconclusive: set[tuple[int, int]] = field(default_factory=set)
    same: dict[int, int] = field(default_factory=dict)
    also: dict[int, int] = field(default_factory=dict)
    # the test a spurious failure fails (default "tflaky"); a filtered run that does not
    # run it flakes on one of its own tests instead (Marvin runs only the tests it is given)
    flaky_test: dict[tuple[int, int], str] = field(default_factory=dict)

    def flake(self, i: int, attempt: int, tests: tuple[str, ...] | None) -> str:
        name = self.flaky_test.get((i, attempt), "tflaky")
        if tests is None or name in tests:
            return name
        return sorted(tests)[(i + attempt) % len(tests)]

    def live(self, i: int) -> set[int]:
        """Culprits in the tree at commit i and not fixed at or below it."""
        fixed = {c for f, c in self.fixes.items() if f <= i}
        return {c for c in self.culprits if c <= i and c not in fixed}

    def broken(self, i: int) -> set[str]:
        """Tests failing at commit i (i = -1 is master)."""
        live = self.live(i)
        return {f"t{self.same.get(c, c)}" for c in live} | {
            f"t{self.also[c]}" for c in live if c in self.also
        }


@dataclass
class Driver:
    hist: History
    k: int
    cfg: PolicyConfig
    fix_on_blame: bool = True
    restart_every: int = 0  # round-trip the policy through to_state() every N events
    policy: GatePolicy = field(init=False)
    master: int = -1
    shas: list[str] = field(default_factory=list)
    runs: dict = field(default_factory=dict)
    known: dict = field(default_factory=dict)  # sha -> [(outcome, tests, failed)]
    attempts: dict = field(default_factory=dict)
    blames: list = field(default_factory=list)
    blamed_tests: list = field(default_factory=list)  # (commit, test) per Blame
    promotions: list = field(default_factory=list)
    flakes: list = field(default_factory=list)
    alerts: list = field(default_factory=list)
    rounds: int = 0
    events: int = 0
    blame_round: dict = field(default_factory=dict)
    first_fail_round: int | None = None
    runs_started: int = 0
    cancelled: set = field(default_factory=set)
    simultaneous: bool = False  # a round's runs end together (one handle_all) or one by one
    depth: int = 0  # nesting of send() (actions answered by more events)
    episode_alerted: bool = False  # an Alert since the block began
    pushed_since_blame: bool = False  # commits pushed after the last Blame of the block
    silent_stalls: list = field(default_factory=list)
    clocked: bool = False  # events carry now = the round; commits arrive 2 per round
    revealed: int = 0  # (clocked) commits pushed so far; a fix pushes everything before it too

    def __post_init__(self):
        self.policy = GatePolicy(self.cfg)
        self.shas = [f"c{i:03d}" for i in range(self.hist.n)]

    def sha_index(self, sha: str) -> int:
        return int(sha[1:])

    def staging_event(self) -> StagingUpdated:
        m = "m0" if self.master < 0 else self.shas[self.master]
        end = min(self.revealed, len(self.shas)) if self.clocked else len(self.shas)
        commits = tuple(self.shas[self.master + 1 : end])
        return StagingUpdated(m, commits, {c: f"author-{c}" for c in commits})

    def send(self, ev, *more) -> None:
        self.events += 1
        evs = [ev, *more]
        if self.clocked:
            evs = [dataclasses.replace(e, now=float(self.rounds)) for e in evs]
        acts = self.policy.handle_all(evs)
        if self.restart_every and self.events % self.restart_every == 0:
            state = json.loads(json.dumps(self.policy.to_state()))
            assert state == self.policy.to_state()
            self.policy = GatePolicy(self.cfg, state)
        self.depth += 1
        for a in acts:
            self.act(a)
        self.depth -= 1
        if self.depth == 0:
            self.check_not_silent()

    def check_not_silent(self) -> None:
        """Never idle silently with blocked work: blocked candidates, an idle pool and no run
        in flight need an Alert in this block's episode, unless nothing was pushed since the
        last Blame (the blame mail is the news; the developers have not answered yet)."""
        v = self.policy.view()
        blocked = any(c["status"] in ("blocked", "culprit") for c in v["candidates"])
        if not blocked:
            self.episode_alerted = self.pushed_since_blame = False
            return
        idle = any(p["state"] == "idle" for p in v["pools"].values())
        if idle and not v["runs"] and self.pushed_since_blame and not self.episode_alerted:
            self.silent_stalls.append((self.master, len(self.shas), [c["commit"] for c in v["culprits"]]))

    def act(self, a) -> None:
        h = self.hist
        if isinstance(a, StartRun):
            self.check_start(a)
            self.runs_started += 1
            self.runs[a.run_id] = a
        elif isinstance(a, CancelRun):
            self.runs.pop(a.run_id, None)
            self.cancelled.add(a.run_id)
        elif isinstance(a, Promote):
            i = self.sha_index(a.commit)
            # master only ever moves to commits that passed, and never backwards
            assert any(r[0] == "pass" for r in self.known.get(a.commit, [])), a
            assert i > self.master
            # the one way to promote a broken tree: a filtered pass under the bisection's
            # premise (tests outside the filter passed higher up) where the breakage was fixed
            # in between, unseen (docs/gate.md); never a culprit the gate blamed, never one no
            # commit above repairs yet (a second culprit hunted on other tests, say)
            for c in h.live(i):
                fixed_above = any(f > i and cc == c for f, cc in h.fixes.items())
                assert self.cfg.bisect_failed_tests_only and fixed_above, (
                    f"promoted broken {a.commit}: {h.broken(i)}"
                )
                assert self.shas[c] not in self.blames, f"promoted {a.commit} holding blamed {self.shas[c]}"
            self.master = i
            self.promotions.append(a.commit)
            self.send(Promoted(a.commit))
            self.send(self.staging_event())
        elif isinstance(a, Blame):
            i = self.sha_index(a.commit)
            # blamed only on failing runs, never on inconclusive ones; the tree really fails
            for rid in a.run_ids:
                assert any(r[0] == "fail" and r[3] == rid for r in self.all_results()), a
            assert h.broken(i) & set(a.failed_tests), a
            assert not (h.broken(i - 1) & set(a.failed_tests)), f"parent of {a.commit} fails too"
            if not h.fixes:
                assert i in h.culprits
            self.blames.append(a.commit)
            self.blamed_tests.extend((a.commit, t) for t in a.failed_tests)
            self.blame_round[a.commit] = self.rounds
            self.pushed_since_blame = False
            if self.fix_on_blame and self.cfg.culprit_action == "hold":
                self.append_fix(i)
        elif isinstance(a, Revert):
            self.append_fix(self.sha_index(a.commit))
        elif isinstance(a, RecordFlake):
            self.flakes.append(a)
        elif isinstance(a, Alert):
            self.alerts.append(a)
            self.episode_alerted = True
            assert a.commit, a  # every alert names the commit it is about
            if a.kind in ("inherited-failure", "master-broken") and self.fix_on_blame:
                # master was promoted on a partial (filtered) run and breaks a test: fix it
                for c in sorted(self.hist.live(self.hist.n - 1)):
                    self.append_fix(c)
            elif a.kind in ("culprit-masked", "still-failing") and self.fix_on_blame:
                # a developer debugs the named commit and fixes every culprit in its tree; it
                # really still fails (a still-failing alert is not confirmed by a re-run: its
                # commit may instead have flaked on a blamed culprit's test, docs/gate.md)
                i = self.sha_index(a.commit)
                flaked = any((i, n) in self.hist.flaky for n in range(self.attempts.get(a.commit, 0)))
                assert self.hist.live(i) or (a.kind == "still-failing" and flaked), a
                for c in sorted(self.hist.live(self.sha_index(a.commit))):
                    if c not in self.hist.fixes.values():
                        self.append_fix(c)

    def all_results(self):
        for sha, rs in self.known.items():
            for o, tests, failed, rid in rs:
                yield (o, tests, failed, rid, sha)

    def append_fix(self, culprit: int) -> None:
        j = self.hist.n
        self.hist.n += 1
        self.hist.fixes[j] = culprit
        self.shas.append(f"c{j:03d}")
        self.revealed = len(self.shas)
        self.pushed_since_blame = True
        self.send(self.staging_event())

    def check_start(self, a: StartRun) -> None:
        rs = [(o, t, f) for o, t, f, _ in self.known.get(a.commit, [])]
        i = self.sha_index(a.commit)
        if a.kind == "parent":  # master itself, on the tests a candidate fails
            assert i == self.master and a.tests, a
            return
        assert i > self.master, f"testing an already promoted commit {a}"
        assert not any(
            o == "pass" and (t is None or (a.tests is not None and set(a.tests) <= set(t))) for o, t, f in rs
        ), a
        if a.tests is None and any(o == "fail" for o, _, _ in rs) and not any(o == "pass" for o, _, _ in rs):
            # only the suspect is re-tested (confirmation), never a known-failing top
            assert a.kind in ("confirm", "retry"), a
        if a.kind == "confirm":
            assert any(o == "fail" for o, _, _ in rs), a
            parent = self.shas[i - 1] if i > 0 else None
            # the parent passed, or a bisect probe below runs in the same round (the failing
            # top is confirmed on a spare pool while the probes decide whether it is the suspect)
            probing = any(
                r["kind"] in ("bisect", "retry") and self.master < self.sha_index(r["commit"]) < i
                for r in self.policy.in_flight().values()
            )
            # or, idle behind a blamed culprit, the tip's one failure is re-run in full (a fix
            # probe or the fix's own run may have flaked)
            tip = self.policy.candidates[-1] if self.policy.candidates else None
            recheck = a.tests is None and a.commit == tip and any(self.sha_index(b) < i for b in self.blames)
            # or a commit above a blamed culprit failed its tests once: one more run of them
            # before the gate alerts that they still fail (a revert or fix that did not work)
            blamed_tests_again = a.tests is not None and any(
                self.sha_index(c) < i and t in a.tests for c, t in self.blamed_tests
            )
            assert (
                parent is None
                or i - 1 <= self.master
                or probing
                or recheck
                or blamed_tests_again
                or any(
                    o == "pass" or (o == "fail" and f and not set(f) & set(a.tests or ()))
                    for o, _, f in [(o, t, f) for o, t, f, _ in self.known.get(parent, [])]
                )
            ), f"confirming {a.commit} before its parent passed"

    def outcome(self, run: StartRun) -> tuple[str, tuple[str, ...]]:
        i = self.sha_index(run.commit)
        n = self.attempts.get(run.commit, 0)
        self.attempts[run.commit] = n + 1
        if (i, n) in self.hist.inconclusive:
            return "inconclusive", ()
        broken = self.hist.broken(i)
        if run.tests is not None:
            broken &= set(run.tests)
        if not broken and (i, n) in self.hist.flaky:
            return "fail", (self.hist.flake(i, n, run.tests),)
        return ("fail", tuple(sorted(broken))) if broken else ("pass", ())

    def tick(self) -> bool:
        """(clocked) Idle with every commit pushed: the scheduler's timer fires at the time the
        policy asked for (``wake_at``). True when that started runs (the play goes on)."""
        wake = self.policy.wake_at() if self.clocked else None
        if wake is None:
            return False
        self.rounds = max(self.rounds, math.ceil(wake))
        self.send(Tick())
        return bool(self.runs)

    def run(self, max_rounds: int = 400) -> None:
        if self.clocked:  # the gate saw staging empty first: every commit is an arrival
            self.send(StagingUpdated("m0", ()))
        self.send(self.staging_event())
        for p in range(self.k):
            self.send(PoolAvailable(f"pool{p}"))
        while self.runs or (self.clocked and self.revealed < len(self.shas)) or self.tick():
            self.rounds += 1
            assert self.rounds <= max_rounds, "the gate does not converge"
            if self.clocked and self.revealed < len(self.shas):
                self.revealed += 2
                self.send(self.staging_event())
            batch = sorted(self.runs.values(), key=lambda r: int(r.run_id[1:]))
            self.runs.clear()
            finished = []
            for r in batch:
                if r.run_id in self.cancelled:
                    continue
                outcome, failed = self.outcome(r)
                if outcome != "inconclusive":
                    self.known.setdefault(r.commit, []).append((outcome, r.tests, failed, r.run_id))
                    if outcome == "fail" and self.first_fail_round is None:
                        self.first_fail_round = self.rounds
                if self.simultaneous:
                    finished.append(RunFinished(r.run_id, outcome, failed))
                else:
                    self.send(RunFinished(r.run_id, outcome, failed))
            if finished:
                self.send(*finished)


@st.composite
def histories(draw, flakes: bool = True, inconclusive: bool = True, fixes: bool = True, masked: bool = True):
    n = draw(st.integers(1, 64))
    culprits = draw(st.sets(st.integers(0, n - 1), max_size=3))
    fx: dict[int, int] = {}
    if fixes:
        for c in sorted(culprits):
            if draw(st.booleans()) and c + 1 < n:
                f = draw(st.integers(c + 1, n - 1))
                if f not in culprits and f not in fx:
                    fx[f] = c
    pairs = st.tuples(st.integers(0, n + 8), st.integers(0, 3))
    flaky = draw(st.sets(pairs, max_size=6)) if flakes else set()
    # at most one spurious failure per commit: with confirmations >= 1 no innocent is blamed
    seen: set[int] = set()
    flaky = {(c, a) for c, a in sorted(flaky) if not (c in seen or seen.add(c))}
    inc = draw(st.sets(pairs, max_size=6)) if inconclusive else set()
    same = {}  # a later culprit may break an earlier one's test (masked in its span)
    for a, b in itertools.pairwise(sorted(culprits)):
        if masked and draw(st.booleans()):
            same[b] = same.get(a, a)
    also = {}  # a culprit may break a second test: a new one, or another culprit's
    if masked:
        for c in sorted(culprits):
            if draw(st.integers(0, 3)) == 0:
                also[c] = draw(st.sampled_from(sorted(culprits | {n + 100 + c})))
    # a flake fails a test nobody breaks, or one a culprit breaks (the harder case: its
    # failure looks like that culprit's)
    names = ["tflaky", "tflaky2", *(f"t{c}" for c in sorted(culprits))]
    flaky_test = {fa: draw(st.sampled_from(names)) for fa in sorted(flaky)}
    return History(n, culprits, fx, flaky, inc, same, also, flaky_test)


configs = st.builds(
    PolicyConfig,
    confirmations=st.integers(1, 2),
    max_inconclusive_retries=st.just(10),
    bisect_failed_tests_only=st.booleans(),
    speculate=st.booleans(),
    culprit_action=st.sampled_from(["hold", "revert"]),
    cancel_useless_runs=st.booleans(),
    finish_tip_runs=st.booleans(),
    hold_hopeless_tips=st.booleans(),
    overlap_confirmation=st.booleans(),
    detect_behind_block=st.booleans(),
)


@FAST
@given(histories(), st.integers(1, 4), configs, st.sampled_from([0, 7]), st.booleans())
def test_invariants_on_random_histories(hist, k, cfg, restart_every, simultaneous):
    d = Driver(hist, k, cfg, restart_every=restart_every, simultaneous=simultaneous)
    d.run()
    _assert_invariants(d)


def _assert_invariants(d: Driver) -> None:
    """What every run of the driver must end with."""
    assert not d.silent_stalls, d.silent_stalls  # never idle and blocked without telling anyone
    # every culprit was fixed on blame or on an alert, so everything ends on master
    assert d.master == d.hist.n - 1, (d.master, d.hist.n, d.blames, d.alerts)
    assert not d.policy.view()["runs"]
    # each culprit blamed once per test: a second blame only for tests a later hunt found it
    # breaks too (the first bisection was filtered to the tests failing at its top)
    assert len(set(d.blamed_tests)) == len(d.blamed_tests), d.blamed_tests
    kinds = [(a.kind, a.commit) for a in d.alerts]
    assert len(set(kinds)) == len(kinds), kinds  # no alert repeated (once per episode)


@FAST
@given(histories(flakes=False), st.integers(1, 4), configs, st.sampled_from([0, 7]), st.booleans())
def test_invariants_hold_when_learned_flake_rates_blame_on_one_restricted_failure(
    hist, k, cfg, restart_every, simultaneous
):
    """The same invariants with ``learn_flake_rates`` on and a record that trusts every
    restricted failure (0 flakes in 10,000 such runs): blames come a confirmation earlier,
    every one still right (the driver checks each blame against the truth), and the record,
    kept across restarts, only grows. (With flakes, trusting them may blame an innocent:
    the simulator measures how often, docs/performance.md round 13.)"""
    cfg = dataclasses.replace(cfg, learn_flake_rates=True)
    d = Driver(hist, k, cfg, restart_every=restart_every, simultaneous=simultaneous)
    d.policy.learn_from({"runs": 10_000, "flakes": 0, "tests": {}})
    d.run()
    _assert_invariants(d)
    assert d.policy.flake_history()["runs"] >= 10_000 and d.policy.flake_history()["flakes"] == 0


@FAST
@given(histories(), st.integers(1, 4), configs, st.sampled_from([0, 7]), st.booleans())
def test_invariants_hold_with_load_adaptive_batching(hist, k, cfg, restart_every, simultaneous):
    """The same invariants with batching engaged: a clock (the round) and a load threshold
    every history exceeds once 12 commits and 3 full runs were seen; commits arrive 2 per
    round. (Runs here end in lockstep, so a tip is seldom held: the staggered case is
    ``test_under_load_a_new_tip_run_waits_for_a_bigger_batch...``. Hold mode only: the driver
    pushes a fix after every commit not yet revealed, while the gate's revert lands at the tip.)"""
    cfg = dataclasses.replace(cfg, batch_load=0.01, batch_per_load=10, batch_wait=3, culprit_action="hold")
    d = Driver(hist, k, cfg, restart_every=restart_every, simultaneous=simultaneous, clocked=True)
    d.run()
    _assert_invariants(d)


@FAST
@given(histories(flakes=False, inconclusive=False, fixes=False, masked=False), st.integers(1, 4))
def test_first_culprit_is_blamed_and_prefix_promoted(hist, k):
    cfg = PolicyConfig(confirmations=1, speculate=False)
    d = Driver(hist, k, cfg, fix_on_blame=False)
    d.run()
    if hist.culprits:
        first = min(hist.culprits)
        # the first failing commit first; masked later culprits are then hunted on their own tests
        assert d.blames[0] == f"c{first:03d}"
        assert {d.sha_index(b) for b in d.blames} == hist.culprits
        assert d.master == first - 1
        assert d.policy.view()["candidates"][0]["status"] == "culprit"
    else:
        assert d.blames == [] and d.master == hist.n - 1


@FAST
@given(st.integers(2, 64), st.integers(1, 4), st.data())
def test_one_culprit_isolated_in_log_k_plus_1_rounds(n, k, data):
    culprit = data.draw(st.integers(0, n - 1))
    for confirmations in (0, 1):
        cfg = PolicyConfig(confirmations=confirmations, speculate=False)
        d = Driver(History(n, {culprit}), k, cfg, fix_on_blame=False, simultaneous=True)
        d.run()
        assert d.blames == [f"c{culprit:03d}"]
        bisect_rounds = d.blame_round[d.blames[0]] - d.first_fail_round
        bound = math.ceil(math.log(n) / math.log(k + 1) - 1e-9)
        extra = math.ceil(confirmations / k) if confirmations else 0
        assert bisect_rounds <= bound + extra, (n, k, culprit, bisect_rounds, bound)


@FAST
@given(histories(inconclusive=False, fixes=False), st.integers(1, 3))
def test_flakes_are_recorded_not_blamed(hist, k):
    d = Driver(hist, k, PolicyConfig(confirmations=1), fix_on_blame=False)
    d.run()
    for b in d.blames:
        assert d.sha_index(b) in hist.culprits
    for f in d.flakes:  # each recorded flake is a spurious failure the history made
        (test,) = f.tests
        i = d.sha_index(f.commit)
        assert test not in hist.broken(i), f
        assert any((i, a) in hist.flaky for a in range(d.attempts.get(f.commit, 0))), f


def test_inconclusive_never_blames_and_retries_are_bounded():
    hist = History(4, set(), inconclusive={(3, a) for a in range(10)})
    d = Driver(hist, 2, PolicyConfig(max_inconclusive_retries=2, speculate=False))
    d.run()
    assert d.blames == []
    assert [a.kind for a in d.alerts] == ["retries-exhausted"]
    assert d.attempts["c003"] == 3  # the first run and 2 retries
    assert "c003" in d.alerts[0].message


def test_retry_goes_to_another_pool():
    p = GatePolicy(PolicyConfig(speculate=False))
    p.handle(StagingUpdated("m", ("a", "b")))
    (s1,) = p.handle(PoolAvailable("p1"))
    p.handle(PoolAvailable("p2"))
    acts = p.handle(RunFinished(s1.run_id, "inconclusive", reason="BMC 127.0.0.1:623 timed out"))
    (retry,) = [a for a in acts if isinstance(a, StartRun)]
    assert (retry.commit, retry.kind, retry.pool) == ("b", "retry", "p2")


def test_a_run_on_a_pool_lent_to_a_try_build_is_planned_again_elsewhere_and_never_counted():
    """A try build took the pool's one slot before the gate's request for it was served: the
    run cannot have started, so it is cancelled (no inconclusive count) and started on another
    pool; the pool's return does not re-try stalled commits (it was only lent)."""
    p = GatePolicy(PolicyConfig(speculate=False, max_inconclusive_retries=0))
    p.handle(StagingUpdated("m", ("a", "b")))
    (run,) = p.handle(PoolAvailable("p1"))
    acts = p.handle(PoolUnavailable("p1", "running try-bvt build #3", cause="lent"))
    assert acts == [CancelRun(run.run_id, "pool p1 is running other work: planned again")]
    view = p.view()["pools"]["p1"]
    assert (view["state"], view["cause"], view["reason"]) == (
        "unavailable",
        "lent",
        "running try-bvt build #3",
    )
    # a state saved before pool causes (a lent flag) reads the same; a bad cause is refused
    old = p.to_state()
    old["pools"]["p1"] = {k: v for k, v in old["pools"]["p1"].items() if k != "cause"} | {"lent": True}
    assert GatePolicy(p.config, old).view()["pools"]["p1"]["cause"] == "lent"
    with pytest.raises(ValueError, match="pool p1: cause 'borrowed' is not one of quarantined, offline"):
        PoolUnavailable("p1", "?", cause="borrowed")
    (again,) = p.handle(PoolAvailable("p2"))
    assert (again.commit, again.pool) == ("b", "p2")
    # with no retry allowed, an inconclusive run stalls "b"; p1 coming back from a loan does
    # not give it another chance (a pool returning from quarantine would)
    acts = p.handle(RunFinished(again.run_id, "inconclusive", reason="lost worker"))
    assert [a.kind for a in acts if isinstance(a, Alert)] == ["retries-exhausted"]
    assert not any(isinstance(a, StartRun) for a in p.handle(PoolAvailable("p1")))
    p.handle(PoolUnavailable("p1", "quarantined: 3 consecutive infrastructure failures", cause="quarantined"))
    assert p.view()["pools"]["p1"]["cause"] == "quarantined"
    (retried,) = [a for a in p.handle(PoolAvailable("p1")) if isinstance(a, StartRun)]
    assert retried.commit == "b"


def test_the_gate_takes_a_lent_pool_back_for_a_run_between_staging_and_master_only():
    """``needs_pools`` (try.preempt): a pool running a try build is needed back for a tip run
    when no gate run is in flight, for a bisection or a confirmation; not for a tip run while
    another gate run is in flight, not for speculation, not while a pool is idle; and asking
    changes nothing."""
    lent = PoolUnavailable("p2", "running try-bvt build #1", cause="lent")
    p = GatePolicy(PolicyConfig(speculate=True))
    p.handle_all([PoolUnavailable("p1", "running try-bvt build #2", cause="lent"), lent])
    assert p.needs_pools(["p2", "p1"]) == []  # nothing to test
    shas = tuple("abcdefghijklmnopqrst")  # 20 commits: likely to fail, worth speculating
    p.handle(StagingUpdated("m", shas))
    before = p.to_state()
    assert p.needs_pools(["p2", "p1"]) == ["p2"]  # the tip; then only speculation for p1
    assert p.to_state() == before
    (tip,) = [a for a in p.handle(PoolAvailable("p2")) if isinstance(a, StartRun)]
    assert tip.kind == "tip" and tip.commit == "t"
    assert p.needs_pools(["p1"]) == []  # speculation: not worth stopping a developer's run
    (spec,) = [a for a in p.handle(PoolAvailable("p1")) if isinstance(a, StartRun)]
    assert spec.kind == "speculate"
    p.handle(StagingUpdated("m", (*shas, "u")))
    q = GatePolicy(PolicyConfig(speculate=False), p.to_state())
    p3 = PoolUnavailable("p3", "running try-bvt build #4", cause="lent")
    q.handle(p3)
    assert q.needs_pools(["p3"]) == []  # a newer tip while the gate already runs one: wait
    # the tip fails: the bisection needs every pool it can get
    acts = q.handle(RunFinished(tip.run_id, "fail", ("test_vm",)))
    assert not any(isinstance(a, StartRun) and a.pool == "p3" for a in acts)
    assert q.needs_pools(["p3"]) == ["p3"]
    (probe,) = [a for a in q.handle(PoolAvailable("p3")) if isinstance(a, StartRun)]
    assert probe.kind == "bisect"
    # with a pool idle the gate had nothing more to start on it
    r = GatePolicy(PolicyConfig(speculate=False))
    r.handle_all([PoolAvailable("p1"), lent])
    assert r.needs_pools(["p2"]) == []


def test_a_suspect_is_confirmed_on_another_pool_than_the_one_that_failed_it_when_one_is_free():
    """A failure only one pool reproduces (a broken host of that pool) must not confirm itself:
    the confirmation goes to a pool that did not fail the commit; with none free, to any."""
    p = GatePolicy(PolicyConfig(speculate=False))
    p.handle(StagingUpdated("m", ("b",)))
    (tip,) = p.handle(PoolAvailable("p1"))
    p.handle(PoolAvailable("p2"))
    acts = p.handle(RunFinished(tip.run_id, "fail", ("test_vm",)))
    (confirm,) = [a for a in acts if isinstance(a, StartRun)]
    assert (confirm.commit, confirm.kind, confirm.pool) == ("b", "confirm", "p2")
    # the other pool passes it: a flake, nobody blamed
    acts = p.handle(RunFinished(confirm.run_id, "pass"))
    assert not any(isinstance(a, Blame) for a in acts)
    assert any(isinstance(a, RecordFlake) for a in acts)

    q = GatePolicy(PolicyConfig(speculate=False))
    q.handle(StagingUpdated("m", ("b",)))
    (tip,) = q.handle(PoolAvailable("p1"))
    (confirm,) = [
        a for a in q.handle(RunFinished(tip.run_id, "fail", ("test_vm",))) if isinstance(a, StartRun)
    ]
    assert confirm.pool == "p1"  # the only pool: better than waiting


def test_staging_force_push_and_master_moved_alert_and_replan():
    p = GatePolicy(PolicyConfig(speculate=False))
    p.handle(StagingUpdated("m", ("a", "b", "c")))
    (run,) = p.handle(PoolAvailable("p1"))
    acts = p.handle(StagingUpdated("m", ("a", "x")))
    assert [a.kind for a in acts if isinstance(a, Alert)] == ["staging-rewritten"]
    assert CancelRun(run.run_id, "commit no longer a candidate") in acts
    assert any(isinstance(a, StartRun) and a.commit == "x" for a in acts)
    acts = p.handle(StagingUpdated("elsewhere", ("x",)))
    assert [a.kind for a in acts if isinstance(a, Alert)] == ["master-moved"]
    assert p.master == "elsewhere" and p.candidates == ["x"]


def test_rejected_promotion_stops_promoting_until_replanned():
    p = GatePolicy(PolicyConfig(speculate=False))
    p.handle(StagingUpdated("m", ("a", "b")))
    (run,) = p.handle(PoolAvailable("p1"))
    assert Promote("b") in p.handle(RunFinished(run.run_id, "pass"))
    acts = p.handle(Promoted("b", ok=False, reason="rejected: master moved"))
    assert [a.kind for a in acts if isinstance(a, Alert)] == ["promotion-rejected"]
    assert not any(isinstance(a, Promote) for a in acts)
    acts = p.handle(StagingUpdated("m2", ("a", "b")))
    assert [a.kind for a in acts if isinstance(a, Alert)] == ["master-moved"]
    assert Promote("b") in acts  # b's pass is still valid on the new master's staging


def test_retried_rejected_promotion_is_one_alert_in_the_view_per_episode():
    p = GatePolicy(PolicyConfig(speculate=False))
    p.handle(StagingUpdated("m", ("a", "b")))
    (run,) = p.handle(PoolAvailable("p1"))
    assert Promote("b") in p.handle(RunFinished(run.run_id, "pass"))
    for _ in range(3):  # the driver re-plans and retries; master is still rejected
        acts = p.handle(Promoted("b", ok=False, reason="hook declined"))
        assert [a.kind for a in acts if isinstance(a, Alert)] == ["promotion-rejected"]
        assert Promote("b") in p.handle(StagingUpdated("m", ("a", "b")))
    rejected = [a for a in p.view()["alerts"] if a["kind"] == "promotion-rejected"]
    assert len(rejected) == 1 and rejected[0]["commit"] == "b"
    # another reason is another episode; so is a rejection after a successful promotion
    p.handle(Promoted("b", ok=False, reason="master moved"))
    assert len([a for a in p.view()["alerts"] if a["kind"] == "promotion-rejected"]) == 2
    p.handle(StagingUpdated("m", ("a", "b")))
    p.handle(Promoted("b", ok=True))
    (run,) = [a for a in p.handle(StagingUpdated("b", ("c",))) if isinstance(a, StartRun)]
    assert Promote("c") in p.handle(RunFinished(run.run_id, "pass"))
    p.handle(Promoted("c", ok=False, reason="hook declined"))
    assert [a["commit"] for a in p.view()["alerts"] if a["kind"] == "promotion-rejected"] == ["b", "b", "c"]


def test_state_round_trips_exactly_through_json():
    p = GatePolicy(PolicyConfig())
    p.handle(StagingUpdated("m", tuple(f"c{i}" for i in range(10)), {"c9": "Ann <a@x>"}))
    for n in ("p1", "p2", "p3"):
        p.handle(PoolAvailable(n))
    p.handle(PoolUnavailable("p3", "quarantined"))
    state = p.to_state()
    assert json.loads(json.dumps(state)) == state
    q = GatePolicy(PolicyConfig(), json.loads(json.dumps(state)))
    assert q.to_state() == state and q.view() == p.view()
    v = q.view()
    assert {c["status"] for c in v["candidates"]} == {"untested", "testing"}
    assert v["pools"]["p3"]["state"] == "unavailable"


def test_speculation_uses_idle_pools_below_the_tip_of_a_large_batch():
    p = GatePolicy(PolicyConfig(speculate=True))
    p.handle(StagingUpdated("m", tuple(f"c{i:02d}" for i in range(18))))  # 1 - 0.95^18 = 0.60
    starts = []
    for n in ("p1", "p2", "p3"):
        starts += [a for a in p.handle(PoolAvailable(n)) if isinstance(a, StartRun)]
    assert [(a.commit, a.kind) for a in starts] == [
        ("c17", "tip"),
        ("c08", "speculate"),
        ("c04", "speculate"),
    ]


def test_work_conserving_idle_pools_test_new_tips_and_busy_pools_batch():
    p = GatePolicy(PolicyConfig(speculate=True))
    p.handle(StagingUpdated("m", ("a", "b", "c")))  # 1 - 0.95^3 = 0.14: no speculation
    (run,) = [a for n in ("p1", "p2") for a in p.handle(PoolAvailable(n)) if isinstance(a, StartRun)]
    assert (run.commit, run.kind) == ("c", "tip")  # one run covers the batch a..c
    # a pool is idle: the new tip is tested at once (latency), not held for the next batch
    (run2,) = [a for a in p.handle(StagingUpdated("m", ("a", "b", "c", "d"))) if isinstance(a, StartRun)]
    assert (run2.commit, run2.kind, run2.pool) == ("d", "tip", "p2")
    # every pool busy: the commits arriving now wait and form one batch
    assert not [
        a for a in p.handle(StagingUpdated("m", ("a", "b", "c", "d", "e", "f"))) if isinstance(a, StartRun)
    ]
    acts = p.handle(RunFinished(run.run_id, "pass"))  # a pool frees: one run for the batch e, f
    assert Promote("c") in acts
    assert [(a.commit, a.kind) for a in acts if isinstance(a, StartRun)] == [("f", "tip")]
    p.handle(Promoted("c"))
    assert p.promoting is None and p.to_state()["promoting"] is None
    # the tip is covered by an in-flight run: no duplicate run of the same tip
    assert not [a for a in p.handle(StagingUpdated("c", ("d", "e", "f"))) if isinstance(a, StartRun)]
    assert p.culprit_rate() == 0.05 * 20 / 23  # 3 commits promoted, no blame, prior 0.05 worth 20


@pytest.mark.parametrize("finish", [True, False])
def test_a_tip_run_above_a_new_failure_finishes_and_promotes_past_a_flake(finish):
    """Two tip runs in flight, c then f above it. c fails (a flake, as it turns out): the
    gate bisects below c on the other pools, and f's run, which cannot change the hunt, is
    left to finish (``finish_tip_runs``): its pass shows c's failure was a flake and promotes
    everything at once, without waiting for the hunt. Off, f's run is cancelled."""
    p = GatePolicy(PolicyConfig(speculate=False, finish_tip_runs=finish))
    p.handle(StagingUpdated("m", ("a", "b", "c")))
    first = [a for n in ("p1", "p2", "p3") for a in p.handle(PoolAvailable(n)) if isinstance(a, StartRun)]
    assert [(a.commit, a.kind) for a in first] == [("c", "tip")]
    (top,) = [
        a for a in p.handle(StagingUpdated("m", ("a", "b", "c", "d", "e", "f"))) if isinstance(a, StartRun)
    ]
    assert (top.commit, top.kind) == ("f", "tip")
    acts = p.handle(RunFinished(first[0].run_id, "fail", ("test_vm",)))
    probes = [a for a in acts if isinstance(a, StartRun)]
    assert {a.tests for a in probes} == {("test_vm",)} and "bisect" in {a.kind for a in probes}
    cancelled = {a.run_id for a in acts if isinstance(a, CancelRun)}
    if not finish:
        assert cancelled == {top.run_id}
        return
    assert not cancelled and top.run_id in p.in_flight()
    acts = p.handle(RunFinished(top.run_id, "pass"))
    assert Promote("f") in acts
    assert {a.run_id for a in acts if isinstance(a, CancelRun)} == {a.run_id for a in probes}
    assert not [a for a in acts if isinstance(a, Blame)]


@pytest.mark.parametrize("filtered", [True, False])
def test_two_flakes_of_different_tests_at_the_suspect_are_no_confirmation(filtered):
    """b's tip run fails test_a; its parent a passes in full; the confirmation of b fails
    test_b instead (whole-suite bisection) or passes test_a (filtered). Either way the run
    covered test_a without failing it, so test_a's failure was a flake (and test_b's too:
    the first run passed it), and neither test has failed twice: no blame (it counted two
    failing runs and blamed b for both tests). Whole suite: no run of b passed, so one more
    full run decides and its pass promotes b; filtered: b's full run failed only test_a,
    which now passed, so b is promoted at once."""
    p = GatePolicy(PolicyConfig(speculate=False, bisect_failed_tests_only=filtered))
    p.handle(StagingUpdated("m", ("a", "b")))
    (tip,) = [a for n in ("p1",) for a in p.handle(PoolAvailable(n)) if isinstance(a, StartRun)]
    assert (tip.commit, tip.kind) == ("b", "tip")
    (probe,) = [a for a in p.handle(RunFinished(tip.run_id, "fail", ("test_a",))) if isinstance(a, StartRun)]
    assert (probe.commit, probe.kind) == ("a", "bisect")
    acts = p.handle(RunFinished(probe.run_id, "pass"))
    (confirm,) = [a for a in acts if isinstance(a, StartRun)]
    assert Promote("a") in acts and (confirm.commit, confirm.kind) == ("b", "confirm")
    assert confirm.tests == (("test_a",) if filtered else None)
    p.handle(Promoted("a"))
    acts = p.handle(
        RunFinished(confirm.run_id, "pass" if filtered else "fail", () if filtered else ("test_b",))
    )
    assert not [a for a in acts if isinstance(a, Blame)]
    flakes = [(a.commit, a.tests) for a in acts if isinstance(a, RecordFlake)]
    assert flakes == [("b", ("test_a",))] + ([] if filtered else [("b", ("test_b",))])
    if filtered:  # b's full run failed test_a only, which now passed: everything passed
        assert Promote("b") in acts
        return
    (again,) = [a for a in acts if isinstance(a, StartRun)]
    assert (again.commit, again.tests) == ("b", None)
    acts = p.handle(RunFinished(again.run_id, "pass"))
    assert Promote("b") in acts and not [a for a in acts if isinstance(a, Blame)]


@pytest.mark.parametrize("switch", [False, True])
def test_the_research_switch_blames_on_a_probes_failure_alone(switch):
    """``confirm_on_filtered_failure`` (off; docs/performance.md round 11): c's tip run
    fails t1; the probe at b (restricted to t1) fails it too and a passes it. Off, b's
    re-run on t1 must fail before any blame; on, the probe's failure confirms b at once. A suspect
    that only failed a full run (the tip itself) is confirmed as before either way."""
    p = GatePolicy(PolicyConfig(speculate=False, confirm_on_filtered_failure=switch))
    p.handle(StagingUpdated("m", ("a", "b", "c")))
    (tip,) = [x for n in ("p1", "p2") for x in p.handle(PoolAvailable(n)) if isinstance(x, StartRun)]
    probes = [x for x in p.handle(RunFinished(tip.run_id, "fail", ("t1",))) if isinstance(x, StartRun)]
    assert sorted((x.commit, x.kind, x.tests) for x in probes) == [
        ("a", "bisect", ("t1",)),
        ("b", "bisect", ("t1",)),
    ]
    by = {x.commit: x for x in probes}
    acts = p.handle(RunFinished(by["b"].run_id, "fail", ("t1",)))  # (a spare pool may confirm b now)
    acts += p.handle(RunFinished(by["a"].run_id, "pass"))
    blames = [x.commit for x in acts if isinstance(x, Blame)]
    confirms = [(x.commit, x.kind) for x in acts if isinstance(x, StartRun) and x.kind == "confirm"]
    assert confirms == [("b", "confirm")]  # (started while a's probe was still running)
    assert blames == (["b"] if switch else [])  # on: blamed before that confirmation ends

    q = GatePolicy(PolicyConfig(speculate=False, confirm_on_filtered_failure=switch))
    q.handle(StagingUpdated("m", ("a", "b")))
    (tip,) = [x for x in q.handle(PoolAvailable("p1")) if isinstance(x, StartRun)]
    (probe,) = [x for x in q.handle(RunFinished(tip.run_id, "fail", ("t1",))) if isinstance(x, StartRun)]
    acts = q.handle(RunFinished(probe.run_id, "pass"))
    assert not [x for x in acts if isinstance(x, Blame)]  # b failed a full run only: confirm first
    assert [(x.commit, x.kind) for x in acts if isinstance(x, StartRun)] == [("b", "confirm")]


def _hunt_to_suspect(p: GatePolicy) -> list:
    """a, b, c on staging; c's tip run fails t1; the probe at b (restricted to t1) fails it and
    the probe at a passes it: b is the suspect. The actions of the last two events."""
    p.handle(StagingUpdated("m", ("a", "b", "c")))
    (tip,) = [x for n in ("p1", "p2") for x in p.handle(PoolAvailable(n)) if isinstance(x, StartRun)]
    acts = p.handle(RunFinished(tip.run_id, "fail", ("t1",)))
    probes = {x.commit: x for x in acts if isinstance(x, StartRun)}
    assert sorted((c, x.tests) for c, x in probes.items()) == [("a", ("t1",)), ("b", ("t1",))]
    return p.handle(RunFinished(probes["b"].run_id, "fail", ("t1",))) + p.handle(
        RunFinished(probes["a"].run_id, "pass")
    )


@pytest.mark.parametrize(
    "record, blamed_at_once",
    [
        (None, False),  # a new gate: the prior (2 %) says a probe flakes too often
        ({"runs": 500, "flakes": 0, "tests": {}}, True),  # 0.2 / 510 = 0.04 % <= 0.1 %
        ({"runs": 500, "flakes": 9, "tests": {}}, False),  # 9.2 / 510 = 1.8 %: like the whole suite
        ({"runs": 500, "flakes": 0, "tests": {"t1": [3, 1]}}, False),  # t1 itself flaked once in 3
        ({"runs": 100, "flakes": 0, "tests": {"t1": [200, 0]}}, True),  # 0.018 % for t1 itself
    ],
)
def test_learned_flake_rates_blame_a_suspect_on_one_restricted_failure_only_where_it_is_rare(
    record, blamed_at_once
):
    """``learn_flake_rates`` (the settings' default): b failed t1 in a probe restricted to t1 and
    a passed it. b is blamed on that one failure only when the gate's record of restricted runs
    puts t1's flake rate there within ``target_false_blame``; otherwise b's re-run comes first.
    The record survives a restart (it is part of the saved state)."""
    p = GatePolicy(PolicyConfig(speculate=False, learn_flake_rates=True))
    if record is not None:
        p.learn_from(record)
        p = GatePolicy(p.config, json.loads(json.dumps(p.to_state())))
    acts = _hunt_to_suspect(p)
    assert [x.commit for x in acts if isinstance(x, Blame)] == (["b"] if blamed_at_once else [])
    off = GatePolicy(PolicyConfig(speculate=False))  # off: the same record changes nothing
    if record is not None:
        off.learn_from(record)
    assert not [x for x in _hunt_to_suspect(off) if isinstance(x, Blame)]


def test_the_learned_record_counts_restricted_passes_and_shown_flakes_only():
    """What the learned flake rates learn from: a restricted run that passed (one clean sample
    per test it ran), and a restricted failure once shown a flake (a sample and a flake). A
    failure that is the culprit's (confirmed) is no sample, nor is any full run; a state saved
    before round 13 starts from an empty record."""
    p = GatePolicy(PolicyConfig(speculate=False, learn_flake_rates=True))
    acts = _hunt_to_suspect(p)  # a passed t1 (a sample); b failed it (not yet known which)
    assert p.flake_history() == {"runs": 1, "flakes": 0, "tests": {"t1": [1, 0]}}
    (confirm,) = [x for x in acts if isinstance(x, StartRun) and x.kind == "confirm"]
    acts = p.handle(RunFinished(confirm.run_id, "pass"))  # a sample, and b's failure was a flake
    assert p.flake_history() == {"runs": 3, "flakes": 1, "tests": {"t1": [3, 1]}}
    assert p.filtered_flake_rate("t1") > p.filtered_flake_rate() > 0.02  # 1 flake in 3: worse than the prior
    learned = p.view()["learned"]
    assert (learned["on"], learned["runs"], learned["flakes"], learned["distrusted"]) == (True, 3, 1, ["t1"])

    q = GatePolicy(PolicyConfig(speculate=False, learn_flake_rates=True))
    acts = _hunt_to_suspect(q)
    (confirm,) = [x for x in acts if isinstance(x, StartRun) and x.kind == "confirm"]
    acts = q.handle(RunFinished(confirm.run_id, "fail", ("t1",)))  # b is the culprit
    assert [x.commit for x in acts if isinstance(x, Blame)] == ["b"]
    assert q.flake_history() == {"runs": 1, "flakes": 0, "tests": {"t1": [1, 0]}}  # a's pass only

    old = q.to_state()
    del old["filtered"]
    assert GatePolicy(q.config, old).flake_history() == {"runs": 0, "flakes": 0, "tests": {}}


def test_config_from_settings_follows_observed_flake_rate():
    from master.settings import Gate
    from schedulers.policy import config_from_settings

    g = Gate(target_false_blame=0.001, culprit_action="revert")
    assert config_from_settings(g).confirmations == 1  # prior 2 %: 0.02^(1+1) <= 1e-3
    assert config_from_settings(g, 0.2).confirmations == 4  # 0.2^(1+4) <= 1e-3 < 0.2^4
    assert config_from_settings(g).culprit_action == "revert"
    assert config_from_settings(g).batch_load == 1.2  # load-adaptive batching on by default
    assert config_from_settings(Gate(batch_load=0)).batch_load == 0
    assert config_from_settings(g).learn_flake_rates  # on by default
    assert not config_from_settings(Gate(learn_flake_rates=False)).learn_flake_rates
    assert config_from_settings(Gate(target_false_blame=0.01)).target_false_blame == 0.01


def test_decision_on_40000_candidates_is_fast():
    import time

    commits = tuple(f"{i:040x}" for i in range(40_000))
    p = GatePolicy(PolicyConfig())
    p.handle(StagingUpdated("m", commits))
    t0 = time.perf_counter()
    (start,) = p.handle(PoolAvailable("p1"))
    acts = p.handle(RunFinished(start.run_id, "fail", ("test_x",)))
    assert [a.kind for a in acts if isinstance(a, StartRun)] == ["bisect"]
    assert time.perf_counter() - t0 < 1.0


def _play(
    p: GatePolicy,
    master: str,
    staging: list[str],
    breaks: dict,
    fixes: dict,
    acts: list,
    filtered_first=False,
    flaky_once=(),
    clock: list[float] | None = None,
) -> list:
    """Run every started run to completion in start order (one at a time) against the truth:
    ``breaks`` maps culprit -> test, ``fixes`` maps commit -> culprit it repairs; a Revert
    pushes "revert-<sha>" to the staging tip. ``filtered_first``: runs of some tests only
    (shorter) end before full runs; the first run of each commit in ``flaky_once`` fails
    test_vm whatever the truth (a flake); ``clock`` ([hours]): each run ends 2 h after the
    previous one, events carry that time. Returns every action seen."""
    now = (lambda: clock[0]) if clock is not None else (lambda: 0.0)
    seen, runs, flaked = [], [], set()

    def broken(sha: str, tests) -> tuple[str, ...]:
        upto = staging[: staging.index(sha) + 1]
        out = {t for c, t in breaks.items() if c in upto and not any(fixes.get(f) == c for f in upto)}
        return tuple(sorted(out if tests is None else out & set(tests)))

    def apply(batch) -> None:
        for a in batch:
            seen.append(a)
            if isinstance(a, StartRun):
                runs.append(a)
            elif isinstance(a, CancelRun):
                runs[:] = [r for r in runs if r.run_id != a.run_id]
            elif isinstance(a, Revert):
                staging.append(f"revert-{a.commit}")
                fixes[f"revert-{a.commit}"] = a.commit
                apply(p.handle(StagingUpdated(master, tuple(staging), now=now())))

    apply(acts)
    for _ in range(100):
        if not runs:
            return seen
        if filtered_first:
            runs.sort(key=lambda r: r.tests is None)
        r = runs.pop(0)
        failed = broken(r.commit, r.tests)
        if r.commit in flaky_once and r.commit not in flaked:
            flaked.add(r.commit)
            failed = ("test_vm",)
        if clock is not None:
            clock[0] += 2.0
        apply(p.handle(RunFinished(r.run_id, "fail" if failed else "pass", failed, now=now())))
    raise AssertionError("the gate does not settle")


def test_culprit_masked_behind_a_culprit_breaking_the_same_test_is_alerted_not_stuck():
    """B lands inside A's span and breaks the same test: no tree in staging holds B without
    A, so B cannot be isolated. The gate blames A only, alerts once, keeps testing new tips
    and promotes everything once a fix of B arrives on top."""
    staging = ["a0", "A", "B", "a3", "a4"]
    breaks, fixes = {"A": "test_vm", "B": "test_vm"}, {}
    p = GatePolicy(PolicyConfig(confirmations=1, speculate=False, culprit_action="revert"))
    acts = p.handle(StagingUpdated("m", tuple(staging)))
    acts += p.handle(PoolAvailable("p1")) + p.handle(PoolAvailable("p2"))
    seen = _play(p, "m", staging, breaks, fixes, acts)
    assert [(a.commit, a.failed_tests) for a in seen if isinstance(a, Blame)] == [("A", ("test_vm",))]
    assert [a.commit for a in seen if isinstance(a, Revert)] == ["A"]
    alerts = [a for a in seen if isinstance(a, Alert)]
    assert [a.kind for a in alerts] == ["culprit-masked"]
    assert "masked behind A; commits A..revert-A cannot be bisected until fixed" in alerts[0].message
    assert [a.commit for a in seen if isinstance(a, Promote)] == ["a0"]
    assert not p.in_flight()  # settled, not spinning

    # an innocent new tip is tested; it still fails test_vm: nobody new is blamed, no new alert
    staging.append("n1")
    seen = _play(p, "a0", staging, breaks, fixes, p.handle(StagingUpdated("a0", tuple(staging[1:]))))
    assert next((a.commit, a.kind) for a in seen if isinstance(a, StartRun)) == ("n1", "tip")
    assert not [a for a in seen if isinstance(a, (Blame, Alert, Promote))]
    assert {c["status"] for c in p.view()["candidates"][1:]} == {"blocked"}

    # a fix of B on top: its tip passes and everything is promoted
    staging.append("fixB")
    fixes["fixB"] = "B"
    seen = _play(p, "a0", staging, breaks, fixes, p.handle(StagingUpdated("a0", tuple(staging[1:]))))
    assert [a.commit for a in seen if isinstance(a, Promote)] == ["fixB"]
    assert not [a for a in seen if isinstance(a, (Blame, Alert))]
    assert [c["commit"] for c in p.view()["culprits"]] == ["A"]


def test_a_filtered_pass_is_not_promoted_over_a_culprit_of_other_tests_not_yet_seen():
    """A run of some tests only says nothing about the others. After a masked culprit (B
    behind A, same test), the gate probes where B was fixed with test_vm alone; the probe
    passes at fixB, whose tree also holds C (breaking test_net, not yet seen: the tip's full
    run is still going). Promoting fixB on that pass would break master; the gate waits for
    the full run, then bisects test_net, blames C and promotes C's revert."""
    staging = ["a0", "A", "B", "a3"]
    breaks, fixes = {"A": "test_vm", "B": "test_vm", "C": "test_net"}, {}
    p = GatePolicy(PolicyConfig(confirmations=1, speculate=False, culprit_action="revert"))
    acts = p.handle(StagingUpdated("m", tuple(staging)))
    acts += p.handle(PoolAvailable("p1")) + p.handle(PoolAvailable("p2"))
    seen = _play(p, "m", staging, breaks, fixes, acts)
    assert [a.commit for a in seen if isinstance(a, Blame)] == ["A"]  # and B is masked behind it

    staging += ["C", "n1", "fixB", "x1", "x2"]
    fixes["fixB"] = "B"
    acts = p.handle(StagingUpdated("a0", tuple(staging[1:])))
    seen = _play(p, "a0", staging, breaks, fixes, acts, filtered_first=True)
    probe = [a for a in seen if isinstance(a, StartRun) and a.commit == "fixB"]
    assert probe and probe[0].tests == ("test_vm",)  # the probe that passes at fixB
    assert [a.commit for a in seen if isinstance(a, Blame)] == ["C"]
    assert [a.commit for a in seen if isinstance(a, Promote)] == ["revert-C"]


def _settle(p: GatePolicy, staging: list[str], breaks: dict, acts: list, master_fails=()) -> list:
    """Like ``_play`` (one run at a time, in start order) but the driver also pushes master:
    a ``Promote`` is acknowledged (``Promoted``, then staging seen from the new master).
    ``master_fails``: tests a parent run of master fails whatever the truth says."""
    seen, runs, master = [], [], ["m"]

    def broken(sha: str, tests) -> tuple[str, ...]:
        upto = staging[: staging.index(sha) + 1]
        out = {t for c, t in breaks.items() if c in upto}
        return tuple(sorted(out if tests is None else out & set(tests)))

    def apply(batch) -> None:
        for a in batch:
            seen.append(a)
            if isinstance(a, StartRun):
                runs.append(a)
            elif isinstance(a, CancelRun):
                runs[:] = [r for r in runs if r.run_id != a.run_id]
            elif isinstance(a, Promote):
                master[0] = a.commit
                apply(p.handle(Promoted(a.commit)))
                rest = staging[staging.index(a.commit) + 1 :]
                apply(p.handle(StagingUpdated(a.commit, tuple(rest))))

    apply(acts)
    for _ in range(100):
        if not runs:
            return seen
        r = runs.pop(0)
        failed = broken(r.commit, r.tests)
        if r.kind == "parent":
            failed = tuple(sorted(set(failed) | (set(master_fails) & set(r.tests or ()))))
        apply(p.handle(RunFinished(r.run_id, "fail" if failed else "pass", failed)))
    raise AssertionError("the gate does not settle")


def _promoted_on_a_partial_pass(cfg: PolicyConfig, breaks: dict, master_fails=()):
    """Master a was promoted on a filtered pass shown to cover only t1 (its state, saved by
    the gate and reloaded, says so); b and c arrive, b breaks t2. Returns the policy and actions."""
    p = GatePolicy(cfg)
    p.handle(StagingUpdated("a", ()))
    state = p.to_state()
    state["master_tests"] = ["t1"]  # promoted on a pass filtered to t1
    p = GatePolicy(cfg, json.loads(json.dumps(state)))
    staging = ["a", "b", "c"]
    acts = p.handle(StagingUpdated("a", ("b", "c")))
    acts += p.handle(PoolAvailable("p1")) + p.handle(PoolAvailable("p2"))
    seen = _settle(p, staging, breaks, acts, master_fails)
    return p, seen


def test_inherited_failure_asks_master_with_a_parent_run_then_blames_the_new_culprit():
    cfg = PolicyConfig(confirmations=1, speculate=False, cancel_useless_runs=False)
    p, seen = _promoted_on_a_partial_pass(cfg, {"b": "t2"})
    parents = [a for a in seen if isinstance(a, StartRun) and a.kind == "parent"]
    assert [(a.commit, a.tests) for a in parents] == [("a", ("t2",))]  # master, on t2 only
    # master passes t2: c's failure is new, so c is bisected and blamed like any culprit
    assert [(a.commit, a.failed_tests) for a in seen if isinstance(a, Blame)] == [("b", ("t2",))]
    assert not [a for a in seen if isinstance(a, Alert)]
    assert not p.in_flight()


def test_master_failing_the_inherited_tests_is_reported_and_nobody_is_blamed_for_them():
    cfg = PolicyConfig(confirmations=1, speculate=False, cancel_useless_runs=False)
    # the truth for master: it already breaks t2 (a culprit slipped in under the partial pass)
    p, seen = _promoted_on_a_partial_pass(cfg, {"b": "t2"}, master_fails=("t2",))
    parents = [a for a in seen if isinstance(a, StartRun) and a.kind == "parent"]
    assert [(a.commit, a.tests) for a in parents] == [("a", ("t2",)), ("a", ("t2",))]  # + 1 confirmation
    assert not [a for a in seen if isinstance(a, Blame)]
    (alert,) = [a for a in seen if isinstance(a, Alert)]
    assert alert.kind == "master-broken"
    assert alert.message.startswith("master a itself fails t2 (parent run(s) ")
    assert "cannot be blamed by the gate" in alert.message
    assert {c["status"] for c in p.view()["candidates"]} == {"blocked"}
    assert not p.in_flight()
    # an old state (before parent runs existed) still loads
    old = p.to_state()
    del old["parent_results"], old["parent_inconclusive"]
    assert GatePolicy(cfg, old).to_state()["parent_results"] == []


def test_hold_mode_alerts_once_when_the_blamed_tests_still_fail_after_the_blame():
    """hold: A is blamed, the developers revert it, but B (in A's span) breaks the same test,
    so the revert still fails. The gate cannot know where a fix landed nor isolate B: it
    alerts once per episode, naming the range and the commit, instead of idling silently; again
    only when ``REALERT_TIPS`` commits pushed after the alert still fail."""
    staging = ["a0", "A", "B", "a3"]
    breaks, fixes = {"A": "test_vm", "B": "test_vm"}, {}
    p = GatePolicy(PolicyConfig(confirmations=1, speculate=False, culprit_action="hold"))
    acts = p.handle(StagingUpdated("m", tuple(staging)))
    seen = _play(p, "m", staging, breaks, fixes, acts + p.handle(PoolAvailable("p1")))
    assert [a.commit for a in seen if isinstance(a, Blame)] == ["A"]
    assert not [a for a in seen if isinstance(a, Alert)]  # the blame mail is the news so far

    staging.append("revert-A")  # the developers' answer to the blame
    fixes["revert-A"] = "A"
    seen = _play(p, "a0", staging, breaks, fixes, p.handle(StagingUpdated("a0", tuple(staging[1:]))))
    (alert,) = [a for a in seen if isinstance(a, Alert)]
    assert (alert.kind, alert.commit) == ("still-failing", "revert-A")
    assert "test_vm still fail(s) at 1 commit(s) pushed after A was blamed" in alert.message
    assert "commits A..revert-A stay blocked" in alert.message
    assert p.view()["alerts"][-1]["commit"] == "revert-A"
    assert not p.in_flight()

    # more innocent tips still fail: each is tested (one may be the fix: a human was asked),
    # and, the gate being idle, run once more in full (its one failure may be a flake that
    # would hold a fix back); the same episode, no second alert, nobody else blamed ...
    for n in ("n1", "n2"):
        staging.append(n)
        seen = _play(p, "a0", staging, breaks, fixes, p.handle(StagingUpdated("a0", tuple(staging[1:]))))
        assert [(a.kind, a.commit, a.tests) for a in seen if isinstance(a, StartRun)] == [
            ("tip", n, None),
            ("confirm", n, None),
        ]
        assert not [a for a in seen if isinstance(a, (Alert, Blame, Promote))]
    # ... until REALERT_TIPS commits pushed after the alert failed: the developers are told
    # again, naming the new top (a fix landed above a culprit breaking the same tests, say)
    staging.append("n3")
    seen = _play(p, "a0", staging, breaks, fixes, p.handle(StagingUpdated("a0", tuple(staging[1:]))))
    (again,) = [a for a in seen if isinstance(a, Alert)]
    assert (again.kind, again.commit) == ("still-failing", "n3")
    assert "pushed after A was last alerted about, up to n3 (again" in again.message
    assert not [a for a in seen if isinstance(a, (Blame, Promote))]

    staging.append("fixB")  # the developer's fix after the alert unblocks everything
    fixes["fixB"] = "B"
    seen = _play(p, "a0", staging, breaks, fixes, p.handle(StagingUpdated("a0", tuple(staging[1:]))))
    assert [a.commit for a in seen if isinstance(a, Promote)] == ["fixB"]
    assert not [a for a in seen if isinstance(a, Alert)]


def test_an_alerted_block_still_failing_at_the_last_push_is_alerted_again_on_time():
    """hold: B, masked in A's span, breaks A's test. After the still-failing alert the
    developers push one commit that does not repair it, and nothing else comes: fewer than
    ``REALERT_TIPS`` commits fail after the alert, so the count never falls due and the gate
    would sit idle and silent (the stress grid's two stalls, round 11). Once the gate is idle
    and ``REALERT_WAIT_RUNS`` mean run times passed since the alert, the driver's tick
    (``wake_at``) re-alerts, naming the new top; a later tick with nothing new says nothing."""
    staging = ["a0", "A", "B", "a3"]
    breaks, fixes, clock = {"A": "test_vm", "B": "test_vm"}, {}, [0.0]
    p = GatePolicy(PolicyConfig(confirmations=1, speculate=False, culprit_action="hold"))
    acts = p.handle(StagingUpdated("m", tuple(staging), now=0.0))
    seen = _play(p, "m", staging, breaks, fixes, acts + p.handle(PoolAvailable("p1", now=0.0)), clock=clock)
    assert [a.commit for a in seen if isinstance(a, Blame)] == ["A"]

    def push(sha: str) -> list:
        staging.append(sha)
        acts = p.handle(StagingUpdated("a0", tuple(staging[1:]), now=clock[0]))
        return _play(p, "a0", staging, breaks, fixes, acts, clock=clock)

    fixes["revert-A"] = "A"
    (alert,) = [a for a in push("revert-A") if isinstance(a, Alert)]
    assert (alert.kind, alert.commit) == ("still-failing", "revert-A")
    alerted_at = clock[0]
    assert p.wake_at() is not None and p.wake_at() > alerted_at
    # the developers' attempt fails (tip run, then once more in full: the gate is idle)
    seen = push("fixA2")
    assert [(a.kind, a.commit) for a in seen if isinstance(a, StartRun)] == [
        ("tip", "fixA2"),
        ("confirm", "fixA2"),
    ]
    assert not [a for a in seen if isinstance(a, Alert)] and not p.in_flight()
    durations = p.to_state()["durations"]
    due = alerted_at + REALERT_WAIT_RUNS * sum(durations) / len(durations)
    assert p.wake_at() == pytest.approx(due)
    assert p.handle(Tick(now=due - 0.01)) == []  # not yet
    (again,) = p.handle(Tick(now=due))
    assert isinstance(again, Alert) and (again.kind, again.commit) == ("still-failing", "fixA2")
    assert "pushed after A was last alerted about, up to fixA2 (again" in again.message
    # nothing new pushed since: the next tick is no reason to mail again
    later = p.wake_at()
    assert later is not None and later > due
    assert p.handle(Tick(now=later)) == []
    fixes["fixB"] = "B"  # the fix after the second alert unblocks everything; no timer left
    assert [a.commit for a in push("fixB") if isinstance(a, Promote)] == ["fixB"]
    assert p.wake_at() is None


def test_two_blamed_culprits_still_failing_at_the_same_commit_are_one_alert():
    """A (t0) and B (t1) are blamed; C and D, in their spans, break the same tests (masked).
    The developers revert A and B, and the tip still fails t0 and t1. The fix probes end one
    by one, so the groups fall due at different events: the first alert names both (the
    other's tests already fail after its blame), never two alerts on one commit."""
    staging = ["a0", "A", "B", "C", "D", "x"]
    breaks, fixes = {"A": "t0", "B": "t1", "C": "t0", "D": "t1"}, {}
    p = GatePolicy(PolicyConfig(confirmations=1, speculate=False, culprit_action="hold"))
    acts = p.handle(StagingUpdated("m", tuple(staging)))
    seen = _play(p, "m", staging, breaks, fixes, acts + p.handle(PoolAvailable("p1")))
    assert [a.commit for a in seen if isinstance(a, Blame)] == ["A", "B"]
    staging += ["revert-A", "revert-B"]
    fixes.update({"revert-A": "A", "revert-B": "B"})
    seen = _play(p, "a0", staging, breaks, fixes, p.handle(StagingUpdated("a0", tuple(staging[1:]))))
    (alert,) = [a for a in seen if isinstance(a, Alert)]
    assert (alert.kind, alert.commit) == ("still-failing", "revert-B")
    assert alert.message.startswith(
        "t0 still fail(s) at 2 commit(s) pushed after A was blamed, up to revert-B; and t1 still"
        " fail(s) at 1 commit(s) pushed after B was blamed, up to revert-B: commits A..revert-B"
        " stay blocked;"
    )


def test_culprits_masked_behind_the_same_revert_are_one_alert():
    """revert mode, c1 breaking c0's test t0 as well as its own t1: when the commit the gate's
    reverts land on still fails both blamed groups' tests, the humans get one culprit-masked
    alert naming both spans, not two on the same commit (found by hypothesis)."""
    hist = History(n=4, culprits={0, 1, 2}, inconclusive={(0, 0)}, also={1: 0})
    cfg = PolicyConfig(
        confirmations=1, bisect_failed_tests_only=False, speculate=False, culprit_action="revert"
    )
    d = Driver(hist, 2, cfg)
    d.run()
    (alert,) = [a for a in d.alerts if a.kind == "culprit-masked"]
    assert alert.message.startswith(
        "culprit masked behind c000; commits c000..c004 cannot be bisected until fixed; and culprit"
        " masked behind c001; commits c001..c004 cannot be bisected until fixed: the revert c004"
        " still fails t0, t1;"
    )
    assert d.master == d.hist.n - 1


@pytest.mark.parametrize("filtered", [True, False])
def test_a_revert_flaking_on_the_culprits_test_is_rerun_before_any_culprit_masked_alert(filtered):
    """revert mode: c0 breaks t0, is blamed and reverted (c2). The revert's first run flakes
    on t0, the very test c0 broke, which reads as "a masked culprit keeps t0 failing". The
    gate re-runs the revert on t0 before telling anyone: it passes, the failure is recorded
    as a flake, no culprit-masked alert goes out and the revert reaches master (it alerted
    on the one flaky run before)."""
    hist = History(n=2, culprits={0}, flaky={(2, 0)}, flaky_test={(2, 0): "t0"})
    cfg = PolicyConfig(
        confirmations=1, speculate=False, culprit_action="revert", bisect_failed_tests_only=filtered
    )
    d = Driver(hist, 1, cfg)
    d.run()
    assert d.blames == ["c000"] and not d.alerts
    assert [(f.commit, f.tests) for f in d.flakes] == [("c002", ("t0",))]
    assert d.master == d.hist.n - 1 == 2


def test_a_flaky_run_of_the_developers_fix_does_not_hold_it_back_while_the_gate_is_idle():
    """hold: A is blamed and reverted, B (masked behind it) still fails test_vm, the humans
    are alerted and push fixB. fixB's run flakes on test_vm, the very test that still failed:
    it looks like the fix did not work. With nothing else to do, the gate runs fixB once more
    in full (it was pushed after the alert, and failed fewer than 1 + x times): it passes, the
    failure is recorded as a flake and fixB is promoted, not held until more commits come."""
    staging = ["a0", "A", "B", "a3"]
    breaks, fixes = {"A": "test_vm", "B": "test_vm"}, {}
    p = GatePolicy(PolicyConfig(confirmations=1, speculate=False, culprit_action="hold"))
    acts = p.handle(StagingUpdated("m", tuple(staging)))
    _play(p, "m", staging, breaks, fixes, acts + p.handle(PoolAvailable("p1")))
    staging.append("revert-A")
    fixes["revert-A"] = "A"
    seen = _play(p, "a0", staging, breaks, fixes, p.handle(StagingUpdated("a0", tuple(staging[1:]))))
    assert [a.kind for a in seen if isinstance(a, Alert)] == ["still-failing"]
    staging.append("fixB")
    fixes["fixB"] = "B"
    acts = p.handle(StagingUpdated("a0", tuple(staging[1:])))
    seen = _play(p, "a0", staging, breaks, fixes, acts, flaky_once={"fixB"})
    assert [(a.kind, a.commit, a.tests) for a in seen if isinstance(a, StartRun)] == [
        ("tip", "fixB", None),
        ("confirm", "fixB", None),
    ]
    assert [(a.commit, a.tests) for a in seen if isinstance(a, RecordFlake)] == [("fixB", ("test_vm",))]
    assert [a.commit for a in seen if isinstance(a, Promote)] == ["fixB"]


def _starts(acts: list) -> list[tuple[str, str]]:
    return [(a.kind, a.commit) for a in acts if isinstance(a, StartRun)]


def _run_of(acts: list, commit: str) -> str:
    (rid,) = [a.run_id for a in acts if isinstance(a, StartRun) and a.commit == commit]
    return rid


def test_spare_pools_of_a_bisect_round_confirm_the_failing_top_in_the_same_round():
    """Two commits, three pools, two confirmations: the round that probes a0 also re-runs
    the failing top A twice (filtered), so A is blamed as the round ends instead of after a
    separate confirmation round; had a0 failed, those runs would be cancelled."""
    cfg = PolicyConfig(confirmations=2, speculate=False)
    for culprit in ("A", "a0"):
        p = GatePolicy(cfg)
        p.handle(StagingUpdated("m", ("a0", "A")))
        acts = [a for n in ("p1", "p2", "p3") for a in p.handle(PoolAvailable(n))]
        acts = p.handle(RunFinished(_run_of(acts, "A"), "fail", ("t1",)))
        assert _starts(acts) == [("bisect", "a0"), ("confirm", "A"), ("confirm", "A")]
        assert all(a.tests == ("t1",) for a in acts if isinstance(a, StartRun))
        probe, *confirms = [a.run_id for a in acts if isinstance(a, StartRun)]
        if culprit == "A":
            seen = p.handle(RunFinished(probe, "pass"))
            seen += p.handle(RunFinished(confirms[0], "fail", ("t1",)))
            assert not [a for a in seen if isinstance(a, Blame)]  # 2 failures of A so far
            seen += p.handle(RunFinished(confirms[1], "fail", ("t1",)))
            (blame,) = [a for a in seen if isinstance(a, Blame)]
            assert (blame.commit, blame.failed_tests, len(blame.run_ids)) == ("A", ("t1",), 3)
            assert [a.commit for a in seen if isinstance(a, Promote)] == ["a0"]
        else:
            seen = p.handle(RunFinished(probe, "fail", ("t1",)))
            assert sorted(a.run_id for a in seen if isinstance(a, CancelRun)) == sorted(confirms)
            assert _starts(seen) == [("confirm", "a0"), ("confirm", "a0")]


def test_behind_a_block_tips_that_can_only_fail_are_not_tested_until_a_blame_or_alert():
    """revert mode: A is blamed and reverted; B, pushed after the revert, breaks another test.
    While the gate hunts B, a new tip n1 contains B and nothing pushed after anyone was told
    about it, so it can only fail: no run (the pools hunt). Once B is blamed, the tip holding
    its revert is tested at once and promoted. Without the rule n1 would be run."""
    for hold in (True, False):
        cfg = PolicyConfig(confirmations=1, speculate=False, culprit_action="revert", hold_hopeless_tips=hold)
        p = GatePolicy(cfg)
        p.handle(StagingUpdated("m", ("A",)))
        acts = [a for n in ("p1", "p2", "p3") for a in p.handle(PoolAvailable(n))]
        acts = p.handle(RunFinished(_run_of(acts, "A"), "fail", ("t1",)))
        acts = p.handle(RunFinished(_run_of(acts, "A"), "fail", ("t1",)))
        assert [a.commit for a in acts if isinstance(a, (Blame, Revert))] == ["A", "A"]
        acts = p.handle(StagingUpdated("m", ("A", "revert-A", "B")))
        assert _starts(acts) == [("tip", "B")]  # pushed after the blame: may pass
        acts = p.handle(RunFinished(_run_of(acts, "B"), "fail", ("t2",)))
        assert _starts(acts) == [("bisect", "revert-A")]  # the hunt for t2's culprit
        probe = _run_of(acts, "revert-A")
        acts = p.handle(StagingUpdated("m", ("A", "revert-A", "B", "n1")))
        if not hold:
            assert _starts(acts) == [("tip", "n1")]
            continue
        assert _starts(acts) == []  # n1 holds B, unrepaired and unannounced: a certain failure
        acts = p.handle(RunFinished(probe, "pass"))
        assert _starts(acts) == [("confirm", "B")]
        acts = p.handle(RunFinished(_run_of(acts, "B"), "fail", ("t2",)))
        assert [a.commit for a in acts if isinstance(a, (Blame, Revert))] == ["B", "B"]
        acts = p.handle(StagingUpdated("m", ("A", "revert-A", "B", "n1", "revert-B")))
        assert _starts(acts) == [("tip", "revert-B")]  # pushed after B's blame: tested at once
        acts = p.handle(RunFinished(_run_of(acts, "revert-B"), "pass"))
        assert [a.commit for a in acts if isinstance(a, Promote)] == ["revert-B"]
        assert not [a for a in p.view()["alerts"]]
        # states saved before round 5 (no marks) still load
        old = p.to_state()
        del old["marks"]
        assert GatePolicy(cfg, old).to_state()["marks"] == []


def test_behind_a_block_the_hunt_gets_a_free_pool_before_a_second_hopeful_tip():
    """A and B broke t1 and t2; A is blamed and reverted, B is being confirmed (on t2). The
    revert's tip runs; n1 arrives on top: it may pass too, but one run that may pass is
    already in flight, so the hunt for B gets the next free pool first and n1 waits."""
    p = GatePolicy(PolicyConfig(confirmations=2, speculate=False, culprit_action="hold"))
    p.handle(StagingUpdated("m", ("A", "B")))
    acts = p.handle(PoolAvailable("p1"))
    acts = p.handle(RunFinished(_run_of(acts, "B"), "fail", ("t1", "t2")))
    acts = p.handle(RunFinished(_run_of(acts, "A"), "fail", ("t1",)))  # the probe: A is the suspect
    acts = p.handle(RunFinished(_run_of(acts, "A"), "fail", ("t1",)))
    acts = p.handle(RunFinished(_run_of(acts, "A"), "fail", ("t1",)))
    assert [a.commit for a in acts if isinstance(a, Blame)] == ["A"]
    assert _starts(acts) == [("confirm", "B")]  # the hunt for t2 (B failed it at the tip)
    confirm = _run_of(acts, "B")
    assert _starts(p.handle(StagingUpdated("m", ("A", "B", "revert-A")))) == []  # no pool free
    assert _starts(p.handle(PoolAvailable("p2"))) == [("tip", "revert-A")]
    assert _starts(p.handle(StagingUpdated("m", ("A", "B", "revert-A", "n1")))) == []
    assert _starts(p.handle(RunFinished(confirm, "fail", ("t2",)))) == [("confirm", "B")]
    assert "n1" not in {r["commit"] for r in p.in_flight().values()}


def test_behind_a_block_a_held_tip_with_enough_new_commits_is_run_to_find_the_next_culprit():
    """revert mode: A is blamed and reverted, B (pushed after the revert) breaks t2 and is being
    hunted. One new commit on top is held (it holds B: a certain failure, little news). Once
    the commits above the last full run likely hold another culprit (1 - (1 - p)^n >= 0.3), a
    spare pool runs the held tip anyway: its failure names the tests of a culprit among them,
    so that hunt starts now instead of after B's revert fails. The rule off: no run."""
    for detect in (True, False):
        cfg = PolicyConfig(
            confirmations=1, speculate=False, culprit_action="revert", detect_behind_block=detect
        )
        p = GatePolicy(cfg)
        p.handle(StagingUpdated("m", ("A",)))
        acts = [a for n in ("p1", "p2", "p3") for a in p.handle(PoolAvailable(n))]
        acts = p.handle(RunFinished(_run_of(acts, "A"), "fail", ("t1",)))
        p.handle(RunFinished(_run_of(acts, "A"), "fail", ("t1",)))
        acts = p.handle(StagingUpdated("m", ("A", "revert-A", "B")))
        acts = p.handle(RunFinished(_run_of(acts, "B"), "fail", ("t2",)))
        assert _starts(acts) == [("bisect", "revert-A")]  # the hunt for t2's culprit
        staging = ["A", "revert-A", "B", "n1"]
        assert _starts(p.handle(StagingUpdated("m", tuple(staging)))) == []  # 1 new commit: held
        for n in ("n2", "n3"):
            staging.append(n)
            assert _starts(p.handle(StagingUpdated("m", tuple(staging)))) == []  # p ≈ 0.1: 3 commits < 0.3
        staging.append("n4")
        acts = p.handle(StagingUpdated("m", tuple(staging)))
        assert _starts(acts) == ([("tip", "n4")] if detect else [])
        if detect:  # its failure of t3 (not t1, not t2) starts that culprit's hunt at once
            acts = p.handle(RunFinished(_run_of(acts, "n4"), "fail", ("t2", "t3")))
            assert ("bisect", "n2") in _starts(acts)


def _play_clean_queue(cfg: PolicyConfig, every: float, commits: int, run_hours: float = 2.0):
    """Commits arrive every ``every`` h on 3 pools, every run passes after ``run_hours``; the
    driver acknowledges promotions at once. Returns (policy, tip runs as (start h, commit,
    new commits it covered beyond the last full run, load estimate), commits left unpromoted)."""
    p = GatePolicy(cfg)
    p.handle(StagingUpdated("m", (), now=0.0))
    ends: list[tuple[float, str]] = []
    tips: list[tuple[float, str, int, float | None]] = []
    staging: list[str] = []
    master = "m"

    def play(acts: list, now: float) -> None:
        nonlocal master
        for a in acts:
            if isinstance(a, StartRun):
                ends.append((now + run_hours, a.run_id))
                if a.kind == "tip":
                    top = max(
                        [
                            staging.index(r["commit"])
                            for r in p.in_flight().values()
                            if r["commit"] != a.commit
                        ]
                        + [staging.index(master) if master in staging else -1]
                    )
                    tips.append((now, a.commit, staging.index(a.commit) - top, p.load()))
            elif isinstance(a, CancelRun):
                ends[:] = [e for e in ends if e[1] != a.run_id]
            elif isinstance(a, Promote):
                master = a.commit
                rest = tuple(staging[staging.index(master) + 1 :])
                play(p.handle(Promoted(master, now=now)), now)
                play(p.handle(StagingUpdated(master, rest, now=now)), now)

    for n in ("p1", "p2", "p3"):
        play(p.handle(PoolAvailable(n, now=0.0)), 0.0)
    arrivals = [(i * every, f"c{i:03d}") for i in range(commits)]
    while arrivals or ends:
        t_arr = arrivals[0][0] if arrivals else math.inf
        t_end = min(ends)[0] if ends else math.inf
        if t_arr <= t_end:
            now, sha = arrivals.pop(0)
            staging.append(sha)
            rest = tuple(staging[staging.index(master) + 1 :] if master in staging else staging)
            play(p.handle(StagingUpdated(master, rest, now=now)), now)
        else:
            now, rid = min(ends)
            ends.remove((now, rid))
            play(p.handle(RunFinished(rid, "pass", now=now)), now)
    left = len(staging) - 1 - (staging.index(master) if master in staging else -1)
    return p, tips, left


def test_under_load_a_new_tip_run_waits_for_a_bigger_batch_and_at_low_load_runs_at_once():
    """Load-adaptive batching. A commit every 0.25 h, 2 h runs, 3 pools: load = 4/h x 2 h / 3
    ≈ 2.7 (pool-bound). Work-conserving, every freed pool tests the tip at once (≈ 2-3 new
    commits per run); with ``batch_load`` = 1 a tip run waits for 2 x load ≈ 5.3 new commits or
    for its oldest commit to wait one mean run time, so far fewer runs cover the same commits,
    and every commit is still promoted. At a commit per hour (load 0.67) nothing is held:
    the very same runs. The lever off (``batch_load`` = 0): no run is ever held."""
    _, off_tips, off_left = _play_clean_queue(PolicyConfig(speculate=False), 0.25, 120)
    on, on_tips, on_left = _play_clean_queue(PolicyConfig(speculate=False, batch_load=1.0), 0.25, 120)
    assert off_left == on_left == 0  # liveness: held runs start when a run ends
    loads = [load for t, _, _, load in on_tips + off_tips if 6 <= t <= 30]  # known after 12 arrivals
    assert loads and all(load == pytest.approx(8 / 3, rel=0.15) for load in loads)
    assert len(on_tips) < 0.6 * len(off_tips)
    warm = [n for t, _, n, _ in on_tips if 6 <= t <= 30]
    cold = [n for t, _, n, _ in off_tips if 6 <= t <= 30]
    assert warm and min(warm) >= 6 and sum(cold) / len(cold) < 4  # 2 x load new commits per run
    assert json.loads(json.dumps(on.to_state())) == on.to_state()
    low_off = _play_clean_queue(PolicyConfig(speculate=False), 1.0, 40)[1]
    low_on = _play_clean_queue(PolicyConfig(speculate=False, batch_load=1.0), 1.0, 40)[1]
    assert low_on == low_off


def test_states_saved_before_load_tracking_load_and_resume():
    p = GatePolicy(PolicyConfig(batch_load=1.0))
    p.handle(StagingUpdated("m", ("a",), now=5.0))
    (run,) = _starts_of(p.handle(PoolAvailable("p1", now=5.0)))
    old = p.to_state()
    for key in ("clock", "arrived", "arrivals", "durations"):
        del old[key]
    for r in old["runs"].values():
        del r["started"]
    q = GatePolicy(PolicyConfig(batch_load=1.0), old)
    assert q.load() is None
    assert Promote("a") in q.handle(RunFinished(run.run_id, "pass", now=7.0))
    assert q.to_state()["durations"] == []  # the run's start was not recorded: no duration


def _starts_of(acts: list) -> list[StartRun]:
    return [a for a in acts if isinstance(a, StartRun)]
