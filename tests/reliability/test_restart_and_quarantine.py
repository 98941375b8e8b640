"""Routine operations on a live gate: a master restarted while BVT runs are in flight, and a
pool quarantined while the gate's run waits for it.

Real master, two real workers (two pools), a real git origin; the BVT is the project's own
test script, slow enough to be caught running. Both tests set ``pools.quarantine_after: 1``, so
a single wrong count would quarantine a pool.

* ``buildbot stop`` + ``start`` (what a QA engineer does after changing the configuration or
  the code) ends running builds as RETRY and Buildbot runs them again after the start (a step
  caught before its command started ends the build CANCELLED instead, and the gate runs the
  same run again after the start). That is the master's doing, not the pool's: no pool is
  counted against or quarantined, and the run finishes and is promoted.
* A worker lost mid-build (SIGKILL) is the pool's fault: the pool is quarantined. Buildbot
  re-queues the build request *for that pool*, which takes no work while quarantined, so the
  gate's run would wait for it forever. The gate ends that run as inconclusive (never
  evidence against the commit) and runs it on the other pool; the commit is promoted.
* A pool whose worker (its QA VM) is down takes no run once ``pools.offline_after`` passed: a run
  the gate gave it meanwhile moves to the other pool, and the pool is used again as soon as its
  worker connects.
"""

from __future__ import annotations

import re
import time

from buildbot.process.results import CANCELLED, RETRY

from tests.reliability.test_master_crash import fast_reconnect
from tests.support.procs import (
    GitProject,
    gate_builds,
    gate_state,
    make_deployment,
    simple_pool,
    wait_for,
    wait_promoted,
)

SLOW_SUITE = {
    "run-tests.sh": 'sleep 6\nexec python3 -m unittest -v "$@"\n',
    "test_app.py": "import unittest\n\n\nclass T(unittest.TestCase):\n    def test_a(self):\n        pass\n",
}


def _deployment(tmp_path, **pools):
    """Started: two pools, ``quarantine_after: 1`` and ``pools`` settings, fast reconnects."""
    proj = GitProject.create(tmp_path / "repo", SLOW_SUITE)
    dep = make_deployment(
        tmp_path / "qa",
        str(proj.origin),
        [simple_pool("pool1", 1), simple_pool("pool2", 2)],
        extra={"pools": {"quarantine_after": 1, **pools}},
    )
    fast_reconnect(dep)
    dep.start()
    return proj, dep


def _tip_run_in_a_step(proj, dep) -> tuple[str, dict]:
    """Push one commit to staging; wait until the gate's tip run of it is running a step.
    Returns the commit and the build."""
    dep.wait_workers()
    wait_for(lambda: (gate_state(dep, "view") or {}).get("master"), 30, "the gate to start")
    tip = proj.commit("change 1", {"notes/1.txt": "1\n"})
    proj.push_staging()
    (build,) = wait_for(lambda: _running(dep), 60, "the gate's tip run to be building")
    wait_for(lambda: _in_a_step(dep, build), 30, "the build to run a step")
    return tip, build


def _running(dep) -> list[dict]:
    return [b for b in gate_builds(dep) if not b["complete"] and b["props"].get("gate_kind") == "tip"]


def _in_a_step(dep, build: dict) -> bool:
    """The build is past its worker preparation (step 0) and running a step: the worker is
    attached and working, so losing it is a lost worker, not a start-up race (master/build.py)."""
    steps = dep.master.api(f"builds/{build['buildid']}/steps")["steps"]
    return any(s["number"] >= 1 and s["started_at"] and not s["complete"] for s in steps)


def _record(reliability, fault: str, t0: float, detail: str) -> None:
    """One survived injection of ``fault`` in docs/reliability.md."""
    reliability.record(
        fault,
        area="gate",
        injected=1,
        survived=1,
        detail=detail,
        test="tests/reliability/test_restart_and_quarantine.py",
        seconds=time.monotonic() - t0,
    )


def _log(dep) -> str:
    return (dep.master.basedir / "twistd.log").read_text(errors="replace")


def test_a_graceful_master_restart_mid_run_counts_against_no_pool(tmp_path, reliability):
    t0 = time.monotonic()
    proj, dep = _deployment(tmp_path)
    try:
        m = dep.master
        tip, build = _tip_run_in_a_step(proj, dep)
        pool = build["props"]["pool"]
        m.stop()
        m.start()
        dep.wait_workers(60)
        wait_promoted(dep, proj, tip, 120, "the tip promoted after the restart")
        health = gate_state(dep, "health")
        assert health["quarantined"] == {}, health
        assert all(n == 0 for n in health["failures"].values()), health
        # the build the stop interrupted ended RETRY and was counted nowhere (whether the gate
        # saw it end while the master was stopping or not: the start-up catch-up skips RETRY);
        # or, its step caught before its command started, CANCELLED (a Buildbot race): then
        # the gate ran the run again itself, no inconclusive run and no retry elsewhere
        (stopped,) = [b for b in gate_builds(dep) if b["buildid"] == build["buildid"]]
        assert stopped["results"] in (RETRY, CANCELLED), stopped
        assert build["buildid"] not in health["counted"], health
        run_id = build["props"]["gate_run_id"]
        if stopped["results"] == CANCELLED:
            assert f"gate: run {run_id} of {tip[:12]}: started again after the restart" in _log(dep)
        assert "inconclusive" not in _log(dep) and "QUARANTINE" not in _log(dep)
        # the interrupted build was run again, on the same pool; one gate run
        builds = [b for b in gate_builds(dep) if b["props"].get("gate_kind") == "tip"]
        assert {b["props"]["gate_run_id"] for b in builds} == {build["props"]["gate_run_id"]}
        assert len(builds) >= 2 and {b["props"]["pool"] for b in builds} == {pool}
        _record(
            reliability,
            "master restarted (buildbot stop/start) mid-run",
            t0,
            "the interrupted build run again (by Buildbot after RETRY, by the gate after CANCELLED);"
            " no pool counted against "
            "(quarantine_after 1); the tip promoted",
        )
    finally:
        dep.stop()


