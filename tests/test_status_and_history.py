"""GitHub commit status and per-test history from real BVT builds on a real master and worker.

One deployment runs three forced ``gate-bvt`` builds of a small unittest suite (demo mode,
``RunDemoTests`` records every result through Buildbot's test-results API):

1. the staging head: ``test_flaky`` fails (it fails the first time it ever runs);
2. the staging head again: everything passes — the same revision, so that failure was a flake;
3. a commit whose test command cannot be executed (exit 127): an infrastructure failure.

The GitHub API is a stand-in (``GitHubStandIn``: a tiny HTTP server on 127.0.0.1 recording
``POST /repos/<owner>/<name>/statuses/<sha>``), the only part that cannot run here.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.reliability.secret_scan import scan
from tests.support.procs import GitProject, git, make_deployment, simple_pool, wait_for

TOKEN = "ghp_StandInToken_9f3Kq2"
RUN = '#!/bin/sh\nexec python3 -m unittest -v "$@"\n'
SUITE_TEMPLATE = """\
import os
import unittest

FLAG = {flag!r}


class Smoke(unittest.TestCase):
    def test_stable(self):
        self.assertTrue(True)

    def test_flaky(self):
        first = not os.path.exists(FLAG)
        open(FLAG, "w").close()
        self.assertFalse(first, "fails the first time it ever runs")
"""


class GitHubStandIn:
    """Stand-in for api.github.com: records commit-status POSTs (path, auth header, JSON body)."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                posts.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "json": json.loads(body)}
                )
                out = b'{"id": 1}'
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> GitHubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def states(self, sha: str) -> list[str]:
        return [p["json"]["state"] for p in self.posts if p["path"].endswith(f"/statuses/{sha}")]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("status")
    flag = tmp / "flaky-ran-once"
    proj = GitProject.create(
        tmp / "repo", {"run-tests.sh": RUN, "test_app.py": SUITE_TEMPLATE.format(flag=str(flag))}
    )
    staging = proj.head("staging")
    infra = proj.commit(
        "runner gone", {"run-tests.sh": "#!/bin/sh\necho 'runner: not found' >&2\nexit 127\n"}
    )
    git("push", "-q", "origin", "HEAD:refs/heads/review", cwd=proj.work)  # not on staging
    with GitHubStandIn() as gh:
        dep = make_deployment(
            tmp / "qa",
            str(proj.origin),
            [simple_pool("pool1", 1)],
            extra={
                "reporters": {
                    "github": {
                        "repository": "apache/cloudstack",
                        "token_secret": "github-token",
                        "base_url": gh.url,
                    }
                }
            },
            extra_secrets={"github-token": TOKEN},
        )
        dep.start()
        try:
            dep.wait_workers()
            m = dep.master
            gate = {b["name"]: b["builderid"] for b in m.api("builders")["builders"]}["gate-bvt"]
            builds = []
            for n, sha in enumerate([staging, staging, infra], start=1):
                status, body = m.rpc(
                    "forceschedulers/force",
                    "force",
                    {"builderid": str(gate), "pool": "pool1", "revision": sha, "reason": f"run {n}"},
                    user="admin",
                )
                assert status == 200, body
                builds = sorted(m.wait_builds_finished(n), key=lambda b: b["buildid"])
                wait_for(lambda sha=sha, n=n: len(gh.posts) >= 2 * n, 30, f"status posts of build {n}")
            yield {"dep": dep, "gh": gh, "builds": builds, "staging": staging, "infra": infra}
        finally:
            dep.stop()


def test_github_commit_status_pending_then_result(ran):
    gh, builds = ran["gh"], ran["builds"]
    assert [b["results"] for b in builds] == [2, 0, 2]  # failure, success, failure (infra)
    props = ran["dep"].master.api(f"builds/{builds[2]['buildid']}/properties")["properties"][0]
    assert "exit code 127" in props["infra_failure"][0]

    # the test failure is the commit's "failure"; the rerun's pass is "success"
    assert gh.states(ran["staging"]) == ["pending", "failure", "pending", "success"]
    # an infrastructure failure is "error": not the commit's fault
    assert gh.states(ran["infra"]) == ["pending", "error"]
    for p in gh.posts:
        assert re.fullmatch(r"/repos/apache/cloudstack/statuses/[0-9a-f]{40}", p["path"]), p
        assert p["auth"] == f"token {TOKEN}"
        assert p["json"]["context"] == "qacloud/bvt"
        assert p["json"]["target_url"].startswith(ran["dep"].master.url)

    # the token is in no build log, REST document or twistd.log
    report = scan(ran["dep"], {"github-token": TOKEN})
    assert report.build_logs > 0 and report.hits == [], report.hits


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=20) as r:
        return r.read().decode()


def test_per_test_history_shows_real_results_and_flake_rate(ran):
    m, builds = ran["dep"].master, ran["builds"]
    base = m.url + "plugins/wsgi_dashboards/gate/"

    # the recorded name of test_flaky, from the test-results API of the first build
    sets = m.api(f"builds/{builds[0]['buildid']}/test_result_sets")["test_result_sets"]
    names = {
        r["test_name"]
        for s in sets
        for r in m.api(f"test_result_sets/{s['test_result_setid']}/results")["test_results"]
    }
    (flaky,) = [n for n in names if n.endswith("test_flaky")]
    (stable,) = [n for n in names if n.endswith("test_stable")]

    page = _get(base + f"test/{urllib.parse.quote(flaky, safe='')}.html")
    assert f'id="test-name">{flaky}<' in page
    # both runs of the same revision, one failed: 1 flaky failure in 2 runs
    assert 'id="stats">2 runs, 1 failed, 1 flaky' in page, page
    assert 'id="flake-rate">50.0%<' in page, page
    runs = page.split('id="runs"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<tr class="(pass|fail)"><td><a href="([^"]+)">', runs)
    assert sorted(rows) == sorted(
        [
            ("fail", f"/#/builders/{builds[0]['builderid']}/builds/{builds[0]['number']}"),
            ("pass", f"/#/builders/{builds[1]['builderid']}/builds/{builds[1]['number']}"),
        ]
    ), runs
    assert runs.count(f"<code>{ran['staging'][:12]}</code>") == 2

    overview = _get(base + "tests.html")
    assert f">{flaky}</a></td><td>2</td><td>1</td><td>50.0%</td>" in overview, overview
    assert f">{stable}</a></td><td>2</td><td>0</td><td>0.0%</td>" in overview, overview
