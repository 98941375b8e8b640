"""Pool health: N inconclusive runs -> quarantined, nextWorker skips it, release returns it."""

from __future__ import annotations

from buildbot.process.properties import Properties
from buildbot.process.results import CANCELLED, EXCEPTION, FAILURE
from buildbot.test import fakedb
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.util.scheduler import SchedulerMixin
from buildbot.test.util.state import StateTestMixin
from twisted.internet import defer
from twisted.trial import unittest

from master.settings import Gate
from schedulers import gitops
from schedulers.gate import GateScheduler
from tests.test_gate_scheduler import COMMITS, MASTER, FakeOrigin
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


class GateHealthTests(SchedulerMixin, StateTestMixin, TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        yield self.setUpScheduler()
        self.origin = FakeOrigin(MASTER, COMMITS)
        for name in ("ensure_mirror", "fetch", "candidates_async", "is_ancestor", "push_master"):
            self.patch(gitops, name, getattr(self.origin, name))
        self.addCleanup(pool_health.register, None)
        sched = GateScheduler(
            name="gate",
            builderNames=["gate-bvt"],
            repo_url="/srv/origin.git",
            pools=["pool1", "pool2"],
            gate=Gate(confirm_runs=1),
            quarantine_after=2,
            health_builders=["gate-bvt", "try-bvt"],
        )
        yield self.attachScheduler(sched, 19, 9, overrideBuildsetMethods=True, createBuilderDB=True)
        yield sched.reconfigServiceWithSibling(sched)
        yield sched.activate()
        self.addCleanup(sched.deactivate)
        self.notified = []

        class Notifier:
            async def quarantined(_, pool, reason):
                self.notified.append((pool, reason))

        self.master.namedServices = {"gate-notifier": Notifier()}
        self.sched = sched

    @defer.inlineCallbacks
    def finish(self, buildid: int, results: int, pool: str, infra: str | None = None):
        rows = [
            fakedb.Buildset(id=buildid + 50),
            fakedb.BuildRequest(id=buildid + 100, buildsetid=buildid + 50, builderid=300),
            fakedb.Build(
                id=buildid,
                buildrequestid=buildid + 100,
                builderid=300,
                masterid=fakedb.FakeDBConnector.MASTER_ID,
                results=results,
            ),
            fakedb.BuildProperty(buildid=buildid, name="pool", value=pool),
        ]
        if infra:
            rows.append(fakedb.BuildProperty(buildid=buildid, name="infra_failure", value=infra))
        yield self.master.db.insert_test_data(rows)
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
