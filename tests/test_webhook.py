"""The signed push webhook (schedulers/webhook.py): payload checks, and a real master's gate
reacting to a signed push within seconds although its poll interval is 600 s."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request

import pytest

from schedulers.webhook import WebhookError, parse_push, sign, verify_signature
from tests.support.procs import GitProject, make_deployment, simple_pool, wait_for

SECRET = "webhook-Secret-4f1b9c"
PASS = {"run-tests.sh": "#!/bin/sh\necho 'ran the suite'\nexit 0\n"}
SHA = "a" * 40


def payload(ref: str = "refs/heads/staging", after: str = SHA, **extra) -> dict:
    return {
        "ref": ref,
        "before": "0" * 40,
        "after": after,
        "repository": {"full_name": "apache/cloudstack"},
        "commits": [{"id": after, "message": "x"}],
        **extra,
    }


# ---------------------------------------------------------------- payload and signature checks


def test_parse_push_accepts_json_and_form_payloads():
    body = json.dumps(payload()).encode()
    p = parse_push(body)
    assert (p.ref, p.after, p.repository, p.commits) == ("refs/heads/staging", SHA, "apache/cloudstack", 1)
    form = urllib.parse.urlencode({"payload": body.decode()}).encode()
    assert parse_push(form, "application/x-www-form-urlencoded", body) == p


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps(payload(ref=None)).encode(), "'ref'"),
        (json.dumps(payload(ref="staging")).encode(), "'ref'"),
        (json.dumps(payload(after="not-a-sha")).encode(), "'after'"),
        (json.dumps({**payload(), "repository": "x"}).encode(), "'repository'"),
        (json.dumps({**payload(), "commits": {"a": 1}}).encode(), "'commits'"),
    ],
)
def test_parse_push_names_the_bad_field(body, field):
    with pytest.raises(WebhookError) as e:
        parse_push(body)
    assert e.value.code == 400 and field in e.value.message


def test_signature_is_checked_in_constant_time_and_never_echoed():
    body = b'{"ref": "refs/heads/staging"}'
    verify_signature(SECRET, body, sign(SECRET, body))
    verify_signature(SECRET, body, None, sign(SECRET, body).removeprefix("sha256="))  # Gitea
    for hub, why in [
        (None, "missing signature"),
        (sign("other", body), "wrong signature"),
        (sign(SECRET, body + b" "), "wrong signature"),
        ("md5=abc", "sha256="),
    ]:
        with pytest.raises(WebhookError) as e:
            verify_signature(SECRET, body, hub)
        assert e.value.code == 403 and why in e.value.message and SECRET not in e.value.message


# ---------------------------------------------------------------- a real master


def _view(dep) -> dict | None:
    with sqlite3.connect(dep.master.basedir / "state.sqlite", timeout=10) as conn:
        row = conn.execute(
            "SELECT s.value_json FROM object_state s JOIN objects o ON o.id = s.objectid"
            " WHERE o.name = 'gate' AND o.class_name = 'GateScheduler' AND s.name = 'view'"
        ).fetchone()
    return json.loads(row[0]) if row else None


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_signed_push_makes_the_gate_fetch_now(tmp_path):
    proj = GitProject.create(tmp_path / "repo", PASS)
    dep = make_deployment(
        tmp_path / "qa",
        str(proj.origin),
        [simple_pool("pool1", 1)],
        # a 600 s poll: within this test only the webhook can make the gate see a push
        extra={
            "repository": {"poll_interval": 600, "webhook_secret": "webhook"},
            "gate": {"confirm_runs": 1},
        },
        extra_secrets={"webhook": SECRET},
    )
    dep.start()
    try:
        dep.wait_workers()
        m = dep.master
        hook = m.url + "change_hook/qacloud"
        initial = proj.head("master")
        wait_for(lambda: (_view(dep) or {}).get("master") == initial, 30, "the gate's first fetch")
        sha = proj.commit("a change", {"a.txt": "a\n"})
        proj.push_staging()
        good = json.dumps(payload(after=sha)).encode()
        js = {"Content-Type": "application/json", "X-GitHub-Event": "push"}

        # rejected: unsigned, wrong signature, signed but malformed; ignored: another branch
        status, text = post(hook, good, js)
        assert status == 403 and "missing signature" in text, text
        status, text = post(hook, good, {**js, "X-Hub-Signature-256": sign("guess", good)})
        assert status == 403 and "wrong signature" in text, text
        bad = b'{"ref": "refs/heads/staging", "after": '
        status, text = post(hook, bad, {**js, "X-Hub-Signature-256": sign(SECRET, bad)})
        assert status == 400 and "not valid JSON" in text, text
        other = json.dumps(payload(ref="refs/heads/feature", after=sha)).encode()
        status, text = post(hook, other, {**js, "X-Hub-Signature-256": sign(SECRET, other)})
        assert status == 200 and "ignored: push to refs/heads/feature" in text, text
        ping = json.dumps({"zen": "hi"}).encode()
        status, text = post(
            hook, ping, {**js, "X-GitHub-Event": "ping", "X-Hub-Signature-256": sign(SECRET, ping)}
        )
        assert status == 200 and "ignored" in text, text
        assert "the gate fetches now" not in (m.basedir / "twistd.log").read_text()
        assert m.builds() == [] and (_view(dep) or {}).get("staging") == initial

        # accepted (form-encoded, as GitHub's default content type): the gate tests and promotes it
        form = urllib.parse.urlencode({"payload": good.decode()}).encode()
        status, text = post(
            hook,
            form,
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-GitHub-Event": "push",
                "X-Hub-Signature-256": sign(SECRET, form),
            },
        )
        assert status == 202 and f"accepted: push to staging at {sha[:12]}" in text, text
        wait_for(lambda: (_view(dep) or {}).get("staging") == sha, 15, "the gate to see the pushed staging")
        build = wait_for(lambda: next(iter(m.builds()), None), 30, "a gate build of the pushed commit")
        wait_for(lambda: proj.head("master") == sha, 90, "the gate to promote the pushed commit")
        props = m.api(f"builds/{build['buildid']}/properties")["properties"][0]
        assert props["gate_kind"][0] == "tip" and props["revision"][0] == sha

        log = (m.basedir / "twistd.log").read_text()
        for line in (
            "webhook: rejected a request from 127.0.0.1 (403): missing signature",
            "webhook: rejected a request from 127.0.0.1 (403): wrong signature",
            "webhook: rejected a request from 127.0.0.1 (400): payload is not valid JSON",
            f"webhook: accepted: push to staging at {sha[:12]}",
        ):
            assert line in log, line
        assert SECRET not in log
    finally:
        dep.stop()
