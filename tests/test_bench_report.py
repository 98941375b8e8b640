"""``make bench``'s verdict against issue #8's targets and the latest results it writes into
docs/performance.md."""

from __future__ import annotations

import json
import re

import pytest

from bench import __main__ as bench_main
from bench import report
from bench.gate_sim import cli
from bench.gate_sim.metrics import Summary, runs_limit
from bench.gate_sim.sim import Scenario

SC = Scenario()


def _summary(policy: str, **stats) -> Summary:
    base = {
        "false_rejection_rate": 0.0,
        "latency_median": 2.1,
        "latency_p95": 4.3,
        "master_breakage": 0.0,
        "illegal_promotions": 0.0,
    }
    return Summary(policy, 3, {k: (v, 0.0) for k, v in (base | stats).items()}, [], {})


def _rate_row(runs: float, **kw) -> dict:
    base = {"runs_per_commit": runs, "pool_hours_per_commit": runs * 1.35, "false_rejection_rate": 0.0}
    return base | {"master_breakage": 0.0, "illegal_promotions": 0.0} | kw


def _sweep(lam: float = 4.0, runs: float = 0.437, **row) -> dict:
    return {
        "lambda_star": {"qacloud": lam, "oracle": 5.0},
        "lambda_max_info": 4.87,
        "by_rate": {
            "qacloud": {1.0: _rate_row(0.96), 4.0: _rate_row(runs, **row)},
            "oracle": {1.0: _rate_row(0.9), 4.0: _rate_row(0.367)},
        },
    }


HOT = [
    {"path": "gate decision", "ratio": 1.14, "target": 2.0, "measured_s": 0.002, "baseline_s": 0.00175},
    {"path": "IPMI fan-out", "ratio": 1.09, "target": 1.5, "measured_s": 0.46, "baseline_s": 0.42},
    {"path": "Cobbler register + sync", "ratio": 14.7, "target": None, "measured_s": 2.4, "baseline_s": 0.17},
]


def _by_target(rows: list[dict]) -> dict[str, dict]:
    return {r["target"]: r for r in rows}


def test_each_target_is_judged_and_a_missed_one_says_by_how_much():
    rows = _by_target(report.targets([_summary("qacloud")], _sweep(), HOT, [], SC, 0.05))
    cost = rows["BVT runs per commit at λ*"]
    assert cost["met"] is False and cost["ratio"] == pytest.approx(0.437 / (1.25 * runs_limit(0.05, 0.02)))
    assert cost["measured"] == "0.437 at 4/h" and "the oracle at 4/h: 0.367 runs/commit" in cost["note"]
    thr = rows["sustainable throughput λ*"]
    assert (
        thr["met"] is True and thr["bound"] == "≥ 0.7 × 4.87 = 3.41/h" and thr["measured"].startswith("4/h")
    )
    assert rows["median latency at 1/h"]["met"] and rows["p95 latency at 1/h"]["met"]
    assert rows["gate decision"]["met"] and rows["IPMI fan-out"]["met"]
    assert "Cobbler register + sync" not in rows  # no target of its own: reported, not judged
    assert rows["master breakage"]["met"] and rows["illegal promotions"]["met"]
    md = "\n".join(report.targets_markdown(list(rows.values())))
    assert "| BVT runs per commit at λ* | ≤ 1.25 × 0.308 = 0.385 | 0.437 at 4/h | **missed by 1.13×** |" in md
    assert "| sustainable throughput λ* | ≥ 0.7 × 4.87 = 3.41/h | 4/h (0.82 × the limit) | met |" in md

    # a lower bound missed: by how much the rate falls short; the cost read at that rate
    rows = _by_target(report.targets([_summary("qacloud")], _sweep(lam=1.0), HOT, [], SC, 0.05))
    assert rows["sustainable throughput λ*"]["met"] is False
    assert rows["sustainable throughput λ*"]["ratio"] == pytest.approx(0.7 * 4.87 / 1.0)
    assert rows["BVT runs per commit at λ*"]["measured"] == "0.960 at 1/h"
    # latency over its bound; a hot path that could not be measured is a missed target
    broken = [{"path": "gate decision", "error": "not available: git", "target": 2.0}]
    rows = _by_target(report.targets([_summary("qacloud", latency_p95=6.0)], _sweep(), broken, [], SC, 0.05))
    assert rows["p95 latency at 1/h"]["ratio"] == pytest.approx(1.2) and not rows["p95 latency at 1/h"]["met"]
    assert rows["gate decision"]["met"] is False and rows["gate decision"]["measured"] == "not available: git"
    assert "| gate decision | ≤ 2 × baseline | not available: git | **missed** |" in "\n".join(
        report.targets_markdown(list(rows.values()))
    )


