"""The gate simulator: determinism, common random numbers, the promotion checker, traces, CLI."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict

import pytest
from twisted.trial.unittest import TestCase as TrialTestCase

from bench import hotpaths
from bench.gate_sim import crn, policies
from bench.gate_sim.cli import main
from bench.gate_sim.metrics import runs_limit, slope, sustainable, throughput_limit
from bench.gate_sim.policies import POLICIES, RefPolicy
from bench.gate_sim.sim import SUITE, Scenario, Simulator, simulate
from bench.gate_sim.trace import TraceError, dump_trace, generate, load_trace, parse_trace
from schedulers.events import Alert, Blame, Promote, StagingUpdated, StartRun

SC = Scenario()


def _qacloud(trace, seed: int, sc: Scenario = SC, **config):
    """Simulate qacloud's gate on ``trace`` with ``PolicyConfig`` fields changed."""
    policy = POLICIES["qacloud"](sc, trace, **config)
    return Simulator(trace, sc, policy, seed, "qacloud").run()


def _green_and_drained(res) -> None:
    """Master only ever got tested, unbroken trees, and every commit reached it."""
    assert (res.master_breakage, res.illegal_promotions, res.error, res.violations) == (0, 0, None, [])
    assert res.unpromoted == 0


def test_same_seed_same_result_for_every_policy():
    trace = generate(120, 1.0, 0.05, seed=7)
    for name, make in POLICIES.items():
        a = asdict(simulate(trace, SC, make, 7, name))
        b = asdict(simulate(trace, SC, make, 7, name))
        a.pop("wall_seconds"), b.pop("wall_seconds")
        assert a == b, name
        assert a["error"] is None, (name, a["error"])


def test_common_random_numbers_give_the_same_luck_to_the_same_content():
    trace = generate(80, 1.0, 0.05, seed=3)
    sims = {}
    for name in ("R2-speculative", "R3-mergify"):
        sim = Simulator(trace, SC, POLICIES[name](SC, trace), 3, name)
        sim.run()
        sims[name] = {
            (r.commit, n): (round(r.end - r.start, 9), r.outcome if not r.culprits else r.culprits)
            for n, r in enumerate(sim.runs.values())
        }
    first = {}
    for runs in sims.values():
        seen: dict[str, int] = {}
        for (commit, _n), draw in runs.items():
            attempt = seen.get(commit, 0)
            seen[commit] = attempt + 1
            first.setdefault((commit, attempt), set()).add(draw)
    shared = [k for k, v in first.items() if len(v) >= 1]
    assert len(shared) > 50
    # same sha + attempt -> same duration and flake draw (a trace commit keeps its id even when a
    # revert landed before it in one policy only, so the culprit content may differ)
    assert all(len({d for d, _ in v}) == 1 for v in first.values())
    assert all(len({o for _, o in v if isinstance(o, str)}) <= 1 for v in first.values())
    assert crn.uniform(1, "x", "c1", 0) == crn.uniform(1, "x", "c1", 0) != crn.uniform(2, "x", "c1", 0)


class PromotesUntested(RefPolicy):
    """Deliberately broken: promotes every new tip without testing it."""

    def handle(self, ev):
        if isinstance(ev, StagingUpdated) and ev.commits:
            return [Promote(ev.commits[-1])]
        return []


def test_the_checker_counts_an_illegal_promotion_and_the_breakage_it_causes():
    trace = parse_trace(
        '{"id": "a", "arrival_ts": 0, "is_culprit": false}\n'
        '{"id": "b", "arrival_ts": 60, "is_culprit": true}\n'
    )
    res = Simulator(trace, SC, PromotesUntested(SC.pool_names), 1, "broken").run()
    assert res.illegal_promotions == 2
    assert res.master_breakage == 1
    assert any("without a finished passing run" in v for v in res.violations)


class BlamesEveryNewTip(RefPolicy):
    """Blames each new staging commit unseen: the culprit, then the developers' revert of it."""

    def handle(self, ev):
        if isinstance(ev, StagingUpdated) and ev.commits and ev.commits[-1] not in self.blamed:
            self.blamed.add(ev.commits[-1])
            return [Blame(ev.commits[-1], "someone", ("test_01",), ())]
        return []


def test_a_blamed_revert_is_a_false_rejection_and_is_not_reverted_back():
    """A revert is innocent by construction (its failures were flakes): blaming it counts as a
    false rejection, with the revert among the innocent commits, and nobody reverts it."""
    trace = parse_trace('{"id": "x", "arrival_ts": 0, "is_culprit": true}\n')
    sim = Simulator(trace, SC, BlamesEveryNewTip(SC.pool_names), 1, "blames")
    res = sim.run()
    assert [c for c in sim.staging if c.startswith("revert-")] == ["revert-x@" + sim.staging[0]]
    assert (res.reverts_blamed, res.false_rejections, res.innocent) == (1, 1, 1)
    assert res.culprits_blamed == 1 and not res.violations


