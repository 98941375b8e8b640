"""Search a running deployment's outputs for secret values: every build log, twistd.log, the REST API.

``scan(deployment, secrets)`` reads (anonymously and as admin) every build with its
properties, every step, every log of every step (raw, via ``/api/v2/logs/<id>/raw``), test
result sets and results, workers, changes, change sources, schedulers, force schedulers,
builders, build requests, buildsets and masters, the gate dashboard's pages (the gate,
``status.json``, the tests), plus the master's ``twistd.log``, and returns every place a
secret value occurs. Zero hits is the requirement.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field

from tests.support.procs import Deployment

COLLECTIONS = (
    "builds?property=*",
    "workers",
    "changes",
    "changesources",
    "schedulers",
    "forceschedulers",
    "builders",
    "buildrequests",
    "buildsets",
    "masters",
    "projects",
)

DASHBOARD_PAGES = ("index.html", "status.json", "tests.html")  # below plugins/wsgi_dashboards/gate/


@dataclass
class ScanReport:
    """What was searched and where secrets were found (``hits``: (secret name, where))."""

    documents: int = 0
    build_logs: int = 0
    bytes_scanned: int = 0
    hits: list[tuple[str, str]] = field(default_factory=list)


def _get(dep: Deployment, path: str, user: str | None, base: str = "api/v2/") -> bytes:
    req = urllib.request.Request(dep.master.url + base + path)
    with dep.master.opener(user).open(req, timeout=20) as r:
        return r.read()


def scan(
    dep: Deployment, secrets: dict[str, str], users: tuple[str | None, ...] = (None, "admin")
) -> ScanReport:
    """Every REST document, build log and twistd.log of ``dep`` searched for each secret value."""
    report = ScanReport()
    values = {name: v for name, v in secrets.items() if v}
    if not values:
        raise ValueError("no secret values to search for")

    def search(where: str, data: bytes) -> None:
        report.documents += 1
        report.bytes_scanned += len(data)
        text = data.decode("utf-8", errors="replace")
        for name, value in values.items():
            if value in text:
                report.hits.append((name, where))

    for user in users:
        who = user or "anonymous"
        for path in COLLECTIONS:
            search(f"{who}: /api/v2/{path}", _get(dep, path, user))
        for page in DASHBOARD_PAGES:
            base = "plugins/wsgi_dashboards/gate/"
            search(f"{who}: /{base}{page}", _get(dep, page, user, base))
        builds = json.loads(_get(dep, "builds", user))["builds"]
        for b in builds:
            bid = b["buildid"]
            for sub in ("steps", "test_result_sets", "properties", "changes"):
                data = _get(dep, f"builds/{bid}/{sub}", user)
                search(f"{who}: /api/v2/builds/{bid}/{sub}", data)
                if sub == "test_result_sets":
                    for rs in json.loads(data)["test_result_sets"]:
                        rid = rs["test_result_setid"]
                        search(
                            f"{who}: test results {rid}", _get(dep, f"test_result_sets/{rid}/results", user)
                        )
            for step in json.loads(_get(dep, f"builds/{bid}/steps", user))["steps"]:
                logs = _get(dep, f"steps/{step['stepid']}/logs", user)
                search(f"{who}: build {bid} step {step['name']} logs", logs)
                for log in json.loads(logs)["logs"]:
                    raw = _get(dep, f"logs/{log['logid']}/raw", user)
                    report.build_logs += 1
                    search(f"{who}: build {bid} step {step['name']} log {log['name']} (raw)", raw)
    search("twistd.log", (dep.master.basedir / "twistd.log").read_bytes())
    return report
