"""Master SIGKILLed at seeded points of a gate run with a bisect (SQLite and PostgreSQL).

A reference run (real master, two real workers, a real bare origin, no faults) records the
gate's decisions ("gate:" lines of twistd.log) and its result. A seeded RNG picks kill points
among those events (plus a few forced ones: right after the first START, after the first
bisect FINISHED, mid-confirmation, and mid-push: while the origin's pre-receive hook holds a
promotion). Seeded points count events by kind only ("the 5th START"), not by run kind: after
a kill, the interrupted tip runs come back as retry runs, so "the 3rd tip START" may never
happen in the crash run. The crash run replays the same history and SIGKILLs the master as
soon as each event appears, restarts it, and goes on to the next point (several kills per run);
while fewer than the required kills are done (points that fire together count once), it also
kills at the next gate decision when no seeded point is reached for a few seconds, or at once
when too few seeded points are left. After that: no BVT result lost (every finished gate
build was fed to the gate or cancelled by it), no finished run repeated, master only
fast-forwarded through passing commits, each pushed once, and the same culprit as the
reference.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from buildbot.process.results import CANCELLED, FAILURE, RETRY, SUCCESS

from schedulers.gate import OUTBOX_KEY
from tests.support.procs import (
    Deployment,
    GitProject,
    Postgres,
    gate_builds,
    gate_state,
    git,
    make_deployment,
    run,
    simple_pool,
    wait_for,
)
from tests.test_gate_integration import FAILING_TEST, RUN_TESTS, TEST_APP

SEED = 20240917
COMMITS = 10  # enough gate decisions that 10 kills fit in the run whatever order runs finish in
CULPRIT_INDEX = 6  # the 7th commit breaks test_value
SQLITE_KILLS = 16  # seeded points on SQLite (at least 10 must be injected)
PG_KILLS = 3
MIN_SQLITE_KILLS = 10
DECISION_MARGIN = 3  # decisions a crashed run may take fewer than the reference
FALLBACK_AFTER = 3.0  # s without a seeded point (and too few kills): kill at the next decision
DECISIONS = ("START", "FINISHED", "PROMOTE")  # FETCH is logged at every startup: not a fallback

EVENT_RES = [
    ("START", re.compile(r"gate: START gate (\w+) run r\d+ of ([0-9a-f]{12})")),
    ("FINISHED", re.compile(r"gate: run r\d+ \((\w+)\) of ([0-9a-f]{12}) on \S+: (\w+)")),
    ("PROMOTE", re.compile(r"gate: PROMOTE ([0-9a-f]{12})")),
    ("BLAME", re.compile(r"gate: BLAME ([0-9a-f]{12})")),
    ("FETCH", re.compile(r"gate: master ([0-9a-f]{12}), staging ([0-9a-f]{12}): (\d+) candidate")),
]
PUSH_MARK = "pushes-begun"
PRE_RECEIVE_SLOW = f"""#!/bin/sh
# holds every master update for 2 s so the test can SIGKILL the master mid-push
while read old new ref; do
  if [ "$ref" = refs/heads/master ]; then echo "$new" >> "$GIT_DIR/{PUSH_MARK}"; sleep 2; fi
done
exit 0
"""
POST_RECEIVE_LOG = """#!/bin/sh
while read old new ref; do echo "$ref $old $new" >> "$GIT_DIR/received"; done
"""


# ---------------------------------------------------------------------- shared helpers


def fast_reconnect(dep: Deployment) -> None:
    """Workers retry the master every second at most (default back-off grows to 300 s)."""
    for w in dep.workers:
        tac = w.basedir / "buildbot.tac"
        tac.write_text(re.sub(r"(?m)^maxdelay = \d+$", "maxdelay = 1", tac.read_text()))


def enable_origin_reflog(origin: Path) -> None:
    git("config", "core.logAllRefUpdates", "always", cwd=origin)
    hook = origin / "hooks" / "post-receive"
    hook.write_text(POST_RECEIVE_LOG)
    hook.chmod(0o755)


def master_reflog(origin: Path) -> list[str]:
    """New values of origin's master, oldest first (the bare repository's own reflog)."""
    f = origin / "logs" / "refs" / "heads" / "master"
    return [line.split()[1] for line in f.read_text().splitlines()] if f.exists() else []


def master_updates(origin: Path) -> list[str]:
    """Every update of master the origin received (post-receive hook), oldest first."""
    f = origin / "received"
    lines = f.read_text().splitlines() if f.exists() else []
    return [ln.split()[2] for ln in lines if ln.startswith("refs/heads/master ")]


def events(text: str) -> list[tuple]:
    """The gate's decisions in a twistd.log text: ("START", kind), ("FINISHED", kind), ("PROMOTE",), ..."""
    out = []
    for line in text.splitlines():
        for kind, rx in EVENT_RES:
            m = rx.search(line)
            if m:
                out.append((kind, m.group(1)) if kind in ("START", "FINISHED") else (kind,))
                break
    return out


