"""GateScheduler with Buildbot's scheduler harness (fake master and DB, fake clock).

git is replaced at the gitops boundary by an in-memory repository; the DB, state and
buildset calls are Buildbot's own test doubles.
"""

from __future__ import annotations

from buildbot.process.results import CANCELLED, FAILURE, SUCCESS
from buildbot.test import fakedb
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.util.scheduler import SchedulerMixin
from buildbot.test.util.state import StateTestMixin
from twisted.internet import defer
from twisted.trial import unittest

from master.settings import Gate
from schedulers import gitops
from schedulers.events import (
    Alert,
    Blame,
    CancelRun,
    PoolAvailable,
    Promote,
    RecordFlake,
    Revert,
    RunFinished,
    StagingUpdated,
    StartRun,
    Tick,
)
from schedulers.gate import DURABLE, NOTIFIER, OUTBOX_KEY, GateScheduler, _action, _mail_id, _record
from schedulers.policy import GatePolicy, config_from_settings
from workers import health as pool_health

OBJECTID, SCHEDULERID = 19, 9
COMMITS = [f"{i:040x}" for i in range(1, 9)]  # c1..c8, oldest first
MASTER = "f" * 40


class FakeOrigin:
    """The repository the gate fetches and pushes, in memory."""

    def __init__(self, master: str, commits: list[str]) -> None:
        self.master, self.commits, self.pushed = master, list(commits), []

    async def ensure_mirror(self, reactor, git_dir, url):
        return None

    async def fetch(self, reactor, git_dir, master, staging):
        return self.master, (self.commits[-1] if self.commits else self.master)

    async def candidates_async(self, reactor, git_dir, m, s):
        return [(c, f"Dev <{c[-2:]}@example.org>") for c in self.commits]

    async def is_ancestor(self, reactor, git_dir, older, newer):
        return older == newer

    async def push_master(self, reactor, git_dir, sha, master):
        self.pushed.append(sha)
        self.commits = self.commits[self.commits.index(sha) + 1 :]
        self.master = sha
        return gitops.PushResult(True)


def fake_origin(case) -> FakeOrigin:
    """Point the gate's git operations of ``case`` (a trial TestCase) at a FakeOrigin holding
    MASTER and COMMITS; returns it."""
    origin = FakeOrigin(MASTER, COMMITS)
    for name in ("ensure_mirror", "fetch", "candidates_async", "is_ancestor", "push_master"):
        case.patch(gitops, name, getattr(origin, name))
    return origin


