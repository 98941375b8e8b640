"""The gate-notifier's mails, delivered to a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

from buildbot.test.fake import fakemaster
from twisted.internet import defer
from twisted.trial import unittest

from master.notify import GateNotifier, author_address, blame_message
from tests.support.procs import free_port
from tests.support.smtp import SmtpServer

CULPRIT = "3f2a9c0d1e2b3c4d5e6f708192a3b4c5d6e7f809"


def test_author_address_and_blame_message():
    assert author_address("Jane Dev <jane@example.org>") == "jane@example.org"
    assert author_address("no address") is None
    subject, body = blame_message(
        CULPRIT, "Jane <jane@example.org>", ["test_vm_life_cycle"], ["http://x/b/1"]
    )
    assert CULPRIT[:12] in subject and "1 failing" in subject
    assert CULPRIT in body and "test_vm_life_cycle" in body and "http://x/b/1" in body


class GateNotifierMail(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.smtp = SmtpServer().__enter__()
        self.addCleanup(self.smtp.__exit__, None, None, None)
        self.master = yield defer.ensureDeferred(
            fakemaster.make_master(self, wantRealReactor=True, with_secrets={"smtp-password": "s3cret"})
        )

    @defer.inlineCallbacks
    def _notifier(self, **kwargs):
        n = GateNotifier(
            relayhost="127.0.0.1",
            to=["dev@example.org"],
            fromaddr="qacloud@example.org",
            password_secret="smtp-password",
            **kwargs,
        )
        yield n.setServiceParent(self.master)
        yield n.reconfigServiceWithSibling(n)  # what the master's service manager does
        self.addCleanup(n.disownServiceParent)
        return n

    @defer.inlineCallbacks
    def test_blame_mails_author_and_list(self):
        n = yield self._notifier(port=self.smtp.port)
        ok = yield defer.ensureDeferred(
            n.blame(
                CULPRIT,
                "Jane Dev <jane@example.org>",
                ["test_vm_life_cycle", "test_network"],
                ["http://127.0.0.1:8010/#/builders/1/builds/7"],
            )
        )
        self.assertTrue(ok)
        msg = self.smtp.inbox.wait(lambda m: m["X-Qacloud-Kind"] == "blame", what="the culprit mail")
        body = msg.get_content()
        self.assertIn(CULPRIT, body)
        self.assertIn("Jane Dev <jane@example.org>", body)
        self.assertIn("test_vm_life_cycle", body)
        self.assertIn("test_network", body)
        self.assertIn("/builds/7", body)
        self.assertEqual(sorted(self.smtp.inbox.recipients_of(msg)), ["dev@example.org", "jane@example.org"])
        self.assertNotIn("s3cret", msg.as_string())

    @defer.inlineCallbacks
    def test_quarantine_and_alert_go_to_the_list(self):
        n = yield self._notifier(port=self.smtp.port)
        yield defer.ensureDeferred(n.quarantined("pool2", "BMC 127.0.0.1:16021 of pool2-kvm1 did not answer"))
        yield defer.ensureDeferred(n.alert("master moved outside the gate", "master is now abc123"))
        q = self.smtp.inbox.wait(lambda m: m["X-Qacloud-Kind"] == "quarantine", what="quarantine mail")
        a = self.smtp.inbox.wait(lambda m: "master moved" in m["Subject"], what="alert mail")
        self.assertIn("pool2", q["Subject"])
        self.assertIn("BMC 127.0.0.1:16021", q.get_content())
        self.assertIn("abc123", a.get_content())
        for m in (q, a):
            self.assertEqual(self.smtp.inbox.recipients_of(m), ["dev@example.org"])

    @defer.inlineCallbacks
    def test_a_mail_sent_again_keeps_the_message_id_the_gate_gave_it(self):
        n = yield self._notifier(port=self.smtp.port)
        mid = "<qacloud.blame.0123abcd@qacloud>"
        for _ in range(2):  # e.g. once before a master was killed, once after its restart
            ok = yield defer.ensureDeferred(
                n.blame(CULPRIT, "Jane <jane@example.org>", ["t"], [], message_id=mid)
            )
            self.assertTrue(ok)
        yield defer.ensureDeferred(
            n.alert("master-moved", "master moved", message_id="<qacloud.alert.1@qacloud>")
        )
        yield defer.ensureDeferred(n.alert("master-moved", "master moved"))  # no id: a fresh one
        self.smtp.inbox.wait(lambda m: len(self.smtp.inbox.messages) == 4, what="four mails")
        ids = [m["Message-ID"] for m in self.smtp.inbox.messages]
        self.assertEqual(ids[:3], [mid, mid, "<qacloud.alert.1@qacloud>"])
        self.assertNotIn(ids[3], ids[:3])
        self.assertTrue(ids[3].startswith("<") and ids[3].endswith("@qacloud>"))

    @defer.inlineCallbacks
    def test_unreachable_relay_is_reported_not_raised(self):
        n = yield self._notifier(port=free_port())  # nothing listens there
        ok = yield defer.ensureDeferred(n.alert("promotion rejected", "master moved"))
        self.assertFalse(ok)
        self.assertEqual(self.smtp.inbox.messages, [])
