"""``python -m bench`` (``make bench``): the default scenario, the arrival-rate sweep, the plots,
the stress grid and the hot paths, judged against issue #8's targets; writes ``bench/results/``
(results.md, results.json, *.png) and the latest results into docs/performance.md."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import hotpaths, report
from bench.gate_sim import cli, stress
from bench.gate_sim.metrics import P95_BOUND_HOURS, SLOPE_BOUND, runs_limit, summarise
from bench.gate_sim.policies import POLICIES
from bench.gate_sim.sim import Scenario

RESULTS = Path(__file__).resolve().parent / "results"
RATES = [0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
PLOTS = [("latency", "latency_vs_rate.png"), ("p95", "latency_p95_vs_rate.png"), ("runs", "runs_vs_rate.png")]


def plot(sweep: dict, key: str, ylabel: str, path: Path, limit: float | None = None) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, rows in sweep["by_rate"].items():
        xs = [r for r in sweep["rates"] if not math.isnan(rows[r][key])]
        ax.plot(xs, [rows[r][key] for r in xs], marker="o", label=name)
    if limit is not None:
        ax.axhline(limit, color="grey", ls="--", label="limit")
    ax.set_xlabel("arrival rate (commits/h)")
    ax.set_ylabel(ylabel)
    if key.startswith("latency"):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def simulate_default(
    sc: Scenario, names: list[str], commits: int, sweep_commits: int, seeds: int
) -> tuple[list, dict, dict[str, float]]:
    """The policies ``names`` in the default scenario at 1 commit/h (their summaries), swept
    over ``RATES`` (the sweep), and their sustainable throughput with its share of the limit."""
    base = cli.parser().parse_args(["--generate", str(commits), "--rate", "1", "--seeds", str(seeds)])
    results = cli.run_policies(base, sc, names)
    summaries = [summarise(n, results[n], sc, base.culprit_rate) for n in names]
    sweep_args = cli.parser().parse_args(
        ["--generate", str(sweep_commits), "--rate", "1", "--seeds", str(seeds)]
    )
    sweep = cli.sweep(sweep_args, sc, names, RATES)
    thr = dict(sweep["lambda_star"])
    for n in names:
        thr[n + ":E_thr"] = sweep["lambda_star"][n] / sweep["lambda_max_info"]
    return summaries, sweep, thr


def sweep_table(sweep: dict, names) -> list[str]:
    """Per policy of ``names`` and swept rate: cost, latency, backlog trend, what was left."""
    md = [
        "| policy | rate /h | runs/commit | pool-h/commit | latency med h | p95 h | trend h/h "
        "| unpromoted % | false rej % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for rate in sweep["rates"]:
            row = sweep["by_rate"][name][rate]
            md.append(
                f"| {name} | {rate:g} | {row['runs_per_commit']:.3f} | {row['pool_hours_per_commit']:.2f} "
                f"| {row['latency_median']:.2f} | {row['latency_p95']:.2f} | {row['latency_slope']:.3f} "
                f"| {100 * row['unpromoted_frac']:.1f} | {100 * row['false_rejection_rate']:.2f} |"
            )
    return md


def stress_markdown(cells: list[dict], seeds: int) -> list[str]:
    """The stress grid's section: the gate under every configuration switch and hard scenario
    (bench/gate_sim/stress.py), totals and every cell with a problem."""
    if not cells:
        return ["", "## Every scenario (stress grid)", "", "Skipped (`--stress-seeds 0`)."]
    main_cells = [c for c in cells if not c.get("overload")]
    total = {k: sum(c[k] for c in cells) for k in ("breakage", "illegal", "violations")}
    worst = max(main_cells, key=lambda c: c["false_rejections"] / max(c["innocent"], 1))
    md = [
        "",
        "## Every scenario (stress grid)",
        "",
        "The shipped gate under every configuration switch and hard scenario (more flakes, more "
        "culprits, broken infrastructure, 1 or 6 pools, late reverts and fixes, full-length "
        "probes, long BVTs, per-test flakes; `python -m bench.gate_sim.stress`), every promotion "
        "checked, plus an overload scenario past the gate's capacity:",
        "",
        f"- {stress.summary(main_cells, seeds, stress.COMMITS, stress.RATES)};",
        f"- master breakage {total['breakage']}, illegal promotions {total['illegal']}, simulator "
        f"violations {total['violations']} in all {len(cells)} cells (overload included);",
        f"- the highest false-rejection share of a cell: "
        f"{100 * worst['false_rejections'] / max(worst['innocent'], 1):.3f} % "
        f"({worst['config'] or 'default'} | {worst['scenario']} | {worst['rate']:g}/h; bound 0.1 %).",
    ]
    md += [stress.cell_line(c) for c in cells if c["problems"] or c.get("overload")]
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--commits", type=int, default=1000, help="commits in the default scenario")
    ap.add_argument("--sweep-commits", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument(
        "--stress-seeds",
        type=int,
        default=stress.SEEDS,
        help="seeds per cell of the stress grid (0: skip it)",
    )
    ap.add_argument(
        "--doc",
        default=None,
        help="where to write the latest results (default: docs/performance.md when --out is the "
        "default, else nowhere); 'none' skips it",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sc = Scenario()
    summaries, sweep, thr = simulate_default(sc, list(POLICIES), args.commits, args.sweep_commits, args.seeds)
    plot(sweep, "latency_median", "median commit→master latency (h)", out / "latency_vs_rate.png")
    plot(sweep, "latency_p95", "p95 commit→master latency (h)", out / "latency_p95_vs_rate.png")
    limit = runs_limit(cli.CULPRIT_RATE, sc.flake_rate)
    plot(sweep, "runs_per_commit", "BVT runs per commit", out / "runs_vs_rate.png", limit)
    cells = stress.grid(args.stress_seeds, include_overload=True) if args.stress_seeds > 0 else []
    hot = hotpaths.run_all()
    elapsed = time.perf_counter() - t0
    scenario = [
        f"Default scenario: {args.commits} commits, Poisson 1 commit/h, k = 3 pools, BVT U(1,3) h, "
        f"culprit rate {cli.CULPRIT_RATE:g}, flake rate {sc.flake_rate:g}, a run restricted to some tests "
        f"(the gate's bisection and confirmation runs) takes {sc.setup_fraction:.0%} of its full time "
        f"as fixed setup plus the rest scaled by tests run / suite size; revert pushed at blame time, "
        f"a developer's fix 2 h after an alert needing a human, {args.seeds} seeds "
        "(mean ± 95 % CI). λ* from a sweep of "
        f"{', '.join(f'{r:g}' for r in RATES)} commits/h with {args.sweep_commits} commits per rate: the "
        f"largest rate up to which the latency trend over the trace is ≤ {SLOPE_BOUND} h/h (backlog not "
        f"growing), p95 ≤ {P95_BOUND_HOURS:g} h and ≤ 1 % unpromoted; "
        f"λ_max^info = {sweep['lambda_max_info']:.2f}/h (full-length runs); runs/commit limit H(p)/C_Z(f) = "
        f"{limit:.3f}.",
    ]
    policies = [cli.table(summaries, thr)]
    for s in summaries:
        policies += [f"- ⚠ {s.policy}: {e}" for e in s.errors[:5]]
    verdict = report.targets(summaries, sweep, hot, cells, sc, cli.CULPRIT_RATE)
    goals = report.targets_section(verdict, "##", "docs/performance.md says why")
    doc_goals = report.targets_section(verdict, "###", "the sections below say why")
    md = ["# qacloud benchmark results", "", *scenario, "", *policies, *goals]
    md += ["", "## Per arrival rate (sweep; the cost target is read at the highest sustainable rate)", ""]
    md += sweep_table(sweep, ("qacloud", "R3-mergify", "oracle"))
    grid = stress_markdown(cells, args.stress_seeds)
    md += grid
    hot_md = ["", "## Hot paths (ratio to a baseline measured in the same run)", ""]
    hot_md += ["| path | measured | baseline | ratio | target | note |", "|---|---|---|---|---|---|"]
    for h in hot:
        if "error" in h:
            hot_md.append(f"| {h['path']} | — | — | — | — | {h['error']} |")
        else:
            target = "—" if h.get("target") is None else f"≤ {h['target']}"
            hot_md.append(
                f"| {h['path']} | {h['measured_s'] * 1000:.2f} ms | {h['baseline_s'] * 1000:.2f} ms "
                f"| {h['ratio']:.2f} | {target} | {h.get('via', '')} |"
            )
    md += hot_md
    md += hotpaths.details_markdown(hot)
    md += ["", f"Total benchmark time: {elapsed:.0f} s.", ""]
    md += [f"![{alt}]({name})" for alt, name in PLOTS] + [""]
    (out / "results.md").write_text("\n".join(md))
    doc = {
        "summaries": [s.to_json() for s in summaries],
        "sweep": sweep,
        "hotpaths": hot,
        "stress": [{k: v for k, v in c.items() if k != "seeds"} | {"bad_seeds": c["seeds"]} for c in cells],
        "targets": verdict,
        "seconds": elapsed,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    doc_path = args.doc or (str(report.DOC) if out.resolve() == RESULTS else "none")
    if doc_path != "none":
        block = [
            f"## Latest results (`make bench`, {time.strftime('%Y-%m-%d')}, {elapsed / 60:.0f} min)",
            "",
            *scenario,
            *doc_goals,
            "",
            "### Every policy in the default scenario (1 commit/h)",
            "",
            *policies,
            *[line.replace("## Every", "### Every", 1) for line in grid],
            *[line.replace("## Hot", "### Hot", 1) for line in hot_md],
            "",
            "The full report, with the sweep per rate and the hot paths' details: "
            "[bench/results/results.md](../bench/results/results.md).",
            "",
            *[f"![{alt}](../bench/results/{name})" for alt, name in PLOTS],
        ]
        report.update_doc(block, Path(doc_path))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