def test_reference_policies_and_the_gate_never_break_master():
    trace = generate(150, 1.5, 0.08, seed=11)
    for name, make in POLICIES.items():
        res = simulate(trace, SC, make, 11, name)
        assert (res.illegal_promotions, res.master_breakage, res.error) == (0, 0, None), name
    oracle = simulate(trace, SC, POLICIES["oracle"], 11, "oracle")
    assert oracle.false_rejections == 0 and oracle.culprits_blamed == sum(c.is_culprit for c in trace)


class ProbesOnce(RefPolicy):
    """Starts one run per ``tests`` filter at commit "b" as soon as it is on staging."""

    def __init__(self, pools, filters):
        super().__init__(pools)
        self.filters = list(filters)

    def plan(self):
        while "b" in self.candidates and self.filters and self.idle:
            tests = self.filters.pop(0)
            self.out.append(StartRun(f"probe-{len(self.filters)}", "b", self.idle.pop(0), "bisect", tests))


def test_a_filtered_run_can_fail_only_the_tests_it_runs():
    """Like Marvin given a test list: a culprit breaking another test goes unseen by it."""
    trace = parse_trace(
        '{"id": "a", "arrival_ts": 0, "is_culprit": false}\n'
        '{"id": "b", "arrival_ts": 0, "is_culprit": true}\n'
    )
    broken = SUITE[int(crn.uniform(0, "test", "b") * len(SUITE))]
    other = next(t for t in SUITE if t != broken)
    sim = Simulator(trace, SC, ProbesOnce(SC.pool_names, [(other,), (broken, other), None]), 1, "probe")
    sim.run()
    got = {r.commit + ":" + ",".join(r.failed_tests) + ":" + r.outcome for r in sim.runs.values()}
    assert "b::pass" in got  # (other,): the culprit's test was not run
    assert f"b:{broken}:fail" in got  # (broken, other) and the full run: only its test fails
    assert sum(r.outcome == "fail" for r in sim.runs.values()) == 2


@pytest.mark.parametrize("seed", [8, 120])
def test_the_gate_never_promotes_on_a_filtered_pass_over_an_unseen_culprit(seed):
    """At 4 commits/h these traces make the gate probe a fix (or hunt one failure) with a
    filtered run that passes at a commit whose tree holds another culprit, not yet seen or
    already blamed; promoting on such a pass broke master before (docs/performance.md)."""
    trace = generate(60, 4.0, 0.05, seed=seed)
    res = simulate(trace, SC, POLICIES["qacloud"], seed, "qacloud")
    assert (res.master_breakage, res.illegal_promotions, res.error, res.violations) == (0, 0, None, [])
    assert res.unpromoted == 0 and res.false_rejections == 0


def test_a_filtered_pass_is_not_promoted_over_a_failure_seen_just_below_it():
    """Seed 1 at 3/h, culprit rate 0.15, reverts 4 h after a blame, x = 2. c00197 breaks
    test_04 like the blamed c00190 (masked); the gate saw test_04 fail at c00204 and c00205
    and alerted. A filtered pass (test_32) at the revert just above, revert-c00178@c00206,
    was promoted because the first full run above it (at the developers' fix of c00197)
    failed only test_32: the premise "a test passing above passed here" ignored that
    test_04 was seen failing right below, with its fix somewhere above. Master was broken
    three times. A test seen failing below now needs a run at the commit itself."""
    sc = Scenario(revert_delay_hours=4.0)
    trace = generate(400, 3.0, 0.15, seed=1)
    res = _qacloud(trace, 1, sc, confirmations=2)
    _green_and_drained(res)


def test_the_alert_that_makes_the_tip_worth_a_run_gets_it_a_pool_at_once():
    """Seed 4 at 1/h, reverts 4 h after a blame, whole-suite bisection: the revert of the
    last culprit landed; two commits pushed after the blame failed its test, so the gate
    alerted (still-failing) with the revert already the tip. The alert is what makes that
    tip worth a run, but the pools had been planned before it and no event came after the
    last commit: 3 commits stayed unpromoted. Planning runs again after such an alert."""
    sc = Scenario(revert_delay_hours=4.0)
    trace = generate(400, 1.0, 0.05, seed=4)
    res = _qacloud(trace, 4, sc, bisect_failed_tests_only=False)
    _green_and_drained(res)


