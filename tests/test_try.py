"""The try service with a real ``buildbot try`` client against a real master and worker.

Good credentials are accepted and ``--wait`` reports the result, the submitter is mailed
(real SMTP), bad credentials are refused, a patch that does not apply fails at checkout
before anything else runs, ``buildbot reconfig`` works with try configured, and gate
requests are served before try requests waiting for the same pool.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time

import pytest
from buildbot.process.results import RETRY

from tests.support.procs import BIN, GitProject, gate_state, make_deployment, run, simple_pool, wait_for
from tests.support.smtp import SmtpServer

SUITE = {"run-tests.sh": "#!/bin/sh\necho 'ran the suite'\nexit 0\n"}
GOOD_PATCH = """\
diff --git a/run-tests.sh b/run-tests.sh
--- a/run-tests.sh
+++ b/run-tests.sh
@@ -1,3 +1,3 @@
 #!/bin/sh
-echo 'ran the suite'
+echo 'ran the patched suite'
 exit 0
"""
BAD_PATCH = """\
diff --git a/run-tests.sh b/run-tests.sh
--- a/run-tests.sh
+++ b/run-tests.sh
@@ -1,3 +1,3 @@
 #!/bin/sh
-echo 'a line that is not there'
+echo 'never'
 exit 0
"""


REFUSED = ("RemoteError", "Unauthorized")  # what the client prints for a refused login


def try_client(dep, proj, patch_file, user="alice", password=None, extra=(), timeout=120, until=()):
    """Run ``buildbot try``; returns (returncode, or None if it was still running and was killed,
    output). ``until``: stop it as soon as its output shows one of these strings (the 4.3 client
    hangs after a refused login instead of exiting)."""
    m = dep.master
    password = m.secrets[f"user-{user}"] if password is None else password
    try_port = _try_port(dep)
    argv = [
        str(BIN / "buildbot"),
        "try",
        "--connect=pb",
        f"--master=127.0.0.1:{try_port}",
        f"--username={user}",
        f"--passwd={password}",
        "--vc=git",
        "--branch=staging",
        f"--baserev={proj.head('staging')}",
        f"--diff={patch_file}",
        "--patchlevel=1",
        "--builder=try-bvt",
        *extra,
    ]
    with tempfile.TemporaryFile() as f:
        p = subprocess.Popen(argv, cwd=proj.work, stdout=f, stderr=subprocess.STDOUT)

        def output() -> str:
            f.seek(0)
            return f.read().decode(errors="replace")

        deadline = time.monotonic() + timeout
        while p.poll() is None and time.monotonic() < deadline:
            if until and any(u in output() for u in until):
                break
            time.sleep(0.1)
        rc = p.poll()
        if rc is None:
            p.kill()
            p.wait()
        return rc, output()


def _try_port(dep) -> int:
    import yaml

    return yaml.safe_load(dep.master.settings.read_text())["try"]["port"]


@pytest.fixture
def deployment(tmp_path):
    yield from _deployed(tmp_path, SUITE)


def _deployed(tmp_path, suite):
    """A master with try and mail (real SMTP) and one pool: (deployment, project, smtp)."""
    proj = GitProject.create(tmp_path / "repo", suite)
    with SmtpServer() as smtp:
        dep = make_deployment(
            tmp_path / "qa",
            str(proj.origin),
            [simple_pool("pool1", 1)],
            extra={
                "reporters": {"mail": {"relayhost": "127.0.0.1", "port": smtp.port, "to": ["qa@example.org"]}}
            },
        )
        dep.start()
        try:
            dep.wait_workers()
            yield dep, proj, smtp
        finally:
            dep.stop()


def _steps(m, build):
    return {s["name"]: s for s in m.api(f"builds/{build['buildid']}/steps")["steps"]}


def test_try_accepts_refuses_fails_bad_patch_and_survives_reconfig(deployment, tmp_path):
    dep, proj, smtp = deployment
    m = dep.master
    good, bad = tmp_path / "good.diff", tmp_path / "bad.diff"
    good.write_text(GOOD_PATCH)
    bad.write_text(BAD_PATCH)

    # bad credentials: refused, nothing scheduled
    rc, out = try_client(dep, proj, good, password="wrong-password", timeout=60, until=REFUSED)
    assert rc != 0, out
    assert "RemoteError" in out or "Unauthorized" in out, out
    assert "invalid login from user 'alice'" in (m.basedir / "twistd.log").read_text()
    assert m.api("buildsets")["buildsets"] == []

    # good credentials: accepted, --wait reports the result, the patch was applied
    rc, out = try_client(dep, proj, good, extra=["--wait", "--who=mallory"])
    assert rc == 0, out
    assert "try-bvt: success" in out, out
    (build,) = m.wait_builds_finished(1)
    assert build["results"] == 0
    log = m.api(f"builds/{build['buildid']}/steps/bvt/logs/stdio/contents")["logchunks"][0]["content"]
    assert "ran the patched suite" in log
    props = m.api(f"builds/{build['buildid']}/properties")["properties"][0]
    assert props["owner"][0] == "alice"  # the authenticated user, not --who
    mail = smtp.inbox.wait(lambda msg: "try run" in msg["Subject"], what="the try submitter's mail")
    assert "alice@example.org" in smtp.inbox.recipients_of(mail)
    assert "success" in mail["Subject"]

    # a patch that does not apply fails at checkout; nothing after it runs
    rc, out = try_client(dep, proj, bad, extra=["--wait"])
    assert "try-bvt: failure" in out, out
    builds = m.wait_builds_finished(2)
    failed = max(builds, key=lambda b: b["buildid"])
    assert failed["results"] == 2, failed
    steps = _steps(m, failed)
    assert steps["checkout"]["results"] == 2
    names = list(steps)
    later = names[names.index("checkout") + 1 :]
    assert all(steps[n]["started_at"] is None for n in later), steps

    # reconfig with try configured: complete, not "partially applied"; try still logs in
    log_before = len((m.basedir / "twistd.log").read_text())
    r = run([str(BIN / "buildbot"), "reconfig", str(m.basedir)], env=m._env(), check=False, timeout=120)
    tail = (m.basedir / "twistd.log").read_text()[log_before:]
    assert r.returncode == 0, r.stdout + r.stderr + tail
    assert "partially applied" not in tail and "already registered" not in tail, tail
    assert "configuration update complete" in tail, tail
    rc, out = try_client(dep, proj, good, extra=["--get-builder-names"])
    assert rc == 0 and "try-bvt" in out, out


def test_gate_requests_go_before_try_requests(tmp_path):
    proj = GitProject.create(tmp_path / "repo", SUITE)
    dep = make_deployment(tmp_path / "qa", str(proj.origin), [simple_pool("pool1", 1)])
    dep.master.start()  # the pool's worker is not connected yet: both requests wait
    try:
        m = dep.master
        builders = {b["name"]: b["builderid"] for b in m.api("builders")["builders"]}
        for name in ("try-bvt", "gate-bvt"):  # the try request is older
            status, body = m.rpc(
                "forceschedulers/force",
                "force",
                {"builderid": str(builders[name]), "pool": "", "reason": name},
                user="admin",
            )
            assert status == 200, body
        wait_for(lambda: len(m.api("buildrequests?complete=false")["buildrequests"]) == 2, 10, "2 requests")
        for w in dep.workers:
            w.start()
        builds = sorted(m.wait_builds_finished(2), key=lambda b: b["buildid"])
        assert [b["builderid"] for b in builds] == [builders["gate-bvt"], builders["try-bvt"]]
    finally:
        dep.stop()


def test_patch_problem_names_the_reason():
    from schedulers.trying import patch_problem

    assert patch_problem(GOOD_PATCH.encode(), 1024) is None
    assert patch_problem(None, 1024) is None
    assert "above the try limit of 100 bytes" in patch_problem(GOOD_PATCH.encode(), 100)
    assert "NUL byte at offset 3" in patch_problem(b"abc\0def", 1024)
    hunk = b"diff --git a/x.png b/x.png\nBinary files a/x.png and b/x.png differ\n"
    assert "binary file b/x.png" in patch_problem(hunk, 1024)
    assert "not a unified diff" in patch_problem(b"hello\n", 1024)
    assert patch_problem(b"diff --git a/x.png b/x.png\nGIT binary patch\nliteral 3\nabc\n", 1024) is None


SLOW_SUITE = {
    "run-tests.sh": 'sleep 8\nexec python3 -m unittest -v "$@"\n',
    "test_app.py": "import unittest\n\n\nclass T(unittest.TestCase):\n    def test_a(self):\n        pass\n",
}


def test_a_running_try_build_does_not_hold_up_the_gate(tmp_path):
    """A try build runs on pool1 (the gate's first choice) when a commit reaches staging: the
    gate knows pool1 is lent and runs the commit on pool2 at once instead of queueing behind the
    try build; pool1 is the gate's again once the try build ends."""
    proj = GitProject.create(tmp_path / "repo", SLOW_SUITE)
    dep = make_deployment(
        tmp_path / "qa", str(proj.origin), [simple_pool("pool1", 1), simple_pool("pool2", 2)]
    )
    dep.start()
    try:
        dep.wait_workers()
        m = dep.master
        wait_for(lambda: (gate_state(dep) or {}).get("master"), 30, "the gate to start")
        builders = {b["name"]: b["builderid"] for b in m.api("builders")["builders"]}
        status, body = m.rpc(
            "forceschedulers/force",
            "force",
            {"builderid": str(builders["try-bvt"]), "pool": "pool1", "reason": "a developer's try"},
            user="admin",
        )
        assert status == 200, body

        def lent():
            p = (gate_state(dep) or {}).get("pools", {}).get("pool1", {})
            return p if p.get("state") == "unavailable" else None

        def trying():
            return [b for b in m.builds() if b["builderid"] == builders["try-bvt"] and not b["complete"]]

        (tried,) = wait_for(trying, 30, "the try build running")
        tip = proj.commit("change 1", {"notes/1.txt": "1\n"})
        proj.push_staging()
        wait_for(lambda: proj.head("master") == tip, 60, "the commit promoted")
        gated = [b for b in m.builds() if b["builderid"] == builders["gate-bvt"]]
        (tried,) = [b for b in m.builds() if b["builderid"] == builders["try-bvt"]]
        assert gated and all(b["workerid"] != tried["workerid"] for b in gated), (tried, gated)
        # the gate did not wait for the try build: its run started while the try still ran
        assert tried["complete_at"] is None or min(b["started_at"] for b in gated) < tried["complete_at"]
        log = m.basedir / "twistd.log"
        assert "gate: pool pool1 lent to try-bvt build #1: no gate run there" in log.read_text()
        wait_for(lambda: m.api(f"builds/{tried['buildid']}")["builds"][0]["complete"], 60, "the try build")
        wait_for(lambda: not lent(), 10, "pool1 back with the gate")
        assert "gate: pool pool1: try-bvt build #1 ended, the pool is the gate's again" in log.read_text()
    finally:
        dep.stop()


PREEMPT_SUITE = {
    "run-tests.sh": "#!/bin/sh\nif [ -f slow.txt ]; then sleep 20; fi\necho 'ran the suite'\nexit 0\n",
    "slow.txt": "the suite is slow while this file is in the tree\n",
}
NEW_FILE_PATCH = """\
diff --git a/patched.txt b/patched.txt
new file mode 100644
--- /dev/null
+++ b/patched.txt
@@ -0,0 +1 @@
+patched
"""


@pytest.mark.parametrize("then", ["runs again", "is cancelled while queued again"])
def test_the_gate_takes_its_pool_back_from_a_running_try_build(tmp_path, then):
    """try.preempt (on by default): a developer's try build holds the only pool when a commit
    reaches staging. The gate stops it as RETRY and runs and promotes the commit; the stop is
    not counted against the pool. Then either Buildbot runs the try again once the gate leaves
    the pool idle: ``buildbot try --wait`` reports its success and the developer gets one mail
    (its result, not the stopped build's); or an admin cancels the queued try meanwhile:
    the client reports the stopped build and exits instead of waiting for good."""
    gen = _deployed(tmp_path, PREEMPT_SUITE)
    dep, proj, smtp = next(gen)
    try:
        m = dep.master
        wait_for(lambda: (gate_state(dep) or {}).get("master"), 30, "the gate to start")
        builders = {b["name"]: b["builderid"] for b in m.api("builders")["builders"]}
        patch = tmp_path / "new-file.diff"
        patch.write_text(NEW_FILE_PATCH)
        result: dict = {}
        client = threading.Thread(
            target=lambda: result.update(
                zip(("rc", "out"), try_client(dep, proj, patch, extra=["--wait"], timeout=240))
            )
        )
        client.start()

        def try_builds():
            return sorted(
                (b for b in m.builds() if b["builderid"] == builders["try-bvt"]), key=lambda b: b["buildid"]
            )

        (first,) = wait_for(
            lambda: [b for b in try_builds() if not b["complete"]], 60, "the try build running"
        )
        if then == "runs again":
            (proj.work / "slow.txt").unlink()  # the gate's run is quick
        tip = proj.commit("a change", {"notes/1.txt": "1\n"})
        proj.push_staging()
        wait_for(lambda: m.api(f"builds/{first['buildid']}")["builds"][0]["complete"], 60, "the try stopped")
        if then == "is cancelled while queued again":  # the gate's run takes 20 s: cancel meanwhile
            status, body = m.rpc(
                f"buildrequests/{first['buildrequestid']}", "cancel", {"reason": "not needed"}, user="admin"
            )
            assert status == 200, body
        wait_for(lambda: proj.head("master") == tip, 120, "the commit promoted")
        client.join(240)
        assert "rc" in result, "buildbot try --wait still waiting"
        stopped = try_builds()[0]
        assert stopped["buildid"] == first["buildid"] and stopped["results"] == RETRY, stopped
        assert "preempted by the qacloud gate" in stopped["state_string"], stopped
        (gated,) = [b for b in m.builds() if b["builderid"] == builders["gate-bvt"]]
        assert gated["results"] == 0 and stopped["complete_at"] <= gated["started_at"], (stopped, gated)
        log = (m.basedir / "twistd.log").read_text()
        assert "gate: pool pool1: stopping try-bvt build #1 (preempted by the qacloud gate" in log, log[
            -3000:
        ]
        assert "after the gate took its pool pool1 back: not counted against the pool" in log
        health = gate_state(dep, "health") or {}
        assert "pool1" not in json.dumps(health.get("quarantined", {})), health
        if then == "is cancelled while queued again":
            assert result["rc"] == 1 and "try-bvt: retry" in result["out"], result
            assert len(try_builds()) == 1
            return
        assert result["rc"] == 0 and "try-bvt: success" in result["out"], result
        _, retried = try_builds()
        assert retried["results"] == 0 and gated["started_at"] <= retried["started_at"], (gated, retried)
        mail = smtp.inbox.wait(lambda msg: "try run" in msg["Subject"], what="the try submitter's mail")
        assert "success" in mail["Subject"], mail["Subject"]
        time.sleep(1)
        subjects = [msg["Subject"] for msg in smtp.inbox.messages if "try run" in msg["Subject"]]
        assert subjects == [mail["Subject"]]
    finally:
        gen.close()
