"""``qacloud pool release`` against a real master: a pool quarantined by a real lost-worker
build is returned to service by a QA user; developers and anonymous users are refused."""

from __future__ import annotations

import json
import sqlite3
import urllib.request

from tests.support.procs import (
    BIN,
    GitProject,
    _alive,
    free_port,
    make_deployment,
    run,
    simple_pool,
    wait_for,
)

QA_PASSWORD = "qa-Password-81c2"


def _view(dep) -> dict | None:
    with sqlite3.connect(dep.master.basedir / "state.sqlite", timeout=10) as conn:
        row = conn.execute(
            "SELECT s.value_json FROM object_state s JOIN objects o ON o.id = s.objectid"
            " WHERE o.name = 'gate' AND o.class_name = 'GateScheduler' AND s.name = 'view'"
        ).fetchone()
    return json.loads(row[0]) if row else None


def _pool_state(dep, pool: str) -> str | None:
    return ((_view(dep) or {}).get("pools") or {}).get(pool, {}).get("state")


def release(dep, pool: str, user: str, *extra: str):
    return run(
        [
            str(BIN / "qacloud"),
            "pool",
            "release",
            pool,
            "--settings",
            str(dep.master.settings),
            "--user",
            user,
            *extra,
        ],
        check=False,
        timeout=150,
    )


def gate_status(dep, *extra: str):
    return run(
        [str(BIN / "qacloud"), "gate", "status", "--settings", str(dep.master.settings), *extra],
        check=False,
        timeout=30,
    )


def test_pool_release_returns_a_quarantined_pool_to_service(tmp_path):
    marker = tmp_path / "slow"  # while it exists, the suite hangs (so the worker can be lost mid-build)
    marker.touch()
    script = f"#!/bin/sh\nwhile [ -e {marker} ]; do sleep 0.2; done\necho 'ran the suite'\nexit 0\n"
    proj = GitProject.create(tmp_path / "repo", {"run-tests.sh": script})
    users = [
        {"name": "admin", "password_secret": "user-admin", "roles": ["admins"]},
        {"name": "alice", "password_secret": "user-alice", "roles": ["developers"]},
        {"name": "carol", "password_secret": "user-carol", "roles": ["qa"]},
    ]
    dep = make_deployment(
        tmp_path / "qa",
        str(proj.origin),
        [simple_pool("pool1", 1), simple_pool("pool2", 2)],
        extra={"users": users, "pools": {"quarantine_after": 1}},
        extra_secrets={"user-carol": QA_PASSWORD},
    )
    dep.start()
    try:
        dep.wait_workers()
        m = dep.master
        ids = {b["name"]: b["builderid"] for b in m.api("builders")["builders"]}
        wait_for(lambda: _pool_state(dep, "pool2") == "idle", 30, "the gate to see pool2")

        # a real infrastructure failure: pool2's worker dies mid-build -> quarantine (after 1)
        force = {"builderid": str(ids["gate-bvt"]), "pool": "pool2", "revision": proj.head("staging")}
        status, body = m.rpc("forceschedulers/force", "force", force, user="admin")
        assert status == 200, body
        build = wait_for(lambda: next(iter(m.builds()), None), 30, "the build on pool2 to start")

        def checked_out() -> bool:
            steps = m.api(f"builds/{build['buildid']}/steps")["steps"]
            return any(s["name"] == "checkout" and s["complete"] for s in steps)

        wait_for(checked_out, 60, "the build on pool2 to run the (hanging) suite")
        pool2 = next(w for w in dep.workers if w.name == "pool2-qavm")
        pid = pool2.pid()
        pool2.kill()
        wait_for(lambda: not _alive(pid), 10, "pool2's worker to die")  # (a zombie counts as dead)
        (pool2.basedir / "twistd.pid").unlink(missing_ok=True)
        wait_for(lambda: _pool_state(dep, "pool2") == "unavailable", 30, "pool2 to be quarantined")
        assert "quarantined" in _view(dep)["pools"]["pool2"]["reason"]
        marker.unlink()
        pool2.start()
        dep.wait_workers()
        with urllib.request.urlopen(m.url + "plugins/wsgi_dashboards/gate/index.html", timeout=10) as r:
            pools = r.read().decode().split('id="pools"')[1].split("</table>")[0]
        assert "pool2" in pools and "quarantined" in pools
        # qacloud gate status: a monitoring check saying so (exit 1), and its JSON
        p = gate_status(dep)
        assert p.returncode == 1, p.stdout + p.stderr
        assert "needs a human:\n  - pool pool2 quarantined: 1 consecutive infrastructure failure" in p.stdout
        doc = json.loads(gate_status(dep, "--json").stdout)
        assert {q["name"]: q["label"] for q in doc["pools"]} == {"pool1": "idle", "pool2": "quarantined"}
        with urllib.request.urlopen(m.url + "plugins/wsgi_dashboards/gate/status.json", timeout=10) as r:
            assert r.headers["Content-Type"] == "application/json; charset=utf-8"  # anonymous, like the UI
            assert json.loads(r.read())["attention"] == doc["attention"]
        p = gate_status(dep, "--url", f"http://127.0.0.1:{free_port()}/")
        assert p.returncode == 2 and "qacloud gate status: cannot reach the master" in p.stderr, p.stderr

        # refused: anonymous and developer forces, an unknown pool, an unreachable master
        release_params = {"pool": "pool2"}
        assert m.rpc("forceschedulers/pool-service", "force", release_params)[0] == 403
        assert m.rpc("forceschedulers/pool-service", "force", release_params, user="alice")[0] == 403
        p = release(dep, "pool2", "alice")
        assert p.returncode == 2 and "not authorized" in p.stderr, p.stderr
        p = release(dep, "pool9", "carol")
        assert p.returncode == 2 and "unknown pool 'pool9'" in p.stderr and "pool1, pool2" in p.stderr, (
            p.stderr
        )
        p = release(dep, "pool2", "carol", "--url", f"http://127.0.0.1:{free_port()}/")
        assert p.returncode == 2 and "cannot reach the master" in p.stderr, p.stderr
        p = release(dep, "pool2", "mallory")
        assert p.returncode == 2 and "unknown user 'mallory'" in p.stderr, p.stderr
        assert _pool_state(dep, "pool2") == "unavailable"
        assert not m.builds(builderid=ids["pool-service"])

        # a QA engineer releases it
        p = release(dep, "pool2", "carol")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "pool pool2 returned to service" in p.stdout
        (svc,) = m.builds(builderid=ids["pool-service"])
        assert svc["results"] == 0 and svc["complete"]
        assert _pool_state(dep, "pool2") != "unavailable"
        assert QA_PASSWORD not in p.stdout + p.stderr + (m.basedir / "twistd.log").read_text()
        p = gate_status(dep)
        assert p.returncode == 0 and "needs a human" not in p.stdout, p.stdout + p.stderr
        assert "  pool2  idle" in p.stdout, p.stdout

        # usable again: a build asking for pool2 runs there
        status, body = m.rpc("forceschedulers/force", "force", force, user="admin")
        assert status == 200, body
        pool2_id = next(w["workerid"] for w in m.api("workers")["workers"] if w["name"] == "pool2-qavm")
        wait_for(
            lambda: any(
                b["complete"] and b["results"] == 0 and b["workerid"] == pool2_id
                for b in m.builds(builderid=ids["gate-bvt"])
            ),
            60,
            "a passing build on pool2",
        )
    finally:
        dep.stop()
