"""The gate's mail: blame, pool quarantine and alerts (the ``gate-notifier`` service).

The gate scheduler calls it through ``self.master.namedServices.get("gate-notifier")``:
``blame()`` mails the culprit's author and the list, ``quarantined()`` and ``alert()`` the
list. The SMTP password is read from the secrets provider when a mail is sent and never logged.
A mail that cannot be delivered is logged (naming the relay) and reported as ``False``: a
broken relay must not stop the gate.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
from typing import Any

from buildbot.util import service
from twisted.internet import defer, reactor
from twisted.mail import smtp
from twisted.python import log

from master.settings import Mail, Settings

NOTIFIER_NAME = "gate-notifier"


def author_address(author: str) -> str | None:
    """The e-mail address in ``"Name <addr>"`` (or a bare address), else None."""
    _, addr = email.utils.parseaddr(author or "")
    return addr if "@" in addr else None


def blame_message(
    commit: str, author: str, failed_tests: list[str], build_urls: list[str], title: str = "qacloud"
) -> tuple[str, str]:
    """Subject and body of the culprit mail."""
    tests = list(failed_tests)
    subject = f"[{title}] BVT broken by {commit[:12]} ({author}): {len(tests)} failing test(s)"
    lines = [
        f"The gate confirmed that commit {commit} breaks the BVT.",
        "",
        f"commit: {commit}",
        f"author: {author}",
        "failing tests:",
        *[f"  - {t}" for t in tests],
        "",
        "The failure reproduced on this commit and its parent passed, so it is not a flake.",
        "builds:",
        *[f"  {u}" for u in build_urls],
        "",
        "Commits after it wait on staging until it is fixed or reverted.",
    ]
    return subject, "\n".join(lines) + "\n"


class GateNotifier(service.BuildbotService):
    """Sends the gate's mails through SMTP (``reporters.mail`` of the settings)."""

    name = NOTIFIER_NAME

    def checkConfig(
        self,
        fromaddr: str = "qacloud@localhost",
        relayhost: str = "127.0.0.1",
        port: int = 25,
        to: list[str] | None = None,
        user: str | None = None,
        password_secret: str | None = None,
        use_tls: bool = False,
        mail_authors: bool = True,
        title: str = "qacloud",
        enabled: bool = True,
    ):
        pass

    def reconfigService(
        self,
        fromaddr: str = "qacloud@localhost",
        relayhost: str = "127.0.0.1",
        port: int = 25,
        to: list[str] | None = None,
        user: str | None = None,
        password_secret: str | None = None,
        use_tls: bool = False,
        mail_authors: bool = True,
        title: str = "qacloud",
        enabled: bool = True,
    ):
        self.fromaddr = fromaddr
        self.relayhost = relayhost
        self.port = port
        self.to = list(to or [])
        self.user = user
        self.password_secret = password_secret
        self.use_tls = use_tls
        self.mail_authors = mail_authors
        self.title = title
        self.enabled = enabled
        self.sent: list[dict[str, Any]] = getattr(self, "sent", [])

    async def blame(
        self,
        commit: str,
        author: str,
        failed_tests: list[str],
        build_urls: list[str],
        message_id: str | None = None,
    ) -> bool:
        """Mail the confirmed culprit to its author and the list. ``message_id``: the gate's
        stable id for this decision, so a mail sent again after a restart is the same message
        (mail clients and list archives drop a repeated Message-ID)."""
        subject, body = blame_message(commit, author, failed_tests, build_urls, self.title)
        rcpts = list(self.to)
        addr = author_address(author)
        if self.mail_authors and addr and addr not in rcpts:
            rcpts.insert(0, addr)
        return await self._send("blame", subject, body, rcpts, message_id)

    async def quarantined(self, pool: str, reason: str) -> bool:
        """Tell the list a pool was taken out of service and why."""
        subject = f"[{self.title}] pool {pool} quarantined"
        body = (
            f"Pool {pool} was quarantined after repeated infrastructure failures.\n\n"
            f"reason: {reason}\n\n"
            "No gate or try run is scheduled on it until a QA engineer returns it to service.\n"
        )
        return await self._send("quarantine", subject, body, list(self.to))

    async def alert(self, kind: str, message: str, message_id: str | None = None) -> bool:
        """Something a human must know (master moved outside the gate, ...)."""
        subject = f"[{self.title}] {kind}"
        return await self._send(kind, subject, message.rstrip() + "\n", list(self.to), message_id)

    async def _send(
        self, kind: str, subject: str, body: str, rcpts: list[str], message_id: str | None = None
    ) -> bool:
        if not self.enabled or not rcpts:
            log.msg(f"gate-notifier: no mail configured, not sending {kind}: {subject}")
            return False
        msg = EmailMessage()
        msg["From"] = self.fromaddr
        msg["To"] = ", ".join(rcpts)
        msg["Subject"] = subject
        msg["Date"] = email.utils.formatdate(localtime=False)
        msg["Message-ID"] = message_id or email.utils.make_msgid(domain="qacloud")
        msg["X-Qacloud-Kind"] = kind
        msg.set_content(body)
        password = None
        if self.password_secret:
            details = await self.master.namedServices["secrets"].get(self.password_secret)
            if details is None:
                log.msg(
                    f"gate-notifier: cannot send {kind} mail: secret {self.password_secret!r} "
                    "(reporters.mail.password_secret) is missing from the secrets directory"
                )
                return False
            password = details.value.encode()
        try:
            await self._sendmail(msg.as_bytes(), rcpts, password)
        except Exception as e:  # the relay's fault, never the gate's
            log.msg(
                f"gate-notifier: could not send {kind} mail via SMTP relay "
                f"{self.relayhost}:{self.port}: {type(e).__name__}: {e}"
            )
            return False
        self.sent.append({"kind": kind, "subject": subject, "to": rcpts})
        log.msg(f"gate-notifier: sent {kind} mail to {', '.join(rcpts)}")
        return True

    def _sendmail(self, data: bytes, rcpts: list[str], password: bytes | None) -> defer.Deferred:
        return smtp.sendmail(
            self.relayhost,
            self.fromaddr,
            rcpts,
            data,
            port=self.port,
            reactor=reactor,
            username=self.user.encode() if self.user else None,
            password=password,
            requireAuthentication=bool(self.user),
            requireTransportSecurity=self.use_tls,
        )


def notifier(settings: Settings) -> GateNotifier:
    """The gate-notifier service for these settings (always present; mails only with a list)."""
    mail: Mail | None = settings.reporters.mail
    if mail is None:
        return GateNotifier(enabled=False, title=settings.title)
    return GateNotifier(
        fromaddr=mail.fromaddr,
        relayhost=mail.relayhost,
        port=mail.port,
        to=list(mail.to),
        user=mail.user,
        password_secret=mail.password_secret,
        use_tls=mail.use_tls,
        mail_authors=mail.mail_authors,
        title=settings.title,
    )
