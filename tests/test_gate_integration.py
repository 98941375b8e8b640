"""The gate end to end: a real master, two real workers (two pools), a real git origin.

The project's own test script fails from commit X on. Eight commits are pushed to staging at
once: the gate promotes X's parent, bisects, confirms and blames X; the master is SIGKILLed
mid-bisect and restarted, and the gate finishes with the same result without repeating a
finished run. Then a fix on top of staging gets everything promoted.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter

from buildbot.process.results import CANCELLED, RETRY

from tests.support.procs import (
    GitProject,
    gate_builds,
    gate_state,
    make_deployment,
    simple_pool,
    wait_for,
    wait_promoted,
)

RUN_TESTS = 'exec python3 -m unittest -v "$@"\n'
TEST_APP = """\
import pathlib
import unittest


class AppTests(unittest.TestCase):
    def test_always(self):
        self.assertTrue(True)

    def test_value(self):
        self.assertEqual(pathlib.Path("value.txt").read_text().strip(), "ok")
"""
FAILING_TEST = "test_app.AppTests.test_value"


def _view(dep) -> dict | None:
    """The gate's persisted view (object state ("gate", "GateScheduler")["view"])."""
    db = dep.master.basedir / "state.sqlite"
    with sqlite3.connect(db, timeout=10) as conn:
        row = conn.execute(
            "SELECT s.value_json FROM object_state s JOIN objects o ON o.id = s.objectid"
            " WHERE o.name = 'gate' AND o.class_name = 'GateScheduler' AND s.name = 'view'"
        ).fetchone()
    return json.loads(row[0]) if row else None


def _two_pool_gate(tmp_path, files: dict[str, str], **extra):
    """A started deployment with pools pool1 and pool2 gating a new project of ``files``
    (1 confirmation, hold; ``extra`` settings), once the gate runs."""
    proj = GitProject.create(tmp_path / "repo", files)
    dep = make_deployment(
        tmp_path / "qa",
        str(proj.origin),
        [simple_pool("pool1", 1), simple_pool("pool2", 2)],
        extra={"gate": {"confirm_runs": 1, "culprit_action": "hold"}, **extra},
    )
    dep.start()
    try:
        dep.wait_workers()
        initial = proj.head("master")
        wait_for(lambda: (_view(dep) or {}).get("master") == initial, 30, "the gate to start")
    except BaseException:
        dep.stop()
        raise
    return proj, dep


def test_gate_bisects_blames_survives_sigkill_and_promotes_the_fix(tmp_path):
    proj, dep = _two_pool_gate(
        tmp_path, {"run-tests.sh": RUN_TESTS, "test_app.py": TEST_APP, "value.txt": "ok\n"}
    )
    try:
        m = dep.master

        shas = []
        for i in range(1, 9):
            files = {f"notes/{i}.txt": f"change {i}\n"}
            if i == 5:  # X: breaks test_value from here on
                files["value.txt"] = "broken\n"
            shas.append(proj.commit(f"change {i}", files, author=f"Dev{i} <dev{i}@example.org>"))
        culprit, parent = shas[4], shas[3]
        proj.push_staging()

        # SIGKILL the master mid-bisect: a bisect-phase run finished, another one running
        def mid_bisect():
            v = _view(dep) or {}
            finished = [r for rs in v.get("results", {}).values() for r in rs]
            bisected = any(r["kind"] in ("bisect", "confirm", "parent") for r in finished)
            if not (bisected and v.get("runs") and not v.get("culprits")):
                return None
            return [b for b in gate_builds(dep) if not b["complete"]]

        running = wait_for(mid_bisect, 90, "a bisect run finished and another one running")
        m.kill()
        m.start()

        def blamed():
            v = _view(dep) or {}
            return [c for c in v.get("culprits", []) if c["commit"] == culprit]

        try:
            (c,) = wait_for(blamed, 120, f"the gate to blame {culprit[:12]}")
            wait_for(lambda: proj.head("master") == parent, 30, "master at X's parent")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{m.log_tail(120)}") from None
        assert c["author"] == "Dev5 <dev5@example.org>"
        assert c["failed_tests"] == [FAILING_TEST]
        # the view is saved with the decision; the BLAME line is logged as the action runs
        blame_line = rf"gate: BLAME {culprit} by Dev5 <dev5@example.org>: breaks {re.escape(FAILING_TEST)}"
        wait_for(
            lambda: re.search(blame_line, (m.basedir / "twistd.log").read_text()), 10, "the BLAME log line"
        )
        log = (m.basedir / "twistd.log").read_text()
        assert "gate: resumed:" in log
        view = _view(dep)
        statuses = {cand["commit"]: cand["status"] for cand in view["candidates"]}
        assert statuses[culprit] == "culprit"
        assert all(statuses[s] == "blocked" for s in shas[5:])

        # a fix on top of staging: the tip passes and everything goes to master
        fix = proj.commit("fix value", {"value.txt": "ok\n"}, author="Dev9 <dev9@example.org>")
        proj.push_staging()
        wait_for(lambda: proj.head("master") == fix, 90, "the fix promoted to master")

        # builds over REST: no finished run repeated (across the SIGKILL), culprit's runs failed
        builds = gate_builds(dep)
        finished = [b for b in builds if b["complete"] and b["results"] not in (RETRY, CANCELLED)]
        per_run = Counter(b["props"]["gate_run_id"] for b in finished)
        assert [r for r, n in per_run.items() if n > 1] == [], (per_run, m.log_tail(150))
        key = Counter(
            (b["props"]["revision"], b["props"]["gate_kind"], json.dumps(b["props"].get("bvt_tests")))
            for b in finished
            if b["props"]["gate_kind"] != "confirm"
        )
        assert [k for k, n in key.items() if n > 1] == [], (key, m.log_tail(150))
        on_culprit = [b for b in finished if b["props"]["revision"] == culprit]
        assert len(on_culprit) >= 2 and all(b["results"] == 2 for b in on_culprit), on_culprit
        # the runs in flight at the kill were reconciled on restart (waited for, or read back
        # if they had just finished), never resubmitted as new gate runs (checked above)
        assert running
        assert re.search(
            r"gate: run r\d+ of \w+ (still pending/running|finished while the master|finished \(build)", log
        )
    finally:
        dep.stop()


