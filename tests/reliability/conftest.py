"""Fixtures of the reliability tests: the session's fault recorder."""

from __future__ import annotations

import pytest

from tests.reliability.recorder import Recorder


@pytest.fixture(scope="session")
def reliability():
    """Record injected faults; written to var/reliability/results.json at the end of the session."""
    rec = Recorder()
    yield rec
    rec.save()
