"""ProvisionPool and TeardownPool: install a pool's hosts from scratch, power them off at the end.

Both steps run **in the master process** (they call no worker command): the master talks to
the pool's Cobbler (XML-RPC over HTTP) and to its hosts' BMCs (IPMI over UDP 623), so the
master needs a route to every pool's Cobbler and BMC network (docs/lab.md). Nothing here
blocks the reactor: Cobbler calls are Twisted XML-RPC, IPMI calls run on a bounded thread
pool (steps/ipmi.py).

ProvisionPool, for the build's pool (property ``pool``):

1. Cobbler: register/update a system per host, remove the pool's stale systems, sync the
   pool's own systems (``sync_systems``: never a full sync, which would wipe the PXE files of
   other pools sharing the Cobbler server);
2. IPMI, every host in parallel: next boot from PXE, then power cycle;
3. wait, per host and within ``provisioning.install_timeout``, until Cobbler's netboot flag is
   cleared (the installer's ``nopxe`` call-back) and the host answers on its SSH port.

Before step 1, the hosts' power states are read: if any host is on (a pool left running by a
build whose master or worker died), every host of the pool is powered off first, so no run
begins on a running pool.

Any BMC, Cobbler or install-timeout failure ends the step with FAILURE and sets the build
property ``infra_failure`` naming the host, the BMC or Cobbler and the reason (the gate then
counts the run as inconclusive, never as the commit's fault), and removes the pool's systems
from Cobbler so nothing is left half-registered. Every log line goes through
``cleanupTextFromSecrets``: Buildbot does not scrub custom-step logs.

Interrupts: Buildbot calls ``interrupt()`` when the build is stopped or its worker is lost
(then no later step runs, not even the alwaysRun TeardownPool). ProvisionPool then starts no
new IPMI or Cobbler work, cancels its waits, lets IPMI calls already sent finish (bounded by
the IPMI timeout), powers every host of the pool off (best effort) and ends RETRY (worker
lost: Buildbot re-queues the request) or CANCELLED.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from buildbot.plugins import util
from buildbot.process import buildstep
from buildbot.process.results import CANCELLED, EXCEPTION, FAILURE, RETRY, SUCCESS, WARNINGS
from twisted.internet import defer, endpoints, error, protocol, task
from twisted.python.failure import Failure

from master.inventory import Host, Inventory, Pool, load_inventory
from master.settings import Provisioning, Settings
from steps.cobbler import CobblerClient, CobblerError
from steps.ipmi import BmcTarget, IpmiClient, IpmiError

_clients: dict[tuple, IpmiClient] = {}

# after an interrupt, rounds of power-off calls (each with the client's own retries) per host
ABORT_POWER_OFF_ROUNDS = 3


def ipmi_client(p: Provisioning) -> IpmiClient:
    """One IpmiClient per master process and settings, so the concurrency bound is global."""
    key = (p.ipmi_timeout, p.ipmi_retries, p.ipmi_concurrency, p.ipmi_backoff, p.ipmi_session_reuse)
    if key not in _clients:
        _clients[key] = IpmiClient(
            timeout=p.ipmi_timeout,
            retries=p.ipmi_retries,
            concurrency=p.ipmi_concurrency,
            backoff=p.ipmi_backoff,
            reuse=p.ipmi_session_reuse,
        )
    return _clients[key]


class InfraFailure(Exception):
    """A lab failure (not the commit's fault); the message names host/BMC/Cobbler and the reason."""


class _Interrupted(Exception):
    """The step was interrupted (build stopped or worker lost): start no new lab work."""


async def ssh_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to host:port succeeds (the host's sshd is up)."""
    from twisted.internet import reactor

    ep = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    try:
        proto = await ep.connect(protocol.Factory.forProtocol(protocol.Protocol))
    except Exception:
        return False
    proto.transport.loseConnection()
    return True


class _PoolStep(buildstep.BuildStep):
    """Shared plumbing: the build's pool, secrets, scrubbed logs."""

    def __init__(self, inventory: Inventory, provisioning: Provisioning, **kwargs):
        self.inventory = inventory
        self.provisioning = provisioning
        super().__init__(**kwargs)
        self._logs: dict[str, object] = {}

    def _pool(self) -> Pool:
        name = self.getProperty("pool")
        if not name:
            raise InfraFailure("the build has no 'pool' property (which pool should be provisioned?)")
        try:
            return self.inventory.pool(name)
        except KeyError as e:
            raise InfraFailure(str(e.args[0])) from None

    async def _secret(self, name: str, what: str) -> str:
        try:
            value = await self.build.render(util.Secret(name))
        except Exception:
            raise InfraFailure(f"{what}: secret {name!r} is missing from the secrets directory") from None
        if value is None:
            raise InfraFailure(f"{what}: secret {name!r} is missing from the secrets directory")
        return value

    async def _targets(self, pool: Pool) -> list[BmcTarget]:
        out = []
        for h in pool.hosts:
            pw = await self._secret(h.bmc.password_secret, f"host {h.name}: BMC {h.bmc.endpoint}")
            out.append(BmcTarget(h.name, h.bmc.address, h.bmc.port, h.bmc.username, pw))
        return out

    def _clean(self, text: str) -> str:
        return self.build.properties.cleanupTextFromSecrets(text)

    async def _log(self, name: str, text: str) -> None:
        if name not in self._logs:
            self._logs[name] = await self.addLog(name)
        stamp = time.strftime("%H:%M:%S")
        await self._logs[name].addStdout(self._clean(f"{stamp} {text}\n"))

    async def _finish_logs(self) -> None:
        for log in self._logs.values():
            await log.finish()


class ProvisionPool(_PoolStep):
    """Install every host of the build's pool from scratch (Cobbler + PXE + IPMI)."""

    name = "provision"

    def __init__(self, inventory: Inventory, provisioning: Provisioning, **kwargs):
        kwargs.setdefault("haltOnFailure", True)
        super().__init__(inventory, provisioning, **kwargs)
        self.total = 0
        self.installed = 0
        self.phase = "starting"
        self._interrupt_reason: str | Failure | None = None
        self._waits: set[defer.Deferred] = set()

    def getCurrentSummary(self):
        if self.total and self.phase == "installing":
            return {"step": f"installed {self.installed}/{self.total} hosts"}
        return {"step": f"provisioning: {self.phase}"}

    def getResultSummary(self):
        failure = self.getProperty("infra_failure") if self.results not in (SUCCESS, None) else None
        if failure:
            return {
                "step": self._clean(f"infrastructure failure: {failure}")[:240],
                "build": "infrastructure failure",
            }
        return {"step": f"installed {self.installed}/{self.total} hosts"}

    def _phase(self, phase: str) -> None:
        self.phase = phase
        self.updateSummary()

    def interrupt(self, reason):
        """Build stopped or worker lost: stop starting lab work and cancel the waits; ``run``
        then powers the pool off before the step ends."""
        if self._interrupt_reason is None:
            self._interrupt_reason = reason
            for d in list(self._waits):
                d.cancel()
        return super().interrupt(reason)

    def _check(self) -> None:
        if self._interrupt_reason is not None:
            raise _Interrupted()

    async def _wait(self, aw: Awaitable):
        """Await ``aw`` (a Cobbler call or a sleep) so that ``interrupt()`` can cancel it."""
        self._check()
        d = defer.ensureDeferred(aw) if not isinstance(aw, defer.Deferred) else aw
        self._waits.add(d)
        try:
            return await d
        except defer.CancelledError:
            self._check()
            raise
        finally:
            self._waits.discard(d)

    async def run(self):
        cobbler: CobblerClient | None = None
        pool: Pool | None = None
        targets: list[BmcTarget] = []
        try:
            pool = self._pool()
            self.total = len(pool.hosts)
            cpw = await self._secret(pool.cobbler.password_secret, f"Cobbler at {pool.cobbler.url}")
            targets = await self._targets(pool)
            cobbler = CobblerClient(
                pool.cobbler.url, pool.cobbler.username, cpw, timeout=self.provisioning.cobbler_timeout
            )
            await self._power_off_if_running(targets)
            await self._register(cobbler, pool)
            await self._boot(pool, targets)
            await self._wait_installs(cobbler, pool)
            self._check()
        except _Interrupted:
            return await self._abort(targets)
        except (InfraFailure, IpmiError, CobblerError) as e:
            if self._interrupt_reason is not None:
                return await self._abort(targets)
            reason = self._clean(str(e))
            self.setProperty("infra_failure", reason, "ProvisionPool")
            await self._log("provision", f"INFRASTRUCTURE FAILURE: {reason}")
            if cobbler is not None and pool is not None and not self.provisioning.keep_hosts_on_failure:
                await self._unregister(cobbler, pool)
            await self._finish_logs()
            return FAILURE
        await self._finish_logs()
        return SUCCESS

    async def _abort(self, targets: list[BmcTarget]) -> int:
        """After an interrupt: power every host of the pool off (best effort), end RETRY/CANCELLED."""
        why = self._interrupt_reason
        lost = isinstance(why, Failure) and why.check(error.ConnectionLost)
        what = "the worker was lost" if lost else f"the build was stopped ({why})"
        self._phase("interrupted: powering the pool off")
        await self._log("provision", f"INTERRUPTED: {what}; powering the pool's hosts off")
        ipmi = ipmi_client(self.provisioning)

        async def off(t: BmcTarget) -> None:
            # a busy BMC (an IPMI call of the interrupted boot still in flight) or a loaded
            # master can time out one call: the pool must end up off, so try a few rounds
            for attempt in range(1, ABORT_POWER_OFF_ROUNDS + 1):
                try:
                    await ipmi.power_off(t)
                    await self._log("provision", f"host {t.host}: BMC {t.endpoint}: powered off")
                    return
                except IpmiError as e:
                    await self._log(
                        "provision",
                        f"could not power {t.host} off (round {attempt}/{ABORT_POWER_OFF_ROUNDS}): {e}",
                    )

        await _all([lambda t=t: off(t) for t in targets], fail_fast=False)
        await self._finish_logs()
        return RETRY if lost else CANCELLED

    async def _power_off_if_running(self, targets: list[BmcTarget]) -> None:
        """If any host is on (a pool left running by a dead build), power every host off first."""
        self._phase("checking power states")
        ipmi = ipmi_client(self.provisioning)
        states = await _gather([lambda t=t: ipmi.power_status(t) for t in targets])
        running = [t.host for t, st in zip(targets, states, strict=True) if st == "on"]
        if not running:
            return
        self._check()
        self._phase("powering off a running pool")
        await self._log(
            "provision",
            f"hosts already powered on: {', '.join(running)} (left running by an earlier build?);"
            " powering every host of the pool off first",
        )

        async def off(t: BmcTarget) -> None:
            await ipmi.power_off(t)
            await self._log(t.host, f"BMC {t.endpoint}: powered off")

        await _all([lambda t=t: off(t) for t in targets])

    async def _register(self, cobbler: CobblerClient, pool: Pool) -> None:
        self._phase("registering Cobbler systems")
        await self._log("provision", f"Cobbler {pool.cobbler.url}: login as {pool.cobbler.username}")
        await self._wait(cobbler.login())
        names = await self._wait(cobbler.register_pool(pool))
        await self._log("provision", f"registered systems: {', '.join(names)}")
        stale = await self._wait(cobbler.remove_stale(pool, names))
        if stale:
            await self._log("provision", f"removed stale systems: {', '.join(stale)}")
        # only this pool's systems: a full sync would empty pxelinux.cfg under another pool
        # sharing this Cobbler server, whose hosts may be PXE-booting right now
        await self._wait(cobbler.sync_systems(names))
        await self._log(
            "provision", f"Cobbler sync of the pool's {len(names)} systems done (PXE configs written)"
        )

    async def _unregister(self, cobbler: CobblerClient, pool: Pool) -> None:
        try:
            removed = await cobbler.remove_pool(pool)
            await self._log(
                "provision", f"removed the pool's Cobbler systems: {', '.join(removed) or 'none'}"
            )
        except CobblerError as e:
            await self._log("provision", f"could not remove the pool's Cobbler systems: {e}")

    async def _boot(self, pool: Pool, targets: list[BmcTarget]) -> None:
        self._phase("PXE boot")
        ipmi = ipmi_client(self.provisioning)

        async def one(t: BmcTarget) -> None:
            self._check()
            await self._log(t.host, f"BMC {t.endpoint}: next boot from PXE")
            await ipmi.set_bootdev(t, "pxe")
            self._check()
            await self._log(t.host, f"BMC {t.endpoint}: power cycle")
            await ipmi.power_cycle(t)
            await self._log(t.host, "powered on; installing")

        await _all([lambda t=t: one(t) for t in targets])

    async def _wait_installs(self, cobbler: CobblerClient, pool: Pool) -> None:
        self._phase("installing")
        timeout = self.provisioning.install_timeout
        interval = self.provisioning.install_poll_interval
        from twisted.internet import reactor

        async def one(h: Host) -> None:
            deadline = time.monotonic() + timeout
            called_back = False
            while time.monotonic() < deadline:
                if not called_back:
                    called_back = not await self._wait(cobbler.get_netboot(h.name))
                    if called_back:
                        await self._log(h.name, "installer called back (Cobbler netboot flag cleared)")
                if called_back and await self._wait(ssh_reachable(h.ip, h.ssh_port)):
                    self.installed += 1
                    self.updateSummary()
                    await self._log(h.name, f"installed: SSH {h.ip}:{h.ssh_port} answers")
                    return
                await self._wait(task.deferLater(reactor, interval))
            if not called_back:
                why = "the installer never called back (Cobbler netboot flag still set)"
            else:
                why = f"installed, but SSH {h.ip}:{h.ssh_port} does not answer"
            raise InfraFailure(
                f"host {h.name} (BMC {h.bmc.endpoint}): install did not finish within {timeout} s: {why}"
            )

        await _all([lambda h=h: one(h) for h in pool.hosts])


class TeardownPool(_PoolStep):
    """Power the pool's hosts off at the end of a build (kept on after a failure if configured)."""

    name = "teardown"

    def __init__(self, inventory: Inventory, provisioning: Provisioning, **kwargs):
        kwargs.setdefault("alwaysRun", True)
        kwargs.setdefault("flunkOnFailure", False)
        kwargs.setdefault("warnOnFailure", True)
        super().__init__(inventory, provisioning, **kwargs)
        self.summary = "powering off"

    def getCurrentSummary(self):
        return {"step": self.summary}

    def getResultSummary(self):
        return {"step": self._clean(self.summary)[:240]}

    async def run(self):
        try:
            pool = self._pool()
            failed = self.build.results in (FAILURE, EXCEPTION)
            if failed and self.provisioning.keep_hosts_on_failure:
                self.summary = f"kept {pool.name}'s hosts on for debugging (keep_hosts_on_failure)"
                await self._log("teardown", self.summary)
                await self._finish_logs()
                return SUCCESS
            targets = await self._targets(pool)
            ipmi = ipmi_client(self.provisioning)

            async def off(t: BmcTarget) -> None:
                await ipmi.power_off(t)
                await self._log("teardown", f"host {t.host}: BMC {t.endpoint}: powered off")

            await _all([lambda t=t: off(t) for t in targets], fail_fast=False)
            self.summary = f"powered off {len(targets)} hosts"
        except (InfraFailure, IpmiError) as e:
            self.summary = f"teardown failed: {e}"
            await self._log("teardown", self.summary)
            await self._finish_logs()
            return WARNINGS
        await self._finish_logs()
        return SUCCESS


async def _gather(jobs: list[Callable[[], Awaitable]], fail_fast: bool = True) -> list:
    """Run jobs concurrently, return their results; raise the first error (cancelling the others
    when ``fail_fast``, except after an interrupt: jobs then stop by themselves, and an IPMI call
    already sent must finish before the pool is powered off)."""
    ds = [defer.ensureDeferred(j()) for j in jobs]
    try:
        return await defer.gatherResults(ds, consumeErrors=True)
    except defer.FirstError as e:
        if fail_fast and not isinstance(e.subFailure.value, _Interrupted):
            for d in ds:
                d.cancel()
        await defer.DeferredList(ds, consumeErrors=True)
        raise e.subFailure.value from None


async def _all(jobs: list[Callable[[], Awaitable[None]]], fail_fast: bool = True) -> None:
    """Run jobs concurrently; raise the first error (see ``_gather``)."""
    await _gather(jobs, fail_fast)


def provision_steps(settings: Settings, inventory: Inventory) -> list:
    """The steps that install the build's pool; empty when provisioning is off."""
    if not settings.provisioning.active(settings.bvt.mode):
        return []
    return [ProvisionPool(inventory, settings.provisioning)]


def teardown_steps(settings: Settings, inventory: Inventory | None = None) -> list:
    """The last step of a BVT build: power the pool off (alwaysRun); empty when provisioning is off."""
    if not settings.provisioning.active(settings.bvt.mode):
        return []
    return [TeardownPool(inventory or load_inventory(settings.inventory_path), settings.provisioning)]


__all__ = [
    "InfraFailure",
    "ProvisionPool",
    "TeardownPool",
    "provision_steps",
    "ssh_reachable",
    "teardown_steps",
]
