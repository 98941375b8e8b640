"""``python -m bench.gate_sim.compare``: two qacloud policy configurations, paired over seeds.

How docs/performance.md measures a policy lever (round 9 on): configuration A (``--a
KEY=VALUE``, default: the shipped ``PolicyConfig``) and B (``--b KEY=VALUE``) run on the same
generated traces, seed by seed, at each rate. Common random numbers give both the same luck
where they test the same content, so the per-seed difference B − A is far less noisy than
the two means: it is reported with its 95 % CI (1.96 × standard error over the seeds).
Every promotion is checked by the simulator; a breakage, illegal promotion or violation in
either column is printed, never averaged away.

``--seeds N`` uses seeds 1..N/2 and 101..100+N/2 (N even; the docs' 80 and 160 seed sets),
``--jobs`` worker processes (default: the CPU count).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench.gate_sim import policies
from bench.gate_sim.breakdown import policy_option
from bench.gate_sim.metrics import per_seed
from bench.gate_sim.sim import Scenario, Simulator
from bench.gate_sim.trace import generate

METRICS = ("runs_per_commit", "pool_hours_per_commit", "latency_median", "latency_p95")
CULPRIT_RATE = 0.05


def seed_set(n: int) -> list[int]:
    """The docs' seed sets: 1..n/2 and 101..100+n/2 (n = 1: seed 1)."""
    half = max(n // 2, 1)
    return list(range(1, half + 1)) + (list(range(101, 101 + n - half)) if n > 1 else [])


def run_one(job: tuple[float, int, int, dict[str, Any], str]) -> dict[str, float]:
    """One seed at one rate with ``options`` applied to qacloud's ``PolicyConfig``."""
    rate, seed, commits, options, flake_model, history = job
    sc = Scenario(flake_model=flake_model, history=history)
    trace = generate(commits, rate, CULPRIT_RATE, seed, False)
    policy = policies.qacloud_policy(sc, trace, **options)
    res = Simulator(trace, sc, policy, seed, "qacloud").run()
    row = per_seed(res, sc)
    row["false_rejections"] = float(res.false_rejections)
    row["innocent"] = float(res.innocent)
    row["violations"] = float(len(res.violations) + (1 if res.error else 0))
    return row


def _ci(xs: list[float]) -> float:
    return 1.96 * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan


def compare(
    a: dict[str, Any],
    b: dict[str, Any],
    rates: list[float],
    seeds: int,
    commits: int = 1000,
    jobs: int | None = None,
    flake_model: str = "run",
    history: int = 0,
) -> dict[str, Any]:
    """Per rate: A's and B's means, B − A per seed (mean, 95 % CI), and the safety counts."""
    chosen = seed_set(seeds)
    work = [(r, s, commits, opts, flake_model, history) for opts in (a, b) for r in rates for s in chosen]
    with ProcessPoolExecutor(jobs or os.cpu_count() or 1) as ex:
        rows = list(ex.map(run_one, work, chunksize=4))
    n = len(rates) * len(chosen)
    out: dict[str, Any] = {
        "a": a,
        "b": b,
        "seeds": chosen,
        "commits": commits,
        "flake_model": flake_model,
        "history": history,
        "rates": {},
    }
    for i, rate in enumerate(rates):
        ra = rows[i * len(chosen) : (i + 1) * len(chosen)]
        rb = rows[n + i * len(chosen) : n + (i + 1) * len(chosen)]
        per: dict[str, Any] = {}
        for k in METRICS:
            diff = [y[k] - x[k] for x, y in zip(ra, rb, strict=True)]
            per[k] = {
                "a": statistics.fmean(x[k] for x in ra),
                "b": statistics.fmean(y[k] for y in rb),
                "diff": statistics.fmean(diff),
                "ci": _ci(diff),
            }
        for side, rs in (("a", ra), ("b", rb)):
            per[f"safety_{side}"] = {
                "false_rejections": int(sum(r["false_rejections"] for r in rs)),
                "innocent": int(sum(r["innocent"] for r in rs)),
                "master_breakage": int(sum(r["master_breakage"] for r in rs)),
                "illegal_promotions": int(sum(r["illegal_promotions"] for r in rs)),
                "violations": int(sum(r["violations"] for r in rs)),
                "unpromoted": int(sum(r["unpromoted"] for r in rs)),
            }
        out["rates"][rate] = per
    return out


def to_markdown(c: dict[str, Any]) -> str:
    def label(opts: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in opts.items()) or "default"

    lines = [
        f"A: {label(c['a'])}; B: {label(c['b'])}; {len(c['seeds'])} seeds × {c['commits']} commits"
        f" per rate; flakes per {c.get('flake_model', 'run')}; history {c.get('history', 0)};"
        " B − A paired per seed, ± 95 % CI",
        "",
        "| rate /h | metric | A | B | B − A |",
        "|---|---|---|---|---|",
    ]
    for rate, per in c["rates"].items():
        for k in METRICS:
            m = per[k]
            lines.append(
                f"| {rate:g} | {k} | {m['a']:.3f} | {m['b']:.3f} | {m['diff']:+.3f} ± {m['ci']:.3f} |"
            )
        for side in ("a", "b"):
            s = per[f"safety_{side}"]
            share = 100 * s["false_rejections"] / max(s["innocent"], 1)
            lines.append(
                f"| {rate:g} | safety {side.upper()} | false rejections {s['false_rejections']}"
                f" ({share:.3f} %) | breakage {s['master_breakage']}, illegal {s['illegal_promotions']},"
                f" violations {s['violations']} | unpromoted {s['unpromoted']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gate_sim.compare", description=__doc__)
    ap.add_argument("--a", type=policy_option, action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--b", type=policy_option, action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--rates", default="3.5,4,4.5", help="comma-separated commits per hour")
    ap.add_argument("--seeds", type=int, default=160)
    ap.add_argument("--commits", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument(
        "--flake-model",
        choices=("run", "test"),
        default="run",
        help="how a filtered run flakes (Scenario.flake_model; docs/performance.md round 11)",
    )
    ap.add_argument(
        "--history",
        type=int,
        default=0,
        help="earlier traces the learned flake rates start from (Scenario.history; round 13)",
    )
    args = ap.parse_args(argv)
    try:
        rates = [float(x) for x in args.rates.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--rates: not a comma-separated list of numbers: {args.rates!r}")
    if not rates or args.seeds < 1 or args.commits < 1 or args.history < 0:
        ap.error(
            "--rates needs at least one rate; --seeds and --commits must be at least 1,"
            " --history not negative"
        )
    c = compare(
        dict(args.a), dict(args.b), rates, args.seeds, args.commits, args.jobs, args.flake_model, args.history
    )
    print(to_markdown(c))
    unsafe = any(
        per[f"safety_{side}"][k]
        for per in c["rates"].values()
        for side in ("a", "b")
        for k in ("master_breakage", "illegal_promotions", "violations")
    )
    return 1 if unsafe else 0


if __name__ == "__main__":
    raise SystemExit(main())
