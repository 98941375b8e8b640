"""All schedulers of the master: the gate, try, and admin-only force buttons."""

from __future__ import annotations

from buildbot.plugins import schedulers as bb_schedulers
from buildbot.plugins import util

from master.builders import GATE_BUILDER, PROMOTE_BUILDER, TRY_BUILDER
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
    promote = bb_schedulers.Triggerable(name="promote", builderNames=[PROMOTE_BUILDER])
    return [*force_schedulers(settings, inventory), promote, *try_schedulers(settings, [TRY_BUILDER])]