# ---------------------------------------------------------------------- scenario


@dataclass
class Scenario:
    proj: GitProject
    dep: Deployment
    shas: list[str] = field(default_factory=list)

    @property
    def culprit(self) -> str:
        return self.shas[CULPRIT_INDEX]

    @property
    def parent(self) -> str:
        return self.shas[CULPRIT_INDEX - 1]

    def log(self) -> str:
        return (self.dep.master.basedir / "twistd.log").read_text(errors="replace")

    def done(self) -> bool:
        """Culprit blamed (decided and logged), no run in flight, master at its parent, and no
        decided action left undone (the scheduler's outbox is empty)."""
        v = gate_state(self.dep) or {}
        blamed = any(c["commit"] == self.culprit for c in v.get("culprits", []))
        if not (blamed and not v.get("runs") and self.proj.head("master") == self.parent):
            return False
        pending = (gate_state(self.dep, "policy") or {}).get(OUTBOX_KEY)
        return not pending and f"gate: BLAME {self.culprit}" in self.log()


def start_scenario(root: Path, database: str | None = None, slow_push: bool = False) -> Scenario:
    proj = GitProject.create(
        root / "repo", {"run-tests.sh": RUN_TESTS, "test_app.py": TEST_APP, "value.txt": "ok\n"}
    )
    enable_origin_reflog(proj.origin)
    if slow_push:
        hook = proj.origin / "hooks" / "pre-receive"
        hook.write_text(PRE_RECEIVE_SLOW)
        hook.chmod(0o755)
    dep = make_deployment(
        root / "qa",
        str(proj.origin),
        [simple_pool("pool1", 1), simple_pool("pool2", 2)],
        extra={"gate": {"confirm_runs": 1, "culprit_action": "hold"}},
        database=database,
    )
    fast_reconnect(dep)
    sc = Scenario(proj, dep)
    dep.start()
    dep.wait_workers()
    initial = proj.head("master")
    wait_for(lambda: (gate_state(dep) or {}).get("master") == initial, 30, "the gate to start")
    for i in range(1, COMMITS + 1):
        files = {f"notes/{i}.txt": f"change {i}\n"}
        if i == CULPRIT_INDEX + 1:
            files["value.txt"] = "broken\n"
        sc.shas.append(proj.commit(f"change {i}", files, author=f"Dev{i} <dev{i}@example.org>"))
    proj.push_staging()
    return sc


def reference_run(root: Path) -> tuple[list[tuple], dict]:
    """An uninterrupted gate run: its decision events and result."""
    sc = start_scenario(root)
    try:
        wait_for(sc.done, 120, "the reference run to blame the culprit")
        v = gate_state(sc.dep)
        (c,) = [c for c in v["culprits"] if c["commit"] == sc.culprit]
        return events(sc.log()), {
            "culprit_index": sc.shas.index(c["commit"]),
            "failed_tests": c["failed_tests"],
            "master_index": sc.shas.index(sc.proj.head("master")),
        }
    finally:
        sc.dep.stop()