class GateSchedulerTests(SchedulerMixin, StateTestMixin, TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        yield self.setUpScheduler()
        self.origin = fake_origin(self)
        self.gate = Gate(confirm_runs=1)
        self.addCleanup(pool_health.register, None)

    @defer.inlineCallbacks
    def make(self):
        sched = GateScheduler(
            name="gate",
            builderNames=["gate-bvt"],
            repo_url="/srv/origin.git",
            pools=["pool1", "pool2"],
            gate=self.gate,
            fetch_interval=60,
            quarantine_after=2,
        )
        yield self.attachScheduler(
            sched, OBJECTID, SCHEDULERID, overrideBuildsetMethods=True, createBuilderDB=True
        )
        self.master.config.buildbotURL = "http://qa/"
        yield sched.reconfigServiceWithSibling(sched)  # what a real master's start-up does
        return sched

    def started(self) -> list[dict]:
        return [kw for name, kw in self.addBuildsetCalls if name == "addBuildsetForSourceStampsWithDefaults"]

    @defer.inlineCallbacks
    def finish_buildset(
        self, bsid: int, results: int, failed: list[str] | None = None, number: int = 1, revision: str = ""
    ):
        """DB rows of a completed buildset with one build (what Buildbot writes)."""
        brid, buildid = bsid + 1000, bsid + 2000
        if (yield self.master.db.buildsets.getBuildset(bsid)) is None:
            yield self.master.db.insert_test_data([fakedb.Buildset(id=bsid)])
        yield self.master.db.buildsets.completeBuildset(bsid, results)
        rows = [
            fakedb.SourceStamp(id=bsid, revision=revision or COMMITS[-1]),
            fakedb.BuildsetSourceStamp(buildsetid=bsid, sourcestampid=bsid),
            fakedb.BuildRequest(id=brid, buildsetid=bsid, builderid=300, complete=1, results=results),
            fakedb.Build(
                id=buildid,
                number=number,
                buildrequestid=brid,
                builderid=300,
                masterid=fakedb.FakeDBConnector.MASTER_ID,
                results=results,
            ),
        ]
        if failed is not None:
            rows.append(fakedb.BuildProperty(buildid=buildid, name="failed_tests", value=failed))
        yield self.master.db.insert_test_data(rows)

    @defer.inlineCallbacks
    def test_start_run_becomes_one_buildset_per_revision(self):
        sched = yield self.make()
        yield sched.activate()
        calls = self.started()
        tip = calls[0]  # the tip first; idle pools may pre-test prefix points (speculation)
        self.assertEqual(
            tip["sourcestamps"],
            [
                {
                    "codebase": "",
                    "repository": "/srv/origin.git",
                    "branch": "staging",
                    "revision": COMMITS[-1],
                    "project": "",
                }
            ],
        )
        self.assertEqual(tip["builderNames"], ["gate-bvt"])
        self.assertEqual(tip["properties"]["gate_run_id"], ("r1", "Gate"))
        self.assertEqual(tip["properties"]["gate_kind"], ("tip", "Gate"))
        self.assertIn(tip["properties"]["pool"][0], ("pool1", "pool2"))
        self.assertNotIn("bvt_tests", tip["properties"])  # whole suite
        self.assertIn("tip", tip["reason"])
        self.assertIn(COMMITS[-1][:12], tip["reason"])
        # the run -> buildset map, the policy state and the view are persisted
        runs = yield sched.getState("runs")
        self.assertEqual(runs["r1"], {"bsid": 500, "brid": 100})
        view = yield sched.getState("view")
        self.assertEqual(view["master"], MASTER)
        self.assertEqual(len(view["runs"]), len(calls))
        policy = yield sched.getState("policy")
        self.assertEqual(len(policy["runs"]), len(calls))
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_failed_tip_is_bisected_on_its_failing_tests(self):
        sched = yield self.make()
        yield sched.activate()
        n = len(self.started())
        yield self.finish_buildset(500, FAILURE, ["test_app.T.test_value"])
        yield sched._buildset_complete(("buildsets", "500", "complete"), {"bsid": 500})
        new = self.started()[n:]
        self.assertTrue(new, "a failed tip starts bisection runs")
        for c in new:
            self.assertEqual(c["properties"]["bvt_tests"][0], ["test_app.T.test_value"])
            self.assertIn(c["properties"]["gate_kind"][0], ("bisect", "confirm", "parent"))
            self.assertNotEqual(c["sourcestamps"][0]["revision"], COMMITS[-1])
        view = yield sched.getState("view")
        self.assertEqual(view["results"][COMMITS[-1]][0]["outcome"], "fail")
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_pass_is_promoted_with_a_plain_push(self):
        sched = yield self.make()
        yield sched.activate()
        yield self.finish_buildset(500, SUCCESS)  # r1 = the tip
        yield sched._buildset_complete(("buildsets", "500", "complete"), {"bsid": 500})
        self.assertEqual(self.origin.pushed, [COMMITS[-1]])
        view = yield sched.getState("view")
        self.assertEqual(view["master"], COMMITS[-1])
        self.assertEqual(view["promotions"][-1], {"commit": COMMITS[-1], "ok": True, "reason": ""})
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_promotion_is_skipped_when_master_already_has_the_commit(self):
        sched = yield self.make()
        yield sched.activate()
        self.origin.master = COMMITS[-1]  # e.g. pushed before a crash, Promoted never recorded
        yield self.finish_buildset(500, SUCCESS)
        yield sched._buildset_complete(("buildsets", "500", "complete"), {"bsid": 500})
        self.assertEqual(self.origin.pushed, [])
        view = yield sched.getState("view")
        self.assertEqual(view["master"], COMMITS[-1])
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_the_periodic_fetch_ticks_the_policy_once_its_wake_up_time_came(self):
        """The policy's timer (``GatePolicy.wake_at``: a re-alert that falls due on time alone)
        rides on the periodic fetch: no Tick before the time, one at the first fetch after it,
        in the reactor's clock, and the state is saved after it like after any event."""
        sched = yield self.make()
        yield sched.activate()
        due = self.reactor.seconds() + 150
        ticks: list[Tick] = []
        handle_all = sched.policy.handle_all

        def recording(events):
            events = list(events)
            ticks.extend(e for e in events if isinstance(e, Tick))
            return handle_all(events)

        self.patch(sched.policy, "handle_all", recording)
        self.patch(sched.policy, "wake_at", lambda: due)
        saves = []
        save = sched._save
        self.patch(sched, "_save", lambda: saves.append(1) or save())
        self.reactor.advance(60)
        self.reactor.advance(60)  # two fetches before the time: nothing moved, nothing fed
        self.assertEqual((ticks, saves), ([], []))
        self.reactor.advance(60)
        self.assertEqual([t.now for t in ticks], [due + 30])
        self.assertTrue(saves)
        self.patch(sched.policy, "wake_at", lambda: None)  # no timer asked for: no tick
        self.reactor.advance(60)
        self.assertEqual(len(ticks), 1)
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_a_restarted_gate_re_alerts_an_unrepaired_block_on_its_timer(self):
        """The policy a previous master saved: A blamed (hold), its revert still failed the
        test (B, in A's span, breaks it too), the gate alerted; the developers' next push
        failed as well and nothing came after. After a restart the periodic fetch ticks the
        real policy once ``REALERT_WAIT_RUNS`` mean run times passed since the alert: one
        still-failing mail naming that push; nothing is started (every commit is known)."""
        from tests.test_policy import _play

        staging, breaks, fixes, clock = ["a0", "A", "B", "a3"], {"A": "t", "B": "t"}, {}, [0.0]
        p = GatePolicy(config_from_settings(self.gate))
        acts = p.handle(StagingUpdated(MASTER, tuple(staging), now=0.0))
        acts += p.handle_all([PoolAvailable("pool1", now=0.0), PoolAvailable("pool2", now=0.0)])
        _play(p, MASTER, staging, breaks, fixes, acts, clock=clock)
        for push, fixed in (("revert-A", "A"), ("fixA2", None)):
            staging.append(push)
            if fixed:
                fixes[push] = fixed
            acts = p.handle(StagingUpdated("a0", tuple(staging[1:]), now=clock[0]))
            _play(p, "a0", staging, breaks, fixes, acts, clock=clock)
        assert [a["kind"] for a in p.view()["alerts"]] == ["still-failing"] and not p.in_flight()
        due = p.wake_at()
        assert due is not None and due > clock[0]
        self.origin.master, self.origin.commits = "a0", staging[1:]
        yield self.saved_by_previous_master(p.to_state(), {})
        mails: list[tuple[str, str]] = []

        class Notifier:
            async def alert(self, kind, message, message_id=None):
                mails.append((kind, message))
                return True

        sched = yield self.make()
        self.master.namedServices[NOTIFIER] = Notifier()
        self.addCleanup(self.master.namedServices.pop, NOTIFIER, None)
        self.reactor.advance(due - 1)  # (the fake reactor's clock is the policy's: both seconds)
        yield sched.activate()
        self.assertEqual((mails, self.started()), ([], []))
        self.reactor.advance(60)  # the first periodic fetch after the due time
        self.assertEqual([k for k, _ in mails], ["still-failing"])
        self.assertIn("up to fixA2 (again", mails[0][1])
        self.assertEqual(self.started(), [])
        self.reactor.advance(120)  # nothing pushed since: no second mail
        self.assertEqual(len(mails), 1)
        yield sched.deactivate()

    def tip_started(self) -> tuple[GatePolicy, list]:
        """A policy that saw both pools and staging: the tip run r1 started (and its actions)."""
        p = GatePolicy(config_from_settings(self.gate))
        p.handle_all([PoolAvailable("pool1"), PoolAvailable("pool2")])
        acts = p.handle_all([StagingUpdated(MASTER, tuple(COMMITS))])
        self.assertEqual([(a.run_id, a.kind) for a in acts if isinstance(a, StartRun)][:1], [("r1", "tip")])
        return p, acts

    @defer.inlineCallbacks
    def saved_by_previous_master(self, policy: dict, runs: dict | None = None, rows: list = ()):
        """The state a previous master left (policy state incl. its outbox, run map, DB rows)."""
        old = GateScheduler(name="gate", builderNames=["gate-bvt"], repo_url="/x", gate=self.gate)
        yield self.set_fake_state(old, "policy", policy)
        if runs is not None:
            yield self.set_fake_state(old, "runs", runs)
        if rows:
            yield self.master.db.insert_test_data(list(rows))

    @defer.inlineCallbacks
    def restart_with(self, runs: dict, rows: list) -> GateScheduler:
        """A new scheduler on state left by a previous master (tip run r1 in flight)."""
        p, acts = self.tip_started()
        for extra in [a.run_id for a in acts if isinstance(a, StartRun)][1:]:
            runs.setdefault(extra, {"bsid": 90, "brid": 1090})  # speculation, if any: still running
        yield self.saved_by_previous_master(p.to_state(), runs, [*rows, fakedb.Buildset(id=90, complete=0)])
        sched = yield self.make()
        return sched

    @defer.inlineCallbacks
    def test_restart_keeps_waiting_for_a_running_run(self):
        sched = yield self.restart_with({"r1": {"bsid": 70, "brid": 1070}}, [fakedb.Buildset(id=70)])
        yield sched.activate()
        self.assertEqual(self.started(), [], "a pending run is never resubmitted")
        policy = yield sched.getState("policy")
        self.assertIn("r1", policy["runs"])
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_restart_feeds_a_run_that_finished_while_the_master_was_down(self):
        sched = yield self.restart_with({"r1": {"bsid": 71, "brid": 1071}}, [])
        yield self.finish_buildset(71, SUCCESS)
        yield sched.activate()
        self.assertEqual(self.origin.pushed, [COMMITS[-1]])
        self.assertNotIn(COMMITS[-1], [c["sourcestamps"][0]["revision"] for c in self.started()])
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_a_run_the_masters_shutdown_cancelled_runs_again_after_the_start(self):
        """Buildbot stops running builds as RETRY on a master shutdown and re-queues them, but a
        step interrupted before its command started ends CANCELLED and the request is done
        (tests/reliability/test_restart_and_quarantine.py met it). That is no result: the gate
        neither retries it elsewhere nor counts it; after the start it runs the same run again.
        Without a shutdown a cancelled build is an inconclusive run, retried."""
        sched = yield self.make()
        yield sched.activate()
        n = len(self.started())
        yield self.finish_buildset(500, CANCELLED)
        self.master.botmaster.shuttingDown = True
        yield sched._buildset_complete(("buildsets", "500", "complete"), {"bsid": 500})
        self.assertEqual(len(self.started()), n, "nothing started while the master stops")
        policy = yield sched.getState("policy")
        self.assertIn("r1", policy["runs"])
        self.assertEqual(policy["inconclusive"], {})
        runs = yield sched.getState("runs")
        self.assertEqual(runs["r1"], {"bsid": 500, "brid": 100, "again": True})
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_the_next_master_runs_a_run_its_predecessors_shutdown_cancelled_again(self):
        """... the next master: r1 again, the same commit, kind and pool, no inconclusive count."""
        sched = yield self.restart_with({"r1": {"bsid": 73, "brid": 1073, "again": True}}, [])
        yield self.finish_buildset(73, CANCELLED)
        run = (yield sched.getState("policy"))["runs"]["r1"]
        yield sched.activate()
        (rerun,) = [c for c in self.started() if c["properties"]["gate_run_id"][0] == "r1"]
        self.assertEqual(rerun["sourcestamps"][0]["revision"], run["commit"])
        self.assertEqual(
            (rerun["properties"]["gate_kind"][0], rerun["properties"]["pool"][0]), (run["kind"], run["pool"])
        )
        runs = yield sched.getState("runs")
        self.assertNotIn("again", runs["r1"])
        self.assertNotEqual(runs["r1"]["bsid"], 73)
        policy = yield sched.getState("policy")
        self.assertEqual(policy["runs"]["r1"], run)
        self.assertEqual(policy["inconclusive"], {})
        self.assertNotIn("retry", [c["properties"]["gate_kind"][0] for c in self.started()])
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_a_cancelled_build_without_a_shutdown_is_an_inconclusive_run(self):
        sched = yield self.make()
        yield sched.activate()
        n = len(self.started())
        yield self.finish_buildset(500, CANCELLED)
        yield sched._buildset_complete(("buildsets", "500", "complete"), {"bsid": 500})
        retry = [c for c in self.started()[n:] if c["properties"]["gate_kind"][0] == "retry"]
        self.assertEqual([c["sourcestamps"][0]["revision"] for c in retry], [COMMITS[-1]])
        policy = yield sched.getState("policy")
        self.assertNotIn("r1", policy["runs"])
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_restart_treats_a_missing_buildset_as_inconclusive(self):
        sched = yield self.restart_with({}, [])
        yield sched.activate()
        retry = self.started()[0]
        self.assertEqual(retry["properties"]["gate_kind"][0], "retry")
        self.assertEqual(retry["sourcestamps"][0]["revision"], COMMITS[-1])
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_restart_completes_an_interrupted_promotion(self):
        p, _ = self.tip_started()
        acts = p.handle(RunFinished("r1", "pass"))
        self.assertIn(Promote(COMMITS[-1]), acts)  # decided, persisted, then the master died
        yield self.saved_by_previous_master(p.to_state())
        sched = yield self.make()
        yield sched.activate()
        self.assertEqual(self.origin.pushed, [COMMITS[-1]])
        view = yield sched.getState("view")
        self.assertEqual(view["master"], COMMITS[-1])
        yield sched.deactivate()

    def record_cancels(self, sched) -> list:
        calls: list = []

        async def control(action, args, path):
            calls.append((action, path))

        self.patch(sched.master.data, "control", control)
        return calls

    @defer.inlineCallbacks
    def test_a_decided_cancel_is_done_and_leaves_the_outbox(self):
        sched = yield self.make()
        cancels = self.record_cancels(sched)
        yield sched.activate()
        yield self.finish_buildset(500, FAILURE, ["test_app.T.test_value"])  # r1, the tip
        yield sched._buildset_complete(("buildsets", "500", "complete"), {"bsid": 500})
        runs = yield sched.getState("runs")
        self.assertLessEqual({"r2", "r3"}, set(runs))  # bisection: c3 and c6
        yield self.finish_buildset(
            runs["r3"]["bsid"], SUCCESS, number=2, revision=COMMITS[5]
        )  # c6 passes: c3's run is useless
        yield sched._buildset_complete(("buildsets", "x", "complete"), {"bsid": runs["r3"]["bsid"]})
        self.assertEqual(cancels, [("cancel", ("buildrequests", runs["r2"]["brid"]))])
        policy = yield sched.getState("policy")
        self.assertEqual(policy[OUTBOX_KEY], [])
        self.assertNotIn("r2", policy["runs"])
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_each_decided_action_is_saved_with_its_own_key_before_it_is_done(self):
        """The outbox record of a live decision carries a fresh key (a blame's or alert's mail
        keeps it as its Message-ID when a restarted master sends it again)."""
        sched = yield self.make()
        saved_at_cancel: list[list] = []

        async def control(action, args, path):
            saved_at_cancel.append((await sched.getState("policy"))[OUTBOX_KEY])

        self.patch(sched.master.data, "control", control)
        yield sched.activate()
        yield self.finish_buildset(500, FAILURE, ["test_app.T.test_value"])
        yield sched._buildset_complete(("buildsets", "500", "complete"), {"bsid": 500})
        runs = yield sched.getState("runs")
        yield self.finish_buildset(runs["r3"]["bsid"], SUCCESS, number=2, revision=COMMITS[5])
        yield sched._buildset_complete(("buildsets", "x", "complete"), {"bsid": runs["r3"]["bsid"]})
        (outbox,) = saved_at_cancel
        (rec,) = [r for r in outbox if r["action"] == "CancelRun"]
        self.assertRegex(rec["key"], r"^[0-9a-f]{32}$")
        self.assertEqual(_mail_id(rec, "alert"), {"message_id": f"<qacloud.alert.{rec['key']}@qacloud>"})
        self.assertEqual(_mail_id({"action": "Alert"}, "alert"), {})  # saved by an older version
        yield sched.deactivate()

    @defer.inlineCallbacks
    def test_restart_does_the_actions_decided_and_saved_before_the_master_died(self):
        # the old master decided (c6 passed: cancel r2, blame nothing yet), saved the decision
        # with its outbox, and was killed before cancelling r2
        p, _ = self.tip_started()
        p.handle(RunFinished("r1", "fail", ("test_app.T.test_value",)))
        acts = p.handle(RunFinished("r3", "pass"))
        self.assertIn(CancelRun("r2", "result no longer needed"), acts)
        outbox = [_record(a) for a in acts if isinstance(a, DURABLE)]
        yield self.saved_by_previous_master(
            {**p.to_state(), OUTBOX_KEY: outbox},
            {"r2": {"bsid": 72, "brid": 1072}},
            [fakedb.Buildset(id=72, complete=0)],
        )
        sched = yield self.make()
        cancels = self.record_cancels(sched)
        yield sched.activate()
        self.assertEqual(cancels, [("cancel", ("buildrequests", 1072))])
        policy = yield sched.getState("policy")
        self.assertEqual(policy[OUTBOX_KEY], [])
        self.assertEqual(self.origin.pushed, [COMMITS[5]])  # the promotion decided with it
        yield sched.deactivate()

    def test_outbox_records_round_trip_through_json(self):
        import json

        for a in (
            CancelRun("r2", "result no longer needed"),
            Blame("c" * 40, "Dev <d@example.org>", ("t.a", "t.b"), ("r1", "r4")),
            RecordFlake("c" * 40, ("t.a",), "r3"),
            Revert("c" * 40),
            Alert("master-moved", "master moved outside the gate", "c" * 40),
        ):
            self.assertEqual(_action(json.loads(json.dumps(_record(a)))), a)
            self.assertEqual(_action(json.loads(json.dumps(_record(a, key="k1")))), a)

    @defer.inlineCallbacks
    def test_a_blame_leaves_the_outbox_only_once_its_mail_went_out_and_is_mailed_after_a_restart(self):
        mails: list[tuple] = []
        gate_open = defer.Deferred()

        class Notifier:  # the gate-notifier service's interface; the mail "sends" when released
            async def blame(self, commit, author, failed_tests, urls, message_id=None):
                mails.append((commit, tuple(failed_tests), message_id))
                await gate_open
                return True

        blame = Blame(COMMITS[2], "Dev <d@example.org>", ("test_app.T.test_value",), ("r2", "r4"))
        rec = _record(blame, key="6f1c0ffee")  # the key the previous master gave the decision
        p = GatePolicy(config_from_settings(self.gate))
        yield self.saved_by_previous_master({**p.to_state(), OUTBOX_KEY: [rec]})
        sched = yield self.make()
        self.master.namedServices[NOTIFIER] = Notifier()
        self.addCleanup(self.master.namedServices.pop, NOTIFIER, None)
        yield sched.activate()
        # mailed after the restart, as the same message the previous master may have sent
        self.assertEqual(
            mails, [(COMMITS[2], ("test_app.T.test_value",), "<qacloud.blame.6f1c0ffee@qacloud>")]
        )
        policy = yield sched.getState("policy")
        self.assertEqual(policy[OUTBOX_KEY], [rec])  # not sent yet: a kill now mails again
        gate_open.callback(None)
        yield sched._lock.run(lambda: defer.succeed(None))
        policy = yield sched.getState("policy")
        self.assertEqual(policy[OUTBOX_KEY], [])
        yield sched.deactivate()
