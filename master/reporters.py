"""Reporters: mail and GitHub commit status (Buildbot-native services)."""

from __future__ import annotations

from buildbot.plugins import reporters, util

from master.inventory import Inventory
from master.settings import Settings


def services(settings: Settings, inventory: Inventory) -> list:
    out = []
    mail = settings.reporters.mail
    if mail is not None and mail.to:
        kwargs = {}
        if mail.user:
            kwargs["smtpUser"] = mail.user
        if mail.password_secret:
            kwargs["smtpPassword"] = util.Secret(mail.password_secret)
        out.append(
            reporters.MailNotifier(
                fromaddr=mail.fromaddr,
                relayhost=mail.relayhost,
                smtpPort=mail.port,
                useTls=mail.use_tls,
                sendToInterestedUsers=False,
                extraRecipients=mail.to,
                generators=[reporters.WorkerMissingGenerator(workers="all")],
                **kwargs,
            )
        )
    return out
