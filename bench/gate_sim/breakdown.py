"""``python -m bench.gate_sim.breakdown``: where qacloud's pool time and blocked time go at one rate.

Three tables over seeds (docs/performance.md "Where the time goes"):

* pool-hours and runs per commit by run kind and outcome (a cancelled run counts until its
  cancel, and as one run);
* per blamed culprit, the phases of the span it blocks: culprit lands -> the first failing
  run containing it ends (*detect*) -> blame (*hunt*) -> revert pushed -> the revert is
  promoted (*unblock*), split by whether the revert's tree still held another culprit
  (*chained*);
* the commits making the p95 latency: how many culprit spans overlap their wait.

``--option KEY=VALUE`` overrides a ``PolicyConfig`` field (ablations, e.g.
``detect_behind_block=false``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from typing import Any

from bench.gate_sim import policies
from bench.gate_sim.metrics import quantile
from bench.gate_sim.sim import REVERT_PREFIX, Scenario, Simulator
from bench.gate_sim.trace import HOUR, generate


def breakdown(
    rate: float, seeds: int, commits: int = 1000, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Simulate qacloud at ``rate`` over seeds 1..``seeds``; return the three breakdowns."""
    sc = Scenario()
    pool_h: dict[str, float] = {}
    n_runs: dict[str, int] = {}
    phases: dict[str, list[float]] = {"detect": [], "hunt": [], "unblock": [], "unblock_chained": []}
    overlap: dict[int, int] = {}
    p95s, medians = [], []
    for seed in range(1, seeds + 1):
        trace = generate(commits, rate, 0.05, seed, False)
        sim = Simulator(trace, sc, policies.qacloud_policy(sc, trace, **(options or {})), seed, "qacloud")
        res = sim.run()
        if res.error or res.violations:
            raise RuntimeError(f"seed {seed}: {res.error or res.violations[0]}")
        for r in sim.runs.values():
            cancelled = r.cancelled_at is not None
            key = f"{r.kind} cancelled" if cancelled else f"{r.kind} {r.outcome}"
            pool_h[key] = pool_h.get(key, 0.0) + ((r.cancelled_at if cancelled else r.end) - r.start)
            n_runs[key] = n_runs.get(key, 0) + 1
        spans = []
        for c in trace:
            if not c.is_culprit:
                continue
            landed = c.arrival_ts / HOUR
            fix = sim.fixed_at.get(c.id)
            fix_sha = sim.staging[fix] if fix is not None else None
            unblocked = sim.promoted_at.get(fix_sha, res.end_time) if fix_sha else res.end_time
            spans.append((landed, unblocked))
            if c.id not in sim.blamed or c.id not in sim.first_fail or not fix_sha:
                continue
            if not fix_sha.startswith(REVERT_PREFIX):
                continue
            detected, blamed = sim.first_fail[c.id][0], sim.blamed[c.id]
            phases["detect"].append(detected - landed)
            phases["hunt"].append(blamed - detected)
            chained = bool(sim._culprits_in(fix_sha))
            phases["unblock_chained" if chained else "unblock"].append(unblocked - sim.arrival[fix_sha])
        p95 = quantile(res.latencies, 0.95)
        p95s.append(p95)
        medians.append(quantile(res.latencies, 0.5))
        for c in trace:
            if c.is_culprit or c.id not in sim.promoted_at:
                continue
            arrived, promoted = c.arrival_ts / HOUR, sim.promoted_at[c.id]
            if promoted - arrived >= p95:
                n = sum(1 for landed, unblocked in spans if landed < promoted and unblocked >= arrived)
                overlap[n] = overlap.get(n, 0) + 1
    total = sum(pool_h.values())
    return {
        "rate": rate,
        "seeds": seeds,
        "commits": commits,
        "p95": statistics.fmean(p95s),
        "median": statistics.fmean(medians),
        "pool_hours_per_commit": {k: v / (seeds * commits) for k, v in pool_h.items()},
        "pool_hours_total_per_commit": total / (seeds * commits),
        "runs_per_commit": {k: v / (seeds * commits) for k, v in n_runs.items()},
        "runs_total_per_commit": sum(n_runs.values()) / (seeds * commits),
        "phases": {
            k: {"n": len(v), "mean": statistics.fmean(v) if v else math.nan, "p90": quantile(v, 0.9)}
            for k, v in phases.items()
        },
        "p95_commits_by_overlapping_spans": dict(sorted(overlap.items())),
    }


def to_markdown(b: dict[str, Any]) -> str:
    """The breakdown as Markdown tables."""
    lines = [
        f"qacloud at {b['rate']:g}/h, {b['seeds']} seeds × {b['commits']} commits: p95 {b['p95']:.1f} h,"
        f" median {b['median']:.2f} h, {b['pool_hours_total_per_commit']:.3f} pool-h/commit,"
        f" {b['runs_total_per_commit']:.3f} runs/commit",
        "",
        "| run kind, outcome | pool-h/commit | share | runs/commit |",
        "|---|---|---|---|",
    ]
    total = b["pool_hours_total_per_commit"]
    for k, v in sorted(b["pool_hours_per_commit"].items(), key=lambda kv: -kv[1]):
        if v >= 0.0005:
            n = b["runs_per_commit"].get(k, 0.0)
            lines.append(f"| {k} | {v:.3f} | {100 * v / total:.0f} % | {n:.3f} |")
    lines += ["", "| phase per blamed culprit | n | mean h | p90 h |", "|---|---|---|---|"]
    for k, v in b["phases"].items():
        lines.append(f"| {k} | {v['n']} | {v['mean']:.2f} | {v['p90']:.2f} |")
    over = b["p95_commits_by_overlapping_spans"]
    lines += ["", "p95 commits by culprit spans overlapping their wait: " + str(over)]
    return "\n".join(lines)


def policy_option(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` for a ``PolicyConfig`` field, VALUE parsed as the field's declared
    type (bool: true/false; int; float; str); an unknown field or a bad value is an
    ``argparse`` error naming it (``--option``, ``compare --a/--b``)."""
    key, sep, value = text.partition("=")
    fields = {f.name: str(f.type) for f in dataclasses.fields(policies_config())}
    if not sep or key not in fields:
        what = f"unknown PolicyConfig field {key!r}" if sep else f"{text!r} is not FIELD=VALUE"
        raise argparse.ArgumentTypeError(f"{what}; known: {', '.join(fields)}")
    kind = fields[key]
    if kind == "bool":
        if value.lower() not in ("true", "false"):
            raise argparse.ArgumentTypeError(f"{key}: want true or false, got {value!r}")
        return key, value.lower() == "true"
    if kind in ("int", "float"):
        try:
            return key, int(value) if kind == "int" else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key}: want {kind}, got {value!r}") from None
    return key, value


def policies_config():
    """The ``PolicyConfig`` class (imported late: the bench runs without Buildbot)."""
    from schedulers.policy import PolicyConfig

    return PolicyConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gate_sim.breakdown", description=__doc__)
    ap.add_argument("--rate", type=float, default=3.5)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--commits", type=int, default=1000)
    ap.add_argument("--option", type=policy_option, action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    print(to_markdown(breakdown(args.rate, args.seeds, args.commits, dict(args.option))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
