"""Pool reuse: decide, early in a BVT build, whether the pool may skip its re-install.

With ``provisioning.reuse_pool`` on, :class:`DecidePoolReuse` asks the data API for the
previous finished BVT build (``gate-bvt`` or ``try-bvt``) on this build's worker — one worker
per pool, so the pool's previous run — and sets the build property ``reuse_pool=True`` only
when that build passed (SUCCESS) without an ``infra_failure``: the pool is then known to be
installed and healthy. Steps wrapped with :func:`unless_reused` (ProvisionPool, the storage
wipe, the zone deployment) are skipped; puppet still re-deploys the management server and
agents from this commit's packages. Anything else — no previous run, a failure, an
infrastructure failure, an exception, the setting off — means a full install (the default).
"""

from __future__ import annotations

from collections.abc import Iterable

from buildbot.data import resultspec
from buildbot.process import buildstep
from buildbot.process.results import SUCCESS

BVT_BUILDERS = ("gate-bvt", "try-bvt")  # master/builders.py GATE_BUILDER, TRY_BUILDER


def not_reused(step: buildstep.BuildStep) -> bool:
    """``doStepIf`` of the steps a reused pool skips."""
    return not step.getProperty("reuse_pool")


def unless_reused(step: buildstep.BuildStep) -> buildstep.BuildStep:
    """The same configured step, skipped when the build reuses its pool.

    Rebuilt from the step's recorded constructor arguments (config-time steps are
    immutable), so steps built elsewhere (steps/provision.py) need no change.
    """
    factory = step.get_step_factory()
    return factory.step_class(*factory.args, **{**factory.kwargs, "doStepIf": not_reused})


def unless_passed(step: buildstep.BuildStep) -> buildstep.BuildStep:
    """The teardown step, skipped when the build has passed so far: with reuse on, a pool
    that passed stays powered on and installed for the next run to reuse."""
    factory = step.get_step_factory()
    return factory.step_class(*factory.args, **{**factory.kwargs, "doStepIf": _not_passed})


def _not_passed(step: buildstep.BuildStep) -> bool:
    return step.build.results != SUCCESS


async def previous_bvt_build(master, buildid: int, builders: Iterable[str] = BVT_BUILDERS) -> dict | None:
    """The newest finished BVT build on the same worker as build ``buildid``, before it."""
    current = await master.data.get(("builds", buildid))
    if current is None or current.get("workerid") is None:
        return None
    wanted = set(builders)
    builderids = {b["builderid"] for b in await master.data.get(("builders",)) if b["name"] in wanted}
    rows = await master.data.get(
        ("workers", current["workerid"], "builds"),
        filters=[resultspec.Filter("complete", "eq", [True])],
    )
    earlier = [b for b in rows if b["builderid"] in builderids and b["buildid"] < buildid]
    return max(earlier, key=lambda b: b["buildid"], default=None)


class DecidePoolReuse(buildstep.BuildStep):
    """Sets ``reuse_pool`` from the previous BVT run on this pool (see module docstring)."""

    name = "pool-reuse"

    def __init__(self, builders: Iterable[str] = BVT_BUILDERS, **kwargs):
        self.builders = tuple(builders)
        super().__init__(**kwargs)

    async def _decide(self) -> tuple[bool, str]:
        prev = await previous_bvt_build(self.master, self.build.buildid, self.builders)
        if prev is None:
            return False, "no previous BVT run on this pool: full install"
        what = f"previous run (build {prev['buildid']})"
        props = await self.master.data.get(("builds", prev["buildid"], "properties")) or {}
        pool = self.getProperty("pool")
        prev_pool = props.get("pool", (None, None))[0]
        if pool and prev_pool and prev_pool != pool:
            return False, f"{what} was on pool {prev_pool}, not {pool}: full install"
        if props.get("infra_failure", (None, None))[0]:
            return False, f"{what} had an infrastructure failure: full install"
        if prev["results"] != SUCCESS:
            return False, f"{what} did not pass: full install"
        return True, f"{what} passed: reusing the pool"

    async def run(self) -> int:
        try:
            reuse, why = await self._decide()
        except Exception as e:  # the data API failed: never risk a dirty pool
            reuse, why = False, f"cannot look up the previous run ({e.__class__.__name__}): full install"
        self.setProperty("reuse_pool", reuse, self.name)
        self.descriptionDone = [why]
        return SUCCESS


__all__ = [
    "BVT_BUILDERS",
    "DecidePoolReuse",
    "not_reused",
    "previous_bvt_build",
    "unless_passed",
    "unless_reused",
]
