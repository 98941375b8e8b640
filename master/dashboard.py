"""The gate dashboard: a ``wsgi_dashboards`` page inside the Buildbot web UI.

Everything shown comes from the master itself: the gate scheduler's persisted view (object
state ``("gate", "GateScheduler")``, key ``"view"``; schema at the bottom of
``schedulers/events.py``) and the Buildbot data API (builds, test results). Nothing extra runs.

Pages (under ``/plugins/wsgi_dashboards/gate/``):

- ``index.html``: the gate (a fragment the web UI embeds at ``/#/gate``);
- ``tests.html``: recent tests with their flake rates;
- ``test/<name>.html``: one test's results across recent builds and its flake rate;
- ``status.json``: what the gate is doing and what needs a human, for scripts and monitoring
  (``qacloud gate status``; ``gate_status`` below).
"""

from __future__ import annotations

import datetime
import json
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from buildbot.data import resultspec
from buildbot.process.results import Results
from twisted.internet import defer, reactor
from twisted.internet.threads import blockingCallFromThread

from master.builders import GATE_BUILDER, TRY_BUILDER
from master.inventory import Inventory
from master.settings import Settings
from schedulers.events import POOL_CAUSES

DASHBOARD_NAME = "gate"
VIEW_OBJECT = ("gate", "GateScheduler")
VIEW_KEY = "view"
RECENT_BUILDS = 300
RECENT_RESULT_SETS = 200
RECENT_ALERTS = 20
HALT_ALERTS = ("master-moved", "staging-rewritten", "promotion-rejected", "master-broken")
HUMAN_ALERTS = ("still-failing", "culprit-masked", "inherited-failure")
BUILD_PROPERTIES = ["gate_run_id", "gate_kind", "got_revision", "failed_tests", "infra_failure", "pool"]

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).resolve().parent / "templates")),
    autoescape=True,
    undefined=jinja2.ChainableUndefined,  # a partial view renders, it does not crash
)


# ---------------------------------------------------------------- data (runs in the reactor)


async def load_view(master: Any) -> dict | None:
    """The gate's last persisted view, or None before the gate ever ran."""
    objectid = await master.db.state.getObjectId(*VIEW_OBJECT)
    return await master.db.state.getState(objectid, VIEW_KEY, None)


async def recent_builds(master: Any, limit: int = RECENT_BUILDS) -> list[dict]:
    """Recent builds (newest first) with the properties the gate and the dashboard use."""
    spec = resultspec.ResultSpec(
        order=["-buildid"],
        limit=limit,
        properties=[resultspec.Property(b"property", "eq", BUILD_PROPERTIES)],
    )
    builds = await master.data.get_with_resultspec(("builds",), spec)
    builders = {b["builderid"]: b["name"] for b in await master.data.get(("builders",))}
    out = []
    for b in builds:
        props = {k: v[0] for k, v in (b.get("properties") or {}).items()}
        out.append({**b, "props": props, "buildername": builders.get(b["builderid"], "?")})
    return out


async def _revision(master: Any, buildid: int, cache: dict[int, dict]) -> dict:
    if buildid not in cache:
        spec = resultspec.ResultSpec(properties=[resultspec.Property(b"property", "eq", ["got_revision"])])
        build = await master.data.get_with_resultspec(("builds", buildid), spec) or {}
        props = build.get("properties") or {}
        cache[buildid] = {"number": build.get("number"), "revision": (props.get("got_revision") or [None])[0]}
    return cache[buildid]


async def test_runs(master: Any, test_name: str, limit: int = RECENT_RESULT_SETS) -> list[dict]:
    """One test's results across the most recent test result sets, newest first."""
    sets = await master.data.get(("test_result_sets",), order=["-test_result_setid"], limit=limit)
    cache: dict[int, dict] = {}
    out = []
    for s in sets:
        rows = await master.data.get(
            ("test_result_sets", s["test_result_setid"], "results"),
            filters=[resultspec.Filter("test_name", "eq", [test_name])],
        )
        for r in rows:
            build = await _revision(master, s["buildid"], cache)
            out.append(
                {
                    "buildid": s["buildid"],
                    "builderid": s["builderid"],
                    "number": build["number"],
                    "revision": build["revision"],
                    "passed": _passed(s["category"], r["value"]),
                    "value": r["value"],
                    "duration_ns": r["duration_ns"],
                }
            )
    return out


