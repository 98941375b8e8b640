"""What the demo's terminal says: the gate's work as it happens, and the closing summary.

Everything comes from the running system, never from the demo's own expectations: the
master's REST API (BVT builds, their pool, kind, outcome and failing tests), the gate's
persisted view (object state ``("gate", "GateScheduler")["view"]`` in the master's SQLite
database, read-only), the gate's ``gate:`` lines in ``twistd.log``, and ``master`` in the
bare repository (a promotion is a real fast-forward there).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from schedulers.outcome import classify

GATE_BUILDER = "gate-bvt"
# the gate's own log lines worth echoing (START and run outcomes are narrated from the builds)
_GATE_WORDS = {"PROMOTE", "BLAME", "FLAKE", "ALERT", "QUARANTINE", "CANCEL", "REVERT"}
_VIEW_SQL = (
    "SELECT s.value_json FROM object_state s JOIN objects o ON o.id = s.objectid "
    "WHERE o.name = 'gate' AND o.class_name = 'GateScheduler' AND s.name = 'view'"
)


def rest(base_url: str, path: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(base_url.rstrip("/") + "/api/v2/" + path, timeout=timeout) as r:
        return json.loads(r.read())


def gate_view(db: Path) -> dict | None:
    """The gate's persisted view, or None before the gate saved one."""
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
    try:
        row = con.execute(_VIEW_SQL).fetchone()
    except sqlite3.OperationalError:
        return None  # tables not created yet, or the database is busy
    finally:
        con.close()
    return json.loads(row[0]) if row else None


def gate_builds(base_url: str) -> list[dict]:
    """The gate's BVT builds with their properties (oldest first)."""
    data = rest(base_url, f"builders/{GATE_BUILDER}/builds?property=*&order=buildid")
    return data.get("builds", [])


def _prop(build: dict, name: str, default=None):
    v = (build.get("properties") or {}).get(name)
    return v[0] if isinstance(v, (list, tuple)) and v else default


def short(sha: str | None) -> str:
    return (sha or "?")[:8]


@dataclass
class Summary:
    promoted: list[str]
    culprits: list[dict]
    runs: int
    pool_hours: float
    wall: float


@dataclass
class Watcher:
    """Polls the system and narrates what changed; ``poll()`` returns the new lines."""

    base_url: str
    master_dir: Path
    origin: Path
    describe: Callable[[str], str] = short
    say: Callable[[str], None] = print
    master_sha: str | None = None
    seen_started: set[int] = field(default_factory=set)
    seen_finished: set[int] = field(default_factory=set)
    culprits: list[dict] = field(default_factory=list)
    flakes: int = 0
    alerts: int = 0
    promoted: list[str] = field(default_factory=list)
    bisect_round: int = 0
    _log_pos: int = 0
    _bisect_in_flight: set[int] = field(default_factory=set)
    builds: list[dict] = field(default_factory=list)
    view: dict | None = None
    t0: float = field(default_factory=time.time)

    def _stamp(self, text: str) -> None:
        self.say(f"[{time.time() - self.t0:6.1f}s] {text}")

    def poll(self) -> None:
        self._gate_log()
        self._builds()
        self._master()
        self._view()

    # -- sources ---------------------------------------------------------------------------
    def _gate_log(self) -> None:
        log = self.master_dir / "twistd.log"
        if not log.exists():
            return
        with log.open("rb") as f:
            f.seek(self._log_pos)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._log_pos += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            i = line.find("gate: ")
            if i >= 0 and line[i + 6 :].split(" ", 1)[0] in _GATE_WORDS:
                self._stamp(f"  | {line[i:]}")

    def _builds(self) -> None:
        try:
            self.builds = gate_builds(self.base_url)
        except OSError:
            return
        for b in self.builds:
            bid, kind = b["buildid"], _prop(b, "gate_kind", "?")
            sha, pool = _prop(b, "revision"), _prop(b, "pool", "?")
            tests = _prop(b, "bvt_tests")
            if bid not in self.seen_started:
                self.seen_started.add(bid)
                if kind == "bisect":
                    if not self._bisect_in_flight:
                        self.bisect_round += 1
                        self._stamp(f"bisect round {self.bisect_round}:")
                    self._bisect_in_flight.add(bid)
                only = f" (only {', '.join(tests)})" if tests else ""
                self._stamp(f"BVT #{bid} [{kind}] on {pool}: testing {self.describe(sha)}{only}")
            if b.get("complete") and bid not in self.seen_finished:
                self.seen_finished.add(bid)
                self._bisect_in_flight.discard(bid)
                c = classify(b.get("results"), b.get("properties"))
                took = (b.get("complete_at") or 0) - (b.get("started_at") or 0)
                detail = {
                    "pass": "PASS",
                    "fail": f"FAIL ({', '.join(c.failed_tests) or 'tests failed'})",
                    "inconclusive": f"INCONCLUSIVE ({c.reason}) — not the commit's fault",
                }[c.outcome]
                self._stamp(f"BVT #{bid} [{kind}] on {pool}: {detail} in {took:.0f}s — {self.describe(sha)}")

    def _master(self) -> None:
        p = subprocess.run(
            ["git", "rev-parse", "master"], cwd=self.origin, capture_output=True, text=True, check=False
        )
        sha = p.stdout.strip()
        if p.returncode != 0 or sha == self.master_sha:
            return
        if self.master_sha is not None:
            out = subprocess.run(
                ["git", "rev-list", "--reverse", f"{self.master_sha}..{sha}"],
                cwd=self.origin,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            self.promoted.extend(out)
            self._stamp(f"PROMOTED: master fast-forwarded by {len(out)} commit(s) to {self.describe(sha)}")
            for c in out:
                self.say(f"{'':11}+ {self.describe(c)}")
        self.master_sha = sha

    def _view(self) -> None:
        view = gate_view(self.master_dir / "state.sqlite")
        if view is None:
            return
        self.view = view
        for c in view.get("culprits") or []:
            if c not in self.culprits:
                self.culprits.append(c)
                tests = ", ".join(c.get("failed_tests") or ()) or "the suite"
                self._stamp(
                    f"CULPRIT confirmed and blamed: {self.describe(c.get('commit'))} by "
                    f"{c.get('author')} — breaks {tests} (evidence: {len(c.get('run_ids') or ())} runs)"
                )
        flakes = view.get("flakes") or []
        for f in flakes[self.flakes :]:
            self._stamp(
                f"flake recorded (not blamed): {', '.join(f.get('tests') or ())} at {short(f.get('commit'))}"
            )
        self.flakes = len(flakes)
        alerts = view.get("alerts") or []
        for a in alerts[self.alerts :]:
            self._stamp(f"gate alert [{a.get('kind')}]: {a.get('message')}")
        self.alerts = len(alerts)

    # -- the end ---------------------------------------------------------------------------
    def summary(self, wall: float) -> Summary:
        secs = sum(
            (b.get("complete_at") or time.time()) - b["started_at"]
            for b in self.builds
            if b.get("started_at")
        )
        return Summary(self.promoted, self.culprits, len(self.builds), secs / 3600, wall)
