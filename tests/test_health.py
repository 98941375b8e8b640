"""Pool health: N inconclusive runs -> quarantined, nextWorker skips it, release returns it."""

from __future__ import annotations

from buildbot.process.properties import Properties
from buildbot.process.results import CANCELLED, EXCEPTION, FAILURE, RETRY
from buildbot.test import fakedb
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.util.scheduler import SchedulerMixin
from buildbot.test.util.state import StateTestMixin
from twisted.internet import defer
from twisted.trial import unittest

from master.settings import Gate
from schedulers.events import StagingUpdated
from schedulers.gate import GateScheduler
from tests.test_gate_scheduler import fake_origin
from workers import health as pool_health
from workers.health import PoolHealth
from workers.selection import make_next_worker


class _Worker:
    def __init__(self, pool: str) -> None:
        self.properties = Properties(pool=pool)


class _WFB:
    def __init__(self, pool: str) -> None:
        self.worker = _Worker(pool)


class _Request:
    def __init__(self, pool: str | None = None) -> None:
        self.properties = Properties(**({"pool": pool} if pool else {}))


def test_quarantine_after_consecutive_infrastructure_failures():
    h = PoolHealth(3)
    assert not h.record("pool1", True, "BMC 10.0.0.5 did not answer").quarantined
    assert not h.record("pool1", False).quarantined  # a conclusive run resets the count
    assert not h.record("pool1", True, "x").quarantined
    assert not h.record("pool1", True, "x").quarantined
    rec = h.record("pool1", True, "BMC 10.0.0.5 did not answer")
    assert rec.quarantined and rec.failures == 3
    assert "BMC 10.0.0.5" in h.reason("pool1")
    assert h.is_quarantined("pool1") and not h.is_quarantined("pool2")
    assert not h.record("pool1", True, "again").quarantined  # reported once
    # persisted and resumed
    h2 = PoolHealth(3, h.to_state())
    assert h2.is_quarantined("pool1")
    assert h2.release("pool1") and not h2.is_quarantined("pool1")
    assert not h2.release("pool1")


def test_quarantine_after_failing_runs_other_pools_did_not_reproduce():
    """A pool whose failures keep turning out flakes (runs elsewhere pass those tests) is broken
    itself; a pass on it, or a release, starts the count again; each run counts once."""
    h = PoolHealth(3)
    assert not h.record_flake("pool1", ("test_storage",), "r1").quarantined
    assert not h.record_flake("pool1", ("test_storage",), "r2").quarantined
    assert not h.record("pool1", False, passed=True).quarantined  # the pool passed a run: reset
    assert not h.record_flake("pool1", ("test_storage",), "r3").quarantined
    assert not h.record("pool1", False).quarantined  # a (real) failure is no pass: no reset
    assert not h.record_flake("pool1", ("test_storage",), "r4").quarantined
    assert not h.record_flake("pool1", ("test_storage",), "r4").quarantined  # once per run
    assert not h.record_flake("pool2", ("test_storage",), "r5").quarantined  # per pool
    rec = h.record_flake("pool1", ("test_storage", "test_nfs"), "r6")
    assert rec.quarantined and rec.failures == 3
    assert h.reason("pool1") == (
        "3 failing runs in a row that other pools did not reproduce (last: test_storage, test_nfs)"
    )
    h2 = PoolHealth(3, h.to_state())  # persisted and resumed: the run ids too
    assert h2.is_quarantined("pool1")
    assert h2.record_flake("pool2", (), "r5").failures == 1  # r5 was counted before the restart
    assert h2.release("pool1")
    assert not h2.record_flake("pool1", ("test_storage",), "r7").quarantined  # counting again


