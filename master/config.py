"""Build ``BuildmasterConfig`` from validated settings and the lab inventory.

``master.cfg`` calls :func:`build_config` and nothing else. Code changes need a master
restart (``buildbot restart``); ``buildbot reconfig`` re-reads settings and inventory (data)
but does not reload qacloud's modules (see docs/operations.md).
"""

from __future__ import annotations

from datetime import timedelta

from buildbot.plugins import changes, secrets, util, worker

from master import builders as bld
from master.inventory import Inventory, load_inventory
from master.settings import Settings, load_settings
from master.www import www_config

LOCAL_WORKER = "qacloud-local"  # runs master-side jobs: promotion pushes (no lab access)


def workers(settings: Settings, inventory: Inventory) -> list:
    out = [
        worker.Worker(
            p.worker,
            util.Secret(p.worker_secret),
            max_builds=1,  # a pool runs one BVT at a time, whichever builder asks
            properties={"pool": p.name},
        )
        for p in inventory.pools
    ]
    out.append(worker.LocalWorker(LOCAL_WORKER))
    return out


def change_sources(settings: Settings) -> list:
    repo = settings.repository
    return [
        changes.GitPoller(
            repourl=settings.repo_url,
            branches=[repo.staging],
            pollInterval=repo.poll_interval,
            pollAtLaunch=True,
            name="staging",
            workdir="gitpoller-staging",
        )
    ]


def build_config(settings: Settings, inventory: Inventory | None = None) -> dict:
    """The whole Buildbot configuration dictionary."""
    inventory = inventory or load_inventory(settings.inventory_path)
    from master import reporters
    from schedulers import factory as sched_factory

    builder_configs = bld.builders(settings, inventory, local_worker=LOCAL_WORKER)
    c: dict = {
        "title": settings.title,
        "titleURL": settings.www.buildbot_url,
        "buildbotURL": settings.www.buildbot_url,
        "db": {"db_url": settings.database},
        "protocols": {"pb": {"port": settings.workers.strport}},
        "secretsProviders": [secrets.SecretInAFile(dirname=str(settings.secrets_path))],
        "workers": workers(settings, inventory),
        "builders": builder_configs,
        "change_source": change_sources(settings),
        "schedulers": sched_factory.schedulers(settings, inventory, builder_configs),
        "services": reporters.services(settings, inventory),
        # every revision must be built: never merge build requests (notes/buildbot.md §0.5)
        "collapseRequests": False,
        "prioritizeBuilders": bld.prioritize_builders,
        "www": {
            **www_config(settings, dashboards=_dashboards(settings, inventory)),
            "change_hook_dialects": _webhook_dialects(settings),  # /change_hook/qacloud
        },
        "buildbotNetUsageData": None,
        "configurators": [util.JanitorConfigurator(logHorizon=timedelta(weeks=8), hour=3)],
    }
    return c


def _webhook_dialects(settings: Settings) -> dict:
    from schedulers import webhook

    return webhook.dialects(settings)


def _dashboards(settings: Settings, inventory: Inventory) -> list[dict]:
    from master import dashboard

    return dashboard.dashboards(settings, inventory)


def load(path: str | None = None) -> dict:
    """Entry point of master.cfg: settings from --settings/$QACLOUD_SETTINGS/demo."""
    return build_config(load_settings(path))
