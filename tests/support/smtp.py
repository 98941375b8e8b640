"""A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it receives."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller

from tests.support.procs import free_port, wait_for


@dataclass
class Inbox:
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"

    def wait(self, predicate, timeout: float = 30, what: str = "a mail") -> EmailMessage:
        """The first received message matching ``predicate``."""

        def found():
            return next((m for m in self.messages if predicate(m)), None)

        return wait_for(found, timeout, what)

    def recipients_of(self, msg: EmailMessage) -> list[str]:
        return self.envelopes[self.messages.index(msg)][1]


class SmtpServer:
    """``with SmtpServer() as smtp:``; ``smtp.port``, ``smtp.inbox``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.inbox = Inbox()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()