def test_next_worker_skips_a_quarantined_pool_until_released():
    h = PoolHealth(1)
    pool_health.register(h)
    try:
        pick = make_next_worker(is_quarantined=pool_health.is_quarantined)
        wfbs = [_WFB("pool1"), _WFB("pool2")]
        h.record("pool1", True, "PXE install timed out")
        for _ in range(20):
            assert pick(None, wfbs, _Request()).worker.properties.getProperty("pool") == "pool2"
        assert pick(None, wfbs, _Request("pool1")) is None  # the gate asked for it: wait
        h.release("pool1")
        assert pick(None, wfbs, _Request("pool1")) is wfbs[0]
    finally:
        pool_health.register(None)


def build_rows(
    buildid: int, results: int, pool: str, infra: str | None = None, complete_at: float | None = None
) -> list:
    """DB rows of a finished BVT build of builder 300 (gate-bvt) on ``pool``."""
    rows = [
        fakedb.Buildset(id=buildid + 50),
        fakedb.BuildRequest(id=buildid + 100, buildsetid=buildid + 50, builderid=300),
        fakedb.Build(
            id=buildid,
            number=buildid,
            buildrequestid=buildid + 100,
            builderid=300,
            masterid=fakedb.FakeDBConnector.MASTER_ID,
            results=results,
            complete_at=None if complete_at is None else int(complete_at),
        ),
        fakedb.BuildProperty(buildid=buildid, name="pool", value=pool),
    ]
    if infra:
        rows.append(fakedb.BuildProperty(buildid=buildid, name="infra_failure", value=infra))
    return rows


class GateHealthCase(SchedulerMixin, StateTestMixin, TestReactorMixin, unittest.TestCase):
    """A gate scheduler on a fake master, pools pool1 and pool2, quarantine after 2."""

    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        yield self.setUpScheduler()
        self.origin = fake_origin(self)
        self.addCleanup(pool_health.register, None)
        self.notified: list[tuple[str, str]] = []

    @defer.inlineCallbacks
    def start_gate(self, health_builders=("gate-bvt",), first: bool = True):
        sched = GateScheduler(
            name="gate",
            builderNames=["gate-bvt"],
            repo_url="/srv/origin.git",
            pools=["pool1", "pool2"],
            gate=Gate(confirm_runs=1),
            quarantine_after=2,
            health_builders=list(health_builders),
            pool_workers={"pool1": "pool1-qavm", "pool2": "pool2-qavm"},
            offline_after=600,
        )
        if first:
            yield self.attachScheduler(sched, 19, 9, overrideBuildsetMethods=True, createBuilderDB=True)
        else:
            yield sched.setServiceParent(self.master)
        yield sched.reconfigServiceWithSibling(sched)
        notified = self.notified

        class Notifier:
            async def quarantined(_, pool, reason):
                notified.append((pool, reason))

        self.master.namedServices["gate-notifier"] = Notifier()
        yield sched.activate()
        return sched