def test_breakage_and_false_rejections_count_every_scenario_the_bench_ran():
    """One master breakage anywhere (the sweep, a stress cell) misses the target; the worst
    false-rejection share is named with where it happened."""
    cell = {"scenario": "1 pool", "rate": 3.0, "breakage": 0, "illegal": 1, "false_rejections": 2}
    cell |= {"innocent": 1000}
    overload = {"scenario": "default", "rate": 3.0, "breakage": 0, "illegal": 0, "false_rejections": 50}
    overload |= {"innocent": 100, "overload": True}  # past capacity: not judged for false rejections
    sweep = _sweep(master_breakage=1 / 3, false_rejection_rate=0.0005)
    rows = _by_target(report.targets([_summary("qacloud")], sweep, HOT, [cell, overload], SC, 0.05))
    assert rows["master breakage"]["met"] is False
    assert rows["master breakage"]["measured"] == "1 (default scenario, sweep, 2 stress cells)"
    assert rows["illegal promotions"]["met"] is False and rows["illegal promotions"]["measured"].startswith(
        "1 "
    )
    fr = rows["false rejections (worst)"]
    assert fr["met"] is False and fr["measured"] == "0.200 % (stress: default, 1 pool, 3/h)"
    # a cell's text never splits the table: a "|" in it is escaped
    cell["scenario"] = "1 pool | late reverts"
    rows = report.targets([_summary("qacloud")], sweep, HOT, [cell], SC, 0.05)
    line = next(x for x in report.targets_markdown(rows) if x.startswith("| false rejections"))
    assert "(stress: default, 1 pool \\| late reverts, 3/h)" in line and line.count(" | ") == 4
    assert fr["ratio"] == pytest.approx(2.0)


def test_the_latest_results_replace_only_the_block_between_the_markers(tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text(
        f"# Performance\n\nintro\n\n{report.BEGIN}\nold table\n{report.END}\n\n## Round 14\nhistory\n"
    )
    report.update_doc(["## Latest results", "", "| a | b |"], doc)
    report.update_doc(["## Latest results", "", "| a | c |"], doc)  # again: still one block
    text = doc.read_text()
    assert text == (
        f"# Performance\n\nintro\n\n{report.BEGIN}\n## Latest results\n\n| a | c |\n{report.END}"
        "\n\n## Round 14\nhistory\n"
    )
    assert report.doc_block(doc) == "## Latest results\n\n| a | c |"
    for broken in (
        "no markers at all\n",
        f"{report.END}\n{report.BEGIN}\n",  # out of order
        f"{report.BEGIN}\n{report.END}\n{report.BEGIN}\n{report.END}\n",  # twice
    ):
        doc.write_text(broken)
        with pytest.raises(ValueError, match=r"performance\.md: needs the markers"):
            report.update_doc(["x"], doc)
        assert doc.read_text() == broken  # left as it was


def test_python_m_bench_writes_the_targets_into_its_report_and_the_doc(tmp_path, monkeypatch):
    """``python -m bench`` end to end at a tiny size (the hot paths replaced by fixed rows:
    tests/test_bench.py and tests/test_hotpaths.py run them for real): results.md and
    results.json carry the targets; the doc's block gets the latest tables and plots."""
    monkeypatch.setattr(bench_main.hotpaths, "run_all", lambda: HOT)
    monkeypatch.setattr(bench_main, "RATES", [1.0, 2.0])
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\n{report.BEGIN}\n{report.END}\n\n## History\n")
    out = tmp_path / "results"
    argv = ["--commits", "40", "--sweep-commits", "40", "--seeds", "1", "--stress-seeds", "0"]
    assert bench_main.main([*argv, "--out", str(out), "--doc", str(doc)]) == 0
    results = (out / "results.md").read_text()
    assert "## Targets (issue #8, qacloud)" in results
    assert re.search(
        r"\| BVT runs per commit at λ\* \| ≤ 1.25 × 0.308 = 0.385 \| [0-9.]+ at [0-9.]+/h \|", results
    )
    targets = {r["target"]: r for r in json.loads((out / "results.json").read_text())["targets"]}
    assert set(targets) >= {"master breakage", "sustainable throughput λ*", "gate decision", "IPMI fan-out"}
    block = report.doc_block(doc)
    assert block.startswith("## Latest results (`make bench`, ")
    assert "### Targets (issue #8, qacloud)" in block and "### Every policy in the default scenario" in block
    for line in block.splitlines():  # every table row of the doc is the report's own
        if line.startswith("| "):
            assert line in results, line
    assert "![runs](../bench/results/runs_vs_rate.png)" in block and doc.read_text().endswith("## History\n")
    # elsewhere than bench/results/, the doc is left alone unless asked
    before = report.DOC.read_text()
    assert bench_main.main([*argv, "--out", str(tmp_path / "other")]) == 0
    assert report.DOC.read_text() == before


def test_docs_performance_shows_the_committed_make_bench_run():
    """docs/performance.md's latest results and bench/results/results.md come from the same
    full ``make bench`` (the default scenario of 1000 commits, 3 seeds, the stress grid run):
    a policy change whose new numbers reach only one of them fails here."""
    block = report.doc_block()
    results = (report.DOC.parent.parent / "bench" / "results" / "results.md").read_text()
    assert "Default scenario: 1000 commits" in block and "3 seeds" in block
    assert "Skipped (`--stress-seeds 0`)" not in block
    rows = [line for line in block.splitlines() if line.startswith("| ")]
    assert len(rows) >= 20
    for line in rows:
        assert line in results, line


def test_the_committed_results_are_those_of_the_shipped_gate():
    """The gate's rows in bench/results/results.md (its default-scenario row and every swept
    rate) are what the policy in this tree gives: a change of the gate's behaviour without a
    new ``make bench`` fails here. The simulation is deterministic (common random numbers from
    a hash of the seed), so they are equal to the digit; qacloud alone takes a few seconds."""
    results = (report.DOC.parent.parent / "bench" / "results" / "results.md").read_text()
    summaries, sweep, thr = bench_main.simulate_default(SC, ["qacloud"], 1000, 1000, 3)
    rows = cli.table(summaries, thr).splitlines()[2:] + bench_main.sweep_table(sweep, ["qacloud"])[2:]
    assert len(rows) == 1 + len(bench_main.RATES)
    for line in rows:
        assert line in results, f"bench/results/results.md lacks {line!r}: run make bench"
