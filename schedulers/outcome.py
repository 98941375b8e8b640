"""Classify a finished BVT build: pass, fail or inconclusive (the shared build contract).

SUCCESS -> pass. ``infra_failure`` set, or EXCEPTION / RETRY / CANCELLED (worker lost,
interrupted, infrastructure) -> inconclusive: never evidence against a commit. Otherwise a
FAILURE is a fail, with the names in ``failed_tests`` (empty when the BVT did not record them:
the gate then bisects on the whole suite).
"""

from __future__ import annotations

from dataclasses import dataclass

from buildbot.process.results import CANCELLED, EXCEPTION, FAILURE, RETRY, SKIPPED, SUCCESS, WARNINGS, Results


@dataclass(frozen=True)
class Classified:
    outcome: str  # "pass" | "fail" | "inconclusive"
    failed_tests: tuple[str, ...] = ()
    reason: str = ""


def classify(results: int | None, properties: dict | None) -> Classified:
    """``results``: the build's Buildbot result code; ``properties``: name -> value (plain, or
    the data API's (value, source) pairs)."""
    props = {
        k: (v[0] if isinstance(v, (list, tuple)) and len(v) == 2 else v)
        for k, v in (properties or {}).items()
    }
    infra = props.get("infra_failure")
    if infra:
        return Classified("inconclusive", (), f"infrastructure: {infra}")
    if results in (SUCCESS, WARNINGS):
        return Classified("pass")
    if results in (EXCEPTION, RETRY, CANCELLED, SKIPPED) or results is None:
        name = Results[results] if results is not None and 0 <= results < len(Results) else "unknown"
        return Classified("inconclusive", (), f"build ended with {name}")
    if results == FAILURE:
        failed = props.get("failed_tests") or []
        if isinstance(failed, str):
            failed = [failed]
        return Classified("fail", tuple(sorted({str(t) for t in failed})))
    return Classified("inconclusive", (), f"unexpected build result {results!r}")
