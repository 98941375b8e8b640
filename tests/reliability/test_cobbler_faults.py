"""Cobbler down, hanging or answering garbage: steps/cobbler.py's client fails clearly within its timeout.

The faults are real TCP peers on 127.0.0.1: a port nobody listens on, a listener that accepts
and never answers, one that answers with something that is not XML-RPC, and one that drops
the connection mid-request. Each must raise ``CobblerError`` naming the Cobbler URL, the call
and the reason, without the password, within the client's timeout (plus slack).
"""

from __future__ import annotations

import time

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from steps.cobbler import CobblerClient, CobblerError
from tests.reliability.recorder import Recorder
from tests.support.procs import free_port

PASSWORD = "cobbler-pw-Qv31x"
TIMEOUT = 1.5
RECORDER = Recorder()


class _Silent(protocol.Protocol):
    """Accepts and never says a word (a hung cobblerd)."""


class _Garbage(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 19\r\n\r\n<html>oops</html>\r\n"
        )
        self.transport.loseConnection()


class _Hangup(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.abortConnection()


class CobblerFaults(unittest.TestCase):
    @classmethod
    def tearDownClass(cls):
        RECORDER.save()

    def listen(self, proto: type[protocol.Protocol]) -> str:
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(proto), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/cobbler_api"

    @defer.inlineCallbacks
    def fail(self, fault: str, url: str, expect: str):
        client = CobblerClient(url, "cobbler", PASSWORD, timeout=TIMEOUT)
        start = time.monotonic()
        with self.assertRaises(CobblerError) as cm:
            yield defer.ensureDeferred(client.login())
        elapsed = time.monotonic() - start
        msg = str(cm.exception)
        good = msg.startswith(f"Cobbler at {url}: login as cobbler: ") and expect in msg
        RECORDER.record(
            f"Cobbler: {fault}",
            area="Cobbler",
            injected=1,
            survived=int(good and PASSWORD not in msg and elapsed < 2 * TIMEOUT + 1),
            detail=f"CobblerError after {elapsed:.1f} s (timeout {TIMEOUT:g} s): {msg}",
            test=self.id().rsplit(".", 1)[-1],
            seconds=elapsed,
        )
        self.assertTrue(good, msg)
        self.assertNotIn(PASSWORD, msg)
        self.assertLess(elapsed, 2 * TIMEOUT + 1)  # the timeout holds (slack for a loaded CI machine)
        return msg

    def test_cobbler_down(self):
        url = f"http://127.0.0.1:{free_port()}/cobbler_api"
        return self.fail("down (connection refused)", url, "connection refused (is Cobbler running?)")

    def test_cobbler_hanging(self):
        return self.fail(
            "hanging (accepts, never answers)", self.listen(_Silent), f"no answer within {TIMEOUT:g} s"
        )

    def test_cobbler_answers_garbage(self):
        return self.fail("answers HTML instead of XML-RPC", self.listen(_Garbage), "not an XML-RPC answer")

    def test_cobbler_drops_the_connection(self):
        return self.fail("drops the connection mid-request", self.listen(_Hangup), "connection lost")
