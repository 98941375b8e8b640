"""`qacloud power` and `qacloud check` as processes, against virtual BMCs and the real Cobbler."""

from __future__ import annotations

import socket
import subprocess

import yaml

from lab.bmc import BmcFleet, VirtualBmc
from lab.secrets import write_secrets
from tests.support.procs import BIN, free_port, simple_pool, write_inventory


def _qacloud(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "qacloud"), *args], capture_output=True, text=True, timeout=120)


def _lab(tmp_path, cobbler_url: str, cobbler_user: str, extra_secrets: dict[str, str]):
    ports = [free_port(socket.SOCK_DGRAM) for _ in range(3)]
    pool = simple_pool("pool1", 51, bmc_ports=ports, cobbler_url=cobbler_url)
    pool["cobbler"]["username"] = cobbler_user
    inv = write_inventory(tmp_path / "inventory.yaml", [pool])
    secrets = write_secrets(tmp_path / "secrets", {"bmc-pool1", "worker-pool1-qavm"}, extra_secrets)
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "repository": {"url": str(tmp_path)},
                "inventory": str(inv),
                "secrets_dir": str(tmp_path / "secrets"),
                "provisioning": {"ipmi_timeout": 1, "ipmi_retries": 0},
            }
        )
    )
    fleet = BmcFleet()
    names = ["pool1-mgmt", "pool1-kvm1", "pool1-kvm2"]
    for name, port in zip(names, ports):
        fleet.add(VirtualBmc(name, port, "admin", secrets["bmc-pool1"]))
    return inv, settings, secrets, fleet.start(), ports


def test_power_commands_drive_the_bmcs(tmp_path):
    inv, _settings, secrets, fleet, ports = _lab(tmp_path, "http://127.0.0.1:9/cobbler_api", "cobbler", {})
    try:
        sec = str(tmp_path / "secrets")
        r = _qacloud("power", "status", "--inventory", str(inv), "--secrets", sec)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [
            "pool1-mgmt: power off",
            "pool1-kvm1: power off",
            "pool1-kvm2: power off",
        ]
        r = _qacloud("power", "pxe", "--inventory", str(inv), "--secrets", sec, "--host", "pool1-kvm1")
        assert r.stdout.strip() == "pool1-kvm1: power off (next boot: network)", r.stderr
        assert fleet["pool1-kvm1"].bootdev == "network"
        r = _qacloud("power", "cycle", "--inventory", str(inv), "--secrets", sec, "--pool", "pool1")
        assert r.returncode == 0 and r.stdout.count("power on") == 3, r.stderr
        r = _qacloud("power", "off", "--inventory", str(inv), "--secrets", sec, "--host", "pool1-mgmt")
        assert r.stdout.strip() == "pool1-mgmt: power off"
        assert [fleet[n].power for n in ("pool1-mgmt", "pool1-kvm1", "pool1-kvm2")] == [False, True, True]
        # a dead BMC: a clear line naming host and BMC, exit 1, no password anywhere
        fleet.remove("pool1-kvm2")
        r = _qacloud(
            "power", "status", "--inventory", str(inv), "--secrets", sec, "--timeout", "1", "--retries", "0"
        )
        assert r.returncode == 1
        assert (
            f"pool1-kvm2: ERROR: host pool1-kvm2: BMC 127.0.0.1:{ports[2]}: power status: no answer"
            in r.stderr
        )
        assert secrets["bmc-pool1"] not in r.stdout + r.stderr
        r = _qacloud("power", "on", "--inventory", str(inv), "--secrets", sec, "--host", "nope")
        assert r.returncode == 1 and "no host 'nope'" in r.stderr
    finally:
        fleet.stop()


def test_check_reports_one_line_per_problem(tmp_path, cobbler_server):
    inv, settings, secrets, fleet, ports = _lab(
        tmp_path, cobbler_server.url, cobbler_server.username, {"cobbler": cobbler_server.password}
    )
    nfs = socket.create_server(("127.0.51.2", 2049))  # stand-in NFS server: only TCP reachability is checked
    try:
        r = _qacloud("check", "--settings", str(settings))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "lab OK (3 BMCs, 1 pool(s))" in r.stdout
        # break things: a BMC with another password, a missing profile, NFS down
        fleet.remove("pool1-kvm1")
        fleet.add(VirtualBmc("pool1-kvm1", ports[1], "admin", "other-password"))
        text = inv.read_text().replace("profile: qacloud-kvm", "profile: qacloud-nothere", 1)
        inv.write_text(text)
        nfs.close()
        r = _qacloud("check", "--settings", str(settings))
        assert r.returncode == 1
        lines = r.stdout.splitlines()
        auth = "power status: authentication failed (wrong password?)"
        assert f"host pool1-kvm1: BMC 127.0.0.1:{ports[1]}: {auth}" in lines
        assert f"Cobbler at {cobbler_server.url}: profile 'qacloud-nothere' does not exist" in lines
        assert any(line.startswith("NFS server 127.0.51.2:2049 not reachable") for line in lines), lines
        assert len(lines) == 3, lines
        assert all(v not in r.stdout + r.stderr for v in secrets.values())
    finally:
        nfs.close()
        fleet.stop()
