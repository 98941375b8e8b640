"""IPMI against virtual BMCs over real RMCP+/UDP on 127.0.0.1, cross-checked with Debian's ipmitool.

qacloud's client (steps/ipmi.py: pyghmi client on a thread pool) drives lab/bmc.py's
VirtualBmc (pyghmi server + our login fix); ipmitool reads and drives the same BMCs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from twisted.internet import defer
from twisted.trial import unittest

from lab.bmc import BmcFleet, VirtualBmc
from steps.ipmi import BmcTarget, IpmiClient, IpmiError
from tests.support.ipmi import count_tries, udp_bindings
from tests.support.procs import REPO, free_port, wait_for

PASSWORD = "s3cret-bmc-pw"


def ipmitool(port: int, *args: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "ipmitool",
            "-I",
            "lanplus",
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "admin",
            "-P",
            password,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


class IpmiAgainstVirtualBmcs(unittest.TestCase):
    def setUp(self):
        self.fleet = BmcFleet()
        self.ports = [free_port(2) for _ in range(3)]  # socket.SOCK_DGRAM == 2
        for i, port in enumerate(self.ports):
            self.fleet.add(VirtualBmc(f"host{i}", port, "admin", PASSWORD))
        self.fleet.start()
        self.client = IpmiClient(timeout=1, retries=1, concurrency=4, backoff=0.2)

    def tearDown(self):
        self.fleet.stop()
        self.client.stop()

    def target(self, i: int, password: str = PASSWORD) -> BmcTarget:
        return BmcTarget(f"host{i}", "127.0.0.1", self.ports[i], "admin", password)

    @defer.inlineCallbacks
    def test_every_operation_cross_checked_with_ipmitool(self):
        t, port, bmc = self.target(0), self.ports[0], self.fleet["host0"]
        self.assertEqual((yield defer.ensureDeferred(self.client.power_status(t))), "off")
        self.assertIn("Chassis Power is off", ipmitool(port, "power", "status").stdout)

        yield defer.ensureDeferred(self.client.set_bootdev(t, "pxe"))
        self.assertEqual(bmc.bootdev, "network")
        self.assertIn("Force PXE", ipmitool(port, "chassis", "bootparam", "get", "5").stdout)
        self.assertEqual((yield defer.ensureDeferred(self.client.get_bootdev(t))), "network")

        yield defer.ensureDeferred(self.client.power_on(t))
        self.assertIn("Chassis Power is on", ipmitool(port, "power", "status").stdout)
        yield defer.ensureDeferred(self.client.power_cycle(t))  # on -> reset
        self.assertEqual(bmc.history("power"), ["on", "reset"])
        yield defer.ensureDeferred(self.client.power_off(t))
        self.assertIn("Chassis Power is off", ipmitool(port, "power", "status").stdout)
        yield defer.ensureDeferred(self.client.power_cycle(t))  # off -> on
        self.assertEqual(bmc.history("power"), ["on", "reset", "off", "on"])

        yield defer.ensureDeferred(self.client.set_bootdev(t, "disk"))
        self.assertEqual(bmc.bootdev, "hd")
        self.assertIn(
            "Force Boot from default Hard-Drive", ipmitool(port, "chassis", "bootparam", "get", "5").stdout
        )

        # and the other way round: ipmitool drives, qacloud's client reads
        self.assertEqual(ipmitool(port, "power", "off").returncode, 0)
        self.assertEqual((yield defer.ensureDeferred(self.client.power_status(t))), "off")
        self.assertEqual(ipmitool(port, "chassis", "bootdev", "pxe").returncode, 0)
        self.assertEqual((yield defer.ensureDeferred(self.client.get_bootdev(t))), "network")
        self.assertEqual(ipmitool(port, "power", "on").returncode, 0)
        self.assertEqual((yield defer.ensureDeferred(self.client.power(t, "status"))), "on")
        self.assertEqual(ipmitool(port, "power", "reset").returncode, 0)
        self.assertEqual(bmc.history("power")[-2:], ["on", "reset"])

    @defer.inlineCallbacks
    def test_parallel_operations_on_several_bmcs(self):
        targets = [self.target(i) for i in range(3)]
        yield defer.gatherResults([defer.ensureDeferred(self.client.power(t, "pxe")) for t in targets])
        states = yield defer.gatherResults(
            [defer.ensureDeferred(self.client.power(t, "cycle")) for t in targets]
        )
        self.assertEqual(states, ["on", "on", "on"])
        for i, port in enumerate(self.ports):
            self.assertEqual(self.fleet[f"host{i}"].history(), ["network", "on"])
            self.assertIn("Chassis Power is on", ipmitool(port, "power", "status").stdout)

    @defer.inlineCallbacks
    def test_wrong_password_is_a_clear_error_without_retries(self):
        tries = count_tries(self)
        with self.assertRaises(IpmiError) as cm:
            yield defer.ensureDeferred(self.client.power_on(self.target(1, password="wrong-pw-123")))
        msg = str(cm.exception)
        self.assertIn("host host1", msg)
        self.assertIn(f"127.0.0.1:{self.ports[1]}", msg)
        self.assertIn("authentication failed (wrong password?)", msg)
        self.assertNotIn("wrong-pw-123", msg)
        self.assertNotIn(PASSWORD, msg)
        self.assertEqual(tries, ["host1"])  # one try: a retry only locks the account sooner
        self.assertGreater(self.client.tries, 1)  # although the client retries other failures
        self.assertEqual(self.fleet["host1"].history(), [])
        self.assertNotEqual(ipmitool(self.ports[1], "power", "status", password="wrong-pw-123").returncode, 0)

    @defer.inlineCallbacks
    def test_bmc_not_answering_fails_within_its_deadline(self):
        self.fleet.remove("host2")  # its UDP port is closed: nothing answers
        start = time.monotonic()
        with self.assertRaises(IpmiError) as cm:
            yield defer.ensureDeferred(self.client.power_off(self.target(2)))
        elapsed = time.monotonic() - start
        self.assertEqual(
            str(cm.exception),
            f"host host2: BMC 127.0.0.1:{self.ports[2]}: power off: no answer within 1 s after 2 tries",
        )
        self.assertLess(elapsed, 2 * (1 + 0.2 + 1))  # 2 tries of 1 s + back-off, slack for a loaded machine
        # the other BMCs are unaffected
        self.assertEqual((yield defer.ensureDeferred(self.client.power_status(self.target(0)))), "off")

    @defer.inlineCallbacks
    def test_retry_succeeds_when_the_bmc_comes_back(self):
        port = free_port(2)
        client = IpmiClient(timeout=1, retries=3, concurrency=2, backoff=0.3)
        self.addCleanup(client.stop)
        late: list[VirtualBmc] = []

        def come_up():
            time.sleep(1.3)  # after the first try timed out
            late.append(self.fleet.add(VirtualBmc("late", port, "admin", PASSWORD)))

        threading.Thread(target=come_up, daemon=True).start()
        start = time.monotonic()
        yield defer.ensureDeferred(client.power_on(BmcTarget("late", "127.0.0.1", port, "admin", PASSWORD)))
        self.assertGreater(time.monotonic() - start, 1.3)
        self.assertEqual(late[0].history("power"), ["on"])

    @defer.inlineCallbacks
    def test_client_sockets_bind_the_address_that_reaches_the_bmc_not_every_address(self):
        """pyghmi binds its client sockets to '' / '::' (every address); qacloud's sessions bind
        the source address the kernel routes to the BMC: loopback for these BMCs."""
        before = udp_bindings()
        self.assertNotIn("::", before)
        self.assertNotIn("0.0.0.0", before)
        yield defer.gatherResults(
            [defer.ensureDeferred(self.client.power_status(self.target(i))) for i in range(3)]
        )
        after = udp_bindings()  # the sessions' sockets stay open a while after use
        self.assertGreaterEqual(len(after) - len(before), 3)
        self.assertNotIn("::", after)
        self.assertNotIn("0.0.0.0", after)
        self.assertTrue(all(a in ("127.0.0.1", "::ffff:127.0.0.1") for a in after), after)

    def test_bmc_binds_loopback_only(self):
        bmc = self.fleet["host0"]
        self.assertEqual(bmc.serversocket.getsockname()[0], "127.0.0.1")
        with self.assertRaises(ValueError):
            VirtualBmc("bad", free_port(2), "admin", PASSWORD, address="0.0.0.0")


class BmcProcess(unittest.TestCase):
    """``python -m lab.bmc`` as a separate process, killed mid-test."""

    @defer.inlineCallbacks
    def test_killed_bmc_process_stops_answering(self):
        port = free_port(2)
        spec = os.path.join(tempfile.mkdtemp(prefix="qacloud-bmc-"), "spec.json")
        self.addCleanup(shutil.rmtree, os.path.dirname(spec), True)
        with open(spec, "w") as f:
            json.dump([{"name": "p1", "port": port, "username": "admin", "password": PASSWORD}], f)
        proc = subprocess.Popen(
            [sys.executable, "-m", "lab.bmc", "--spec", spec],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )

        def cleanup():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            proc.stdout.close()

        self.addCleanup(cleanup)
        self.assertEqual(proc.stdout.readline().strip(), "ready")
        client = IpmiClient(timeout=1, retries=0, concurrency=2)
        self.addCleanup(client.stop)
        t = BmcTarget("p1", "127.0.0.1", port, "admin", PASSWORD)
        self.assertEqual((yield defer.ensureDeferred(client.power(t, "on"))), "on")
        self.assertIn("Chassis Power is on", ipmitool(port, "power", "status").stdout)
        proc.kill()
        wait_for(lambda: proc.poll() is not None, 10, "the BMC process to die")
        with self.assertRaises(IpmiError) as cm:
            yield defer.ensureDeferred(client.power_status(t))
        self.assertIn("no answer within 1 s after 1 try", str(cm.exception))
