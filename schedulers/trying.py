"""Developers' try service: ``buildbot try --connect=pb`` into the ``try-bvt`` builder.

Passwords are never in the configuration: each try user's password is a ``util.Secret``
that Buildbot's PB dispatcher renders from the secrets provider at login. The submitter is the
authenticated user (the client's ``--who`` cannot impersonate someone else); it is recorded as
the build's ``owner`` so the submitter is mailed and may stop or rebuild the run.

Bad patches are rejected before any build (:func:`patch_problem`): above ``try.max_patch_bytes``,
binary data instead of a text diff, or a diff of a binary file without its content. The client
sees the reason as the builder's result (``try-bvt: failure (rejected: ...)`` with ``--wait``);
a patch that is text but does not apply fails at the build's checkout step, before provisioning.
"""

from __future__ import annotations

import re
from typing import Any

from buildbot.plugins import util
from buildbot.process.results import FAILURE, RETRY
from buildbot.schedulers.trysched import (
    RemoteBuild,
    RemoteBuildRequest,
    RemoteBuildSetStatus,
    Try_Userpass,
    Try_Userpass_Perspective,
)
from twisted.internet import defer
from twisted.python import log
from twisted.spread import pb

from master.settings import Settings

TRY_SCHEDULER = "try"
# properties only the gate may set: a try job must never look like a gate run
RESERVED_PROPERTIES = frozenset({"gate_run_id", "gate_kind", "owner", "owners", "try_user"})
_BINARY_HUNK = re.compile(rb"^Binary files (.+) and (.+) differ$", re.MULTILINE)


def patch_problem(body: bytes | None, max_bytes: int) -> str | None:
    """Why a try patch is rejected before any build, or None when it may run."""
    if not body:
        return None
    if len(body) > max_bytes:
        return (
            f"the patch is {len(body)} bytes, above the try limit of {max_bytes} bytes "
            "(try.max_patch_bytes): split it or ask QA for a gate run"
        )
    nul = body.find(b"\0")
    if nul >= 0:
        return f"the patch is binary data, not a text diff (NUL byte at offset {nul})"
    m = _BINARY_HUNK.search(body)
    if m:
        name = m.group(2).decode(errors="replace")
        return f"the patch changes binary file {name} without its content: make it with `git diff --binary`"
    if not re.search(rb"^(\+\+\+ |diff --git |GIT binary patch)", body, re.MULTILINE):
        return "the patch is not a unified diff (no '+++' or 'diff --git' line)"
    return None


class _RejectedBuild(pb.Referenceable):
    """What ``buildbot try --wait`` follows for a rejected job: finished, FAILURE, the reason."""

    def __init__(self, reason: str):
        self.reason = reason

    def remote_subscribe(self, subscriber, interval=None):
        return None

    def remote_unsubscribe(self, subscriber):
        return None

    def remote_waitUntilFinished(self):
        return self

    def remote_getResults(self):
        return FAILURE

    def remote_getText(self):
        return ["rejected:", self.reason]


class _RejectedRequest(pb.Referenceable):
    def __init__(self, builder: str, reason: str):
        self.builder, self.reason = builder, reason

    def remote_subscribe(self, subscriber):
        return subscriber.callRemote("newbuild", _RejectedBuild(self.reason), self.builder)

    def remote_unsubscribe(self, subscriber):
        return None


class RejectedTry(pb.Referenceable):
    """Stands in for Buildbot's RemoteBuildSetStatus when a job is refused: no buildset exists.

    Raising instead would leave the 4.3 client hanging without a message.
    """

    def __init__(self, builder_names: list[str], reason: str):
        self.builder_names, self.reason = list(builder_names), reason

    def remote_getBuildRequests(self):
        return [(n, _RejectedRequest(n, self.reason)) for n in self.builder_names]


