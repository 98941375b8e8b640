"""``qacloud gate status`` and the dashboard's ``status.json`` it reads (the real master's
answer is checked in tests/test_pool_release.py)."""

from __future__ import annotations

import json

from master.cli_gate import needs_human, render
from master.dashboard import GateDashboard, gate_status
from tests.test_dashboard import gate_view, still_failing_view


def test_status_json_says_what_the_gate_does_and_what_needs_a_human():
    doc = gate_status(gate_view("m0", "g1", "c2", "a3"), ["pool1", "pool2"])
    assert doc["state"] == "bisecting" and "after g1 up to c2" in doc["text"]
    assert (doc["master"], doc["staging"], doc["waiting"]) == ("g1", "a3", ["c2", "a3"])
    pools = {p["name"]: p for p in doc["pools"]}
    assert pools["pool1"]["label"] == "idle" and pools["pool2"]["label"] == "quarantined"
    assert doc["attention"] == [
        "pool pool2 quarantined: 3 consecutive infrastructure failures (last: BMC 127.0.0.1:16021 timeout)"
    ]
    assert needs_human(doc)
    json.dumps(doc)  # a JSON document as it is
    text = render(doc)
    assert text.splitlines()[0].startswith("Bisecting: the first failing commit after g1")
    assert "master g1  staging a3  not on master: 2" in text
    assert "  pool2  quarantined  quarantined: 3 consecutive infrastructure failures" in text
    assert "needs a human:\n  - pool pool2 quarantined: 3 consecutive" in text

    # before the gate decided anything: starting, the inventory's pools unknown, nothing to do
    doc = gate_status(None, ["pool1", "pool2"])
    assert (doc["state"], doc["attention"], doc["waiting"]) == ("starting", [], [])
    assert [(p["name"], p["label"]) for p in doc["pools"]] == [("pool1", "unknown"), ("pool2", "unknown")]
    assert not needs_human(doc) and "needs a human" not in render(doc)


def test_a_stopped_promotion_and_an_unrepaired_block_need_a_human():
    """Master moved outside the gate (halted) and a revert that still fails the blamed test
    (a real policy's view, as in test_dashboard): both make ``qacloud gate status`` exit 1."""
    v = gate_view("m0", "g1", "c2", "a3")
    v["pools"]["pool2"] = {"state": "idle", "run_id": None, "commit": None, "reason": None}
    v["halted"] = True
    v["alerts"] = [{"kind": "master-moved", "message": "master moved to 1234 outside the gate", "at": 0}]
    doc = gate_status(v, ["pool1", "pool2"])
    assert doc["state"] == "halted" and doc["attention"] == [] and needs_human(doc)
    assert "needs a human:\n  - Promotion stopped: master moved to 1234 outside the gate" in render(doc)
    assert "latest alerts:\n  master-moved: master moved to 1234" in render(doc)

    doc = gate_status(still_failing_view(), ["p1"])
    assert doc["state"] == "blocked" and needs_human(doc)
    assert doc["attention"][0].startswith(
        "still-failing: test_vm still fail(s) at 1 commit(s) pushed after A"
    )
    assert "  2026-09-21 15:13 UTC  still-failing: test_vm" in render(doc)

    # all green: nothing for a human
    green = {"master": "a3", "staging": "a3", "candidates": [], "pools": {}, "alerts": [], "runs": []}
    doc = gate_status(green, ["p1"])
    assert doc["state"] == "green" and not needs_human(doc)


def test_the_dashboard_serves_status_json_and_says_why_it_failed():
    """The WSGI app answers ``status.json`` as JSON, also when building it failed (500)."""
    dash = GateDashboard(["pool1"])
    dash._call = lambda fn, *args: None  # no gate view stored yet
    seen = {}

    def start(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    (body,) = dash({"PATH_INFO": "/status.json"}, start)
    assert seen["status"] == "200 OK" and seen["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(body)["state"] == "starting"

    def broken(fn, *args):
        raise RuntimeError("the database is locked")

    dash._call = broken
    (body,) = dash({"PATH_INFO": "/status.json"}, start)
    assert seen["status"] == "500 Internal Server Error"
    assert json.loads(body) == {"error": "the gate dashboard failed: RuntimeError: the database is locked"}
    (body,) = dash({"PATH_INFO": "/index.html"}, start)
    assert seen["headers"]["Content-Type"] == "text/html; charset=utf-8"
    assert body == b"<p>the gate dashboard failed: RuntimeError: the database is locked</p>"