def test_stress_every_configuration_switch_keeps_master_green_and_the_queue_moving(capsys, monkeypatch):
    """``bench.gate_sim.stress`` (a small slice: every ``PolicyConfig`` switch x three hard
    scenarios, 2 seeds x 300 commits at 3/h): no breakage, illegal promotion, violation or
    stall anywhere; rounds 9 and 10 found four bugs this way (docs/performance.md)."""
    from bench.gate_sim import stress

    scenarios = [stress.SCENARIOS[i] for i in (1, 3, 6)]  # flaky 10 %; flaky+culprits+infra; late reverts
    cells = stress.stress(seeds=2, commits=300, rates=(3.0,), scenarios=scenarios, jobs=1)
    assert len(cells) == len(stress.CONFIGS) * 3
    assert [c for c in cells if c["problems"]] == []
    assert sum(c["innocent"] for c in cells) > 10_000  # the traces really ran
    argv = ["--seeds", "1", "--commits", "30", "--rates", "1", "--jobs", "1"]
    assert stress.main(argv) == 0
    out = capsys.readouterr().out
    n_cfg, n_sc = len(stress.CONFIGS), len(stress.SCENARIOS)
    assert (
        f"{n_cfg} configurations x {n_sc} scenarios x rates 1 x 1 seeds x 30 commits:"
        f" {n_cfg * n_sc} cells, 0 with problems" in out
    )
    # an unsafe cell (here a faked breakage in the whole-suite configuration) is named, exit 1
    real = stress.run_cell

    def broken(job):
        row = real(job)
        if stress.CONFIGS[job[0]] == {"bisect_failed_tests_only": False}:
            row = {**row, "breakage": 1, "first": "t=1.00 h: master broken by c00001"}
        return row

    monkeypatch.setattr(stress, "run_cell", broken)
    assert stress.main(argv) == 1
    out = capsys.readouterr().out
    assert f"{n_sc} with problems (unsafe {n_sc})" in out  # that configuration, every scenario
    assert "- {'bisect_failed_tests_only': False} | default | 1/h: unsafe; breakage 1" in out


def test_make_bench_reports_the_stress_grid_with_every_problem_named(monkeypatch):
    """``make bench``'s "Every scenario" section: totals over the grid and the overload
    scenario, the worst false-rejection share, and every cell with a problem."""
    from bench import __main__ as bench_main
    from bench.gate_sim import stress

    def cell(problems=(), **kw):
        base = {"config": {}, "scenario": "default", "rate": 1.0, "seeds": [], "breakage": 0}
        base |= {"illegal": 0, "violations": 0, "unpromoted": 0, "false_rejections": 0, "innocent": 1000}
        return base | {"problems": list(problems)} | kw

    clean = [
        cell(),
        cell(scenario="1 pool", false_rejections=1, rate=3.0),
        cell(overload=True, unpromoted=40),
    ]
    md = "\n".join(bench_main.stress_markdown(clean, 15))
    assert "## Every scenario (stress grid)" in md
    assert f"{len(stress.CONFIGS)} configurations x {len(stress.SCENARIOS)} scenarios" in md
    assert "2 cells, 0 with problems" in md
    assert "master breakage 0, illegal promotions 0, simulator violations 0 in all 3 cells" in md
    assert "0.100 % (default | 1 pool | 3/h; bound 0.1 %)" in md
    assert "| default | 1/h: ok; breakage 0" in md and "unpromoted 40" in md  # the overload cell
    unsafe = cell(["unsafe"], config={"speculate": False}, breakage=2, seeds=[(3, 0, "master broken")])
    md = "\n".join(bench_main.stress_markdown([*clean, unsafe], 15))
    assert "master breakage 2" in md and "3 cells, 1 with problems (unsafe 1)" in md
    assert "- {'speculate': False} | default | 1/h: unsafe; breakage 2" in md
    assert "Skipped" in "\n".join(bench_main.stress_markdown([], 0))


def test_after_an_alert_a_hunts_filtered_probe_does_not_count_as_a_failed_tip():
    """Seed 6 at 4/h, 5 % flakes, developers' fixes 12 h after an alert, no detection runs
    behind a block: after an alert new tips stay worth a run until ``REALERT_TIPS`` of them
    failed. A hunt's one-test probe above the alert counted as one, so the developers' fix
    was held while the re-alert (counting only commits failing the alerted tests) was not
    yet due: 166 commits waited at the end of the trace. Only full runs count now."""
    sc = Scenario(fix_delay_hours=12.0, flake_rate=0.05)
    trace = generate(500, 4.0, 0.05, seed=6)
    res = _qacloud(trace, 6, sc, detect_behind_block=False)
    _green_and_drained(res)


@pytest.mark.parametrize(
    ("seed", "rate", "changes", "culprit_rate", "config"),
    [
        (11, 1.0, {"bvt_hours": (0.5, 6.0), "flake_rate": 0.05}, 0.15, {"bisect_failed_tests_only": False}),
        (8, 3.0, {"revert_delay_hours": 4.0}, 0.15, {"overlap_confirmation": False}),
    ],
)
def test_an_alerted_block_still_failing_at_the_end_of_a_burst_is_alerted_again(
    seed, rate, changes, culprit_rate, config
):
    """The stress grid's two stalls of round 10. A culprit breaking an alerted culprit's test
    landed after the alert (seed 11: c00391 behind c00369's test_00); the developers'
    answer was the last push, and it still failed. A re-alert needed ``REALERT_TIPS`` commits
    failing after the alert, so the gate sat idle and silent: 44 and 198 commits unpromoted.
    Now the gate, idle, re-alerts ``REALERT_WAIT_RUNS`` mean run times after the alert (the
    simulator ticks the policy when ``wake_at`` asks, like the scheduler's periodic check)."""
    sc = Scenario(**changes)
    trace = generate(400, rate, culprit_rate, seed=seed)
    res = _qacloud(trace, seed, sc, **config)
    _green_and_drained(res)