def kill_points(ref: list[tuple], n: int, rng: random.Random) -> list[tuple[tuple, int]]:
    """Forced points plus seeded ones among the reference's events, as (key, occurrence).

    A key is ``(kind,)`` (any event of that kind: seeded points, the first START) or a whole
    event (the forced ``("FINISHED", "bisect")`` and ``("START", "confirm")``, which every run
    has). The forced ones: right after the first START, after the first bisect FINISHED (before
    the next decision), mid-confirmation (after the confirm run's START)."""
    by_kind: Counter = Counter()
    by_event: Counter = Counter()
    position: dict[tuple, int] = {}
    numbered = []
    for i, ev in enumerate(ref):
        by_kind[ev[0]] += 1
        by_event[ev] += 1
        numbered.append(((ev[0],), by_kind[ev[0]]))
        position.setdefault(numbered[-1], i)
        position.setdefault((ev, by_event[ev]), i)
    forced = [(("START",), 1), (("FINISHED", "bisect"), 1), (("START", "confirm"), 1)]
    rest = [p for p in numbered[1:] if p not in forced and p[0][0] != "BLAME"]
    chosen = forced + rng.sample(rest, min(len(rest), max(0, n - len(forced))))
    return sorted(chosen, key=position.__getitem__)


@dataclass
class Injection:
    point: str
    waited: float
    restart: float


def _count(seen: Counter, key: tuple) -> int:
    """Occurrences of ``key``: a whole event, or ``(kind,)`` for any event of that kind."""
    return seen[key] if len(key) > 1 else sum(n for ev, n in seen.items() if ev[0] == key[0])


def _wait_point(
    sc: Scenario,
    targets: list,
    push_pending: bool,
    fallback: float | None,
    kinds: tuple = DECISIONS,
    since: int | None = None,
) -> str | list:
    """Wait until a target event has happened (its occurrence count reached, across restarts) or
    a promotion is held by the origin's hook while ``push_pending``; with ``fallback`` (seconds),
    after that long without either, until the next gate decision (an event of ``kinds``; with
    ``since``, the first one beyond that many, which may already be in the log).

    Returns the targets reached, "push", "fallback: <decision>" or "done" (the gate finished)."""
    start = checked = time.monotonic()
    mark = sc.proj.origin / PUSH_MARK
    base: list[int] = []  # decisions in the log when the fallback armed

    def reached() -> str | list | None:
        nonlocal checked
        if push_pending and mark.exists() and mark.read_text().split():
            return "push"
        evs = events(sc.log())
        seen = Counter(evs)
        hit = [t for t in targets if _count(seen, t[0]) >= t[1]]
        if hit:
            return hit
        decisions = [e for e in evs if e[0] in kinds]
        if fallback is not None and not base and time.monotonic() - start >= fallback:
            base.append(len(decisions) if since is None else min(since, len(decisions)))
        if base and len(decisions) > base[0]:
            ev = decisions[base[0]]
            return f"fallback: the next gate decision, {ev[0]}{f' ({ev[1]})' if len(ev) > 1 else ''}"
        if time.monotonic() - checked >= 0.5:  # the expensive check, twice a second
            checked = time.monotonic()
            if sc.done():
                return "done"
        return None

    return wait_for(reached, 90, f"kill points {targets}", interval=0.03)


def _name(target: tuple[tuple, int]) -> str:
    (ev, nth) = target
    return f"after {ev[0]}{f' ({ev[1]})' if len(ev) > 1 else ''} #{nth}"


def crash_run(
    root: Path,
    points: list[tuple[tuple, int]],
    database: str | None = None,
    min_kills: int = 0,
    expected_decisions: int | None = None,
) -> dict:
    """Replay the scenario, SIGKILL the master at each point (and once mid-push), falling back to
    the next gate decision while fewer than ``min_kills`` kills are done; check it all.

    ``expected_decisions`` (the reference run's gate decisions): a crashed run can take fewer
    decisions than the reference (runs finish in another order), so when the decisions probably
    left are barely enough for the kills still needed, kill at every next decision."""
    sc = start_scenario(root, database=database, slow_push=True)
    m = sc.dep.master
    done: list[Injection] = []
    targets: list = list(points)
    push_pending = True
    at_kill: list | None = None  # the events logged when the master was last killed
    try:
        while targets or push_pending or len(done) < min_kills:
            t0 = time.monotonic()
            needed = min_kills - len(done)
            # too few points left even if each fires alone, or too few decisions probably left
            # in the run: kill at the very next decision
            eager = len(targets) + push_pending < needed
            if expected_decisions is not None and needed > 0:
                seen = sum(1 for e in events(sc.log()) if e[0] in DECISIONS)
                eager = eager or expected_decisions - seen <= needed + DECISION_MARGIN
            fallback = (0.0 if eager else FALLBACK_AFTER) if needed > 0 else None
            # short of decisions: the startup FETCH of the restarted master counts too (a kill
            # while it reconciles), so the run cannot end before the kills are done
            kinds = (*DECISIONS, "FETCH") if eager and needed > 0 else DECISIONS
            since = sum(1 for e in at_kill if e[0] in kinds) if eager and at_kill is not None else None
            got = _wait_point(sc, targets, push_pending, fallback, kinds, since)
            if got == "done":
                break
            if got == "push":
                push_pending = False
                point = "mid-push of a promotion (the origin's pre-receive hook running)"
            elif isinstance(got, str):
                point = got
            else:
                targets = [t for t in targets if t not in got]
                point = " and ".join(_name(t) for t in got)
            waited = time.monotonic() - t0
            m.kill()
            at_kill = events(sc.log())
            t1 = time.monotonic()
            m.start()
            sc.dep.wait_workers(60)
            done.append(Injection(point, round(waited, 2), round(time.monotonic() - t1, 2)))
        try:
            wait_for(sc.done, 150, "the gate to finish after the kills")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{m.log_tail(120)}") from None
        return {**_check(sc, done), "not_reached": targets}
    finally:
        sc.dep.stop()


