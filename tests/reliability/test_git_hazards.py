"""Git hazards on the gate, with a real master, a real worker and a real bare origin.

One deployment goes through four hazards in turn, each followed by a recovery:

1. master moved by someone else (a direct push to origin master) -> ALERT master-moved, the gate
   re-plans from the new master and never rewrites it;
2. staging force-pushed while a run is in flight -> ALERT staging-rewritten, the dropped
   commits never reach master, the gate goes on with the new staging;
3. push rejected (a pre-receive hook in the origin refuses master updates) -> ALERT
   promotion-rejected, no force push; once the hook is gone the commit is promoted;
4. origin unreachable (its directory renamed) -> no crash, an alert, periodic retries; once
   it is back the gate catches up and promotes.

Everything is asserted on the origin's own state (its reflog of master, a post-receive log of
every update it accepted), the gate's persisted view and twistd.log.
"""

from __future__ import annotations

import itertools
import re
import time

from tests.reliability.test_master_crash import (
    enable_origin_reflog,
    fast_reconnect,
    gate_state,
    master_reflog,
    master_updates,
)
from tests.support.procs import GitProject, _alive, git, make_deployment, run, simple_pool, wait_for

RUN_TESTS = 'if [ -f slow.txt ]; then sleep "$(cat slow.txt)"; fi\nexec python3 -m unittest -v "$@"\n'
TEST_APP = """\
import unittest


class AppTests(unittest.TestCase):
    def test_always(self):
        self.assertTrue(True)
"""
REJECT_MASTER = """#!/bin/sh
while read old new ref; do
  if [ "$ref" = refs/heads/master ]; then echo "master is frozen by the test" >&2; exit 1; fi
done
exit 0
"""


def _alerts(dep, kind: str) -> list[dict]:
    return [a for a in (gate_state(dep) or {}).get("alerts", []) if a["kind"] == kind]


def _fast_forward_only(origin) -> bool:
    log = master_reflog(origin)
    return all(
        run(["git", "merge-base", "--is-ancestor", a, b], cwd=origin, check=False).returncode == 0
        for a, b in itertools.pairwise(log)
    )


def _push_elsewhere(proj: GitProject, target: str, refspec: str, force: bool = False) -> None:
    git("push", "-q", *(["--force"] if force else []), target, refspec, cwd=proj.work)