def test_the_flake_model_decides_how_often_a_filtered_run_flakes():
    """``Scenario.flake_model``: "run" (the default) lets a run of one test flake as often
    as the whole suite; "test" spreads the flake rate over the suite's tests. A full run
    flakes with the flake rate in both; an unknown model is refused."""
    trace = generate(5, 1.0, 0.05, seed=1)
    one, half = ("test_03",), tuple(f"test_{n:02d}" for n in range(20))
    run = Simulator(trace, Scenario(flake_rate=0.02), POLICIES["qacloud"](SC, trace), 1)
    per_test = Simulator(
        trace, Scenario(flake_rate=0.02, flake_model="test"), POLICIES["qacloud"](SC, trace), 1
    )
    assert run.flake_chance(None) == run.flake_chance(one) == 0.02 == per_test.flake_chance(None)
    assert per_test.flake_chance(one) == pytest.approx(1 - 0.98 ** (1 / 40))  # ~0.0005
    assert per_test.flake_chance(half) == pytest.approx(1 - 0.98**0.5)
    with pytest.raises(ValueError, match="flake_model must be 'run' or 'test'"):
        Scenario(flake_model="suite")


def test_the_gate_starts_from_the_restricted_run_record_of_earlier_traces():
    """``Scenario.history``: the gate's learned flake rates start from the record it kept over
    that many earlier traces shaped like this one (other commits, hence other luck; the same
    record for the same inputs). Where a one-test run flakes like the suite ("run") the record
    shows it; where flakes are per test it shows far fewer; with the learning off, or no
    history, the gate starts empty."""
    trace = generate(300, 4.0, 0.05, seed=3)

    def record(**kw):
        sc = Scenario(**kw)
        return POLICIES["qacloud"](sc, trace).flake_history()

    run, per_test = record(history=2), record(history=2, flake_model="test")
    assert run == record(history=2) and run["runs"] > 20 and run["flakes"] >= 2
    assert per_test["runs"] > 20 and per_test["flakes"] == 0
    assert record() == {"runs": 0, "flakes": 0, "tests": {}}
    off = policies.qacloud_policy(Scenario(history=2), trace, learn_flake_rates=False)
    assert off.flake_history() == {"runs": 0, "flakes": 0, "tests": {}}
    with pytest.raises(ValueError, match="history must not be negative"):
        Scenario(history=-1)


def test_compare_pairs_the_same_seeds_and_reports_differences_with_their_ci(capsys):
    """``bench.gate_sim.compare`` (how docs/performance.md measures a lever): identical
    configurations differ by exactly 0 (same traces, same luck); a real lever shows up in
    the paired difference; safety counts are reported per side; a bad field is refused."""
    from bench.gate_sim import compare

    assert compare.seed_set(4) == [1, 2, 101, 102] and compare.seed_set(1) == [1]
    same = compare.compare({}, {}, [3.0], seeds=2, commits=80, jobs=1)
    for k in compare.METRICS:
        assert same["rates"][3.0][k]["diff"] == 0 and same["rates"][3.0][k]["ci"] == 0
    per_test = compare.compare({}, {}, [3.0], seeds=2, commits=80, jobs=1, flake_model="test")
    assert per_test["flake_model"] == "test" and per_test["rates"][3.0]["runs_per_commit"]["diff"] == 0
    off = compare.compare({}, {"finish_tip_runs": False}, [4.0], seeds=2, commits=150, jobs=1)
    per = off["rates"][4.0]
    assert per["runs_per_commit"]["diff"] != 0
    assert per["runs_per_commit"]["b"] - per["runs_per_commit"]["a"] == pytest.approx(
        per["runs_per_commit"]["diff"]
    )
    assert per["safety_a"]["master_breakage"] == per["safety_b"]["master_breakage"] == 0
    argv = ["--rates", "2", "--seeds", "2", "--commits", "40", "--jobs", "1", "--flake-model", "test"]
    assert compare.main(argv) == 0
    out = capsys.readouterr().out
    assert "| 2 | runs_per_commit |" in out and "| 2 | safety B | false rejections" in out
    assert "flakes per test" in out
    with pytest.raises(SystemExit) as e:
        compare.main(["--b", "no_such_knob=1"])
    assert e.value.code == 2
    assert "unknown PolicyConfig field 'no_such_knob'" in capsys.readouterr().err


