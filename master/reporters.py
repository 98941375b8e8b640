"""Reporters: mail and GitHub commit status (Buildbot-native services).

- the list is mailed when a pool's worker goes missing;
- a try submitter is mailed the result of their try run (the run's ``owner``, mapped to the
  user's ``email`` in the settings);
- the gate's own mails (blame, quarantine, alerts) go through ``master.notify``;
- optionally, gate runs on staging commits set a GitHub commit status. An infrastructure
  failure is reported as ``error``, never as ``failure``: it is not the commit's fault.
"""

from __future__ import annotations

from buildbot.interfaces import IEmailLookup
from buildbot.plugins import reporters, util
from buildbot.process.results import EXCEPTION
from buildbot.reporters.github import GitHubStatusPush
from zope.interface import implementer

from master.builders import GATE_BUILDER, TRY_BUILDER
from master.inventory import Inventory
from master.notify import notifier
from master.settings import Settings

TRY_MAIL_TEMPLATE = """\
Your try run on {{ buildername }} finished: {{ summary }}.

{{ build_url }}

{% if build['properties'].get('failed_tests') %}failing tests:
{% for t in build['properties']['failed_tests'][0] %}  - {{ t }}
{% endfor %}{% endif %}{% if build['properties'].get('infra_failure') %}
infrastructure failure (not your patch): {{ build['properties']['infra_failure'][0] }}
{% endif %}
A try run is never promoted to master.
"""


@implementer(IEmailLookup)
class UserEmails:
    """Buildbot user name (a try submitter) -> e-mail address from the settings."""

    def __init__(self, emails: dict[str, str]):
        self.emails = dict(emails)

    def getAddress(self, name: str) -> str | None:
        if name and "@" in name:
            return name
        return self.emails.get(name)


class GateCommitStatus(GitHubStatusPush):
    """GitHub commit status for a configured ``owner/name`` (our repository URL may be local)."""

    def checkConfig(self, token, repository: str = "", **kwargs):
        if repository.count("/") != 1:
            from buildbot import config

            config.error(f"reporters.github.repository: expected owner/name, got {repository!r}")
        super().checkConfig(token, **kwargs)

    def reconfigService(self, token, repository: str = "", **kwargs):
        self.repository = repository
        return super().reconfigService(token, **kwargs)

    def _extract_github_info(self, sourcestamp):
        owner, _, name = self.repository.partition("/")
        return owner, name

    def sendMessage(self, reports):
        for report in reports:
            for build in report.get("builds", []):
                props = build.get("properties") or {}
                if build.get("complete") and props.get("infra_failure"):
                    build["results"] = EXCEPTION  # -> "error": inconclusive, not the commit's fault
        return super().sendMessage(reports)


def try_mailer(settings: Settings) -> reporters.MailNotifier | None:
    mail = settings.reporters.mail
    emails = {u.name: u.email for u in settings.users if u.email}
    if mail is None or not emails or not settings.try_.enabled:
        return None
    kwargs = _smtp_auth(settings)
    return reporters.MailNotifier(
        name="try-mail",
        fromaddr=mail.fromaddr,
        relayhost=mail.relayhost,
        smtpPort=mail.port,
        useTls=mail.use_tls,
        sendToInterestedUsers=True,
        lookup=UserEmails(emails),
        generators=[
            reporters.BuildStatusGenerator(
                mode="all",
                builders=[TRY_BUILDER],
                message_formatter=reporters.MessageFormatter(
                    template=TRY_MAIL_TEMPLATE,
                    subject="["
                    + settings.title
                    + "] try run {{ result_names[results] }} on {{ buildername }}",
                    want_properties=True,
                ),
            )
        ],
        **kwargs,
    )


def _smtp_auth(settings: Settings) -> dict:
    mail = settings.reporters.mail
    kwargs: dict = {}
    if mail is not None and mail.user:
        kwargs["smtpUser"] = mail.user
    if mail is not None and mail.password_secret:
        kwargs["smtpPassword"] = util.Secret(mail.password_secret)
    return kwargs


def github_status(settings: Settings) -> GateCommitStatus | None:
    gh = settings.reporters.github
    if gh is None:
        return None
    return GateCommitStatus(
        token=util.Secret(gh.token_secret),
        repository=gh.repository,
        context=gh.context,
        baseURL=gh.base_url,
        generators=[
            reporters.BuildStartEndStatusGenerator(
                builders=[GATE_BUILDER],
                start_formatter=reporters.MessageFormatterRenderable("BVT started"),
                end_formatter=reporters.MessageFormatterRenderable("BVT finished"),
            )
        ],
    )


def services(settings: Settings, inventory: Inventory) -> list:
    out: list = [notifier(settings)]
    mail = settings.reporters.mail
    if mail is not None and mail.to:
        out.append(
            reporters.MailNotifier(
                fromaddr=mail.fromaddr,
                relayhost=mail.relayhost,
                smtpPort=mail.port,
                useTls=mail.use_tls,
                sendToInterestedUsers=False,
                extraRecipients=mail.to,
                generators=[reporters.WorkerMissingGenerator(workers="all")],
                **_smtp_auth(settings),
            )
        )
    for extra in (try_mailer(settings), github_status(settings)):
        if extra is not None:
            out.append(extra)
    return out