def _check(sc: Scenario, done: list[Injection]) -> dict:
    """What survived: results fed, runs not repeated, promotions, culprit."""
    text = sc.log()
    v = gate_state(sc.dep)
    builds = gate_builds(sc.dep)
    finished = [b for b in builds if b["complete"] and b["results"] not in (RETRY, CANCELLED)]
    # every finished build's result reached the gate (or its run was cancelled by the gate)
    lost = [
        b
        for b in finished
        if not re.search(
            rf"gate: (run {b['props']['gate_run_id']} \(|CANCEL run {b['props']['gate_run_id']}:)", text
        )
    ]
    per_run = Counter(b["props"]["gate_run_id"] for b in finished)
    repeated = [r for r, n in per_run.items() if n > 1]
    # confirmations repeat a test by design; a retry replaces a run that gave no result (e.g.
    # the master died before creating its buildset), so two retries of the same commit can be
    # legitimate (of a bisect run and of a confirm run) -- but there must never be more finished
    # retries than runs the gate declared inconclusive
    key = Counter(
        (b["props"]["revision"], b["props"]["gate_kind"], json.dumps(b["props"].get("bvt_tests")))
        for b in finished
        if b["props"]["gate_kind"] not in ("confirm", "retry")
    )
    repeated_keys = [k for k, n in key.items() if n > 1]
    retries = sum(1 for b in finished if b["props"]["gate_kind"] == "retry")
    inconclusive = len(re.findall(r"gate: run r\d+ .*inconclusive", text))
    if retries > inconclusive:
        repeated_keys.append(("retry runs", retries, "inconclusive runs", inconclusive))
    passed = {b["props"]["revision"] for b in finished if b["results"] == SUCCESS}
    # git runs post-receive (which records each update) just after it moved the ref
    head = sc.proj.head("master")
    wait_for(lambda: master_updates(sc.proj.origin)[-1:] == [head], 10, "the post-receive record of master")
    updates = master_updates(sc.proj.origin)
    reflog = master_reflog(sc.proj.origin)
    forward = all(
        run(["git", "merge-base", "--is-ancestor", a, b], cwd=sc.proj.origin, check=False).returncode == 0
        for a, b in itertools.pairwise(reflog)
    )
    (c,) = [c for c in v["culprits"] if c["commit"] == sc.culprit]
    on_culprit = [b for b in finished if b["props"]["revision"] == sc.culprit]
    return {
        "injections": done,
        "lost": lost,
        "repeated": repeated,
        "repeated_keys": repeated_keys,
        "updates": updates,
        "reflog": reflog,
        "forward": forward,
        "untested_promotions": [u for u in updates if u not in passed],
        "culprit_index": sc.shas.index(c["commit"]),
        "failed_tests": c["failed_tests"],
        "master_index": sc.shas.index(sc.proj.head("master")),
        "culprit_failed": all(b["results"] == FAILURE for b in on_culprit) and len(on_culprit) >= 1,
        "resumed": text.count("gate: resumed:"),
        "log_tail": sc.dep.master.log_tail(150),
        "log": text,
    }