async def recent_tests(master: Any, limit: int = 50) -> list[dict]:
    """Tests of the most recent result sets: name, runs, failures and flake rate."""
    sets = await master.data.get(("test_result_sets",), order=["-test_result_setid"], limit=limit)
    cache: dict[int, dict] = {}
    by_test: dict[str, list[dict]] = defaultdict(list)
    for s in sets:
        build = await _revision(master, s["buildid"], cache)
        for r in await master.data.get(("test_result_sets", s["test_result_setid"], "results")):
            by_test[r["test_name"] or "?"].append(
                {"passed": _passed(s["category"], r["value"]), "revision": build["revision"]}
            )
    out = [{"name": name, **history_stats(runs)} for name, runs in by_test.items()]
    return sorted(out, key=lambda t: (-t["flake_rate"], -t["failed"], t["name"]))


def _passed(category: str, value: str) -> bool:
    if category == "fail_only":
        return False
    if category == "pass_only":
        return True
    return str(value).strip().lower() in {"1", "true", "pass", "passed", "success"}


# ---------------------------------------------------------------- pure views


def history_stats(runs: list[dict]) -> dict:
    """Runs, failures and flake rate of one test.

    A failure is flaky when the same revision also passed (it did not reproduce); the flake
    rate is flaky failures / runs.
    """
    passed_at = {r["revision"] for r in runs if r["passed"] and r["revision"] is not None}
    failed = [r for r in runs if not r["passed"]]
    flaky = [r for r in failed if r["revision"] is not None and r["revision"] in passed_at]
    return {
        "runs": len(runs),
        "failed": len(failed),
        "flaky": len(flaky),
        "flake_rate": (len(flaky) / len(runs)) if runs else 0.0,
    }