class _RetryAwareBuild(RemoteBuild):
    """A try build as ``buildbot try --wait`` sees it. One that ends RETRY was stopped to run
    again (its worker lost, the master restarted, or the gate took its pool back:
    ``try.preempt``), so it is not the request's result: the stock client would report "retry"
    and exit 1. Its ``waitUntilFinished`` answers only if the request ends with no later build
    (cancelled while queued again); otherwise the client is told of the request's next build
    (``newbuild``) and waits for that one instead."""

    @defer.inlineCallbacks
    def remote_waitUntilFinished(self):
        yield super().remote_waitUntilFinished()
        build = yield self.master.data.get(("builds", self.builddict["buildid"]))
        if build and build.get("results") == RETRY:
            yield self._request_ended()
            brid = self.builddict["buildrequestid"]
            builds = yield self.master.data.get(("buildrequests", brid, "builds"))
            if any(b["buildid"] > self.builddict["buildid"] for b in builds or []):
                yield defer.Deferred()  # never: the later build answers the client
        return self

    @defer.inlineCallbacks
    def _request_ended(self):
        brid = self.builddict["buildrequestid"]
        ended: defer.Deferred = defer.Deferred()

        def complete(key, msg):
            if not ended.called:
                ended.callback(None)

        consumer = yield self.master.mq.startConsuming(complete, ("buildrequests", str(brid), "complete"))
        try:
            request = yield self.master.data.get(("buildrequests", brid))
            if not (request and request.get("complete")):
                yield ended
        finally:
            consumer.stopConsuming()


class _RetryAwareSubscriber:
    """Between Buildbot's ``RemoteBuildRequest`` and the client: each build it reports goes
    out as a ``_RetryAwareBuild``."""

    def __init__(self, subscriber) -> None:
        self._subscriber = subscriber

    def callRemote(self, name, *args, **kwargs):
        args = tuple(
            _RetryAwareBuild(a.master, a.builddict, a.builderName) if isinstance(a, RemoteBuild) else a
            for a in args
        )
        return self._subscriber.callRemote(name, *args, **kwargs)

    def notifyOnDisconnect(self, callback) -> None:
        self._subscriber.notifyOnDisconnect(callback)


class _RetryAwareRequest(RemoteBuildRequest):
    def remote_subscribe(self, subscriber):
        return super().remote_subscribe(_RetryAwareSubscriber(subscriber))


class _RetryAwareBuildSet(RemoteBuildSetStatus):
    """What a submitted try job returns to the client: its requests report retry-aware builds."""

    @defer.inlineCallbacks
    def remote_getBuildRequests(self):
        requests = yield super().remote_getBuildRequests()
        return [(name, _RetryAwareRequest(self.master, name, r.brid)) for name, r in requests]


def _retry_aware(status):
    if isinstance(status, RemoteBuildSetStatus):
        return _RetryAwareBuildSet(status.master, status.bsid, status.brids)
    return status


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
        body = patch[1] if patch else None
        problem = patch_problem(
            body.encode() if isinstance(body, str) else body, self.scheduler.max_patch_bytes
        )
        if problem:
            names = self.scheduler.filterBuilderList(builderNames) or []
            log.msg(f"try: rejected a patch from user {self.username!r}: {problem}")
            return RejectedTry([str(n) for n in names], problem)
        props = {k: v for k, v in (properties or {}).items() if k not in RESERVED_PROPERTIES}
        props["owner"] = self.username
        props["try_user"] = self.username
        d = super().perspective_try(  # a Deferred (inlineCallbacks)
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
        return d.addCallback(_retry_aware)


class SafeTryUserpass(Try_Userpass):
    """``Try_Userpass`` that survives ``buildbot reconfig`` (4.3.0 bug, notes/buildbot.md §A6).

    The base class forgets its PB registrations before unregistering them, so every reconfig
    failed with "username ... is already registered"; here they are released first.
    """

    compare_attrs = (*Try_Userpass.compare_attrs, "_config_kwargs")

    max_patch_bytes = 512 * 1024

    def checkConfig(
        self,
        builderNames,
        port,
        userpass,
        repository: str = "",
        branch: str = "",
        max_patch_bytes: int = 512 * 1024,
        **kwargs: Any,
    ):
        super().checkConfig(builderNames, port, userpass, **kwargs)

    @defer.inlineCallbacks
    def reconfigService(
        self,
        builderNames,
        port,
        userpass,
        repository: str = "",
        branch: str = "",
        max_patch_bytes: int = 512 * 1024,
        **kwargs: Any,
    ):
        # jobs from `buildbot try --diff` carry no repository: they are for ours
        self.default_repository = repository
        self.default_branch = branch
        self.max_patch_bytes = max_patch_bytes
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
            max_patch_bytes=settings.try_.max_patch_bytes,
        )
    ]