class GateHealthTests(GateHealthCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.sched = yield self.start_gate(("gate-bvt", "try-bvt"))
        self.addCleanup(self.sched.deactivate)

    @defer.inlineCallbacks
    def finish(self, buildid: int, results: int, pool: str, infra: str | None = None):
        yield self.master.db.insert_test_data(build_rows(buildid, results, pool, infra))
        yield self.sched._build_finished(
            ("builds", str(buildid), "finished"), {"buildid": buildid, "builderid": 300, "results": results}
        )

    @defer.inlineCallbacks
    def test_infrastructure_failures_quarantine_the_pool_and_release_returns_it(self):
        yield self.finish(1, FAILURE, "pool2", infra="BMC 127.0.0.1:16021 did not answer")
        yield self.finish(2, CANCELLED, "pool2")  # a cancellation says nothing about the pool
        self.assertFalse(pool_health.is_quarantined("pool2"))
        yield self.finish(3, EXCEPTION, "pool2")
        self.assertTrue(pool_health.is_quarantined("pool2"))
        self.assertEqual(len(self.notified), 1)
        self.assertEqual(self.notified[0][0], "pool2")
        view = yield self.sched.getState("view")
        self.assertEqual(view["pools"]["pool2"]["state"], "unavailable")
        self.assertIn("quarantined", view["pools"]["pool2"]["reason"])
        self.assertEqual(view["pools"]["pool2"]["cause"], "quarantined")
        health = yield self.sched.getState("health")
        self.assertIn("pool2", health["quarantined"])
        # back to service
        was = yield self.sched.release_pool("pool2")
        self.assertTrue(was)
        self.assertFalse(pool_health.is_quarantined("pool2"))
        view = yield self.sched.getState("view")
        self.assertNotEqual(view["pools"]["pool2"]["state"], "unavailable")
        with self.assertRaisesRegex(ValueError, "unknown pool 'nope'"):
            yield self.sched.release_pool("nope")

    @defer.inlineCallbacks
    def test_builds_the_masters_own_shutdown_stopped_count_against_no_pool(self):
        """``buildbot stop``/``restart`` ends running builds as RETRY (Buildbot runs them again
        after the start): the master's doing, not the pool's. A RETRY while the master runs (a
        lost worker) is the pool's."""
        self.master.botmaster.shuttingDown = True
        yield self.finish(1, RETRY, "pool2")
        yield self.finish(2, RETRY, "pool2")
        health = yield self.sched.getState("health")
        self.assertEqual(health["failures"].get("pool2", 0), 0)
        self.assertFalse(pool_health.is_quarantined("pool2"))
        self.master.botmaster.shuttingDown = False
        yield self.finish(3, RETRY, "pool2")
        health = yield self.sched.getState("health")
        self.assertEqual(health["failures"]["pool2"], 1)

    @defer.inlineCallbacks
    def pool_state(self, pool: str):
        view = yield self.sched.getState("view")
        return view["pools"][pool]["state"], view["pools"][pool]["reason"]

    @defer.inlineCallbacks
    def pool_cause(self, pool: str):
        view = yield self.sched.getState("view")
        return view["pools"][pool]["cause"]

    @defer.inlineCallbacks
    def test_a_pool_whose_worker_stays_disconnected_is_offline_until_it_connects(self):
        for pool in ("pool1", "pool2"):
            yield self.sched._on_worker_changed(pool, True)
        yield self.sched._on_worker_changed("pool2", False)
        self.reactor.advance(599)
        yield self.sched._check_offline()
        self.assertNotEqual((yield self.pool_state("pool2"))[0], "unavailable")  # a reboot: in use
        self.reactor.advance(1)
        yield self.sched._check_offline()
        state, reason = yield self.pool_state("pool2")
        self.assertEqual(state, "unavailable")
        self.assertRegex(reason, r"^worker pool2-qavm not connected since \d{4}-\d\d-\d\d \d\d:\d\d UTC$")
        self.assertEqual((yield self.pool_cause("pool2")), "offline")
        self.assertNotEqual((yield self.pool_state("pool1"))[0], "unavailable")
        yield self.sched._on_worker_changed("pool2", True)
        state, reason = yield self.pool_state("pool2")
        self.assertNotEqual(state, "unavailable")
        self.assertEqual(reason, "")

    @defer.inlineCallbacks
    def test_an_offline_pool_keeps_its_quarantine_reason_and_a_release_does_not_make_it_usable(self):
        for pool in ("pool1", "pool2"):
            yield self.sched._on_worker_changed(pool, True)
        yield self.finish(1, EXCEPTION, "pool2")
        yield self.finish(2, EXCEPTION, "pool2")  # quarantined
        yield self.sched._on_worker_changed("pool2", False)
        self.reactor.advance(600)
        yield self.sched._check_offline()
        state, reason = yield self.pool_state("pool2")
        self.assertEqual(state, "unavailable")
        self.assertTrue(reason.startswith("quarantined: 2 consecutive"), reason)
        yield self.sched.release_pool("pool2")  # released while its QA VM is down
        state, reason = yield self.pool_state("pool2")
        self.assertEqual(state, "unavailable")
        self.assertTrue(reason.startswith("worker pool2-qavm not connected since"), reason)
        self.assertEqual((yield self.pool_cause("pool2")), "offline")  # no longer quarantined
        yield self.sched._on_worker_changed("pool2", True)
        state, reason = yield self.pool_state("pool2")
        self.assertNotEqual(state, "unavailable")
        self.assertEqual(reason, "")

    @defer.inlineCallbacks
    def test_a_pool_added_by_a_reconfig_whose_worker_never_connects_goes_offline(self):
        yield self.master.db.insert_test_data(
            [
                *[fakedb.Worker(id=i, name=f"pool{i}-qavm") for i in (1, 2)],
                *[
                    fakedb.ConnectedWorker(id=i, workerid=i, masterid=fakedb.FakeDBConnector.MASTER_ID)
                    for i in (1, 2)
                ],
            ]
        )
        for pool in ("pool1", "pool2"):
            yield self.sched._on_worker_changed(pool, True)
        self.sched.active = True  # (a real master's ClusteredService sets it when it activates)
        yield self.sched.reconfigService(
            builderNames=["gate-bvt"],
            repo_url="/srv/origin.git",
            pools=["pool1", "pool2", "pool3"],
            gate=Gate(confirm_runs=1),
            quarantine_after=2,
            health_builders=["gate-bvt", "try-bvt"],
            pool_workers={"pool1": "pool1-qavm", "pool2": "pool2-qavm", "pool3": "pool3-qavm"},
            offline_after=600,
        )
        self.assertNotEqual((yield self.pool_state("pool3"))[0], "unavailable")
        self.reactor.advance(600)
        yield self.sched._check_offline()
        state, reason = yield self.pool_state("pool3")
        self.assertEqual(state, "unavailable")
        self.assertTrue(reason.startswith("worker pool3-qavm not connected since"), reason)
        self.assertNotEqual((yield self.pool_state("pool1"))[0], "unavailable")

    @defer.inlineCallbacks
    def test_a_pool_lent_to_a_try_build_is_the_gates_again_when_it_ends_however_quickly(self):
        """A try build cancelled (or failed) right after it started: its "finished" message may
        arrive before the gate handled its "new" one; the pool must not stay lent for good."""
        yield self.master.db.insert_test_data(
            [
                fakedb.Builder(id=400, name="try-bvt"),
                fakedb.Worker(id=1, name="pool1-qavm"),
                fakedb.Buildset(id=90),
                fakedb.BuildRequest(id=91, buildsetid=90, builderid=400),
                fakedb.Build(
                    id=92,
                    number=1,
                    buildrequestid=91,
                    builderid=400,
                    workerid=1,
                    masterid=fakedb.FakeDBConnector.MASTER_ID,
                ),
            ]
        )
        msg = {"buildid": 92, "builderid": 400, "workerid": 1, "number": 1}
        yield self.sched._lock.acquire()  # the gate is busy deciding: both messages wait
        started = self.sched._build_started(("builds", "92", "new"), msg)
        finished = self.sched._build_finished(("builds", "92", "finished"), {**msg, "results": CANCELLED})
        self.sched._lock.release()
        yield started
        yield finished
        state, reason = yield self.pool_state("pool1")
        self.assertNotEqual(state, "unavailable", reason)
        self.assertEqual(self.sched._lent, {})
        # a lent pool, as the gate sees it while the try build runs
        yield self.sched._build_started(("builds", "92", "new"), msg)
        self.assertEqual((yield self.pool_state("pool1")), ("unavailable", "running try-bvt build #1"))
        self.assertEqual((yield self.pool_cause("pool1")), "lent")
        self.assertFalse(pool_health.may_lend("pool1"))
        yield self.sched._check_lent()  # still running: stays lent
        self.assertIn("pool1", self.sched._lent)
        yield self.master.db.builds.finishBuild(buildid=92, results=CANCELLED)
        yield self.sched._check_lent()  # ended, and its message was missed: the periodic check
        self.assertEqual(self.sched._lent, {})
        self.assertNotEqual((yield self.pool_state("pool1"))[0], "unavailable")

    @defer.inlineCallbacks
    def lend_both_pools(self, extra_rows=()):
        """Try builds 71 (on pool1) and 72 (pool2, started last) run: both pools are lent."""
        rows = [fakedb.Builder(id=400, name="try-bvt"), *extra_rows]
        for n, pool in ((1, "pool1"), (2, "pool2")):
            rows += [
                fakedb.Worker(id=n, name=f"{pool}-qavm"),
                fakedb.Buildset(id=90 + n),
                fakedb.BuildRequest(id=80 + n, buildsetid=90 + n, builderid=400),
                fakedb.Build(
                    id=70 + n,
                    number=n,
                    buildrequestid=80 + n,
                    builderid=400,
                    workerid=n,
                    masterid=fakedb.FakeDBConnector.MASTER_ID,
                ),
                fakedb.BuildProperty(buildid=70 + n, name="pool", value=pool),
            ]
        yield self.master.db.insert_test_data(rows)
        for n in (1, 2):
            msg = {"buildid": 70 + n, "builderid": 400, "workerid": n, "number": n}
            yield self.sched._build_started(("builds", str(70 + n), "new"), msg)
        self.assertEqual(sorted(self.sched._lent), ["pool1", "pool2"])

    def stops(self) -> list:
        return [(k, v) for k, v in self.master.mq.productions if k[0] == "control" and k[-1] == "stop"]

    def decide(self, sha: str):
        """A commit reaches staging: the gate wants a pool for its tip run."""
        event = StagingUpdated("m0", (sha,), now=1.0)
        return self.sched._lock.run(lambda: defer.ensureDeferred(self.sched._process([event])))

    @defer.inlineCallbacks
    def test_a_try_build_on_a_pool_the_gate_needs_is_stopped_as_retry_and_not_counted(self):
        """try.preempt: both pools run try builds when a commit reaches staging. Off: nothing
        is stopped. On: the try build that started last is stopped as RETRY (queued again),
        once, and its end is not counted against its pool."""
        yield self.lend_both_pools()
        self.sched.preempt_try = False
        yield self.decide("c1")
        self.assertEqual(self.stops(), [])
        self.sched.preempt_try = True
        yield self.decide("c2")
        ((key, params),) = self.stops()
        self.assertEqual(key, ("control", "builds", "72", "stop"))  # the newer try build
        self.assertEqual(params["results"], RETRY)
        self.assertIn("it needs pool pool2 for a gate run", params["reason"])
        view = self.sched.policy.view()["pools"]["pool2"]  # what the dashboard shows
        self.assertEqual(view["reason"], "running try-bvt build #2, being stopped: the gate needs the pool")
        yield self.decide("c3")  # asked again before it ended: not stopped twice, nor another
        self.assertEqual(len(self.stops()), 1)
        yield self.master.db.builds.finishBuild(buildid=72, results=RETRY)
        yield self.sched._build_finished(
            ("builds", "72", "finished"), {"buildid": 72, "builderid": 400, "results": RETRY}
        )
        self.assertFalse(self.sched.health.counted(72))
        self.assertNotIn("pool2", self.sched._lent)
        # a RETRY of a try build the gate did not stop does count (a lost worker, say)
        yield self.master.db.builds.finishBuild(buildid=71, results=RETRY)
        yield self.sched._build_finished(
            ("builds", "71", "finished"), {"buildid": 71, "builderid": 400, "results": RETRY}
        )
        self.assertTrue(self.sched.health.counted(71))

    @defer.inlineCallbacks
    def test_a_try_build_past_its_tests_is_left_to_finish(self):
        """The newer try build finished its BVT step (only teardown left): stopping it would
        throw its results away, and its pool takes the gate's run in moments; the other try
        build is not stopped in its place either."""
        done = fakedb.Step(id=60, buildid=72, number=3, name="bvt", results=0, started_at=2, complete_at=5)
        yield self.lend_both_pools([done])
        self.sched.preempt_try = True
        yield self.decide("c1")
        self.assertEqual(self.stops(), [])


class HealthCatchUpAfterRestart(GateHealthCase):
    """A master killed between a build's end and its health record: the restarted gate counts
    that build once; builds Buildbot's start-up housekeeping finished (RETRY) are not the pool's
    fault and are not counted."""

    @defer.inlineCallbacks
    def test_builds_that_ended_unrecorded_count_once_and_housekeeping_retries_not_at_all(self):
        from schedulers import gate as gate_module

        since = 1_700_000_000.0  # the previous master's last health count
        old = GateScheduler(name="gate", builderNames=["gate-bvt"], repo_url="/x", gate=Gate())
        yield self.set_fake_state(
            old,
            "health",
            {"version": 1, "failures": {"pool2": 1}, "quarantined": {}, "counted": [1], "since": since},
        )
        rows = [
            *build_rows(
                1, FAILURE, "pool2", complete_at=since, infra="BMC 127.0.0.1:16021 did not answer"
            ),  # counted
            *build_rows(2, EXCEPTION, "pool2", complete_at=since + 60),  # ended, then the master was killed
            *build_rows(
                3, RETRY, "pool1", complete_at=gate_module._LOADED_AT + 1
            ),  # this start's housekeeping
            *build_rows(6, RETRY, "pool1", complete_at=since + 80),  # an earlier restart's housekeeping
            *build_rows(
                7, EXCEPTION, "pool1", complete_at=gate_module._LOADED_AT + 2
            ),  # ended live: not caught up
            *build_rows(4, CANCELLED, "pool1", complete_at=since + 70),  # cancellations say nothing
            *build_rows(
                5, EXCEPTION, "pool1", complete_at=since - 2 * gate_module.HEALTH_CATCH_UP_SLACK
            ),  # long ago
        ]
        yield self.master.db.insert_test_data(rows)
        read: list[int] = []
        get_builds = self.master.db.builds.getBuilds

        @defer.inlineCallbacks
        def recording(*args, **kwargs):
            builds = yield get_builds(*args, **kwargs)
            read.extend(b.id for b in builds)
            return builds

        self.patch(self.master.db.builds, "getBuilds", recording)
        sched = yield self.start_gate()
        self.assertNotIn(5, read)  # the DB filters: old history is not read at start-up
        self.assertIn(2, read)
        health = yield sched.getState("health")
        self.assertEqual(health["failures"], {"pool2": 2})  # 1 before + build 2
        self.assertIn("pool2", health["quarantined"])
        self.assertEqual(sorted(health["counted"]), [1, 2])
        self.assertTrue(pool_health.is_quarantined("pool2"))
        self.assertFalse(pool_health.is_quarantined("pool1"))
        self.assertEqual([p for p, _ in self.notified], ["pool2"])
        view = yield sched.getState("view")
        self.assertEqual(view["pools"]["pool2"]["state"], "unavailable")
        # released, then restarted: nothing is counted twice
        yield sched.release_pool("pool2")
        yield sched.deactivate()
        yield sched.disownServiceParent()
        sched = yield self.start_gate(first=False)
        health = yield sched.getState("health")
        self.assertEqual(health["failures"], {"pool2": 0})
        self.assertEqual(health["quarantined"], {})
        self.assertEqual([p for p, _ in self.notified], ["pool2"])
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_health_saved_before_builds_were_remembered_starts_counting_from_now(self):
        old = GateScheduler(name="gate", builderNames=["gate-bvt"], repo_url="/x", gate=Gate())
        yield self.set_fake_state(old, "health", {"version": 1, "failures": {"pool2": 1}, "quarantined": {}})
        yield self.master.db.insert_test_data(build_rows(2, EXCEPTION, "pool2", complete_at=1_700_000_060))
        sched = yield self.start_gate()
        health = yield sched.getState("health")
        self.assertEqual(health["failures"], {"pool2": 1})  # no history to tell what was counted
        self.assertIsNotNone(health["since"])
        yield sched.deactivate()