def test_at_ten_percent_flakes_a_flaky_run_of_a_fix_does_not_block_staging_for_good():
    """Seed 37 at 3/h with 10 % flakes: a developer's fix after a still-failing alert was
    probed, the probe flaked on the very test still failing, and with no more commits coming
    the gate sat idle with 53 commits unpromoted. Idle, it now re-runs such a tip in full."""
    sc = Scenario(flake_rate=0.1)
    trace = generate(600, 3, 0.05, seed=37)  # the stress grid's cell (rate 3.0: the same trace)
    res = simulate(trace, sc, POLICIES["qacloud"], 37, "qacloud")
    _green_and_drained(res)


@pytest.mark.parametrize("confirmations", [1, 2])
def test_a_revert_is_not_blamed_on_two_flakes_of_different_tests(confirmations):
    """Seed 179 at 1/h: the gate's revert flaked once on test_11 (a later run passed it)
    and once on test_24; the two failing runs counted as a confirmation and the revert was
    blamed for both tests, leaving the last commits unpromoted. Now each test needs its own
    1 + x failures. With 2 confirmations the revert failed test_11, passed it, then failed
    it again: that last failure came after a pass of the same test, so it is a flake at
    once (it left the revert "failing" with nothing to run, 2 commits unpromoted)."""
    trace = generate(1000, 1.0, 0.05, seed=179)
    res = _qacloud(trace, 179, confirmations=confirmations)
    assert (res.master_breakage, res.illegal_promotions, res.error, res.violations) == (0, 0, None, [])
    assert (res.unpromoted, res.reverts_blamed, res.false_rejections) == (0, 0, 0)


@pytest.mark.parametrize(("seed", "flake_rate", "commits"), [(3, 0.02, 1000), (7, 0.1, 600)])
def test_bisecting_on_the_whole_suite_only_a_full_pass_answers_a_probe(seed, flake_rate, commits):
    """``bisect_failed_tests_only: false`` at 1/h. Seed 3: a hunt behind an earlier block
    (always filtered) left a one-test pass at the commit just above master; then the next
    commit failed a full run. The whole-suite hunt took that filtered pass for an answer,
    probed nothing, and 263 commits stayed unpromoted. Seed 7 at 10 % flakes: that commit
    had three full runs, each flaking on another test, and was taken as answered too (243
    unpromoted). Only a full pass answers the whole-suite question now."""
    sc = Scenario(flake_rate=flake_rate)
    trace = generate(commits, 1.0, 0.05, seed=seed)
    res = _qacloud(trace, seed, sc, bisect_failed_tests_only=False)
    _green_and_drained(res)


