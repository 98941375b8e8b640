"""Developers' try service: ``buildbot try --connect=pb`` into the ``try-bvt`` builder.

Passwords are never in the configuration: each try user's password is a ``util.Secret``
that Buildbot's PB dispatcher renders from the secrets provider at login. The submitter is the
authenticated user (the client's ``--who`` cannot impersonate someone else); it is recorded as
the build's ``owner`` so the submitter is mailed and may stop or rebuild the run.
"""

from __future__ import annotations

from typing import Any

from buildbot.plugins import util
from buildbot.schedulers.trysched import Try_Userpass, Try_Userpass_Perspective
from twisted.internet import defer

from master.settings import Settings

TRY_SCHEDULER = "try"
# properties only the gate may set: a try job must never look like a gate run
RESERVED_PROPERTIES = frozenset({"gate_run_id", "gate_kind", "owner", "owners", "try_user"})


class AuthenticatedTryPerspective(Try_Userpass_Perspective):
    """A try job submitted by the logged-in user, whatever ``--who`` says."""

    def perspective_try(
        self,
        branch,
        revision,
        patch,
        repository,
        project,
        builderNames,
        who="",
        comment="",
        properties=None,
    ):
        props = {k: v for k, v in (properties or {}).items() if k not in RESERVED_PROPERTIES}
        props["owner"] = self.username
        props["try_user"] = self.username
        return super().perspective_try(
            branch or self.scheduler.default_branch,
            revision,
            patch,
            repository or self.scheduler.default_repository,
            project,
            builderNames,
            who=self.username,
            comment=comment,
            properties=props,
        )


class SafeTryUserpass(Try_Userpass):
    """``Try_Userpass`` that survives ``buildbot reconfig`` (4.3.0 bug, notes/buildbot.md §A6).

    The base class forgets its PB registrations before unregistering them, so every reconfig
    failed with "username ... is already registered"; here they are released first.
    """

    compare_attrs = (*Try_Userpass.compare_attrs, "_config_kwargs")

    def checkConfig(
        self, builderNames, port, userpass, repository: str = "", branch: str = "", **kwargs: Any
    ):
        super().checkConfig(builderNames, port, userpass, **kwargs)

    @defer.inlineCallbacks
    def reconfigService(
        self, builderNames, port, userpass, repository: str = "", branch: str = "", **kwargs: Any
    ):
        # jobs from `buildbot try --diff` carry no repository: they are for ours
        self.default_repository = repository
        self.default_branch = branch
        if self.active:
            yield self._destroy_pb()
        yield super().reconfigService(builderNames, port, userpass, **kwargs)

    @defer.inlineCallbacks
    def _create_pb(self):
        def factory(mind, username):
            return AuthenticatedTryPerspective(self, username)

        for user, passwd in self.userpass:
            reg = yield self.master.pbmanager.register(self.port, user, passwd, factory)
            self.registrations.append(reg)


def try_strport(settings: Settings) -> str:
    return f"tcp:{settings.try_.port}:interface={settings.try_.bind}"


def try_schedulers(settings: Settings, builder_names: list[str]) -> list:
    """The try scheduler, or nothing when try is disabled or has no users."""
    if not settings.try_.enabled or not settings.try_.users:
        return []
    secrets_by_user = {u.name: u.password_secret for u in settings.users}
    userpass = [(name, util.Secret(secrets_by_user[name])) for name in settings.try_.users]
    return [
        SafeTryUserpass(
            name=TRY_SCHEDULER,
            builderNames=list(builder_names),
            port=try_strport(settings),
            userpass=userpass,
            repository=settings.repo_url,
            branch=settings.repository.staging,
        )
    ]
