"""The real-PXE tier: IPMI power-on -> PXE (DHCP + TFTP from Cobbler's files) -> installer -> nopxe.

A QEMU VM (TCG) on a bridge in a network namespace this test creates; dnsmasq serves what the
real Cobbler's ``sync`` wrote; the VM's BMC (lab/qemu_bmc.py) is driven over real IPMI/UDP by
Debian's ipmitool; the busybox installer calls Cobbler's ``nopxe`` endpoint, which clears the
system's netboot flag, then powers off.
"""

from __future__ import annotations

import os
import subprocess
import time
import xmlrpc.client

import pytest
from twisted.internet import reactor, task, threads
from twisted.trial import unittest

from lab.bmc import BmcFleet
from lab.pxe import BRIDGE_IP, PxeLab, build_installer
from lab.qemu_bmc import QemuBmc
from master.inventory import load_inventory
from steps.cobbler import CobblerClient
from tests.support.procs import free_port, simple_pool, write_inventory

PROFILE = "qacloud-pxe"
BMC_PASSWORD = "pxe-bmc-pw"


class RealPxeTest(unittest.TestCase):
    timeout = 120

    @pytest.fixture(autouse=True)
    def _lab(self, cobbler_server, tmp_path):
        import socket

        self.server = cobbler_server
        kernel, initrd = build_installer()  # cached under var/pxe-cache
        cobbler_server.ensure_profiles([PROFILE], kernel=kernel, initrd=initrd)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            self.bmc_port = s.getsockname()[1]
        raw = simple_pool("px", 40, bmc_ports=[self.bmc_port, free_port(), free_port()])
        for h in [raw["management"], *raw["hypervisors"]]:
            h["profile"] = PROFILE
        self.pool = load_inventory(write_inventory(tmp_path / "px.yaml", [raw])).pool("px")
        self.host = self.pool.management
        self.lab = PxeLab(tmp_path / "pxe", cobbler_server.tftpboot, cobbler_server.svc_port)
        self.fleet = BmcFleet()
        try:
            self.lab.start()
            qmp = self.lab.add_vm(self.host.name, self.host.mac)
            self.fleet.add(QemuBmc(self.host.name, self.bmc_port, "admin", BMC_PASSWORD, qmp))
            self.fleet.start()
            yield
        finally:
            self.fleet.stop()
            self.lab.stop()
            api = xmlrpc.client.ServerProxy(cobbler_server.xmlrpc_url, allow_none=True)
            tok = api.login(cobbler_server.username, cobbler_server.password)
            for h in self.pool.hosts:
                api.remove_system(h.name, tok)
        assert subprocess.run(["ip", "netns", "pids", self.lab.netns], capture_output=True).returncode != 0, (
            "the test's network namespace must be gone"
        )

    def ipmitool(self, *args: str):
        argv = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(self.bmc_port),
                "-U", "admin", "-E", *args]  # fmt: skip
        env = dict(os.environ, IPMI_PASSWORD=BMC_PASSWORD)
        return threads.deferToThread(
            subprocess.run, argv, capture_output=True, text=True, env=env, timeout=30
        )

    async def wait(self, probe, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await probe():
                return
            await task.deferLater(reactor, 0.5, lambda: None)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.lab.diagnostics()}")

    async def test_ipmi_power_on_pxe_installs_and_clears_netboot(self):
        t0 = time.monotonic()
        c = CobblerClient(self.server.url, self.server.username, self.server.password)
        await c.register_pool(self.pool)
        # the Cobbler server's address on the pool network, as the installer reaches it
        api = xmlrpc.client.ServerProxy(self.server.xmlrpc_url, allow_none=True)
        tok = api.login(self.server.username, self.server.password)
        api.xapi_object_edit(
            "system",
            self.host.name,
            "edit",
            {"server": BRIDGE_IP, "kernel_options": "console=ttyS0 panic=-1"},
            tok,
        )
        await c.sync()
        cfg = self.server.tftpboot / "pxelinux.cfg" / ("01-" + self.host.mac.replace(":", "-"))
        text = cfg.read_text()
        self.assertIn(
            f"inst.ks=http://{BRIDGE_IP}:{self.server.svc_port}/cblr/svc/op/autoinstall/system/", text
        )
        self.assertTrue(await c.get_netboot(self.host.name))

        for args in (("chassis", "bootdev", "pxe"), ("power", "on")):
            r = await self.ipmitool(*args)
            self.assertEqual(r.returncode, 0, f"ipmitool {' '.join(args)}: {r.stderr}")
        self.assertIn("on", (await self.ipmitool("power", "status")).stdout)

        async def nopxe_called():
            return not await c.get_netboot(self.host.name)

        await self.wait(nopxe_called, 75, "the installer's nopxe call-back (netboot flag cleared)")
        booted = time.monotonic() - t0

        async def powered_off():
            return "is off" in (await self.ipmitool("power", "status")).stdout

        await self.wait(powered_off, 20, "the installer to power the VM off")
        console = self.lab.console(self.host.name)
        self.assertIn("installer: nopxe done", console)
        self.assertIn(f"/cblr/svc/op/nopxe/system/{self.host.name}", console)
        dnsmasq_log = (self.lab.workdir / "dnsmasq.log").read_text()
        self.assertIn(f"sent {cfg}", dnsmasq_log)  # the VM read Cobbler's per-MAC PXE config over TFTP
        self.assertIn("localboot", cfg.read_text())  # Cobbler rewrote it after nopxe
        self.assertLess(booted, 75)