def test_trace_errors_name_file_line_and_field(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(
        '{"id": "a", "arrival_ts": 5, "is_culprit": false}\n'
        "not json\n"
        '{"id": "a", "arrival_ts": 1, "is_culprit": "yes"}\n'
        '{"id": "c", "arrival_ts": 9, "is_culprit": false, "fixes": "zz"}\n'
    )
    with pytest.raises(TraceError) as e:
        load_trace(p)
    msg = str(e.value)
    assert f"{p}:2: not valid JSON" in msg
    assert f"{p}:3: field 'id' 'a' duplicates line 1" in msg
    assert f"{p}:3: field 'is_culprit' must be true or false" in msg
    assert f"{p}:4: field 'fixes' must name an earlier commit id" in msg
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace(tmp_path / "missing.jsonl")


def test_generator_round_trips_and_workday_profile_concentrates_arrivals():
    trace = generate(400, 2.0, 0.05, seed=1, workday=True)
    assert parse_trace(dump_trace(trace)) == [
        type(c)(c.id, round(c.arrival_ts, 3), c.is_culprit, c.fixes) for c in trace
    ]
    busy = sum(9 <= (c.arrival_ts / 3600) % 24 < 18 for c in trace)
    assert busy / len(trace) > 0.7
    # a rate given as 3 or 3.0 is the same trace (the stress grid passes floats, tests ints)
    assert generate(50, 3, 0.05, seed=37) == generate(50, 3.0, 0.05, seed=37)
    assert generate(50, 3.0, 0.05, seed=37) != generate(50, 3.0, 0.05, seed=38)


def test_limits_match_the_note():
    assert runs_limit(0.05, 0.0) == pytest.approx(0.286, abs=1e-3)
    assert runs_limit(0.05, 0.02) == pytest.approx(0.308, abs=1e-3)
    assert throughput_limit(SC, 0.05) == pytest.approx(4.87, abs=0.02)


def test_cli_smoke_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "o.json"
    rc = main(
        "--generate 30 --rate 1 --pools 3 --bvt-hours 1,3 --flake-rate 0.02 --culprit-rate 0.05 "
        f"--policy all --seeds 2 --sweep 0.5,1 --json {out}".split()
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "| policy | runs/commit" in text
    for name in POLICIES:
        assert f"| {name}" in text
    doc = json.loads(out.read_text())
    assert {s["policy"] for s in doc["summaries"]} == set(POLICIES)
    assert set(doc["sweep"]["lambda_star"]) == set(POLICIES)


def test_cli_reports_a_bad_trace_and_a_bad_policy_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "arrival_ts": 0, "is_culprit": false}\n')
    assert main(["--trace", str(bad), "--policy", "R0"]) == 2
    assert f"{bad}:1: field 'id' must be a non-empty string" in capsys.readouterr().err
    assert main(["--generate", "5", "--rate", "1", "--policy", "nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert main(["--generate", "30", "--rate", "1", "--policy", "qacloud", "--flake-model", "test"]) == 0
    assert "| qacloud" in capsys.readouterr().out


def test_developers_answer_an_alert_with_a_fix_after_the_delay_and_it_unblocks_promotion():
    """x3 and x8 break the same test (test_36): x3 is blamed and reverted, the revert still
    fails, the gate alerts ``still-failing`` naming the revert; ``fix_delay_hours`` later the
    simulated developer pushes a fix of x8 (the culprit left in that tree), whose tip passes
    and is promoted with everything below it."""
    trace = parse_trace(
        "".join(
            f'{{"id": "{c}", "arrival_ts": {60 * n}, "is_culprit": {str(c.startswith("x")).lower()}}}\n'
            for n, c in enumerate(["a", "x3", "x8", "b"])
        )
    )
    sc = Scenario(flake_rate=0.0, fix_delay_hours=2.0)
    sim = Simulator(trace, sc, POLICIES["qacloud"](sc, trace), 1, "qacloud")
    alerts: list[tuple[float, Alert]] = []
    handle = sim.policy.handle

    def spy(ev):
        acts = handle(ev)
        alerts.extend((sim.now, a) for a in acts if isinstance(a, Alert))
        return acts

    sim.policy.handle = spy
    res = sim.run()
    assert [(a.kind, a.commit) for _, a in alerts] == [("still-failing", "revert-x3@b")]
    (fix,) = [c for c in sim.staging if c.startswith("fix-")]
    assert fix == "fix-x8@revert-x3@b"
    assert sim.arrival[fix] == pytest.approx(alerts[0][0] + 2.0)
    assert sim.staging[sim.master] == fix  # the fix's tip passed and master reached it
    assert (res.human_fixes, res.culprits_blamed, res.culprits_missed) == (1, 1, 0)
    assert (res.promoted, res.unpromoted, res.illegal_promotions, res.master_breakage) == (2, 0, 0, 0)


def test_the_alerted_commit_comes_from_the_alert_field_and_the_message_is_only_a_fallback():
    trace = parse_trace('{"id": "x3", "arrival_ts": 0, "is_culprit": true}\n')
    for alert in (
        Alert("still-failing", "no commit named in this message", "x3"),
        Alert("culprit-masked", "x3 still fails"),  # no commit field: parsed from the message
    ):
        sim = Simulator(trace, SC, PromotesUntested(SC.pool_names), 1, "p")
        sim._arrive(trace[0])
        sim._schedule_human_fix(alert)
        assert sim.human_fixed == {"x3"}, alert
        assert [(t, kind, c) for t, _, kind, c in sim._heap] == [(SC.fix_delay_hours, "fix", ("x3",))]


def test_a_filtered_run_takes_the_setup_share_plus_the_share_of_the_tests_it_runs():
    """CRN kept: the same draw as the full run, scaled to setup + (1 - setup) x tests/suite."""
    trace = parse_trace('{"id": "a", "arrival_ts": 0, "is_culprit": false}\n')
    sc = Scenario(setup_fraction=0.4)
    sim = Simulator(trace, sc, PromotesUntested(sc.pool_names), 5, "p")
    full = sim.duration("a", 0, None)
    assert 1.0 <= full <= 3.0
    assert sim.duration("a", 0, ("test_03",)) == pytest.approx(full * (0.4 + 0.6 / 40))
    assert sim.duration("a", 0, SUITE[:20]) == pytest.approx(full * 0.7)
    assert sim.duration("a", 0, SUITE) == pytest.approx(full)
    assert Simulator(trace, Scenario(setup_fraction=0.0), None, 5, "p").duration("a", 0, ("x",)) == 0
    # the gate's bisection and confirmation runs are filtered, so they are shorter in the bench
    trace = generate(200, 1.0, 0.05, seed=4)
    sim = Simulator(trace, SC, POLICIES["qacloud"](SC, trace), 4, "qacloud")
    sim.run()
    filtered = [r for r in sim.runs.values() if r.kind in ("bisect", "confirm") and r.cancelled_at is None]
    assert filtered and all(r.end - r.start <= 3.0 * (0.4 + 0.6 * 3 / 40) + 1e-9 for r in filtered)


def test_a_reference_policy_alerts_a_failing_span_instead_of_blaming_an_innocent():
    """a0 and x2 break different tests; x1 is blamed and reverted, but the span x1..revert
    still holds x2, which a pass/fail policy cannot isolate (every tree there holds x1): it
    re-runs the span once, then alerts naming its top; the developers' one fix of x2 closes
    the span, which passes and is promoted. Nobody innocent is blamed."""
    trace = parse_trace(
        "".join(
            f'{{"id": "{c}", "arrival_ts": {60 * n}, "is_culprit": {str(c.startswith("x")).lower()}}}\n'
            for n, c in enumerate(["a0", "x1", "b2", "x3", "b4"])
        )
    )
    sc = Scenario(flake_rate=0.0, pools=1)
    for name in ("R0-serial", "R3-mergify"):
        sim = Simulator(trace, sc, POLICIES[name](sc, trace), 1, name)
        alerts: list = []
        handle = sim.policy.handle

        def spy(ev, handle=handle, alerts=alerts):
            acts = handle(ev)
            alerts.extend(a for a in acts if isinstance(a, Alert))
            return acts

        sim.policy.handle = spy
        res = sim.run()
        assert res.false_rejections == 0, name
        assert (res.culprits_missed, res.unpromoted, res.master_breakage) == (0, 0, 0), name
        assert len(alerts) == 1 and alerts[0].kind == "still-failing", (name, alerts)
        fixes = [c for c in sim.staging if c.startswith("fix-")]
        assert len(fixes) == 1 and fixes[0].startswith("fix-x3@"), (name, fixes)
        assert sim.master == len(sim.staging) - 1, name  # everything promoted in the end


def test_lambda_star_needs_a_flat_latency_trend_a_bounded_p95_and_everything_promoted():
    ok = {"latency_slope": 0.0, "latency_p95": 5.0, "unpromoted_frac": 0.0}
    rows = {1.0: ok, 2.0: ok, 3.0: {**ok, "latency_p95": 30.0}, 4.0: ok}
    assert sustainable(rows) == 2.0  # the first rate that fails ends the sweep
    assert sustainable({1.0: ok, 2.0: {**ok, "latency_slope": 0.5}}) == 1.0  # backlog growing
    assert sustainable({1.0: {**ok, "unpromoted_frac": 0.05}}) == 0.0
    assert sustainable({1.0: {**ok, "latency_slope": math.nan}}) == 0.0
    assert slope([(0.0, 1.0), (10.0, 6.0), (20.0, 11.0)]) == pytest.approx(0.5)


# --- hot paths on real processes (smoke: structure only, never timings) -------------------------


def _cancel_session_expiry_timers() -> None:
    """IpmiClient.stop() (steps/ipmi.py, being reworked) leaves its parked sessions' 20 s expiry
    timers on the reactor, which trial reports as a dirty reactor; cancel exactly those (a no-op
    once stop() cancels them itself)."""
    from twisted.internet import reactor

    for call in reactor.getDelayedCalls():
        if getattr(call.func, "__qualname__", "").startswith("IpmiClient.") and call.active():
            call.cancel()


class IpmiFanoutSmoke(TrialTestCase):
    """bench.hotpaths' IPMI fan-out on a real ``lab.bmc`` process, at tiny sizes."""

    timeout = 120

    @pytest.fixture(autouse=True)
    def _inject(self, tmp_path):
        self.tmp = tmp_path
        self.addCleanup(_cancel_session_expiry_timers)

    async def test_ipmi_fanout_boots_every_bmc_and_reports_each_size(self):
        bmcs = hotpaths.BmcProcess(2, self.tmp)
        try:
            res = await hotpaths.ipmi_fanout_async(bmcs, (1, 2), concurrencies=(2, 1), repeat=1)
        finally:
            err = bmcs.stop()
        self.assertIsNotNone(bmcs.proc.poll())  # the BMC process is gone
        self.assertNotIn(bmcs.password, err)
        self.assertEqual(res["path"], "IPMI fan-out (N=2 vs N=1)")
        self.assertEqual(res["verified_bmcs"], 2)  # both on, next boot from the network
        self.assertEqual(res["configured_concurrency"], 2)
        self.assertEqual(set(res["by_concurrency"]), {"2", "1"})
        for rows in res["by_concurrency"].values():
            self.assertEqual(set(rows), {"1", "2"})
            for r in rows.values():
                self.assertGreater(r["median_s"], 0)
                self.assertEqual(len(r["runs_s"]), 1)
        self.assertEqual(res["ratios"]["2"]["1"], 1.0)
        self.assertAlmostEqual(res["ratio"], res["measured_s"] / res["baseline_s"])
        self.assertEqual(res["target"], 1.5)
        md = "\n".join(hotpaths.details_markdown([res]))
        self.assertIn("| 2 (configured) | 2 |", md)
        self.assertNotIn(bmcs.password, json.dumps(res))


class CobblerSyncSmoke(TrialTestCase):
    """bench.hotpaths' Cobbler path on the module's real cobblerd (``cobbler_server``)."""

    timeout = 120

    @pytest.fixture(autouse=True)
    def _inject(self, cobbler_server, tmp_path):
        self.server = cobbler_server
        self.tmp = tmp_path

    async def test_cobbler_registers_and_syncs_then_removes_the_systems(self):
        res = await hotpaths.cobbler_sync_async(self.server, self.tmp, (1, 2), repeat=1, pool_name="bsmoke")
        self.assertEqual(res["path"], "Cobbler register + sync (2 systems vs 1)")
        self.assertEqual(set(res["by_n"]), {"1", "2"})
        for n, r in res["by_n"].items():
            self.assertEqual((r["registered"], r["pxe_files"]), (int(n), int(n)))
            self.assertGreater(r["register_s"], 0)
            self.assertGreater(r["sync_s"], 0)
        self.assertAlmostEqual(res["ratio"], res["measured_s"] / res["baseline_s"])
        self.assertAlmostEqual(res["per_system_ratio"], res["ratio"] / 2)
        self.assertFalse([s for s in self.server.system_names() if s.startswith("bsmoke-")])
        self.assertIn("| 2 |", "\n".join(hotpaths.details_markdown([res])))


def test_a_failing_hot_path_is_reported_not_raised(monkeypatch):
    def broken():
        raise RuntimeError("virtual BMC process did not become ready")

    monkeypatch.setattr(hotpaths, "gate_decision", lambda: {"path": "gate decision", "error": "x"})
    monkeypatch.setattr(hotpaths, "ipmi_fanout", broken)
    monkeypatch.setattr(hotpaths, "cobbler_sync", lambda: {"path": "Cobbler", "error": "y"})
    out = hotpaths.run_all()
    assert out[1] == {"path": "broken", "error": "RuntimeError: virtual BMC process did not become ready"}
    assert hotpaths.details_markdown(out) == []


def test_cobbler_pool_is_a_valid_inventory_pool_of_n_systems(tmp_path):
    pool = hotpaths.cobbler_pool("bp", 201, 50, "http://127.0.0.1:1/cobbler_api", tmp_path)
    assert len(pool.hosts) == 50 and len({h.mac for h in pool.hosts}) == 50
    assert [h.name for h in hotpaths.cobbler_pool("bp", 201, 1, "http://127.0.0.1:1/x", tmp_path).hosts] == [
        "bp-mgmt"
    ]
    with pytest.raises(ValueError, match="n_systems must be 1-200"):
        hotpaths.cobbler_pool("bp", 201, 0, "http://127.0.0.1:1/x", tmp_path)


def test_breakdown_accounts_for_every_pool_hour_and_every_blamed_culprit():
    from bench.gate_sim import breakdown as bd

    b = bd.breakdown(3.0, seeds=1, commits=300)
    trace = generate(300, 3.0, 0.05, seed=1)
    res = simulate(trace, SC, POLICIES["qacloud"], 1, "qacloud")
    assert math.isclose(b["pool_hours_total_per_commit"] * 300, res.pool_hours, rel_tol=1e-9)
    assert math.isclose(sum(b["pool_hours_per_commit"].values()), b["pool_hours_total_per_commit"])
    ph = b["phases"]
    assert ph["unblock"]["n"] + ph["unblock_chained"]["n"] == ph["hunt"]["n"] == res.culprits_blamed
    assert all(v["mean"] >= 0 for v in ph.values() if v["n"])
    assert sum(b["p95_commits_by_overlapping_spans"].values()) >= 1
    assert "| tip pass |" in bd.to_markdown(b)
    assert math.isclose(b["runs_total_per_commit"] * 300, res.runs, rel_tol=1e-9)  # cancelled ones too
    assert math.isclose(sum(b["runs_per_commit"].values()), b["runs_total_per_commit"])
    # an ablation changes the policy (here: no detection runs behind a block)
    off = bd.breakdown(3.0, seeds=1, commits=300, options={"detect_behind_block": False})
    assert off["pool_hours_per_commit"] != b["pool_hours_per_commit"]
    # a float option (load-adaptive batching, on by default) is parsed as a number; at 3/h the
    # default batches, so turning it off costs runs
    assert bd.policy_option("batch_load=0") == ("batch_load", 0.0)
    assert bd.policy_option("confirmations=2") == ("confirmations", 2)
    assert bd.policy_option("finish_tip_runs=False") == ("finish_tip_runs", False)
    for bad in ("confirmations=1.5", "speculate=yes", "batch_load=high", "nofield", "no_such_field=1"):
        with pytest.raises(argparse.ArgumentTypeError, match=bad.partition("=")[0]):
            bd.policy_option(bad)
    unbatched = bd.breakdown(3.0, seeds=1, commits=300, options={"batch_load": 0.0})
    assert b["runs_total_per_commit"] < unbatched["runs_total_per_commit"]
    with pytest.raises(SystemExit):
        bd.main(["--option", "no_such_field=1"])
