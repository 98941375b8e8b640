"""Promotion-rejected alerts: once per episode (same commit, same reason), recovery logged.

Drives ``GateScheduler._act`` directly (its policy and Buildbot services are not needed for
this: the notifier and the push are replaced by recorders at the method boundary).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.python import log
from twisted.python.failure import Failure

from schedulers.events import Alert, Promote, Promoted
from schedulers.gate import GateScheduler


def _gate(monkeypatch, pushes: list[Promoted]):
    gate = GateScheduler.__new__(GateScheduler)  # no Buildbot master needed for _act
    gate._rejected = None
    gate._queued = []
    gate.master_branch = "master"
    notified: list[tuple] = []
    monkeypatch.setattr(gate, "_notify", lambda method, *args: notified.append((method, *args)))

    async def promote(sha: str) -> Promoted:
        return pushes.pop(0)

    monkeypatch.setattr(gate, "_promote", promote)
    return gate, notified


def _run(gate: GateScheduler, action) -> None:
    """Run ``gate._act(action)``; with the recorders above it completes synchronously."""
    done: list = []
    defer.ensureDeferred(gate._act(action)).addBoth(done.append)
    assert done == [None], done[0].getTraceback() if done and isinstance(done[0], Failure) else done


def test_rejected_promotion_alerts_once_per_episode(monkeypatch):
    lines: list[str] = []
    observer = lambda ev: lines.append(" ".join(map(str, ev.get("message", ()))))  # noqa: E731
    log.addObserver(observer)
    try:
        a, b = "a" * 40, "b" * 40
        frozen = Alert("promotion-rejected", f"promotion of {a[:12]} failed: frozen", a)
        gate, notified = _gate(monkeypatch, [Promoted(a, True)])
        for _ in range(3):  # the gate retries on every fetch
            _run(gate, frozen)
        assert notified == [("alert", "promotion-rejected", frozen.message)]
        assert sum("gate: ALERT promotion-rejected" in ln for ln in lines) == 1, lines
        assert sum("still rejected" in ln for ln in lines) == 2, lines
        # another reason (or another commit) is a new episode: alerted again
        other = Alert("promotion-rejected", f"promotion of {a[:12]} failed: master moved", a)
        _run(gate, other)
        newer = Alert("promotion-rejected", f"promotion of {b[:12]} failed: master moved", b)
        _run(gate, newer)
        assert [n[2] for n in notified] == [frozen.message, other.message, newer.message]
        # the push goes through: recovery logged, the episode is over
        _run(gate, Promote(a))
        assert gate._rejected is None and gate._queued == [Promoted(a, True)]
        assert any("gate: promotion recovered" in ln for ln in lines), lines
        _run(gate, frozen)  # a later rejection is a new episode
        assert len(notified) == 4
    finally:
        log.removeObserver(observer)
