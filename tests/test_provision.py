"""A whole pool (1 management server + 2 KVM hosts) provisioned through a real master and worker.

Real pieces: the Buildbot master and worker processes, cobblerd (``cobbler_server`` fixture),
virtual BMCs over IPMI/UDP and fast simulated hosts (lab/simlab.py) that read the PXE config
Cobbler's sync wrote and call Cobbler's nopxe endpoint. Then the faults, each a clear
infrastructure failure: install never calls back, BMC not answering, wrong BMC password,
Cobbler down — and after each the pool is powered off and nothing is left registered.
Another pool's systems on the same Cobbler keep their PXE files untouched throughout (the step
syncs only its own pool's systems).
"""

from __future__ import annotations

import os
import time
import xmlrpc.client
from pathlib import Path

from lab.simlab import SimLab
from master.inventory import load_inventory
from tests.support.procs import GitProject, free_port, make_deployment, simple_pool, wait_for

SUITE = {"run-tests.sh": "#!/bin/sh\necho 'ran the suite'\nexit 0\n"}
HOSTS = ["pool1-mgmt", "pool1-kvm1", "pool1-kvm2"]
INSTALL_TIMEOUT = 6


def _pool(name: str, index: int, cobbler_url: str, username: str) -> dict:
    ports = [free_port(2) for _ in range(3)]
    p = simple_pool(name, index, bmc_ports=ports, ssh_port=free_port(), cobbler_url=cobbler_url)
    p["cobbler"]["username"] = username
    return p


SENTINEL_NS = 1_000_000_000 * 10**9  # an mtime no file Cobbler writes now can have


def _other_pool_on_the_same_cobbler(server) -> dict[Path, tuple[int, int]]:
    """Two systems of another pool (another team's lab, sharing this Cobbler server); their PXE
    files' mtime is set to a sentinel. Returns (inode, mtime) per file: a file removed or written
    again (a full ``cobbler sync``) no longer matches."""
    api = xmlrpc.client.ServerProxy(server.xmlrpc_url, allow_none=True)
    tok = api.login(server.username, server.password)
    files = []
    for i, name in enumerate(("other-kvm1", "other-kvm2")):
        mac = f"52:54:00:49:00:{i + 1:02x}"
        attrs = {"name": name, "profile": "qacloud-kvm", "mac_address": mac, "interface": "eth0"}
        api.xapi_object_edit("system", name, "add", attrs, tok)
        files.append(server.tftpboot / "pxelinux.cfg" / ("01-" + mac.replace(":", "-")))
    for f in files:
        os.utime(f, ns=(SENTINEL_NS, SENTINEL_NS))
    return {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}


