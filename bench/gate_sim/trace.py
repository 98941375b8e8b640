"""Commit traces: JSONL replay and a generator (Poisson arrivals, Bernoulli culprits).

One commit per line: ``{"id": str, "arrival_ts": seconds, "is_culprit": bool}`` plus an
optional ``"fixes": id`` (this commit repairs that earlier culprit). Bad lines are reported
with the file, line and field, all at once.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

HOUR = 3600.0
WORKDAY = (9, 18)  # busy hours of the optional workday profile
WORKDAY_SHARE = 0.8  # share of the day's commits that land in the busy hours


class TraceError(ValueError):
    """A trace file is malformed; the message names every bad line and field."""


@dataclass(frozen=True)
class Commit:
    id: str
    arrival_ts: float
    is_culprit: bool = False
    fixes: str | None = None


def _check_line(data: object, where: str, seen: dict[str, int], problems: list[str]) -> Commit | None:
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a JSON object, got {type(data).__name__}")
        return None
    bad = len(problems)
    unknown = sorted(set(data) - {"id", "arrival_ts", "is_culprit", "fixes"})
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(unknown)}")
    cid = data.get("id")
    if not isinstance(cid, str) or not cid:
        problems.append(f"{where}: field 'id' must be a non-empty string, got {cid!r}")
    elif "@" in cid or cid.startswith("revert-"):
        problems.append(f"{where}: field 'id' {cid!r}: '@' and the 'revert-' prefix are reserved for reverts")
    elif cid in seen:
        problems.append(f"{where}: field 'id' {cid!r} duplicates line {seen[cid]}")
    ts = data.get("arrival_ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) or ts < 0:
        problems.append(f"{where}: field 'arrival_ts' must be a number of seconds >= 0, got {ts!r}")
    culprit = data.get("is_culprit")
    if not isinstance(culprit, bool):
        problems.append(f"{where}: field 'is_culprit' must be true or false, got {culprit!r}")
    fixes = data.get("fixes")
    if fixes is not None and (not isinstance(fixes, str) or fixes not in seen):
        problems.append(f"{where}: field 'fixes' must name an earlier commit id, got {fixes!r}")
    if len(problems) > bad:
        return None
    return Commit(cid, float(ts), culprit, fixes)


def parse_trace(text: str, source: str = "<trace>") -> list[Commit]:
    """Parse JSONL text; raise :class:`TraceError` naming every bad line."""
    commits: list[Commit] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    last_ts = -1.0
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        commit = _check_line(data, where, seen, problems)
        if commit is None:
            if isinstance(data, dict) and isinstance(data.get("id"), str):
                seen.setdefault(data["id"], n)
            continue
        if commit.arrival_ts < last_ts:
            problems.append(f"{where}: field 'arrival_ts' {commit.arrival_ts} is before the previous line's")
        seen[commit.id] = n
        last_ts = commit.arrival_ts
        commits.append(commit)
    if problems:
        raise TraceError("invalid trace:\n  " + "\n  ".join(problems))
    if not commits:
        raise TraceError(f"invalid trace: {source} holds no commits")
    return commits


def load_trace(path: str | Path) -> list[Commit]:
    """Read a JSONL trace file (errors name the file and line)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TraceError(f"cannot read trace {p}: {e.strerror}") from None
    return parse_trace(text, str(p))


def dump_trace(commits: list[Commit]) -> str:
    """The JSONL text of ``commits`` (round-trips through :func:`parse_trace`)."""
    lines = []
    for c in commits:
        d: dict = {"id": c.id, "arrival_ts": round(c.arrival_ts, 3), "is_culprit": c.is_culprit}
        if c.fixes:
            d["fixes"] = c.fixes
        lines.append(json.dumps(d))
    return "\n".join(lines) + "\n"


def generate(
    n: int, rate_per_hour: float, culprit_rate: float, seed: int, workday: bool = False
) -> list[Commit]:
    """``n`` commits with Poisson arrivals at ``rate_per_hour`` and Bernoulli culprits.

    With ``workday``, the same daily mean is kept but 80 % of arrivals fall in 09:00-18:00.
    """
    if n <= 0 or rate_per_hour <= 0 or not 0 <= culprit_rate < 1:
        raise ValueError(
            f"generate: need n > 0, rate > 0, 0 <= culprit rate < 1"
            f" (got {n}, {rate_per_hour}, {culprit_rate})"
        )
    # the seed string spells numbers as floats: 3 and 3.0 give the same trace
    rate_per_hour, culprit_rate = float(rate_per_hour), float(culprit_rate)
    rng = random.Random(f"trace:{seed}:{n}:{rate_per_hour}:{culprit_rate}:{workday}")
    busy = WORKDAY[1] - WORKDAY[0]
    peak = rate_per_hour * 24 * WORKDAY_SHARE / busy
    low = rate_per_hour * 24 * (1 - WORKDAY_SHARE) / (24 - busy)
    top = max(peak, low) if workday else rate_per_hour
    t = 0.0
    commits = []
    while len(commits) < n:
        t += rng.expovariate(top / HOUR)  # thinning for the workday profile
        if workday:
            hour = (t / HOUR) % 24
            rate = peak if WORKDAY[0] <= hour < WORKDAY[1] else low
            if rng.random() >= rate / top:
                continue
        commits.append(Commit(f"c{len(commits):05d}", t, rng.random() < culprit_rate))
    return commits
