"""``python -m bench.gate_sim``: run policies over seeds, print a Markdown table, write JSON."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from bench.gate_sim.metrics import Summary, runs_limit, summarise, sustainable, throughput_limit
from bench.gate_sim.policies import POLICIES, resolve
from bench.gate_sim.sim import Scenario, SimResult, simulate
from bench.gate_sim.trace import Commit, TraceError, generate, load_trace

CULPRIT_RATE = 0.05  # the default scenario's share of commits breaking the BVT (issue #8)


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI hours (e.g. 1,3), got {text!r}") from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"need 0 < LO <= HI, got {text!r}")
    return lo, hi


def _rates(text: str) -> list[float]:
    try:
        rates = sorted(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rates per hour like 0.5,1,2, got {text!r}") from None
    if not rates or rates[0] <= 0:
        raise argparse.ArgumentTypeError(f"rates must be > 0, got {text!r}")
    return rates


def _fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.gate_sim", description=__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", help="replay this JSONL trace")
    src.add_argument("--generate", type=int, metavar="N", help="generate N commits per seed")
    ap.add_argument("--rate", type=float, help="arrival rate per hour (with --generate)")
    ap.add_argument("--workday", action="store_true", help="80 %% of arrivals in 09:00-18:00")
    ap.add_argument("--pools", type=int, default=3)
    ap.add_argument("--bvt-hours", type=_pair, default=(1.0, 3.0), metavar="LO,HI")
    ap.add_argument("--flake-rate", type=_fraction, default=0.02)
    ap.add_argument("--culprit-rate", type=_fraction, default=CULPRIT_RATE)
    ap.add_argument(
        "--flake-model",
        choices=("run", "test"),
        default="run",
        help="run: a filtered run flakes as often as a full one (default); test: per test",
    )
    ap.add_argument("--infra-rate", type=_fraction, default=0.0, help="inconclusive runs (infrastructure)")
    ap.add_argument(
        "--setup-fraction",
        type=_fraction,
        default=0.4,
        help="share of a full BVT independent of the tests run (provisioning, build, deployment);"
        " a run of m of the suite's tests takes setup + (1 - setup) m/suite of a full run",
    )
    ap.add_argument("--revert-delay-hours", type=float, default=0.0, help="time from a blame to its revert")
    ap.add_argument(
        "--fix-delay-hours",
        type=float,
        default=2.0,
        help="time from an alert needing a human to a developer's fix of its culprits",
    )
    ap.add_argument("--policy", default="all", help=f"all or comma-separated: {', '.join(POLICIES)}")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sweep", type=_rates, help="also sweep these arrival rates for lambda* (generate only)")
    ap.add_argument("--json", help="write the results here")
    return ap


def traces_for(args, seed: int, rate: float | None = None) -> list[Commit]:
    if args.trace:
        return load_trace(args.trace)
    return generate(args.generate, rate or args.rate, args.culprit_rate, seed, args.workday)


def run_policies(
    args, scenario: Scenario, names: list[str], rate: float | None = None
) -> dict[str, list[SimResult]]:
    """Every policy over every seed; a seed's trace is shared by all policies."""
    out: dict[str, list[SimResult]] = {n: [] for n in names}
    for seed in range(1, args.seeds + 1):
        trace = traces_for(args, seed, rate)
        for name in names:
            out[name].append(simulate(trace, scenario, POLICIES[name], seed, name))
    return out


def _fmt(stat: tuple[float, float], scale: float = 1.0, digits: int = 2) -> str:
    m, ci = stat
    if math.isnan(m):
        return "—"
    return f"{m * scale:.{digits}f} ± {ci * scale:.{digits}f}" if ci else f"{m * scale:.{digits}f}"


