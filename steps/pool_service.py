"""The ``pool-service`` step: return a quarantined pool to service (admins and QA only).

Runs on the master's local worker; the work happens in the master: the gate scheduler
releases the pool from quarantine (``workers/health.py``) and feeds ``PoolAvailable``.
"""

from __future__ import annotations

from buildbot.process import buildstep
from buildbot.process.results import FAILURE, SUCCESS

GATE_SCHEDULER = "gate"


class ReleasePool(buildstep.BuildStep):
    """Release the pool named by the ``pool`` property."""

    name = "release-pool"

    async def run(self) -> int:
        pool = self.getProperty("pool") or ""
        gate = self.master.scheduler_manager.namedServices.get(GATE_SCHEDULER)
        if not pool:
            await self.addCompleteLog("error", "no pool given (the 'pool' parameter is required)\n")
            self.descriptionDone = ["no pool given"]
            return FAILURE
        if gate is None or not getattr(gate, "active", False):
            await self.addCompleteLog("error", "the gate scheduler is not active on this master\n")
            self.descriptionDone = ["gate not active"]
            return FAILURE
        try:
            was = await gate.release_pool(pool)
        except (ValueError, RuntimeError) as e:
            await self.addCompleteLog("error", f"cannot release pool {pool}: {e}\n")
            self.descriptionDone = [f"cannot release {pool}"]
            return FAILURE
        # builds already waiting for this pool (e.g. the retry of a lost build) must not wait
        # for the next unrelated request to be distributed
        self.master.botmaster.maybeStartBuildsForAllBuilders()
        text = f"pool {pool} returned to service" if was else f"pool {pool} was not quarantined"
        await self.addCompleteLog("result", text + "\n")
        self.descriptionDone = [text]
        return SUCCESS
