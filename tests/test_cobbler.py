"""steps/cobbler.py against the real cobblerd of lab/cobbler.py (no mocks)."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
import xmlrpc.client
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from master.inventory import Pool, load_inventory
from steps.cobbler import POWER_TYPE, CobblerClient, CobblerError, pool_tag
from tests.support.procs import free_port, simple_pool, write_inventory


def make_pool(tmp: Path, name: str, index: int, edit=None, hypervisors: int = 2) -> Pool:
    """A real, validated inventory Pool (1 management server + ``hypervisors`` KVM hosts)."""
    raw = simple_pool(name, index, hypervisors=hypervisors)
    if edit:
        edit(raw)
    return load_inventory(write_inventory(tmp / f"{name}.yaml", [raw])).pool(name)


def pxe_file(server, mac: str) -> Path:
    return server.tftpboot / "pxelinux.cfg" / ("01-" + mac.replace(":", "-"))


SENTINEL_NS = 1_000_000_000 * 10**9  # 2001-09-09: an mtime no file Cobbler writes now can have


def stamp(files: list[Path]) -> dict[Path, tuple[int, int]]:
    """Set ``files``' mtime to the sentinel; return their (inode, mtime) to compare later: a file
    removed and written again (a full sync) has a fresh mtime, whatever inode it gets."""
    for f in files:
        os.utime(f, ns=(SENTINEL_NS, SENTINEL_NS))
    return identity(files)


def identity(files: list[Path]) -> dict[Path, tuple[int, int]]:
    return {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}


class CobblerClientTest(unittest.TestCase):
    timeout = 60

    @pytest.fixture(autouse=True)
    def _inject(self, cobbler_server, tmp_path):
        self.server = cobbler_server
        self.tmp = tmp_path

    def client(self, **kw) -> CobblerClient:
        args = {"url": self.server.url, "username": self.server.username, "password": self.server.password}
        return CobblerClient(**{**args, **kw})

    @defer.inlineCallbacks
    def _cleanup_pool(self, pool):
        yield defer.ensureDeferred(self.client().remove_pool(pool))

    async def test_register_creates_systems(self):
        pool = make_pool(self.tmp, "cr", 31)
        self.addCleanup(self._cleanup_pool, pool)
        c = self.client()
        self.assertTrue(await c.ping())
        names = await c.register_pool(pool)
        self.assertEqual(names, ["cr-mgmt", "cr-kvm1", "cr-kvm2"])
        self.assertEqual(await c.systems(pool), sorted(names))
        s = self.server.get_system("cr-kvm1")
        self.assertEqual(s["profile"], "qacloud-kvm")
        self.assertEqual(s["hostname"], "cr-kvm1")
        self.assertEqual(s["comment"], pool_tag(pool))
        self.assertTrue(s["netboot_enabled"])
        self.assertEqual(s["power_type"], POWER_TYPE)
        self.assertEqual(s["power_address"], "127.0.0.1")
        self.assertEqual(s["power_user"], "admin")
        self.assertIn(f"ipport={pool.host('cr-kvm1').bmc.port}", s["power_options"])
        self.assertEqual(s["power_pass"], "")  # the BMC password is never given to Cobbler
        eth0 = s["interfaces"]["eth0"]
        self.assertEqual(
            (eth0["mac_address"], eth0["ip_address"], eth0["netmask"], eth0["dns_name"]),
            ("52:54:00:1f:00:0b", "127.0.31.11", "255.255.255.0", "cr-kvm1"),
        )
        self.assertEqual(self.server.get_system("cr-mgmt")["profile"], "qacloud-mgmt")

    async def test_register_updates_ip_and_macs(self):
        pool = make_pool(self.tmp, "up", 32)
        self.addCleanup(self._cleanup_pool, pool)
        c = self.client()
        await c.register_pool(pool)
        await c.set_netboot("up-kvm2", False)

        def move(raw):
            kvm2 = raw["hypervisors"][1]
            kvm2["ip"] = "127.0.32.50"
            kvm2["macs"] = ["52:54:00:20:00:50", "52:54:00:20:00:51"]

        moved = make_pool(self.tmp, "up", 32, move)
        await c.register_pool(moved)
        s = self.server.get_system("up-kvm2")
        self.assertEqual(s["interfaces"]["eth0"]["ip_address"], "127.0.32.50")
        self.assertEqual(s["interfaces"]["eth0"]["mac_address"], "52:54:00:20:00:50")
        self.assertEqual(s["interfaces"]["eth1"]["mac_address"], "52:54:00:20:00:51")
        self.assertTrue(s["netboot_enabled"], "re-registering re-arms PXE")
        # the extra MAC goes away again when the inventory drops it
        await c.register_pool(pool)
        s = self.server.get_system("up-kvm2")
        self.assertEqual(set(s["interfaces"]), {"eth0"})
        self.assertEqual(s["interfaces"]["eth0"]["mac_address"], "52:54:00:20:00:0c")
        self.assertEqual(await c.systems(pool), ["up-kvm1", "up-kvm2", "up-mgmt"])

    async def test_remove_stale_only_touches_its_pool(self):
        pool, other = make_pool(self.tmp, "st", 33), make_pool(self.tmp, "ot", 34)
        self.addCleanup(self._cleanup_pool, pool)
        self.addCleanup(self._cleanup_pool, other)
        c = self.client()
        await c.register_pool(pool)
        await c.register_pool(other)

        def drop_kvm2(raw):
            raw["hypervisors"] = raw["hypervisors"][:1]

        smaller = make_pool(self.tmp, "st", 33, drop_kvm2)
        removed = await c.remove_stale(smaller, [h.name for h in smaller.hosts])
        self.assertEqual(removed, ["st-kvm2"])
        self.assertIsNone(self.server.get_system("st-kvm2"))
        self.assertEqual(await c.systems(pool), ["st-kvm1", "st-mgmt"])
        self.assertEqual(await c.systems(other), ["ot-kvm1", "ot-kvm2", "ot-mgmt"])
        self.assertEqual(await c.remove_pool(pool), ["st-kvm1", "st-mgmt"])
        self.assertEqual(await c.systems(pool), [])
        self.assertEqual(len(await c.systems(other)), 3)

    async def test_netboot_toggle_sync_and_nopxe(self):
        pool = make_pool(self.tmp, "nb", 35)
        self.addCleanup(self._cleanup_pool, pool)
        c = self.client()
        await c.register_pool(pool)
        # saving a system already writes its PXE file (Cobbler's per-save lite sync)...
        for h in pool.hosts:
            self.assertIn(
                f"/cblr/svc/op/autoinstall/system/{h.name}", pxe_file(self.server, h.mac).read_text()
            )
        await c.sync_systems([h.name for h in pool.hosts])  # ...and the per-system sync rewrites it
        for h in pool.hosts:
            text = pxe_file(self.server, h.mac).read_text()
            self.assertIn(f"/cblr/svc/op/autoinstall/system/{h.name}", text)
            self.assertIn("kernel /images/", text)
        await c.set_netboot("nb-kvm1", False)
        self.assertFalse(await c.get_netboot("nb-kvm1"))
        # the netboot edit rewrites the file at once, no sync needed
        self.assertIn("localboot", pxe_file(self.server, pool.host("nb-kvm1").mac).read_text())
        await c.sync_systems(["nb-kvm1"])
        self.assertIn("localboot", pxe_file(self.server, pool.host("nb-kvm1").mac).read_text())
        await c.set_netboot("nb-kvm1", True)
        self.assertTrue(await c.get_netboot("nb-kvm1"))
        self.assertIn(
            "/autoinstall/system/nb-kvm1", pxe_file(self.server, pool.host("nb-kvm1").mac).read_text()
        )
        # the installer's call-back: Cobbler's own /cblr/svc nopxe endpoint clears the flag
        with urllib.request.urlopen(self.server.nopxe_url("nb-mgmt"), timeout=10) as r:
            self.assertEqual(r.read().strip(), b"True")
        self.assertFalse(await c.get_netboot("nb-mgmt"))
        self.assertIn("localboot", pxe_file(self.server, pool.host("nb-mgmt").mac).read_text())
        self.assertTrue(await c.get_netboot("nb-kvm2"))

    async def test_sync_systems_leaves_other_pools_pxe_files_alone(self):
        """Regression: provisioning pool A must not remove pool B's PXE files on the shared
        Cobbler (a full sync empties pxelinux.cfg: a B host PXE-booting then finds no config)."""
        a, b = make_pool(self.tmp, "pa", 43), make_pool(self.tmp, "pb", 44)
        self.addCleanup(self._cleanup_pool, a)
        self.addCleanup(self._cleanup_pool, b)
        c = self.client()
        await c.register_pool(b)
        b_files = [pxe_file(self.server, h.mac) for h in b.hosts]
        b_before = stamp(b_files)
        await c.register_pool(a)
        a_files = [pxe_file(self.server, h.mac) for h in a.hosts]
        stamp(a_files)
        await c.sync_systems([h.name for h in a.hosts])
        for h, f in zip(a.hosts, a_files, strict=True):
            self.assertNotEqual(f.stat().st_mtime_ns, SENTINEL_NS, f"{f} was not rewritten by the sync")
            self.assertIn(f"/autoinstall/system/{h.name}", f.read_text())
        self.assertEqual(identity(b_files), b_before, "pool B's PXE files were removed or rewritten")
        # the check catches the bug: a full sync removes and rewrites every system's file
        await c.sync()
        after = identity(b_files)
        for f in b_files:
            self.assertNotEqual(after[f], b_before[f], f)

    async def test_sync_systems_failed_task_names_server_systems_and_reason(self):
        # a site trigger that fails makes Cobbler's syncsystems task end "failed"
        self.server.set_task_trigger("syncsystems", "zz-broken", "#!/bin/sh\nexit 3\n")
        self.addCleanup(self.server.set_task_trigger, "syncsystems", "zz-broken", None)
        pool = make_pool(self.tmp, "fs", 45, hypervisors=1)
        self.addCleanup(self._cleanup_pool, pool)
        c = self.client()
        await c.register_pool(pool)
        with self.assertRaises(CobblerError) as cm:
            await c.sync_systems(["fs-mgmt", "fs-kvm1"])
        msg = str(cm.exception)
        self.assertTrue(msg.startswith(f"Cobbler at {self.server.url}: sync systems fs-mgmt, fs-kvm1: "), msg)
        self.assertRegex(msg, r"Cobbler task \S+_Syncsystems_\w+ failed: ")
        self.assertIn(
            "Cobbler trigger failed: /var/lib/cobbler/triggers/task/syncsystems/pre/zz-broken returns 3", msg
        )
        self.assertNotIn(self.server.password, msg)

    async def test_sync_systems_timeout_polls_with_backoff(self):
        self.server.set_task_trigger("syncsystems", "zz-slow", "#!/bin/sh\nsleep 3\n")
        self.addCleanup(self.server.set_task_trigger, "syncsystems", "zz-slow", None)
        c = self.client(timeout=1)
        await c.login()
        polls = self._api_calls("get_task_status")
        t0 = time.monotonic()
        with self.assertRaises(CobblerError) as cm:
            await c.sync_systems(["slow-a"])
        elapsed = time.monotonic() - t0
        self.assertTrue(0.9 < elapsed < 2.5, elapsed)
        msg = str(cm.exception)
        self.assertIn(f"Cobbler at {self.server.url}: sync systems slow-a: Cobbler task ", msg)
        self.assertIn("did not finish within 1 s (timeout)", msg)
        # polled at 0, 0.1, 0.3, 0.7 s and at the deadline: no busy loop
        self.assertIn(self._api_calls("get_task_status") - polls, range(3, 7))

    async def test_sync_systems_unknown_name_is_an_error(self):
        # Cobbler's task ends "complete" for a name it has no system for (it only logs it)
        pool = make_pool(self.tmp, "un", 46, hypervisors=1)
        self.addCleanup(self._cleanup_pool, pool)
        c = self.client()
        await c.register_pool(pool)
        with self.assertRaises(CobblerError) as cm:
            await c.sync_systems(["un-mgmt", "no-such-system", "un-kvm1"])
        self.assertEqual(
            str(cm.exception),
            f"Cobbler at {self.server.url}: sync systems un-mgmt, no-such-system, un-kvm1: "
            "Cobbler has no system named no-such-system: no PXE file written for it",
        )
        await c.sync_systems([])  # nothing to do: no task started

    async def test_unknown_system(self):
        c = self.client()
        with self.assertRaises(CobblerError) as cm:
            await c.get_netboot("no-such-host")
        self.assertIn("system no-such-host: no such system", str(cm.exception))
        with self.assertRaises(CobblerError) as cm:
            await c.set_netboot("no-such-host", True)
        self.assertIn("no such system", str(cm.exception))

    async def test_wrong_password(self):
        c = self.client(password="not-the-password")
        with self.assertRaises(CobblerError) as cm:
            await c.sync_systems(["wp-mgmt"])
        msg = str(cm.exception)
        self.assertIn(self.server.url, msg)
        self.assertIn(f"login as {self.server.username}", msg)
        self.assertIn("authentication failed", msg)
        self.assertNotIn("not-the-password", msg)
        self.assertNotIn(self.server.password, msg)

    async def test_cobbler_down_connection_refused(self):
        url = f"http://127.0.0.1:{free_port()}/cobbler_api"
        c = CobblerClient(url, "qacloud", "pw-secret", timeout=5)
        t0 = time.monotonic()
        with self.assertRaises(CobblerError) as cm:
            await c.ping()
        self.assertLess(time.monotonic() - t0, 5)
        self.assertIn(url, str(cm.exception))
        self.assertIn("connection refused", str(cm.exception))

    async def test_cobbler_hangs_times_out(self):
        # a listener that accepts and never answers: a wedged Cobbler
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(5)
            url = f"http://127.0.0.1:{s.getsockname()[1]}/cobbler_api"
            c = CobblerClient(url, "qacloud", "pw-secret", timeout=1)
            t0 = time.monotonic()
            with self.assertRaises(CobblerError) as cm:
                await c.login()
            elapsed = time.monotonic() - t0
        self.assertTrue(0.9 < elapsed < 5, elapsed)
        self.assertIn("login as qacloud: no answer within 1 s (timeout)", str(cm.exception))
        self.assertNotIn("pw-secret", str(cm.exception))

    async def test_unknown_profile_registers_nothing(self):
        def bad_profile(raw):
            raw["hypervisors"][1]["profile"] = "no-such-profile"

        pool = make_pool(self.tmp, "bp", 36, bad_profile)
        self.addCleanup(self._cleanup_pool, pool)
        c = self.client()
        with self.assertRaises(CobblerError) as cm:
            await c.register_pool(pool)
        msg = str(cm.exception)
        self.assertIn("system bp-kvm2 (pool bp)", msg)
        self.assertIn("unknown profile 'no-such-profile'", msg)
        self.assertEqual(await c.systems(pool), [])
        self.assertIsNone(self.server.get_system("bp-mgmt"))

    def _foreign_system(self, name: str, mac: str) -> None:
        """A system qacloud did not make, owning ``mac`` (removed at cleanup)."""
        api = xmlrpc.client.ServerProxy(self.server.xmlrpc_url, allow_none=True)
        tok = api.login(self.server.username, self.server.password)
        system = {"name": name, "profile": "qacloud-kvm", "mac_address": mac, "interface": "eth0"}
        api.xapi_object_edit("system", name, "add", system, tok)
        self.addCleanup(lambda: api.remove_system(name, tok))

    async def test_failure_midway_rolls_back_created_systems(self):
        # another (foreign) system already owns the MAC that host 2 of 3 wants: Cobbler refuses it
        self._foreign_system("foreign", "52:54:00:25:00:0b")
        pool = make_pool(self.tmp, "rb", 37)
        self.addCleanup(self._cleanup_pool, pool)
        c = self.client()
        with self.assertRaises(CobblerError) as cm:
            await c.register_pool(pool)
        self.assertIn("system rb-kvm1 (pool rb)", str(cm.exception))
        self.assertEqual(await c.systems(pool), [])
        self.assertIsNone(self.server.get_system("rb-mgmt"))
        self.assertIsNotNone(self.server.get_system("foreign"))

    def _api_calls(self, method: str = "") -> int:
        """XML-RPC calls (of ``method``) so far: the front end logs ``svc xmlrpc <method>`` before
        it answers, so every call that returned (a previous test's cleanup too) is counted."""
        lines = (self.server.workdir / "svc.log").read_text().splitlines()
        return sum(1 for ln in lines if ln.startswith("svc xmlrpc ") and ln[11:] == (method or ln[11:]))

    def _assert_calls_since(self, before: int, expected: int) -> None:
        self.assertEqual(self._api_calls() - before, expected)

    async def test_register_is_one_call_per_new_system(self):
        pool = make_pool(self.tmp, "oc", 38, hypervisors=9)
        self.addCleanup(self._cleanup_pool, pool)
        c = self.client(concurrency=4)
        start = self._api_calls()
        await c.login()
        names = await c.register_pool(pool)
        # login; profiles + system names, then one xapi_object_edit per system (fields, eth0, save)
        self._assert_calls_since(start, 1 + 2 + 10)
        self.assertEqual(sorted(await c.systems(pool)), sorted(names))
        self.assertEqual(self.server.get_system("oc-kvm9")["interfaces"]["eth0"]["ip_address"], "127.0.38.19")
        # an unchanged re-registration: get_system + one edit per system
        await c.register_pool(pool)
        self._assert_calls_since(start, 13 + 1 + 2 + 2 * 10)
        # the per-system sync: one Cobbler task for all ten systems, its status polled, its log read
        bg, logs = self._api_calls("background_syncsystems"), self._api_calls("get_event_log")
        await c.sync_systems(names)
        self.assertEqual(self._api_calls("background_syncsystems") - bg, 1)
        self.assertEqual(self._api_calls("get_event_log") - logs, 1)

    async def test_concurrent_failure_rolls_back_everything_it_created(self):
        # a foreign system owns kvm5's MAC: kvm5 fails while other systems are being written
        self._foreign_system("foreign2", "52:54:00:27:00:0f")
        pool = make_pool(self.tmp, "cf", 39, hypervisors=11)
        self.addCleanup(self._cleanup_pool, pool)
        c = self.client(concurrency=3)
        with self.assertRaises(CobblerError) as cm:
            await c.register_pool(pool)
        self.assertIn("system cf-kvm5 (pool cf)", str(cm.exception))
        self.assertIn("52:54:00:27:00:0f", str(cm.exception))
        self.assertEqual(await c.systems(pool), [])
        self.assertEqual([n for n in self.server.system_names() if n.startswith("cf-")], [])
        self.assertIsNotNone(self.server.get_system("foreign2"))

    async def test_concurrent_calls_share_one_relogin(self):
        pool = make_pool(self.tmp, "rl", 40, hypervisors=5)
        self.addCleanup(self._cleanup_pool, pool)
        c = self.client(concurrency=6)
        await c.login()
        api = xmlrpc.client.ServerProxy(self.server.xmlrpc_url, allow_none=True)
        api.logout(c._token)
        logins = []
        real_login = c.login

        async def counting_login():
            logins.append(1)
            await real_login()

        c.login = counting_login
        await c.register_pool(pool)  # six systems written at once, all with the dead token at first
        self.assertEqual(len(logins), 1)
        self.assertEqual(len(await c.systems(pool)), 6)

    def test_concurrency_must_be_positive(self):
        with self.assertRaises(ValueError) as cm:
            self.client(concurrency=0)
        self.assertIn("concurrency must be >= 1, got 0", str(cm.exception))

    async def test_relogin_after_token_expiry(self):
        pool = make_pool(self.tmp, "ex", 47, hypervisors=1)
        self.addCleanup(self._cleanup_pool, pool)
        await self.client().register_pool(pool)
        c = self.client()
        await c.login()
        api = xmlrpc.client.ServerProxy(self.server.xmlrpc_url, allow_none=True)
        api.logout(c._token)  # what expiry does: the token is no longer valid
        stale = c._token
        await c.sync_systems(["ex-mgmt", "ex-kvm1"])  # logs in again transparently
        self.assertNotEqual(c._token, stale)
        self.assertTrue(api.token_check(c._token))


def test_two_cobbler_servers_run_side_by_side(cobbler_server, tmp_path):
    """Each lab Cobbler has its own free XML-RPC and front-end ports and its own data."""
    from lab.cobbler import CobblerServer

    other = CobblerServer(tmp_path / "other", password="other-pw").start()
    try:
        assert other.xmlrpc_port != cobbler_server.xmlrpc_port and other.url != cobbler_server.url
        assert other.xmlrpc_port not in (25151, other.svc_port)
        other.ensure_profiles(["qacloud-mgmt"])
        # a system added through the second front end exists only in the second cobblerd
        api = xmlrpc.client.ServerProxy(other.url, allow_none=True)
        tok = api.login(other.username, other.password)
        api.xapi_object_edit(
            "system", "only-other", "add", {"name": "only-other", "profile": "qacloud-mgmt"}, tok
        )
        assert other.system_names() == ["only-other"]
        assert "only-other" not in cobbler_server.system_names()
        # each /cblr/svc app talks to its own cobblerd (it reads xmlrpc_port from settings.yaml)
        with urllib.request.urlopen(f"{other.svc_url}/op/list/what/systems", timeout=10) as r:
            assert r.read().split() == [b"only-other"]
        with urllib.request.urlopen(f"{cobbler_server.svc_url}/op/list/what/systems", timeout=10) as r:
            assert b"only-other" not in r.read().split()
    finally:
        other.stop()
    assert not other.running
    assert cobbler_server.get_system("only-other") is None and cobbler_server.running


def test_a_given_port_in_use_is_a_clear_error(cobbler_server, tmp_path):
    from lab.cobbler import CobblerLabError, CobblerServer

    taken = CobblerServer(tmp_path / "taken", xmlrpc_port=cobbler_server.xmlrpc_port)
    with pytest.raises(
        CobblerLabError,
        match=rf"127\.0\.0\.1:{cobbler_server.xmlrpc_port} \(cobblerd's XML-RPC port\) is already in use",
    ):
        taken.start()
    assert not taken.running
