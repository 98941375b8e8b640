"""Pure parsing and judging of BVT output (steps/testresults.py), on real nose/unittest output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from steps.testresults import (
    ParseError,
    UnittestVerboseParser,
    classify,
    failures_html,
    group_requested,
    parse_shard,
    parse_xunit,
    shard,
    summary_text,
)

FIXTURES = Path(__file__).parent / "marvin_fixtures"

SETUP_CRASH = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="nosetests" tests="1" errors="1" failures="0" skip="0">
<testcase classname="&lt;nose.suite" name="ContextSuite context=TestRouters&gt;:setup" time="0.000">
<error type="builtins.TimeoutError" message="timed out after 1500 s waiting for the router">
<![CDATA[Traceback:
TimeoutError: timed out after 1500 s waiting for the router
]]></error></testcase></testsuite>"""

MIXED = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="nosetests" tests="4" errors="1" failures="1" skip="1">
<testcase classname="test_v.TestVolumes" name="test_01" time="1.250"></testcase>
<testcase classname="test_v.TestVolumes" name="test_02" time="2.5"><failure type="builtins.AssertionError"
 message="10 != 20">Traceback\nAssertionError: 10 != 20</failure></testcase>
<testcase classname="test_v.TestVolumes" name="test_03" time="0.1"><error type="urllib.error.URLError"
 message="&lt;urlopen error [Errno 111] Connection refused&gt;">Traceback</error></testcase>
<testcase classname="test_v.TestVolumes" name="test_04" time="0"><skipped type="unittest.case.SkipTest"
 message="no local storage">Exception: no local storage</skipped></testcase>
<testcase classname="nose.failure.Failure" name="runTest" time="0"><error type="builtins.ImportError"
 message="cannot import name 'Foo'">Traceback</error></testcase>
</testsuite>"""


def test_parse_xunit_statuses_durations_and_ids():
    out = parse_xunit(MIXED, "test/integration/smoke/test_v.py")
    got = [(o.name, o.status, o.duration) for o in out]
    assert got == [
        ("TestVolumes.test_01", "pass", 1.25),
        ("TestVolumes.test_02", "fail", 2.5),
        ("TestVolumes.test_03", "infra", 0.1),
        ("TestVolumes.test_04", "skip", 0.0),
        ("(import)", "fail", 0.0),
    ]
    assert out[1].test_id == "test/integration/smoke/test_v.py:TestVolumes.test_02"
    assert out[1].message == "AssertionError: 10 != 20"
    assert out[2].reason == "management server unreachable (Connection refused)"
    assert out[3].message == "no local storage"


def test_setupclass_crash_on_environment_is_infra():
    (o,) = parse_xunit(SETUP_CRASH, "smoke/test_routers.py")
    assert (o.name, o.status) == ("TestRouters.setUpClass", "infra")
    assert "set-up error from the environment in TestRouters.setUpClass" in o.reason


def test_setupclass_crash_from_the_code_is_evidence():
    text = SETUP_CRASH.replace("TimeoutError", "KeyError").replace("timed out after 1500 s waiting for", "no")
    (o,) = parse_xunit(text, "smoke/test_routers.py")
    assert (o.name, o.status) == ("TestRouters.setUpClass", "fail")


def test_classify_rules():
    assert classify("failure", "C.t", False, "AssertionError: 1 != 2") == ("fail", "")
    assert classify("error", "C.t", False, "TimeoutError: timed out")[0] == "fail"  # only in set-up
    assert classify("error", "C.setUpClass", True, "Marvin Init Failed")[0] == "infra"
    assert classify("error", "C.t", False, "MaxRetryError: HTTPConnectionPool")[0] == "infra"
    assert classify("skip", "C.t", False, "") == ("skip", "")


@pytest.mark.parametrize("bad", ["", "<testsuite", "<html><body/></html>"])
def test_parse_xunit_rejects_garbage_with_the_file_named(bad):
    with pytest.raises(ParseError, match=r"smoke/test_x\.py"):
        parse_xunit(bad, "smoke/test_x.py")


def test_unittest_verbose_parser_on_real_output(tmp_path):
    (tmp_path / "test_demo.py").write_text(
        "import unittest\n\n\nclass T(unittest.TestCase):\n"
        "    def test_a(self):\n        pass\n\n"
        "    def test_b(self):\n        print('noise')\n        self.assertEqual(1, 2)\n\n"
        "    def test_c(self):\n        raise KeyError('x')\n\n"
        "    @unittest.skip('not here')\n    def test_d(self):\n        pass\n"
    )
    p = subprocess.run(
        [sys.executable, "-m", "unittest", "-v"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    parser = UnittestVerboseParser()
    outs = [o for line in (p.stderr + p.stdout).splitlines() if (o := parser.feed(line))]
    outs = [parser.with_details(o) for o in outs]
    assert [(o.test_id, o.status) for o in outs] == [
        ("test_demo.T.test_a", "pass"),
        ("test_demo.T.test_b", "fail"),
        ("test_demo.T.test_c", "fail"),
        ("test_demo.T.test_d", "skip"),
    ]
    assert outs[1].message == "AssertionError: 1 != 2"
    assert "KeyError" in outs[2].detail


def test_unittest_parser_status_on_a_later_line():
    parser = UnittestVerboseParser()
    assert parser.feed("test_x (mod.C.test_x) ... ") is None
    assert parser.feed("some output") is None
    o = parser.feed("FAIL")
    assert (o.test_id, o.status) == ("mod.C.test_x", "fail")


def test_group_requested_tests():
    assert group_requested(["a.py:C.t1", "b.py", "a.py:C.t2", "b.py:C.t9"]) == {
        "a.py": ["a.py:C.t1", "a.py:C.t2"],
        "b.py": [],
    }


def test_shard_balances_by_duration_and_covers_everything():
    files = ["a", "b", "c", "d", "e"]
    durations = {"a": 100, "b": 60, "c": 50, "d": 10}  # e unknown -> mean 55
    parts = [shard(files, durations, 2, i) for i in range(2)]
    assert sorted(parts[0] + parts[1]) == files
    loads = [sum(durations.get(f, 55) for f in p) for p in parts]
    assert abs(loads[0] - loads[1]) <= 50
    assert parts == [["a", "c"], ["b", "d", "e"]]  # longest first onto the least loaded shard
    assert shard(files, {}, 1, 0) == files
    with pytest.raises(ValueError, match="not a valid shard"):
        shard(files, {}, 2, 2)


def test_parse_shard():
    assert parse_shard("2/3") == (1, 3)
    assert parse_shard(None) is None
    with pytest.raises(ValueError, match="bvt_shard"):
        parse_shard("4/3")


def test_summary_and_html():
    assert summary_text(41, 120, 1, 0, 0, 0) == "41/120 tests, 1 failed"
    assert summary_text(3, None, 0, 1, 1, 2) == "3 tests, 1 skipped, 1 intermittent, 2 set-up errors"
    (o,) = parse_xunit(SETUP_CRASH, "smoke/test_routers.py")
    page = failures_html([], [o], [])
    assert (
        "Set-up errors (infrastructure) (1)" in page
        and "smoke/test_routers.py:TestRouters.setUpClass" in page
    )
    assert "<script>" not in failures_html([o.__class__("p.py", "<script>", "fail")], [], [])