def table(summaries: list[Summary], thr: dict[str, float] | None = None) -> str:
    """The Markdown table of ``summaries`` (means ± 95 % CI half-widths)."""
    head = (
        "| policy | runs/commit | runs/promoted | pool-h/promoted | latency med h | p95 h | max h "
        "| TTC med h | breakage | illegal | false rej % | missed culprits | E_cost | E_lat | E_ttc |"
    )
    if thr is not None:
        head += " λ* /h | E_thr |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summaries:
        st = s.stats
        if not st:
            lines.append(f"| {s.policy} | " + " | ".join(["—"] * (head.count("|") - 2)) + " |")
            continue
        cells = [
            s.policy + (" ⚠" if s.errors else ""),
            _fmt(st["runs_per_commit"], digits=3),
            _fmt(st["runs_per_promoted"], digits=3),
            _fmt(st["pool_hours_per_promoted"]),
            _fmt(st["latency_median"]),
            _fmt(st["latency_p95"]),
            _fmt(st["latency_max"], digits=1),
            _fmt(st["ttc_median"]),
            _fmt(st["master_breakage"], digits=0),
            _fmt(st["illegal_promotions"], digits=0),
            _fmt(st["false_rejection_rate"], scale=100),
            _fmt(st["missed_culprits"], digits=1),
            *(f"{s.ratios.get(k, math.nan):.2f}" for k in ("E_cost", "E_lat", "E_ttc")),
        ]
        if thr is not None:
            cells += [f"{thr.get(s.policy, math.nan):.2f}", f"{thr.get(s.policy + ':E_thr', math.nan):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep(args, scenario: Scenario, names: list[str], rates: list[float]) -> dict:
    """Per policy and rate: the per-seed-mean metrics, and lambda* per policy."""
    by_rate: dict[str, dict[float, dict[str, float]]] = {n: {} for n in names}
    for rate in rates:
        results = run_policies(args, scenario, names, rate)
        for name in names:
            s = summarise(name, results[name], scenario, args.culprit_rate)
            row = {k: v[0] for k, v in s.stats.items()}
            row["unpromoted_frac"] = row["unpromoted"] / max(args.generate, 1)
            row["errors"] = len(s.errors)
            by_rate[name][rate] = row
    lam = {n: sustainable(by_rate[n]) for n in names}
    limit = throughput_limit(scenario, args.culprit_rate)
    return {"rates": rates, "by_rate": by_rate, "lambda_star": lam, "lambda_max_info": limit}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.generate is not None and (args.rate is None or args.rate <= 0 or args.generate <= 0):
        parser().error("--generate N needs N > 0 and --rate PER_HOUR > 0")
    if args.sweep and not args.generate:
        parser().error("--sweep needs --generate")
    if args.seeds < 1 or args.pools < 1:
        parser().error("--seeds and --pools must be at least 1")
    try:
        names = resolve(args.policy)
        scenario = Scenario(
            pools=args.pools,
            bvt_hours=args.bvt_hours,
            flake_rate=args.flake_rate,
            infra_rate=args.infra_rate,
            revert_delay_hours=args.revert_delay_hours,
            fix_delay_hours=args.fix_delay_hours,
            setup_fraction=args.setup_fraction,
            flake_model=args.flake_model,
        )
        results = run_policies(args, scenario, names)
    except (TraceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summaries = [summarise(n, results[n], scenario, args.culprit_rate) for n in names]
    thr = None
    sweep_out = None
    if args.sweep:
        sweep_out = sweep(args, scenario, names, args.sweep)
        thr = dict(sweep_out["lambda_star"])
        for n in names:
            thr[n + ":E_thr"] = sweep_out["lambda_star"][n] / sweep_out["lambda_max_info"]
    src = f"trace {args.trace}" if args.trace else f"{args.generate} commits at {args.rate}/h"
    print(
        f"Scenario: {src}, k={args.pools} pools, BVT U({args.bvt_hours[0]:g},{args.bvt_hours[1]:g}) h, "
        f"culprit rate {args.culprit_rate}, flake rate {args.flake_rate}, {args.seeds} seed(s). "
        f"Limit runs/commit H(p)/C_Z(f) = {runs_limit(args.culprit_rate, args.flake_rate):.3f}."
    )
    print()
    print(table(summaries, thr))
    for s in summaries:
        for e in s.errors[:5]:
            print(f"\n⚠ {s.policy}: {e}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "scenario": {k: v for k, v in vars(args).items() if k != "json"},
            "summaries": [s.to_json() for s in summaries],
            "sweep": sweep_out,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str, allow_nan=True) + "\n")
    return 0
