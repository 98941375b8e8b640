"""``python -m bench.gate_sim.stress``: the gate under every configuration switch and hard scenarios.

The benchmark's default scenario exercises the default ``PolicyConfig``; the bugs found in
rounds 9 and 10 (docs/performance.md) hid in the other corners: whole-suite bisection, more
confirmations, the gate's own reverts, late reverts, flaky and broken infrastructure, many
culprits, one or many pools. This runs a grid of configurations (each a ``PolicyConfig``
change from the shipped default) x scenarios (each a ``Scenario`` change and a culprit rate)
x arrival rates x seeds, checks every promotion (the simulator does) and prints the cells
where something went wrong:

* ``breakage``, ``illegal`` promotions or simulator ``violations`` -- never allowed (exit 1);
* ``unpromoted`` commits at the end of a trace, not explained by a blamed revert (a revert
  blamed on flakes is a false rejection the simulated developers never answer: nobody reverts
  a revert, so the commits above it wait; docs/performance.md) -- a stall (exit 1);
* false rejections above 0.1 % of innocent commits (the issue's bound; reported, exit 1).

A scenario past the gate's capacity (``--include-overload``: culprit rate 0.15 at 3/h with
15 % inconclusive runs, beyond the information limit of ~2.3/h) never drains; its unpromoted
commits are reported, not failed.
"""

from __future__ import annotations

import argparse
import collections
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench.gate_sim import policies
from bench.gate_sim.sim import Scenario, Simulator
from bench.gate_sim.trace import generate

CONFIGS: list[dict[str, Any]] = [
    {},
    {"bisect_failed_tests_only": False},
    {"confirmations": 2},
    {"speculate": False},
    {"culprit_action": "revert"},
    {"cancel_useless_runs": False},
    {"finish_tip_runs": False},
    {"hold_hopeless_tips": False},
    {"overlap_confirmation": False},
    {"detect_behind_block": False},
    {"batch_load": 0.0},
    {"culprit_action": "revert", "bisect_failed_tests_only": False},
]

# (name, Scenario changes, culprit rate)
SCENARIOS: list[tuple[str, dict[str, Any], float]] = [
    ("default", {}, 0.05),
    ("flaky 10 %", {"flake_rate": 0.1}, 0.05),
    ("culprits 15 %", {}, 0.15),
    ("flaky 5 %, culprits 10 %, infra 5 %", {"flake_rate": 0.05, "infra_rate": 0.05}, 0.1),
    ("1 pool", {"pools": 1}, 0.05),
    ("6 pools", {"pools": 6}, 0.05),
    ("reverts after 4 h", {"revert_delay_hours": 4.0}, 0.15),
    ("fixes after 12 h, flaky 5 %", {"fix_delay_hours": 12.0, "flake_rate": 0.05}, 0.05),
    ("full runs only (setup 1.0)", {"setup_fraction": 1.0}, 0.05),
    ("BVT 0.5-6 h, flaky 5 %", {"bvt_hours": (0.5, 6.0), "flake_rate": 0.05}, 0.15),
    ("infra 15 %", {"infra_rate": 0.15}, 0.05),
    ("flakes per test, flaky 10 %", {"flake_model": "test", "flake_rate": 0.1}, 0.05),
]
OVERLOAD = ("overload: culprits 15 %, infra 15 %", {"infra_rate": 0.15}, 0.15)
FALSE_REJECTION_BOUND = 0.001
SEEDS, COMMITS, RATES = 15, 400, (1.0, 3.0)  # the grid's defaults (here and in ``make bench``)


def run_cell(job: tuple[int, tuple[str, dict[str, Any], float], float, int, int]) -> dict[str, Any]:
    """One configuration x scenario x rate x seed."""
    ci, (_, changes, culprit_rate), rate, seed, commits = job
    sc = Scenario(**changes)
    trace = generate(commits, float(rate), culprit_rate, seed, False)
    policy = policies.qacloud_policy(sc, trace, **CONFIGS[ci])
    res = Simulator(trace, sc, policy, seed, "qacloud").run()
    return {
        "breakage": res.master_breakage,
        "illegal": res.illegal_promotions,
        "violations": len(res.violations) + (1 if res.error else 0),
        "unpromoted": res.unpromoted,
        "reverts_blamed": res.reverts_blamed,
        "false_rejections": res.false_rejections,
        "innocent": res.innocent,
        "first": res.error or (res.violations[0] if res.violations else ""),
    }


