"""The gate dashboard in headless Chromium against a real master, and the web UI's authz.

The gate's view is stored exactly where the gate scheduler persists it (object state
``("gate", "GateScheduler")``, key ``"view"``); the culprit's build is a real failed build.
A screenshot is kept in tests/artifacts/dashboard.png.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

from master.dashboard import history_stats, render_gate
from schedulers.events import PoolAvailable, StagingUpdated
from schedulers.policy import GatePolicy, PolicyConfig
from tests.support.procs import REPO, GitProject, git, make_deployment, simple_pool, wait_for
from tests.test_policy import _play

ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASS = {"run-tests.sh": "#!/bin/sh\necho 'ran the suite'\nexit 0\n"}


def store_view(db: Path, view: dict) -> None:
    """Persist the gate's view as GateScheduler.setState('view', ...) would."""
    with sqlite3.connect(db) as c:
        row = c.execute("SELECT id FROM objects WHERE name='gate' AND class_name='GateScheduler'").fetchone()
        objectid = (
            row[0]
            if row
            else c.execute(
                "INSERT INTO objects (name, class_name) VALUES ('gate', 'GateScheduler')"
            ).lastrowid
        )
        c.execute("DELETE FROM object_state WHERE objectid=? AND name='view'", (objectid,))
        c.execute(
            "INSERT INTO object_state (objectid, name, value_json) VALUES (?, 'view', ?)",
            (objectid, json.dumps(view)),
        )