def test_a_run_waiting_for_a_pool_quarantined_meanwhile_moves_to_another_pool(tmp_path, reliability):
    t0 = time.monotonic()
    proj, dep = _deployment(tmp_path)
    try:
        m = dep.master
        tip, build = _tip_run_in_a_step(proj, dep)
        lost = build["props"]["pool"]
        other = "pool2" if lost == "pool1" else "pool1"
        next(w for w in dep.workers if w.name == f"{lost}-qavm").kill()
        wait_promoted(dep, proj, tip, 90, "the tip promoted on the other pool")
        health = gate_state(dep, "health")
        assert list(health["quarantined"]) == [lost], health
        log = _log(dep)
        assert f"gate: QUARANTINE pool {lost}" in log
        assert re.search(rf"waits for pool {lost}, which was quarantined .*: inconclusive", log), log[-3000:]
        view = gate_state(dep, "view")
        assert view["culprits"] == [] and view["flakes"] == []
        builds = [b for b in gate_builds(dep) if b["props"].get("gate_kind") in ("tip", "retry")]
        passed = [b for b in builds if b["complete"] and b["results"] == 0]
        assert [b["props"]["pool"] for b in passed] == [other], [(b["props"], b["results"]) for b in builds]
        # the stranded request was cancelled: nothing is left waiting for the quarantined pool
        pending = m.api("buildrequests?complete=false")["buildrequests"]
        assert pending == [], pending
        _record(
            reliability,
            "pool quarantined while the gate's run waits for it",
            t0,
            f"worker of {lost} SIGKILLed mid-build (quarantine_after 1): run ended inconclusive, "
            f"retried and passed on {other}, the stranded request cancelled; nobody blamed",
        )
    finally:
        dep.stop()


def test_a_pool_whose_worker_is_down_gets_no_run_and_is_used_again_once_it_connects(tmp_path, reliability):
    t0 = time.monotonic()
    proj, dep = _deployment(tmp_path, offline_after=8)
    try:
        dep.wait_workers()
        wait_for(lambda: (gate_state(dep, "view") or {}).get("master"), 30, "the gate to start")
        down = next(w for w in dep.workers if w.name == "pool1-qavm")
        down.stop()  # the QA VM of pool1 goes down (pool1 is the gate's first choice)
        first = proj.commit("change 1", {"notes/1.txt": "1\n"})
        proj.push_staging()
        wait_promoted(dep, proj, first, 60, "the commit promoted on pool2")
        log = _log(dep)
        assert "gate: pool pool1 OFFLINE: worker pool1-qavm not connected" in log
        view = gate_state(dep, "view")
        assert view["pools"]["pool1"]["state"] == "unavailable", view["pools"]
        assert "worker pool1-qavm not connected" in view["pools"]["pool1"]["reason"]
        assert {b["props"]["pool"] for b in gate_builds(dep)} == {"pool2"}
        # the gate saw the push before pool1 counted as offline: it gave pool1 the run, which moved
        assert re.search(r"START gate tip run r1 of \w+ on pool1", log), log[-3000:]
        assert re.search(r"waits for pool pool1, which is offline .*: inconclusive", log), log[-3000:]
        # the QA VM is back: pool1 takes runs again (pool2 is kept busy so the gate needs it)
        down.start()
        wait_for(lambda: "worker pool1-qavm connected again, back in use" in _log(dep), 30, "pool1 back")
        assert gate_state(dep, "view")["pools"]["pool1"]["state"] != "unavailable"
        dep.wait_workers()
        second = proj.commit("change 2", {"notes/2.txt": "2\n"})
        proj.push_staging()
        wait_for(lambda: proj.head("master") == second, 60, "the next commit promoted")
        assert "pool1" in {b["props"]["pool"] for b in gate_builds(dep)}  # both idle: pool1 first
        health = gate_state(dep, "health")
        assert health["quarantined"] == {} and all(n == 0 for n in health["failures"].values()), health
        _record(
            reliability,
            "a pool's worker (QA VM) down",
            t0,
            "pool1's worker stopped right before a push (offline_after 8 s): the run the gate "
            "gave pool1 moved to pool2 and passed, pool1 used again once its worker connected; "
            "no pool counted against, nobody blamed",
        )
    finally:
        dep.stop()
