"""BMC faults between steps/ipmi.py's client and a lab/bmc.py virtual BMC, over real UDP on 127.0.0.1.

A lossy relay (lab/lossy_udp.py) sits between them: with 30 % of the datagrams dropped, the
client's retries still get every operation done (and the relay proves it dropped some); a BMC
that never answers and a wrong password are clear errors naming the host and the BMC, within
the deadline, without the password.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from twisted.internet import defer
from twisted.trial import unittest

from lab.bmc import BmcFleet, VirtualBmc
from lab.lossy_udp import LossyUdpRelay
from steps.ipmi import BmcTarget, IpmiClient, IpmiError
from tests.reliability import lossy_ipmi_run
from tests.reliability.recorder import Recorder
from tests.support.ipmi import count_tries
from tests.support.procs import REPO, free_port

PASSWORD = "bmc-pw-Zq8xR2"
RECORDER = Recorder()  # trial test cases cannot take pytest fixtures: saved in tearDownClass


class BmcFaults(unittest.TestCase):
    @classmethod
    def tearDownClass(cls):
        RECORDER.save()

    def setUp(self):
        self.fleet = BmcFleet()
        self.bmc = self.fleet.add(VirtualBmc("kvm1", free_port(2), "admin", PASSWORD))
        self.fleet.start()
        self.clients: list[IpmiClient] = []

    def tearDown(self):
        for c in self.clients:
            c.stop()
        self.fleet.stop()

    def client(self, **kw) -> IpmiClient:
        c = IpmiClient(concurrency=2, **kw)
        self.clients.append(c)
        return c

    def relay(self, loss: float, seed: int = 9) -> LossyUdpRelay:
        r = LossyUdpRelay(("127.0.0.1", self.bmc.port), loss=loss, seed=seed).start()
        self.addCleanup(r.stop)
        return r

    @staticmethod
    def target(relay: LossyUdpRelay, password: str = PASSWORD) -> BmcTarget:
        return BmcTarget("pool1-kvm1", "127.0.0.1", relay.port, "admin", password)

    def test_retries_succeed_under_30_percent_packet_loss(self):
        # in a child process: abandoned tries leave pyghmi threads blocked (docs/reliability.md)
        ops = ["pxe", "cycle", "off"]
        p = subprocess.run(
            [sys.executable, "-m", "tests.reliability.lossy_ipmi_run", "0.3", "9", *ops],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=3 * (lossy_ipmi_run.RETRIES + 1) * 8 + 30,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        r = json.loads(p.stdout.strip().splitlines()[-1])
        RECORDER.record(
            "BMC: 30 % UDP packet loss",
            area="BMC",
            injected=r["dropped"],
            survived=r["dropped"] if r["error"] is None else 0,
            detail=f"{len(ops)} IPMI operations ({', '.join(ops)}) through the relay: "
            f"{'all succeeded' if r['error'] is None else r['error']}; {r['dropped']} of "
            f"{r['dropped'] + r['forwarded']} datagrams dropped; {r['elapsed']:.1f} s",
            test="test_retries_succeed_under_30_percent_packet_loss",
            seconds=r["elapsed"],
        )
        self.assertIsNone(r["error"])
        self.assertGreater(r["dropped"], 0, "the relay dropped nothing: the test proves nothing")
        self.assertEqual(r["states"], ["off", "on", "off"])
        self.assertEqual(r["bootdev"], "network")
        self.assertEqual(r["power_history"][-1], "off")

    @defer.inlineCallbacks
    def test_bmc_that_never_answers_is_a_clear_error_within_the_deadline(self):
        relay = self.relay(1.0)  # every datagram dropped
        ipmi = self.client(timeout=1, retries=2, backoff=0.1)
        start = time.monotonic()
        with self.assertRaises(IpmiError) as cm:
            yield defer.ensureDeferred(ipmi.power_on(self.target(relay)))
        elapsed = time.monotonic() - start
        msg = str(cm.exception)
        ok = "pool1-kvm1" in msg and relay.endpoint in msg and PASSWORD not in msg
        RECORDER.record(
            "BMC: no answer",
            area="BMC",
            injected=1,
            survived=int(ok and elapsed < 5),
            detail=f"error after {elapsed:.1f} s (deadline 3 tries x 1 s + back-off): {msg}",
            test="test_bmc_that_never_answers_is_a_clear_error_within_the_deadline",
            seconds=elapsed,
        )
        self.assertEqual(
            msg, f"host pool1-kvm1: BMC {relay.endpoint}: power on: no answer within 1 s after 3 tries"
        )
        self.assertNotIn(PASSWORD, msg)
        self.assertGreaterEqual(relay.counts.up_dropped, 3)  # one login attempt per try, at least
        self.assertEqual(relay.counts.up_forwarded, 0)
        self.assertLess(elapsed, 2 * (3 * 1 + 0.1 + 0.2))  # the deadline holds (slack for a loaded machine)
        self.assertEqual(self.bmc.history("power"), [])

    @defer.inlineCallbacks
    def test_wrong_credentials_are_a_clear_error_without_the_password(self):
        relay = self.relay(0.0)
        ipmi = self.client(timeout=2, retries=3, backoff=0.1)
        wrong = "wrong-Pw-77xQ"
        tries = count_tries(self)
        start = time.monotonic()
        with self.assertRaises(IpmiError) as cm:
            yield defer.ensureDeferred(ipmi.power_off(self.target(relay, password=wrong)))
        elapsed = time.monotonic() - start
        msg, err = str(cm.exception), cm.exception
        ok = "pool1-kvm1" in msg and relay.endpoint in msg and wrong not in msg and PASSWORD not in msg
        RECORDER.record(
            "BMC: wrong credentials",
            area="BMC",
            injected=1,
            survived=int(ok and err.auth),
            detail=f"not retried (a retry only locks the account sooner); {elapsed:.1f} s: {msg}",
            test="test_wrong_credentials_are_a_clear_error_without_the_password",
            seconds=elapsed,
        )
        self.assertEqual(
            msg, f"host pool1-kvm1: BMC {relay.endpoint}: power off: authentication failed (wrong password?)"
        )
        self.assertTrue(err.auth)
        for text in (msg, repr(err), repr(self.target(relay, password=wrong)), str(err.args)):
            self.assertNotIn(wrong, text)
            self.assertNotIn(PASSWORD, text)
        self.assertEqual(tries, ["pool1-kvm1"])  # one try of the 4 allowed: never retried
        self.assertEqual(self.bmc.history(), [])

    @defer.inlineCallbacks
    def test_relay_passes_everything_at_zero_loss(self):
        """The relay itself is transparent: faults above come from the loss, not from the relay."""
        relay = self.relay(0.0)
        ipmi = self.client(timeout=2, retries=0)
        self.assertEqual((yield defer.ensureDeferred(ipmi.power(self.target(relay), "on"))), "on")
        self.assertEqual(relay.dropped, 0)
        self.assertGreater(relay.counts.down_forwarded, 0)
        self.assertEqual(self.bmc.history("power"), ["on"])