@dataclass
class GatePage:
    """Everything the gate page shows, derived from the view and recent builds."""

    view: dict
    builds: list[dict]
    pool_names: list[str]
    run_builds: dict[str, dict] = field(default_factory=dict)
    revision_builds: dict[str, list[dict]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for b in self.builds:
            run_id = b["props"].get("gate_run_id")
            if run_id:
                self.run_builds.setdefault(str(run_id), b)
            rev = b["props"].get("got_revision")
            if rev and b["buildername"] == GATE_BUILDER:
                self.revision_builds.setdefault(rev, []).append(b)

    def builds_for(self, commit: str, run_ids: list[str] | tuple = ()) -> list[dict]:
        """The builds of these runs; else the gate builds of this commit that failed."""
        found = [self.run_builds[r] for r in run_ids if r in self.run_builds]
        if found:
            return found
        return [b for b in self.revision_builds.get(commit, []) if b.get("results") not in (0, None)]

    def candidates(self) -> list[dict]:
        interval = self.view.get("interval") or {}
        shas = [c["commit"] for c in self.view.get("candidates", [])]
        lo = shas.index(interval["good"]) if interval.get("good") in shas else -1
        hi = shas.index(interval["bad"]) if interval.get("bad") in shas else None
        results = self.view.get("results") or {}
        out = []
        for i, c in enumerate(self.view.get("candidates", [])):
            in_interval = bool(interval) and hi is not None and lo < i <= hi
            out.append({**c, "results": results.get(c["commit"], []), "in_interval": in_interval})
        return out

    def pools(self) -> list[dict]:
        view_pools = self.view.get("pools") or {}
        names = list(dict.fromkeys([*self.pool_names, *view_pools]))
        out = []
        for name in names:
            p = view_pools.get(name) or {"state": "unknown"}
            state, reason = p.get("state") or "unknown", p.get("reason")
            out.append(
                {
                    "name": name,
                    "state": state,
                    "label": _pool_label(state, p.get("cause")),
                    "run_id": p.get("run_id"),
                    "commit": p.get("commit"),
                    "reason": reason,
                }
            )
        return out

    def status(self) -> dict:
        """One line saying what the gate is doing now, and what needs a human (``attention``):
        quarantined or offline pools, and while commits are held behind a culprit the alert saying a
        revert or fix did not repair it."""
        v = self.view
        cands = v.get("candidates") or []
        alerts = v.get("alerts") or []
        runs = v.get("runs") or []
        waiting = sum(1 for c in cands if c.get("status") != "promoted")
        attention: list[str] = []
        if v.get("halted"):
            last = next((a for a in reversed(alerts) if a.get("kind") in HALT_ALERTS), None)
            state = "halted"
            text = "Promotion stopped: " + (last["message"] if last else "master moved outside the gate")
        elif v.get("blocked"):
            b = v["blocked"]
            tests = ", ".join(b.get("tests") or []) or "its tests"
            state = "blocked"
            text = (
                f"Blocked: {waiting} staging commit(s) wait behind culprit {_short(b.get('from'))}"
                f" (failing {tests}) until a revert or fix passes"
            )
            on_staging = {c.get("commit") for c in cands if c.get("status") != "promoted"}
            # (an alert naming a commit since promoted belongs to an earlier, resolved block)
            told = [a for a in alerts if a.get("kind") in HUMAN_ALERTS and a.get("commit") in on_staging]
            if told:
                attention.append(f"{told[-1]['kind']}: {told[-1]['message']}")
        elif v.get("interval"):
            iv = v["interval"]
            state = "bisecting"
            text = (
                f"Bisecting: the first failing commit after {_short(iv.get('good')) or 'master'} up to"
                f" {_short(iv.get('bad'))}, {len(runs)} run(s) in flight"
            )
        elif runs:
            state = "testing"
            text = f"Testing: {len(runs)} run(s) in flight, {waiting} commit(s) not on master yet"
        elif waiting:
            state, text = "waiting", f"Waiting for a free pool: {waiting} commit(s) not on master yet"
        else:
            state, text = "green", "Green: master is the staging tip"
        for p in self.pools():
            if p["state"] == "unavailable" and p["label"] != "lent":
                why = p["reason"] or ""
                if p["label"] == "quarantined":
                    why = why.removeprefix("quarantined: ")  # (the label says it)
                why = why or "no reason recorded"
                attention.append(f"pool {p['name']} {p['label']}: {why}")
        return {"state": state, "text": text, "attention": attention}

    def alerts(self) -> list[dict]:
        """The latest ``RECENT_ALERTS`` alerts, newest first, with their time (UTC) when known."""
        out = []
        for a in list(reversed(self.view.get("alerts") or []))[:RECENT_ALERTS]:
            at, when = a.get("at"), ""
            if isinstance(at, (int, float)) and at > 1e9:  # the scheduler's clock: epoch seconds
                when = datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
            out.append({**a, "when": when})
        return out

    def summary(self) -> dict:
        """``status.json``: the status line, what needs a human, the heads, the commits not on
        master yet, every pool and the latest alerts."""
        v = self.view
        keys = ("name", "state", "label", "commit", "run_id", "reason")
        return {
            **self.status(),
            "master": v.get("master"),
            "staging": v.get("staging"),
            "waiting": [c["commit"] for c in v.get("candidates") or [] if c.get("status") != "promoted"],
            "pools": [{k: p[k] for k in keys} for p in self.pools()],
            "alerts": self.alerts(),
        }

    def report(self) -> dict:
        """Good commits (promoted, or ready once the culprit is reverted) and buggy ones."""
        culprits = {c["commit"] for c in self.view.get("culprits", [])}
        good, buggy = [], []
        for c in self.view.get("candidates", []):
            if c["status"] == "promoted":
                good.append({**c, "why": "promoted"})
            elif c["status"] == "passed":
                why = "ready once the culprit is reverted" if culprits else "passed, promotion pending"
                good.append({**c, "why": why})
            elif c["status"] == "culprit" or c["commit"] in culprits:
                buggy.append(c)
        promoted = [p["commit"] for p in self.view.get("promotions", []) if p.get("ok")]
        listed = {c["commit"] for c in good}
        good += [{"commit": sha, "author": "", "why": "promoted"} for sha in promoted if sha not in listed]
        return {"good": good, "buggy": buggy}


def _pool_label(state: str, cause: str | None) -> str:
    """What a pool is: its state, or for an unavailable one the gate's ``cause`` (quarantined,
    offline, lent to a try build, or unavailable, e.g. gone from the inventory)."""
    if state != "unavailable":
        return state
    return cause if cause in POOL_CAUSES else "unavailable"


def _short(sha: str | None) -> str:
    return (sha or "")[:12]


def build_href(build: dict) -> str:
    return f"#/builders/{build['builderid']}/builds/{build['number']}"


def test_href(name: str) -> str:
    return f"plugins/wsgi_dashboards/{DASHBOARD_NAME}/test/{urllib.parse.quote(name, safe='')}.html"


def render_gate(view: dict | None, builds: list[dict], pool_names: list[str]) -> str:
    """The gate page (an HTML fragment)."""
    if view is None:
        return _env.get_template("gate_empty.html").render(
            pools=pool_names, try_builds=[b for b in builds if b["buildername"] == TRY_BUILDER][:10]
        )
    page = GatePage(view, builds, pool_names)
    return _env.get_template("gate.html").render(
        view=view,
        page=page,
        candidates=page.candidates(),
        pools=page.pools(),
        report=page.report(),
        status=page.status(),
        alerts=page.alerts(),
        try_builds=[b for b in builds if b["buildername"] == TRY_BUILDER][:10],
        build_href=build_href,
        test_href=test_href,
        result_name=lambda r: Results[r] if isinstance(r, int) and 0 <= r < len(Results) else "running",
        short=_short,
    )


def gate_status(view: dict | None, pool_names: list[str]) -> dict:
    """``status.json`` (``GatePage.summary``); before the gate's first decision, state
    ``starting`` with the inventory's pools (state unknown)."""
    if view is None:
        text = "Starting: the gate has not decided anything yet"
        return GatePage({}, [], pool_names).summary() | {"state": "starting", "text": text, "attention": []}
    return GatePage(view, [], pool_names).summary()


def render_test(name: str, runs: list[dict], gate_flakes: list[dict]) -> str:
    """One test's history page (a full HTML page)."""
    return _env.get_template("test.html").render(
        name=name,
        runs=runs,
        stats=history_stats(runs),
        gate_flakes=[f for f in gate_flakes if name in f.get("tests", [])],
        short=_short,
    )


def render_tests(tests: list[dict]) -> str:
    return _env.get_template("tests.html").render(tests=tests, test_href=test_href)


# ---------------------------------------------------------------- the WSGI app


class GateDashboard:
    """WSGI app; ``buildbot_api`` is set by the wsgi_dashboards plugin at configuration time."""

    buildbot_api: Any = None

    def __init__(self, pool_names: list[str]):
        self.pool_names = list(pool_names)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        master = self.buildbot_api.master
        return blockingCallFromThread(reactor, lambda: defer.ensureDeferred(fn(master, *args)))

    def page(self, path: str) -> tuple[str, str]:
        """(status, html or JSON) for a path below the dashboard."""
        path = path.strip("/") or "index.html"
        if path == "status.json":
            return "200 OK", json.dumps(gate_status(self._call(load_view), self.pool_names), indent=1)
        if path == "index.html":
            view = self._call(load_view)
            return "200 OK", render_gate(view, self._call(recent_builds), self.pool_names)
        if path == "tests.html":
            return "200 OK", render_tests(self._call(recent_tests))
        if path.startswith("test/") and path.endswith(".html"):
            name = urllib.parse.unquote(path[len("test/") : -len(".html")])
            view = self._call(load_view) or {}
            return "200 OK", render_test(name, self._call(test_runs, name), view.get("flakes", []))
        return "404 Not Found", f"<p>no dashboard page {path!r}</p>"

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        is_json = path.endswith(".json")
        try:
            status, text = self.page(path)
        except Exception as e:  # show the reason, not a bare 500
            status, why = "500 Internal Server Error", f"the gate dashboard failed: {type(e).__name__}: {e}"
            text = json.dumps({"error": why}) if is_json else f"<p>{jinja2.utils.markupsafe.escape(why)}</p>"
        body = text.encode()
        kind = "application/json; charset=utf-8" if is_json else "text/html; charset=utf-8"
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
        return [body]


def dashboards(settings: Settings, inventory: Inventory) -> list[dict]:
    """wsgi_dashboards entries: the gate page."""
    return [
        {
            "name": DASHBOARD_NAME,
            "caption": "Gate",
            "app": GateDashboard(inventory.pool_names),
            "order": 1,
            "icon": "flag",
        }
    ]