def _assert_survived(res: dict, ref: dict) -> None:
    tail = res["log_tail"]
    assert res["lost"] == [], (res["lost"], tail)
    assert res["repeated"] == [] and res["repeated_keys"] == [], (res["repeated"], res["repeated_keys"], tail)
    assert res["forward"], res["reflog"]
    assert len(res["updates"]) == len(set(res["updates"])), f"a sha pushed twice: {res['updates']}"
    assert res["untested_promotions"] == [], res["untested_promotions"]
    assert res["reflog"] == res["updates"], (res["reflog"], res["updates"])
    assert "ALERT" not in res["log"], res["log_tail"]  # no false promotion-rejected etc.
    assert res["culprit_index"] == ref["culprit_index"] == CULPRIT_INDEX
    assert res["failed_tests"] == ref["failed_tests"] == [FAILING_TEST]
    assert res["master_index"] == ref["master_index"] == CULPRIT_INDEX - 1
    assert res["culprit_failed"]
    assert res["resumed"] >= len(res["injections"]), tail


def _data_lost(res: dict) -> int:
    return (
        len(res["lost"])
        + len(res["repeated"])
        + len(res["repeated_keys"])
        + len(res["untested_promotions"])
        + (len(res["updates"]) - len(set(res["updates"])))
        + (0 if res["forward"] else 1)
    )


def test_master_sigkill_at_seeded_gate_events(tmp_path, reliability):
    t0 = time.monotonic()
    ref_events, ref = reference_run(tmp_path / "ref")
    assert ("BLAME",) in ref_events and ("START", "bisect") in ref_events, ref_events
    points = kill_points(ref_events, SQLITE_KILLS, random.Random(SEED))
    assert len(points) >= 12, (points, ref_events)  # all eligible events when fewer than asked

    decisions = sum(1 for e in ref_events if e[0] in DECISIONS)
    res = crash_run(tmp_path / "crash", points, min_kills=MIN_SQLITE_KILLS, expected_decisions=decisions)
    kills = len(res["injections"])
    survived_ok = True
    try:
        _assert_survived(res, ref)
        assert kills >= MIN_SQLITE_KILLS, ([i.point for i in res["injections"]], res["not_reached"])
        assert any(i.point.startswith("mid-push") for i in res["injections"]), res["injections"]
    except AssertionError:
        survived_ok = False
        raise
    finally:
        reliability.record(
            "master SIGKILL at seeded gate events (SQLite)",
            area="gate",
            injected=kills,
            survived=kills if survived_ok else 0,
            data_lost=_data_lost(res),
            detail=(
                f"seed {SEED}, {COMMITS} commits, culprit #{CULPRIT_INDEX + 1} found by bisect; kill points: "
                + "; ".join(i.point for i in res["injections"])
                + f". Same culprit and master as the uninterrupted reference; {len(res['updates'])} push(es)"
                " to master, each a fast-forward to a passing commit, none repeated"
            ),
            test="test_master_crash.py::test_master_sigkill_at_seeded_gate_events",
            seconds=time.monotonic() - t0,
        )
    # PostgreSQL: the first points of the same seeded list (a subset)
    t1 = time.monotonic()
    pg = Postgres()
    url = pg.start()
    try:
        pg_points = kill_points(ref_events, PG_KILLS, random.Random(SEED))[:PG_KILLS]
        res_pg = crash_run(tmp_path / "crash-pg", pg_points, database=url, min_kills=2)
    finally:
        pg.stop()
    kills_pg = len(res_pg["injections"])
    ok = True
    try:
        _assert_survived(res_pg, ref)
        assert kills_pg >= 2, res_pg["injections"]
    except AssertionError:
        ok = False
        raise
    finally:
        reliability.record(
            "master SIGKILL at seeded gate events (PostgreSQL)",
            area="gate",
            injected=kills_pg,
            survived=kills_pg if ok else 0,
            data_lost=_data_lost(res_pg),
            detail="kill points: " + "; ".join(i.point for i in res_pg["injections"]) + "; same culprit",
            test="test_master_crash.py::test_master_sigkill_at_seeded_gate_events",
            seconds=time.monotonic() - t1,
        )
