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
from tests.support.procs import REPO, GitProject, git, make_deployment, simple_pool, wait_for

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
        "pools": {
            "pool1": {"state": "idle", "run_id": None, "commit": None, "reason": None},
            "pool2": {
                "state": "unavailable",
                "run_id": None,
                "commit": None,
                "reason": "BMC 127.0.0.1:16021 timeout",
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
    pools = dom.split('id="pools"')[1].split("</table>")[0]
    assert "pool1" in pools and "idle" in pools
    assert "pool2" in pools and "quarantined" in pools and "BMC 127.0.0.1:16021 timeout" in pools

    # per-test history page
    url = m.url + "plugins/wsgi_dashboards/gate/test/test_ssvm.html"
    with urllib.request.urlopen(url, timeout=10) as r:
        page = r.read().decode()
    assert 'id="test-name">test_ssvm<' in page and "flake rate" in page
    assert "recorded it as a flake" in page
