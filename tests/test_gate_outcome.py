"""The build -> outcome classification of the shared BVT build contract."""

from __future__ import annotations

from buildbot.process.results import CANCELLED, EXCEPTION, FAILURE, RETRY, SUCCESS

from schedulers.outcome import classify


def test_success_is_pass():
    assert classify(SUCCESS, {}).outcome == "pass"


def test_failure_with_and_without_test_names():
    c = classify(FAILURE, {"failed_tests": (["test_b", "test_a"], "BVT")})
    assert (c.outcome, c.failed_tests) == ("fail", ("test_a", "test_b"))
    assert classify(FAILURE, {}).failed_tests == ()  # unknown names: bisect on the whole suite


def test_infrastructure_is_never_evidence():
    c = classify(FAILURE, {"infra_failure": ("BMC 127.0.0.1:16010 did not answer", "ipmi")})
    assert c.outcome == "inconclusive" and "BMC 127.0.0.1:16010" in c.reason
    for r in (EXCEPTION, RETRY, CANCELLED, None):
        assert classify(r, {"failed_tests": ["x"]}).outcome == "inconclusive"
