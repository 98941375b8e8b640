"""Secrets never leak and control needs a login, on a real deployment that provisions its pool.

One real master + worker; the pool's hosts are the simulated lab (lab/simlab.py: virtual BMCs
over real IPMI/UDP, fast hosts PXE-installed through the session's real cobblerd), so the BVT
build runs ProvisionPool/TeardownPool with the BMC and Cobbler passwords in play; the mail
reporter has an SMTP password and try users have theirs. After a forced BVT build that
provisions, one whose BMC refuses the password (an infrastructure failure) and a refused
``buildbot try``, every build log, twistd.log and the REST API are searched for every secret
(tests/reliability/secret_scan.py): zero hits. Then: anonymous force/stop/rebuild are refused
(403), and every port the master listens on is bound to 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from lab.simlab import SimLab
from master.inventory import load_inventory
from tests.reliability.secret_scan import scan
from tests.support.procs import GitProject, free_port, make_deployment, simple_pool, wait_for
from tests.support.smtp import SmtpServer
from tests.test_try import GOOD_PATCH, REFUSED, try_client

SUITE = {"run-tests.sh": "#!/bin/sh\necho 'ran the suite'\nexit 0\n"}


@pytest.fixture
def lab_deployment(tmp_path, cobbler_server):
    proj = GitProject.create(tmp_path / "repo", SUITE)
    pool = simple_pool(
        "relpool",
        7,
        bmc_ports=[free_port(2) for _ in range(3)],
        ssh_port=free_port(),
        cobbler_url=cobbler_server.url,
    )
    pool["cobbler"]["username"] = cobbler_server.username
    with SmtpServer() as smtp:
        dep = make_deployment(
            tmp_path / "qa",
            str(proj.origin),
            [pool],
            extra={
                "provisioning": {
                    "enabled": True,
                    "install_timeout": 60,
                    "install_poll_interval": 0.3,
                    "ipmi_timeout": 2,
                    "ipmi_retries": 1,
                    "ipmi_backoff": 0.1,
                    # the BMC's password is changed between builds below; a session kept from
                    # the first build would (rightly) still be valid, so log in afresh each call
                    "ipmi_session_reuse": 0,
                    "cobbler_timeout": 10,
                },
                "reporters": {
                    "mail": {
                        "relayhost": "127.0.0.1",
                        "port": smtp.port,
                        "to": ["qa@example.org"],
                        "user": "qacloud",
                        "password_secret": "smtp",
                    }
                },
            },
            extra_secrets={"cobbler": cobbler_server.password, "smtp": "smtp-pw-" + os.urandom(6).hex()},
        )
        inv = load_inventory(dep.root / "inventory.yaml")
        lab = SimLab(inv, dict(dep.master.secrets), tmp_path / "simlab", cobbler_server, install_time=0.3)
        lab.start()
        dep.start()
        try:
            dep.wait_workers()
            yield dep, proj, lab
        finally:
            dep.stop()
            lab.stop()


def _force(m, pool: str) -> int:
    return m.force(pool, "reliability")


def _listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by ``pid`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            m = re.match(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    out = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A = LISTEN
                continue
            addr_hex, port_hex = cols[1].split(":")
            if width == 8:
                addr = ".".join(str(int(addr_hex[i : i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                addr = "v6:" + addr_hex
            out.append((addr, int(port_hex, 16)))
    return out


def test_no_secret_leaks_and_control_needs_login(lab_deployment, tmp_path, reliability):
    dep, proj, lab = lab_deployment
    m = dep.master
    start = time.monotonic()

    # 1. a BVT build that provisions the pool through Cobbler + IPMI, then powers it off
    _force(m, "relpool")
    (b1,) = m.wait_builds_finished(1, timeout=150)
    steps1 = {s["name"]: s for s in m.api(f"builds/{b1['buildid']}/steps")["steps"]}
    summary = {n: (s["results"], s["state_string"]) for n, s in steps1.items()}
    assert b1["results"] == 0, summary
    assert {"provision", "bvt", "teardown"} <= set(steps1), steps1
    assert all(lab.installs(h) == 1 for h in lab.hosts), {h: lab.installs(h) for h in lab.hosts}
    assert not any(lab.is_on(h) for h in lab.hosts)

    # 2. a build whose BMC password is wrong: an infrastructure failure naming host and BMC
    mgmt = "relpool-mgmt"
    bmc = lab.bmc(mgmt)
    right = dep.master.secrets["bmc-relpool"]
    bmc.authdata = {"admin": "not-" + right}  # the BMC's password changed under us
    _force(m, "relpool")
    builds = m.wait_builds_finished(2, timeout=150)
    b2 = max(builds, key=lambda b: b["buildid"])
    props = m.api(f"builds/{b2['buildid']}?property=infra_failure")["builds"][0]["properties"]
    assert b2["results"] != 0
    assert "infra_failure" in props, props
    reason = props["infra_failure"][0]
    assert mgmt in reason and f"127.0.0.1:{bmc.port}" in reason and "authentication" in reason, reason
    bmc.authdata = {"admin": right}

    # 3. try with a wrong password (refused), so the try path has run too
    patch = tmp_path / "p.diff"
    patch.write_text(GOOD_PATCH)
    rc, out = try_client(dep, proj, patch, password="wrong-password", timeout=60, until=REFUSED)
    assert rc != 0, out

    # 4. the scan
    secrets = dict(dep.master.secrets)
    report = scan(dep, secrets)
    in_play = sorted(n for n in secrets if n.startswith(("bmc-", "cobbler", "smtp", "user-", "worker-")))
    reliability.record(
        "secrets: log and REST API scan after provisioning BVT builds",
        area="secrets",
        injected=len(secrets),
        survived=len(secrets) - len({n for n, _ in report.hits}),
        data_lost=len(report.hits),
        detail=f"{len(secrets)} secrets ({', '.join(in_play)}) searched in {report.build_logs} build logs, "
        f"{report.documents} documents, {report.bytes_scanned} bytes (REST API and gate dashboard, "
        "anonymous + admin; twistd.log) after 2 provisioning builds (one BMC auth failure) and a "
        "refused try: "
        f"{len(report.hits)} hits",
        test="test_no_secret_leaks_and_control_needs_login",
        seconds=time.monotonic() - start,
    )
    assert report.hits == [], report.hits
    assert report.build_logs >= 6, report
    # the scan can find things: a value that is in the logs is reported
    canary = scan(dep, {"canary": "ran the suite"})
    assert canary.hits, "the scanner found nothing it should have found"
    pool = scan(dep, {"pool": "relpool"})  # ... and it reads the gate dashboard's pages too
    assert "anonymous: /plugins/wsgi_dashboards/gate/status.json" in {where for _, where in pool.hits}

    # 5. anonymous control requests are refused
    builder = _force(m, "relpool")  # as admin: fine
    refused = []
    for path, method, params in (
        ("forceschedulers/force", "force", {"builderid": str(builder), "pool": "relpool"}),
        (f"builds/{b1['buildid']}", "stop", {"reason": "x"}),
        (f"builds/{b1['buildid']}", "rebuild", {}),
    ):
        status, body = m.rpc(path, method, params)
        refused.append(status == 403)
        assert status == 403, (path, method, status, body)
    try_refused = rc != 0
    reliability.record(
        "access: anonymous force/stop/rebuild, try with a wrong password",
        area="access",
        injected=len(refused) + 1,
        survived=sum(refused) + int(try_refused),
        detail="REST control calls answered 403; `buildbot try` with a wrong password refused",
        test="test_no_secret_leaks_and_control_needs_login",
    )

    # 6. every port of the master is on loopback (web UI, PB, try)
    listening = _listening_addresses(m.pid())
    ports = {p for _, p in listening}
    import yaml

    settings = yaml.safe_load(dep.master.settings.read_text())
    expected = {settings["www"]["port"], settings["workers"]["port"], settings["try"]["port"]}
    public = [(a, p) for a, p in listening if not a.startswith("127.")]
    reliability.record(
        "access: master ports bound to 127.0.0.1",
        area="access",
        injected=len(listening),
        survived=len(listening) - len(public),
        detail=f"listening: {sorted(listening)}; web/PB/try = {sorted(expected)}",
        test="test_no_secret_leaks_and_control_needs_login",
    )
    assert expected <= ports, (listening, expected)
    assert public == [], listening
    wait_for(lambda: len(m.builds()) >= 3, 30, "the admin's forced build")