def test_pool_provisioned_end_to_end_and_faults(tmp_path, cobbler_server):
    proj = GitProject.create(tmp_path / "repo", SUITE)
    dead_cobbler = f"http://127.0.0.1:{free_port()}/cobbler_api"
    pools = [
        _pool("pool1", 41, cobbler_server.url, cobbler_server.username),
        _pool("pool2", 42, dead_cobbler, cobbler_server.username),  # "Cobbler down"
    ]
    dep = make_deployment(
        tmp_path / "qa",
        str(proj.origin),
        pools,
        extra={
            "provisioning": {
                "enabled": True,
                "install_timeout": INSTALL_TIMEOUT,
                "install_poll_interval": 0.3,
                "ipmi_timeout": 1,
                "ipmi_retries": 1,
                "ipmi_backoff": 0.2,
                "cobbler_timeout": 5,
            }
        },
        extra_secrets={"cobbler": cobbler_server.password},
    )
    inv = load_inventory(tmp_path / "qa" / "inventory.yaml")
    secrets = dep.master.secrets
    lab = SimLab(inv, secrets, tmp_path / "lab", cobbler_server, install_time=0.5).start()
    other = _other_pool_on_the_same_cobbler(cobbler_server)
    dep.start()
    m = dep.master
    try:
        dep.wait_workers()
        gate = {b["name"]: b["builderid"] for b in m.api("builders")["builders"]}["gate-bvt"]
        count = 0

        def build(pool: str) -> tuple[dict, dict, dict]:
            nonlocal count
            status, body = m.rpc(
                "forceschedulers/force",
                "force",
                {"builderid": str(gate), "pool": pool, "reason": "t"},
                user="admin",
            )
            assert status == 200, body
            count += 1
            start = time.monotonic()
            b = m.wait_builds_finished(count, timeout=90)
            b = sorted(b, key=lambda x: x["buildid"])[-1]
            props = m.api(f"builds/{b['buildid']}?property=*")["builds"][0]["properties"]
            steps = {s["name"]: s for s in m.api(f"builds/{b['buildid']}/steps")["steps"]}
            b["elapsed"] = time.monotonic() - start
            return b, props, steps

        def logs(b: dict, step: str) -> dict[str, str]:
            out = {}
            for lg in m.api(f"builds/{b['buildid']}/steps/{step}/logs")["logs"]:
                chunks = m.api(f"logs/{lg['logid']}/contents")["logchunks"]
                out[lg["name"]] = "".join(c["content"] for c in chunks)
            return out

        def assert_clean(b: dict) -> None:
            text = "".join(v for s in ("provision", "teardown") for v in logs(b, s).values())
            for name, value in secrets.items():
                assert value not in text, f"secret {name} leaked into a log"

        # --- 1. the happy path -------------------------------------------------------------
        b, props, steps = build("pool1")
        assert b["results"] == 0, (b, steps)
        assert list(steps)[-1] == "teardown"
        assert steps["provision"]["state_string"] == "installed 3/3 hosts"
        assert "infra_failure" not in props
        for h in HOSTS:
            assert lab.installs(h) == 1
            assert lab.bootdev_history(h) == ["network"]
            assert lab.power_history(h) == ["on", "off"]  # cycle of an off host, then teardown
            assert cobbler_server.get_system(h)["netboot_enabled"] is False
            assert not lab.is_on(h)
        plogs = logs(b, "provision")
        assert set(HOSTS) <= set(plogs), plogs.keys()
        assert "installed: SSH" in plogs["pool1-kvm2"]
        assert "Cobbler sync of the pool's 3 systems done (PXE configs written)" in plogs["provision"]
        assert_clean(b)
        # the other pool's PXE files were never removed or rewritten (a full sync would have)
        assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in other} == other

        # --- 2. an installer that never calls back ----------------------------------------
        lab.hang_installer("pool1-kvm2")
        b, props, steps = build("pool1")
        assert b["results"] == 2
        reason = props["infra_failure"][0]
        assert reason.startswith("host pool1-kvm2 (BMC 127.0.0.1:")
        assert f"install did not finish within {INSTALL_TIMEOUT} s" in reason
        assert "never called back" in reason
        assert steps["provision"]["state_string"].startswith("infrastructure failure: host pool1-kvm2")
        assert b["elapsed"] < INSTALL_TIMEOUT + 25
        assert all(not lab.is_on(h) for h in HOSTS)
        assert not [s for s in cobbler_server.system_names() if s.startswith("pool1-")]
        assert_clean(b)
        lab.hang_installer("pool1-kvm2", False)

        # --- 3. a BMC that does not answer ---------------------------------------------------
        lab.kill_bmc("pool1-kvm1")
        b, props, steps = build("pool1")
        assert b["results"] == 2
        reason = props["infra_failure"][0]
        kvm1 = inv.pool("pool1").host("pool1-kvm1").bmc
        assert reason.startswith(f"host pool1-kvm1: BMC 127.0.0.1:{kvm1.port}: ")
        assert "no answer within 1 s after 2 tries" in reason
        assert not lab.is_on("pool1-mgmt") and not lab.is_on("pool1-kvm2")
        assert not [s for s in cobbler_server.system_names() if s.startswith("pool1-")]

        # --- 4. a wrong BMC password (the BMC comes back with another one) ------------------
        from lab.hosts import HostBmc

        lab.fleet.add(HostBmc(lab.hosts["pool1-kvm1"], kvm1.port, "admin", "not-the-secret"))
        b, props, steps = build("pool1")
        assert b["results"] == 2
        reason = props["infra_failure"][0]
        assert reason.startswith(f"host pool1-kvm1: BMC 127.0.0.1:{kvm1.port}: ")
        assert "authentication failed (wrong password?)" in reason
        assert not [s for s in cobbler_server.system_names() if s.startswith("pool1-")]
        assert_clean(b)

        # --- 5. Cobbler down -----------------------------------------------------------------
        b, props, steps = build("pool2")
        assert b["results"] == 2
        reason = props["infra_failure"][0]
        assert reason.startswith(f"Cobbler at {dead_cobbler}: login as {cobbler_server.username}: ")
        assert "connection refused" in reason
        assert all(not lab.is_on(h.name) for h in inv.pool("pool2").hosts)
        assert_clean(b)
        assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in other} == other
    finally:
        dep.stop()
        lab.stop()
        wait_for(lambda: not (m.basedir / "twistd.pid").exists(), 30, "the master to stop")
