"""Builders: gate BVT runs, try runs and returning pools to service.

Every pool's worker can serve both BVT builders; a worker runs one build at a time
(``max_builds=1``), so a pool is never shared. Gate builds go before try builds
(:func:`prioritize_builders`).
"""

from __future__ import annotations

from buildbot.plugins import steps, util

from master.build import BvtBuild
from master.inventory import Inventory
from master.settings import Settings
from steps.marvin import bvt_test_step
from workers import health as pool_health
from workers.selection import make_next_worker

GATE_BUILDER = "gate-bvt"
TRY_BUILDER = "try-bvt"
POOL_SERVICE_BUILDER = "pool-service"  # releases a quarantined pool (runs on the local worker)

# lower number = served first when pools free up
BUILDER_PRIORITY = {POOL_SERVICE_BUILDER: 0, GATE_BUILDER: 1, TRY_BUILDER: 2}


def checkout_step(settings: Settings) -> steps.Git:
    return steps.Git(
        name="checkout",
        repourl=settings.repo_url,
        mode="full",
        method="clobber",
        haltOnFailure=True,
        # a try job's patch is applied here; a patch that does not apply fails the build
        # before any host is provisioned
    )


def bvt_factory(settings: Settings, inventory: Inventory) -> util.BuildFactory:
    """checkout, then the BVT pipeline for the configured mode."""
    from steps.provision import provision_steps, teardown_steps

    f = util.BuildFactory()
    f.buildClass = BvtBuild  # master/build.py: a worker lost while the build starts -> RETRY
    f.addStep(checkout_step(settings))
    provision = provision_steps(settings, inventory)  # empty unless provisioning is active
    teardown = teardown_steps(settings, inventory)  # alwaysRun: powers the pool off
    if provision and settings.provisioning.reuse_pool:  # steps/reuse.py
        from steps.reuse import DecidePoolReuse, unless_passed, unless_reused

        f.addStep(DecidePoolReuse())  # sets reuse_pool when the pool's previous run passed
        provision = [unless_reused(s) for s in provision]
        teardown = [unless_passed(s) for s in teardown]  # a passing pool stays up for reuse
    f.addSteps(provision)
    if settings.bvt.mode == "cloudstack":
        from steps.cloudstack import cloudstack_steps

        f.addSteps(cloudstack_steps(settings, inventory))
    f.addStep(bvt_test_step(settings))  # steps/marvin.py: RunMarvin, or the demo's tests
    f.addSteps(teardown)
    return f


def pool_service_factory() -> util.BuildFactory:
    from steps.pool_service import ReleasePool

    return util.BuildFactory([ReleasePool()])


def builders(settings: Settings, inventory: Inventory, local_worker: str) -> list[util.BuilderConfig]:
    pool_workers = [p.worker for p in inventory.pools]
    next_worker = make_next_worker(is_quarantined=pool_health.is_quarantined)
    return [
        util.BuilderConfig(
            name=GATE_BUILDER,
            workernames=pool_workers,
            factory=bvt_factory(settings, inventory),
            nextWorker=next_worker,
            collapseRequests=False,
            tags=["gate"],
            description="BVT of one staging commit on a freshly installed pool",
        ),
        util.BuilderConfig(
            name=TRY_BUILDER,
            workernames=pool_workers,
            factory=bvt_factory(settings, inventory),
            # only pools the gate left idle: gate runs go first, also against a try build
            # that would start in the moment between a gate build's end and the gate's next run
            nextWorker=make_next_worker(
                is_quarantined=pool_health.is_quarantined, may_take=pool_health.may_lend
            ),
            collapseRequests=False,
            tags=["try"],
            description="A developer's patch through the same BVT; never promoted",
        ),
        util.BuilderConfig(
            name=POOL_SERVICE_BUILDER,
            workernames=[local_worker],
            factory=pool_service_factory(),
            collapseRequests=False,
            tags=["lab"],
            description="Returns a quarantined pool to service (admins and QA)",
        ),
    ]


def prioritize_builders(buildmaster, builders_list):
    return sorted(builders_list, key=lambda b: BUILDER_PRIORITY.get(b.name, 99))
