"""A real master and a real buildbot-worker process on 127.0.0.1: run a build, read it back over REST.

Run on SQLite and on PostgreSQL (a private Debian postgresql cluster started by the test).
"""

from __future__ import annotations

import pytest

from tests.support.procs import GitProject, Postgres, make_deployment, simple_pool, wait_for

SUITE = {"run-tests.sh": "#!/bin/sh\necho 'ran the suite'\nexit 0\n"}


@pytest.fixture
def postgres():
    pg = Postgres()
    url = pg.start()
    yield url
    pg.stop()


def _force_and_read_back(tmp_path, database=None):
    proj = GitProject.create(tmp_path / "repo", SUITE)
    dep = make_deployment(tmp_path / "qa", str(proj.origin), [simple_pool("pool1", 1)], database=database)
    dep.start()
    try:
        dep.wait_workers()
        m = dep.master
        # anonymous users may look but not force
        status, _ = m.rpc("forceschedulers/force", "force", {"builderid": "1", "pool": ""})
        assert status == 403
        m.force("pool1", "integration test")
        (build,) = m.wait_builds_finished(1)
        assert build["results"] == 0, build
        steps = m.api(f"builds/{build['buildid']}/steps")["steps"]
        assert [s["name"] for s in steps][-2:] == ["checkout", "bvt"]
        log = m.api(f"builds/{build['buildid']}/steps/bvt/logs/stdio/contents")["logchunks"][0]["content"]
        assert "ran the suite" in log
        worker = m.api(f"workers/{build['workerid']}")["workers"][0]
        assert worker["name"] == "pool1-qavm"
        return build
    finally:
        dep.stop()
        wait_for(
            lambda: dep.master.pid() is None or not (dep.master.basedir / "twistd.pid").exists(),
            30,
            "the master to stop",
        )


def test_real_master_and_worker_sqlite(tmp_path):
    _force_and_read_back(tmp_path)


def test_real_master_and_worker_postgresql(tmp_path, postgres):
    _force_and_read_back(tmp_path, database=postgres)
