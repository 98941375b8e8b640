"""IPMI fan-out (issue #8): concurrent logins do not stall, and a pool boots in one wave.

Real processes on 127.0.0.1: virtual BMCs in a ``python -m lab.bmc`` process (pyghmi's RMCP+
server), the latency relay ``lab/lossy_udp.py`` (in a ``python -m lab.lossy_udp`` process or
in-process), qacloud's ``IpmiClient`` (steps/ipmi.py) in this process.

The stall: pyghmi's client threads used to register their wait for an answer only after
sending, through its shared I/O thread; an answer handled before that was never noticed and the
call slept until its retransmission deadline (0.5-1.5 s) with no datagram lost. So the check is
counted, not timed (speed is measured in bench/, never asserted here): no wait reached its
retransmission deadline, none found its answer already waiting when it did, nothing was resent.
One wave: the most tries in flight at once is every host. The relay: every datagram held at
least ``delay`` and all of them at once, or none held at all without a delay.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest
from twisted.internet import defer
from twisted.trial.unittest import TestCase as TrialTestCase

from bench.hotpaths import BmcProcess, RelayProcess
from lab.lossy_udp import LossyUdpRelay
from master.settings import Provisioning
from steps.ipmi import IpmiClient, deadline_expiries, late_answers, retransmissions
from tests.support.procs import REPO


def _waits() -> tuple[int, int, int]:
    """(deadline expiries, answers found late, retransmissions) of this process so far."""
    return deadline_expiries(), late_answers(), retransmissions()


def _since(before: tuple[int, int, int]) -> dict[str, int]:
    now = _waits()
    names = ("deadline expiries", "answers found late", "retransmissions")
    return {name: b - a for name, a, b in zip(names, before, now, strict=True)}


NO_STALLS = {"deadline expiries": 0, "answers found late": 0, "retransmissions": 0}


async def _boot(client: IpmiClient, targets) -> int:
    """Next boot PXE + power cycle on every target at once; the number of calls completed."""
    done = 0

    async def one(t) -> None:
        nonlocal done
        await client.set_bootdev(t, "pxe")
        done += 1
        await client.power_cycle(t)
        done += 1

    await defer.gatherResults([defer.ensureDeferred(one(t)) for t in targets], consumeErrors=True)
    return done


class ConcurrentLogins(TrialTestCase):
    """40 BMCs in one lab.bmc process, 40 calls at once, fresh logins every round."""

    timeout = 120
    N = 40

    @pytest.fixture(autouse=True)
    def _bmcs(self, tmp_path):
        self.bmcs = BmcProcess(self.N, tmp_path)
        self.addCleanup(self.bmcs.stop)

    async def test_concurrent_logins_complete_without_stalls_or_retransmissions(self):
        before = _waits()
        calls = 0
        peaks: list[int] = []
        for _ in range(3):
            client = IpmiClient(timeout=10, retries=0, concurrency=self.N)
            try:
                calls += await _boot(client, self.bmcs.targets(self.N))
            finally:
                client.stop()
            peaks.append(client.peak_in_flight)
        self.assertEqual(calls, 3 * 2 * self.N)
        # on loopback without loss every answer comes long before its 0.5-1.5 s deadline: a wait
        # that reached it missed a wake-up (the stall), and then found the answer already there
        self.assertEqual(_since(before), NO_STALLS)
        # the race needs company: most of the 40 calls of each round were in flight together
        self.assertGreaterEqual(min(peaks), self.N // 2, peaks)
        check = IpmiClient(timeout=5, retries=1, concurrency=self.N)
        try:
            for t in self.bmcs.targets(self.N):
                self.assertEqual(await check.power_status(t), "on", t.host)
                self.assertEqual(await check.get_bootdev(t), "network", t.host)
        finally:
            check.stop()


class OneWaveAtBmcLatency(TrialTestCase):
    """Through a relay holding every datagram 20 ms each way (a fast real BMC): at the configured
    concurrency all 20 hosts' tries are in flight at once (one wave, issue #8), without stalls.

    The relay makes each login + command last >= 10 x 20 ms, so the overlap is real; how long
    the wave takes against one host is measured by ``bench/hotpaths.py``, not asserted here.
    """

    timeout = 120
    N = 20

    @pytest.fixture(autouse=True)
    def _lab(self, tmp_path):
        self.bmcs = BmcProcess(self.N, tmp_path)
        self.addCleanup(self.bmcs.stop)
        self.relay = RelayProcess(self.bmcs.ports, 0.02)
        self.addCleanup(self.relay.stop)

    async def test_fanout_is_one_wave_at_the_default_concurrency(self):
        prov = Provisioning()
        self.assertGreaterEqual(prov.ipmi_concurrency, 50)  # a 50-host pool boots in one wave

        before = _waits()
        client = IpmiClient(
            timeout=prov.ipmi_timeout, retries=prov.ipmi_retries, concurrency=prov.ipmi_concurrency
        )
        try:
            calls = await _boot(client, self.bmcs.targets(self.N, self.relay.ports))
        finally:
            client.stop()
        self.assertEqual(calls, 2 * self.N)
        # every host's try was running at the same moment: one wave, not N / concurrency waves
        self.assertEqual(client.peak_in_flight, self.N)
        self.assertEqual(_since(before), NO_STALLS)


# --- the relay's latency -----------------------------------------------------------------------


class _Echo:
    """A UDP echo server on 127.0.0.1 that prefixes its answers with ``tag``."""

    def __init__(self, tag: bytes):
        self.tag = tag
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.sock.sendto(self.tag + data, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def echoes():
    servers = [_Echo(b"a:"), _Echo(b"b:")]
    yield servers
    for s in servers:
        s.close()


def _client() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s


def test_relay_delays_each_direction_without_serialising_clients(echoes):
    delay = 0.1
    with LossyUdpRelay(("127.0.0.1", echoes[0].port), delay=delay) as relay:
        clients = [_client() for _ in range(5)]
        try:
            for i, c in enumerate(clients):
                c.sendto(b"ping%d" % i, ("127.0.0.1", relay.port))
            answers = [c.recvfrom(2048)[0] for c in clients]
        finally:
            for c in clients:
                c.close()
    assert answers == [b"a:ping%d" % i for i in range(5)]
    assert (relay.counts.up_forwarded, relay.counts.down_forwarded, relay.dropped) == (5, 5, 0)
    holds = relay.holds
    # each of the 10 datagrams (5 up, 5 down) was held, none for less than the delay
    assert (holds.held, holds.released) == (10, 10)
    assert holds.min_hold is not None and holds.min_hold >= delay, holds
    # the five requests were held side by side, not queued one behind the other
    assert holds.peak == 5, holds


def test_relay_without_delay_forwards_at_once(echoes):
    with LossyUdpRelay(("127.0.0.1", echoes[0].port)) as relay:
        c = _client()
        try:
            c.sendto(b"x", ("127.0.0.1", relay.port))
            assert c.recvfrom(2048)[0] == b"a:x"
        finally:
            c.close()
    assert (relay.counts.up_forwarded, relay.counts.down_forwarded) == (1, 1)
    assert (relay.holds.held, relay.holds.peak, relay.holds.min_hold) == (0, 0, None)  # sent on at once


def test_relay_fronts_several_targets_each_on_its_own_port(echoes):
    targets = [("127.0.0.1", e.port) for e in echoes]
    with LossyUdpRelay(targets[0], more_targets=tuple(targets[1:]), delay=0.01) as relay:
        assert relay.port == relay.ports[0] and len(set(relay.ports)) == 2
        c = _client()
        try:
            for port, tag in zip(relay.ports, (b"a:", b"b:"), strict=True):
                c.sendto(b"q", ("127.0.0.1", port))
                assert c.recvfrom(2048)[0] == tag + b"q"
        finally:
            c.close()


def test_relay_rejects_bad_settings_naming_them():
    with pytest.raises(ValueError, match="delay must be between 0 and 10 s, got -1"):
        LossyUdpRelay(("127.0.0.1", 9), delay=-1)
    with pytest.raises(ValueError, match=r"refusing target 10\.0\.0\.1: loopback only"):
        LossyUdpRelay(("127.0.0.1", 9), more_targets=(("10.0.0.1", 623),))


def test_relay_cli_names_a_malformed_target():
    r = subprocess.run(
        [sys.executable, "-m", "lab.lossy_udp", "--target", "127.0.0.1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "target '127.0.0.1': expected ADDRESS:PORT" in r.stderr
    assert "Traceback" not in r.stderr