def test_git_hazards_alert_never_force_and_recover(tmp_path, reliability):
    t0 = time.monotonic()
    proj = GitProject.create(tmp_path / "repo", {"run-tests.sh": RUN_TESTS, "test_app.py": TEST_APP})
    enable_origin_reflog(proj.origin)
    dep = make_deployment(
        tmp_path / "qa",
        str(proj.origin),
        [simple_pool("pool1", 1)],
        extra={"gate": {"confirm_runs": 1, "culprit_action": "hold"}},
    )
    fast_reconnect(dep)
    m = dep.master
    origin = proj.origin
    outcomes: dict[str, bool] = {}
    dep.start()
    try:
        dep.wait_workers()
        wait_for(
            lambda: (gate_state(dep) or {}).get("master") == proj.head("master"), 30, "the gate to start"
        )
        pid = m.pid()

        # 0: a normal promotion first
        a = proj.commit("a", {"a.txt": "a\n"})
        proj.push_staging()
        wait_for(lambda: proj.head("master") == a, 60, "A promoted")

        # 1: master moved by someone else: a commit pushed straight to origin master
        git("checkout", "-q", "-b", "hotfix", a, cwd=proj.work)
        hot = proj.commit("hotfix straight to master", {"hot.txt": "hot\n"}, author="Rogue <r@example.org>")
        _push_elsewhere(proj, "origin", "HEAD:master")
        wait_for(lambda: _alerts(dep, "master-moved"), 30, "the master-moved alert")
        # the view is saved with the decision; the ALERT line is logged as the action runs
        moved = rf"gate: ALERT master-moved: master moved outside the gate to {hot[:12]}"
        wait_for(lambda: re.search(moved, _log(m)), 10, "the master-moved log line")
        assert proj.head("master") == hot  # never rewritten
        git("checkout", "-q", "staging", cwd=proj.work)
        git("merge", "-q", "--ff-only", "hotfix", cwd=proj.work)
        b = proj.commit("b on top of the hotfix", {"b.txt": "b\n"})
        proj.push_staging()
        wait_for(lambda: proj.head("master") == b, 60, "B promoted on top of the moved master")
        outcomes["master moved"] = _fast_forward_only(origin) and hot in master_reflog(origin)

        # 2: staging force-pushed while the tip is being tested: its commits are dropped
        # slow enough that the gate sees the force-push first even on a loaded machine (the run
        # is cancelled then, so the length costs nothing)
        c1 = proj.commit("c1 (slow)", {"slow.txt": "30\n", "c.txt": "1\n"})
        c2 = proj.commit("c2 (slow)", {"c.txt": "2\n"})
        proj.push_staging()

        def testing_c2():
            v = gate_state(dep) or {}
            return any(p.get("commit") == c2 for p in v.get("pools", {}).values())

        wait_for(testing_c2, 30, "a run of C2 in flight")
        git("reset", "-q", "--hard", b, cwd=proj.work)
        d = proj.commit("d replaces c1, c2", {"d.txt": "d\n"})
        _push_elsewhere(proj, "origin", "HEAD:staging", force=True)
        wait_for(lambda: _alerts(dep, "staging-rewritten"), 30, "the staging-rewritten alert")
        wait_for(lambda: proj.head("master") == d, 60, "D promoted after the force-push")
        log = _log(m)
        assert "gate: CANCEL run" in log and "commit no longer a candidate" in log, m.log_tail(60)
        reflog = master_reflog(origin)
        outcomes["staging force-pushed"] = (
            c1 not in reflog and c2 not in reflog and _fast_forward_only(origin)
        )

        # 3: the origin rejects master updates (pre-receive hook), then accepts them again
        hook = origin / "hooks" / "pre-receive"
        hook.write_text(REJECT_MASTER)
        hook.chmod(0o755)
        e = proj.commit("e", {"e.txt": "e\n"})
        proj.push_staging()
        wait_for(lambda: _alerts(dep, "promotion-rejected"), 60, "the promotion-rejected alert")
        assert re.search(rf"gate: PROMOTE {e} failed: .*master is frozen by the test", _log(m)), m.log_tail(
            40
        )
        assert proj.head("master") == d
        hook.unlink()
        wait_for(lambda: proj.head("master") == e, 60, "E promoted once the hook is gone")
        wait_for(lambda: e in master_updates(origin), 10, "the origin's post-receive record of E")
        outcomes["push rejected"] = _fast_forward_only(origin) and master_updates(origin).count(e) == 1

        # 4: the origin disappears (renamed), a commit lands meanwhile, then it comes back
        away = origin.with_name("origin-away.git")
        origin.rename(away)
        failures = lambda: _log(m).split(f"PROMOTE {e}")[-1].count("gate: cannot read")  # noqa: E731
        wait_for(lambda: failures() >= 1, 30, "a failed fetch logged")
        f = proj.commit("f", {"f.txt": "f\n"})
        _push_elsewhere(proj, str(away), "HEAD:staging")
        wait_for(lambda: failures() >= 3, 30, "the gate to keep retrying the missing origin")
        assert _log(m).count("gate: ALERT origin-unreachable:") == 1, m.log_tail(30)  # once per outage
        assert _alive(pid), "the master died while the origin was unreachable"
        away.rename(origin)
        wait_for(lambda: proj.head("master") == f, 60, "F promoted once the origin is back")
        assert "is reachable again" in _log(m)
        outcomes["origin unreachable"] = _fast_forward_only(origin) and m.pid() == pid

        # overall: one master process throughout, never a force push, no commit pushed twice
        # (git runs post-receive, which records the update, just after it moved the ref)
        wait_for(lambda: master_updates(origin)[-1:] == [f], 10, "the origin's post-receive record of F")
        updates = master_updates(origin)
        assert m.pid() == pid and _alive(pid)
        assert updates == [a, hot, b, d, e, f], updates
        assert master_reflog(origin) == updates
        assert _fast_forward_only(origin)
        # no error from the gate itself (Buildbot's GitPoller logs its own failed polls)
        assert "schedulers/gate.py" not in _log(m) and "schedulers/gitops.py" not in _log(m), m.log_tail(80)
        assert all(outcomes.values()), outcomes
    finally:
        try:
            reliability.record(
                "git hazards: master moved, staging force-pushed, push rejected, origin unreachable",
                area="git",
                injected=4,
                survived=sum(outcomes.values()),
                data_lost=4 - sum(outcomes.values()),
                detail=", ".join(f"{k}: {'recovered' if v else 'FAILED'}" for k, v in outcomes.items())
                + " (origin master reflog fast-forward only, each commit pushed once, one master process)",
                test="test_git_hazards.py::test_git_hazards_alert_never_force_and_recover",
                seconds=time.monotonic() - t0,
            )
        finally:
            dep.stop()


def _log(m) -> str:
    return (m.basedir / "twistd.log").read_text(errors="replace")
