"""All schedulers of the master: the gate, try, and admin-only force buttons."""

from __future__ import annotations

from buildbot.plugins import schedulers as bb_schedulers
from buildbot.plugins import util

from master.builders import GATE_BUILDER, POOL_SERVICE_BUILDER, TRY_BUILDER
from master.inventory import Inventory
from master.settings import Settings
from schedulers.trying import try_schedulers


def force_schedulers(settings: Settings, inventory: Inventory) -> list:
    pool_choice = util.ChoiceStringParameter(
        name="pool", label="Pool", choices=["", *inventory.pool_names], default=""
    )
    return [
        bb_schedulers.ForceScheduler(
            name="force",
            builderNames=[GATE_BUILDER, TRY_BUILDER],
            buttonName="Run a BVT",
            label="Run a BVT on a revision (not promoted)",
            codebases=[
                util.CodebaseParameter(
                    "",
                    branch=util.FixedParameter(name="branch", default=settings.repository.staging),
                    revision=util.StringParameter(name="revision", default=""),
                    repository=util.FixedParameter(name="repository", default=settings.repo_url),
                    project=util.FixedParameter(name="project", default=""),
                )
            ],
            properties=[pool_choice],
        )
    ]


def schedulers(settings: Settings, inventory: Inventory, builder_configs: list) -> list:
    return [
        *force_schedulers(settings, inventory),
        gate_scheduler(settings, inventory),
        pool_service_scheduler(inventory),
        *try_schedulers(settings, [TRY_BUILDER]),
    ]


def gate_scheduler(settings: Settings, inventory: Inventory):
    """The gate (schedulers/gate.py): promotes passing staging commits, bisects failures."""
    from schedulers.gate import GATE_SCHEDULER, GateScheduler

    repo = settings.repository
    return GateScheduler(
        name=GATE_SCHEDULER,
        builderNames=[GATE_BUILDER],
        repo_url=settings.repo_url,
        master_branch=repo.master,
        staging_branch=repo.staging,
        pools=list(inventory.pool_names),
        pool_workers={p.name: p.worker for p in inventory.pools},
        gate=settings.gate,
        fetch_interval=repo.poll_interval,
        quarantine_after=settings.pools.quarantine_after,
        offline_after=settings.pools.offline_after,
        preempt_try=settings.try_.enabled and settings.try_.preempt,
        health_builders=[GATE_BUILDER, TRY_BUILDER],
    )


def pool_service_scheduler(inventory: Inventory):
    """Admins and QA return a quarantined pool to service (``qacloud pool release``)."""
    return bb_schedulers.ForceScheduler(
        name="pool-service",
        builderNames=[POOL_SERVICE_BUILDER],
        buttonName="Return pool to service",
        label="Return a quarantined pool to service",
        codebases=[util.CodebaseParameter("", hide=True)],
        properties=[
            util.ChoiceStringParameter(
                name="pool", label="Pool", choices=list(inventory.pool_names), required=True
            )
        ],
    )