def stress(
    seeds: int = SEEDS,
    commits: int = COMMITS,
    rates: tuple[float, ...] = RATES,
    configs: list[int] | None = None,
    scenarios: list[tuple[str, dict[str, Any], float]] | None = None,
    jobs: int | None = None,
) -> list[dict[str, Any]]:
    """Every cell's totals over the seeds, with ``problems`` (empty when the cell is clean)."""
    configs = list(range(len(CONFIGS))) if configs is None else configs
    scenarios = SCENARIOS if scenarios is None else scenarios
    work = [
        (ci, sc, rate, seed, commits)
        for ci in configs
        for sc in scenarios
        for rate in rates
        for seed in range(1, seeds + 1)
    ]
    if jobs == 1:
        rows = [run_cell(w) for w in work]
    else:
        with ProcessPoolExecutor(jobs or os.cpu_count() or 1) as ex:
            rows = list(ex.map(run_cell, work, chunksize=8))
    cells: dict[tuple, dict[str, Any]] = {}
    for (ci, sc, rate, seed, _), row in zip(work, rows, strict=True):
        c = cells.setdefault(
            (ci, sc[0], rate), {"config": CONFIGS[ci], "scenario": sc[0], "rate": rate, "seeds": []}
        )
        for k in ("breakage", "illegal", "violations", "unpromoted", "false_rejections", "innocent"):
            c[k] = c.get(k, 0) + row[k]
        stalled = row["unpromoted"] and not row["reverts_blamed"]
        if row["breakage"] or row["illegal"] or row["violations"] or stalled:
            c["seeds"].append((seed, row["unpromoted"], row["first"][:100]))
    out = []
    for c in cells.values():
        problems = []
        if c["breakage"] or c["illegal"] or c["violations"]:
            problems.append("unsafe")
        if c["seeds"] and not (c["breakage"] or c["illegal"] or c["violations"]):
            problems.append("stall")
        if c["false_rejections"] > FALSE_REJECTION_BOUND * max(c["innocent"], 1):
            problems.append("false rejections")
        c["problems"] = problems
        out.append(c)
    return out


def grid(
    seeds: int = SEEDS,
    commits: int = COMMITS,
    rates: tuple[float, ...] = RATES,
    include_overload: bool = False,
    jobs: int | None = None,
) -> list[dict[str, Any]]:
    """The whole grid (``stress``), plus the overload scenario whose only problem can be "unsafe"."""
    cells = stress(seeds, commits, rates, jobs=jobs)
    if include_overload:
        for c in stress(seeds, commits, (3.0,), [0], [OVERLOAD], jobs):
            c["problems"] = [p for p in c["problems"] if p == "unsafe"]
            c["overload"] = True
            cells.append(c)
    return cells


def summary(cells: list[dict[str, Any]], seeds: int, commits: int, rates: tuple[float, ...]) -> str:
    """One line: what ran and how many cells had problems, by kind."""
    bad = [c for c in cells if c["problems"]]
    counts = collections.Counter(p for c in bad for p in c["problems"])
    listed = ", ".join(f"{r:g}" for r in rates)
    return (
        f"{len(CONFIGS)} configurations x {len(SCENARIOS)} scenarios x rates {listed} x {seeds}"
        f" seeds x {commits} commits: {len(cells)} cells, {len(bad)} with problems"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})" if counts else "")
    )


def cell_line(c: dict[str, Any]) -> str:
    share = 100 * c["false_rejections"] / max(c["innocent"], 1)
    verdict = ", ".join(c["problems"]) or "ok"
    return (
        f"- {c['config'] or 'default'} | {c['scenario']} | {c['rate']:g}/h: {verdict};"
        f" breakage {c['breakage']}, illegal {c['illegal']}, violations {c['violations']},"
        f" unpromoted {c['unpromoted']}, false rejections {share:.3f} %; seeds {c['seeds'][:4]}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gate_sim.stress", description=__doc__)
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--commits", type=int, default=COMMITS)
    ap.add_argument(
        "--rates", default=",".join(f"{r:g}" for r in RATES), help="comma-separated commits per hour"
    )
    ap.add_argument("--include-overload", action="store_true")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        rates = tuple(float(x) for x in args.rates.split(",") if x.strip())
    except ValueError:
        ap.error(f"--rates: not a comma-separated list of numbers: {args.rates!r}")
    if not rates or args.seeds < 1 or args.commits < 1:
        ap.error("--rates needs at least one rate; --seeds and --commits must be at least 1")
    cells = grid(args.seeds, args.commits, rates, args.include_overload, args.jobs)
    bad = [c for c in cells if c["problems"]]
    print(summary(cells, args.seeds, args.commits, rates))
    for c in cells:
        if c["problems"] or c.get("overload"):
            print(cell_line(c))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
