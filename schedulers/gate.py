"""The gate's Buildbot scheduler: a thin adapter between Buildbot and ``GatePolicy``.

It turns the world into policy events and the policy's actions into Buildbot work:

* staging (GitPoller changes on staging, plus a periodic fetch) -> ``StagingUpdated``, read from
  a bare mirror of the repository under the master's basedir;
* pools from the inventory -> ``PoolAvailable`` at activation (``PoolUnavailable`` when
  quarantined, see ``workers/health.py``);
* ``StartRun`` -> one buildset per revision on ``gate-bvt`` (properties pool, gate_run_id,
  gate_kind, bvt_tests); a completed buildset -> ``RunFinished`` (``schedulers/outcome.py``);
* ``CancelRun`` -> cancel the build request (or stop its build); ``Promote`` -> a plain push of
  exactly that sha to master, then ``Promoted``; ``Revert`` -> a revert pushed to staging;
  ``Blame`` / ``RecordFlake`` / ``Alert`` -> the ``gate-notifier`` service and twistd.log.

Every event is handled under one lock and the policy state ("policy"), the dashboard view
("view"), the run -> buildset map ("runs") and pool health ("health") are persisted with
``setState`` after every decision. Restart safety: on activation the state is loaded and each
remembered run is reconciled with the DB (finished while the master was down -> classified;
still pending/running -> kept, never resubmitted; buildset missing -> inconclusive).

A decision and the side effects it requires are saved together: the actions that are not
reconciled from the DB or the repository (``CancelRun``, ``Revert``, ``Blame``, ``Alert``,
``RecordFlake``; a ``StartRun`` is found again by its buildset's external id, a ``Promote`` by
the policy's ``promoting``) go to an *outbox* stored in the same ``setState("policy")`` write
as the policy state, and leave it once done. A master killed between the two finishes them at
the next start, so a run the policy dropped is still cancelled (and logged), a blame still mailed
(a mail leaves the outbox once sent or refused: at least once) and a revert still pushed (at
most once: a revert already on staging is not pushed again).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, fields
from typing import Any, ClassVar

from buildbot.data import resultspec
from buildbot.process.properties import Properties
from buildbot.process.results import CANCELLED, RETRY, statusToString
from buildbot.schedulers.base import ReconfigurableBaseScheduler
from twisted.internet import defer, task
from twisted.python import log

from schedulers import gitops
from schedulers.events import (
    Action,
    Alert,
    Blame,
    CancelRun,
    Event,
    PoolAvailable,
    PoolUnavailable,
    Promote,
    Promoted,
    RecordFlake,
    Revert,
    RunFinished,
    StagingUpdated,
    StartRun,
    Tick,
)
from schedulers.outcome import Classified, classify
from schedulers.policy import GatePolicy, config_from_settings
from steps.marvin import BVT_STEP
from workers import health as pool_health

GATE_SCHEDULER = "gate"
NOTIFIER = "gate-notifier"
GATE_AUTHOR = "qacloud gate <qacloud@localhost>"
URL_HISTORY = 400  # run_id -> build URL entries kept for blame mails
OUTBOX_KEY = "scheduler_outbox"  # in the "policy" state: actions decided and not yet done
DURABLE: tuple[type, ...] = (CancelRun, Revert, Blame, Alert, RecordFlake)
# When this process loaded the gate: the master loads its configuration before Buildbot's
# start-up housekeeping runs; builds that ended later are the live handler's.
_LOADED_AT = time.time()
HEALTH_CATCH_UP_SLACK = 3600.0  # s before the last count also searched (clock skew, late saves)


def _short(sha: str | None) -> str:
    return (sha or "?")[:12]


class GateScheduler(ReconfigurableBaseScheduler):
    """Drives ``schedulers.policy.GatePolicy`` (see the module docstring)."""

    compare_attrs: ClassVar = (
        *ReconfigurableBaseScheduler.compare_attrs,
        "repo_url",
        "master_branch",
        "staging_branch",
        "pools",
        "gate",
        "fetch_interval",
        "quarantine_after",
        "offline_after",
        "pool_workers",
        "mirror_dir",
        "health_builders",
        "preempt_try",
    )

    def __init__(self, name: str, builderNames: list[str], **kwargs: Any) -> None:
        super().__init__(name=name, builderNames=builderNames, **kwargs)
        self._lock = defer.DeferredLock()
        self.policy: GatePolicy | None = None
        self.health: pool_health.PoolHealth | None = None
        self._runs: dict[str, dict] = {}  # run_id -> {"bsid", "brid"}
        self._urls: dict[str, str] = {}  # run_id -> build URL
        self._last_seen: tuple[str, str] | None = None  # (master, staging) last fed
        self._consumers: list = []
        self._timer: task.LoopingCall | None = None
        # pool -> since when its worker is not connected (this process's clock); the pools the
        # policy was told are unavailable for it (after ``offline_after``)
        self._offline_since: dict[str, float] = {}
        self._offline: set[str] = set()
        # pool -> (buildid, what) of the other BVT build (a try) running on it: lent
        self._lent: dict[str, tuple[int, str]] = {}
        # buildid -> pool of the try builds this gate stopped to take their pool back (RETRY:
        # Buildbot queues them again; their end is not counted against the pool)
        self._preempted: dict[int, str] = {}
        self._idle: frozenset[str] = frozenset()  # pools the policy left idle at its last decision
        self._poll_queued = False
        self._unreachable = False  # the last fetch failed (alerted once)
        # the current promotion-rejection episode: [commit, alert message] (alerted once), or None
        self._rejected: list[str] | None = None
        self._queued: list[Event] = []  # events produced while acting (Promoted)
        self._outbox: list[dict] = []  # records of DURABLE actions decided and not yet done

    def checkConfig(  # type: ignore[override]
        self,
        builderNames: list[str],
        repo_url: str = "",
        master_branch: str = "master",
        staging_branch: str = "staging",
        pools: Iterable[str] = (),
        gate: Any = None,
        fetch_interval: int = 60,
        quarantine_after: int = 3,
        mirror_dir: str = "gate-mirror.git",
        health_builders: Iterable[str] = (),
        pool_workers: dict[str, str] | None = None,
        offline_after: float = 600,
        preempt_try: bool = False,
        **kwargs: Any,
    ) -> None:
        from buildbot import config

        super().checkConfig(builderNames=builderNames, **kwargs)
        if not repo_url:
            config.error("GateScheduler: repo_url (settings repository.url) is required")
        if gate is None:
            config.error("GateScheduler: gate (settings 'gate' section) is required")
        if fetch_interval <= 0:
            config.error(f"GateScheduler: fetch_interval must be > 0, got {fetch_interval}")
        if quarantine_after < 1:
            config.error(f"GateScheduler: quarantine_after must be >= 1, got {quarantine_after}")
        if offline_after <= 0:
            config.error(f"GateScheduler: offline_after must be > 0, got {offline_after}")

    async def reconfigService(  # type: ignore[override]
        self,
        builderNames: list[str],
        repo_url: str = "",
        master_branch: str = "master",
        staging_branch: str = "staging",
        pools: Iterable[str] = (),
        gate: Any = None,
        fetch_interval: int = 60,
        quarantine_after: int = 3,
        mirror_dir: str = "gate-mirror.git",
        health_builders: Iterable[str] = (),
        pool_workers: dict[str, str] | None = None,
        offline_after: float = 600,
        preempt_try: bool = False,
        **kwargs: Any,
    ) -> None:
        await super().reconfigService(builderNames=builderNames, **kwargs)
        self.repo_url = repo_url
        self.master_branch = master_branch
        self.staging_branch = staging_branch
        self.pools = list(pools)
        self.gate = gate
        self.fetch_interval = fetch_interval
        self.quarantine_after = quarantine_after
        self.mirror_dir = mirror_dir
        self.health_builders = set(health_builders) or set(builderNames)
        self.pool_workers = dict(pool_workers or {})
        self.offline_after = offline_after
        self.preempt_try = preempt_try
        if self.health is not None:
            self.health.quarantine_after = quarantine_after
        if self.active and self.policy is not None:  # pools may have come or gone
            await self._lock.run(lambda: defer.ensureDeferred(self._pools_reconfigured()))

    async def _pools_reconfigured(self) -> None:
        """After a reconfig: a new pool whose worker is not connected starts its offline clock
        (it must not take runs it would never start), removed pools become unavailable, and a
        run waiting for one of them moves to another pool."""
        await self._read_connections()
        await self._process(self._pool_events())
        await self._release_stranded()

    # ------------------------------------------------------------------ activation

    @property
    def git_dir(self) -> str:
        return os.path.join(self.master.basedir, self.mirror_dir)

    async def activate(self) -> None:
        await super().activate()
        if not self.enabled:
            return
        await self._lock.run(self._load_state_async)
        self._consumers.append(
            await self.master.mq.startConsuming(self._buildset_complete, ("buildsets", None, "complete"))
        )
        self._consumers.append(
            await self.master.mq.startConsuming(self._build_finished, ("builds", None, "finished"))
        )
        self._consumers.append(
            await self.master.mq.startConsuming(self._build_started, ("builds", None, "new"))
        )
        for event in ("connected", "disconnected"):
            self._consumers.append(
                await self.master.mq.startConsuming(self._worker_changed, ("workers", None, event))
            )
        await self.startConsumingChanges()
        await self._lock.run(self._startup_async)
        self._timer = task.LoopingCall(self._poll)
        self._timer.clock = self.master.reactor
        self._timer.start(self.fetch_interval, now=False).addErrback(log.err, "gate: periodic fetch")

    async def deactivate(self) -> None:
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        self._timer = None
        for c in self._consumers:
            c.stopConsuming()
        self._consumers = []
        await super().deactivate()
        # wait for a decision in progress, then forget the health registry
        await self._lock.run(lambda: defer.succeed(None))
        if pool_health.current() is self.health:
            pool_health.register(None)
            pool_health.set_idle(None)

    def _load_state_async(self) -> defer.Deferred:
        return defer.ensureDeferred(self._load_state())

    async def _load_state(self) -> None:
        state = await self.getState("policy", None)
        self._outbox = list(state.pop(OUTBOX_KEY, None) or []) if state else []
        cfg = config_from_settings(self.gate)
        try:
            self.policy = GatePolicy(cfg, state)
        except ValueError as e:
            log.msg(f"gate: cannot resume from the stored gate state ({e}); starting from scratch")
            self.policy = GatePolicy(cfg, None)
        self.policy.config = config_from_settings(self.gate, self.policy.observed_flake_rate())
        self._runs = dict(await self.getState("runs", {}))
        self._urls = dict(await self.getState("urls", {}))
        self._rejected = await self.getState("promotion_rejected", None)
        self.health = pool_health.PoolHealth(self.quarantine_after, await self.getState("health", None))
        pool_health.register(self.health)
        if state:
            log.msg(
                f"gate: resumed: master {_short(self.policy.master)}, "
                f"{len(self.policy.candidates)} candidate(s), {len(self.policy.in_flight())} run(s) in flight"
            )

    def _startup_async(self) -> defer.Deferred:
        return defer.ensureDeferred(self._startup())

    async def _startup(self) -> None:
        try:
            await gitops.ensure_mirror(self.master.reactor, self.git_dir, self.repo_url)
        except gitops.GitError as e:
            log.msg(f"gate: {e}")
        await self._finish_outbox()
        await self._count_missed_builds()
        await self._read_connections()
        await self._read_lent()
        events: list[Event] = await self._reconcile()
        events.extend(self._pool_events())
        promoting = self.policy.to_state().get("promoting") if self.policy else None
        if promoting:  # the master stopped during a promotion: finish it (idempotent)
            log.msg(f"gate: promotion of {_short(promoting)} was interrupted: completing it")
            events.append(await self._promote(promoting))
        await self._process(events)
        await self._release_stranded()
        await self._refresh()

    async def _finish_outbox(self) -> None:
        """Do the actions the previous master decided (and saved) but was killed before doing."""
        if not self._outbox:
            return
        log.msg(
            f"gate: {len(self._outbox)} action(s) decided before the restart not done yet: doing them now"
        )
        for rec in list(self._outbox):
            try:
                a = _action(rec)
            except (KeyError, TypeError) as e:  # written by another version: say so, drop it
                log.msg(f"gate: dropping an unreadable pending action {rec!r}: {e}")
                self._outbox.remove(rec)
                continue
            await self._act_durable(a, rec)

    async def _act_durable(self, a: Action, rec: dict) -> None:
        """Do an outbox action; it leaves the outbox once done -- for a mail, once the mail went
        out (or failed, which the notifier logs), so a kill before that sends it again."""
        mail = await self._act(a, rec)
        if mail is None:
            await self._done(rec)
            return
        mail.addBoth(lambda _: self._lock.run(lambda: defer.ensureDeferred(self._done(rec))))
        mail.addErrback(log.err, "gate: recording a sent notification")

    async def _done(self, rec: dict) -> None:
        if rec in self._outbox:
            self._outbox.remove(rec)
            await self._save_policy()

    def _pool_events(self) -> list[Event]:
        """PoolAvailable for usable pools, PoolUnavailable for quarantined or removed ones."""
        assert self.policy is not None and self.health is not None
        events: list[Event] = []
        for pool in self.pools:
            events.append(self._pool_event(pool))
        known = self.policy.view()["pools"]
        for pool, p in known.items():
            if pool not in self.pools and p["state"] != "unavailable":
                events.append(PoolUnavailable(pool, "no longer in the lab inventory"))
        return events

    async def _reconcile(self) -> list[Event]:
        """Runs in flight in the stored state, checked against the DB after a (re)start."""
        assert self.policy is not None
        events: list[Event] = []
        for run_id, run in self.policy.in_flight().items():
            m = self._runs.get(run_id) or await self._find_buildset(run_id, run["commit"])
            bs = await self.master.db.buildsets.getBuildset(m["bsid"]) if m else None
            if bs is not None and not bs.complete:
                # the master may have died after the last build request finished but before
                # Buildbot completed the buildset: Buildbot never re-checks, so complete it now
                brs = await self.master.db.buildrequests.getBuildRequests(bsid=m["bsid"])
                if brs and all(br.complete for br in brs):
                    await self.master.data.updates.maybeBuildsetComplete(m["bsid"])
                    bs = await self.master.db.buildsets.getBuildset(m["bsid"])
            if bs is None:
                log.msg(
                    f"gate: run {run_id} of {_short(run['commit'])} has no buildset (the master stopped"
                    " before creating it): inconclusive, the gate will retry it"
                )
                events.append(RunFinished(run_id, "inconclusive", reason="buildset missing after restart"))
            elif bs.complete and m.get("again"):  # cancelled by the master's shutdown
                tests = tuple(run["tests"]) if run["tests"] is not None else None
                await self._start_run(StartRun(run_id, run["commit"], run["pool"], run["kind"], tests))
                log.msg(f"gate: run {run_id} of {_short(run['commit'])}: started again after the restart")
            elif bs.complete:
                c = await self._classify(m["bsid"], run_id)
                log.msg(f"gate: run {run_id} of {_short(run['commit'])} finished while the master was down")
                events.append(self._finished_event(run_id, run, c))
            elif (done := await self._finished_build(m["bsid"])) is not None:
                # the master died after the build finished but before Buildbot completed its
                # build request, so Buildbot re-queued the request: take the result that exists
                # and cancel the re-run, so a finished run is never repeated
                c = await self._classify(m["bsid"], run_id, build=done)
                log.msg(
                    f"gate: run {run_id} of {_short(run['commit'])} finished (build {done.id}) while its"
                    " request was re-queued by the restart: result taken, re-run cancelled"
                )
                events.append(self._finished_event(run_id, run, c))
                self._runs.pop(run_id, None)
                for br in await self.master.db.buildrequests.getBuildRequests(bsid=m["bsid"]):
                    if not br.complete:
                        await self._cancel_request(br.buildrequestid, run_id, "already finished")
            else:
                log.msg(
                    f"gate: run {run_id} of {_short(run['commit'])} still pending/running: waiting for it"
                )
        in_flight = self.policy.in_flight()
        for run_id in list(self._runs):
            if run_id not in in_flight:  # cancelled earlier or already fed
                bs = await self.master.db.buildsets.getBuildset(self._runs[run_id]["bsid"])
                if bs is None or bs.complete:
                    del self._runs[run_id]
        return events

    async def _find_buildset(self, run_id: str, commit: str) -> dict | None:
        """The buildset of a run the master created but was killed before remembering (it is
        tagged ``external_idstring`` "gate:<run id>"): adopted, so it is never run twice."""
        bss = await self.master.data.get(
            ("buildsets",), filters=[resultspec.Filter("external_idstring", "eq", [_external_id(run_id)])]
        )
        bss = [b for b in bss if any(ss.get("revision") == commit for ss in b.get("sourcestamps") or [])]
        if not bss:
            return None
        bsid = max(b["bsid"] for b in bss)
        brs = await self.master.db.buildrequests.getBuildRequests(bsid=bsid)
        self._runs[run_id] = {"bsid": bsid, "brid": brs[0].buildrequestid if brs else None}
        log.msg(f"gate: run {run_id} of {_short(commit)}: adopted buildset {bsid} created before the restart")
        return self._runs[run_id]

    def _pool_event(self, pool: str) -> Event:
        """What the policy should know of ``pool`` now: quarantined, offline, lent to a try
        build, or available."""
        assert self.health is not None
        now = self._now()
        if self.health.is_quarantined(pool):
            return PoolUnavailable(pool, f"quarantined: {self.health.reason(pool)}", now, "quarantined")
        if pool in self._offline:
            return PoolUnavailable(pool, self._offline_reason(pool), now, "offline")
        if pool in self._lent:
            buildid, what = self._lent[pool]
            stopping = ", being stopped: the gate needs the pool" if buildid in self._preempted else ""
            return PoolUnavailable(pool, f"running {what}{stopping}", now, "lent")
        return PoolAvailable(pool, now)

    def _unusable(self, pool: str) -> str | None:
        """Why ``pool`` can take no build (gone from the inventory, quarantined or offline; a lent
        pool's runs the policy drops itself); None if it can."""
        assert self.health is not None
        if pool not in self.pools:
            return "is no longer in the lab inventory"
        if self.health.is_quarantined(pool):
            return f"was quarantined ({self.health.reason(pool)})"
        if pool in self._offline:
            return f"is offline ({self._offline_reason(pool)})"
        return None

    # ------------------------------------------------------------------ workers online/offline

    def _pool_of(self, worker: str | None) -> str | None:
        return next((p for p, w in self.pool_workers.items() if w == worker and p in self.pools), None)

    def _offline_reason(self, pool: str) -> str:
        since = self._offline_since.get(pool)
        when = (
            f" since {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(since))}" if since is not None else ""
        )
        return f"worker {self.pool_workers.get(pool, '?')} not connected{when}"

    async def _read_connections(self) -> None:
        """At start-up and after a reconfig: pools whose worker is not connected (yet) start their
        offline clock now, so workers reconnecting after a master restart never cost a run."""
        now = self._now()
        workers = {w["name"]: w for w in await self.master.data.get(("workers",))}
        for pool, name in self.pool_workers.items():
            w = workers.get(name)
            if w is None or not w.get("connected_to"):
                self._offline_since.setdefault(pool, now)
            else:
                self._offline_since.pop(pool, None)

    def _worker_changed(self, key, msg) -> defer.Deferred | None:
        pool = self._pool_of(msg.get("name"))
        if pool is None or self.policy is None:
            return None
        connected = bool(msg.get("connected_to")) and key[-1] == "connected"
        d = self._lock.run(lambda: defer.ensureDeferred(self._on_worker_changed(pool, connected)))
        d.addErrback(log.err, "gate: handling a worker (dis)connection")
        return d

    async def _on_worker_changed(self, pool: str, connected: bool) -> None:
        if not connected:
            self._offline_since.setdefault(pool, self._now())
            return  # a blip or a reboot: the pool stays usable for ``offline_after``
        self._offline_since.pop(pool, None)
        if pool in self._offline:
            self._offline.discard(pool)
            log.msg(f"gate: pool {pool}: worker {self.pool_workers.get(pool)} connected again, back in use")
            await self._process([self._pool_event(pool)])

    async def _check_offline(self) -> None:
        """Pools whose worker has been disconnected for ``offline_after`` s take no more runs
        (``PoolUnavailable``) until it connects again; then ``_release_stranded`` moves a run
        waiting for one to another pool."""
        now = self._now()
        gone = [
            p
            for p, since in sorted(self._offline_since.items())
            if p not in self._offline and p in self.pools and now - since >= self.offline_after
        ]
        for pool in gone:
            self._offline.add(pool)
            reason = self._offline_reason(pool)
            log.msg(f"gate: pool {pool} OFFLINE: {reason}; no runs until it connects again")
        if gone:  # (a quarantined pool keeps its quarantine reason: ``_pool_event``)
            await self._process([self._pool_event(p) for p in gone])

    async def _release_stranded(self) -> None:
        """End the gate runs that wait for a pool which will never take them. A build that ends
        RETRY (its worker was lost) sends its build request back to the queue for the same pool,
        and ``nextWorker`` gives a quarantined pool no work: without this the run, and the gate
        with it, would wait until someone releases the pool. Such a run (its request waiting,
        unclaimed, no build running) ends *inconclusive*, never evidence against the commit, so
        the policy retries it on another pool; then its request is cancelled. Checked when a
        pool is quarantined, at start-up, after a reconfig and on every periodic fetch. Under
        the lock."""
        if self.policy is None or self.health is None:
            return
        stranded: list[tuple[str, str, list[int]]] = []
        for run_id, run in self.policy.in_flight().items():
            why = self._unusable(run["pool"])
            m = self._runs.get(run_id)
            if why is None or m is None:
                continue
            brs = await self.master.db.buildrequests.getBuildRequests(bsid=m["bsid"])
            if not brs or any(br.complete or br.claimed for br in brs):
                continue  # running, just finished, or about to be re-queued: its end or the next check tells
            if any(b.complete_at is None for b in await self._builds(m["bsid"])):
                continue
            stranded.append((run_id, why, [br.buildrequestid for br in brs]))
        if not stranded:
            return
        events: list[Event] = []
        for run_id, why, _ in stranded:
            run = self.policy.in_flight()[run_id]
            reason = f"pool {run['pool']} {why} while the run waited for it"
            log.msg(
                f"gate: run {run_id} ({run['kind']}) of {_short(run['commit'])} waits for pool"
                f" {run['pool']}, which {why}: inconclusive, the gate retries it on another pool"
            )
            events.append(RunFinished(run_id, "inconclusive", (), reason, self._now()))
        await self._process(events)  # the policy drops the runs first: their cancels are no evidence
        for run_id, _, brids in stranded:
            for brid in brids:
                await self._cancel_request(brid, run_id, "its pool can take no build")

    # ------------------------------------------------------------------ pools lent to try builds

    @property
    def _lenders(self) -> set[str]:
        """The other BVT builders (try): their builds take a pool's one slot for a while."""
        return self.health_builders - set(self.builderNames)

    async def _lender_build(self, buildid: int, builderid: int, workerid: int | None, number) -> None:
        """If build ``buildid`` runs on a pool for another BVT builder (a try): that pool is lent."""
        builder = await self.master.data.get(("builders", builderid))
        if not builder or builder["name"] not in self._lenders or workerid is None:
            return
        worker = await self.master.data.get(("workers", workerid))
        pool = self._pool_of(worker["name"] if worker else None)
        if pool is not None:
            self._lent[pool] = (buildid, f"{builder['name']} build #{number}")

    async def _read_lent(self) -> None:
        """At start-up: the pools running a try build (a restart does not stop them for good:
        Buildbot runs an interrupted one again)."""
        self._lent = {}
        for name in sorted(self._lenders):
            builderid = await self.master.db.builders.findBuilderId(name, autoCreate=False)
            if builderid is None:
                continue
            for b in await self.master.db.builds.getBuilds(builderid=builderid, complete=False):
                await self._lender_build(b.id, builderid, b.workerid, b.number)

    def _build_started(self, key, msg) -> defer.Deferred | None:
        if self.policy is None or msg.get("builderid") is None:
            return None
        d = self._lock.run(lambda: defer.ensureDeferred(self._on_build_started(msg)))
        d.addErrback(log.err, "gate: a build started")
        return d

    async def _on_build_started(self, msg: dict) -> None:
        before = dict(self._lent)
        await self._lender_build(msg["buildid"], msg["builderid"], msg.get("workerid"), msg.get("number"))
        for pool in self._lent.keys() - before.keys():
            log.msg(f"gate: pool {pool} lent to {self._lent[pool][1]}: no gate run there until it ends")
            await self._process([self._pool_event(pool)])

    async def _check_lent(self) -> None:
        """The periodic safety net: a lent pool whose try build ended unseen is the gate's again."""
        for _pool, (buildid, _) in list(self._lent.items()):
            b = await self.master.db.builds.getBuild(buildid)
            if b is None or b.complete_at is not None:
                await self._end_lending(buildid)

    async def _end_lending(self, buildid: int) -> None:
        pool = next((p for p, (b, _) in self._lent.items() if b == buildid), None)
        if pool is None:
            return
        log.msg(f"gate: pool {pool}: {self._lent.pop(pool)[1]} ended, the pool is the gate's again")
        await self._process([self._pool_event(pool)])

    # ------------------------------------------------------------------ inputs

    async def gotChange(self, change, important) -> None:  # type: ignore[override]
        if change.branch and change.branch != self.staging_branch:
            return
        log.msg(f"gate: change {_short(change.revision)} on {change.branch}: fetching")
        await self._lock.run(self._refresh_async)

    def _poll(self) -> defer.Deferred | None:
        if self._poll_queued:
            return None
        self._poll_queued = True

        def done(r):
            self._poll_queued = False
            return r

        d = self._lock.run(self._periodic_async)
        d.addBoth(done)
        d.addErrback(log.err, "gate: periodic fetch failed")
        return d

    def _periodic_async(self) -> defer.Deferred:
        return defer.ensureDeferred(self._periodic())

    async def _periodic(self) -> None:
        """Fetch; then the policy's own timer: when a decision falls due on time alone
        (``GatePolicy.wake_at``, e.g. re-alerting a block nobody repaired), feed a Tick."""
        await self._refresh()
        if self.policy is None:
            return
        await self._check_offline()
        await self._check_lent()
        await self._release_stranded()
        wake = self.policy.wake_at()
        if wake is not None and self._now() >= wake:
            log.msg("gate: the policy's wake-up time came: ticking it")
            await self._process([Tick(self._now())])

    def poke(self) -> defer.Deferred:
        """Fetch now (the webhook calls this)."""
        return self._lock.run(self._refresh_async)

    def _refresh_async(self) -> defer.Deferred:
        return defer.ensureDeferred(self._refresh())

    async def _refresh(self) -> None:
        """Fetch master and staging; feed StagingUpdated when either moved."""
        if self.policy is None:
            return
        reactor = self.master.reactor
        try:
            m, s = await gitops.fetch(reactor, self.git_dir, self.master_branch, self.staging_branch)
            if (m, s) == self._last_seen:
                return
            commits = await gitops.candidates_async(reactor, self.git_dir, m, s)
        except gitops.GitError as e:
            log.msg(f"gate: cannot read {self.repo_url}: {e}")
            if not self._unreachable:  # alert once per outage; the periodic fetch retries
                self._unreachable = True
                msg = f"cannot read {self.repo_url} (retrying every {self.fetch_interval}s): {e}"
                log.msg(f"gate: ALERT origin-unreachable: {msg}")
                self._notify("alert", "origin-unreachable", msg)
            return
        if self._unreachable:
            self._unreachable = False
            log.msg(f"gate: {self.repo_url} is reachable again")
        self._last_seen = (m, s)
        log.msg(f"gate: master {_short(m)}, staging {_short(s)}: {len(commits)} candidate(s)")
        await self._process(
            [StagingUpdated(m, tuple(c for c, _ in commits), {c: a for c, a in commits}, self._now())]
        )

    def _buildset_complete(self, key, msg) -> defer.Deferred | None:
        bsid = msg.get("bsid")
        if not any(r["bsid"] == bsid for r in self._runs.values()):
            return None
        d = self._lock.run(lambda: defer.ensureDeferred(self._on_buildset_complete(bsid)))
        d.addErrback(log.err, f"gate: handling completed buildset {bsid}")
        return d

    async def _on_buildset_complete(self, bsid: int) -> None:
        assert self.policy is not None
        run_id = next((rid for rid, r in self._runs.items() if r["bsid"] == bsid), None)
        if run_id is None:
            return
        run = self.policy.in_flight().get(run_id)
        if run is None:  # cancelled by the gate: not evidence
            del self._runs[run_id]
            await self.setState("runs", self._runs)
            build = await self._finished_build(bsid)
            if build is not None:  # it ended before the cancel reached it
                log.msg(
                    f"gate: run {run_id} ended ({statusToString(build.results)}) after the gate"
                    " cancelled it: not used"
                )
            return
        stopped = await self._last_build(bsid)
        if self._shutting_down() and stopped is not None and stopped.results == CANCELLED:
            # Buildbot stops running builds as RETRY when the master shuts down, and re-queues
            # them; but a step the shutdown interrupts before its command started ends
            # CANCELLED, which wins: the request is done. Not the run's result: it is run
            # again after the start, as Buildbot would have (``_reconcile``)
            self._runs[run_id]["again"] = True
            await self.setState("runs", self._runs)
            log.msg(
                f"gate: run {run_id} of {_short(run['commit'])} on {run['pool']}: build {stopped.id}"
                " cancelled by the master's shutdown: not a result, it runs again after the start"
            )
            return
        c = await self._classify(bsid, run_id)
        await self._process([self._finished_event(run_id, run, c)])

    def _finished_event(self, run_id: str, run: dict, c: Classified) -> RunFinished:
        log.msg(
            f"gate: run {run_id} ({run['kind']}) of {_short(run['commit'])} on {run['pool']}: {c.outcome}"
            + (f", failed {', '.join(c.failed_tests)}" if c.failed_tests else "")
            + (f" ({c.reason})" if c.reason else "")
        )
        return RunFinished(run_id, c.outcome, c.failed_tests, c.reason, self._now())  # type: ignore[arg-type]

    async def _builds(self, bsid: int) -> list:
        brs = await self.master.db.buildrequests.getBuildRequests(bsid=bsid)
        builds = []
        for br in brs:
            builds.extend(await self.master.db.builds.getBuilds(buildrequestid=br.buildrequestid))
        return builds

    async def _last_build(self, bsid: int):
        builds = await self._builds(bsid)
        return max(builds, key=lambda b: b.id) if builds else None

    def _shutting_down(self) -> bool:
        """The master is stopping (``buildbot stop``/``restart``): Buildbot's botmaster ends
        the running builds."""
        return bool(getattr(getattr(self.master, "botmaster", None), "shuttingDown", False))

    async def _finished_build(self, bsid: int):
        """A build of the buildset that finished with a real result (not RETRY/CANCELLED)."""
        done = [
            b
            for b in await self._builds(bsid)
            if b.complete_at is not None and b.results not in (RETRY, CANCELLED)
        ]
        return max(done, key=lambda b: b.id) if done else None

    async def _classify(self, bsid: int, run_id: str, build=None) -> Classified:
        """The outcome of a run's (completed) buildset from its last build (or ``build``)."""
        if build is None:
            build = await self._last_build(bsid)
            if build is None:
                return Classified("inconclusive", (), "the build request ended before a build started")
        props = await self.master.db.builds.getBuildProperties(build.id)
        self._urls[run_id] = f"{self._base_url()}#/builders/{build.builderid}/builds/{build.number}"
        while len(self._urls) > URL_HISTORY:
            del self._urls[next(iter(self._urls))]
        return classify(build.results, props)

    def _base_url(self) -> str:
        cfg = getattr(self.master, "config", None)
        return getattr(cfg, "buildbotURL", None) or "/"

    def _build_finished(self, key, msg) -> defer.Deferred | None:
        """Every finished BVT build (gate and try) tells on its pool's health; not a build the
        master's own shutdown stopped (``buildbot stop``/``restart`` ends running builds as
        RETRY and Buildbot runs them again after the start): a restart is not the pool's fault."""
        if self.health is None:
            return None
        count = msg.get("results") != CANCELLED
        if msg.get("buildid") in self._preempted:
            log.msg(
                f"gate: build {msg.get('buildid')} ended after the gate took its pool"
                f" {self._preempted.pop(msg['buildid'])} back: not counted against the pool;"
                " Buildbot runs it again on a pool the gate leaves idle"
            )
            count = False
        elif count and msg.get("results") == RETRY:
            if self._shutting_down():
                log.msg(
                    f"gate: build {msg.get('buildid')} stopped by the master's shutdown (RETRY): not"
                    " counted against its pool; Buildbot runs it again after the restart"
                )
                count = False
        # (always under the lock: whether the build borrowed a pool is known once its "new"
        # message, queued before this one, was handled)
        d = self._lock.run(lambda: defer.ensureDeferred(self._on_build_finished(msg, count)))
        d.addErrback(log.err, "gate: recording pool health")
        return d

    async def _on_build_finished(self, msg: dict, count: bool = True) -> None:
        builder = await self.master.data.get(("builders", msg["builderid"]))
        if count and builder and builder["name"] in self.health_builders:
            await self._count_build(msg["buildid"], msg.get("results"), self._now(), live=True)
        await self._end_lending(msg["buildid"])

    async def _count_build(self, buildid: int, results: int | None, at: float, live: bool) -> bool:
        """Record one finished BVT build of a health builder on its pool's health, once.
        ``live``: a quarantine also goes to the policy at once (at start-up, ``_pool_events``
        tells it, after the runs in flight are reconciled). True if it was counted now."""
        assert self.health is not None
        if self.health.counted(buildid):
            return False
        props = await self.master.db.builds.getBuildProperties(buildid)
        pool = _prop(props, "pool")
        if not pool or pool not in self.pools:
            return False
        c = classify(results, props)
        rec = self.health.record(
            pool, c.outcome == "inconclusive", c.reason, buildid=buildid, at=at, passed=c.outcome == "pass"
        )
        if rec.quarantined:
            self._quarantine_told(pool, rec.reason)
            if live:
                await self._process([self._pool_event(pool)])
                await self._release_stranded()
                return True
        await self.setState("health", self.health.to_state())
        return True

    def _quarantine_told(self, pool: str, reason: str) -> defer.Deferred | None:
        """Log and mail a quarantine (the policy is told by ``_pool_event``)."""
        log.msg(f"gate: QUARANTINE pool {pool}: {reason}")
        return self._notify("quarantined", pool, reason)

    async def _count_missed_builds(self) -> None:
        """Count the BVT builds that ended while no gate listened (a master killed between a
        build's end and its health record) towards pool health, each once: those that ended
        since the last count (less ``HEALTH_CATCH_UP_SLACK``) and before this process loaded.

        RETRY builds are left out: Buildbot's start-up housekeeping finishes the builds a killed
        master left running as RETRY (this process's or an earlier restart's, which never
        counted them) -- the master's fault, never a pool's. A worker lost right before a kill
        (also RETRY) goes uncounted; that costs one count, not a false quarantine."""
        health = self.health
        assert health is not None
        if health.since is None:  # a new gate, or health saved before builds were remembered
            health.since = self._now()
            return
        missed = []
        # only builds that ended since the last count: the DB filters (years of BVT history
        # are not read at every start-up)
        recent = resultspec.ResultSpec(
            filters=[resultspec.Filter("complete_at", "ge", [int(health.since - HEALTH_CATCH_UP_SLACK)])]
        )
        recent.fieldMapping = {"complete_at": "builds.complete_at"}  # (unmapped: not filtered in SQL)
        for name in sorted(self.health_builders):
            builderid = await self.master.db.builders.findBuilderId(name, autoCreate=False)
            if builderid is None:
                continue
            builds = await self.master.db.builds.getBuilds(
                builderid=builderid, complete=True, resultSpec=recent
            )
            for b in builds:
                if b.complete_at is None or b.results in (CANCELLED, RETRY) or health.counted(b.id):
                    continue
                at = b.complete_at.timestamp()  # Buildbot gives aware UTC datetimes
                # the DB keeps whole seconds: a build ended in the second this process loaded
                # may be housekeeping's, so it is left out
                if health.since - HEALTH_CATCH_UP_SLACK <= at < int(_LOADED_AT):
                    missed.append((at, b.id, b.results))
        counted = [
            buildid
            for at, buildid, results in sorted(missed)
            if await self._count_build(buildid, results, at, live=False)
        ]
        if counted:
            log.msg(
                f"gate: {len(counted)} BVT build(s) ended while the gate was not running "
                f"(builds {', '.join(map(str, counted))}): counted towards pool health now"
            )

    async def release_pool(self, pool: str) -> bool:
        """Return a quarantined pool to service (the pool-service builder calls this)."""
        return await self._lock.run(lambda: defer.ensureDeferred(self._release(pool)))

    async def _release(self, pool: str) -> bool:
        if self.health is None:
            raise RuntimeError("the gate is not active on this master")
        if pool not in self.pools:
            raise ValueError(f"unknown pool {pool!r} (pools: {', '.join(self.pools)})")
        was = self.health.release(pool)
        log.msg(f"gate: pool {pool} returned to service" + ("" if was else " (it was not quarantined)"))
        if pool in self._offline:
            log.msg(f"gate: pool {pool} takes runs once its worker connects ({self._offline_reason(pool)})")
        await self._process([self._pool_event(pool)])
        return was

    # ------------------------------------------------------------------ decisions

    def _process_async(self, events: list[Event]) -> defer.Deferred:
        return defer.ensureDeferred(self._process(events))

    async def _process(self, events: list[Event]) -> None:
        """Feed events (and the events actions produce) to the policy; persist; act. Under the lock."""
        assert self.policy is not None
        self._queued.extend(events)
        first = True
        while self._queued or first:
            first = False
            batch, self._queued = self._queued, []
            self.policy.config = config_from_settings(self.gate, self.policy.observed_flake_rate())
            actions = self.policy.handle_all(batch)
            # the decision and its side effects are saved in one write (the outbox)
            records = {id(a): _record(a, key=uuid.uuid4().hex) for a in actions if isinstance(a, DURABLE)}
            self._outbox.extend(records.values())
            await self._save()
            # runs first (fast, DB only), so a crash during a slow push loses no buildset
            for a in sorted(actions, key=lambda a: not isinstance(a, (StartRun, CancelRun))):
                if isinstance(a, DURABLE):
                    await self._act_durable(a, records[id(a)])
                else:
                    await self._act(a)
        await self._save()
        self._lend_idle_pools()
        taken_back = await self._preempt_lent_pools()
        if taken_back:  # the pools' new reason, for the dashboard (each is stopped only once)
            await self._process([self._pool_event(p) for p in taken_back])

    def _lend_idle_pools(self) -> None:
        """Publish the pools this decision left idle: only those may run a try build (workers/
        health.py ``may_lend``). When one became idle, the try builders look again at once."""
        assert self.policy is not None
        idle = frozenset(p for p, st in self.policy.pool_states().items() if st == "idle" and p in self.pools)
        pool_health.set_idle(idle)
        if idle - self._idle:
            botmaster = getattr(self.master, "botmaster", None)
            for name in sorted(self._lenders):
                if hasattr(botmaster, "maybeStartBuildsForBuilder"):
                    botmaster.maybeStartBuildsForBuilder(name)
        self._idle = idle

    async def _preempt_lent_pools(self) -> list[str]:
        """``try.preempt``: gate runs go first, also against a try build already running. Stop
        the try builds on the pools the policy needs back (``GatePolicy.needs_pools``; the one
        that started last first: the least work is lost) as RETRY, so Buildbot queues each
        again for a pool the gate leaves idle; its pool is the gate's once the build ends (its
        teardown powers the hosts off). A developer's ``buildbot try --wait`` keeps waiting.
        A try build whose tests are done is left to finish: it ends in moments, and stopping
        it would throw its whole BVT away. Returns the pools whose try build it stopped."""
        if not self.preempt_try or self.policy is None or not self._lent:
            return []
        # pools coming back anyway come first: the runs they will take need no other
        coming, lent = [], {}
        for pool, (buildid, _) in sorted(self._lent.items()):
            if buildid in self._preempted or await self._tests_done(buildid):
                coming.append(pool)
            else:
                lent[pool] = buildid
        if not lent:
            return []
        needed = self.policy.needs_pools([*coming, *sorted(lent, key=lambda p: -lent[p])])
        stopped = [p for p in needed if p not in coming]
        for pool in stopped:
            buildid = lent[pool]
            what = self._lent[pool][1]
            self._preempted[buildid] = pool
            reason = f"preempted by the qacloud gate: it needs pool {pool} for a gate run; queued again"
            log.msg(f"gate: pool {pool}: stopping {what} ({reason})")
            self.master.mq.produce(
                ("control", "builds", str(buildid), "stop"), {"reason": reason, "results": RETRY}
            )
        return stopped

    async def _tests_done(self, buildid: int) -> bool:
        """Whether build ``buildid`` finished its BVT test step (only teardown is left)."""
        steps = await self.master.data.get(("builds", buildid, "steps"))
        return any(st["name"] == BVT_STEP and st["complete"] for st in steps or [])

    async def _save_policy(self) -> None:
        assert self.policy is not None
        await self.setState("policy", {**self.policy.to_state(), OUTBOX_KEY: self._outbox})

    async def _save(self) -> None:
        assert self.policy is not None and self.health is not None
        await self._save_policy()
        await self.setState("view", self.policy.view())
        await self.setState("runs", self._runs)
        await self.setState("urls", self._urls)
        await self.setState("health", self.health.to_state())
        await self.setState("promotion_rejected", self._rejected)

    async def _act(self, a: Action, rec: dict | None = None) -> defer.Deferred | None:
        """Do one action (``rec``: its outbox record, for a DURABLE one); returns the notification
        it mails in the background, if any."""
        if isinstance(a, StartRun):
            await self._start_run(a)
        elif isinstance(a, CancelRun):
            await self._cancel_run(a)
        elif isinstance(a, Promote):
            promoted = await self._promote(a.commit)
            if promoted.ok and self._rejected is not None:
                log.msg(
                    f"gate: promotion recovered: {_short(a.commit)} pushed to {self.master_branch}"
                    f" (the rejection of {_short(self._rejected[0])} is over)"
                )
                self._rejected = None
            self._queued.append(promoted)
        elif isinstance(a, Alert) and a.kind == "promotion-rejected":
            return self._promotion_rejected(a, rec)
        elif isinstance(a, Blame):
            urls = [self._urls[r] for r in a.run_ids if r in self._urls]
            log.msg(
                f"gate: BLAME {a.commit} by {a.author or '?'}: breaks"
                f" {', '.join(a.failed_tests) or 'the BVT'} (runs {', '.join(a.run_ids)})"
            )
            return self._notify(
                "blame", a.commit, a.author, list(a.failed_tests), urls, **_mail_id(rec, "blame")
            )
        elif isinstance(a, RecordFlake):
            log.msg(
                f"gate: FLAKE {', '.join(a.tests) or 'tests'} at {_short(a.commit)} (run {a.run_id}"
                + (f" on {a.pool})" if a.pool else ")")
            )
            if a.pool in self.pools and self.health is not None:
                rec = self.health.record_flake(a.pool, a.tests, a.run_id)
                await self.setState("health", self.health.to_state())
                if rec.quarantined:  # told once this decision is done (``_process`` loops)
                    self._queued.append(self._pool_event(a.pool))
                    return self._quarantine_told(a.pool, rec.reason)
        elif isinstance(a, Alert):
            log.msg(f"gate: ALERT {a.kind}: {a.message}")
            return self._notify("alert", a.kind, a.message, **_mail_id(rec, "alert"))
        elif isinstance(a, Revert):
            await self._revert(a.commit)
        else:
            log.msg(f"gate: unknown action {a!r}")
        return None

    async def _start_run(self, a: StartRun) -> None:
        props = Properties()
        props.setProperty("pool", a.pool, "Gate")
        props.setProperty("gate_run_id", a.run_id, "Gate")
        props.setProperty("gate_kind", a.kind, "Gate")
        if a.tests is not None:
            props.setProperty("bvt_tests", list(a.tests), "Gate")
        scope = f" ({len(a.tests)} test(s))" if a.tests is not None else ""
        reason = f"gate {a.kind} run {a.run_id} of {_short(a.commit)} on {a.pool}{scope}"
        bsid, brids = await self.addBuildsetForSourceStampsWithDefaults(
            reason,
            sourcestamps=[
                {
                    "codebase": "",
                    "repository": self.repo_url,
                    "branch": self.staging_branch,
                    "revision": a.commit,
                    "project": "",
                }
            ],
            properties=props,
            builderNames=list(self.builderNames),
            external_idstring=_external_id(a.run_id),  # found again if we die before saving "runs"
        )
        self._runs[a.run_id] = {"bsid": bsid, "brid": next(iter(brids.values()), None)}
        await self.setState("runs", self._runs)  # before anything can depend on it
        log.msg(f"gate: START {reason} (buildset {bsid})")

    async def _cancel_run(self, a: CancelRun) -> None:
        m = self._runs.get(a.run_id)
        log.msg(f"gate: CANCEL run {a.run_id}: {a.reason}")
        if not m or m.get("brid") is None:
            return
        await self._cancel_request(m["brid"], a.run_id, a.reason)

    async def _cancel_request(self, brid: int, run_id: str, reason: str) -> None:
        try:
            await self.master.data.control("cancel", {"reason": f"gate: {reason}"}, ("buildrequests", brid))
        except Exception as e:  # a request that already finished cannot be cancelled
            log.msg(f"gate: could not cancel build request {brid} of run {run_id}: {e}")

    async def _promote(self, sha: str) -> Promoted:
        reactor = self.master.reactor
        self._last_seen = None  # re-read master and staging on the next fetch
        try:
            m, _ = await gitops.fetch(reactor, self.git_dir, self.master_branch, self.staging_branch)
            if m == sha or await gitops.is_ancestor(reactor, self.git_dir, sha, m):
                log.msg(f"gate: PROMOTE {sha}: master already contains it ({_short(m)})")
                return Promoted(sha, True, "", self._now())
            result = await gitops.push_master(reactor, self.git_dir, sha, self.master_branch)
            if not result.ok:
                # a push of the same sha may have landed meanwhile (one left running by a master
                # killed mid-push completes while we retry): that is a success, not a rejection
                m, _ = await gitops.fetch(reactor, self.git_dir, self.master_branch, self.staging_branch)
                if m == sha or await gitops.is_ancestor(reactor, self.git_dir, sha, m):
                    log.msg(f"gate: PROMOTE {sha}: master already contains it ({_short(m)}; {result.reason})")
                    return Promoted(sha, True, "", self._now())
        except gitops.GitError as e:
            result = gitops.PushResult(False, str(e))
        if result.ok:
            log.msg(f"gate: PROMOTE {sha}: pushed to {self.master_branch}")
        else:
            log.msg(f"gate: PROMOTE {sha} failed: {result.reason}")
        return Promoted(sha, result.ok, result.reason, self._now())

    def _promotion_rejected(self, a: Alert, rec: dict | None = None) -> defer.Deferred | None:
        """Alert once per rejection episode (same commit, same reason); later retries only log."""
        episode = [a.commit, a.message]
        if self._rejected == episode:
            log.msg(f"gate: PROMOTE {_short(a.commit)} still rejected (alerted already): retrying quietly")
            return None
        self._rejected = episode
        log.msg(f"gate: ALERT {a.kind}: {a.message}")
        return self._notify("alert", a.kind, a.message, **_mail_id(rec, "alert"))

    async def _revert(self, culprit: str) -> None:
        reactor = self.master.reactor
        self._last_seen = None
        try:
            await gitops.fetch(reactor, self.git_dir, self.master_branch, self.staging_branch)
            done = await gitops.gate_revert_on_staging(reactor, self.git_dir, culprit)
            if done:  # pushed by a master killed before it recorded the push
                log.msg(f"gate: REVERT {culprit}: already on {self.staging_branch} ({_short(done)})")
                return
            sha = await gitops.revert_on_staging(
                reactor, self.git_dir, culprit, self.staging_branch, GATE_AUTHOR
            )
        except gitops.GitError as e:
            log.msg(f"gate: REVERT of {_short(culprit)} failed: {e}")
            self._notify("alert", "revert-failed", f"could not revert {culprit} on staging: {e}")
            return
        log.msg(f"gate: REVERT {culprit}: pushed revert {sha} to {self.staging_branch}")

    def _notify(self, method: str, *args: Any, **kwargs: Any) -> defer.Deferred | None:
        """Call the gate-notifier service in the background (mail must not stall decisions);
        the returned Deferred fires (never fails) when it is done."""
        svc = self.master.namedServices.get(NOTIFIER)
        if svc is None or not hasattr(svc, method):
            return None
        d = defer.ensureDeferred(getattr(svc, method)(*args, **kwargs))
        d.addErrback(log.err, f"gate: notifier {method} failed")
        return d

    def _now(self) -> float:
        return float(self.master.reactor.seconds())


_ACTIONS: dict[str, type] = {cls.__name__: cls for cls in DURABLE}


def _record(a: Any, key: str | None = None) -> dict:
    """A DURABLE action as JSON-able data (the outbox); ``key``: a unique id of this decision
    (its mail's Message-ID, the same when a restarted master sends it again)."""
    return {
        "action": type(a).__name__,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(a).items()},
        **({"key": key} if key else {}),
    }


def _mail_id(rec: dict | None, kind: str) -> dict[str, str]:
    """The notifier's ``message_id`` argument for an outbox record's mail ({} without a key:
    records saved by older versions get a fresh Message-ID)."""
    if not rec or not rec.get("key"):
        return {}
    return {"message_id": f"<qacloud.{kind}.{rec['key']}@qacloud>"}


def _action(rec: dict) -> Any:
    """The action an outbox record describes (lists back to the tuples the actions hold)."""
    cls = _ACTIONS[rec["action"]]
    args = {f.name: rec[f.name] for f in fields(cls) if f.name in rec}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})


def _external_id(run_id: str) -> str:
    return f"gate:{run_id}"


def _prop(props: dict, name: str) -> Any:
    v = props.get(name)
    if isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[1], str):
        return v[0]
    return v
