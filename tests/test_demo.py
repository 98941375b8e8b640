"""`make demo` end to end, in CI mode: the real lab, master, workers and gate on 127.0.0.1.

The demo runs as ``python -m lab.demo run --keep-up`` with ``CI=true``, a private var directory
and free ports. The test checks the outcome over the master's REST API and the gate dashboard,
the provisioning from Cobbler's and the virtual BMCs' own records, then stops the demo and
checks that no process or port is left behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from lab.demo import Paths, _alive, tracked_pids
from lab.demo_project import BROKEN_TEST, CULPRIT_AUTHOR, CULPRIT_MESSAGE
from tests.reliability import secret_scan
from tests.support.procs import REPO, Deployment, Master, git, wait_for


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def _tcp_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_demo_ci_run(tmp_path: Path) -> None:
    var = tmp_path / "demo"
    out = open(tmp_path / "demo.out", "wb")
    env = dict(os.environ, CI="true")
    argv = [sys.executable, "-m", "lab.demo", "run", "--var", str(var), "--ports", "auto", "--keep-up"]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    paths = Paths(var)
    try:
        # the demo's own limit is 420 s (typically 30-90 s): never give up before it does
        wait_for(
            lambda: paths.result.exists() or proc.poll() is not None, 450, "the demo's story", interval=0.5
        )
        assert proc.poll() is None, f"the demo exited early ({proc.returncode}):\n{_text(tmp_path)}"
        result = json.loads(paths.result.read_text())
        assert result["ok"], _text(tmp_path)
        settings = yaml.safe_load(paths.settings.read_text())
        inventory = yaml.safe_load(paths.inventory.read_text())
        base = f"http://127.0.0.1:{settings['www']['port']}/"

        # master at the fix, per the repository itself
        log = git("log", "--format=%H %s", "master", cwd=paths.origin).splitlines()
        fix = git("rev-parse", "staging", cwd=paths.origin)
        assert git("rev-parse", "master", cwd=paths.origin) == fix == result["expected_master"]
        culprit = next(line.split()[0] for line in log if line.endswith(CULPRIT_MESSAGE))

        # the builds, over the REST API
        # a run the gate cancelled just before the end may still be powering its pool off
        def all_complete() -> list | None:
            bs = json.loads(_get(base + "api/v2/builders/gate-bvt/builds?property=*"))["builds"]
            return bs if bs and all(b["complete"] for b in bs) else None

        builds = wait_for(all_complete, 60, "every gate build complete")
        props = [{k: v[0] for k, v in b["properties"].items()} for b in builds]
        at_culprit = [p for b, p in zip(builds, props, strict=True) if p.get("revision") == culprit]
        assert any(BROKEN_TEST in (p.get("failed_tests") or []) for p in at_culprit), at_culprit
        last = [(b, p) for b, p in zip(builds, props, strict=True) if p.get("revision") == fix]
        assert last and last[-1][0]["results"] == 0  # SUCCESS at the fix

        # the culprit blamed: the gate's dashboard (served by the master) names it and its author
        page = _get(base + "plugins/wsgi_dashboards/gate/index.html").decode()
        assert culprit[:8] in page and "Bob Breaker" in page
        assert result["blamed"] == [culprit] and result["culprit_author"] == CULPRIT_AUTHOR

        # every run provisioned its pool: Cobbler's systems, nopxe call-backs and the BMC histories
        lab = paths.lab
        hosts = {
            p["name"]: [p["management"]["name"], *[h["name"] for h in p["hypervisors"]]]
            for p in inventory["pools"]
        }
        systems = (
            lab / "cobbler" / "sandbox" / "upper" / "var" / "lib" / "cobbler" / "collections" / "systems"
        )
        svc_log = (lab / "cobbler" / "svc.log").read_text()
        # judged runs (SUCCESS/FAILURE) provisioned their pool; a run the gate cancelled may not have
        # (an infrastructure failure is FAILURE too, but may have stopped before the PXE boot)
        judged = [
            (b, p)
            for b, p in zip(builds, props, strict=True)
            if b["results"] in (0, 2) and not p.get("infra_failure")
        ]
        runs_per_pool = {name: sum(1 for _, p in judged if p.get("pool") == name) for name in hosts}
        assert sum(runs_per_pool.values()) == len(judged) > 0

        # a full gate run with provisioning leaked no secret (BMC, Cobbler, worker, web users)
        # into any build log, the master's twistd.log or the REST API
        secret_values = {f.name: f.read_text().strip() for f in (var / "secrets").iterdir()}
        demo_master = Master(var / "master", paths.settings, settings["www"]["port"], secret_values)
        report = secret_scan.scan(Deployment(var, demo_master, []), secret_values)
        assert report.build_logs > 0 and {n for n in secret_values if n.startswith("bmc-")}, report
        assert report.hits == [], report.hits
    finally:
        subprocess.run(
            [sys.executable, "-m", "lab.demo", "stop", "--var", str(var)], cwd=REPO, timeout=150, check=False
        )
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()
    assert proc.returncode == 0, _text(tmp_path)

    # the lab's own records (written by the lab process, final copy at its stop)
    records = json.loads((lab / "records.json").read_text())["hosts"]
    for pool, names in hosts.items():
        for name in names:
            cobbler_system = json.loads((systems / f"{name}.json").read_text())
            assert cobbler_system["name"] == name and cobbler_system["profile"]
            n = runs_per_pool[pool]
            # every host installed at least once (installer call-back through Cobbler's front end);
            # every run PXE-booted it (checked per run below)
            assert svc_log.count(f"/op/nopxe/system/{name} ") >= 1, name
            assert records[name]["installs"] >= 1 and records[name]["bootdev"].count("network") >= n
        for b, p in judged:
            if p.get("pool") != pool:
                continue
            lo, hi = b["started_at"] - 1, b["complete_at"] + 1
            for name in names:
                ev = [e for e in records[name]["events"] if lo <= e["at"] <= hi]
                assert {"kind": "bootdev", "value": "network"} in [
                    {"kind": e["kind"], "value": e["value"]} for e in ev
                ]
                assert any(e["kind"] == "power" and e["value"] in ("on", "reset") for e in ev), (
                    name,
                    b["buildid"],
                )

    # nothing left behind: every tracked PID gone, every port closed
    pids = tracked_pids(paths)
    assert {"lab", "cobblerd", "cobbler-svc", "master", "worker-pool1-qavm", "worker-pool2-qavm"} <= set(pids)
    assert [n for n, pid in pids.items() if _alive(pid)] == []
    cobbler_port = int(inventory["pools"][0]["cobbler"]["url"].split(":")[2].split("/")[0])
    # cobblerd's own (free) XML-RPC port, as the demo's Cobbler sandbox settings name it
    cobbler_settings = paths.lab / "cobbler" / "sandbox" / "upper" / "etc" / "cobbler" / "settings.yaml"
    xmlrpc_port = yaml.safe_load(cobbler_settings.read_text())["xmlrpc_port"]
    assert xmlrpc_port not in (25151, cobbler_port), xmlrpc_port
    for port in (
        settings["www"]["port"],
        settings["workers"]["port"],
        settings["try"]["port"],
        xmlrpc_port,
        cobbler_port,
    ):
        assert not _tcp_open(port), port
    for pool in inventory["pools"]:
        for h in [pool["management"], *pool["hypervisors"]]:
            assert _udp_free(h["bmc"]["port"]), h["name"]


def _text(tmp_path: Path) -> str:
    f = tmp_path / "demo.out"
    return f.read_text(errors="replace")[-6000:] if f.exists() else ""