def chromium(url: str, *args: str) -> str:
    profile = tempfile.mkdtemp(prefix="qacloud-chromium-")
    try:
        p = subprocess.run(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def gate_view(master_sha: str, good: str, culprit: str, after: str) -> dict:
    return {
        "master": good,
        "staging": after,
        "candidates": [
            {"commit": good, "author": "Good Dev <good@example.org>", "status": "promoted"},
            {"commit": culprit, "author": "Jane Dev <jane@example.org>", "status": "culprit"},
            {"commit": after, "author": "Late Dev <late@example.org>", "status": "untested"},
        ],
        "interval": {"good": good, "bad": culprit},
        "runs": [],
        "results": {
            good: [{"run_id": "r1", "outcome": "pass", "failed_tests": [], "kind": "tip"}],
            culprit: [
                {"run_id": "r2", "outcome": "fail", "failed_tests": ["test_vm_life_cycle"], "kind": "bisect"}
            ],
        },
        "culprits": [
            {
                "commit": culprit,
                "author": "Jane Dev <jane@example.org>",
                "failed_tests": ["test_vm_life_cycle"],
                "run_ids": ["r2"],
            }
        ],
        "flakes": [{"commit": good, "tests": ["test_ssvm"], "run_id": "r0"}],
        "learned": {"on": True, "runs": 480, "flakes": 1, "rate": 0.0006, "target": 0.001}
        | {"distrusted": ["test_ssvm"]},
        "pools": {
            "pool1": {"state": "idle", "run_id": None, "commit": None, "reason": None},
            "pool2": {
                "state": "unavailable",
                "run_id": None,
                "commit": None,
                "reason": "quarantined: 3 consecutive infrastructure failures"
                " (last: BMC 127.0.0.1:16021 timeout)",
                "cause": "quarantined",
            },
        },
        "promotions": [
            {"commit": master_sha, "ok": True, "reason": ""},
            {"commit": good, "ok": True, "reason": ""},
        ],
        "alerts": [],
    }


def test_flake_rate_counts_failures_that_did_not_reproduce():
    runs = [
        {"passed": True, "revision": "a"},
        {"passed": False, "revision": "a"},  # flaky: same revision passed
        {"passed": False, "revision": "b"},  # a real failure
        {"passed": True, "revision": "c"},
    ]
    assert history_stats(runs) == {"runs": 4, "failed": 2, "flaky": 1, "flake_rate": 0.25}


def test_report_lists_good_and_buggy_commits():
    html = render_gate(gate_view("m0", "g1", "c2", "a3"), [], ["pool1"])
    good, buggy = html.split('id="good"')[1].split("</ul>")[0], html.split('id="buggy"')[1].split("</ul>")[0]
    assert "g1" in good and "promoted" in good and "c2" not in good
    assert "c2" in buggy and "Jane Dev" in buggy


@pytest.mark.parametrize(
    "learned, says",
    [
        (None, None),  # a view saved before round 13: no paragraph
        (
            {"on": True, "runs": 500, "flakes": 0, "rate": 0.0004, "target": 0.001, "distrusted": []},
            "0 flakes in 500 that passed or were shown flaky, learned flake rate <b>0.04%</b>."
            "\nA suspect is blamed on one such failure of a test whose own rate is at most 0.1%.",
        ),
        (
            {"on": True, "runs": 500, "flakes": 1, "rate": 0.0006, "target": 0.001}
            | {"distrusted": ["test_ssvm"]},
            "1 flake in 500",
        ),
        (
            {"on": True, "runs": 40, "flakes": 2, "rate": 0.04, "target": 0.001, "distrusted": []},
            "Above 0.1%: every suspect is re-run before it is blamed.",
        ),
        (
            {"on": False, "runs": 0, "flakes": 0, "rate": 0.02, "target": 0.001, "distrusted": []},
            "Learning is off",
        ),
    ],
)
def test_the_page_says_when_a_suspect_is_blamed_on_one_restricted_failure(learned, says):
    view = gate_view("m0", "g1", "c2", "a3")
    view.pop("learned")
    if learned is not None:
        view["learned"] = learned
    html = render_gate(view, [], ["pool1"])
    if says is None:
        assert 'id="learned"' not in html
        return
    para = html.split('id="learned"')[1].split("</p>", maxsplit=1)[0]
    assert says in para
    if learned["distrusted"]:
        assert "re-run first:" in para and "test_ssvm" in para


def _status(html: str) -> str:
    return html.split('id="gate-status"')[1].split("</p>", maxsplit=1)[0]


def test_the_status_line_says_what_the_gate_is_doing_and_what_needs_a_human():
    v = gate_view("m0", "g1", "c2", "a3")  # a bisect interval, pool2 quarantined
    html = render_gate(v, [], ["pool1", "pool2"])
    assert "bisecting" in _status(html) and "after g1 up to c2" in _status(html)
    attention = html.split('id="attention"')[1].split("</div>")[0]
    assert "pool pool2 quarantined: 3 consecutive infrastructure failures (last: BMC" in attention
    assert "quarantined: quarantined" not in attention
    v["pools"]["pool1"] = {
        "state": "unavailable",
        "run_id": None,
        "reason": "worker pool1-qavm not connected since 2026-11-26 06:05 UTC",
        "cause": "offline",
    }
    html = render_gate(v, [], ["pool1", "pool2"])
    attention = html.split('id="attention"')[1].split("</div>")[0]
    assert "pool pool1 offline: worker pool1-qavm not connected since 2026-11-26 06:05 UTC" in attention
    assert "offline" in html.split('id="pools"')[1].split("</table>")[0]
    v["pools"]["pool1"] = {"state": "unavailable", "run_id": None, "reason": "running try-bvt build #4"}
    v["pools"]["pool1"]["cause"] = "lent"
    html = render_gate(v, [], ["pool1", "pool2"])
    assert "pool1" not in html.split('id="attention"')[1].split("</div>")[0]  # lent: nothing wrong
    assert "lent" in html.split('id="pools"')[1].split("</table>")[0]
    # the label is the gate's cause, never read from the words of the reason
    v["pools"]["pool1"] = {"state": "unavailable", "run_id": None, "reason": "running out of disk"}
    v["pools"]["pool1"]["cause"] = "quarantined"
    html = render_gate(v, [], ["pool1", "pool2"])
    assert "pool pool1 quarantined: running out of disk" in html.split('id="attention"')[1].split("</div>")[0]
    v["pools"]["pool1"] = {
        "state": "unavailable",
        "run_id": None,
        "reason": "quarantined: a view without a cause",
    }
    html = render_gate(v, [], ["pool1", "pool2"])  # (a view saved before causes: told again at start-up)
    assert "pool pool1 unavailable: quarantined: a view without a cause" in html
    v["pools"]["pool1"] = {"state": "idle", "run_id": None, "reason": None}

    v["pools"]["pool2"]["state"] = "idle"
    v["interval"], v["runs"] = None, [{"run_id": "r3", "commit": "a3", "pool": "pool1", "kind": "tip"}]
    html = render_gate(v, [], ["pool1", "pool2"])
    assert "testing" in _status(html) and "1 run(s) in flight, 2 commit(s)" in _status(html)
    assert 'id="attention"' not in html  # nothing for a human

    v["runs"], v["candidates"] = [], [{**c, "status": "promoted"} for c in v["candidates"]]
    assert "Green: master is the staging tip" in _status(render_gate(v, [], ["pool1"]))

    v["halted"] = True
    v["alerts"] = [
        {"kind": "master-moved", "message": "master moved outside the gate to 0badc0ffee", "commit": ""},
        {"kind": "revert-failed", "message": "later, unrelated", "commit": ""},
    ]
    html = render_gate(v, [], ["pool1"])
    assert "halted" in _status(html) and "Promotion stopped: master moved outside the gate" in _status(html)


STILL_FAILING_AT = 1_790_003_600.0  # 2026-09-21 15:13 UTC


def still_failing_view() -> dict:
    """A real policy's view: A blamed, its revert still fails test_vm (B, in A's span, breaks
    it too), alerted at ``STILL_FAILING_AT``."""
    staging = ["a0", "A", "B", "a3"]
    breaks, fixes, t0 = {"A": "test_vm", "B": "test_vm"}, {}, STILL_FAILING_AT - 3600
    p = GatePolicy(PolicyConfig(confirmations=1, speculate=False, culprit_action="hold"))
    acts = p.handle(StagingUpdated("m", tuple(staging), now=t0))
    _play(p, "m", staging, breaks, fixes, acts + p.handle(PoolAvailable("p1", now=t0)))
    staging.append("revert-A")
    fixes["revert-A"] = "A"
    _play(p, "a0", staging, breaks, fixes, p.handle(StagingUpdated("a0", tuple(staging[1:]), now=t0 + 3600)))
    return p.view()


def test_a_block_shows_its_culprit_and_the_alert_a_human_must_answer():
    """The status line and "Needs attention" from a real policy's view: A blamed, its revert
    still fails test_vm (B, in A's span, breaks it too): the still-failing alert is what a
    human must act on; the alerts list shows it newest first with its time."""
    v = still_failing_view()
    assert v["blocked"] == {"from": "A", "to": "revert-A", "tests": ["test_vm"]} and not v["halted"]
    assert v["alerts"][-1]["at"] == STILL_FAILING_AT
    html = render_gate(v, [], ["p1"])
    assert "blocked" in _status(html)
    assert "4 staging commit(s) wait behind culprit A (failing test_vm)" in _status(html)
    attention = html.split('id="attention"')[1].split("</div>")[0]
    assert "still-failing: test_vm still fail(s) at 1 commit(s) pushed after A was blamed" in attention
    # an alert of an earlier block (its commit since promoted) is no longer news
    stale = {**v, "alerts": [{**v["alerts"][-1], "commit": "a0"}]}
    assert 'id="attention"' not in render_gate(stale, [], ["p1"])
    first = html.split('id="alerts"')[1].split("</li>")[0]
    assert "2026-09-21 15:13 UTC" in first and "still-failing" in first


@pytest.fixture
def running(tmp_path):
    proj = GitProject.create(tmp_path / "repo", PASS)
    base = proj.head("master")
    good = proj.commit("good change", {"a.txt": "a\n"}, author="Good Dev <good@example.org>")
    culprit = proj.commit(
        "breaks the BVT",
        {"run-tests.sh": "#!/bin/sh\necho 'FAIL test_vm_life_cycle'\nexit 1\n"},
        author="Jane Dev <jane@example.org>",
    )
    slow = proj.commit(
        "slow", {"run-tests.sh": "#!/bin/sh\nsleep 120\n"}, author="Late Dev <late@example.org>"
    )
    # not on staging: the live gate would test them (and keep a pool busy with the slow one);
    # forced builds of these revisions find them in the clone all the same
    git("push", "-q", "origin", "HEAD:refs/heads/review", cwd=proj.work)
    dep = make_deployment(
        tmp_path / "qa", str(proj.origin), [simple_pool("pool1", 1), simple_pool("pool2", 2)]
    )
    dep.start()
    try:
        dep.wait_workers()
        yield dep, {"base": base, "good": good, "culprit": culprit, "slow": slow}
    finally:
        dep.stop()


def _force(m, builderid, revision, user=None):
    return m.rpc(
        "forceschedulers/force",
        "force",
        {"builderid": str(builderid), "pool": "pool1", "revision": revision, "reason": "test"},
        user=user,
    )


def test_authz_and_dashboard_in_chromium(running):
    dep, c = running
    m = dep.master
    gate_id = {b["name"]: b["builderid"] for b in m.api("builders")["builders"]}["gate-bvt"]

    # force: anonymous 403, admin ok -> a real failing gate build of the culprit
    assert _force(m, gate_id, c["culprit"])[0] == 403
    status, body = _force(m, gate_id, c["culprit"], user="admin")
    assert status == 200, body
    (failed,) = m.wait_builds_finished(1)
    assert failed["results"] == 2

    # rebuild: anonymous 403, admin ok
    assert m.rpc(f"builds/{failed['buildid']}", "rebuild", {})[0] == 403
    status, body = m.rpc(f"builds/{failed['buildid']}", "rebuild", {}, user="admin")
    assert status == 200, body
    m.wait_builds_finished(2)

    # stop: anonymous 403, admin ok
    status, body = _force(m, gate_id, c["slow"], user="admin")
    assert status == 200, body
    running_build = wait_for(
        lambda: next((b for b in m.builds() if not b["complete"]), None), 30, "the slow build to start"
    )
    assert m.rpc(f"builds/{running_build['buildid']}", "stop", {"reason": "x"})[0] == 403
    assert m.api(f"builds/{running_build['buildid']}")["builds"][0]["complete"] is False
    status, body = m.rpc(f"builds/{running_build['buildid']}", "stop", {"reason": "test"}, user="admin")
    assert status == 200, body
    stopped = wait_for(
        lambda: (b := m.api(f"builds/{running_build['buildid']}")["builds"][0])["complete"] and b,
        30,
        "the stopped build",
    )
    assert stopped["results"] == 6  # CANCELLED

    # the dashboard, embedded in the web UI, with the gate's view
    store_view(m.basedir / "state.sqlite", gate_view(c["base"], c["good"], c["culprit"], c["slow"]))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    chromium(m.url + "#/gate", f"--screenshot={shot}", "--window-size=1280,2200")
    assert shot.exists() and shot.stat().st_size > 10_000
    dom = chromium(m.url + "#/gate", "--dump-dom")
    assert 'id="qacloud-gate"' in dom, dom[-3000:]
    culprits = dom.split('id="culprits"')[1].split("</table>")[0]
    assert c["culprit"] in culprits and "Jane Dev" in culprits and "test_vm_life_cycle" in culprits
    assert f"#/builders/{gate_id}/builds/{failed['number']}" in culprits  # link to the real build
    assert c["good"] in dom.split('id="master-head"')[1].split("</code>")[0]  # the promoted head
    assert "bisecting" in dom.split('id="gate-status"')[1].split("</p>")[0]
    assert "pool pool2 quarantined" in dom.split('id="attention"')[1].split("</div>")[0]
    pools = dom.split('id="pools"')[1].split("</table>")[0]
    assert "pool1" in pools and "idle" in pools
    assert "pool2" in pools and "quarantined" in pools and "BMC 127.0.0.1:16021 timeout" in pools
    learned = dom.split('id="learned"')[1].split("</p>")[0]
    assert "1 flake in 480" in learned and "re-run first:" in learned and "test_ssvm" in learned

    # per-test history page
    url = m.url + "plugins/wsgi_dashboards/gate/test/test_ssvm.html"
    with urllib.request.urlopen(url, timeout=10) as r:
        page = r.read().decode()
    assert 'id="test-name">test_ssvm<' in page and "flake rate" in page
    assert "recorded it as a flake" in page