BROKEN_POOL_TEST_APP = """\
import os
import unittest


class AppTests(unittest.TestCase):
    def test_always(self):
        self.assertTrue(True)

    def test_storage(self):  # pool1's hosts are broken: this test fails on pool1 whatever the commit
        self.assertNotIn("pool1-qavm", os.getcwd(), "pool1's primary storage is broken")
"""


def test_a_failure_only_one_pool_reproduces_blames_nobody(tmp_path):
    """pool1 fails ``test_storage`` for every commit (a broken host: the lab's fault, not the
    commit's). The tip's run lands on pool1 (both pools idle: the first) and fails; its
    confirmation goes to pool2, which passes it: a flake, nobody blamed, the commit promoted.
    Confirmed on pool1 again, the innocent commit would have been blamed."""
    proj, dep = _two_pool_gate(
        tmp_path,
        {"run-tests.sh": RUN_TESTS, "test_app.py": BROKEN_POOL_TEST_APP},
        pools={"quarantine_after": 2},
    )
    try:
        m = dep.master
        tip = proj.commit("change 1", {"notes/1.txt": "1\n"}, author="Dev1 <dev1@example.org>")
        proj.push_staging()
        wait_promoted(dep, proj, tip, 90, "the commit promoted")
        view = _view(dep)
        assert view["culprits"] == []
        assert [f["tests"] for f in view["flakes"]] == [["test_app.AppTests.test_storage"]]
        runs = {b["props"]["gate_kind"]: b for b in gate_builds(dep) if b["complete"]}
        assert runs["tip"]["props"]["pool"] == "pool1" and runs["tip"]["results"] == 2, runs
        assert runs["confirm"]["props"]["pool"] == "pool2" and runs["confirm"]["results"] == 0, runs
        assert "BLAME" not in (m.basedir / "twistd.log").read_text()

        # pool1 keeps failing runs the other pool passes: after 2 in a row it is quarantined
        # as broken itself, and the gate goes on with pool2 alone
        second = proj.commit("change 2", {"notes/2.txt": "2\n"})
        proj.push_staging()
        wait_promoted(dep, proj, second, 90, "the second commit promoted")
        health = wait_for(
            lambda: (h := gate_state(dep, "health"))["quarantined"] and h, 20, "pool1 quarantined"
        )
        assert health["quarantined"] == {
            "pool1": "2 failing runs in a row that other pools did not reproduce"
            " (last: test_app.AppTests.test_storage)"
        }, health
        third = proj.commit("change 3", {"notes/3.txt": "3\n"})
        proj.push_staging()
        wait_promoted(dep, proj, third, 60, "the third commit promoted")
        on = [b["props"]["pool"] for b in gate_builds(dep) if b["props"]["revision"] == third]
        assert on == ["pool2"], on
        assert (_view(dep) or {})["culprits"] == []
    finally:
        dep.stop()
