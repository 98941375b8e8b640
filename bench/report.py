"""The verdict of ``make bench`` against issue #8's targets, and the latest results in
docs/performance.md.

``targets`` turns one run's numbers (the default scenario, the arrival-rate sweep, the stress
grid, the hot paths) into one row per target: its bound, what was measured, by how much it is
met or missed. ``update_doc`` writes the run's summary into docs/performance.md between two
markers, so the page always shows the table of the latest ``make bench``.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.gate_sim.metrics import Summary, runs_limit
from bench.gate_sim.sim import Scenario

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BEGIN = "<!-- make bench: latest results (written by python -m bench; do not edit by hand) -->"
END = "<!-- end of make bench's latest results -->"

# issue #8's targets, as multiples of the limits of ../shared/notes/gating.md §7.3
THROUGHPUT_SHARE = 0.7  # lambda* >= 0.7 x lambda_max^info
COST_FACTOR = 1.25  # runs/commit <= 1.25 x H(p)/C_Z(f)
MEDIAN_FACTOR = 1.2  # at 1 commit/h: median latency <= 1.2 x mean BVT time ...
P95_FACTOR = 2.5  # ... and p95 <= 2.5 x
FALSE_REJECTION_BOUND = 0.001


def _row(target: str, bound: str, measured: str, met: bool, ratio: float | None, note: str = "") -> dict:
    return {"target": target, "bound": bound, "measured": measured, "met": met, "ratio": ratio, "note": note}


def targets(
    summaries: list[Summary],
    sweep: dict,
    hot: list[dict],
    cells: list[dict],
    sc: Scenario,
    culprit_rate: float,
    policy: str = "qacloud",
) -> list[dict]:
    """One row per target of issue #8 for ``policy``: ``ratio`` is measured / bound (≤ 1 met
    for an upper bound; for the throughput, a lower bound, bound / measured), None for counts
    that must be 0."""
    mine = next(s for s in summaries if s.policy == policy)
    by_rate = sweep["by_rate"][policy]
    t = sc.mean_bvt_hours
    rows = []

    for key, cell_key, name in (
        ("master_breakage", "breakage", "master breakage"),
        ("illegal_promotions", "illegal", "illegal promotions"),
    ):
        # the sweep's rows are means over the same number of seeds as the default scenario
        n = round((mine.stats[key][0] + sum(r[key] for r in by_rate.values())) * mine.seeds)
        n += sum(c[cell_key] for c in cells)
        where = "default scenario, sweep" + (f", {len(cells)} stress cells" if cells else "")
        rows.append(_row(name, "0", f"{n:g} ({where})", n == 0, None))

    shares = [(mine.stats["false_rejection_rate"][0], "default scenario")]
    shares += [(r["false_rejection_rate"], f"{rate:g}/h") for rate, r in by_rate.items()]
    shares += [
        (
            c["false_rejections"] / max(c["innocent"], 1),
            f"stress: {c.get('config') or 'default'}, {c['scenario']}, {c['rate']:g}/h",
        )
        for c in cells
        if not c.get("overload")
    ]
    worst, where = max(shares)
    rows.append(
        _row(
            "false rejections (worst)",
            f"≤ {100 * FALSE_REJECTION_BOUND:g} %",
            f"{100 * worst:.3f} % ({where})",
            worst <= FALSE_REJECTION_BOUND,
            worst / FALSE_REJECTION_BOUND,
        )
    )

    lam, info = sweep["lambda_star"][policy], sweep["lambda_max_info"]
    need = THROUGHPUT_SHARE * info
    rows.append(
        _row(
            "sustainable throughput λ*",
            f"≥ {THROUGHPUT_SHARE:g} × {info:.2f} = {need:.2f}/h",
            f"{lam:g}/h ({lam / info:.2f} × the limit)",
            lam >= need,
            need / lam if lam else math.inf,
        )
    )

    for key, factor, name in (
        ("latency_median", MEDIAN_FACTOR, "median latency at 1/h"),
        ("latency_p95", P95_FACTOR, "p95 latency at 1/h"),
    ):
        v, bound = mine.stats[key][0], factor * t
        rows.append(_row(name, f"≤ {factor:g} × {t:g} h = {bound:g} h", f"{v:.2f} h", v <= bound, v / bound))

    cost_bound = COST_FACTOR * runs_limit(culprit_rate, sc.flake_rate)
    if lam in by_rate:
        r = by_rate[lam]
        v = r["runs_per_commit"]
        note = f"{r['pool_hours_per_commit']:.2f} pool-h/commit"
        oracle = sweep["by_rate"].get("oracle", {}).get(lam)
        if oracle is not None:
            note += f"; the oracle at {lam:g}/h: {oracle['runs_per_commit']:.3f} runs/commit"
        rows.append(
            _row(
                "BVT runs per commit at λ*",
                f"≤ {COST_FACTOR:g} × {runs_limit(culprit_rate, sc.flake_rate):.3f} = {cost_bound:.3f}",
                f"{v:.3f} at {lam:g}/h",
                v <= cost_bound,
                v / cost_bound,
                note,
            )
        )
    else:
        rows.append(_row("BVT runs per commit at λ*", f"≤ {cost_bound:.3f}", "no rate kept up", False, None))

    for h in hot:
        if h.get("target") is None:
            continue
        if "error" in h:
            rows.append(_row(h["path"], f"≤ {h['target']:g} × baseline", h["error"], False, None))
            continue
        rows.append(
            _row(
                h["path"],
                f"≤ {h['target']:g} × baseline",
                f"{h['ratio']:.2f} × baseline",
                h["ratio"] <= h["target"],
                h["ratio"] / h["target"],
            )
        )
    return rows


def targets_markdown(rows: list[dict]) -> list[str]:
    """The targets as a table; a missed target says by how much (measured / bound)."""
    md = ["| target | bound | measured | verdict | note |", "|---|---|---|---|---|"]
    for r in rows:
        if r["met"]:
            verdict = "met"
        elif r["ratio"] is None or math.isinf(r["ratio"]):
            verdict = "**missed**"
        else:
            verdict = f"**missed by {r['ratio']:.2f}×**"
        cells = (r["target"], r["bound"], r["measured"], verdict, r["note"])
        md.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return md


def targets_section(rows: list[dict], level: str, why: str) -> list[str]:
    """The targets' section of a report, its heading at ``level`` ("##", "###")."""
    why = f"A missed target says by how much (measured / bound); {why}."
    return ["", f"{level} Targets (issue #8, qacloud)", "", why, "", *targets_markdown(rows)]


def update_doc(block: list[str], path: Path = DOC) -> None:
    """Replace what lies between ``BEGIN`` and ``END`` in ``path`` with ``block``; refuse (and
    leave the file as it was) unless each marker is there exactly once, in that order."""
    text = path.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{path}: needs the markers {BEGIN!r} and {END!r}, once each, in that order")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    path.write_text(head + BEGIN + "\n" + "\n".join(block).strip("\n") + "\n" + END + tail)


def doc_block(path: Path = DOC) -> str:
    """The text between the markers of ``path`` (stripped)."""
    text = path.read_text()
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")
