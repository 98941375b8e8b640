"""BMC faults between steps/ipmi.py's client and a lab/bmc.py virtual BMC, over real UDP on 127.0.0.1.

A lossy relay (lab/lossy_udp.py) sits between them: with 30 % of the datagrams dropped, the
client's retries still get every operation done (and the relay proves it dropped some); a BMC
that never answers and a wrong password are clear errors naming the host and the BMC, within
the deadline, without the password.
"""

from __future__ import annotations

import time

from twisted.internet import defer
from twisted.trial import unittest

from lab.bmc import BmcFleet, VirtualBmc
from lab.lossy_udp import LossyUdpRelay
from steps.ipmi import BmcTarget, IpmiClient, IpmiError
from tests.reliability.recorder import Recorder
from tests.support.procs import free_port

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

    @defer.inlineCallbacks
    def test_retries_succeed_under_30_percent_packet_loss(self):
        relay = self.relay(0.3)
        # pyghmi's own login gives up after a few lost datagrams (~40 % of logins fail at 30 %
        # loss, measured): the client's tries, each a fresh login, must carry it through
        ipmi = self.client(timeout=8, retries=10, backoff=0.05)
        t = self.target(relay)
        start = time.monotonic()
        ops = ["pxe", "cycle", "off"]
        states = []
        for op in ops:
            states.append((yield defer.ensureDeferred(ipmi.power(t, op))))
        elapsed = time.monotonic() - start
        RECORDER.record(
            "BMC: 30 % UDP packet loss",
            area="BMC",
            injected=relay.dropped,
            survived=relay.dropped if states[-1] == "off" else 0,
            detail=f"{len(ops)} IPMI operations through the relay all succeeded; {relay.dropped} of "
            f"{relay.dropped + relay.forwarded} datagrams dropped; {elapsed:.1f} s",
            test="test_retries_succeed_under_30_percent_packet_loss",
            seconds=elapsed,
        )
        self.assertGreater(relay.dropped, 0, "the relay dropped nothing: the test proves nothing")
        self.assertGreater(relay.counts.up_dropped + relay.counts.down_dropped, 0)
        self.assertEqual(states, ["off", "on", "off"])
        # the BMC saw each change exactly as asked: retried tries never doubled an operation
        self.assertEqual(self.bmc.bootdev, "network")
        self.assertEqual(self.bmc.history("power")[-1], "off")
        self.assertLess(elapsed, 3 * 11 * 8)

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
        self.assertEqual(msg, f"host pool1-kvm1: BMC {relay.endpoint}: power on: no answer within 1 s after 3 tries")
        self.assertNotIn(PASSWORD, msg)
        self.assertGreaterEqual(relay.counts.up_dropped, 3)  # one login attempt per try, at least
        self.assertEqual(relay.counts.up_forwarded, 0)
        self.assertLess(elapsed, 3 * 1 + 0.1 + 0.2 + 1.5)
        self.assertEqual(self.bmc.history("power"), [])

    @defer.inlineCallbacks
    def test_wrong_credentials_are_a_clear_error_without_the_password(self):
        relay = self.relay(0.0)
        ipmi = self.client(timeout=2, retries=3, backoff=0.1)
        wrong = "wrong-Pw-77xQ"
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
        self.assertLess(elapsed, 2)
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
