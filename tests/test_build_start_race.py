"""A worker lost between the start-up ping and the first step: the build ends as RETRY and
runs again once the worker is back (master/build.py), instead of hanging forever.

Real master, real worker process. The worker's ``buildbot.tac`` is extended so that, once, it
answers the master's ping and then closes its connection at once: the master sees the answer,
then the worker detach while it records the ping -- the window of Buildbot 4.3's
``assert workerforbuilder.worker is not None`` in ``Build.startBuild``.
"""

from __future__ import annotations

from types import SimpleNamespace

from buildbot.process.build import Build
from buildbot.process.results import RETRY, SUCCESS
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from master.build import BvtBuild
from tests.reliability.test_master_crash import fast_reconnect
from tests.support.procs import GitProject, make_deployment, simple_pool, wait_for

SUITE = {"run-tests.sh": "#!/bin/sh\necho 'ran the suite'\nexit 0\n"}
MARK = "drop-after-ping"  # in the worker's basedir: drop the connection after the next ping

DROP_AFTER_PING = f"""

# --- test hook (tests/test_build_start_race.py): answer one ping, then hang up at once
from buildbot_worker.base import BotBase as _BotBase
from twisted.internet import reactor as _reactor

_print = _BotBase.remote_print


def _print_then_hang_up(self, message):
    result = _print(self, message)
    mark = os.path.join(basedir, {MARK!r})
    if message == "ping" and os.path.exists(mark):
        os.unlink(mark)
        _reactor.callLater(0, s.bf._broker.transport.loseConnection)
    return result


_BotBase.remote_print = _print_then_hang_up
"""


def test_worker_lost_between_ping_and_first_step_is_retried_not_hung(tmp_path):
    proj = GitProject.create(tmp_path / "repo", SUITE)
    dep = make_deployment(tmp_path / "qa", str(proj.origin), [simple_pool("pool1", 1)])
    (worker,) = dep.workers
    fast_reconnect(dep)
    tac = worker.basedir / "buildbot.tac"
    tac.write_text(tac.read_text() + DROP_AFTER_PING)
    dep.start()
    try:
        dep.wait_workers()
        m = dep.master
        (worker.basedir / MARK).write_text("")
        m.force("pool1", "start race")

        def passed():
            builds = m.builds()
            return builds if any(b["complete"] and b["results"] == SUCCESS for b in builds) else None

        builds = wait_for(passed, 90, "the retried build to pass")
        assert not (worker.basedir / MARK).exists(), "the worker never hung up after a ping"
        log = (m.basedir / "twistd.log").read_text()
        assert "detached while the build was starting: ending it as RETRY" in log, m.log_tail(60)
        assert "serious error" not in log, m.log_tail(60)
        first, *_, last = sorted(builds, key=lambda b: b["buildid"])
        assert first["results"] == RETRY and "worker lost while starting" in first["state_string"], first
        assert last["results"] == SUCCESS and last["buildrequestid"] == first["buildrequestid"], builds
    finally:
        dep.stop()


class _Updates:
    """The data API updates ``buildPreparationFailure`` calls, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def setStepStateString(self, stepid, state_string):
        self.calls.append(("state", stepid, state_string))
        return defer.succeed(None)

    def finishStep(self, stepid, results, hidden):
        self.calls.append(("finish", stepid, results))
        return defer.succeed(None)


class _Step:
    stepid = 7

    def __init__(self) -> None:
        self.logged: list = []

    def addLogWithFailure(self, why):
        self.logged.append(why)
        return defer.succeed(None)


def _detached_build(cls):
    """A build whose worker detached before Buildbot prepared it: ``workerforbuilder.worker`` is
    None when ``Build.startBuild`` reaches its ``worker_prepare`` check (the window before the
    ping above; a worker SIGKILLed the moment the build is created lands in it)."""
    build = cls.__new__(cls)
    build.stopped = False
    build.workername = "pool1-qavm"
    build.builder, build.number, build.results = SimpleNamespace(name="gate-bvt"), 1, SUCCESS
    build.workerforbuilder = SimpleNamespace(worker=None)
    build._preparation_step = _Step()
    build.master = SimpleNamespace(data=SimpleNamespace(updates=_Updates()))
    return build


def test_stock_buildbot_crashes_when_the_worker_detached_before_the_build_was_prepared():
    """The Buildbot 4.3 bug BvtBuild works around: ``putInQuarantine`` on a None worker."""
    build = _detached_build(Build)
    d = build.buildPreparationFailure(False, "worker_prepare")
    errors = []
    d.addErrback(errors.append)
    assert errors and errors[0].check(AttributeError), errors


def test_a_worker_detached_before_the_build_was_prepared_ends_its_preparation_as_retry():
    build = _detached_build(BvtBuild)
    d = build.buildPreparationFailure(Failure(ConnectionLost("worker gone")), "worker_prepare")
    errors = []
    d.addErrback(errors.append)
    assert errors == []
    assert build.master.data.updates.calls == [
        ("state", 7, "worker lost while worker_prepare"),
        ("finish", 7, RETRY),
    ]
    assert len(build._preparation_step.logged) == 1
